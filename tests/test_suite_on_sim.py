"""The conformance suite on the embedded behavioral model: everything it covers passes, and it passes exactly the
ids of tests/data/expected-ids-sim.txt."""

from __future__ import annotations

from typing import Any

from tests.expected_ids import difference, expected_path, read_expected
from tests.suite_runner import ids_with


def test_suite_passes_on_sim(sim_suite: dict[str, Any]) -> None:
    data = sim_suite
    failed = ids_with(data, "failed")
    assert not failed, {i: data["ids"][i]["evidence"] for i in sorted(failed)}
    assert data["_exit"] == 0, data["_stdout"][-3000:]
    passed = ids_with(data, "passed")
    # The exact set, not a count: losing an id (a check that stopped judging it) fails the run.
    diff = difference(read_expected("sim"), passed, "sim:virtio-net", expected_path("sim"))
    assert not diff, diff
    assert (data["_dir"] / "report.html").stat().st_size > 100_000  # all 490 rows
