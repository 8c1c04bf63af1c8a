"""pytest plugin of the conformance suite: target selection, requirement ids, verdicts, reports.

Loaded through the ``pytest11`` entry point ``vdpa_conformance`` (or with
``-p testbenches.conformance.plugin`` when plugin autoloading is off).

Command line (group "vdpa-bench conformance"):

``--target SPEC``
    device under test, resolved by :func:`backend.targets.default_registry`;
    default ``sim:virtio-net``; ``sim`` alone means ``sim:virtio-net``.
``--report-dir DIR``
    write ``results.json``, ``report.html`` and ``requirements-junit.xml``
    (one test case per requirement id) there; ``--junitxml`` keeps working
    for the per-test view.
``--sim {verilator,icarus}``, ``--waves``
    reserved for the ``rtl:`` target: stored and exposed through the
    ``target_options`` fixture, ignored by the other targets.
``--vdpa-progress``
    a rich progress bar on stderr (best with ``-q`` or ``-p no:terminal``).

In a check:

* ``@pytest.mark.req("SPLIT-DEV-13", "SPLIT-DEV-14")`` names the covered
  ids; an id missing from ``spec/virtio-requirements.csv`` is a collection
  error. Markers on classes and modules (``pytestmark``) add to the ids.
* ``target_spec`` (str), ``target_options`` (:class:`TargetOptions`) and
  ``open_target`` (call it to open a fresh device; all are closed at
  teardown, also when the check fails).
* ``verdict``: soft, per-id assertions (:class:`Verdict`). An id passes
  only through ``verdict.check`` (a judgement the device could have
  failed); ``verdict.not_offered`` / ``verdict.not_applicable`` say why it
  was not judged. A test that ends with failed verdict checks fails,
  listing every failed id with its evidence. A test that raises marks its
  ids without a verdict record failed, with the exception as evidence; an
  id a test that ran to its end lists but neither judges nor excuses is
  *not covered*, with "listed by <check> but not judged" in the report
  (it is no evidence either way). ``pytest.skip`` leaves unrecorded ids
  not covered; an xfail counts as a failure of its ids (a known
  non-conformance is still a non-conformance).

Hypothesis: ``@given`` tests that take the function-scoped ``verdict`` or
``open_target`` fixtures need
``@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])``;
that is intended here, one verdict collects the outcome of every example.
Alternatively take ``request`` and call ``verdict_for(request.node)``,
which returns the same object without going through a fixture. A plain
``assert`` lets hypothesis shrink a counterexample (the shrunk failure then
becomes the evidence for the test's unrecorded ids), but passes nothing:
judge the ids with ``verdict.check`` as well.

Per id, over every test that covers it: failed if any failed, else passed
if any passed, else not offered, else not applicable; no conclusive record
gives "not covered" ("not testable" for rows of that checker kind).

Ring layouts: a check parametrised by ``ring_layout`` (the fixture of
``checks/conftest.py``, values "split" and "packed") records every outcome
with the layout of its run, and the report shows each id's status per
layout. Such an id passes only if no layout failed and every layout that
ran passed or was excused (not offered, not applicable): a failure on packed
rings alone fails it, a packed run that left it unjudged leaves it not
covered (:func:`~testbenches.conformance.report.aggregate_layouts`). A check
that runs on one layout only says which with ``@pytest.mark.ring_layout("packed")``
(on the test, class or module), so its verdicts show under that layout too.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from testbenches.conformance.deadlines import DEFAULT_BUDGET
from testbenches.conformance.deviations import KnownDeviations, UnknownQuirkError
from testbenches.conformance.report import (
    CheckRecord,
    Outcome,
    Results,
    render_html,
    render_terminal,
    write_requirements_junit,
)
from testbenches.conformance.requirements import RequirementSet, UnknownRequirementError, load_requirements

if TYPE_CHECKING:
    from backend.pci.device import PciDevice
    from backend.targets import TargetRegistry

DEFAULT_TARGET = "sim:virtio-net"
#: Short target names and what they stand for.
TARGET_ALIASES: dict[str, str] = {"sim": DEFAULT_TARGET}
MARKER = "req"
#: The parameter (fixture) name whose value is the ring layout a check ran on (not "layout": a vDPA check
#: already parametrises the layout of a state block by that name).
LAYOUT_PARAM = "ring_layout"
#: Failure evidence kept per id and test; more failures are only counted.
MAX_EVIDENCE = 10
#: A check's pytest timeout is at least this many times ``--check-budget`` (:func:`check_timeout`).
BACKSTOP_FACTOR = 2.0


def normalize_target(spec: str) -> str:
    """``sim`` -> ``sim:virtio-net``; anything else unchanged."""
    spec = spec.strip()
    return TARGET_ALIASES.get(spec, spec)


def target_name(spec: str) -> str:
    """A file-system friendly name of a target spec: ``sim:virtio-net`` -> ``sim-virtio-net``."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in normalize_target(spec))
    return cleaned.strip("-") or "target"


