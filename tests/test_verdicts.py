"""Verdict semantics of the conformance plugin: a *passed* id is one a check judged and found kept.

Each case runs throwaway checks through the plugin in a pytester directory and
reads the per-id results it wrote, the way a vendor reads ``results.json``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from testbenches.conformance.report import (
    CheckRecord,
    Outcome,
    Results,
    Status,
    aggregate,
    aggregate_layouts,
    render_terminal,
)
from testbenches.conformance.requirements import CheckerKind, load_requirements
from tests.test_conformance_framework import PLUGIN

pytest_plugins = ["pytester"]


def run(pytester: pytest.Pytester, checks: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    pytester.makepyfile(test_checks=checks)
    out = pytester.path / "out"
    result = pytester.runpytest(*PLUGIN, "--color=no", "-p", "no:cacheprovider", "--report-dir", str(out))
    ids: dict[str, Any] = json.loads((out / "results.json").read_text())["ids"]
    return result, ids


def test_a_check_that_records_nothing_leaves_its_ids_not_covered(pytester: pytest.Pytester) -> None:
    result, ids = run(pytester, """
import pytest

@pytest.mark.req("SPLIT-DEV-13", "SPLIT-DEV-14")
def test_workloads():
    assert sum(range(10)) == 45  # a check that asserts things but judges no id
""")
    result.assert_outcomes(passed=1)
    for req_id in ("SPLIT-DEV-13", "SPLIT-DEV-14"):
        assert ids[req_id]["status"] == "not covered"
        assert ids[req_id]["evidence"] == ["listed by test_checks.py::test_workloads but not judged"]
        assert ids[req_id]["unjudged_by"] == ["test_checks.py::test_workloads"]
        assert ids[req_id]["checks"] == ["test_checks.py::test_workloads"]


def test_a_check_that_judges_one_of_two_listed_ids(pytester: pytest.Pytester) -> None:
    result, ids = run(pytester, """
import pytest

@pytest.mark.req("SPLIT-DEV-13", "SPLIT-DEV-14")
def test_one_of_two(verdict):
    verdict.check("SPLIT-DEV-13", True, "used.idx advanced by one")
""")
    result.assert_outcomes(passed=1)
    assert ids["SPLIT-DEV-13"]["status"] == "passed" and ids["SPLIT-DEV-13"]["unjudged_by"] == []
    assert ids["SPLIT-DEV-14"]["status"] == "not covered"
    assert ids["SPLIT-DEV-14"]["evidence"] == ["listed by test_checks.py::test_one_of_two but not judged"]


@pytest.mark.parametrize(("judge", "status", "evidence"), [
    ('verdict.check("NETFEAT-DEV-01", True)', "passed", []),
    ('verdict.not_offered("NETFEAT-DEV-01", "VIRTIO_NET_F_CSUM not offered")', "not offered",
     ["test_checks.py::test_judges: VIRTIO_NET_F_CSUM not offered"]),
])
def test_a_judgement_elsewhere_decides_and_names_the_silent_check(pytester: pytest.Pytester, judge: str, status: str,
                                                                  evidence: list[str]) -> None:
    result, ids = run(pytester, f"""
import pytest

@pytest.mark.req("NETFEAT-DEV-01", "NETFEAT-DEV-13")
def test_judges(verdict):
    {judge}
    verdict.check("NETFEAT-DEV-13", True, "MAC offered and readable")

@pytest.mark.req("NETFEAT-DEV-01")
def test_silent():
    pass
""")
    result.assert_outcomes(passed=2)
    assert ids["NETFEAT-DEV-01"]["status"] == status
    assert ids["NETFEAT-DEV-01"]["evidence"] == evidence
    assert ids["NETFEAT-DEV-01"]["unjudged_by"] == ["test_checks.py::test_silent"]
    assert ids["NETFEAT-DEV-13"]["status"] == "passed"


def test_errors_skips_and_xfails(pytester: pytest.Pytester) -> None:
    result, ids = run(pytester, """
import pytest

@pytest.fixture
def broken():
    raise OSError("device gone at setup")

@pytest.mark.req("PCI-DEV-01", "PCI-DEV-02")
def test_raises(verdict):
    verdict.check("PCI-DEV-02", True)
    raise RuntimeError("device went away")

@pytest.mark.req("PCI-DEV-03")
def test_setup_error(broken):
    pass

@pytest.mark.req("PACKED-DEV-01", "PACKED-DEV-03")
def test_skips(verdict):
    verdict.check("PACKED-DEV-03", True)
    pytest.skip("needs packed ring")

@pytest.mark.xfail(reason="known model bug")
@pytest.mark.req("PACKED-DEV-02")
def test_xfail():
    assert False
