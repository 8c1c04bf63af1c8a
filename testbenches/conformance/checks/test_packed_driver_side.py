"""Driver-side packed ring rows (PACKED-DRV) judged live by the packed-ring monitor on the bench's guest driver.

The guest driver (``testbenches.driver.virtio_net.GuestNetDriver``) negotiates VIRTIO_F_RING_PACKED and runs
traffic over rings of 13 (several laps, so both wrap counters flip) behind a :class:`TracingPciDevice`; the
:class:`~testbenches.monitor.packed_ring_rules.PackedRingMonitor` reads what it exposed at every doorbell and
follows the device's used updates. A row the run gave no opportunity is claimed by nobody. Where the target does
not offer RING_PACKED every row reads *not offered*.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.virtio.features import F, bits, has
from sim.memory import GuestMemory
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.monitor import PACKED_DRV_MONITORED, PackedRingMonitor, TracingPciDevice

MEM = 8 << 20
QSIZE = 13
FRAME = bytes.fromhex("020000000001020000000002") + b"\x08\x00" + bytes(range(50))
#: Run options: the feature bits each adds to the guest driver's packed set (and needs offered).
VARIANTS = {
    "event_idx": bits(F.EVENT_IDX),
    "no_event_idx": 0,
    "in_order": bits(F.IN_ORDER, F.EVENT_IDX),
}
#: Rows the indirect tables bring in (the guest driver builds them where INDIRECT_DESC is negotiated).
INDIRECT_ROWS = ("PACKED-DRV-12", "PACKED-DRV-13", "PACKED-DRV-14", "PACKED-DRV-15")


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


@pytest.mark.req(*PACKED_DRV_MONITORED)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_guest_driver_on_packed_rings(bench: Bench, verdict: Verdict, mem: GuestMemory, variant: str) -> None:
    name = f"guest driver on packed rings ({variant})"
    looped = bench.wire().looped  # probed (where unknown) before this check's own device is opened
    dev = bench.open()
    trace = TracingPciDevice(dev)
    rings = PackedRingMonitor.attach(trace, mem.read)
    base = (DEFAULT_FEATURES & ~bits(F.EVENT_IDX)) | bits(F.RING_PACKED)
    wanted = base | VARIANTS[variant]
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=wanted)
    try:
        drv.init()
        negotiated = drv.features
        if not has(negotiated, F.RING_PACKED) or negotiated & VARIANTS[variant] != VARIANTS[variant]:
            for rid in PACKED_DRV_MONITORED:
                if not verdict.recorded(rid):
                    verdict.not_offered(rid, f"{name}: the target offers {drv.offered:#x}, without RING_PACKED or "
                                             f"{VARIANTS[variant]:#x}")
            return
        for _ in range(4):  # more than three laps of 13 slots on either queue
            if looped:
                drv.exchange([FRAME] * 5, timeout=bench.deadlines.wait(5.0))
            else:
                drv.send([FRAME] * 5, timeout=bench.deadlines.wait(5.0))
                drv.wait_tx_done(timeout=bench.deadlines.wait(5.0))
        rings.inspect()
        drv.reset()
    finally:
        drv.close()
    verdicts = rings.verdicts()
    for rid in PACKED_DRV_MONITORED:
        if rid in verdicts:
            ok, evidence = verdicts[rid]
            verdict.check(rid, ok, f"{name}: " + "; ".join(evidence[:5]))
        elif rid in INDIRECT_ROWS and not has(negotiated, F.INDIRECT_DESC):
            verdict.not_offered(rid, f"{name}: VIRTIO_F_INDIRECT_DESC not negotiated, no indirect table built")
        elif rid == "PACKED-DRV-04" and not has(negotiated, F.NOTIFICATION_DATA):
            verdict.not_offered(rid, f"{name}: VIRTIO_F_NOTIFICATION_DATA not negotiated (offered {drv.offered:#x})")