class VerdictUsageError(Exception):
    """A verdict call about an id that the test's ``req`` marker does not name."""


@dataclass(frozen=True)
class TargetOptions:
    """Options of the device under test; ``sim``/``waves`` only matter to the ``rtl:`` target."""

    spec: str
    sim: str | None = None
    waves: bool = False

    def device_spec(self, spec: str, waves: Path | None = None) -> str:
        """``spec`` with ``sim=`` and ``waves=PATH`` added when it is an ``rtl:`` target that lacks them."""
        if not spec.startswith("rtl"):
            return spec
        have = {p.split("=", 1)[0] for p in spec.split(",")[1:]}
        extra = [f"sim={self.sim}"] if self.sim and "sim" not in have else []
        extra += [f"waves={waves}"] if waves is not None and "waves" not in have else []
        if not extra:
            return spec
        return ",".join([spec if ":" in spec else "rtl:virtio-net", *extra])


@dataclass
class ConformanceRun:
    """Per-session state, kept in ``config.stash``."""

    options: TargetOptions
    requirements: RequirementSet
    report_dir: Path | None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    clock: float = field(default_factory=time.monotonic)
    records: dict[str, list[CheckRecord]] = field(default_factory=dict)
    items_with_ids: int = 0
    results: Results | None = None
    #: The device's quirk entry and the deviations it records (see :mod:`.deviations`).
    known: KnownDeviations = field(default_factory=KnownDeviations)
    #: How the session's deadlines were scaled (``Deadlines.describe``; "" until the checks' fixture calibrated them).
    time_scale: str = ""

    def add(self, req_id: str, record: CheckRecord, *, raised: bool = False) -> None:
        """Record an outcome; a failure the device's quirk entry explains becomes a deviation. ``raised``: the
        failure is the check's exception (or xfail marker), not one of its verdicts."""
        if record.outcome is Outcome.FAILED:
            known = self.known.explain(req_id, record.nodeid, record.evidence, error=raised)
            if known is not None:
                record = CheckRecord(record.nodeid, Outcome.DEVIATION, known, record.layout)
        self.records.setdefault(req_id, []).append(record)

    def all_known(self, verdict: Verdict) -> bool:
        """Whether every failure ``verdict`` recorded is a known deviation of the device."""
        return all(self.known.explain(rid, verdict.nodeid, note) is not None
                   for rid, notes in verdict.failures().items() for note in notes)

    def finish(self) -> Results:
        self.results = Results.build(
            target=self.options.spec,
            started=self.started,
            duration=time.monotonic() - self.clock,
            requirements=self.requirements,
            records=self.records,
            quirk=self.known.describe(),
        )
        return self.results


RUN_KEY = pytest.StashKey[ConformanceRun]()