""")
    result.assert_outcomes(passed=0, failed=1, errors=1, skipped=1, xfailed=1)
    assert ids["PCI-DEV-01"]["status"] == "failed"
    assert "RuntimeError: device went away" in ids["PCI-DEV-01"]["evidence"][0]
    assert ids["PCI-DEV-02"]["status"] == "passed"  # judged before the exception
    assert ids["PCI-DEV-03"]["status"] == "failed"
    assert "setup error: OSError: device gone at setup" in ids["PCI-DEV-03"]["evidence"][0]
    assert ids["PACKED-DEV-01"]["status"] == "not covered"
    assert ids["PACKED-DEV-01"]["evidence"] == ["test_checks.py::test_skips: skipped: needs packed ring"]
    assert ids["PACKED-DEV-01"]["unjudged_by"] == []  # skipped, not silently passed over
    assert ids["PACKED-DEV-03"]["status"] == "passed"
    assert ids["PACKED-DEV-02"]["status"] == "failed"
    assert "known model bug" in ids["PACKED-DEV-02"]["evidence"][0]


def test_not_judged_is_visible_in_every_report(pytester: pytest.Pytester) -> None:
    result, _ = run(pytester, """
import pytest

@pytest.mark.req("SPLIT-DEV-13")
def test_silent():
    pass
""")
    result.stdout.fnmatch_lines(["*1 id(s) not covered although a check lists them (listed but not judged)*"])
    out = pytester.path / "out"
    assert "listed by test_checks.py::test_silent but not judged" in (out / "report.html").read_text()
    assert "listed by test_checks.py::test_silent but not judged" in (out / "requirements-junit.xml").read_text()


def test_aggregation_of_records() -> None:
    def rec(o: Outcome) -> CheckRecord:
        return CheckRecord("t", o)

    directed, untestable = CheckerKind.DIRECTED, CheckerKind.NOT_TESTABLE
    assert aggregate([rec(Outcome.NOT_JUDGED)], directed) is Status.NOT_COVERED
    assert aggregate([rec(Outcome.NOT_JUDGED), rec(Outcome.SKIPPED)], directed) is Status.NOT_COVERED
    assert aggregate([rec(Outcome.NOT_JUDGED), rec(Outcome.PASSED)], directed) is Status.PASSED
    assert aggregate([rec(Outcome.NOT_JUDGED), rec(Outcome.NOT_OFFERED)], directed) is Status.NOT_OFFERED
    assert aggregate([rec(Outcome.NOT_JUDGED), rec(Outcome.FAILED)], directed) is Status.FAILED
    assert aggregate([rec(Outcome.NOT_JUDGED)], untestable) is Status.NOT_TESTABLE


def test_unjudged_survives_the_json_round_trip(tmp_path: Path) -> None:
    records = {
        "SPLIT-DEV-13": [CheckRecord("t::silent", Outcome.NOT_JUDGED)],
        "SPLIT-DEV-14": [CheckRecord("t::judge", Outcome.PASSED), CheckRecord("t::silent", Outcome.NOT_JUDGED)],
    }
    res = Results.build("sim:virtio-net", datetime.now(UTC), 1.0, load_requirements(), records)
    assert [r.id for r in res.unjudged()] == ["SPLIT-DEV-13"]
    res.save(tmp_path / "r.json")
    back = Results.load(tmp_path / "r.json")
    assert back.ids == res.ids
    assert back.ids["SPLIT-DEV-14"].unjudged_by == ["t::silent"]
    text = StringIO()
    render_terminal(back, Console(file=text, width=200))
    assert "1 id(s) not covered although a check lists them" in text.getvalue()


def test_evidence_past_the_limit_keeps_its_outcome() -> None:
    """Notes beyond the kept evidence are counted per outcome: many "not offered" notes (a property check saying
    so on every example) stay not offered, and a failure past the limit still fails with its count."""
    from testbenches.conformance.plugin import Verdict

    quiet = Verdict("t::quiet", ["NET-DEV-01"], max_evidence=2)
    for i in range(5):
        quiet.not_offered("NET-DEV-01", f"example {i}: MQ not offered")
    recs = quiet.records()["NET-DEV-01"]
    assert {r.outcome for r in recs} == {Outcome.NOT_OFFERED}
    assert recs[-1].evidence == "... and 3 more" and quiet.failures() == {}

    loud = Verdict("t::loud", ["NET-DEV-01"], max_evidence=2)
    for i in range(3):
        loud.not_offered("NET-DEV-01", f"example {i}")
    for i in range(4):
        loud.check("NET-DEV-01", False, f"failure {i}")
    assert loud.failures() == {"NET-DEV-01": ["failure 0", "failure 1", "... and 2 more"]}
    outcomes = [(r.outcome, r.evidence) for r in loud.records()["NET-DEV-01"]]
    assert (Outcome.FAILED, "... and 2 more") in outcomes and (Outcome.NOT_OFFERED, "... and 1 more") in outcomes


def test_per_layout_aggregation_of_records() -> None:
    """An id judged on both ring layouts passes only when no layout failed and every layout passed or was excused;
    a failure on packed rings alone fails it, a packed run that did not judge it leaves it not covered."""
    def rec(o: Outcome, layout: str) -> CheckRecord:
        return CheckRecord(f"t::check[{layout}]", o, "" if o is Outcome.PASSED else f"{layout}: {o}", layout)

    directed = CheckerKind.DIRECTED
    cases = [
        ([rec(Outcome.PASSED, "split"), rec(Outcome.PASSED, "packed")], Status.PASSED),
        ([rec(Outcome.PASSED, "split"), rec(Outcome.FAILED, "packed")], Status.FAILED),
        ([rec(Outcome.PASSED, "split"), rec(Outcome.NOT_OFFERED, "packed")], Status.PASSED),
        ([rec(Outcome.PASSED, "split"), rec(Outcome.NOT_JUDGED, "packed")], Status.NOT_COVERED),
        ([rec(Outcome.PASSED, "split"), rec(Outcome.SKIPPED, "packed")], Status.NOT_COVERED),
        ([rec(Outcome.NOT_OFFERED, "split"), rec(Outcome.NOT_OFFERED, "packed")], Status.NOT_OFFERED),
    ]
    for records, want in cases:
        status, layouts = aggregate_layouts(records, directed)
        assert status is want, (records, status)
        assert list(layouts) == ["split", "packed"]
    # Records of checks without a layout keep the plain aggregation and no per-layout status.
    assert aggregate_layouts([CheckRecord("t::plain", Outcome.PASSED)], directed) == (Status.PASSED, {})


def test_a_failure_on_packed_rings_alone_fails_the_id_in_every_report(pytester: pytest.Pytester) -> None:
    """Through the plugin: a check parametrised by ``ring_layout`` records each verdict with its layout; the id
    fails for a packed failure although split passed, and results.json, the terminal table, report.html and the
    per-requirement JUnit all name the layouts."""
    pytester.makeconftest("""
