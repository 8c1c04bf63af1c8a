"""Hostile packed rings: raw descriptor writes a conformant driver never makes, on a live packed queue.

Each case writes one list (or two) into a packed ring of 9 that has gone once round (so the hostile list sits where
the driver wrap counter is 0), rings the doorbell and checks, with bounded waits:

- no crash and no hang: the doorbell returns, device status reads back, the device thread logged no error;
- a list that breaks a PACKED-DRV rule (named in the evidence): DEVICE_NEEDS_RESET (STATUS-DEV-02) followed by a
  configuration change notification (STATUS-DEV-03), and no used descriptor for it;
- every DMA fault is at an address the case planted outside the IOMMU maps, and nothing in guest memory changed
  outside the descriptor ring, the device event suppression area and the lists' device-writable buffers;
- after a reset the device carries a frame again.

Lists that are odd but break no rule (a zero-length device-writable descriptor, Buffer IDs beyond the queue size
and one reused while in flight) must be used like any other: their used descriptors name their ids and the bytes
written (PACKED-DEV-02), and nothing is written into their device-readable parts (PACKED-DEV-04).

Where the target does not offer VIRTIO_F_RING_PACKED every id reads *not offered*.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from backend.pci.device import DmaPerm
from backend.virtio.features import F, has
from backend.virtio.packed_ring import (
    DESC,
    DESC_SIZE,
    EVENT_SIZE,
    PackedDescriptor,
    advance,
    avail_bits,
    is_used,
    pack_ring,
)
from testbenches.conformance.chains import changed_outside, fmt_faults, fmt_runs, snapshot, status_text
from testbenches.conformance.harness import (
    NEEDS_RESET,
    RX,
    TX,
    UNMAPPED_IOVA,
    Bench,
    Rig,
    drain,
    hostile_kick,
    make_frame,
    quiesce,
    wait_fd,
)
from testbenches.conformance.packed_lists import INDIRECT, NEXT, WRITE, wait_used
from testbenches.conformance.plugin import Verdict
from testbenches.driver.packed import DriverPackedQueue

QSIZE = 9
#: Bytes past a planted address that still count as that plant (a device may fault anywhere in the range).
PLANT_SPAN = 0x4000
USED_WAIT = 1.0
HOSTILE_IDS = ("STATUS-DEV-02", "STATUS-DEV-03")


@dataclass
class Planted:
    """What a case wrote: the gpa ranges the device may write, addresses planted outside the maps, the raw used
    descriptors it expects (buffer id, bytes written) when the lists break no rule."""

    writable: list[tuple[int, int]] = field(default_factory=list)
    bad_iovas: tuple[int, ...] = ()
    expect_used: list[tuple[int, int]] | None = None
    readable: list[tuple[int, bytes]] = field(default_factory=list)


def _desc(ring: DriverPackedQueue, k: int, addr: int, length: int, flags: int, ident: int) -> PackedDescriptor:
    """Ring descriptor ``k`` of a list starting at next_avail, with the AVAIL/USED bits of its own slot."""
    wrap = advance(ring.next_avail, ring.avail_wrap, k, ring.size)[1]
    return PackedDescriptor(addr, length, ident, flags | avail_bits(wrap))


def _expose(ring: DriverPackedQueue, descs: list[PackedDescriptor]) -> None:
    ring.expose_raw(descs, descs[-1].id)


def list_longer_than_ring(r: Rig, ring: DriverPackedQueue) -> Planted:
    """Every slot says NEXT, the last one back onto the head: a list that never ends (PACKED-DRV-07)."""
    f = ring.alloc_buffer(r.tx_header() + make_frame(1))
    _expose(ring, [_desc(ring, k, f, 8, NEXT, 0) for k in range(ring.size)])
    return Planted()


def indirect_longer_than_ring(r: Rig, ring: DriverPackedQueue) -> Planted:
    """An indirect table of twice the queue size (PACKED-DRV-14: longer than the device allows)."""
    f = ring.alloc_buffer(r.tx_header() + make_frame(1))
    table = ring.write_indirect([PackedDescriptor(f, 8, 0, 0) for _ in range(2 * ring.size)])
    _expose(ring, [_desc(ring, 0, table, 2 * ring.size * DESC_SIZE, INDIRECT, 0)])
    return Planted()


def indirect_in_indirect(r: Rig, ring: DriverPackedQueue) -> Planted:
    """An indirect table whose entry is itself INDIRECT (PACKED-DRV-13)."""
    f = ring.alloc_buffer(r.tx_header() + make_frame(1))
    inner = ring.write_indirect([PackedDescriptor(f, 60, 0, 0)])
    outer = ring.write_indirect([PackedDescriptor(inner, DESC_SIZE, 0, INDIRECT)])
    _expose(ring, [_desc(ring, 0, outer, DESC_SIZE, INDIRECT, 0)])
    return Planted()


def indirect_len_zero(r: Rig, ring: DriverPackedQueue) -> Planted:
    """An INDIRECT descriptor whose table is 0 bytes long (PACKED-DRV-14: no table at all)."""
    table = ring.write_indirect([PackedDescriptor(ring.alloc_buffer(60), 60, 0, 0)])
    _expose(ring, [_desc(ring, 0, table, 0, INDIRECT, 0)])
    return Planted()


def buffer_unmapped(r: Rig, ring: DriverPackedQueue) -> Planted:
    """Header mapped, frame at an address outside every IOMMU map (FEAT-DRV-11)."""
    h = ring.alloc_buffer(r.tx_header())
    _expose(ring, [_desc(ring, 0, h, r.hdr_len, NEXT, 0), _desc(ring, 1, UNMAPPED_IOVA, 64, 0, 0)])
    return Planted(bad_iovas=(UNMAPPED_IOVA,))


def indirect_table_unmapped(r: Rig, ring: DriverPackedQueue) -> Planted:
    """The indirect table itself outside the maps (FEAT-DRV-11)."""
    _expose(ring, [_desc(ring, 0, UNMAPPED_IOVA, 2 * DESC_SIZE, INDIRECT, 0)])
    return Planted(bad_iovas=(UNMAPPED_IOVA,))


def indirect_entry_unmapped(r: Rig, ring: DriverPackedQueue) -> Planted:
    """A mapped indirect table naming a buffer outside the maps (FEAT-DRV-11)."""
    h = ring.alloc_buffer(r.tx_header())
    table = ring.write_indirect([PackedDescriptor(h, r.hdr_len, 0, 0),
                                 PackedDescriptor(UNMAPPED_IOVA + 0x1000, 64, 0, 0)])
    _expose(ring, [_desc(ring, 0, table, 2 * DESC_SIZE, INDIRECT, 0)])
    return Planted(bad_iovas=(UNMAPPED_IOVA + 0x1000,))


def indirect_not_negotiated(r: Rig, ring: DriverPackedQueue) -> Planted:
    """INDIRECT set although VIRTIO_F_INDIRECT_DESC was not negotiated (PACKED-DRV-12)."""
    h = ring.alloc_buffer(r.tx_header() + make_frame(1))
    table = ring.write_indirect([PackedDescriptor(h, 60, 0, 0)])
    _expose(ring, [_desc(ring, 0, table, DESC_SIZE, INDIRECT, 0)])
    return Planted()


@dataclass(frozen=True)
class Case:
    name: str
    rule: str
    build: Callable[[Rig, DriverPackedQueue], Planted]
    indirect: bool | None  # True: needs INDIRECT_DESC; False: must run without it; None: either


CASES = [
    Case("list longer than the ring (NEXT on every slot)", "PACKED-DRV-07", list_longer_than_ring, None),
    Case("indirect table longer than the queue", "PACKED-DRV-14", indirect_longer_than_ring, True),
    Case("indirect inside an indirect table", "PACKED-DRV-13", indirect_in_indirect, True),
    Case("indirect table length 0", "PACKED-DRV-14", indirect_len_zero, True),
    Case("buffer outside the IOMMU maps", "FEAT-DRV-11", buffer_unmapped, None),
    Case("indirect table outside the IOMMU maps", "FEAT-DRV-11", indirect_table_unmapped, True),
    Case("indirect entry outside the IOMMU maps", "FEAT-DRV-11", indirect_entry_unmapped, True),
    Case("INDIRECT without VIRTIO_F_INDIRECT_DESC", "PACKED-DRV-12", indirect_not_negotiated, False),
]


def _rig_up(r: Rig, verdict: Verdict, ids: tuple[str, ...], indirect: bool | None, what: str) -> int | None:
    """Packed bring-up with rings of QSIZE gone once round; the features, or None with ``ids`` not offered."""
    if not has(r.offered, F.RING_PACKED):
        for rid in ids:
            verdict.not_offered(rid, f"{what}: VIRTIO_F_RING_PACKED (bit 34) not offered (device features "
                                     f"{r.offered:#x})")
        return None
    feats = r.features_for(indirect=indirect, layout="packed")
    if feats is None:
        for rid in ids:
            verdict.not_offered(rid, f"{what}: VIRTIO_F_INDIRECT_DESC not offered with RING_PACKED")
        return None
    r.up_packed(feats, queue_size=QSIZE)
    tx = r.packed[TX]
    for k in range(QSIZE):  # one lap first
        tx.add([r.tx_header() + make_frame(k)], [])
        r.kick_packed(TX)
        wait_used(r, TX, 1, USED_WAIT)
    return feats


def _allowed(r: Rig, extra: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Where the device may write: both descriptor rings, both device event areas, the planted writable buffers."""
    out = list(extra)
    for ring in r.packed.values():
        out += [(ring.desc_addr, DESC_SIZE * ring.size), (ring.device_addr, EVENT_SIZE)]
    return out


