"""Hostile driver input: the device must survive it, stay inside the IOMMU maps and ask for a reset.

Each case publishes one input a conformant driver never would (the driver rule
it breaks is named in the evidence) on transmitq1 of a live device, rings the
doorbell and then checks, with bounded waits:

- no crash and no hang (the register access returns, the device thread logged no error);
- DEVICE_NEEDS_RESET in device_status (STATUS-DEV-02) followed by a configuration
  change notification (STATUS-DEV-03), or the queue refused at queue_enable;
- every DMA fault is at an address the case planted, no device write outside the
  used rings (IOMMU observer where available, and guest memory snapshots);
- after a reset the same device carries a normal frame again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from backend.pci.device import DmaFault, DmaPerm
from backend.virtio.features import F, bit
from backend.virtio.pci_regs import ISR_CONFIG, NO_VECTOR
from backend.virtio.split_ring import DESC_SIZE, DescFlags, Descriptor
from testbenches.conformance.chains import (
    DmaWatch,
    changed_outside,
    fmt_faults,
    fmt_runs,
    ring_ranges,
    snapshot,
    status_text,
)
from testbenches.conformance.harness import (
    NEEDS_RESET,
    RX,
    TX,
    UNMAPPED_IOVA,
    Bench,
    HostileKick,
    Rig,
    drain,
    hostile_kick,
    make_frame,
    with_features,
)
from testbenches.conformance.plugin import Verdict
from testbenches.driver.split_ring import DriverSplitQueue
from testbenches.driver.virtio_net import DEFAULT_FEATURES

QSIZE = 8
#: Bytes past a planted address that still count as that plant (a device may fault anywhere in the range).
PLANT_SPAN = 0x4000
NEXT, WRITE, INDIRECT = int(DescFlags.NEXT), int(DescFlags.WRITE), int(DescFlags.INDIRECT)
WITH_INDIRECT = with_features(F.INDIRECT_DESC)
WITHOUT_INDIRECT = DEFAULT_FEATURES & ~bit(F.INDIRECT_DESC)


@dataclass(frozen=True)
class Planted:
    bad_iovas: tuple[int, ...] = ()
    avail_idx: int | None = None  # avail idx announced by the doorbell when the case wrote its own


Build = Callable[[Rig, DriverSplitQueue], Planted]


def _bufs(r: Rig, ring: DriverSplitQueue) -> tuple[int, int, int, int]:
    """A header and a frame buffer: (hdr gpa, hdr len, frame gpa, frame len)."""
    f = make_frame(3)
    return ring.alloc_buffer(bytes(r.hdr_len)), r.hdr_len, ring.alloc_buffer(f), len(f)


def _chain(ring: DriverSplitQueue, descs: dict[int, Descriptor], head: int = 0) -> Planted:
    ring.add_raw(descs, head)
    ring.publish()
    return Planted()


def desc_loop(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, f, fl = _bufs(r, ring)
    return _chain(ring, {0: Descriptor(h, hl, NEXT, 1), 1: Descriptor(f, fl, NEXT, 0)})


def next_out_of_range(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, _, _ = _bufs(r, ring)
    return _chain(ring, {0: Descriptor(h, hl, NEXT, ring.size + 3)})


def head_out_of_range(r: Rig, ring: DriverSplitQueue) -> Planted:
    ring.push_head(ring.size + 5)
    ring.publish()
    return Planted()


def buffer_unmapped(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, _, _ = _bufs(r, ring)
    _chain(ring, {0: Descriptor(h, hl, NEXT, 1), 1: Descriptor(UNMAPPED_IOVA, 64, 0, 0)})
    return Planted((UNMAPPED_IOVA,))


def chain_longer_than_queue(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, f, _ = _bufs(r, ring)
    n = ring.size + 1
    table = [Descriptor(h, hl, NEXT, 1)] + [Descriptor(f, 4, NEXT if i + 1 < n else 0, i + 1 if i + 1 < n else 0)
                                           for i in range(1, n)]
    gpa = ring.write_indirect(table)
    return _chain(ring, {0: Descriptor(gpa, DESC_SIZE * n, INDIRECT, 0)})


def nested_indirect(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, f, fl = _bufs(r, ring)
    inner = ring.write_indirect([Descriptor(h, hl, NEXT, 1), Descriptor(f, fl, 0, 0)])
    outer = ring.write_indirect([Descriptor(inner, 2 * DESC_SIZE, INDIRECT, 0)])
    return _chain(ring, {0: Descriptor(outer, DESC_SIZE, INDIRECT, 0)})


def indirect_and_next(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, f, fl = _bufs(r, ring)
    table = ring.write_indirect([Descriptor(h, hl, 0, 0)])
    return _chain(ring, {0: Descriptor(table, DESC_SIZE, INDIRECT | NEXT, 1), 1: Descriptor(f, fl, 0, 0)})


def indirect_len_zero(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, _, _ = _bufs(r, ring)
    table = ring.write_indirect([Descriptor(h, hl, 0, 0)])
    return _chain(ring, {0: Descriptor(table, 0, INDIRECT, 0)})


def indirect_len_ragged(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, f, fl = _bufs(r, ring)
    table = ring.write_indirect([Descriptor(h, hl, NEXT, 1), Descriptor(f, fl, 0, 0)])
    return _chain(ring, {0: Descriptor(table, DESC_SIZE + 8, INDIRECT, 0)})


def indirect_table_unmapped(r: Rig, ring: DriverSplitQueue) -> Planted:
    _chain(ring, {0: Descriptor(UNMAPPED_IOVA, 2 * DESC_SIZE, INDIRECT, 0)})
    return Planted((UNMAPPED_IOVA,))


def indirect_not_negotiated(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, f, fl = _bufs(r, ring)
    table = ring.write_indirect([Descriptor(h, hl, NEXT, 1), Descriptor(f, fl, 0, 0)])
    return _chain(ring, {0: Descriptor(table, 2 * DESC_SIZE, INDIRECT, 0)})


def readable_after_writable(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, f, fl = _bufs(r, ring)
    return _chain(ring, {0: Descriptor(f, fl, WRITE | NEXT, 1), 1: Descriptor(h, hl, 0, 0)})


def readable_in_indirect_after_writable(r: Rig, ring: DriverSplitQueue) -> Planted:
    h, hl, f, fl = _bufs(r, ring)
    table = ring.write_indirect([Descriptor(h, hl, 0, 0)])
    return _chain(ring, {0: Descriptor(f, fl, WRITE | NEXT, 1), 1: Descriptor(table, DESC_SIZE, INDIRECT, 0)})


def burst_buffer_unmapped(r: Rig, ring: DriverSplitQueue) -> Planted:
    """Three plain one-descriptor chains in one burst, the middle one's buffer outside the maps."""
    f = make_frame(3)
    heads = [ring.add([bytes(r.hdr_len) + f], []) for _ in range(3)]
    ring.write_desc(heads[1], Descriptor(UNMAPPED_IOVA, r.hdr_len + len(f), 0, 0))
    ring.publish()
    return Planted((UNMAPPED_IOVA,))


