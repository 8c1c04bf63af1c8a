"""The conformance suite on the embedded behavioral model: everything it covers passes."""

from __future__ import annotations

from pathlib import Path

from tests.suite_runner import ids_with, run_suite


def test_suite_passes_on_sim(tmp_path: Path) -> None:
    data = run_suite("sim:virtio-net", tmp_path)
    failed = ids_with(data, "failed")
    assert not failed, {i: data["ids"][i]["evidence"] for i in sorted(failed)}
    assert data["_exit"] == 0, data["_stdout"][-3000:]
    passed = ids_with(data, "passed")
    assert len(passed) >= 120, f"only {len(passed)} requirement ids pass on sim"
    for area in ("STATUS", "FEAT", "INIT", "RESET", "CFG", "SPLIT", "NOTIF", "PCI"):
        assert any(i.startswith(area + "-") for i in passed), f"no {area} id passes"
    assert (tmp_path / "report.html").stat().st_size > 100_000  # all 490 rows