def _recovers(r: Rig, verdict: Verdict, feats: int, what: str) -> None:
    """After a reset a fresh packed bring-up carries a frame (STATUS-DEV-02: the error is left by reset)."""
    r.faults()
    r.up_packed(feats, queue_size=QSIZE)
    sent = make_frame(42, 200)
    rx, tx = r.packed[RX], r.packed[TX]
    if r.wire.looped:
        rx.add([], [r.hdr_len + len(sent)])
        r.kick_packed(RX)
    tx.add([r.tx_header() + sent], [])
    r.kick_packed(TX)
    done, _, why = wait_used(r, TX, 1, USED_WAIT)
    ok = len(done) == 1 and not r.status() & NEEDS_RESET
    detail = f"{len(done)} of 1 transmit buffer used{'; ' + why if why else ''}"
    if r.wire.looped and ok:
        got, _, why = wait_used(r, RX, 1, USED_WAIT)
        back = got[0].data[r.hdr_len:] if got else b""
        ok = back == sent
        detail += f", frame looped back {'intact' if ok else f'as {len(back)} bytes'}"
    faults = r.faults()
    verdict.check("STATUS-DEV-02", ok and not faults, f"after {what} and a reset: status {status_text(r.status())}, "
                                                      f"{detail}, {fmt_faults(faults)}")


