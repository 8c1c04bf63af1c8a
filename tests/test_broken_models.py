"""The suite finds bugs: each deliberately broken model fails it, naming the right requirement ids.

Every variant runs the whole conformance suite in a child process (two at a
time: the machines have two cores); the parametrised tests then read their
variant's results.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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

#: Eleven suite runs, two at a time, happen in the first test's setup.
pytestmark = pytest.mark.timeout(1500)

#: The suite's long property runs (1000+ random workloads) prove the model, not the variants' bugs.
VARIANT_ARGS = ("-k", "not thousand_workloads")


@pytest.fixture(scope="module")
def variant_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    def one(variant: str) -> tuple[str, dict[str, Any]]:
        out = tmp_path_factory.mktemp(variant)
        return variant, run_suite(f"sim:virtio-net,model=tests.broken_models:{variant}", out, *VARIANT_ARGS)

    with ThreadPoolExecutor(max_workers=2) as pool:
        yield dict(pool.map(one, sorted(EXPECTED)))


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_suite_fails_on_broken_model(variant: str, variant_results: dict[str, dict[str, Any]]) -> None:
    data = variant_results[variant]
    failed = ids_with(data, "failed")
    missing = EXPECTED[variant] - failed
    assert not missing, f"{variant}: suite did not fail {sorted(missing)}; it failed {sorted(failed)}"
    assert data["_exit"] != 0, f"{variant}: the suite run exited 0 despite failed ids"
