"""Split-ring driver rows on available buffer notifications (SPLIT-DRV-20..25, 2.7.10.1), judged on the guest driver.

The guest driver (``testbenches.driver.virtio_net.GuestNetDriver``) runs on the target through the register trace
with split rings, with and without VIRTIO_F_EVENT_IDX. Its doorbells are recorded but held back from the device
(:class:`HeldDoorbells`), so the device never looks at the receive queue and the bench plays the device side of the
used ring: before each step it writes used.flags and avail_event, then the driver adds receive buffers and publishes
them. The split ring monitor reports each publication with the used ring's fields as it reads them and whether a
doorbell followed (:meth:`SplitRingMonitor.publications`); :func:`notify_findings` judges it. A step whose fields
the monitor did not find as planted (a device that wrote the used ring after all) is not judged. A row no step
judged is not claimed; the evidence counts the publications judged per row.

SPLIT-DRV-16/17/18 take the guest driver as it runs (doorbells delivered): its receive and transmit interrupts are
signalled with nothing new in the used rings (spurious used buffer notifications), and every receive buffer made
available is filled with poison before the device writes into it, so every byte past a used len is poison. Frames
that come back over a looped wire must be the ones sent, byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from backend.pci.device import PciDevice
from backend.virtio.features import F, bits, has
from backend.virtio.split_ring import U16
from sim.memory import GuestMemory
from testbenches.conformance.deadlines import NOMINAL, Deadlines
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import layout_features
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.frames import test_frame
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


#: Fills every receive buffer before the device writes into it: what lies past a used len.
POISON = 0xA5
#: Frame lengths sent for SPLIT-DRV-17/18: the shortest, a middling and a long one, all shorter than a buffer.
LENGTHS = (60, 342, 1000)


def poison_receive_buffers(drv: GuestNetDriver) -> int:
    """Fill the device-writable buffers the guest driver has made available on its receive queue with
    :data:`POISON`; returns how many bytes were poisoned."""
    ring = drv.queues[drv.RX]
    done = 0
    for gpa, length, writable in ring.in_flight_buffers():
        if writable:
            drv.mem.write(gpa, bytes([POISON]) * length)
            done += length
    return done


def spurious_interrupts(drv: GuestNetDriver) -> int:
    """Signal the receive and transmit interrupts with nothing new in the used rings; returns how many."""
    fds = {drv.irq_fds[w] for w in ("rx", "tx") if w in drv.irq_fds}
    for fd in fds:
        os.eventfd_write(fd, 1)
    return len(fds)


def frames_back_intact(sent: Sequence[bytes], got: Sequence[bytes]) -> list[str]:
    """What is wrong with the frames the driver returned: each must be one sent, byte for byte."""
    wrong = []
    for frame in got:
        if frame not in sent:
            tail = frame[-8:].hex()
            wrong.append(f"a {len(frame)}-byte frame that was not sent (ends {tail}"
                         f"{', poison' if frame.endswith(bytes([POISON]) * 4) else ''})")
    return wrong


@dataclass
class PoisonRun:
    """What :func:`spurious_then_poisoned_traffic` saw."""

    kicks: int = 0  # spurious interrupts signalled
    poisoned: int = 0  # receive buffer bytes filled with poison
    problems: list[str] = field(default_factory=list)  # how the driver failed to cope with a spurious interrupt
    sent: list[bytes] = field(default_factory=list)
    got: list[bytes] = field(default_factory=list)


def spurious_then_poisoned_traffic(drv: GuestNetDriver, looped: bool, deadlines: Deadlines = NOMINAL) -> PoisonRun:
    """On ``drv`` (brought up on split rings): poison its receive buffers, signal spurious interrupts and let it
    look for frames, then signal more and exchange frames of :data:`LENGTHS` over the wire (bounds of
    ``deadlines``)."""
    run = PoisonRun(poisoned=poison_receive_buffers(drv), kicks=spurious_interrupts(drv))
    try:
        early = drv.receive_raw(1, timeout=deadlines.silence(0.05))
        drv.reclaim_tx()
    except Exception as exc:  # the driver choked on the spurious interrupt
        run.problems.append(f"{type(exc).__name__}: {exc}")
        return run
    if early:
        run.problems.append(f"{len(early)} frames returned on an interrupt with nothing received")
    run.sent = [test_frame(seq, length, src=drv.mac()) for seq, length in enumerate(LENGTHS)]
    run.kicks += spurious_interrupts(drv)
    try:
        run.got = drv.exchange(run.sent, timeout=deadlines.wait(2.0) if looped else deadlines.silence(0.1))
        drv.wait_tx_done(timeout=deadlines.wait(2.0))
    except Exception as exc:
        run.problems.append(f"{type(exc).__name__}: {exc}")
    run.problems += drv.queues[drv.RX].anomalies + drv.queues[drv.TX].anomalies
    return run


@pytest.mark.ring_layout("split")
@pytest.mark.req("SPLIT-DRV-16", "SPLIT-DRV-17", "SPLIT-DRV-18")
def test_guest_driver_spurious_interrupts_and_bytes_past_len(bench: Bench, verdict: Verdict,
                                                            mem: GuestMemory) -> None:
    """Spurious receive and transmit interrupts, then frames over the wire into receive buffers full of poison:
    the guest driver copes with an interrupt with nothing used, and (where the wire loops) the frames it returns
    are the ones sent, nothing taken from past the used len."""
    name = "guest driver (split rings)"
    looped = bench.wire().looped
    drv = GuestNetDriver(bench.open(), mem, queue_size=QSIZE,
                         features=layout_features(DEFAULT_FEATURES, "split"), rx_buffers=16)
    try:
        drv.init()
        if has(drv.features, F.RING_PACKED):
            pytest.fail(f"{name}: the driver chose packed rings without asking for them")
        run = spurious_then_poisoned_traffic(drv, looped, bench.deadlines)
    finally:
        drv.close()
    sent, got = run.sent, run.got
    verdict.check("SPLIT-DRV-16", not run.problems,
                  f"{name}: {run.kicks} spurious interrupts (receive and transmit) with nothing used, then "
                  f"{len(got)} of {len(sent)} frames back (looped: {looped}); {run.problems}")
    if not got:
        for rid in ("SPLIT-DRV-17", "SPLIT-DRV-18"):
            verdict.not_applicable(rid, f"{name}: no frame came back over the wire (looped: {looped}), so no used "
                                        "len with poison past it")
        return
    wrong = frames_back_intact(sent, got)
    for rid in ("SPLIT-DRV-17", "SPLIT-DRV-18"):
        verdict.check(rid, not wrong, f"{name}: {len(got)} frames back into {run.poisoned} poisoned receive bytes "
                      f"({POISON:#x}), compared with the {len(sent)} sent: {wrong}")