@pytest.mark.req(*HOSTILE_IDS)
@pytest.mark.parametrize("case", CASES, ids=[c.build.__name__ for c in CASES])
def test_hostile_packed_ring(bench: Bench, verdict: Verdict, case: Case) -> None:
    what = f"{case.name} (breaks {case.rule})"
    with bench.rig() as r:
        feats = _rig_up(r, verdict, HOSTILE_IDS, case.indirect, what)
        if feats is None:
            return
        if case.indirect is False and has(feats, F.INDIRECT_DESC):
            raise AssertionError(f"{what}: INDIRECT_DESC negotiated ({feats:#x})")
        tx = r.packed[TX]
        cfg_fd = r.drv.irq_fds["config"]
        r.drv.transport.read_isr()
        drain(cfg_fd)
        r.faults()
        since = len(r.driver_errors() or [])
        slot, wrap = tx.next_used, tx.used_wrap
        planted = case.build(r, tx)
        before = snapshot(r.mem)
        with r.dma_watch() as watch:
            kick = hostile_kick(lambda: r.kick_packed(TX), cfg_fd, r.event_wait, r.explain())
        after = snapshot(r.mem)
        status = r.status()
        faults = r.faults()
        errors = (r.driver_errors() or [])[since:]
        flags = DESC.unpack(r.mem.read(tx.desc_addr + DESC_SIZE * slot, DESC_SIZE))[3]
        used = is_used(flags, wrap)
        said = "; ".join(errors) or "nothing"
        verdict.check("STATUS-DEV-02", kick.crash is None and bool(status & NEEDS_RESET) and not used,
                      f"{what}: {kick.doorbell}, status "
                      f"{status_text(status)} (DEVICE_NEEDS_RESET expected), slot {slot} "
                      f"{'used' if used else 'not used'}; device says: {said}"
                      f"{'' if any(case.rule in e for e in errors) else ' (rule not named)'}; {fmt_faults(faults)}")
        verdict.check("STATUS-DEV-03", kick.notified, f"{what}: status {status_text(status)}, config vector "
                                                      f"{kick.notification}")
        allowed = _allowed(r, planted.writable)
        stray_faults = [f for f in faults if not any(p <= f.iova < p + PLANT_SPAN for p in planted.bad_iovas)]
        stray_mem = changed_outside(r.mem, before, after, allowed)
        stray_dma = watch.outside(allowed, access=DmaPerm.WRITE) if watch.available else []
        verdict.check("STATUS-DEV-02", not stray_faults and not stray_mem and not stray_dma and not r.crashes(),
                      f"{what}: faults away from the planted addresses {fmt_faults(stray_faults)}; guest memory "
                      f"changed outside the rings at {fmt_runs(stray_mem)}; device writes outside {stray_dma[:4]}; "
                      f"device thread {r.crashes()[:2] or 'alive'}")
        _recovers(r, verdict, feats, what)


