"""Packed virtqueue, device side (2.8): Buffer IDs and lengths across wraps, used flags per wrap counter,
descriptors that are not available, hostile lists.

Every check first asks whether the target offers VIRTIO_F_RING_PACKED (bit 34); where it does not, each id the
check names reads *not offered*. Where it does, the rig brings receiveq1/transmitq1 up as packed rings
(:meth:`~testbenches.conformance.harness.Rig.up_packed`) of sizes that are mostly not powers of two.
"""

from __future__ import annotations

import select
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.virtio.features import F, has
from backend.virtio.packed_ring import (
    DESC_FLAGS_OFFSET,
    DESC_SIZE,
    U16,
    EventFlags,
    PackedDescFlags,
    PackedDescriptor,
    advance,
    avail_bits,
    is_used,
    linear,
    pack_ring,
    packed_need_event,
    used_bits,
)
from testbenches.conformance.harness import (
    NEEDS_RESET,
    QUIET_WAIT,
    RX,
    TX,
    Bench,
    Rig,
    drain,
    hostile_kick,
    make_frame,
    need,
    wait_fd,
)
from testbenches.conformance.plugin import Verdict
from testbenches.driver.packed import DriverPackedQueue
from testbenches.driver.split_ring import DriverQueueError, UsedBuffer

#: Every verdict here is about packed rings (the layout-independent rows among them show under that layout).
pytestmark = pytest.mark.ring_layout("packed")

NEXT = int(PackedDescFlags.NEXT)
WRITE = int(PackedDescFlags.WRITE)
INDIRECT = int(PackedDescFlags.INDIRECT)
OWNER = int(PackedDescFlags.AVAIL | PackedDescFlags.USED)
#: Longest wait for buffers that must come back used.
USED_WAIT = 1.0
#: Frame length range of the workloads (a bare Ethernet header up to a full frame).
MIN_FRAME, MAX_FRAME = 14, 1514
#: Receive buffer: room for the header and the longest frame, cut in two descriptors (header, data).
RX_DATA = MAX_FRAME


def _offered(r: Rig, verdict: Verdict, ids: tuple[str, ...]) -> bool:
    """True when the target offers RING_PACKED; otherwise every id reads not offered."""
    if has(r.offered, F.RING_PACKED):
        return True
    _not_offered(verdict, ids, f"VIRTIO_F_RING_PACKED (bit 34) not offered (device features {r.offered:#x})")
    return False


def _not_offered(verdict: Verdict, ids: tuple[str, ...], why: str) -> None:
    """Once per id and test: a hypothesis test would otherwise say it again for every example."""
    for rid in ids:
        if not verdict.recorded(rid):
            verdict.not_offered(rid, why)


def _features(r: Rig, *, indirect: bool = False, in_order: bool = False) -> int | None:
    """The rig's ring feature set with RING_PACKED; None if an asked-for option is not offered."""
    return r.features_for(indirect=indirect, in_order=in_order, layout="packed")


def _raw_flags(ring: DriverPackedQueue, slot: int) -> int:
    value: int = U16.unpack(ring.mem.read(ring.desc_addr + DESC_SIZE * slot + DESC_FLAGS_OFFSET, 2))[0]
    return value


def _collect(r: Rig, q: int, count: int, timeout: float = USED_WAIT) -> tuple[list[UsedBuffer], list[str]]:
    """Consume used descriptors of packed queue ``q`` until ``count`` buffers came back or ``timeout`` (nominal
    seconds, stretched by the rig as its own helpers do: a slow simulator is not a stalled ring).

    Before the driver takes each one, its raw flags are judged: AVAIL and USED both equal to the Device Ring Wrap
    Counter the driver expects there, and WRITE set exactly when the device wrote bytes (2.8.1, 2.8.4). Returns
    the buffers and the breaches seen (a used id not in flight, wrong flags, a stall with its slot's flags)."""
    ring = r.packed[q]
    got: list[UsedBuffer] = []
    bad: list[str] = []
    wait = r.stretched(timeout)
    deadline = time.monotonic() + wait
    while len(got) < count:
        slot, wrap = ring.next_used, ring.used_wrap
        flags = _raw_flags(ring, slot)
        if is_used(flags, wrap):
            try:
                done = ring.used()
            except DriverQueueError as exc:
                bad.append(f"queue {q}: {exc}")
                return got, bad
            if done and bool(flags & WRITE) != bool(done[0].len) and not ring.in_order:
                bad.append(f"queue {q}: used descriptor at slot {slot} (buffer {done[0].head}, len {done[0].len}) "
                           f"has WRITE={bool(flags & WRITE)}")
            got += done
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            bad.append(f"queue {q}: {len(got)} of {count} buffers used within {r.explain(timeout)}; slot {slot} flags "
                       f"{flags:#06x}, the driver expects AVAIL=USED={wrap} (used_bits {used_bits(wrap):#06x}), "
                       f"{ring.in_flight} buffer(s) in flight")
            return got, bad
        wait_fd(r.irq_fd(q), min(left, QUIET_WAIT))
    return got, bad