def avail_idx_jump(r: Rig, ring: DriverSplitQueue) -> Planted:
    jump = ring.size + 1 + ring.published
    ring.write_avail_idx(jump)
    return Planted(avail_idx=jump)


@dataclass(frozen=True)
class Case:
    name: str
    rule: str  # the driver requirement the input breaks
    build: Build
    features: int = WITH_INDIRECT
    needs_indirect: bool = False


CASES = [
    Case("descriptor loop", "SPLIT-DRV-04", desc_loop),
    Case("next index beyond the queue", "SPLIT-DRV-04", next_out_of_range),
    Case("avail ring head beyond the queue", "SPLIT-DRV-04", head_out_of_range),
    Case("buffer outside the IOMMU maps", "FEAT-DRV-11", buffer_unmapped),
    Case("one buffer of a burst outside the IOMMU maps", "FEAT-DRV-11", burst_buffer_unmapped),
    Case("device-readable descriptor after a device-writable one", "SPLIT-DRV-02", readable_after_writable),
    Case("indirect device-readable descriptor after a device-writable one", "SPLIT-DRV-02",
         readable_in_indirect_after_writable, needs_indirect=True),
    Case("chain longer than the queue", "SPLIT-DRV-08", chain_longer_than_queue, needs_indirect=True),
    Case("indirect inside indirect", "SPLIT-DRV-07", nested_indirect, needs_indirect=True),
    Case("INDIRECT and NEXT on one descriptor", "SPLIT-DRV-09", indirect_and_next, needs_indirect=True),
    Case("indirect table length 0", "SPLIT-DRV-08", indirect_len_zero, needs_indirect=True),
    Case("indirect table length not a multiple of 16", "SPLIT-DRV-08", indirect_len_ragged, needs_indirect=True),
    Case("indirect table outside the IOMMU maps", "FEAT-DRV-11", indirect_table_unmapped, needs_indirect=True),
    Case("INDIRECT without VIRTIO_F_INDIRECT_DESC", "SPLIT-DRV-06", indirect_not_negotiated,
         features=WITHOUT_INDIRECT),
    Case("avail idx more than the queue size ahead", "SPLIT-DRV-11", avail_idx_jump),
]


