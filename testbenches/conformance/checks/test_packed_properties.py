"""Packed virtqueue properties (hypothesis): a thousand random packed workloads through driver and device, and the
DESC event threshold walked across the ring's end.

Workloads draw the ring size (1..32768, mostly not powers of two), IN_ORDER, INDIRECT_DESC, EVENT_IDX and the
driver event suppression mode, and per frame its length and how transmit and receive lists are cut into
descriptors (direct lists carry stray ids in their non-last descriptors: only the last one's id is the Buffer ID).
Every frame must come back intact and in order, every buffer with its own Buffer ID and length, notifications as
the suppression mode says, and (where the target reports device DMA) no descriptor written after its USED flag.

Every check first asks whether the target offers VIRTIO_F_RING_PACKED; where it does not, its ids read *not
offered*. Derandomized, so CI sees the same examples every run; a failure is hypothesis's shrunk workload.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from backend.virtio.features import DeviceStatus, F, has
from backend.virtio.net_hdr import NetHdr
from backend.virtio.packed_ring import EventFlags, advance, packed_need_event
from testbenches.conformance.falsify import falsified
from testbenches.conformance.harness import RING_MEM_SIZE, RX, TX, Bench, Rig, drain, fitting_round, make_frame
from testbenches.conformance.packed_lists import IdPool, Posted, post, rewrites_after_used, wait_used
from testbenches.conformance.plugin import Verdict

MIN_WORKLOADS = 1000
WORKLOADS_PER_EXAMPLE = 4
#: Longest wait for buffers that must come back used, and for an interrupt that must come.
USED_WAIT = 1.0
MIN_FRAME, MAX_FRAME = 14, 1514
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
#: What a suppression mode promises for a round's transmit completions, and the row it is judged under (the
#: layout-independent rows, judged here with packed-ring evidence).
SUPPRESSION_ROW = {EventFlags.DISABLE: "SPLIT-DEV-10", EventFlags.ENABLE: "SPLIT-DEV-11",
                   EventFlags.DESC: "SPLIT-DEV-13"}


def _offered(r: Rig, verdict: Verdict, ids: tuple[str, ...]) -> bool:
    if has(r.offered, F.RING_PACKED):
        return True
    for rid in ids:
        if not verdict.recorded(rid):
            verdict.not_offered(rid, f"VIRTIO_F_RING_PACKED (bit 34) not offered (device features {r.offered:#x})")
    return False


def _dead(r: Rig) -> str:
    status = r.status()
    if status & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED):
        return f"device_status {status:#x} after valid lists; device says: {r.device_errors()}"
    return ""


def _cut(total: int, pieces: int, fractions: list[float]) -> list[int]:
    """``total`` bytes in ``pieces`` non-empty lengths at the drawn fractions."""
    pieces = max(1, min(pieces, total))
    offs = sorted({min(total - 1, max(1, int(f * total))) for f in fractions[:pieces - 1]}) if pieces > 1 else []
    edges = [0, *offs, total]
    return [b - a for a, b in itertools.pairwise(edges)]


# --- workloads ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FramePlan:
    length: int
    tx_pieces: int
    rx_pieces: int
    tx_indirect: bool
    rx_indirect: bool
    fractions: tuple[float, ...]


@dataclass(frozen=True)
class PackedWorkload:
    size: int
    in_order: bool
    indirect: bool
    event_idx: bool
    mode: EventFlags
    frames: tuple[FramePlan, ...]

    def __str__(self) -> str:
        opts = [n for n, on in (("IN_ORDER", self.in_order), ("INDIRECT", self.indirect),
                                ("EVENT_IDX", self.event_idx)) if on]
        return (f"ring of {self.size} ({'+'.join(opts) or 'no ring options'}, driver event {self.mode.name}), "
                f"{len(self.frames)} frames {[(f.length, f.tx_pieces, f.rx_pieces) for f in self.frames]}")


@st.composite
def packed_workloads(draw: st.DrawFn, max_size: int, can: dict[str, bool]) -> PackedWorkload:
    size = draw(st.one_of(st.integers(1, 40), st.sampled_from([3, 5, 7, 100, 255, 257, 1000, 4097, 32767, 32768]),
                          st.integers(1, 32768)), label="size")
    size = min(size, max_size)
    in_order = can["in_order"] and draw(st.booleans(), label="in_order")
    indirect = can["indirect"] and draw(st.booleans(), label="indirect")
    event_idx = can["event_idx"] and draw(st.booleans(), label="event_idx")
    modes = [EventFlags.ENABLE, EventFlags.DISABLE] + ([EventFlags.DESC] if event_idx else [])
    mode = draw(st.sampled_from(modes), label="mode")
    pieces = st.integers(1, min(size, 4))
    plan = st.builds(FramePlan, st.integers(MIN_FRAME, MAX_FRAME), pieces, pieces,
                     st.booleans() if indirect else st.just(False), st.booleans() if indirect else st.just(False),
                     st.tuples(*(st.floats(0.01, 0.99) for _ in range(3))))
    frames = draw(st.lists(plan, min_size=1, max_size=min(12, 3 * size + 2)), label="frames")
    return PackedWorkload(size, in_order, indirect, event_idx, mode, tuple(frames))


def _run_workload(r: Rig, w: PackedWorkload, seq0: int, notifications: bool) -> tuple[str, str]:
    """One workload; returns (the row a problem breaks, the problem), or ('', '') when all went well. The
    interrupts are judged against the suppression mode with ``notifications`` (else the mode is only in force)."""
    feats = r.features_for(event_idx=w.event_idx, indirect=w.indirect, in_order=w.in_order,
                           layout="packed")
    if feats is None:
        return "PACKED-DEV-02", f"features for {w} not available"
    r.up_packed(feats, queue_size=w.size)
    tx, rx = r.packed[TX], r.packed[RX]
    for ring in (tx, rx):
        ring.auto_used_event = False  # the workload's own suppression mode stays in force
    rx.set_driver_event(EventFlags.ENABLE)
    hl, hdr = r.hdr_len, r.tx_header()
    frames = [make_frame(seq0 + i, f.length) for i, f in enumerate(w.frames)]
    watch_rings = {RX: rx, TX: tx}
    ids = {RX: IdPool(w.size), TX: IdPool(w.size)}
    needs = [(1 if f.tx_indirect else f.tx_pieces, 1 if f.rx_indirect else f.rx_pieces) for f in w.frames]
    i = 0
    while i < len(frames):
        batch = fitting_round(needs, i, tx.num_free, rx.num_free)
        if not batch:
            return "PACKED-DEV-02", f"frame {i} does not fit the ring of {w.size}"
        # Transmit completions notify as the mode says: DESC names the first used slot this round writes.
        start = (tx.next_used, tx.used_wrap)
        tx.set_driver_event(w.mode, *(start if w.mode == EventFlags.DESC else (0, 0)))
        drain(r.irq_fd(TX))
        rx_posted: list[Posted] = []
        tx_posted: dict[int, Posted] = {}
        for k in batch:
            f = w.frames[k]
            total = hl + len(frames[k]) + int(64 * f.fractions[0])  # room for the packet, and some slack
            p = post(rx, ids[RX].take(), [], _cut(total, f.rx_pieces, list(f.fractions)), indirect=f.rx_indirect,
                     other_ids=[(k * 7 + j) & 0xFFFF for j in range(f.rx_pieces)])
            rx_posted.append(p)
        r.kick_packed(RX)
        for k in batch:
            f = w.frames[k]
            data = hdr + frames[k]
            parts = [data[a:a + n] for a, n in _spans(_cut(len(data), f.tx_pieces, list(f.fractions)))]
            p = post(tx, ids[TX].take(), parts, [], indirect=f.tx_indirect,
                     other_ids=[(0xFFFF - k - j) & 0xFFFF for j in range(f.tx_pieces)])
            tx_posted[p.buffer_id] = p
        with r.dma_watch() as watch:
            r.kick_packed(TX)
            sent, irqs, why = wait_used(r, TX, len(batch), USED_WAIT)
            got, _, why_rx = wait_used(r, RX, len(batch), USED_WAIT)
        for q, used in ((TX, sent), (RX, got)):
            for u in used:
                ids[q].give(u.head)
        if why or why_rx:
            return "PACKED-DEV-02", f"{why or why_rx}{'; ' + _dead(r) if _dead(r) else ''}"
        rewritten = rewrites_after_used(watch.accesses, watch_rings)
        if rewritten:
            return "PACKED-DEV-07", "; ".join(rewritten[:3])
        if sorted(u.head for u in sent) != sorted(tx_posted) or any(u.len for u in sent):
            return "PACKED-DEV-02", (f"transmit buffers {sorted(tx_posted)} made available, used came back as "
                                     f"{[(u.head, u.len) for u in sent]} (each id once, len 0)")
        order = [u.head for u in got]
        if order != [p.buffer_id for p in rx_posted]:
            return "PACKED-DEV-01", f"receive buffers used in the order {order}, made available as " \
                                    f"{[p.buffer_id for p in rx_posted]}"
        for j, (u, p) in enumerate(zip(got, rx_posted, strict=True)):
            k = batch[j]
            want = hl + len(frames[k])
            data = p.written(rx, u.len)
            if u.len != want:
                return "PACKED-DEV-02", f"receive buffer {u.head} (frame {k}): used len {u.len}, expected {want}"
            if data[hl:] != frames[k] or NetHdr.unpack(data[:hl].ljust(12, b"\0")).num_buffers != 1:
                pieces = w.frames[k].rx_pieces + w.frames[k].tx_pieces
                return ("PACKED-DEV-08" if pieces > 2 else "PACKED-DEV-01",
                        f"frame {k} ({len(frames[k])} bytes) arrived altered (header {data[:hl].hex()})")
        promised = (w.mode != EventFlags.DISABLE if w.mode != EventFlags.DESC
                    else packed_need_event(*start, tx.next_used, tx.used_wrap,
                                           sum(p.slots for p in tx_posted.values()), w.size))
        if notifications:
            irqs = r.notified(TX, irqs, promised, USED_WAIT)
        if notifications and promised != bool(irqs):
            return SUPPRESSION_ROW[w.mode], (f"driver event {w.mode.name} at {start[0]}/wrap {start[1]}: "
                                             f"{irqs} interrupt(s) for {len(batch)} transmit completions")
        i = batch[-1] + 1
    dead = _dead(r)
    return ("PACKED-DEV-02", dead) if dead else ("", "")


def _spans(lengths: list[int]) -> list[tuple[int, int]]:
    out, at = [], 0
    for n in lengths:
        out.append((at, n))
        at += n
    return out


LIST_IDS = ("PACKED-DEV-01", "PACKED-DEV-02", "PACKED-DEV-07", "PACKED-DEV-08")
WORKLOAD_IDS = (*LIST_IDS, "SPLIT-DEV-10", "SPLIT-DEV-11", "SPLIT-DEV-13")


def _workload_property(bench: Bench, verdict: Verdict, ids: tuple[str, ...], examples: int, per_example: int,
                       minimum: int, *, notifications: bool, shrink: bool = True) -> None:
    """Run ``examples`` x ``per_example`` random workloads on one device (brought up afresh for each); the first
    failing one (shrunk with ``shrink``) fails the row it breaks. Rows the target gives no opportunity are reported
    so."""
    with bench.rig(bench.variant(qsize=32768, wire="loopback"), mem_size=RING_MEM_SIZE) as r:
        if not _offered(r, verdict, ids):
            return
        if not r.looped(verdict, *ids):
            return
        can = {"in_order": r.features_for(in_order=True, layout="packed") is not None,
               "indirect": r.features_for(indirect=True, layout="packed") is not None,
               "event_idx": r.features_for(event_idx=True, layout="packed") is not None}
        if not can["event_idx"] and "SPLIT-DEV-13" in ids:
            verdict.not_offered("SPLIT-DEV-13", "VIRTIO_F_EVENT_IDX not offered with RING_PACKED")
        watch = r.dma_watch()
        if not watch.available:
            verdict.not_applicable("PACKED-DEV-07", f"device DMA is not observable: {watch.why}")
        done = {"workloads": 0, "frames": 0}
        failed: dict[str, str] = {}

        phases = tuple(Phase) if shrink else (Phase.explicit, Phase.reuse, Phase.generate)

        @settings(max_examples=examples, phases=phases, **SETTINGS)  # type: ignore[arg-type]
        @given(ws=st.lists(packed_workloads(r.max_queue_size, can), min_size=per_example, max_size=per_example))
        def run(ws: list[PackedWorkload]) -> None:
            for w in ws:
                rid, problem = _run_workload(r, w, done["frames"], notifications)
                if problem:
                    failed.clear()
                    failed[rid] = f"{problem}\nworkload: {w}"  # the last one hypothesis saw is the shrunk one
                assert not problem, problem
                done["workloads"] += 1
                done["frames"] += len(w.frames)

        _judge(verdict, ids, run, failed, done, minimum)


def _judge(verdict: Verdict, ids: tuple[str, ...], run: Callable[[], None], failed: dict[str, str],
           done: dict[str, int], minimum: int) -> None:
    _, note = falsified(run)
    if failed:
        rid, why = next(iter(failed.items()))
        verdict.check(rid, False, why + note)
        return  # the other rows were not proven by a run that stopped early
    enough = done["workloads"] >= minimum
    for rid in ids:
        if not verdict.recorded(rid):
            verdict.check(rid, enough, f"{done['workloads']} random packed workloads ({done['frames']} frames) came "
                                       f"back intact, in order, with their ids and lengths (at least {minimum} "
                                       "wanted)")


@pytest.mark.req(*LIST_IDS)
def test_random_packed_lists(bench: Bench, verdict: Verdict) -> None:
    """A hundred random packed workloads: lists cut at random (stray ids in non-last descriptors, indirect tables),
    rings of random size, IN_ORDER on or off. The first failing workload is the evidence, unshrunk: this quick
    property is the one the broken-model runs ask, the thousand-workload one below shrinks."""
    _workload_property(bench, verdict, LIST_IDS, 25, WORKLOADS_PER_EXAMPLE, 100, notifications=False, shrink=False)


@pytest.mark.req(*WORKLOAD_IDS)
def test_packed_thousand_workloads(bench: Bench, verdict: Verdict) -> None:
    """At least a thousand random packed workloads (sizes 1..32768, wrap counter flips, indirect, IN_ORDER, event
    suppression): every packet delivered intact and in order."""
    _workload_property(bench, verdict, WORKLOAD_IDS, MIN_WORKLOADS // WORKLOADS_PER_EXAMPLE, WORKLOADS_PER_EXAMPLE,
                       MIN_WORKLOADS, notifications=True)


# --- DESC events across the ring's end ------------------------------------------------------------------------

DESC_IDS = ("SPLIT-DEV-13", "SPLIT-DEV-14")
#: Ring of 7, three buffers per round: the rounds start at every slot, so batches cross the ring's end at every
#: offset; five probes per start (each slot the round writes, the next slot, the middle slot a lap away).
DESC_SIZE_, DESC_BATCH, DESC_ROUNDS = 7, 3, 35


@pytest.mark.req(*DESC_IDS)
def test_desc_event_across_the_ring_end(bench: Bench, verdict: Verdict) -> None:
    """RING_EVENT_FLAGS_DESC with EVENT_IDX: desc_event_off *and* desc_event_wrap name the slot; a used buffer
    notification comes exactly when the used descriptors just written cover it, also when they wrap."""
    with bench.rig() as r:
        if not _offered(r, verdict, DESC_IDS):
            return
        feats = r.features_for(event_idx=True, indirect=False, layout="packed")
        if feats is None:
            for rid in DESC_IDS:
                verdict.not_offered(rid, "VIRTIO_F_EVENT_IDX not offered with RING_PACKED")
            return
        r.up_packed(feats, queue_size=DESC_SIZE_)
        tx = r.packed[TX]
        tx.auto_used_event = False
        pool = IdPool(DESC_SIZE_)
        bad: dict[str, list[str]] = {rid: [] for rid in DESC_IDS}
        seen = {rid: 0 for rid in DESC_IDS}
        for k in range(DESC_ROUNDS):
            start = (tx.next_used, tx.used_wrap)
            probe = k % 5
            if probe < DESC_BATCH:
                event = advance(*start, probe, DESC_SIZE_)
            elif probe == DESC_BATCH:
                event = advance(*start, DESC_BATCH, DESC_SIZE_)
            else:
                off, wrap = advance(*start, 1, DESC_SIZE_)
                event = (off, wrap ^ 1)
            tx.set_driver_event(EventFlags.DESC, *event)
            drain(r.irq_fd(TX))
            for j in range(DESC_BATCH):
                post(tx, pool.take(), [r.tx_header() + make_frame(k * DESC_BATCH + j)], [])
            r.kick_packed(TX)
            used, irqs, why = wait_used(r, TX, DESC_BATCH, USED_WAIT)
            for u in used:
                pool.give(u.head)
            want = packed_need_event(*event, tx.next_used, tx.used_wrap, DESC_BATCH, DESC_SIZE_)
            irqs = r.notified(TX, irqs, want, USED_WAIT)
            rid = "SPLIT-DEV-13" if want else "SPLIT-DEV-14"
            seen[rid] += 1
            what = (f"packed ring of {DESC_SIZE_}: {DESC_BATCH} buffers used from {start[0]}/wrap {start[1]}, driver "
                    f"event DESC at {event[0]}/wrap {event[1]}: {irqs} interrupt(s)")
            if why:
                bad[rid].append(f"{what}; {why}")
                break
            if want != bool(irqs):
                bad[rid].append(what)
        for rid in DESC_IDS:
            verdict.check(rid, not bad[rid], "; ".join(bad[rid][:3]) or f"{seen[rid]} rounds as desc_event_off/wrap "
                                                                        "say")
