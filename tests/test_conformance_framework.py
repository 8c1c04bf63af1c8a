"""The conformance framework (plugin, verdicts, aggregation, reports, CLI) on throwaway checks.

Nothing here touches a device model: checks that need a device get a fake
registry through a conftest in the pytester directory.
"""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from testbenches import cli
from testbenches.conformance import run as suite_run
from testbenches.conformance.report import CheckRecord, Outcome, Results, Status, aggregate, render_html
from testbenches.conformance.requirements import (
    AREAS,
    CheckerKind,
    UnknownRequirementError,
    area_of,
    load_requirements,
)

pytest_plugins = ["pytester"]

#: ``-p testbenches.conformance.plugin`` only when the entry point is not installed.
PLUGIN = tuple(suite_run._plugin_args())

FAKE_TARGETS = """
import pytest


class FakeDevice:
    def __init__(self, log, name):
        self.log, self.name = log, name
        log.append(("open", name))

    def close(self):
        self.log.append(("close", self.name))


class FakeRegistry:
    def __init__(self):
        self.log = []

    def open(self, spec):
        return FakeDevice(self.log, spec)


LOG = []


@pytest.fixture(scope="session")
def target_registry():
    registry = FakeRegistry()
    registry.log = LOG
    return registry


@pytest.fixture(scope="session")
def close_log():
    return LOG
"""

CHECKS = """
import pytest


@pytest.mark.req("SPLIT-DEV-01", "SPLIT-DEV-02")
def test_verdict_pass_and_unjudged_id(verdict):
    verdict.check("SPLIT-DEV-01", True, "fine")


@pytest.mark.req("SPLIT-DEV-03", "SPLIT-DEV-04")
def test_verdict_fail(verdict):
    verdict.check("SPLIT-DEV-03", 1 + 1 == 3, "descriptor 7 has next=9 beyond the table")
    verdict.check("SPLIT-DEV-04", True)


@pytest.mark.req("PCI-DEV-01", "PCI-DEV-02")
def test_raises(verdict):
    verdict.check("PCI-DEV-02", True)
    raise RuntimeError("device went away")


@pytest.mark.req("NETCTRL-DEV-01", "NETCTRL-DEV-02")
def test_not_offered(verdict):
    verdict.not_offered("NETCTRL-DEV-01", "VIRTIO_NET_F_CTRL_VQ not offered")
    verdict.not_applicable("NETCTRL-DEV-02", "single queue pair")


@pytest.mark.req("FEAT-DEV-01")
def test_pass_here(verdict):
    verdict.check("FEAT-DEV-01", True)


@pytest.mark.req("FEAT-DEV-01")
def test_fail_elsewhere(verdict):
    verdict.check("FEAT-DEV-01", False, "second look disagrees")


@pytest.mark.req("FEAT-DEV-02")
def test_offered_somewhere():
    pass


@pytest.mark.req("FEAT-DEV-02")
def test_not_offered_elsewhere(verdict):
    verdict.not_offered("FEAT-DEV-02", "other config")


@pytest.mark.skip(reason="needs packed ring")
@pytest.mark.req("PACKED-DEV-01")
def test_skipped():
    pass


@pytest.mark.xfail(reason="known model bug")
@pytest.mark.req("PACKED-DEV-02")
def test_xfail():
    assert False


def test_without_ids():
    pass
"""


def run_checks(pytester: pytest.Pytester, *args: str, checks: str = CHECKS) -> tuple[pytest.RunResult, Path]:
    pytester.makeconftest(FAKE_TARGETS)
    pytester.makepyfile(test_checks=checks)
    out = pytester.path / "out"
    result = pytester.runpytest(*PLUGIN, "--color=no", "--report-dir", str(out), *args)
    return result, out


def load_ids(out: Path) -> dict[str, Any]:
    data = json.loads((out / "results.json").read_text())
    ids: dict[str, Any] = data["ids"]
    return ids


# -- requirement table ------------------------------------------------------------


