"""The suite finds bugs: each deliberately broken model fails it, naming the right requirement ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.suite_runner import ids_with, run_suite

#: variant class in tests/broken_models.py -> ids the suite must report failed for it
EXPECTED: dict[str, set[str]] = {
    "UsedIdxNoWrap": {"SPLIT-DEV-15"},
    "NextIgnored": {"SPLIT-DEV-01"},
    "FeaturesOkForUnoffered": {"FEAT-DEV-03"},
    "NoInterruptAfterUsed": {"SPLIT-DEV-11"},
    "UsedLenOffByOne": {"SPLIT-DEV-16"},
    "EventIdxOffByOne": {"SPLIT-DEV-13"},
    "ResetLeavesQueueEnabled": {"PCI-DEV-19"},
    "IndirectNextHonoured": {"STATUS-DEV-02"},
    "VectorOutOfRangeAccepted": {"PCI-DEV-61"},
    "NumBuffersZero": {"NET-DEV-30"},
    "NoNeedsResetOnLoop": {"STATUS-DEV-02"},
}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_suite_fails_on_broken_model(variant: str, tmp_path: Path) -> None:
    data = run_suite(f"sim:virtio-net,model=tests.broken_models:{variant}", tmp_path)
    failed = ids_with(data, "failed")
    missing = EXPECTED[variant] - failed
    assert not missing, f"{variant}: suite did not fail {sorted(missing)}; it failed {sorted(failed)}"
    assert data["_exit"] != 0, f"{variant}: the suite run exited 0 despite failed ids"