class Verdict:
    """Soft assertions about individual requirement ids inside one test."""

    def __init__(self, nodeid: str, ids: Sequence[str], max_evidence: int = MAX_EVIDENCE, layout: str = "") -> None:
        self.nodeid = nodeid
        self.ids = tuple(ids)
        self.max_evidence = max_evidence
        self.layout = layout  # the ring layout of this run ("" when the check is not parametrised by it)
        self._outcomes: dict[str, set[Outcome]] = {}
        self._notes: dict[str, list[tuple[Outcome, str]]] = {}
        #: Notes past max_evidence, counted per id and outcome (a "not offered" overflow is no failure).
        self._dropped: dict[str, dict[Outcome, int]] = {}

    def _allowed(self, req_id: str) -> None:
        if req_id not in self.ids:
            named = ", ".join(self.ids) or "none"
            raise VerdictUsageError(f"{req_id!r} is not among the ids of this check's req marker ({named})")

    def _record(self, req_id: str, outcome: Outcome, note: str) -> None:
        self._allowed(req_id)
        self._outcomes.setdefault(req_id, set()).add(outcome)
        if outcome is Outcome.PASSED:
            return
        notes = self._notes.setdefault(req_id, [])
        if sum(o is outcome for o, _ in notes) < self.max_evidence:
            notes.append((outcome, note))
        else:
            dropped = self._dropped.setdefault(req_id, {})
            dropped[outcome] = dropped.get(outcome, 0) + 1

    def check(self, req_id: str, condition: bool, evidence: str = "") -> bool:
        """Record that ``req_id`` holds (``condition`` true) or not; returns ``condition`` as a bool."""
        ok = bool(condition)
        self._record(req_id, Outcome.PASSED if ok else Outcome.FAILED, evidence or "check failed")
        return ok

    def not_offered(self, req_id: str, why: str) -> None:
        """The target does not offer the feature ``req_id`` is about; never a failure."""
        self._record(req_id, Outcome.NOT_OFFERED, why)

    def not_applicable(self, req_id: str, why: str) -> None:
        """``req_id`` does not apply to this target or configuration."""
        self._record(req_id, Outcome.NOT_APPLICABLE, why)

    def recorded(self, req_id: str) -> bool:
        return req_id in self._outcomes

    def failures(self) -> dict[str, list[str]]:
        """Failed ids with their evidence (in the order they failed)."""
        out: dict[str, list[str]] = {}
        for req_id, notes in self._notes.items():
            for outcome, note in notes:
                if outcome is Outcome.FAILED:
                    out.setdefault(req_id, []).append(note)
            more = self._dropped.get(req_id, {}).get(Outcome.FAILED, 0)
            if req_id in out and more:
                out[req_id].append(f"... and {more} more")
        return out

    def records(self) -> dict[str, list[CheckRecord]]:
        """The records of this test, one per id and outcome (failures: one per kept evidence line)."""
        out: dict[str, list[CheckRecord]] = {}
        for req_id, outcomes in self._outcomes.items():
            recs = out.setdefault(req_id, [])
            if Outcome.PASSED in outcomes:
                recs.append(CheckRecord(self.nodeid, Outcome.PASSED, layout=self.layout))
            recs.extend(CheckRecord(self.nodeid, o, n, self.layout) for o, n in self._notes.get(req_id, []))
            recs.extend(CheckRecord(self.nodeid, o, f"... and {n} more", self.layout)
                        for o, n in self._dropped.get(req_id, {}).items())
        return out

    def failure_message(self) -> str:
        lines = [f"{len(self.failures())} requirement id(s) failed:"]
        for req_id, notes in self.failures().items():
            lines.append(f"  {req_id}:")
            lines.extend(f"    - {n}" for n in notes)
        return "\n".join(lines)


@dataclass
class _ItemState:
    """What the report phases of one item said, gathered until teardown."""

    error: str | None = None
    skipped: str | None = None
    xfailed: str | None = None
    verdict_failed: bool = False
    #: Every verdict failure was a known deviation: the item was turned into an xfail by this plugin.
    known_deviation: bool = False


VERDICT_KEY = pytest.StashKey[Verdict]()
STATE_KEY = pytest.StashKey[_ItemState]()


