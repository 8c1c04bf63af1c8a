"""The report's real-driver sections: the verdicts ``vdpa-bench serve --judge-driver`` wrote for the frontends'
drivers (DPDK virtio_user, a Linux guest's virtio_net) on the rings and headers they made available.

A findings file (:mod:`testbenches.monitor.live`) holds one run: the real driver's name (``driver``), what the run
did (``run``) and each vhost-user session's rows (verdict, opportunities, evidence). The report groups the runs by
driver, one section each: per row the verdict of every run that observed it, and every failing row's evidence. A
row a real driver fails is a finding about that driver, not a failure of the bench. Renderings: the terminal
tables (rich), one HTML page, one JSON file (:func:`write_real_drivers_report`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from testbenches.conformance.report import _environment
from testbenches.conformance.requirements import load_requirements

#: Evidence lines kept per row and run.
MAX_EVIDENCE = 5


@dataclass
class RealDriverRun:
    """One findings file: the driver, the run, and per row its verdict over the run's sessions."""

    driver: str
    run: str
    source: str
    sessions: list[dict[str, Any]]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> RealDriverRun:
        data = json.loads(path.read_text(encoding="utf-8"))
        sessions = list(data.get("sessions", []))
        run = cls(str(data.get("driver") or path.stem), str(data.get("run", "")), path.name, sessions)
        for s in sessions:
            for rid, row in s["rows"].items():
                merged = run.rows.setdefault(rid, {"verdict": "passed", "opportunities": 0, "evidence": []})
                merged["opportunities"] += int(row["opportunities"])
                if row["verdict"] == "failed":
                    merged["verdict"] = "failed"
                    room = MAX_EVIDENCE - len(merged["evidence"])
                    merged["evidence"] += [f"{s['session']}: {e}" for e in row["evidence"][:max(room, 0)]]
        run.rows = dict(sorted(run.rows.items()))
        return run

    @property
    def rings(self) -> str:
        return "/".join(sorted({str(s.get("ring", "?")) for s in self.sessions})) or "-"

    def failed(self) -> list[str]:
        return [rid for rid, row in self.rows.items() if row["verdict"] == "failed"]

    def to_json(self) -> dict[str, Any]:
        return {"driver": self.driver, "run": self.run, "source": self.source, "rings": self.rings,
                "sessions": len(self.sessions), "rows": self.rows,
                "not_judged": self.sessions[0].get("not_judged", {}) if self.sessions else {},
                "notes": [n for s in self.sessions for n in s.get("notes", [])]}


def load_runs(directory: Path) -> list[RealDriverRun]:
    """Every findings file (``*.json``) in ``directory``, by driver then file name."""
    runs = [RealDriverRun.load(p) for p in sorted(Path(directory).glob("*.json")) if _is_findings(p)]
    return sorted(runs, key=lambda r: (r.driver, r.source))


def _is_findings(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return isinstance(data, dict) and "sessions" in data


def by_driver(runs: Sequence[RealDriverRun]) -> dict[str, list[RealDriverRun]]:
    out: dict[str, list[RealDriverRun]] = {}
    for r in runs:
        out.setdefault(r.driver, []).append(r)
    return out


def _cell(row: dict[str, Any] | None) -> str:
    return "-" if row is None else f"{row['verdict']} ({row['opportunities']})"


def driver_table(driver: str, runs: Sequence[RealDriverRun]) -> Table:
    """One driver's rows: a column per run, each cell ``verdict (opportunities)``; '-' where the run saw none."""
    table = Table(title=escape(f"real driver: {driver}"), title_justify="left")
    table.add_column("id")
    for r in runs:
        table.add_column(escape(f"{r.rings}: {r.source}"))
    ids = sorted({rid for r in runs for rid in r.rows})
    for rid in ids:
        cells = [_cell(r.rows.get(rid)) for r in runs]
        style = "red" if any(c.startswith("failed") for c in cells) else "green"
        table.add_row(rid, *cells, style=style)
    return table


def render_real_drivers_terminal(runs: Sequence[RealDriverRun], console: Console | None = None,
                                 max_evidence: int = 3) -> None:
    """A table per driver, then each failed row's first evidence lines (findings about the driver)."""
    console = console or Console()
    for driver, driver_runs in by_driver(runs).items():
        console.print(driver_table(driver, driver_runs))
        for r in driver_runs:
            for rid in r.failed():
                console.print(f"  [bold red]{rid}[/] finding on {escape(driver)} ({escape(r.source)}):",
                              highlight=False)
                for line in r.rows[rid]["evidence"][:max_evidence]:
                    console.print(f"      {line}", markup=False, highlight=False)


def driver_sections(runs: Sequence[RealDriverRun]) -> list[dict[str, Any]]:
    """One section per driver for the HTML templates: its runs and, per row, the requirement and each run's cell."""
    reqs = load_requirements()
    sections = []
    for driver, driver_runs in by_driver(runs).items():
        ids = sorted({rid for r in driver_runs for rid in r.rows})
        rows = [{"id": rid, "text": reqs[rid].requirement if rid in reqs else "",
                 "section": reqs[rid].section if rid in reqs else "",
                 "cells": [r.rows.get(rid) for r in driver_runs]} for rid in ids]
        sections.append({"driver": driver, "runs": driver_runs, "rows": rows})
    return sections


def render_real_drivers_html(runs: Sequence[RealDriverRun], path: Path) -> Path:
    html = _environment().get_template("real_drivers.html.j2").render(
        title="real drivers judged", generated=datetime.now(UTC).isoformat(timespec="seconds"),
        sections=driver_sections(runs))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def write_real_drivers_report(directory: Path, out: Path, console: Console | None = None) -> Path:
    """From the findings files in ``directory``: ``real-drivers.json`` and ``real-drivers.html`` in ``out`` (the
    findings files copied into ``out/findings``), and the tables on the terminal. Returns ``out``."""
    runs = load_runs(directory)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    copies = out / "findings"
    copies.mkdir(exist_ok=True)
    for p in Path(directory).glob("*.json"):
        if _is_findings(p) and p.resolve() != (copies / p.name).resolve():
            (copies / p.name).write_text(p.read_text(encoding="utf-8"), encoding="utf-8")
    drivers = {d: [r.to_json() for r in rs] for d, rs in by_driver(runs).items()}
    (out / "real-drivers.json").write_text(json.dumps({"drivers": drivers}, indent=1) + "\n", encoding="utf-8")
    render_real_drivers_html(runs, out / "real-drivers.html")
    render_real_drivers_terminal(runs, console)
    return out


__all__ = ["RealDriverRun", "by_driver", "driver_sections", "driver_table", "load_runs", "main",
           "render_real_drivers_html",
           "render_real_drivers_terminal", "write_real_drivers_report"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m testbenches.conformance.real_drivers FINDINGS_DIR --out DIR``."""
    p = argparse.ArgumentParser(prog="python -m testbenches.conformance.real_drivers",
                                description="Render the real drivers' sections from serve --judge-driver findings "
                                            "files (labelled with their driver): real-drivers.html and .json.")
    p.add_argument("findings", metavar="FINDINGS_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    args = p.parse_args(argv)
    if not load_runs(Path(args.findings)):
        print(f"{p.prog}: error: no findings file in {args.findings}", file=sys.stderr)
        return 2
    write_real_drivers_report(Path(args.findings), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
