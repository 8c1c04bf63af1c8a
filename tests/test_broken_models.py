"""The suite finds bugs: each deliberately broken model fails it, naming the right requirement ids.

The suite runs once on the stock model (the session's ``sim_suite``); each variant then runs the check
modules that judged its ids there, in a child process (two at a time: the
machines have two cores); the parametrised tests read their variant's results.
The packed-ring variants run on a spec that offers VIRTIO_F_RING_PACKED.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from models.virtio_net.device import VirtioNetDevice
from tests import broken_models
from tests.suite_runner import assert_bug_caught, ids_with, judging_modules, run_suite

#: variant class in tests/broken_models.py -> ids of the rules its bug breaks, which the suite must report failed
EXPECTED: dict[str, set[str]] = {
    # its used idx write at 0x8000 publishes 0 + k: as the driver counts (mod 2^16) it exposes some 0x8000 entries
    # whose len was never written; the ordering watch at the wrap sees that publication
    "UsedIdxNoWrap": {"SPLIT-DEV-15"},
    "UsedIdxBeforeElement": {"SPLIT-DEV-15"},  # used idx written, then the element it exposes
    "NextIgnored": {"SPLIT-DEV-01"},  # a frame over several descriptors loses all but the first
    "FeaturesOkForUnoffered": {"FEAT-DEV-03"},  # FEATURES_OK kept for a set the device cannot work with
    "NoInterruptAfterUsed": {"SPLIT-DEV-11"},  # avail.flags 0 and no used buffer notification
    "UsedLenOffByOne": {"SPLIT-DEV-16"},  # used.len counts a byte it never wrote
    "EventIdxOffByOne": {"SPLIT-DEV-13"},  # no notification when the used_event slot was filled
    "ResetLeavesQueueEnabled": {"PCI-DEV-19"},  # queue_enable reads 1 after reset
    "IndirectNextHonoured": {"STATUS-DEV-02"},  # a driver error (INDIRECT with NEXT) without DEVICE_NEEDS_RESET
    "VectorOutOfRangeAccepted": {"PCI-DEV-61"},  # an impossible mapping not read back as NO_VECTOR
    "NumBuffersZero": {"NET-DEV-30"},  # num_buffers 0 without MRG_RXBUF
    "NoNeedsResetOnLoop": {"STATUS-DEV-02"},  # a looping chain dropped without DEVICE_NEEDS_RESET
    # packed rings (run on PACKED_SPEC)
    "PackedUsedWrapNotFlipped": {"PACKED-DEV-02"},  # second-lap used flags unseen by the driver: buffers never back
    "PackedBufferIdOfFirst": {"PACKED-DEV-02"},  # lists whose first descriptor carries another id come back wrong
    "PackedUsedLenOffByOne": {"PACKED-DEV-02"},  # a receive buffer's used len one past header and frame
    "PackedUsedFlagsFirst": {"PACKED-DEV-07"},  # id and len stored after the USED flag flipped (DMA order)
    "PackedInOrderFirstId": {"PACKED-DEV-02", "FEAT-DEV-10"},  # the batch's later buffers never completed
    "PackedSuppressionIgnored": {"SPLIT-DEV-10", "SPLIT-DEV-14"},  # notified under DISABLE (packed evidence)
    "PackedDescWrapIgnored": {"SPLIT-DEV-13"},  # desc_event_wrap ignored: a DESC event across the ring end missed
    "PackedNestedIndirectFollowed": {"STATUS-DEV-02"},  # INDIRECT inside an indirect table without NEEDS_RESET
    "PackedNextIgnored": {"PACKED-DEV-08"},  # a frame over several descriptors loses all but the first
}

#: The packed variants run on a target offering VIRTIO_F_RING_PACKED (with IN_ORDER, INDIRECT_DESC, EVENT_IDX and
#: NOTIFICATION_DATA), whatever the model's default offer is.
PACKED_SPEC = "sim:virtio-net,features=0x8000015f30018028"


def variant_spec(variant: str) -> str:
    base = PACKED_SPEC if variant.startswith("Packed") else "sim:virtio-net"
    return f"{base},model=tests.broken_models:{variant}"


#: The reference run and the variants' runs, two at a time, happen in the first test's setup (the nine packed
#: variants add about five minutes on two cores).
pytestmark = pytest.mark.timeout(2100)

#: The suite's long property runs (1000+ random workloads) prove the model, not the variants' bugs.
VARIANT_ARGS = ("-k", "not thousand_workloads")


@pytest.fixture(scope="module")
def variant_results(sim_suite: dict[str, Any],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    """The suite once on the stock model (the session's run), then on each variant the check modules that
    judged its ids there."""
    reference = sim_suite
    assert not ids_with(reference, "failed"), "the stock model fails ids: see tests/test_suite_on_sim.py"

    def one(variant: str) -> tuple[str, dict[str, Any]]:
        out = tmp_path_factory.mktemp(variant)
        return variant, run_suite(variant_spec(variant), out, *VARIANT_ARGS,
                                  modules=judging_modules(reference, EXPECTED[variant]))

    with ThreadPoolExecutor(max_workers=2) as pool:
        yield dict(pool.map(one, sorted(EXPECTED)))


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_suite_fails_on_broken_model(variant: str, variant_results: dict[str, dict[str, Any]]) -> None:
    assert_bug_caught(variant_results[variant], EXPECTED[variant], variant)


def test_every_broken_model_is_filed_and_seeds_one_bug() -> None:
    """Each variant in tests/broken_models.py has its expected ids here and overrides exactly one hook."""
    variants = {name: cls for name, cls in vars(broken_models).items()
                if isinstance(cls, type) and issubclass(cls, VirtioNetDevice) and cls is not VirtioNetDevice}
    assert set(variants) == set(EXPECTED), f"unfiled: {sorted(set(variants) - set(EXPECTED))}, " \
                                            f"gone: {sorted(set(EXPECTED) - set(variants))}"
    for name, cls in variants.items():
        own = [k for k, v in vars(cls).items() if callable(v) and not k.startswith("__")]
        assert len(own) == 1, f"{name} overrides {own}: one seeded bug is one override"