# --- odd lists that break no rule ------------------------------------------------------------------------------

ODD_IDS = ("PACKED-DEV-02", "PACKED-DEV-04")


def _used_at(r: Rig, ring: DriverPackedQueue, count: int) -> list[tuple[int, int, int]]:
    """Up to ``count`` raw used descriptors from the ring's next used slot: (flags, id, len); the driver side's own
    bookkeeping is bypassed, the case's ids may repeat."""
    out: list[tuple[int, int, int]] = []
    pos = (ring.next_used, ring.used_wrap)
    for _ in range(count):
        _, length, ident, flags = DESC.unpack(r.mem.read(ring.desc_addr + DESC_SIZE * pos[0], DESC_SIZE))
        if not is_used(flags, pos[1]):
            break
        out.append((flags, ident, length if flags & WRITE else 0))
        pos = advance(pos[0], pos[1], 1, ring.size)
    return out


def _wait_raw_used(r: Rig, ring: DriverPackedQueue, q: int, count: int) -> list[tuple[int, int, int]]:
    got = _used_at(r, ring, count)
    fd = r.irq_fd(q)
    deadline = time.monotonic() + r.stretched(USED_WAIT)
    while len(got) < count and (left := deadline - time.monotonic()) > 0:
        wait_fd(fd, min(left, 0.01))
        got = _used_at(r, ring, count)
    return got