def test_requirement_table_loads_all_rows() -> None:
    reqs = load_requirements()
    assert len(reqs) == 490
    assert list(reqs.by_area()) == list(AREAS)
    assert sum(len(v) for v in reqs.by_area().values()) == 490
    row = reqs["SPLIT-DEV-13"]
    assert row.area == "SPLIT" and row.role == "device"
    assert reqs["NETCTRL-DRV-B01"].area == "NETCTRL"
    assert sum(1 for r in reqs.values() if r.checker_kind is CheckerKind.NOT_TESTABLE) == 56


def test_requirement_lookup_and_validation() -> None:
    reqs = load_requirements()
    assert area_of("PCILEG-DEV-03") == "PCILEG"
    with pytest.raises(ValueError):
        area_of("SPLIT-13")
    with pytest.raises(UnknownRequirementError, match="SPLIT-DEV-99"):
        reqs["SPLIT-DEV-99"]
    with pytest.raises(UnknownRequirementError) as info:
        reqs.validate(["SPLIT-DEV-13", "NOPE-DEV-01", "SPLIT-DEV-99"])
    assert info.value.ids == ("NOPE-DEV-01", "SPLIT-DEV-99")


def test_aggregation_precedence() -> None:
    def rec(o: Outcome) -> CheckRecord:
        return CheckRecord("t", o)

    kind = CheckerKind.DIRECTED
    assert aggregate([rec(Outcome.PASSED), rec(Outcome.FAILED)], kind) is Status.FAILED
    assert aggregate([rec(Outcome.NOT_OFFERED), rec(Outcome.PASSED)], kind) is Status.PASSED
    assert aggregate([rec(Outcome.NOT_APPLICABLE), rec(Outcome.NOT_OFFERED)], kind) is Status.NOT_OFFERED
    assert aggregate([rec(Outcome.NOT_APPLICABLE)], kind) is Status.NOT_APPLICABLE
    assert aggregate([rec(Outcome.SKIPPED)], kind) is Status.NOT_COVERED
    assert aggregate([rec(Outcome.NOT_JUDGED)], kind) is Status.NOT_COVERED
    assert aggregate([], CheckerKind.NOT_TESTABLE) is Status.NOT_TESTABLE


# -- plugin ---------------------------------------------------------------------


def test_statuses_are_aggregated_per_id(pytester: pytest.Pytester) -> None:
    result, out = run_checks(pytester)
    result.assert_outcomes(passed=6, failed=3, skipped=1, xfailed=1)
    ids = load_ids(out)
    status = {i: r["status"] for i, r in ids.items()}
    assert status["SPLIT-DEV-01"] == "passed"
    assert status["SPLIT-DEV-02"] == "not testable"  # a row no check can decide, listed but not judged
    assert ids["SPLIT-DEV-02"]["evidence"] == [
        "listed by test_checks.py::test_verdict_pass_and_unjudged_id but not judged"
    ]
    assert status["SPLIT-DEV-03"] == "failed"
    assert ids["SPLIT-DEV-03"]["evidence"] == [
        "test_checks.py::test_verdict_fail: descriptor 7 has next=9 beyond the table"
    ]
    assert status["SPLIT-DEV-04"] == "passed"
    assert status["PCI-DEV-01"] == "failed"  # the exception is its evidence
    assert "RuntimeError: device went away" in ids["PCI-DEV-01"]["evidence"][0]
    assert status["PCI-DEV-02"] == "passed"  # recorded before the exception
    assert status["NETCTRL-DEV-01"] == "not offered"
    assert ids["NETCTRL-DEV-01"]["evidence"] == ["test_checks.py::test_not_offered: VIRTIO_NET_F_CTRL_VQ not offered"]
    assert status["NETCTRL-DEV-02"] == "not applicable"
    assert status["FEAT-DEV-01"] == "failed"
    assert ids["FEAT-DEV-01"]["checks"] == ["test_checks.py::test_pass_here", "test_checks.py::test_fail_elsewhere"]
    assert ids["FEAT-DEV-01"]["evidence"] == ["test_checks.py::test_fail_elsewhere: second look disagrees"]
    assert status["FEAT-DEV-02"] == "not offered"  # test_offered_somewhere judged nothing
    assert ids["FEAT-DEV-02"]["unjudged_by"] == ["test_checks.py::test_offered_somewhere"]
    assert status["PACKED-DEV-01"] == "not covered"
    assert "needs packed ring" in ids["PACKED-DEV-01"]["evidence"][0]
    assert status["PACKED-DEV-02"] == "failed"
    assert "known model bug" in ids["PACKED-DEV-02"]["evidence"][0]
    assert status["STATUS-DEV-01"] == "not covered"
    not_testable = [r.id for r in load_requirements().values() if r.checker_kind is CheckerKind.NOT_TESTABLE]
    assert {status[i] for i in not_testable if not ids[i]["checks"]} == {"not testable"}
    assert ids["SPLIT-DEV-03"]["area"] == "SPLIT" and ids["SPLIT-DEV-03"]["role"] == "device"
    # the test fails listing every failed id and its evidence
    result.stdout.fnmatch_lines(["*1 requirement id(s) failed*", "*SPLIT-DEV-03:*", "*descriptor 7 has next=9*"])
    # terminal summary: per-area table and the failed ids
    result.stdout.fnmatch_lines(["*vdpa-bench conformance*", "*SPLIT*", "*failed requirement id(s)*"])


