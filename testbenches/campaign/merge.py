"""Every cell of a campaign merged into one report.

* the matrix: per requirement id, its status in each cell ("error" where the cell produced no results);
* failures grouped by id: the cells, the smallest failing example (the shortest hypothesis "Falsifying
  example" in the evidence, else the shortest evidence line), the seed, and a command that reruns the
  cell alone;
* JUnit: one suite per cell, one case per id (failed ids fail, a cell without results errors).
"""

from __future__ import annotations

import shlex
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbenches.campaign.cell import OUTCOME_RAN

ERROR = "error"
FAILED = "failed"
PASSED = "passed"
FALSIFYING = "Falsifying example"


@dataclass
class CellRun:
    """One cell's record as :func:`testbenches.campaign.cell.run_cell` returned it."""

    id: str
    key: str
    target: str
    seed: int
    profile: str
    outcome: str
    attempts: int
    duration: float
    worker: str
    log_tail: str
    results: dict[str, Any] | None
    rtl_build: dict[str, Any] | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CellRun:
        cell = record["cell"]
        return cls(id=cell["id"], key=cell["key"], target=cell["target"], seed=int(cell["seed"]),
                   profile=cell["profile"], outcome=record["outcome"], attempts=int(record["attempts"]),
                   duration=float(record["duration"]), worker=str(record["worker"]),
                   log_tail=str(record["log_tail"]), results=record["results"], rtl_build=record.get("rtl_build"))

    def status(self, req_id: str) -> str:
        if self.results is None:
            return ERROR
        r = self.results["ids"].get(req_id)
        return str(r["status"]) if r is not None else "not run"

    @property
    def verdict(self) -> str:
        """passed, failed (some id failed) or error (crashed, timed out, or Dask lost it)."""
        if self.results is None or self.outcome != OUTCOME_RAN:
            return ERROR
        return FAILED if any(r["status"] == FAILED for r in self.results["ids"].values()) else PASSED

    def counts(self) -> Counter[str]:
        return Counter(r["status"] for r in (self.results or {"ids": {}})["ids"].values())


@dataclass
class Failure:
    """One id failing in one cell."""

    cell: CellRun
    evidence: list[str]
    checks: list[str]
    reproduce: str


@dataclass
class IdRow:
    id: str
    area: str
    level: str
    role: str
    statuses: dict[str, str] = field(default_factory=dict)  # cell id -> status
    failures: list[Failure] = field(default_factory=list)

    def smallest_example(self) -> str | None:
        """The shortest hypothesis counterexample among the failing cells' evidence, else the shortest line."""
        lines = [e for f in self.failures for e in f.evidence]
        falsifying = [e for e in lines if FALSIFYING in e]
        pool = falsifying or lines
        return min(pool, key=len) if pool else None


def reproduce_command(campaign_file: Path, cell_id: str) -> str:
    return f"vdpa-bench campaign {shlex.quote(str(campaign_file))} --cell {shlex.quote(cell_id)}"


@dataclass
class Merged:
    name: str
    file: Path
    cells: list[CellRun]
    rows: dict[str, IdRow]

    @classmethod
    def build(cls, name: str, campaign_file: Path, records: Sequence[dict[str, Any]]) -> Merged:
        from testbenches.conformance.requirements import load_requirements

        cells = [CellRun.from_record(r) for r in records]
        rows = {req.id: IdRow(req.id, req.area, str(req.level), str(req.role)) for req in load_requirements().values()}
        for cell in cells:
            ids = (cell.results or {"ids": {}})["ids"]
            for req_id, r in ids.items():
                if req_id not in rows:  # a newer suite's id: keep it, from the cell's own record
                    rows[req_id] = IdRow(req_id, r["area"], r["level"], r["role"])
            for row in rows.values():
                row.statuses[cell.id] = cell.status(row.id)
                if row.statuses[cell.id] == FAILED:
                    r = ids[row.id]
                    row.failures.append(Failure(cell, list(r["evidence"]), list(r["checks"]),
                                                reproduce_command(campaign_file, cell.id)))
        return cls(name=name, file=campaign_file, cells=cells, rows=rows)

    def failed_rows(self) -> list[IdRow]:
        return [r for r in self.rows.values() if r.failures]

    def errors(self) -> list[CellRun]:
        return [c for c in self.cells if c.verdict == ERROR]

    def ok(self) -> bool:
        return not self.failed_rows() and not self.errors()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "file": str(self.file),
            "cells": [{"id": c.id, "key": c.key, "target": c.target, "seed": c.seed, "profile": c.profile,
                       "verdict": c.verdict, "outcome": c.outcome, "attempts": c.attempts,
                       "duration": round(c.duration, 3), "worker": c.worker, "rtl_build": c.rtl_build,
                       "counts": dict(c.counts())} for c in self.cells],
            "matrix": {r.id: r.statuses for r in self.rows.values()},
            "failures": {r.id: [{"cell": f.cell.id, "seed": f.cell.seed, "evidence": f.evidence,
                                 "reproduce": f.reproduce} for f in r.failures] for r in self.failed_rows()},
        }

    def write_matrix_csv(self, path: Path) -> Path:
        import csv

        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "area", "level", *(c.id for c in self.cells)])
            for r in self.rows.values():
                w.writerow([r.id, r.area, r.level, *(r.statuses[c.id] for c in self.cells)])
        return path

    def write_junit(self, path: Path) -> Path:
        """One testsuite per cell, one testcase per id; a cell without results is one erroring case."""
        root = ET.Element("testsuites", name=f"campaign {self.name}")
        for cell in self.cells:
            counts = cell.counts()
            suite = ET.SubElement(root, "testsuite", name=cell.id, tests=str(max(1, sum(counts.values()))),
                                  failures=str(counts[FAILED]), errors=str(int(cell.results is None)),
                                  skipped=str(sum(counts.values()) - counts[FAILED] - counts[PASSED]),
                                  time=f"{cell.duration:.3f}")
            props = ET.SubElement(suite, "properties")
            for name, value in (("target", cell.target), ("seed", str(cell.seed)), ("profile", cell.profile),
                                ("reproduce", reproduce_command(self.file, cell.id))):
                ET.SubElement(props, "property", name=name, value=value)
            if cell.results is None:
                case = ET.SubElement(suite, "testcase", classname=cell.id, name="cell")
                ET.SubElement(case, "error", message=f"cell {cell.outcome}").text = cell.log_tail
                continue
            for req_id, r in cell.results["ids"].items():
                case = ET.SubElement(suite, "testcase", classname=f"{cell.id}.{r['area']}", name=req_id)
                if r["status"] == FAILED:
                    ev = list(r["evidence"])
                    ET.SubElement(case, "failure", message=ev[0] if ev else FAILED).text = "\n".join(ev)
                elif r["status"] != PASSED:
                    ET.SubElement(case, "skipped", message=str(r["status"]))
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
        return path