def _reported(r: Rig, since: int) -> str:
    errors = r.driver_errors()
    if errors is None:
        return "device gives no error detail"
    errs = errors[since:]
    return f"device reported {errs[0]}" if errs else "device reported no ring error"


def _error_count(r: Rig) -> int:
    return len(r.driver_errors() or [])


def _recovers(r: Rig, verdict: Verdict, what: str) -> None:
    """After a reset the device must carry a normal frame again (STATUS-DEV-02: the error is left by reset)."""
    r.faults()
    d = r.up(queue_size=64, rx_buffers=8)
    status = d.transport.status()
    sent = make_frame(42, 200)
    ring = d.queues[TX]
    heads = [ring.add([bytes(d.hdr_len) + sent], [])]  # one descriptor: nothing but the basics is exercised
    ring.publish()
    r.doorbell(TX)
    done = r.wait_used(TX, 1)
    ok = [u.head for u in done] == heads and not status & NEEDS_RESET
    detail = f"TX used {[u.head for u in done]} for posted {heads}"
    if r.wire.looped and ok:
        rx = r.wait_used(RX, 1)
        back = rx[0].data[d.hdr_len:d.hdr_len + len(sent)] if rx else b""
        ok = ok and back == sent
        detail += (f", {len(rx)} RX buffer used, frame looped back "
                   f"{'intact' if back == sent else f'as {len(back)} bytes'}")
    faults = r.faults()
    verdict.check("STATUS-DEV-02", ok and not faults,
                  f"after {what} and a reset: status {status_text(status)} at DRIVER_OK, {detail} "
                  f"(waited {r.explain()}), {fmt_faults(faults)}")


def _ring_planted(r: Rig, ring: Callable[[], object], cfg_fd: int,
                  allowed: list[tuple[int, int]]) -> tuple[HostileKick, list[tuple[int, int]], DmaWatch]:
    """Ring the doorbell on the planted input, watched: the kick, guest memory changed outside ``allowed`` (the
    used rings) and the record of the device's DMA."""
    before = snapshot(r.mem)
    with r.dma_watch() as rec:
        kick = hostile_kick(ring, cfg_fd, r.event_wait, r.explain())
    return kick, changed_outside(r.mem, before, snapshot(r.mem), allowed), rec


def _judge_needs_reset(r: Rig, verdict: Verdict, what: str, kick: HostileKick, status: int, expected: str,
                       since: int, faults: list[DmaFault]) -> None:
    """STATUS-DEV-02: the doorbell returned and the device set DEVICE_NEEDS_RESET."""
    verdict.check("STATUS-DEV-02", kick.crash is None and bool(status & NEEDS_RESET),
                  f"{what}: {kick.doorbell}, status {status_text(status)}{expected}; {_reported(r, since)}; "
                  f"{fmt_faults(faults)}")


def _safety(r: Rig, verdict: Verdict, what: str, planted: tuple[int, ...], faults: list[DmaFault],
            stray_mem: list[tuple[int, int]], rec: DmaWatch, allowed: list[tuple[int, int]]) -> None:
    stray_faults = [f for f in faults if not any(p <= f.iova < p + PLANT_SPAN for p in planted)]
    verdict.check("STATUS-DEV-02", not stray_faults,
                  f"{what}: DMA faults away from the planted addresses "
                  f"{[hex(p) for p in planted] or 'none planted'}: {fmt_faults(stray_faults)}")
    verdict.check("STATUS-DEV-02", not stray_mem,
                  f"{what}: guest memory outside the used rings changed at {fmt_runs(stray_mem)}")
    if rec.available:
        stray = rec.outside(allowed, access=DmaPerm.WRITE)
        verdict.check("STATUS-DEV-02", not stray, f"{what}: device writes outside the used rings: {stray[:4]}")
    errors = r.crashes()
    verdict.check("STATUS-DEV-02", not errors, f"{what}: the device thread raised {errors[:2]}")