def test_reports_are_written(pytester: pytest.Pytester) -> None:
    junit = pytester.path / "pytest-junit.xml"
    result, out = run_checks(pytester, f"--junitxml={junit}")
    data = json.loads((out / "results.json").read_text())
    assert set(data) == {"target", "started", "duration", "quirk", "ids", "summary"}
    assert data["target"] == "sim:virtio-net"
    assert len(data["ids"]) == 490
    assert data["summary"]["total"] == 490 and data["summary"]["failed"] == 4
    assert data["summary"]["areas"]["SPLIT"]["failed"] == 1
    html = (out / "report.html").read_text()
    assert html.count("<tr>") >= 490 and "SPLIT-DEV-03" in html and "descriptor 7 has next=9" in html
    assert "<script" in html and "http" not in html.split("<body>", 1)[1]  # self-contained
    suites = ET.parse(out / "requirements-junit.xml").getroot()
    cases = suites.findall("testsuite/testcase")
    assert len(cases) == 490
    failed = sorted(c.get("name", "") for c in cases if c.find("failure") is not None)
    assert failed == ["FEAT-DEV-01", "PACKED-DEV-02", "PCI-DEV-01", "SPLIT-DEV-03"]
    assert ET.parse(junit).getroot().find(".//testcase") is not None  # pytest's own junit still works
    result.stdout.fnmatch_lines([f"*reports written to {out}*"])


def test_unknown_id_fails_collection(pytester: pytest.Pytester) -> None:
    checks = """
import pytest

@pytest.mark.req("SPLIT-DEV-01", "SPLIT-DEV-777")
def test_typo():
    pass
"""
    result, _ = run_checks(pytester, checks=checks)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting*", "*unknown requirement id(s): SPLIT-DEV-777*"])


def test_unknown_id_on_module_marker_fails_collection(pytester: pytest.Pytester) -> None:
    checks = """
import pytest

pytestmark = pytest.mark.req("BOGUS-DEV-01")

def test_a():
    pass
"""
    result, _ = run_checks(pytester, checks=checks)
    result.stdout.fnmatch_lines(["*unknown requirement id(s): BOGUS-DEV-01*"])


def test_verdict_rejects_ids_outside_the_marker(pytester: pytest.Pytester) -> None:
    checks = """
import pytest

@pytest.mark.req("SPLIT-DEV-01")
def test_wrong_id(verdict):
    verdict.check("SPLIT-DEV-02", True)
"""
    result, out = run_checks(pytester, checks=checks)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*VerdictUsageError*SPLIT-DEV-02*not among the ids*"])
    assert load_ids(out)["SPLIT-DEV-01"]["status"] == "failed"


@pytest.mark.parametrize(("args", "want"), [((), 1200.0), (("--check-budget", "100"), 300.0),
                                             (("--timeout", "50"), 50.0)])