# --- buffers across wraps -------------------------------------------------------------------------------------


WRAP_IDS = ("PACKED-DEV-01", "PACKED-DEV-02", "PACKED-DEV-08")


@st.composite
def _workloads(draw: st.DrawFn) -> tuple[int, list[list[int]]]:
    """(queue size, per frame the cut offsets of header+frame into descriptors): enough frames for three laps."""
    size = draw(st.one_of(st.sampled_from([3, 5, 7, 10, 37, 100, 255]), st.integers(3, 260)), label="queue size")
    frames = draw(st.integers(3 * size + 1, 3 * size + 20), label="frames")
    cuts = draw(st.lists(st.lists(st.integers(1, 60), max_size=2), min_size=frames, max_size=frames), label="cuts")
    return size, cuts


@pytest.mark.req(*WRAP_IDS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(work=_workloads())
def test_buffer_ids_across_wraps(bench: Bench, verdict: Verdict, work: tuple[int, list[list[int]]]) -> None:
    """Frames through transmitq1 (cut into several descriptors) and back through receiveq1 on the loopback wire,
    over at least three laps of rings whose size is mostly not a power of two: every buffer comes back used once,
    with its own Buffer ID, the length the device wrote (none for TX, header plus frame for RX), used flags
    matching the wrap counter, and the frames arrive intact in ring order."""
    size, cuts = work
    with bench.rig() as r:
        if not _offered(r, verdict, WRAP_IDS):
            return
        size = min(size, r.max_queue_size)
        features = _features(r)
        assert features is not None
        r.up_packed(features, queue_size=size)
        looped = r.wire.looped
        if not looped and not verdict.recorded("PACKED-DEV-01"):
            r.looped(verdict, "PACKED-DEV-01", "PACKED-DEV-08")
        hdr = r.tx_header()
        tx, rx = r.packed[TX], r.packed[RX]
        sent: list[bytes] = []
        received: list[bytes] = []
        bad: list[str] = []
        posted_rx = 0
        seq = 0
        while seq < len(cuts) and not bad:
            # As many frames as both rings take now (a TX list may take up to three slots).
            batch = 0
            while seq + batch < len(cuts) and tx.num_free >= 3 and (not looped or rx.num_free >= 2):
                frame = make_frame(seq + batch, MIN_FRAME + (seq + batch) * 37 % (MAX_FRAME - MIN_FRAME))
                data = hdr + frame
                offs = sorted({c for c in cuts[seq + batch] if c < len(data)})
                parts = [data[a:b] for a, b in zip([0, *offs], [*offs, len(data)], strict=True)]
                if looped:
                    rx.add([], [r.hdr_len, RX_DATA])
                    posted_rx += 1
                tx.add(parts, [])
                sent.append(frame)
                batch += 1
            if looped:
                r.kick_packed(RX)
            r.kick_packed(TX)
            used, why = _collect(r, TX, batch)
            bad += why
            bad += [f"TX buffer {u.head}: used len {u.len} (the device writes nothing into a TX buffer)"
                    for u in used if u.len]
            if looped:
                got, why = _collect(r, RX, batch)
                bad += why
                for u in got:
                    want = r.hdr_len + len(sent[len(received)]) if len(received) < len(sent) else -1
                    if u.len != want:
                        bad.append(f"RX buffer {u.head}: used len {u.len}, expected {want} (header and frame)")
                    received.append(u.data[r.hdr_len:])
            seq += batch
        laps = f"{len(sent)} frames over {size}-entry rings ({len(sent) // size} laps)"
        verdict.check("PACKED-DEV-02", not bad and not tx.anomalies and not rx.anomalies,
                      f"{laps}: {'; '.join((bad + tx.anomalies + rx.anomalies)[:4])}")
        if looped:
            order = [i for i, (a, b) in enumerate(zip(sent, received, strict=False)) if a != b]
            verdict.check("PACKED-DEV-01", not order and len(received) == len(sent),
                          f"{laps}: {len(received)} received, first out of order or altered at frame "
                          f"{order[:1]}")
            verdict.check("PACKED-DEV-08", not order and len(received) == len(sent),
                          f"{laps}: frames cut into up to three descriptors (RX header and data apart) arrived "
                          f"altered at {order[:3]}")


# --- in-order batches -----------------------------------------------------------------------------------------


@pytest.mark.req("PACKED-DEV-02", "FEAT-DEV-10")
def test_in_order_batches_name_the_last_buffer(bench: Bench, verdict: Verdict) -> None:
    """With IN_ORDER a used descriptor may stand for every buffer before it (2.8.8): over three laps of a ring
    of 10, every buffer is completed, in the order made available."""
    ids = ("PACKED-DEV-02", "FEAT-DEV-10")
    with bench.rig() as r:
        if not _offered(r, verdict, ids):
            return
        features = _features(r, in_order=True)
        if features is None:
            for rid in ids:
                verdict.not_offered(rid, "VIRTIO_F_IN_ORDER not offered with RING_PACKED")
            return
        r.up_packed(features, queue_size=10)
        tx = r.packed[TX]
        made: list[int] = []
        done: list[int] = []
        bad: list[str] = []
        for k in range(12):
            batch = [tx.add([r.tx_header() + make_frame(k * 3 + j)], []) for j in range(3)]
            made += batch
            r.kick_packed(TX)
            used, why = _collect(r, TX, 3)
            bad += why
            done += [u.head for u in used]
        verdict.check("PACKED-DEV-02", not bad, "; ".join(bad[:3]))
        verdict.check("FEAT-DEV-10", done == made, f"used order {done[:12]}..., made available {made[:12]}...")


# --- used buffer notification suppression (driver event suppression structure, 2.8.10) ---------------------


#: The packed form of the split rows on used buffer notification suppression (the issue asks the layout-independent
#: rows on both layouts; every piece of evidence says "packed ring"): DISABLE is avail.flags=1 (SPLIT-DEV-10),
#: ENABLE avail.flags=0 (SPLIT-DEV-11), DESC with EVENT_IDX is used_event (SPLIT-DEV-13 notify when crossed,
#: SPLIT-DEV-14 not otherwise).
SUPPRESS_IDS = {False: ("SPLIT-DEV-10", "SPLIT-DEV-11"), True: ("SPLIT-DEV-13", "SPLIT-DEV-14")}


@dataclass(frozen=True)
class Step:
    mode: EventFlags
    ahead: int  # DESC: the event position, slots after the next used one (negative: before it)
    batch: int


@st.composite
def _suppression(draw: st.DrawFn, event_idx: bool) -> tuple[int, list[Step]]:
    size = draw(st.one_of(st.sampled_from([3, 5, 10, 37]), st.integers(2, 100)), label="queue size")
    modes = [EventFlags.DESC, EventFlags.DISABLE, EventFlags.ENABLE] if event_idx else [EventFlags.DISABLE,
                                                                                        EventFlags.ENABLE]
    step = st.builds(Step, st.sampled_from(modes), st.integers(-3, 12), st.integers(1, min(size, 6)))
    # Each example ends with one step that must notify and one that must not, so both rows are judged.
    ends = ([Step(EventFlags.DESC, 0, 1), Step(EventFlags.DESC, 1, 1)] if event_idx
            else [Step(EventFlags.ENABLE, 0, 1), Step(EventFlags.DISABLE, 0, 1)])
    return size, draw(st.lists(step, min_size=10, max_size=30), label="steps") + ends


def _suppression_run(bench: Bench, verdict: Verdict, event_idx: bool, work: tuple[int, list[Step]]) -> None:
    ids = SUPPRESS_IDS[event_idx]
    size, steps = work
    with bench.rig() as r:
        if not _offered(r, verdict, ids):
            return
        size = min(size, r.max_queue_size)
        features = r.features_for(event_idx=event_idx, layout="packed")
        if features is None:
            _not_offered(verdict, ids, "VIRTIO_F_EVENT_IDX not offered with RING_PACKED")
            return
        r.up_packed(features, queue_size=size)
        tx = r.packed[TX]
        tx.auto_used_event = False  # the check alone writes the driver event suppression structure
        fd = r.irq_fd(TX)
        seq = 0
        for st_ in steps:
            start = (tx.next_used, tx.used_wrap)
            lin = (linear(*start, size) + st_.ahead) % (2 * size)  # behind, inside, past or a lap ahead
            ev = (lin % size, 1 if lin < size else 0)
            tx.set_driver_event(st_.mode, *ev)
            drain(fd)
            for _ in range(st_.batch):
                tx.add([r.tx_header() + make_frame(seq)], [])
                seq += 1
            r.kick_packed(TX)
            new = advance(start[0], start[1], st_.batch, size)
            last = advance(start[0], start[1], st_.batch - 1, size)
            # Wait for the last used descriptor, counting interrupts meanwhile (the eventfd is read, not drained).
            seen = 0
            deadline = time.monotonic() + min(r.stretched(USED_WAIT), r.patience)
            while not is_used(_raw_flags(tx, last[0]), last[1]) and (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([fd], [], [], min(left, 0.005))
                if ready:
                    seen += drain(fd)
            done = tx.used()
            if st_.mode == EventFlags.DESC:
                want = packed_need_event(ev[0], ev[1], new[0], new[1], st_.batch, size)
            else:
                want = st_.mode == EventFlags.ENABLE
            got = r.notified(TX, seen, want, USED_WAIT)
            what = (f"packed ring of {size}: {st_.batch} buffer(s) used at {start[0]}/wrap {start[1]} -> {new[0]}/wrap "
                    f"{new[1]}, driver event {st_.mode.name}" + (f" at {ev[0]}/wrap {ev[1]}" if st_.mode ==
                                                               EventFlags.DESC else "")
                    + f": {got} interrupt(s), {len(done)} of {st_.batch} used")
            if len(done) != st_.batch:
                for rid in ids:
                    verdict.check(rid, False, what + " (the buffers did not come back)")
                return
            if event_idx:
                if want:
                    verdict.check("SPLIT-DEV-13", got >= 1, what + " (the described descriptor was used: notify)")
                else:
                    verdict.check("SPLIT-DEV-14", got == 0, what + " (not reached or disabled: no notification)")
            elif want:
                verdict.check("SPLIT-DEV-11", got >= 1, what + " (ENABLE: notify)")
            else:
                verdict.check("SPLIT-DEV-10", got == 0, what + " (DISABLE: no notification)")


@pytest.mark.req(*SUPPRESS_IDS[False])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(work=_suppression(False))
def test_packed_enable_disable(bench: Bench, verdict: Verdict, work: tuple[int, list[Step]]) -> None:
    """Without EVENT_IDX: RING_EVENT_FLAGS_DISABLE in the driver event suppression structure means no used buffer
    notification, ENABLE one for the buffers used, across laps of a ring of any size."""
    _suppression_run(bench, verdict, False, work)


@pytest.mark.req(*SUPPRESS_IDS[True])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(work=_suppression(True))
def test_packed_event_desc(bench: Bench, verdict: Verdict, work: tuple[int, list[Step]]) -> None:
    """With EVENT_IDX: RING_EVENT_FLAGS_DESC at desc_event_off/wrap means a notification exactly when the used
    descriptors just written cover that position (never a lap early or late), none otherwise; DISABLE none."""
    _suppression_run(bench, verdict, True, work)


# --- device-readable buffers -----------------------------------------------------------------------------------


@pytest.mark.req("PACKED-DEV-04")
def test_readable_buffers_stay_unwritten(bench: Bench, verdict: Verdict) -> None:
    """Transmit lists (header and frame apart, every other one through an indirect table) over three laps of a
    ring of 11 while frames loop back into receiveq1: every device-readable byte, the indirect tables included,
    reads as the driver wrote it once the buffer is used."""
    with bench.rig() as r:
        if not _offered(r, verdict, ("PACKED-DEV-04",)):
            return
        indirect = has(r.offered, F.INDIRECT_DESC)
        features = _features(r, indirect=indirect)
        assert features is not None
        r.up_packed(features, queue_size=11)
        tx, rx = r.packed[TX], r.packed[RX]
        hdr = r.tx_header()
        bad: list[str] = []
        readable: list[tuple[int, bytes]] = []  # (gpa, bytes the driver wrote) of every list in flight
        for k in range(33):
            w = avail_bits(tx.avail_wrap)
            header, frame = hdr, make_frame(k, 60 + k)
            h, f = tx.alloc_buffer(header), tx.alloc_buffer(frame)
            parts = [(h, header), (f, frame)]
            if indirect and k % 2:
                table = pack_ring([PackedDescriptor(h, len(header), 0, 0), PackedDescriptor(f, len(frame), 0, 0)])
                t = tx.alloc_buffer(table)
                parts.append((t, table))
                descs = [PackedDescriptor(t, len(table), k % tx.size, INDIRECT | w)]
            else:
                # The second slot may lie past the ring's end, in the next lap: its own wrap counter.
                w2 = avail_bits(advance(tx.next_avail, tx.avail_wrap, 1, tx.size)[1])
                descs = [PackedDescriptor(h, len(header), k % tx.size, NEXT | w),
                         PackedDescriptor(f, len(frame), k % tx.size, w2)]
            if r.wire.looped:
                rx.add([], [r.hdr_len + MAX_FRAME])
                r.kick_packed(RX)
            tx.expose_raw(descs, k % tx.size)
            readable += parts
            r.kick_packed(TX)
            used, why = _collect(r, TX, 1)
            bad += why
            if r.wire.looped:
                bad += _collect(r, RX, 1)[1]
            for gpa, data in readable:
                now = r.mem.read(gpa, len(data))
                if now != data:
                    at = next(i for i, (a, b) in enumerate(zip(now, data, strict=True)) if a != b)
                    bad.append(f"list {k}: device-readable buffer at {gpa:#x} changed at byte {at} "
                               f"({data[at]:#04x} -> {now[at]:#04x})")
            if used:
                for gpa, _ in readable:
                    tx.free_buffer(gpa)
                readable = []
        verdict.check("PACKED-DEV-04", not bad, "; ".join(bad[:4]))


@pytest.mark.req("PACKED-DEV-05")
def test_writable_buffers_not_read(bench: Bench, verdict: Verdict) -> None:
    """Receive lists of two device-writable buffers (header, data) over three laps of a ring of 13, filled by
    frames on the loopback wire, with every device DMA access watched: none reads a device-writable buffer."""
    with bench.rig() as r:
        if not _offered(r, verdict, ("PACKED-DEV-05",)):
            return
        if need(r.abilities.dma_observer, verdict, "PACKED-DEV-05") is None or not r.looped(verdict, "PACKED-DEV-05"):
            return
        features = _features(r)
        assert features is not None
        r.up_packed(features, queue_size=13)
        tx, rx = r.packed[TX], r.packed[RX]
        bad: list[str] = []
        for k in range(39):
            h, d = rx.alloc_buffer(r.hdr_len), rx.alloc_buffer(MAX_FRAME)
            wraps = [rx.avail_wrap, advance(rx.next_avail, rx.avail_wrap, 1, rx.size)[1]]
            ident = k % rx.size
            rx.expose_raw([PackedDescriptor(h, r.hdr_len, ident, WRITE | NEXT | avail_bits(wraps[0])),
                           PackedDescriptor(d, MAX_FRAME, ident, WRITE | avail_bits(wraps[1]))], ident)
            r.kick_packed(RX)
            tx.add([r.tx_header() + make_frame(k, 60 + k)], [])
            with r.dma_watch() as watch:
                r.kick_packed(TX)
                got, why = _collect(r, RX, 1)
                bad += why + _collect(r, TX, 1)[1]
            read = [a for a in watch.accesses if not a.is_write
                    and any(a.iova < gpa + n and gpa < a.iova + a.size for gpa, n in ((h, r.hdr_len), (d, MAX_FRAME)))]
            bad += [f"frame {k}: device read {a.size} byte(s) at {a.iova:#x} of a device-writable buffer" for a in read]
            if got:
                rx.free_buffer(h)
                rx.free_buffer(d)
        verdict.check("PACKED-DEV-05", not bad, "; ".join(bad[:4]))


# --- descriptors that are not available -----------------------------------------------------------------------


NOT_AVAIL_IDS = ("PACKED-DEV-06", "PACKED-DEV-07")


@pytest.mark.req(*NOT_AVAIL_IDS)
@pytest.mark.parametrize("size", [7, 64])
def test_device_takes_only_available_descriptors(bench: Bench, verdict: Verdict, size: int) -> None:
    """Over an all-zero ring and at each lap, a slot whose AVAIL/USED bits do not say *available for this wrap
    counter* is left alone (notified or not), and used descriptors are never written again afterwards."""
    with bench.rig() as r:
        if not _offered(r, verdict, NOT_AVAIL_IDS):
            return
        features = _features(r)
        assert features is not None
        r.up_packed(features, queue_size=size)
        tx = r.packed[TX]
        hdr = r.tx_header()
        bad06: list[str] = []
        bad07: list[str] = []
        r.kick_packed(TX)  # the all-zero ring: nothing is available
        for lap in range(3):
            for k in range(size - 1):
                tx.add([hdr + make_frame(lap * size + k)], [])
            r.kick_packed(TX)
            _, why = _collect(r, TX, size - 1)
            bad06 += why
            # Every slot but the next now holds a used descriptor: they must stay as written.
            before = r.mem.read(tx.desc_addr, DESC_SIZE * size)
            slot, wrap = tx.next_avail, tx.avail_wrap
            buf = tx.alloc_buffer(hdr + make_frame(0xBAD))
            for name, flags in (("wrong wrap counter", avail_bits(wrap ^ 1)), ("AVAIL=USED (a used look)",
                                                                               used_bits(wrap)),
                                ("AVAIL=USED (other wrap)", used_bits(wrap ^ 1))):
                tx.write_desc(slot, PackedDescriptor(buf, len(hdr) + 60, 0, flags))
                drain(r.irq_fd(TX))
                r.kick_packed(TX)
                gone = wait_fd(r.irq_fd(TX), r.silence())
                after = r.mem.read(tx.desc_addr, DESC_SIZE * size)
                touched = [s for s in range(size) if s != slot
                           and after[s * DESC_SIZE:(s + 1) * DESC_SIZE] != before[s * DESC_SIZE:(s + 1) * DESC_SIZE]]
                if touched:
                    bad07.append(f"lap {lap}: used descriptors at slots {touched[:4]} rewritten")
                mine = PackedDescriptor.unpack(after, slot * DESC_SIZE)
                # Taking the slot shows as a used descriptor written over it (an interrupt alone is only spurious).
                if mine.flags != flags or r.status() & NEEDS_RESET:
                    bad06.append(f"lap {lap}, slot {slot} ({name}, flags {flags:#06x}, driver wrap {wrap}): flags now "
                                 f"{mine.flags:#06x}, interrupt {gone}, status {r.status():#x}")
            tx.write_desc(slot, PackedDescriptor(0, 0, 0, used_bits(wrap ^ 1)))  # back to "not available"
            tx.free_buffer(buf)
            # The slot is then made available for real, and must be taken.
            tx.add([hdr + make_frame(lap)], [])
            r.kick_packed(TX)
            _, why = _collect(r, TX, 1)
            bad06 += why
        verdict.check("PACKED-DEV-06", not bad06, "; ".join(bad06[:4]))
        verdict.check("PACKED-DEV-07", not bad07, "; ".join(bad07[:4]))


# --- hostile lists ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    name: str
    rule: str
    indirect: bool

    def plant(self, r: Rig, ring: DriverPackedQueue) -> None:
        """Write the list at next_avail, head last, exactly as built."""
        h = ring.alloc_buffer(r.tx_header())
        f = ring.alloc_buffer(make_frame(1))
        w = avail_bits(ring.avail_wrap)
        hl = r.hdr_len

        def d(addr: int, length: int, flags: int, ident: int = 0, wrap: int | None = None) -> PackedDescriptor:
            return PackedDescriptor(addr, length, ident, flags | (w if wrap is None else avail_bits(wrap)))

        def t(addr: int, length: int, flags: int) -> PackedDescriptor:
            return PackedDescriptor(addr, length, 0, flags)  # indirect entries carry no AVAIL/USED

        if self.name == "indirect inside an indirect table":
            inner = ring.write_indirect([t(h, hl, 0), t(f, 60, 0)])
            outer = ring.write_indirect([t(inner, 2 * DESC_SIZE, INDIRECT)])
            descs = [d(outer, DESC_SIZE, INDIRECT)]
        elif self.name == "INDIRECT in a NEXT list":
            table = ring.write_indirect([t(f, 60, 0)])
            descs = [d(h, hl, NEXT), d(table, DESC_SIZE, INDIRECT)]
        elif self.name == "indirect table length not a multiple of 16":
            table = ring.write_indirect([t(h, hl, 0), t(f, 60, 0)])
            descs = [d(table, DESC_SIZE + 8, INDIRECT)]
        elif self.name == "readable after writable":
            descs = [d(h, hl, NEXT | WRITE), d(f, 60, 0)]
        elif self.name == "list longer than the ring":
            descs = [d(h, hl, NEXT)] + [d(f, 4, NEXT) for _ in range(ring.size - 1)] + [d(f, 4, 0)]
            descs = descs[:ring.size]  # fills the ring; the last one still says NEXT back onto the head
            descs[-1] = d(f, 4, NEXT)
        elif self.name == "tail not made available":
            descs = [d(h, hl, NEXT), d(f, 60, 0, wrap=ring.avail_wrap ^ 1)]
        else:
            raise ValueError(self.name)
        ring.expose_raw(descs, descs[-1].id)


HOSTILE = [
    Hostile("indirect inside an indirect table", "PACKED-DRV-13", True),
    Hostile("INDIRECT in a NEXT list", "PACKED-DRV-15", True),
    Hostile("indirect table length not a multiple of 16", "PACKED-DRV-14", True),
    Hostile("readable after writable", "PACKED-DRV-08", False),
    Hostile("list longer than the ring", "PACKED-DRV-07", False),
    Hostile("tail not made available", "PACKED-DRV-11", False),
]
HOSTILE_IDS = ("STATUS-DEV-02", "STATUS-DEV-03")


@pytest.mark.req(*HOSTILE_IDS)
@pytest.mark.parametrize("case", HOSTILE, ids=[h.rule + "-" + h.name.replace(" ", "-") for h in HOSTILE])
def test_hostile_packed_list(bench: Bench, verdict: Verdict, case: Hostile) -> None:
    """A list that breaks a PACKED-DRV rule, on a ring of 9 after one lap: DEVICE_NEEDS_RESET, a configuration
    change notification, no crash, nothing used; after a reset the device carries a frame again."""
    with bench.rig() as r:
        if not _offered(r, verdict, HOSTILE_IDS):
            return
        features = _features(r, indirect=case.indirect)
        if features is None:
            for rid in HOSTILE_IDS:
                verdict.not_offered(rid, f"{case.name}: VIRTIO_F_INDIRECT_DESC not offered")
            return
        r.up_packed(features, queue_size=9)
        tx = r.packed[TX]
        for k in range(9):  # one lap first: the hostile list sits where the wrap counter is 0
            tx.add([r.tx_header() + make_frame(k)], [])
            r.kick_packed(TX)
            _collect(r, TX, 1)
        d = r.drv
        cfg_fd = d.irq_fds["config"]
        d.transport.read_isr()
        wait_fd(cfg_fd, 0)
        before = len(r.driver_errors() or [])
        case.plant(r, tx)
        what = f"{case.name} (breaks {case.rule})"
        kick = hostile_kick(lambda: r.kick_packed(TX), cfg_fd, r.event_wait, r.explain())
        status = r.status()
        errors = (r.driver_errors() or [])[before:]
        named = any(case.rule in e for e in errors)
        flags = _raw_flags(tx, tx.next_used)
        verdict.check("STATUS-DEV-02", kick.crash is None and bool(status & NEEDS_RESET)
                      and not is_used(flags, tx.used_wrap) and not r.crashes(),
                      f"{what}: {kick.doorbell}, status {status:#x} "
                      f"(DEVICE_NEEDS_RESET expected), slot {tx.next_used} flags {flags:#06x}, "
                      f"device says: {'; '.join(errors) or 'nothing'}{'' if named else ' (rule not named)'}")
        verdict.check("STATUS-DEV-03", kick.notified, f"{what}: status {status:#x}, config vector {kick.notification}")
        # Left by reset: a fresh packed bring-up carries a frame.
        r.up_packed(features, queue_size=9)
        r.packed[TX].add([r.tx_header() + make_frame(2)], [])
        r.kick_packed(TX)
        used, why = _collect(r, TX, 1)
        verdict.check("STATUS-DEV-02", len(used) == 1 and not r.status() & NEEDS_RESET,
                      f"{what}: after reset {len(used)} of 1 frame used, status {r.status():#x}; {'; '.join(why)}")


__all__: list[str] = []