@pytest.mark.req(*ODD_IDS)
def test_zero_length_writable_descriptor(bench: Bench, verdict: Verdict) -> None:
    """A receive list whose first device-writable descriptor is 0 bytes long, then room for the packet: the device
    writes header and frame into the room after it and reports their length; nothing lands in the empty one's
    neighbourhood or in the list's device-readable guard descriptor of a transmit list beside it."""
    what = "receive list [0-byte writable, writable room]"
    with bench.rig() as r:
        feats = _rig_up(r, verdict, ODD_IDS, None, what)
        if feats is None or not r.looped(verdict, *ODD_IDS):
            return
        rx, tx = r.packed[RX], r.packed[TX]
        # The warm-up lap's frames came back to an empty receive ring; on an asynchronous wire (RTL, hardware) the
        # last ones may still be on their way: they are dropped there before the list below is made available.
        quiesce({"rx": r.irq_fd(RX)}, limit=r.event_wait, quiet=r.silence(r.quiet))
        sent = make_frame(7, 300)
        need = r.hdr_len + len(sent)
        empty = rx.alloc_buffer(64)
        room = rx.alloc_buffer(need + 16)
        ident = 5
        _expose(rx, [_desc(rx, 0, empty, 0, WRITE | NEXT, 0x7777), _desc(rx, 1, room, need + 16, WRITE, ident)])
        r.kick_packed(RX)
        tx.add([r.tx_header() + sent], [])
        before = snapshot(r.mem)
        with r.dma_watch() as watch:
            r.kick_packed(TX)
            got = _wait_raw_used(r, rx, RX, 1)
        after = snapshot(r.mem)
        allowed = _allowed(r, [(room, need + 16)])
        stray = changed_outside(r.mem, before, after, allowed)
        stray_dma = watch.outside(allowed, access=DmaPerm.WRITE) if watch.available else []
        back = r.mem.read(room + r.hdr_len, len(sent))
        status = r.status()
        ok = (bool(got) and got[0][1:] == (ident, need) and back == sent) or bool(status & NEEDS_RESET)
        verdict.check("PACKED-DEV-02", ok, f"{what}: used {got} (expected id {ident}, len {need}), frame "
                                           f"{'intact' if back == sent else 'differs'}, status {status_text(status)}")
        verdict.check("PACKED-DEV-04", not stray and not stray_dma,
                      f"{what}: guest memory changed outside the writable room at {fmt_runs(stray)}; device writes "
                      f"outside {stray_dma[:4]}")


@pytest.mark.req(*ODD_IDS)
def test_buffer_ids_beyond_the_queue_and_reused(bench: Bench, verdict: Verdict) -> None:
    """Transmit lists with Buffer IDs 0xFFFF, QSIZE + 3 and 0xFFFF again while the first is in flight (the ids are
    the driver's business): the used descriptors echo them in order, and the device-readable bytes (indirect
    tables included) stay as written."""
    what = "Buffer IDs 0xffff, queue size + 3, 0xffff again"
    with bench.rig() as r:
        feats = _rig_up(r, verdict, ODD_IDS, None, what)
        if feats is None:
            return
        tx = r.packed[TX]
        ids = [0xFFFF, QSIZE + 3, 0xFFFF]
        readable: list[tuple[int, bytes]] = []
        for k, ident in enumerate(ids):
            data = r.tx_header() + make_frame(20 + k)
            h = tx.alloc_buffer(data)
            readable.append((h, data))
            if has(feats, F.INDIRECT_DESC) and k == 1:
                table = pack_ring([PackedDescriptor(h, len(data), 0, 0)])
                t = tx.alloc_buffer(table)
                readable.append((t, table))
                tx.expose_raw([_desc(tx, 0, t, len(table), INDIRECT, ident)], 1000 + k)
            else:
                tx.expose_raw([_desc(tx, 0, h, len(data), 0, ident)], 1000 + k)
        r.kick_packed(TX)
        got = _wait_raw_used(r, tx, TX, len(ids))
        changed = [f"{gpa:#x}" for gpa, data in readable if r.mem.read(gpa, len(data)) != data]
        status = r.status()
        verdict.check("PACKED-DEV-02", [g[1:] for g in got] == [(i, 0) for i in ids] and not status & NEEDS_RESET,
                      f"{what}: used (id, len) {[g[1:] for g in got]}, expected {[(i, 0) for i in ids]}, status "
                      f"{status_text(status)}")
        verdict.check("PACKED-DEV-04", not changed, f"{what}: device-readable bytes changed at {changed}")