import pytest

@pytest.fixture(params=["split", "packed"])
def ring_layout(request):
    return request.param
""")
    result, ids = run(pytester, """
import pytest

@pytest.mark.req("SPLIT-DEV-16", "SPLIT-DEV-01")
def test_both_layouts(verdict, ring_layout):
    verdict.check("SPLIT-DEV-16", ring_layout == "split", f"{ring_layout}: used len 3, 0 bytes written")
    if ring_layout == "packed":
        verdict.not_offered("SPLIT-DEV-01", "packed ring layout: VIRTIO_F_RING_PACKED not offered")
    else:
        verdict.check("SPLIT-DEV-01", True)
""")
    result.assert_outcomes(passed=1, failed=1)
    assert ids["SPLIT-DEV-16"]["status"] == "failed"
    assert ids["SPLIT-DEV-16"]["layouts"] == {"split": "passed", "packed": "failed"}
    assert ids["SPLIT-DEV-16"]["evidence"] == ["test_checks.py::test_both_layouts[packed]: packed: used len 3, "
                                               "0 bytes written"]
    assert ids["SPLIT-DEV-01"]["status"] == "passed"
    assert ids["SPLIT-DEV-01"]["layouts"] == {"split": "passed", "packed": "not offered"}
    out = pytester.path / "out"
    html = (out / "report.html").read_text()
    assert "packed: failed" in html and "packed: not offered" in html and "Per ring layout" in html
    junit = (out / "requirements-junit.xml").read_text()
    assert 'name="layout packed" value="failed"' in junit and "split passed, packed failed: " in junit
    text = "\n".join(result.outlines)
    assert "SPLIT-DEV-16 (MUST) [split passed, packed failed]" in text
    assert "packed rings: 2 id(s) judged per layout: 0 passed, 1 failed, 1 not offered" in text


def test_a_single_layout_check_names_its_layout_with_a_marker(pytester: pytest.Pytester) -> None:
    """``@pytest.mark.ring_layout("packed")`` on a check that runs on packed rings only: its verdicts show under
    that layout beside the split check's, and the id passes when both did."""
    result, ids = run(pytester, """
import pytest

@pytest.mark.ring_layout("split")
@pytest.mark.req("SPLIT-DEV-13")
def test_split_suppression(verdict):
    verdict.check("SPLIT-DEV-13", True)

@pytest.mark.ring_layout("packed")
@pytest.mark.req("SPLIT-DEV-13")
def test_packed_suppression(verdict):
    verdict.check("SPLIT-DEV-13", True)
""")
    result.assert_outcomes(passed=2)
    assert ids["SPLIT-DEV-13"]["status"] == "passed"
    assert ids["SPLIT-DEV-13"]["layouts"] == {"split": "passed", "packed": "passed"}