def test_a_check_is_not_killed_before_its_budget(pytester: pytest.Pytester, args: tuple[str, ...],
                                                 want: float) -> None:
    """A config file's pytest-timeout (300 s here, as the project's) below twice ``--check-budget`` would kill a
    slow target's check that the budget admits: such a check gets twice the budget; a timeout the user gave, a
    default already large enough and a test without ids keep theirs."""
    pytester.makeini("[pytest]\ntimeout = 300\n")
    checks = f"""
import pytest

def effective(request):
    marker = request.node.get_closest_marker("timeout")
    return float(marker.args[0]) if marker else float(request.config.getoption("timeout") or 300)

@pytest.mark.req("SPLIT-DEV-01")
def test_check(request):
    assert effective(request) == {want}

def test_without_ids(request):
    assert effective(request) == {50.0 if "--timeout" in args else 300.0}
"""
    result, _ = run_checks(pytester, *args, checks=checks)
    result.assert_outcomes(passed=2)


def test_open_target_closes_devices_even_on_failure(pytester: pytest.Pytester) -> None:
    checks = """
import pytest

@pytest.mark.req("PCI-DEV-01")
def test_two_devices_then_fail(open_target, target_spec):
    assert target_spec == "sim:virtio-net"
    a = open_target()
    b = open_target()
    assert a is not b
    raise AssertionError("boom")

def test_log(close_log):
    assert close_log == [
        ("open", "sim:virtio-net"), ("open", "sim:virtio-net"),
        ("close", "sim:virtio-net"), ("close", "sim:virtio-net"),
    ]
"""
    result, _ = run_checks(pytester, "--target", "sim", checks=checks)
    result.assert_outcomes(passed=1, failed=1)


def test_target_and_rtl_options_are_exposed(pytester: pytest.Pytester) -> None:
    checks = """
def test_options(target_spec, target_options):
    assert target_spec == "rtl:virtio-net"
    assert target_options.sim == "icarus" and target_options.waves
"""
    result, out = run_checks(pytester, "--target", "rtl:virtio-net", "--sim", "icarus", "--waves", checks=checks)
    result.assert_outcomes(passed=1)
    assert json.loads((out / "results.json").read_text())["target"] == "rtl:virtio-net"


def test_verdict_works_with_hypothesis(pytester: pytest.Pytester) -> None:
    checks = """
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from testbenches.conformance.plugin import verdict_for

@pytest.mark.req("SPLIT-DEV-05")
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=30, database=None)
@given(st.integers(min_value=0, max_value=2**16))
def test_with_fixture(verdict, n):
    verdict.check("SPLIT-DEV-05", n % 2 == 0 or n < 2**16, f"n={n}")

@pytest.mark.req("SPLIT-DEV-06")
@settings(max_examples=30, database=None)
@given(st.integers(min_value=0, max_value=100))
def test_without_fixture(request, n):
    verdict_for(request.node).check("SPLIT-DEV-06", n <= 100, f"n={n}")

@pytest.mark.req("SPLIT-DEV-07")
@settings(max_examples=50, database=None)
@given(st.integers(min_value=0, max_value=100))
def test_shrinks(n):
    assert n < 10
"""
    result, out = run_checks(pytester, checks=checks)
    result.assert_outcomes(passed=2, failed=1)
    ids = load_ids(out)
    assert ids["SPLIT-DEV-05"]["status"] == "passed"
    assert ids["SPLIT-DEV-06"]["status"] == "passed"
    assert ids["SPLIT-DEV-07"]["status"] == "failed"
    assert "n=10" in "\n".join(ids["SPLIT-DEV-07"]["evidence"])  # the shrunk example


def test_loadable_by_module_name_alongside_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_a(target_spec):\n    assert target_spec == 'sim:virtio-net'\n")
    result = pytester.runpytest(
        "-p", "testbenches.conformance.plugin", "-W", "ignore::pytest.PytestAssertRewriteWarning"
    )
    result.assert_outcomes(passed=1)


# -- reports and CLI ----------------------------------------------------------------


def _results(target: str, failed: str | None) -> Results:
    records = {"SPLIT-DEV-01": [CheckRecord("t::a", Outcome.PASSED)]}
    if failed:
        records[failed] = [CheckRecord("t::b", Outcome.FAILED, f"{target} broke it")]
    return Results.build(target, datetime.now(UTC), 1.0, load_requirements(), records)


