"""Known deviations in the report: a failure the device's quirk entry records is reported as *deviation*,
with the entry named and its evidence; any other failure stays *failed*."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from backend.drivers.quirks import QEMU_VIRTIO_NET, named_quirks
from testbenches.conformance.deviations import KnownDeviations, UnknownQuirkError
from testbenches.conformance.report import Results, Status
from tests.suite_runner import ROOT

ABSENT = "checks/test_absent_queue.py::test_absent_queue_has_no_vector"
MAPPING = "checks/test_common_cfg.py::test_msix_vector_mapping"
#: A model bug that QEMU shares (FEAT-DEV-03, recorded for any check) and one it does not (SPLIT-DEV-11).
SHARED = "sim:virtio-net,model=tests.broken_models:FeaturesOkForUnoffered"
NOT_SHARED = "sim:virtio-net,model=tests.broken_models:NoInterruptAfterUsed"


def test_a_deviation_explains_its_ids_in_its_checks_only() -> None:
    known = KnownDeviations.named("qemu-virtio-net")
    assert known.describe() == "qemu-virtio-net (named by --quirk)"
    seen = known.explain("PCI-DEV-58", f"{ABSENT}", "reads 0x0")
    assert seen is not None and seen.startswith("known deviation of qemu-virtio-net: ") and "reads 0x0" in seen
    assert known.explain("PCI-DEV-58", MAPPING, "reads 0x0") is None, "recorded for the absent-queue check only"
    assert known.explain("FEAT-DEV-03", "checks/test_features.py::test_unsupported_subset_is_refused[packed]", "x")
    assert known.explain("SPLIT-DEV-11", "checks/test_split_ring.py::test_x", "x") is None, "not recorded"
    # a check that raised is explained only by a deviation naming that check
    assert known.explain("FEAT-DEV-03", "checks/test_features.py::test_y", "call error: boom", error=True) is None
    assert known.explain("PCI-DEV-58", ABSENT, "call error: boom", error=True) is not None
    assert KnownDeviations().explain("FEAT-DEV-03", "checks/test_features.py::test_y", "x") is None


def test_quirk_names_are_checked() -> None:
    assert named_quirks()["qemu-virtio-net"] is QEMU_VIRTIO_NET
    with pytest.raises(UnknownQuirkError, match=r"'nosuch'.*known: .*qemu-virtio-net"):
        KnownDeviations.named("nosuch")


def run(tmp_path: Path, target: str, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "testbenches.cli", "run", "--target", target, "--out", str(out),
                           "--no-progress", *args], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=240, check=False)
    return proc, out


def test_a_recorded_deviation_is_reported_as_such_and_does_not_fail_the_run(tmp_path: Path) -> None:
    proc, out = run(tmp_path, SHARED, "--quirk", "qemu-virtio-net", "-k", "test_unsupported_subset_is_refused")
    results = Results.load(out / "results.json")
    assert results.quirk == "qemu-virtio-net (named by --quirk)"
    r = results.ids["FEAT-DEV-03"]
    assert r.status is Status.DEVIATION, (r.status, r.evidence)
    assert r.evidence and all(e.split(": ", 1)[1].startswith("known deviation of qemu-virtio-net") for e in r.evidence)
    assert not results.failed()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 known deviation(s) of qemu-virtio-net (named by --quirk): FEAT-DEV-03" in proc.stdout
    html = (out / "report.html").read_text()
    assert "quirk <b>qemu-virtio-net (named by --quirk)</b>" in html and 'class="st deviation">deviation<' in html
    case = next(c for c in ET.parse(out / "requirements-junit.xml").iter("testcase") if c.get("name") == "FEAT-DEV-03")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["status"] == "deviation" and props["quirk"].startswith("qemu-virtio-net")
    assert case.find("skipped") is not None and case.find("failure") is None
    assert json.loads((out / "results.json").read_text())["summary"]["deviation"] == 1


def test_without_the_quirk_the_same_failure_fails(tmp_path: Path) -> None:
    # The model presents QEMU's ids, but QEMU's entry is matched by name only: nothing is excused.
    proc, out = run(tmp_path, SHARED, "-k", "test_unsupported_subset_is_refused")
    results = Results.load(out / "results.json")
    assert results.quirk == ""
    assert results.ids["FEAT-DEV-03"].status is Status.FAILED
    assert proc.returncode == 1, proc.stdout[-3000:]


def test_a_failure_the_quirk_does_not_record_stays_failed(tmp_path: Path) -> None:
    proc, out = run(tmp_path, NOT_SHARED, "--quirk", "qemu-virtio-net", "-k", "test_notifications_without_event_idx")
    results = Results.load(out / "results.json")
    assert results.ids["SPLIT-DEV-11"].status is Status.FAILED, results.ids["SPLIT-DEV-11"]
    assert not results.deviations()
    assert proc.returncode == 1, proc.stdout[-3000:]


def test_an_unknown_quirk_is_a_usage_error(tmp_path: Path) -> None:
    proc, out = run(tmp_path, "sim", "--quirk", "nosuch")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'nosuch': no such quirk entry" in lines[0], proc.stderr
    assert not (out / "results.json").exists()


def test_side_by_side_keeps_deviation_apart_from_failed(tmp_path: Path) -> None:
    """The same model bug run with QEMU's entry named (a deviation) and without (a failure), rendered side by side:
    the one column says deviation with the entry, the other failed."""
    _, excused = run(tmp_path / "a", SHARED, "--quirk", "qemu-virtio-net", "-k", "test_unsupported_subset_is_refused")
    _, failing = run(tmp_path / "b", SHARED, "-k", "test_unsupported_subset_is_refused")
    out = tmp_path / "side"
    proc = subprocess.run([sys.executable, "-m", "testbenches.cli", "report", str(excused / "results.json"),
                           str(failing / "results.json"), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert proc.returncode in (0, 1), proc.stdout[-2000:] + proc.stderr[-2000:]
    html = (out / "report.html").read_text()
    row = html[html.index(">FEAT-DEV-03<"):]
    row = row[:row.index("</tr>")]
    assert 'class="st deviation">deviation<' in row and 'class="st failed">failed<' in row, row
    assert "qemu-virtio-net (named by --quirk)" in html