@pytest.mark.parametrize(("case", "irq_mode"), [pytest.param(c, "msix", id=c.build.__name__) for c in CASES]
                         + [pytest.param(CASES[0], "intx", id="desc_loop-intx")])
@pytest.mark.req("STATUS-DEV-02", "STATUS-DEV-03")
def test_hostile_ring_input(bench: Bench, verdict: Verdict, case: Case, irq_mode: str) -> None:
    with bench.rig() as r:
        d = r.up(features=case.features, queue_size=QSIZE, rx_buffers=0, irq_mode=irq_mode)
        if case.needs_indirect and not d.features & bit(F.INDIRECT_DESC):
            for rid in ("STATUS-DEV-02", "STATUS-DEV-03"):
                verdict.not_offered(rid, f"{case.name}: VIRTIO_F_INDIRECT_DESC not offered")
            return
        t = d.transport
        ring = d.queues[TX]
        cfg_fd = d.irq_fds["config"]
        t.read_isr()
        drain(cfg_fd)
        r.faults()
        since = _error_count(r)
        allowed = [ring_ranges(ring)["used"], ring_ranges(d.queues[RX])["used"]]
        planted = case.build(r, ring)
        what = f"{case.name} (breaks {case.rule})"
        kick, stray_mem, rec = _ring_planted(r, lambda: r.doorbell(TX, planted.avail_idx), cfg_fd, allowed)
        status = t.status()
        isr = t.read_isr()
        faults = r.faults()
        _judge_needs_reset(r, verdict, what, kick, status, " (DEVICE_NEEDS_RESET expected)",
                           since, faults)
        how = "INTx" if d.intx else f"config vector {d.vectors['config']}"
        verdict.check("STATUS-DEV-03", kick.notified and (not d.intx or bool(isr & ISR_CONFIG)),
                      f"{what}: status {status_text(status)}, {how} {kick.notification}, ISR {isr:#x}")
        _safety(r, verdict, what, planted.bad_iovas, list(faults), stray_mem, rec, allowed)
        _recovers(r, verdict, what)