def req_ids(item: pytest.Item) -> list[str]:
    """Every id named by ``req`` markers on the item, its class and module (order kept, no duplicates)."""
    ids: list[str] = []
    for mark in item.iter_markers(MARKER):
        if not mark.args:
            raise pytest.Collector.CollectError(f"{item.nodeid}: @pytest.mark.{MARKER}() needs at least one id")
        for arg in mark.args:
            if not isinstance(arg, str):
                raise pytest.Collector.CollectError(f"{item.nodeid}: requirement ids are strings, got {arg!r}")
            ids.append(arg)
    return list(dict.fromkeys(ids))


def item_layout(item: pytest.Item) -> str:
    """The ring layout an item runs on: its ``ring_layout`` parameter, else its ``ring_layout`` marker, else ""."""
    callspec = getattr(item, "callspec", None)
    value = callspec.params.get(LAYOUT_PARAM) if callspec is not None else None
    if value is None:
        mark = item.get_closest_marker(LAYOUT_PARAM)
        value = mark.args[0] if mark is not None and mark.args else None
    return "" if value is None else str(value)


def verdict_for(item: pytest.Item) -> Verdict:
    """The verdict of a test item (created on first use); same object as the ``verdict`` fixture."""
    verdict = item.stash.get(VERDICT_KEY, None)
    if verdict is None:
        verdict = Verdict(item.nodeid, req_ids(item), layout=item_layout(item))
        item.stash[VERDICT_KEY] = verdict
    return verdict


def conformance_run(config: pytest.Config) -> ConformanceRun:
    return config.stash[RUN_KEY]


# -- options and configuration -------------------------------------------------

#: Name of the ``pytest11`` entry point in pyproject.toml.
ENTRY_POINT = "vdpa_conformance"


def pytest_plugin_registered(plugin: object, plugin_name: str, manager: pytest.PytestPluginManager) -> None:
    """Loaded by module name (``-p testbenches.conformance.plugin``): keep the entry point from loading it twice."""
    if plugin is sys.modules[__name__] and plugin_name != ENTRY_POINT:
        manager.set_blocked(ENTRY_POINT)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vdpa", "vdpa-bench conformance")
    group.addoption(
        "--target",
        default=DEFAULT_TARGET,
        metavar="SPEC",
        help=f"device under test: sim[:MODEL], rtl:..., vfio-user:PATH, vfio:BDF (default {DEFAULT_TARGET})",
    )
    group.addoption(
        "--report-dir",
        default=None,
        metavar="DIR",
        help="write results.json, report.html and requirements-junit.xml into DIR",
    )
    group.addoption(
        "--sim",
        choices=("verilator", "icarus"),
        default=None,
        help="RTL simulator for the rtl: target (reserved, ignored by other targets)",
    )
    group.addoption("--waves", action="store_true", default=False, help="dump waveforms (rtl: target only)")
    group.addoption(
        "--quirk",
        default=None,
        metavar="NAME",
        help="the quirk entry whose recorded deviations describe the device (default: the one its PCI ids match)",
    )
    group.addoption(
        "--check-budget",
        type=float,
        default=DEFAULT_BUDGET,
        metavar="SECONDS",
        help="on a slow target (time scale above 1), a check expected to take longer than this is reported not "
             f"applicable with its estimate (default {DEFAULT_BUDGET:g})",
    )
    group.addoption(
        "--vdpa-progress",
        action="store_true",
        default=False,
        help="show a rich progress bar on stderr while checks run",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f'{MARKER}(*ids): requirement ids (virtio-requirements.csv) this check covers, e.g. {MARKER}("SPLIT-DEV-13")',
    )
    config.addinivalue_line(
        "markers",
        f'{LAYOUT_PARAM}(layout): the ring layout ("split", "packed") a check that runs on one layout only uses; its '
        "verdicts are recorded under that layout",
    )
    report_dir = config.getoption("report_dir")
    quirk = config.getoption("quirk")
    try:
        known = KnownDeviations.named(quirk) if quirk else KnownDeviations()
    except UnknownQuirkError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[RUN_KEY] = ConformanceRun(
        options=TargetOptions(
            spec=normalize_target(config.getoption("target")),
            sim=config.getoption("sim"),
            waves=bool(config.getoption("waves")),
        ),
        requirements=load_requirements(),
        report_dir=Path(report_dir) if report_dir else None,
        known=known,
    )
    if config.getoption("vdpa_progress"):
        config.pluginmanager.register(ProgressPlugin(RichProgress(Console(stderr=True))), "vdpa-progress")


