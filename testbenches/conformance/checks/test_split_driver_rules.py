"""Split-ring driver rows on available buffer notifications (SPLIT-DRV-20..25, 2.7.10.1), judged on the guest driver.

The guest driver (``testbenches.driver.virtio_net.GuestNetDriver``) runs on the target through the register trace
with split rings, with and without VIRTIO_F_EVENT_IDX. Its doorbells are recorded but held back from the device
(:class:`HeldDoorbells`), so the device never looks at the receive queue and the bench plays the device side of the
used ring: before each step it writes used.flags and avail_event, then the driver adds receive buffers and publishes
them. The split ring monitor reports each publication with the used ring's fields as it reads them and whether a
doorbell followed (:meth:`SplitRingMonitor.publications`); :func:`notify_findings` judges it. A step whose fields
the monitor did not find as planted (a device that wrote the used ring after all) is not judged. A row no step
judged is not claimed; the evidence counts the publications judged per row.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.pci.device import PciDevice
from backend.virtio.features import F, bits, has
from backend.virtio.split_ring import U16
from sim.memory import GuestMemory
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import layout_features
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.monitor import SplitRingMonitor, TracingPciDevice
from testbenches.monitor.split_ring_rules import notify_findings
from testbenches.monitor.virtio_pci_rules import Finding, Layout, verdicts_of

MEM = 4 << 20
QSIZE = 64
#: Receive buffers posted at bring-up (the rest of the ring is left for the steps).
RX_AT_BRING_UP = 4
#: Steps as (used.flags, avail_event - old avail idx, buffers published at once), per EVENT_IDX negotiated.
#: Without EVENT_IDX: used.flags 0 and 1 with avail_event agreeing (SPLIT-DRV-22, 21) or saying the opposite
#: (SPLIT-DRV-20). With it: avail_event crossed (24), not crossed or long passed (25), bit 0 of used.flags set while
#: avail_event asks for a notification (23).
STEPS = {
    False: ((0, 0, 1), (1, 5, 1), (0, 5, 1), (1, 0, 1), (0, 1, 2), (1, 9, 2), (0, 7, 2), (1, 1, 2)),
    True: ((0, 0, 1), (0, 1, 1), (0, 0xFFFD, 1), (1, 0, 1), (1, 1, 1), (0, 1, 3), (0, 3, 3), (1, 2, 3)),
}
ROWS = {False: ("SPLIT-DRV-20", "SPLIT-DRV-21", "SPLIT-DRV-22"), True: ("SPLIT-DRV-23", "SPLIT-DRV-24", "SPLIT-DRV-25")}


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


class HeldDoorbells(TracingPciDevice):
    """The target with the driver's doorbells recorded (the monitors see them) but not delivered: the device never
    processes the queues, so the used ring holds what the bench writes there."""

    def __init__(self, inner: PciDevice) -> None:
        super().__init__(inner)
        self.notify = Layout.discover(self).notify

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        w = self.notify
        if index == w.bar and w.offset <= offset < w.offset + w.length:
            self._record("w", index, offset, bytes(data))
            return
        super().region_write(index, offset, data)


def notification_steps(drv: GuestNetDriver, mon: SplitRingMonitor, mem: GuestMemory,
                       event_idx: bool) -> tuple[list[Finding], int]:
    """Run :data:`STEPS` on ``drv``'s receive queue (brought up, its doorbells held back from the device): the
    findings of every publication, and how many publications found the used ring otherwise than planted."""
    findings: list[Finding] = []
    disturbed = 0
    ring = drv.queues[drv.RX]
    mon.publications()  # the bring-up's: the used ring was not the bench's yet
    for flags, ahead, count in STEPS[event_idx]:
        event = (ring.published + ahead) & 0xFFFF
        mem.write(ring.used_addr, U16.pack(flags))
        mem.write(ring.used_addr + ring.layout.avail_event, U16.pack(event))
        drv.post_rx(count)
        for p in mon.publications():
            if p.queue != drv.RX or (p.used_flags, p.avail_event) != (flags, event):
                disturbed += 1
                continue
            findings += notify_findings(p, event_idx)
    return findings, disturbed


@pytest.mark.ring_layout("split")
@pytest.mark.parametrize("event_idx", [
    pytest.param(False, id="no_event_idx", marks=pytest.mark.req("SPLIT-DRV-20", "SPLIT-DRV-21", "SPLIT-DRV-22")),
    pytest.param(True, id="event_idx", marks=pytest.mark.req("SPLIT-DRV-23", "SPLIT-DRV-24", "SPLIT-DRV-25"))])
def test_guest_driver_available_buffer_notifications(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                                     event_idx: bool) -> None:
    """Receive buffers published one to three at a time under used.flags and avail_event written by the bench:
    the guest driver notifies exactly when the field it must follow says so and disregards the other."""
    name = f"guest driver (split rings, {'EVENT_IDX' if event_idx else 'no EVENT_IDX'})"
    rows = ROWS[event_idx]
    trace = HeldDoorbells(bench.open())
    mon = SplitRingMonitor.attach(trace, mem.read)
    wanted = DEFAULT_FEATURES if event_idx else DEFAULT_FEATURES & ~bits(F.EVENT_IDX)
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(wanted, "split"),
                         rx_buffers=RX_AT_BRING_UP)
    findings: list[Finding] = []
    disturbed = 0
    try:
        drv.init()
        if has(drv.features, F.RING_PACKED):
            pytest.fail(f"{name}: the driver chose packed rings without asking for them")
        if has(drv.features, F.EVENT_IDX) != event_idx:
            for rid in rows:
                verdict.not_offered(rid, f"{name}: VIRTIO_F_EVENT_IDX not offered ({drv.offered:#x})")
            return
        findings, disturbed = notification_steps(drv, mon, mem, event_idx)
    finally:
        drv.close()
    verdicts = verdicts_of(findings)
    for rid in rows:
        if rid in verdicts:
            ok, evidence = verdicts[rid]
            seen = sum(f.req_id == rid for f in findings)
            verdict.check(rid, ok, f"{name}: {seen} publications judged ({disturbed} with the used ring disturbed "
                          f"not judged); " + "; ".join(evidence[:5]))