@pytest.mark.req("STATUS-DEV-02", "STATUS-DEV-03")
def test_rings_outside_the_maps(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        d = r.up(queue_size=QSIZE, rx_buffers=0, queues=False, driver_ok=False)
        t = d.transport
        size = min(QSIZE, t.queue_size(TX))
        desc, avail, used = UNMAPPED_IOVA, UNMAPPED_IOVA + 0x1000, UNMAPPED_IOVA + 0x2000
        d.enable_queue_at(TX, size, desc, avail, used)
        d.driver_ok()
        cfg_fd = d.irq_fds["config"]
        drain(cfg_fd)
        r.faults()
        since = _error_count(r)
        what = f"transmitq1 rings at IOVA {desc:#x}/{avail:#x}/{used:#x}, never mapped (breaks FEAT-DRV-11)"
        kick, stray_mem, rec = _ring_planted(r, lambda: r.doorbell(TX, 1), cfg_fd, [])
        status = t.status()
        faults = r.faults()
        _judge_needs_reset(r, verdict, what, kick, status, "", since, faults)
        kick.judge_notified(verdict, what, d.vectors["config"])
        _safety(r, verdict, what, (desc,), list(faults), stray_mem, rec, [])
        _recovers(r, verdict, what)


def _refused_at_enable(r: Rig, verdict: Verdict, what: str, size: int | None, shift: tuple[int, int, int]) -> None:
    """Program transmitq1 with queue_size ``size`` (None: the maximum) and ring parts moved by ``shift`` bytes,
    then queue_enable=1: the queue must stay disabled or the device ask for a reset, touching no memory."""
    d = r.up(rx_buffers=0, queues=False, driver_ok=False)
    t = d.transport
    qmax = t.queue_size(TX)
    ring = DriverSplitQueue(r.mem, r.alloc, qmax, index=TX)
    since = _error_count(r)
    r.faults()
    t.set_queue_size(TX, qmax if size is None else size)
    t.set_queue_msix_vector(TX, d.vector_of(TX) if not d.intx else NO_VECTOR)
    t.set_queue_addresses(TX, ring.desc_addr + shift[0], ring.avail_addr + shift[1], ring.used_addr + shift[2])
    t.enable_queue(TX)
    enabled = t.queue_enabled(TX)
    status = t.status()
    faults = r.faults()
    verdict.check("STATUS-DEV-02", (not enabled or bool(status & NEEDS_RESET)) and not faults,
                  f"{what}: queue_enable reads {int(enabled)}, status {status_text(status)} (expected the queue "
                  f"refused or DEVICE_NEEDS_RESET); {_reported(r, since)}; {fmt_faults(faults)}")
    verdict.not_applicable("STATUS-DEV-03", "the error happens before DRIVER_OK: no notification is due")
    ring.close()
    _recovers(r, verdict, what)


@pytest.mark.req("STATUS-DEV-02", "STATUS-DEV-03")
def test_queue_size_not_power_of_two(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        qmax = r.max_queue_size
        bad = qmax - 1 if qmax > 2 else 3  # not a power of two (PCI-DRV-17)
        _refused_at_enable(r, verdict, f"queue_size {bad} (maximum {qmax}) then queue_enable=1 (breaks PCI-DRV-17)",
                           bad, (0, 0, 0))


#: Ring parts moved off their alignment (SPLIT-DRV-01: descriptor table 16, driver area 2, device area 4 bytes).
MISALIGNED = [("queue_desc", (8, 0, 0)), ("queue_driver", (0, 1, 0)), ("queue_device", (0, 0, 2))]


@pytest.mark.parametrize(("part", "shift"), MISALIGNED, ids=[m[0] for m in MISALIGNED])
@pytest.mark.req("STATUS-DEV-02", "STATUS-DEV-03")
def test_ring_part_misaligned(bench: Bench, verdict: Verdict, part: str, shift: tuple[int, int, int]) -> None:
    with bench.rig() as r:
        _refused_at_enable(r, verdict, f"{part} {max(shift)} bytes off its alignment then queue_enable=1 "
                                       "(breaks SPLIT-DRV-01)", None, shift)


@pytest.mark.req("STATUS-DEV-02", "STATUS-DEV-03")
def test_receive_buffer_outside_the_maps(bench: Bench, verdict: Verdict) -> None:
    """A burst of frames arriving for three receive buffers, the last one outside the maps: the first two
    frames may land, then the device asks for a reset, writing nowhere else."""
    with bench.rig() as r:
        d = r.up(queue_size=QSIZE, rx_buffers=0)
        if not r.looped(verdict, "STATUS-DEV-02", "STATUS-DEV-03"):
            return
        t = d.transport
        rx = d.queues[RX]
        size = 2048
        heads = [rx.add([], [size]) for _ in range(3)]
        rx.write_desc(heads[2], Descriptor(UNMAPPED_IOVA, size, WRITE, 0))
        rx.publish()
        r.doorbell(RX)
        cfg_fd = d.irq_fds["config"]
        t.read_isr()
        drain(cfg_fd)
        r.faults()
        since = _error_count(r)
        ring = d.queues[TX]
        for k in range(3):
            ring.add([bytes(d.hdr_len) + make_frame(10 + k, 100)], [])
        ring.publish()
        good = [(rx.read_desc(h).addr, size) for h in heads[:2]]
        allowed = [ring_ranges(ring)["used"], ring_ranges(rx)["used"], *good]
        what = "a burst of 3 frames for 3 receive buffers, the third outside the IOMMU maps (breaks FEAT-DRV-11)"
        kick, stray_mem, rec = _ring_planted(r, lambda: r.doorbell(TX), cfg_fd, allowed)
        status = t.status()
        faults = r.faults()
        _judge_needs_reset(r, verdict, what, kick, status, " (DEVICE_NEEDS_RESET expected)",
                           since, faults)
        kick.judge_notified(verdict, what, d.vectors["config"])
        _safety(r, verdict, what, (UNMAPPED_IOVA,), list(faults), stray_mem, rec, allowed)
        _recovers(r, verdict, what)