# -- collection: validate ids ---------------------------------------------------


def _items(result: object) -> Iterator[pytest.Item]:
    if isinstance(result, pytest.Item):
        yield result
    elif isinstance(result, list | tuple):
        for r in result:
            yield from _items(r)


def check_timeout(config: pytest.Config) -> float | None:
    """The pytest-timeout a check (an item with requirement ids) is given when the configured one must be raised.
    On a slow target a check runs when its estimate is within ``--check-budget``; estimates can be off, so a
    config file's default (the project's is 300 s) below :data:`BACKSTOP_FACTOR` times the budget is raised to
    that, else it would kill checks the budget admits. A timeout the user asked for (``--timeout``,
    ``PYTEST_TIMEOUT``, a marker) is left as it is."""
    if not config.pluginmanager.hasplugin("timeout"):
        return None
    if config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT"):
        return None
    try:
        configured = float(config.getini("timeout") or 0)
    except (ValueError, TypeError):
        return None
    backstop = BACKSTOP_FACTOR * float(config.getoption("check_budget"))
    return backstop if 0 < configured < backstop else None


@pytest.hookimpl(wrapper=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Generator[None, Any, Any]:
    result = yield
    requirements = conformance_run(collector.config).requirements
    raised = check_timeout(collector.config)
    for item in _items(result):
        try:
            requirements.validate(req_ids(item))
        except UnknownRequirementError as exc:
            raise pytest.Collector.CollectError(f"{item.nodeid}: {exc}") from None
        if raised is not None and req_ids(item) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(raised))
    return result


# -- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="session")
def target_options(pytestconfig: pytest.Config) -> TargetOptions:
    """Target spec plus the RTL-only options (``--sim``, ``--waves``)."""
    return conformance_run(pytestconfig).options


@pytest.fixture(scope="session")
def target_spec(target_options: TargetOptions) -> str:
    """The normalized ``--target`` spec, e.g. ``sim:virtio-net``."""
    return target_options.spec


@pytest.fixture(scope="session")
def target_registry() -> TargetRegistry:
    """The registry targets are opened through (providers imported once per session)."""
    from backend.targets import default_registry

    return default_registry()


class OpenTarget:
    """Opens fresh devices and remembers them so that they can all be closed."""

    def __init__(self, registry: TargetRegistry, spec: str, options: TargetOptions | None = None,
                 waves_stem: Path | None = None, known: KnownDeviations | None = None) -> None:
        self.registry = registry
        self.spec = spec
        self.options = options
        self.waves_stem = waves_stem  # --waves: each rtl: device writes <stem>-<n>.fst
        self.waves: list[Path] = []
        self.opened: list[PciDevice] = []
        self.known = known  # the run's quirk entry, chosen by the first device's ids when not named

    def __call__(self, spec: str | None = None) -> PciDevice:
        spec = spec or self.spec
        if self.options is not None:
            wave = None
            if self.waves_stem is not None and spec.startswith("rtl"):
                wave = self.waves_stem.with_name(f"{self.waves_stem.name}-{len(self.waves)}.fst")
                self.waves.append(wave)
            spec = self.options.device_spec(spec, wave)
        device = self.registry.open(spec)
        self.opened.append(device)
        if self.known is not None:
            self.known.match(device)
        return device

    def close_all(self) -> None:
        errors: list[BaseException] = []
        while self.opened:
            device = self.opened.pop()
            try:
                device.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise ExceptionGroup("closing target devices failed", [e for e in errors if isinstance(e, Exception)])