def test_results_json_round_trip(tmp_path: Path) -> None:
    res = _results("sim:virtio-net", "PCI-DEV-01")
    res.save(tmp_path / "r.json")
    back = Results.load(tmp_path / "r.json")
    assert back.ids == res.ids and back.target == res.target
    assert [r.id for r in back.failed()] == ["PCI-DEV-01"]


def test_side_by_side_html(tmp_path: Path) -> None:
    a, b = _results("sim:virtio-net", None), _results("rtl:virtio-net", "PCI-DEV-01")
    page = render_html([a, b], tmp_path / "both.html").read_text()
    assert "sim:virtio-net" in page and "rtl:virtio-net" in page and "rtl:virtio-net broke it" in page


def test_cli_report_merges_results(tmp_path: Path) -> None:
    for name, failed in (("a", None), ("b", "NET-DEV-01")):
        _results(f"{name}:x", failed).save(tmp_path / name / "results.json")
    code = cli.main(
        ["report", str(tmp_path / "a/results.json"), str(tmp_path / "b/results.json"), "--out", str(tmp_path / "ab")]
    )
    assert code == 0
    page = (tmp_path / "ab" / "report.html").read_text()
    assert "a:x" in page and "b:x" in page


@pytest.mark.parametrize(("body", "expected"), [("True", 0), ("False", 1)])
def test_cli_run_writes_reports_and_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, expected: int
) -> None:
    checks = tmp_path / f"checks_{expected}"
    checks.mkdir()
    (checks / f"test_cli_{expected}.py").write_text(
        textwrap.dedent(f"""
        import pytest

        @pytest.mark.req("SPLIT-DEV-01")
        def test_one(verdict):
            verdict.check("SPLIT-DEV-01", {body}, "evidence")
        """)
    )
    monkeypatch.setattr(suite_run, "CHECKS_DIR", checks)
    out = tmp_path / f"out_{expected}"
    code = cli.main(["run", "--target", "sim", "--out", str(out), "-k", "one"])
    assert code == expected
    assert {p.name for p in out.iterdir()} >= {"report.html", "junit.xml", "results.json", "requirements-junit.xml"}
    assert json.loads((out / "results.json").read_text())["target"] == "sim:virtio-net"


def test_cli_default_out_dir() -> None:
    args = cli.build_parser().parse_args(["run", "--target", "sim"])
    assert args.target == "sim" and args.out is None and args.progress
    from testbenches.conformance.plugin import target_name

    assert target_name("sim") == "sim-virtio-net"
    assert target_name("vfio:0000:00:03.0") == "vfio-0000-00-03.0"


def test_cli_report_ends_with_a_section_per_real_driver(tmp_path: Path) -> None:
    _results("sim:x", None).save(tmp_path / "sim" / "results.json")
    findings = tmp_path / "findings"
    findings.mkdir()
    for driver, verdict in (("DPDK virtio_user", "failed"), ("Linux virtio_net", "passed")):
        evidence = ["num_buffers 1 on transmit"] if verdict == "failed" else []
        row = {"verdict": verdict, "opportunities": 3, "evidence": evidence}
        session = {"session": "1", "ring": "split", "rows": {"NET-DRV-16": row}}
        findings_file = {"driver": driver, "run": "interop", "sessions": [session]}
        (findings / f"{driver.split()[0]}.json").write_text(json.dumps(findings_file))
    argv = ["report", str(tmp_path / "sim/results.json"), "--out", str(tmp_path / "out")]
    assert cli.main([*argv, "--real-drivers", str(findings)]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "real driver: DPDK virtio_user" in page and "real driver: Linux virtio_net" in page
    assert "num_buffers 1 on transmit" in page and "sim:x" in page
    drivers = json.loads((tmp_path / "out" / "real-drivers.json").read_text())["drivers"]
    assert drivers["DPDK virtio_user"][0]["rows"]["NET-DRV-16"]["verdict"] == "failed"
    (tmp_path / "empty").mkdir()
    assert cli.main([*argv, "--real-drivers", str(tmp_path / "empty")]) == 2
    assert "real driver" not in render_html([_results("sim:x", None)], tmp_path / "plain.html").read_text()
