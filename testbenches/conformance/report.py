"""Conformance results: the per-id model, its JSON form, and the three renderings.

* :func:`render_terminal` - the per-area table and the failed ids (rich).
* :func:`render_html` - one self-contained page (Jinja2); several
  :class:`Results` (for example ``sim`` and ``rtl``) are shown side by side.
* :func:`write_requirements_junit` - one JUnit test case per requirement id.

The real drivers' sections (DPDK virtio_user, a Linux guest's virtio_net judged during interop runs by
``serve --judge-driver``) are rendered apart, from their findings files: :mod:`testbenches.conformance.real_drivers`.

Checks parametrised by ring layout (the ``layout`` fixture) record each outcome with its layout; an id then
also gets a status per layout (:attr:`IdResult.layouts`), and passes only when no layout failed and every
layout that judged it passed, was not offered or does not apply (:func:`aggregate_layouts`).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import jinja2
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from testbenches.conformance.requirements import CheckerKind, RequirementSet, load_requirements


class Outcome(StrEnum):
    """What one check (one test item) concluded about one id."""

    PASSED = "passed"
    FAILED = "failed"
    #: Failed in the way a deviation recorded for the device (its quirk entry) describes.
    DEVIATION = "deviation"
    NOT_OFFERED = "not offered"
    NOT_APPLICABLE = "not applicable"
    SKIPPED = "skipped"
    #: Listed in the check's marker, the check ran to its end, and it neither judged nor excused the id.
    NOT_JUDGED = "not judged"


class Status(StrEnum):
    """Aggregated status of one id over every check that covers it."""

    PASSED = "passed"
    FAILED = "failed"
    #: Every failure of the id is a known deviation of this device (named by its quirk entry, with evidence).
    DEVIATION = "deviation"
    NOT_OFFERED = "not offered"
    NOT_APPLICABLE = "not applicable"
    NOT_COVERED = "not covered"
    NOT_TESTABLE = "not testable"


#: Precedence when aggregating: the first outcome present wins.
_PRECEDENCE: tuple[tuple[Outcome, Status], ...] = (
    (Outcome.FAILED, Status.FAILED),
    (Outcome.DEVIATION, Status.DEVIATION),
    (Outcome.PASSED, Status.PASSED),
    (Outcome.NOT_OFFERED, Status.NOT_OFFERED),
    (Outcome.NOT_APPLICABLE, Status.NOT_APPLICABLE),
)


@dataclass(frozen=True)
class CheckRecord:
    """One outcome for one id from one test item; ``evidence`` explains failures and non-applicability."""

    nodeid: str
    outcome: Outcome
    evidence: str = ""
    #: The ring layout the check ran on ("split", "packed"); "" for checks not parametrised by layout.
    layout: str = ""

    def inconclusive_note(self) -> str | None:
        """Why this record leaves its id without a verdict (skipped, not judged); None for conclusive ones."""
        if self.outcome is Outcome.SKIPPED:
            return f"{self.nodeid}: skipped: {self.evidence}"
        if self.outcome is Outcome.NOT_JUDGED:
            return f"listed by {self.nodeid} but not judged"
        return None


def aggregate(records: Sequence[CheckRecord], checker_kind: CheckerKind) -> Status:
    """Failed if any check failed; else a deviation if a failure was a known one; else passed if any passed;
    else not offered / not applicable.

    Ids without a conclusive record (none, skipped, listed but not judged) are
    "not covered", or "not testable" when the table says no check can decide them.
    """
    present = {r.outcome for r in records}
    for outcome, status in _PRECEDENCE:
        if outcome in present:
            return status
    return Status.NOT_TESTABLE if checker_kind is CheckerKind.NOT_TESTABLE else Status.NOT_COVERED


#: Per-layout statuses that let an id pass: judged and passed, or excused with a reason.
_LAYOUT_OK = (Status.PASSED, Status.NOT_OFFERED, Status.NOT_APPLICABLE)


def aggregate_layouts(records: Sequence[CheckRecord], checker_kind: CheckerKind) -> tuple[Status, dict[str, Status]]:
    """The id's status and its status per ring layout (records tagged with one).

    As :func:`aggregate`, except that a passed id whose checks on some layout left it without a verdict
    (skipped, listed but not judged) is *not covered*: an id passes only on every layout the target offers.
    A failure on any one layout fails the id."""
    status = aggregate(records, checker_kind)
    by_layout: dict[str, list[CheckRecord]] = {}
    for r in records:
        if r.layout:
            by_layout.setdefault(r.layout, []).append(r)
    layouts = {lay: aggregate(recs, checker_kind) for lay, recs in by_layout.items()}
    if status is Status.PASSED and any(s not in _LAYOUT_OK for s in layouts.values()):
        status = Status.NOT_COVERED
    return status, layouts


@dataclass
class IdResult:
    id: str
    status: Status
    area: str
    role: str
    level: str
    checks: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    #: Checks that list the id in their marker but ran to their end without judging it.
    unjudged_by: list[str] = field(default_factory=list)
    #: Status per ring layout, for ids judged by checks parametrised by layout ({} otherwise).
    layouts: dict[str, Status] = field(default_factory=dict)

    def layout_text(self) -> str:
        """``split passed, packed not offered`` ("" without per-layout verdicts)."""
        return ", ".join(f"{lay} {st}" for lay, st in self.layouts.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "area": self.area,
            "role": self.role,
            "level": self.level,
            "checks": list(self.checks),
            "evidence": list(self.evidence),
            "unjudged_by": list(self.unjudged_by),
            "layouts": {lay: str(st) for lay, st in self.layouts.items()},
        }

    @classmethod
    def from_json(cls, req_id: str, data: dict[str, Any]) -> IdResult:
        return cls(
            id=req_id,
            status=Status(data["status"]),
            area=str(data["area"]),
            role=str(data["role"]),
            level=str(data["level"]),
            checks=[str(c) for c in data.get("checks", [])],
            evidence=[str(e) for e in data.get("evidence", [])],
            unjudged_by=[str(c) for c in data.get("unjudged_by", [])],
            layouts={str(lay): Status(st) for lay, st in data.get("layouts", {}).items()},
        )


@dataclass
class Results:
    """Everything one run concluded about one target; the content of ``results.json``."""

    target: str
    started: str
    duration: float
    ids: dict[str, IdResult]
    #: The quirk entry whose recorded deviations the run applied, and how it was chosen ("" without one).
    quirk: str = ""

    @classmethod
    def build(
        cls,
        target: str,
        started: datetime,
        duration: float,
        requirements: RequirementSet,
        records: dict[str, list[CheckRecord]],
        quirk: str = "",
    ) -> Results:
        ids: dict[str, IdResult] = {}
        for req_id, req in requirements.items():
            recs = records.get(req_id, [])
            status, layouts = aggregate_layouts(recs, req.checker_kind)
            wanted = {s: o for o, s in _PRECEDENCE}.get(status)
            evidence = [f"{r.nodeid}: {r.evidence}" for r in recs if r.outcome is wanted and r.evidence]
            if status in (Status.NOT_COVERED, Status.NOT_TESTABLE):
                evidence = [n for n in (r.inconclusive_note() for r in recs) if n is not None]
            ids[req_id] = IdResult(
                id=req_id,
                status=status,
                area=req.area,
                role=str(req.role),
                level=str(req.level),
                checks=list(dict.fromkeys(r.nodeid for r in recs)),
                evidence=evidence,
                unjudged_by=list(dict.fromkeys(r.nodeid for r in recs if r.outcome is Outcome.NOT_JUDGED)),
                layouts=layouts,
            )
        return cls(target=target, started=started.isoformat(timespec="seconds"), duration=duration, ids=ids,
                   quirk=quirk)

    # -- queries -----------------------------------------------------------
    def failed(self) -> list[IdResult]:
        return [r for r in self.ids.values() if r.status is Status.FAILED]

    def deviations(self) -> list[IdResult]:
        """Ids that failed only in ways the device's quirk entry records."""
        return [r for r in self.ids.values() if r.status is Status.DEVIATION]

    def unjudged(self) -> list[IdResult]:
        """Ids left not covered although a check lists them: the check never judged them."""
        return [r for r in self.ids.values() if r.status is Status.NOT_COVERED and r.unjudged_by]

    def counts(self) -> Counter[Status]:
        return Counter(r.status for r in self.ids.values())

    def layout_counts(self) -> dict[str, Counter[Status]]:
        """Per ring layout: how many ids judged per layout have each status on it."""
        out: dict[str, Counter[Status]] = {}
        for r in self.ids.values():
            for lay, st in r.layouts.items():
                out.setdefault(lay, Counter())[st] += 1
        return out

    def area_counts(self) -> dict[str, Counter[Status]]:
        out: dict[str, Counter[Status]] = {}
        for r in self.ids.values():
            out.setdefault(r.area, Counter())[r.status] += 1
        return out

    def summary(self) -> dict[str, Any]:
        def flat(c: Counter[Status]) -> dict[str, int]:
            return {"total": sum(c.values()), **{str(s): c.get(s, 0) for s in Status}}

        return {**flat(self.counts()), "areas": {a: flat(c) for a, c in self.area_counts().items()},
                "layouts": {lay: flat(c) for lay, c in self.layout_counts().items()}}

    # -- JSON --------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "started": self.started,
            "duration": round(self.duration, 3),
            "quirk": self.quirk,
            "ids": {i: r.to_json() for i, r in self.ids.items()},
            "summary": self.summary(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        return cls(
            target=str(data["target"]),
            started=str(data["started"]),
            duration=float(data["duration"]),
            ids={i: IdResult.from_json(i, d) for i, d in data["ids"].items()},
            quirk=str(data.get("quirk", "")),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Results:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


# -- terminal ---------------------------------------------------------------

_STYLE = {
    Status.PASSED: "green",
    Status.FAILED: "bold red",
    Status.DEVIATION: "magenta",
    Status.NOT_OFFERED: "cyan",
    Status.NOT_APPLICABLE: "cyan",
    Status.NOT_COVERED: "yellow",
    Status.NOT_TESTABLE: "dim",
}


def area_table(results: Results) -> Table:
    """Counts per area; the deviation column only when the run has known deviations."""
    title = f"conformance: {results.target}" + (f" (quirk {results.quirk})" if results.quirk else "")
    table = Table(title=escape(title), title_justify="left")
    table.add_column("area")
    columns: list[tuple[str, str, tuple[Status, ...]]] = [
        ("passed", "green", (Status.PASSED,)),
        ("failed", "red", (Status.FAILED,)),
        ("deviation", "magenta", (Status.DEVIATION,)),
        ("not offered/n.a.", "cyan", (Status.NOT_OFFERED, Status.NOT_APPLICABLE)),
        ("not covered", "yellow", (Status.NOT_COVERED,)),
        ("not testable", "dim", (Status.NOT_TESTABLE,)),
    ]
    if not results.deviations():
        columns = [c for c in columns if c[0] != "deviation"]
    for name, style, _ in columns:
        table.add_column(name, justify="right", style=style)
    table.add_column("total", justify="right", style="bold")
    per_area = results.area_counts()
    rows = [*per_area.items(), ("all", results.counts())]
    for i, (area, c) in enumerate(rows):
        table.add_row(area, *(str(sum(c[s] for s in statuses)) for _, _, statuses in columns),
                      str(sum(c.values())), end_section=i == len(rows) - 2)
    return table


def render_terminal(
    results: Results, console: Console | None = None, max_evidence: int = 3, max_failed: int = 60
) -> None:
    """Print the per-area table, then the failed ids (at most ``max_failed``) with the first lines of evidence."""
    console = console or Console()
    console.print(area_table(results))
    for lay, c in results.layout_counts().items():
        console.print(f"{lay} rings: {sum(c.values())} id(s) judged per layout: {c[Status.PASSED]} passed, "
                      f"{c[Status.FAILED]} failed, {c[Status.NOT_OFFERED]} not offered, "
                      f"{c[Status.NOT_APPLICABLE]} not applicable, "
                      f"{c[Status.NOT_COVERED] + c[Status.NOT_TESTABLE]} not judged", highlight=False)
    unjudged = results.unjudged()
    if unjudged:
        console.print(
            f"[yellow]{len(unjudged)} id(s) not covered although a check lists them (listed but not judged),"
            " see report.html[/]",
            highlight=False,
        )
    deviations = results.deviations()
    if deviations:
        console.print(f"[magenta]{len(deviations)} known deviation(s) of {escape(results.quirk)}:[/] "
                      + ", ".join(r.id for r in deviations), highlight=False)
    failed = results.failed()
    if not failed:
        return
    console.print(f"[bold red]{len(failed)} failed requirement id(s):[/]", highlight=False)
    if len(failed) > max_failed:
        console.print(f"  (first {max_failed} shown, all are in report.html)")
    for r in failed[:max_failed]:
        layouts = escape(f" [{r.layout_text()}]") if r.layouts else ""
        console.print(f"  [bold red]{r.id}[/] ({r.level}){layouts} checks: {', '.join(r.checks) or '-'}",
                      highlight=False)
        for line in r.evidence[:max_evidence]:
            console.print(f"      {line}", markup=False, highlight=False)
        if len(r.evidence) > max_evidence:
            console.print(f"      ... {len(r.evidence) - max_evidence} more", highlight=False)


# -- HTML ---------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("testbenches.conformance", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["css"] = lambda s: str(s).replace(" ", "-")
    return env


def render_html(
    results: Sequence[Results],
    path: Path,
    requirements: RequirementSet | None = None,
    title: str = "virtio conformance",
    driver_sections: Sequence[dict[str, Any]] = (),
) -> Path:
    """Write one self-contained HTML page; with several results each target gets its own column. With
    ``driver_sections`` (:func:`testbenches.conformance.real_drivers.driver_sections`) the page ends with a
    section per real driver judged during interop runs."""
    if not results:
        raise ValueError("render_html needs at least one Results")
    reqs = requirements if requirements is not None else load_requirements()
    areas: list[dict[str, Any]] = []
    for area, members in reqs.by_area().items():
        counts = [res.area_counts().get(area, Counter()) for res in results]
        areas.append({"name": area, "total": len(members), "counts": counts})
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            generated=datetime.now(UTC).isoformat(timespec="seconds"),
            results=results,
            requirements=list(reqs.values()),
            areas=areas,
            totals=[res.counts() for res in results],
            layout_rows=[(res.target, lay, c) for res in results for lay, c in res.layout_counts().items()],
            statuses=list(Status),
            Status=Status,
            driver_sections=list(driver_sections),
        )
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


# -- per-requirement JUnit ----------------------------------------------------


def write_requirements_junit(results: Results, path: Path) -> Path:
    """One ``testsuite`` per area, one ``testcase`` per id: failed ids fail, the rest pass or are skipped."""
    root = ET.Element("testsuites", name=f"requirements {results.target}")
    by_area: dict[str, list[IdResult]] = {}
    for r in results.ids.values():
        by_area.setdefault(r.area, []).append(r)
    for area, members in by_area.items():
        counts = Counter(r.status for r in members)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{results.target}.{area}",
            tests=str(len(members)),
            failures=str(counts[Status.FAILED]),
            errors="0",
            skipped=str(len(members) - counts[Status.FAILED] - counts[Status.PASSED]),
        )
        for r in members:
            case = ET.SubElement(suite, "testcase", classname=f"{results.target}.{area}", name=r.id)
            props = ET.SubElement(case, "properties")
            ET.SubElement(props, "property", name="status", value=str(r.status))
            for lay, st in r.layouts.items():
                ET.SubElement(props, "property", name=f"layout {lay}", value=str(st))
            for check in r.checks:
                ET.SubElement(props, "property", name="check", value=check)
            if r.status is Status.DEVIATION:
                ET.SubElement(props, "property", name="quirk", value=results.quirk)
            if r.status is Status.FAILED:
                message = r.evidence[0] if r.evidence else "failed"
                failure = ET.SubElement(case, "failure", message=f"{r.layout_text()}: {message}" if r.layouts
                                        else message)
                failure.text = "\n".join(r.evidence)
            elif r.status is not Status.PASSED:
                ET.SubElement(case, "skipped", message=_skip_message(r))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def _skip_message(r: IdResult) -> str:
    return "; ".join([str(r.status) + (f" ({r.layout_text()})" if r.layouts else ""), *r.evidence])