@pytest.fixture
def open_target(target_registry: TargetRegistry, target_options: TargetOptions,
                request: pytest.FixtureRequest) -> Iterator[OpenTarget]:
    """``dev = open_target()`` opens a fresh device of ``--target``; every one is closed at teardown.

    With ``--waves`` an ``rtl:`` device dumps an FST under ``<report dir>/waves/``; it is kept only when
    the check failed."""
    run = conformance_run(request.config)
    stem = None
    if target_options.waves:
        folder = (run.report_dir or Path("reports") / target_name(target_options.spec)) / "waves"
        stem = folder / "".join(c if c.isalnum() or c in "._-" else "_" for c in request.node.nodeid)
    opener = OpenTarget(target_registry, target_options.spec, target_options, stem, run.known)
    try:
        yield opener
    finally:
        try:
            opener.close_all()
        finally:
            node = request.node
            state = node.stash.get(STATE_KEY, None) if isinstance(node, pytest.Item) else None
            failed = state is not None and (state.error is not None or state.verdict_failed)
            for wave in opener.waves if not failed else []:
                wave.unlink(missing_ok=True)


@pytest.fixture
def verdict(request: pytest.FixtureRequest) -> Verdict:
    """Per-id soft assertions; see :class:`Verdict`."""
    node = request.node
    assert isinstance(node, pytest.Item)
    return verdict_for(node)


# -- running: verdicts and records ----------------------------------------------


def _state(item: pytest.Item) -> _ItemState:
    state = item.stash.get(STATE_KEY, None)
    if state is None:
        state = item.stash[STATE_KEY] = _ItemState()
    return state


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    verdict = item.stash.get(VERDICT_KEY, None)
    try:
        yield
    except BaseException:
        if verdict is not None and verdict.failures():
            item.add_report_section("call", "verdict", verdict.failure_message())
        raise
    if verdict is not None and verdict.failures():
        _state(item).verdict_failed = True
        run = conformance_run(item.config)
        if run.all_known(verdict):
            _state(item).known_deviation = True
            # pytest's own word for an expected failure: the run exits 0 when nothing else failed
            pytest.xfail(f"known deviation(s) of {run.known.describe()}: {', '.join(verdict.failures())}")
        pytest.fail(verdict.failure_message(), pytrace=False)


def _describe(call: pytest.CallInfo[None], report: pytest.TestReport) -> str:
    text = ""
    if call.excinfo is not None:
        text = call.excinfo.exconly().strip()
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            text += f" ({crash.path}:{crash.lineno})"
    extra = [body.strip() for title, body in report.sections if title.startswith("Hypothesis")]
    return "\n".join([text or report.longreprtext.strip(), *extra])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report: pytest.TestReport = yield
    ids = req_ids(item)
    if not ids:
        return report
    state = _state(item)
    wasxfail = getattr(report, "wasxfail", None)
    if report.skipped and wasxfail is not None and state.known_deviation:
        pass  # the verdict's own records say which ids deviated
    elif report.skipped and wasxfail is not None:
        state.xfailed = f"xfail ({wasxfail or 'expected failure'}): {_describe(call, report)}"
    elif report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else "skipped"
        state.skipped = state.skipped or str(reason).removeprefix("Skipped: ")  # pytest.skip() prefixes it
    elif report.failed and not (report.when == "call" and state.verdict_failed) and state.error is None:
        state.error = f"{report.when} error: {_describe(call, report)}"
    if report.when == "teardown":
        _finish_item(item, ids, state)
    return report


def _finish_item(item: pytest.Item, ids: list[str], state: _ItemState) -> None:
    run = conformance_run(item.config)
    run.items_with_ids += 1
    verdict = item.stash.get(VERDICT_KEY, None)
    recorded = verdict.records() if verdict is not None else {}
    layout = item_layout(item)
    for req_id in ids:
        if req_id in recorded:
            for record in recorded[req_id]:
                run.add(req_id, record)
        elif state.error is not None:
            run.add(req_id, CheckRecord(item.nodeid, Outcome.FAILED, state.error, layout), raised=True)
        elif state.xfailed is not None:
            run.add(req_id, CheckRecord(item.nodeid, Outcome.FAILED, state.xfailed, layout), raised=True)
        elif state.skipped is not None:
            run.add(req_id, CheckRecord(item.nodeid, Outcome.SKIPPED, state.skipped, layout))
        else:
            # Running to the end without a judgement on an id is no evidence about it.
            run.add(req_id, CheckRecord(item.nodeid, Outcome.NOT_JUDGED, layout=layout))


# -- end of session: results and reports ----------------------------------------


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(RUN_KEY, None)
    if run is None:
        return
    results = run.finish()
    if run.report_dir is not None:
        write_reports(results, run.report_dir, run.requirements)


def write_reports(results: Results, out: Path, requirements: RequirementSet | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``report.html`` and ``requirements-junit.xml`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": out / "results.json",
        "html": out / "report.html",
        "junit": out / "requirements-junit.xml",
    }
    results.save(paths["results"])
    render_html([results], paths["html"], requirements)
    write_requirements_junit(results, paths["junit"])
    return paths


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(RUN_KEY, None)
    if run is None or run.results is None or run.items_with_ids == 0:
        return
    tw = config.get_terminal_writer()
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=tw.fullwidth,
        force_terminal=tw.hasmarkup,
        color_system="standard" if tw.hasmarkup else None,
        highlight=False,
    )
    render_terminal(run.results, console)
    terminalreporter.section("vdpa-bench conformance")
    terminalreporter.write(buffer.getvalue())
    if run.time_scale:
        terminalreporter.write_line(f"deadlines: {run.time_scale}")
    if run.report_dir is not None:
        terminalreporter.write_line(f"reports written to {run.report_dir}")


# -- progress -------------------------------------------------------------------


class ProgressListener(Protocol):
    """What the CLI (or ``--vdpa-progress``) is told while checks run."""

    def start(self, total: int) -> None: ...

    def item_started(self, nodeid: str) -> None: ...

    def item_finished(self, nodeid: str, outcome: str) -> None: ...

    def stop(self) -> None: ...


class ProgressPlugin:
    """A pytest plugin object forwarding collection and run progress to a :class:`ProgressListener`."""

    def __init__(self, listener: ProgressListener) -> None:
        self.listener = listener
        self._outcome: dict[str, str] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.listener.start(len(session.items))

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.listener.item_started(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        previous = self._outcome.get(report.nodeid, "passed")
        if report.failed:
            outcome = "failed" if report.when == "call" else "error"
        elif report.skipped and previous == "passed":
            outcome = "skipped"
        else:
            outcome = previous
        self._outcome[report.nodeid] = outcome
        if report.when == "teardown":
            self.listener.item_finished(report.nodeid, self._outcome.pop(report.nodeid))

    def pytest_sessionfinish(self) -> None:
        self.listener.stop()


class RichProgress:
    """A :class:`ProgressListener` drawing a rich progress bar with pass/fail counts."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("[bold]checks"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[passed]} ok[/] [red]{task.fields[failed]} failed[/]"),
            TimeElapsedColumn(),
            TextColumn("{task.description}", style="dim"),
            console=console,
            transient=False,
        )
        self.counts: dict[str, int] = {"passed": 0, "failed": 0}
        self._task: Any = None

    def start(self, total: int) -> None:
        self.progress.start()
        self._task = self.progress.add_task("", total=total, passed=0, failed=0)

    def item_started(self, nodeid: str) -> None:
        if self._task is not None:
            self.progress.update(self._task, description=nodeid.rsplit("::", 1)[-1])

    def item_finished(self, nodeid: str, outcome: str) -> None:
        key = "passed" if outcome in ("passed", "skipped") else "failed"
        self.counts[key] += 1
        if self._task is not None:
            self.progress.update(self._task, advance=1, passed=self.counts["passed"], failed=self.counts["failed"])

    def stop(self) -> None:
        if self._task is not None:
            self.progress.update(self._task, description="")
        self.progress.stop()

