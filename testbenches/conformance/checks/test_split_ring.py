"""Split virtqueue, device side (2.7): descriptor handling, DMA discipline, used ring, notification suppression.

SPLIT-DEV-01 (the frame does not depend on how the driver cut it into descriptors) holds for either ring layout
and runs on both (``ring_layout``; on packed rings a layout with direct descriptors before an indirect table is
posted as one indirect list, PACKED-DRV-15); the rest is about the split ring's own parts.
"""

from __future__ import annotations

import contextlib
import struct

import pytest

from backend.virtio.features import DeviceStatus, F, has
from backend.virtio.net_hdr import NetHdr
from backend.virtio.split_ring import (
    DESC,
    DESC_SIZE,
    U16,
    USED_ELEM,
    USED_ELEM_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    DescFlags,
    SplitLayout,
    vring_need_event,
)
from testbenches.conformance.chains import (
    DmaWatch,
    Posted,
    add_chain,
    judge_exposures,
    overlaps,
    poison,
    split_at,
    uncovered,
    used_entry,
    written_bytes,
)
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, Rig, make_frame
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout

#: Buffers driven through one queue by the wrap check: past 2^16 with room to spare.
WRAP_TOTAL = 70_000
WRAP_BUF = 512



def _post_rx(rig: Rig, n: int, size: int | None = None, *, poisoned: bool = True) -> dict[int, Posted]:
    pending: dict[int, Posted] = {}
    for _ in range(n):
        p = rig.add_chain(rig.RX, [], [size or rig.rx_buf_size])
        if poisoned:
            poison(rig.mem, p)
        pending[p.head] = p
    rig.publish(rig.RX)
    return pending


def _alive(rig: Rig, verdict: Verdict, rid: str, what: str) -> bool:
    st = rig.status()
    return verdict.check(rid, not st & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED),
                         f"{what}: device_status {st:#x} (DEVICE_NEEDS_RESET) after a valid chain; "
                         f"device says: {rig.device_errors() or 'nothing'}")


# --- SPLIT-DEV-01 ---------------------------------------------------------------------------------


TX_SPLITS: list[tuple[str, list[int], int | None]] = [
    # (name, cut offsets into header+frame, direct descriptors before an indirect table or None)
    ("header and frame in one descriptor", [], None),
    ("header alone, frame in one", [12], None),
    ("header cut in two", [5, 12], None),
    ("header shares the first frame bytes", [20], None),
    ("frame in 1-byte pieces at its start", [12, 13, 14, 15, 16, 17, 30], None),
    ("zero-length pieces between", [0, 12, 12, 40, 40], None),
    ("all in an indirect table", [3, 12, 50], 0),
    ("two direct then an indirect table", [3, 12, 50], 2),
]
RX_SPLITS: list[tuple[str, list[int], int | None]] = [
    ("one writable buffer", [], None),
    ("header buffer then data buffer", [12], None),
    ("header split over two buffers", [7], None),
    ("many small buffers", [1, 2, 3, 12, 20, 64, 65, 200], None),
    ("indirect writable table", [12, 100], 0),
    ("direct then indirect writable", [4, 12, 100], 1),
]


@pytest.mark.req("SPLIT-DEV-01")
def test_descriptor_layout_does_not_change_the_frame(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if not rig.offers(ring_layout, verdict, "SPLIT-DEV-01"):
            return
        feats = rig.features_for(indirect=True, layout=ring_layout) or rig.features_for(indirect=False,
                                                                                        layout=ring_layout)
        assert feats is not None
        rig.bring_up(feats)
        if not rig.looped(verdict, "SPLIT-DEV-01"):
            return
        indirect_ok = has(rig.features, F.INDIRECT_DESC)
        hdr = rig.tx_header()
        frame = make_frame(0x1234, 300)
        # Transmit: the same frame under every descriptor layout; each must come back identical.
        for name, cuts, direct in TX_SPLITS:
            if direct is not None and not indirect_ok:
                continue
            pending = _post_rx(rig, 1)
            t = rig.add_chain(rig.TX, split_at(hdr + frame, cuts), [], direct=direct)
            rig.publish(rig.TX)
            got = rig.complete(rig.RX, pending, 1)
            rig.complete(rig.TX, {t.head: t}, 1)
            rig.release(t)
            data = written_bytes(rig.mem, got[0][0], got[0][1])[rig.hdr_len:] if got else b""
            verdict.check("SPLIT-DEV-01", data == frame,
                          f"TX '{name}' ({len(t.readable)} readable descriptors): received "
                          f"{len(data)} bytes, {'equal' if data == frame else 'different'} vs the {len(frame)} sent"
                          f"{'' if got else ' (nothing received)'}")
        # Receive: the same frame into differently divided writable chains.
        for name, cuts, direct in RX_SPLITS:
            if direct is not None and not indirect_ok:
                continue
            total = rig.hdr_len + len(frame)
            lens = [len(p) for p in split_at(bytes(total + 16), cuts)]
            p = rig.add_chain(rig.RX, [], lens, direct=direct)
            poison(rig.mem, p)
            rig.publish(rig.RX)
            t = rig.add_chain(rig.TX, [hdr, frame], [])
            rig.publish(rig.TX)
            got = rig.complete(rig.RX, {p.head: p}, 1)
            rig.complete(rig.TX, {t.head: t}, 1)
            data = written_bytes(rig.mem, p, got[0][1])[rig.hdr_len:] if got else b""
            rig.release(p)
            verdict.check("SPLIT-DEV-01", data == frame and got[0][1] == total,
                          f"RX '{name}' (writable lengths {lens}): used len {got[0][1] if got else None} "
                          f"(expected {total}), data {'equal' if data == frame else 'different'}")
        _alive(rig, verdict, "SPLIT-DEV-01", "descriptor layouts")


# --- SPLIT-DEV-03/04/06/16: what the device writes, and when ------------------------------------------


@pytest.mark.req("SPLIT-DEV-03", "SPLIT-DEV-04", "SPLIT-DEV-06", "SPLIT-DEV-16")
def test_device_writes_only_writable_buffers_and_used_ring(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(indirect=True, event_idx=False) or rig.features_for(indirect=False)
        assert feats is not None
        rig.bring_up(feats, 64)
        ids = ("SPLIT-DEV-03", "SPLIT-DEV-04", "SPLIT-DEV-06", "SPLIT-DEV-16")
        if not rig.looped(verdict, *ids):
            return
        indirect_ok = has(rig.features, F.INDIRECT_DESC)
        hdr = rig.tx_header()
        frames = [make_frame(i, 60 + 97 * i) for i in range(12)]
        rx_pending: dict[int, Posted] = {}
        tx_pending: dict[int, Posted] = {}
        rx_all: list[Posted] = []
        tx_all: list[Posted] = []
        for i, f in enumerate(frames):
            total = rig.hdr_len + len(f)
            layouts = [([total + 40], None), ([5, total], None), ([3, 9, 30, total], 0 if indirect_ok else None),
                       ([2, 20, total], 1 if indirect_ok else None)]
            lens, direct = layouts[i % len(layouts)]
            p = add_chain(rig.rx, [], lens, direct=direct, token=i)
            poison(rig.mem, p)
            rx_pending[p.head] = p
            rx_all.append(p)
        rig.publish(rig.RX)
        with rig.dma_watch({rig.RX: rig.rx, rig.TX: rig.tx}) as watch:
            for i, f in enumerate(frames):
                cuts = [[], [12], [4, 12, 30], [12, 13]][i % 4]
                direct = [None, None, 0, 1][i % 4] if indirect_ok else None
                t = add_chain(rig.tx, split_at(hdr + f, cuts), [], direct=direct, token=i)
                tx_pending[t.head] = t
                tx_all.append(t)
                if i % 3 == 2 or i == len(frames) - 1:
                    # Snapshot what the device must leave alone, then let it run.
                    guarded = [(a, n) for p in rx_all + tx_all for a, n in p.tables + p.readable]
                    before = [rig.mem.read(a, n) for a, n in guarded]
                    rig.publish(rig.TX)
                    done_rx, _ = rig.wait_used_idx(rig.RX, len(tx_all))
                    done_tx, _ = rig.wait_used_idx(rig.TX, len(tx_all))
                    changed = [(a, n) for (a, n), b in zip(guarded, before, strict=True) if rig.mem.read(a, n) != b]
                    tables = {a for p in rx_all + tx_all for a, _ in p.tables}
                    verdict.check("SPLIT-DEV-06", not [c for c in changed if c[0] in tables],
                                  "descriptor table entries changed by the device: " +
                                  ", ".join(f"{a:#x}+{n}" for a, n in changed if a in tables))
                    verdict.check("SPLIT-DEV-03", not [c for c in changed if c[0] not in tables],
                                  "device-readable buffers changed by the device: " +
                                  ", ".join(f"{a:#x}+{n}" for a, n in changed if a not in tables))
                    verdict.check("SPLIT-DEV-16", done_rx and done_tx,
                                  f"used idx rx={rig.rx.used_idx()} tx={rig.tx.used_idx()} after {len(tx_all)} "
                                  "frames looped back")
        rx_got = rig.complete(rig.RX, rx_pending, len(frames))
        tx_got = rig.complete(rig.TX, tx_pending, len(frames))
        # SPLIT-DEV-16 (data): used len and the bytes from the first writable buffer on, poison pre-filled.
        for p, n in rx_got:
            i = int(str(p.token))
            data = written_bytes(rig.mem, p, n)
            want = rig.hdr_len + len(frames[i])
            verdict.check("SPLIT-DEV-16", n == want and data[rig.hdr_len:] == frames[i],
                          f"RX chain {p.head} (frame {i}, writable {[ln for _, ln in p.writable]}): used len {n}, "
                          f"expected {want}; data {'intact' if data[rig.hdr_len:] == frames[i] else 'differs'}")
        verdict.check("SPLIT-DEV-16", len(rx_got) == len(frames) and len(tx_got) == len(frames),
                      f"{len(rx_got)} RX / {len(tx_got)} TX used entries of {len(frames)}")
        # A transmit chain has no device-writable buffer: nothing can have been written, so used len is 0.
        tx_lens = {p.head: n for p, n in tx_got if n}
        verdict.check("SPLIT-DEV-16", not tx_lens,
                      f"TX chains (device-readable only) returned with used len {tx_lens or 0} (expected 0)")
        for p in rx_all + tx_all:
            rig.release(p)
        if not watch.available:
            verdict.not_applicable("SPLIT-DEV-04", f"device reads are not observable: {watch.why}")
            return
        _judge_dma(verdict, rig, watch, rx_all, tx_all, rx_got)


def _judge_dma(verdict: Verdict, rig: Rig, watch: DmaWatch, rx_all: list[Posted], tx_all: list[Posted],
               rx_got: list[tuple[Posted, int]]) -> None:
    rings = {rig.RX: rig.rx, rig.TX: rig.tx}
    used_areas = [(r.used_addr, r.layout.used_bytes) for r in rings.values()]
    writable = [w for p in rx_all + tx_all for w in p.writable]
    readable = [w for p in rx_all + tx_all for w in p.readable]
    tables = [w for p in rx_all + tx_all for w in p.tables]
    desc_areas = [(r.desc_addr, r.layout.desc_bytes) for r in rings.values()]
    bad03, bad06, stray = [], [], []
    for a in watch.writes():
        if any(overlaps(a.iova, a.size, b, n) for b, n in tables + desc_areas):
            bad06.append(a)
        if any(overlaps(a.iova, a.size, b, n) for b, n in readable):
            bad03.append(a)
        if not any(b <= a.iova and a.iova + a.size <= b + n for b, n in writable + used_areas):
            stray.append(a)
    verdict.check("SPLIT-DEV-06", not bad06, "device DMA writes into descriptor tables: " +
                  ", ".join(f"{a.iova:#x}+{a.size}" for a in bad06[:8]))
    verdict.check("SPLIT-DEV-03", not bad03,
                  "device DMA writes into device-readable buffers: " +
                  ", ".join(f"{a.iova:#x}+{a.size}" for a in bad03[:8]) +
                  f" ({len(stray)} write(s) in all landed outside writable buffers and the used ring)")
    bad04 = [a for a in watch.reads() if any(overlaps(a.iova, a.size, b, n) for b, n in writable)]
    verdict.check("SPLIT-DEV-04", not bad04, "device DMA reads of device-writable buffers: " +
                  ", ".join(f"{a.iova:#x}+{a.size}" for a in bad04[:8]))
    # SPLIT-DEV-16 (ordering): the len bytes of each RX chain were written before the idx write exposing it.
    expose: dict[int, int] = {}
    prev = 0
    for w in (w for w in watch.idx_writes if w.queue == rig.RX):
        for k in range(prev, prev + ((w.value - prev) & 0xFFFF)):
            expose.setdefault(k, w.seq)
        prev = w.value
    writes = watch.writes()
    for k, (p, n) in enumerate(rx_got):
        need: list[tuple[int, int]] = []
        left = n
        for gpa, ln in p.writable:
            if left <= 0:
                break
            need.append((gpa, min(ln, left)))
            left -= min(ln, left)
        seq = expose.get(k, len(watch.accesses))
        gaps = uncovered(need, [(a.iova, a.size) for a in writes if a.seq < seq])
        verdict.check("SPLIT-DEV-16", not gaps,
                      f"RX chain {p.head}: used len {n} but bytes {[(hex(a), ln) for a, ln in gaps]} were not "
                      "written before used idx exposed it")


# --- SPLIT-DEV-07 / 08: indirect descriptors --------------------------------------------------------


@pytest.mark.req("SPLIT-DEV-07", "SPLIT-DEV-08")
def test_indirect_write_flag_and_mixed_chains(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if rig.up_offered(verdict, ("SPLIT-DEV-07", "SPLIT-DEV-08"), rig.features_for(indirect=True),
                          "VIRTIO_F_INDIRECT_DESC not offered", queue_size=32) is None:
            return
        hdr = rig.tx_header()
        cases: list[tuple[str, str, int, int, list[int], list[int]]] = [
            # (id, name, tx direct, rx direct, tx cuts, rx lengths) with WRITE on the pointer for -07
            ("SPLIT-DEV-07", "WRITE on the TX indirect pointer", 0, -1, [12], []),
            ("SPLIT-DEV-07", "WRITE on the RX indirect pointer", -1, 0, [12], [12, 1600]),
            ("SPLIT-DEV-08", "1 direct + indirect (TX)", 1, -1, [12, 100], []),
            ("SPLIT-DEV-08", "3 direct + indirect (TX)", 3, -1, [6, 12, 50, 100], []),
            ("SPLIT-DEV-08", "0 direct + indirect (RX)", -1, 0, [12], [600, 1000]),
            ("SPLIT-DEV-08", "2 direct + indirect (RX)", -1, 2, [12], [6, 6, 100, 1500]),
        ]
        for seq, (rid, name, tx_direct, rx_direct, cuts, rx_lens) in enumerate(cases):
            frame = make_frame(seq, 400 + 50 * seq)
            flags = DescFlags.WRITE if rid == "SPLIT-DEV-07" else 0
            lens = rx_lens or [rig.rx_buf_size]
            r = add_chain(rig.rx, [], lens, direct=None if rx_direct < 0 else rx_direct,
                          pointer_flags=flags if rx_direct >= 0 else 0)
            poison(rig.mem, r)
            rig.publish(rig.RX)
            table_before = [rig.mem.read(a, n) for a, n in r.tables]
            t = add_chain(rig.tx, split_at(hdr + frame, cuts), [], direct=None if tx_direct < 0 else tx_direct,
                          pointer_flags=flags if tx_direct >= 0 else 0)
            rig.publish(rig.TX)
            got = rig.complete(rig.RX, {r.head: r}, 1)
            sent = rig.complete(rig.TX, {t.head: t}, 1)
            n = got[0][1] if got else -1
            data = written_bytes(rig.mem, r, n)[rig.hdr_len:] if got else b""
            tables_kept = [rig.mem.read(a, ln) for a, ln in r.tables] == table_before
            ok = bool(got) and bool(sent) and data == frame and n == rig.hdr_len + len(frame) and tables_kept
            verdict.check(rid, ok, f"{name}: frame of {len(frame)} {'received' if got else 'not received'}, "
                                   f"used len {n} (expected {rig.hdr_len + len(frame)}), data "
                                   f"{'intact' if data == frame else 'differs'}, TX used {'yes' if sent else 'no'}, "
                                   f"indirect table {'unchanged' if tables_kept else 'modified'}")
            rig.release(r)
            rig.release(t)
            if not _alive(rig, verdict, rid, name):
                return


# --- SPLIT-DEV-09..14, 18, 20: notification suppression -----------------------------------------------


def _tx_one(rig: Rig, seq: int) -> tuple[int, int, int]:
    """Transmit one frame (looped back into a posted RX buffer); returns TX (old, new) used idx and the
    interrupts already consumed while waiting for the used entry (a device whose interrupt follows its used
    idx write closely can signal before the wait has seen the new idx)."""
    old = rig.tx.used_idx()
    add_chain(rig.tx, [rig.tx_header() + make_frame(seq, 80)], [])
    rig.publish(rig.TX)
    _, seen = rig.wait_used_idx(rig.TX, old + 1)
    return old, rig.tx.used_idx(), seen


@pytest.mark.ring_layout("split")  # the packed form of SPLIT-DEV-10/11 is in test_packed_ring
@pytest.mark.req("SPLIT-DEV-09", "SPLIT-DEV-10", "SPLIT-DEV-11", "SPLIT-DEV-18")
def test_notifications_without_event_idx(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(event_idx=False)
        assert feats is not None
        rig.bring_up(feats, 64)
        if not rig.looped(verdict, "SPLIT-DEV-09", "SPLIT-DEV-10", "SPLIT-DEV-11", "SPLIT-DEV-18"):
            return
        tx = rig.tx
        rx_pending = _post_rx(rig, 48, poisoned=False)
        rig.drain_irqs()
        seq = 0
        for used_event in (0, 1, 2, 0x7FFF, 0xFFFF):  # SPLIT-DEV-09: used_event means nothing here
            for flags in (0, VRING_AVAIL_F_NO_INTERRUPT, 0):
                tx.write_avail_flags(flags)
                tx.set_used_event((tx.used_idx() + used_event) & 0xFFFF)
                old, new, seen = _tx_one(rig, seq)
                seq += 1
                got = rig.notified(rig.TX, seen, not flags)
                what = (f"TX used idx {old}->{new} with avail.flags={flags} used_event=used+{used_event}: "
                        f"{got} interrupt(s)")
                if flags:
                    verdict.check("SPLIT-DEV-10", got == 0, what + " (expected none)")
                else:
                    verdict.check("SPLIT-DEV-11", got >= 1, what + " (expected one)")
                verdict.check("SPLIT-DEV-09", (got > 0) == (not flags), what + ": interrupts must follow avail.flags "
                              "whatever used_event says")
                verdict.check("SPLIT-DEV-18", tx.used_flags() in (0, 1) and rig.rx.used_flags() in (0, 1),
                              f"used.flags reads TX {tx.used_flags():#x} RX {rig.rx.used_flags():#x}")
                tx.used()
        rig.irqs(rig.RX, 0)
        rig.complete(rig.RX, rx_pending, seq)


@pytest.mark.ring_layout("split")  # the packed form of SPLIT-DEV-13/14 is in test_packed_ring
@pytest.mark.req("SPLIT-DEV-12", "SPLIT-DEV-13", "SPLIT-DEV-14", "SPLIT-DEV-20")
def test_notifications_with_event_idx(bench: Bench, verdict: Verdict) -> None:
    ids = ("SPLIT-DEV-12", "SPLIT-DEV-13", "SPLIT-DEV-14", "SPLIT-DEV-20")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if rig.up_offered(verdict, ids, rig.features_for(event_idx=True), "VIRTIO_F_EVENT_IDX not offered",
                          queue_size=64) is None:
            return
        tx = rig.tx
        tx.auto_used_event = False
        rx_pending = _post_rx(rig, 60, poisoned=False)
        rig.drain_irqs()
        seq = 0

        def step(event: int, flags: int, batch: int) -> None:
            nonlocal seq
            r = rig.event_idx_step(seq, event, flags, batch, 70)
            seq += batch
            what = r.describe()
            if r.want:
                verdict.check("SPLIT-DEV-13", r.got >= 1 and r.done, what)
            verdict.check("SPLIT-DEV-14", r.got <= (1 if r.want else 0), what)
            if flags:
                verdict.check("SPLIT-DEV-12", (r.got > 0) == r.want, what + " (avail.flags must be disregarded)")
            verdict.check("SPLIT-DEV-20", tx.used_flags() == 0 and rig.rx.used_flags() == 0,
                          f"used.flags reads TX {tx.used_flags():#x} RX {rig.rx.used_flags():#x} with EVENT_IDX")

        # One buffer per step: used_event exactly at the slot filled, one before it, one after it.
        for flags in (0, VRING_AVAIL_F_NO_INTERRUPT):
            step(0, flags, 1)      # the slot just filled: notify
            step(1, flags, 1)      # one ahead: quiet
            step(-1, flags, 1)     # one behind (already passed): quiet
            step(0x8000, flags, 1)  # far away: quiet
        # Batches: crossed in the middle, at the last slot, one past the end.
        for flags in (0, VRING_AVAIL_F_NO_INTERRUPT):
            step(2, flags, 5)
            step(4, flags, 5)
            step(5, flags, 5)
            step(-1, flags, 5)
        rig.complete(rig.RX, rx_pending, seq)


# --- SPLIT-DEV-22: spurious notifications --------------------------------------------------------------


@pytest.mark.req("SPLIT-DEV-22")
def test_spurious_notifications_are_harmless(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """Spurious kicks, on empty rings and after a frame: nothing used twice, the queue still works. On either ring
    layout; "used idx" is :meth:`~testbenches.conformance.harness.Rig.used_mark` (on a packed ring, the slots
    read as used, one for the frame's list)."""
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if not rig.offers(ring_layout, verdict, "SPLIT-DEV-22"):
            return
        feats = rig.features_for(layout=ring_layout)
        assert feats is not None
        rig.bring_up(feats, 32)
        if not rig.looped(verdict, "SPLIT-DEV-22"):
            return
        # Before anything was made available.
        for _ in range(8):
            rig.kick(rig.TX)
            rig.kick(rig.RX)
        tx_mark, rx_mark = rig.used_mark(rig.TX), rig.used_mark(rig.RX)
        verdict.check("SPLIT-DEV-22", tx_mark == 0 and rx_mark == 0,
                      f"kicks on empty rings moved used idx to TX {tx_mark} RX {rx_mark}")
        rx_pending = _post_rx(rig, 8)
        frame = make_frame(7, 200)
        t = rig.add_chain(rig.TX, [rig.tx_header(), frame], [])
        rig.publish(rig.TX)
        rig.wait_used_idx(rig.TX, 1)
        got = rig.complete(rig.RX, rx_pending, 1)
        # The same entries again: consumed ones must not be used twice.
        for _ in range(8):
            rig.kick(rig.TX)
        extra = rig.complete(rig.RX, rx_pending, 1, timeout=rig.quiet, expected=False)
        tx_mark = rig.used_mark(rig.TX)
        verdict.check("SPLIT-DEV-22", len(got) == 1 and not extra and tx_mark == 1,
                      f"1 frame sent, then 8 spurious kicks: {len(got) + len(extra)} make_frame(s) received, "
                      f"TX used idx {tx_mark} (expected 1)")
        rig.complete(rig.TX, {t.head: t}, 1)
        # Still works afterwards.
        t2 = rig.add_chain(rig.TX, [rig.tx_header(), frame], [])
        rig.publish(rig.TX)
        again = rig.complete(rig.RX, rx_pending, 1)
        rig.complete(rig.TX, {t2.head: t2}, 1)
        data = written_bytes(rig.mem, again[0][0], again[0][1])[rig.hdr_len:] if again else b""
        verdict.check("SPLIT-DEV-22", data == frame, "after spurious kicks a new frame "
                      f"{'came back intact' if data == frame else 'did not come back intact'}")
        _alive(rig, verdict, "SPLIT-DEV-22", "spurious kicks")


# --- FEAT-DEV-10: IN_ORDER ------------------------------------------------------------------------------


@pytest.mark.req("FEAT-DEV-10")
def test_in_order_used_in_availability_order(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(in_order=True, indirect=True) or rig.features_for(in_order=True, indirect=False)
        if rig.up_offered(verdict, ("FEAT-DEV-10",), feats, "VIRTIO_F_IN_ORDER not offered", queue_size=32) is None:
            return
        indirect_ok = has(rig.features, F.INDIRECT_DESC)
        hdr = rig.tx_header()
        seq = 0
        for rnd in range(12):
            order: list[Posted] = []
            for k in range(1 + rnd % 5):
                cuts = [[], [12], [5, 12, 40]][(rnd + k) % 3]
                direct = 0 if indirect_ok and (rnd + k) % 4 == 3 else None
                order.append(add_chain(rig.tx, split_at(hdr + make_frame(seq, 100), cuts), [], direct=direct))
                seq += 1
            rx_order = [add_chain(rig.rx, [], [rig.rx_buf_size], direct=0 if indirect_ok and k % 2 else None)
                        for k in range(len(order))]
            rig.publish(rig.RX)
            pairs = ((rig.TX, rig.tx, order), (rig.RX, rig.rx, rx_order))
            olds = {q: ring.used_idx() for q, ring, _ in pairs}
            for q, ring, expect in pairs:
                # Poison the used slots about to be filled so skipped (batched) entries are recognisable.
                for k in range(len(expect)):
                    rig.mem.write(ring.used_addr + SplitLayout.USED_RING + USED_ELEM_SIZE * ((olds[q] + k) % ring.size),
                                  USED_ELEM.pack(0xFFFF_FFFF, 0))
            rig.publish(rig.TX)
            for q, ring, expect in pairs:
                old = olds[q]
                base = ring.used_addr + SplitLayout.USED_RING
                done, _ = rig.wait_used_idx(q, old + len(expect))
                new = ring.used_idx()
                raw = [USED_ELEM.unpack(rig.mem.read(base + USED_ELEM_SIZE * ((old + k) % ring.size),
                                                     USED_ELEM_SIZE)) for k in range(len(expect))]
                want = [p.head for p in expect]
                seen = [i for i, _ in raw]
                # Written entries must match the availability order; the last one of the batch must be written.
                ok = done and all(s in (w, 0xFFFF_FFFF) for s, w in zip(seen, want, strict=True)) \
                    and seen[-1] == want[-1]
                verdict.check("FEAT-DEV-10", ok, f"queue {q}: used idx {old}->{new}, used ids {seen} "
                                                 f"(0xffffffff = not written), availability order {want}")
                if not ok:
                    return
                # Fill in entries the device returned implicitly (IN_ORDER batching), then consume them.
                for k, (s, _ln) in enumerate(raw):
                    if s == 0xFFFF_FFFF:
                        rig.mem.write(base + USED_ELEM_SIZE * ((old + k) % ring.size), USED_ELEM.pack(want[k], 0))
                ring.used()
            for p in order + rx_order:
                rig.release(p)
            rig.drain_irqs()
        _alive(rig, verdict, "FEAT-DEV-10", "IN_ORDER traffic")


# --- 16-bit index wrap ----------------------------------------------------------------------------------


@pytest.mark.req("SPLIT-DEV-15", "SPLIT-DEV-16", "SPLIT-DEV-13", "SPLIT-DEV-14")
def test_used_idx_wraps_at_16_bits(bench: Bench, verdict: Verdict) -> None:
    """70,000 buffers through one queue pair: used idx crosses 0x8000 and 2^16 inside a batch. The used entries
    and data of every batch (SPLIT-DEV-16), the EVENT_IDX notifications across the wrap (SPLIT-DEV-13/14), and
    around each multiple of 0x8000 the order of the device's used-ring writes (SPLIT-DEV-15: a used idx write
    exposes, as the driver counts mod 2^16, only entries whose len was written before it)."""
    ids = ("SPLIT-DEV-15", "SPLIT-DEV-16", "SPLIT-DEV-13", "SPLIT-DEV-14")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(event_idx=True, indirect=False) or rig.features_for(event_idx=False)
        assert feats is not None
        rig.bring_up(feats, 256)
        if not rig.looped(verdict, *ids):
            return
        event_idx = has(rig.features, F.EVENT_IDX)
        if not event_idx:
            verdict.not_offered("SPLIT-DEV-13", "VIRTIO_F_EVENT_IDX not offered")
            verdict.not_offered("SPLIT-DEV-14", "VIRTIO_F_EVENT_IDX not offered")
        if (why := rig.deadlines.unaffordable(WRAP_TOTAL, "crossing the 16-bit used idx wrap")) is not None:
            for i in ids:
                if not verdict.recorded(i):
                    verdict.not_applicable(i, why)
            return
        size = rig.tx.size
        batch = size - 6  # not a divisor of 2^16: the wrap falls inside a batch
        mem, rx, tx = rig.mem, rig.rx, rig.tx
        hl = rig.hdr_len
        txpool = rig.drv.alloc.alloc(size * WRAP_BUF, 64)
        rxpool = rig.drv.alloc.alloc(size * WRAP_BUF, 64)
        # Every RX slot owns one buffer; heads are recycled by hand (the queue's bookkeeping is bypassed).
        mem.write(rx.desc_addr, b"".join(DESC.pack(rxpool + i * WRAP_BUF, WRAP_BUF, DescFlags.WRITE, 0)
                                         for i in range(size)))
        mem.write(rx.avail_addr + SplitLayout.AVAIL_RING, struct.pack(f"<{size}H", *range(size)))
        rx_avail = size
        rx.write_avail_idx(rx_avail)
        rig.kick(rig.RX)
        used_base_rx = rx.used_addr + SplitLayout.USED_RING
        used_base_tx = tx.used_addr + SplitLayout.USED_RING
        hdr = NetHdr().pack().ljust(hl, b"\0")
        sent = 0
        scenario = 0
        failed = False
        watched = 0
        if not rig.dma_watch().available:
            verdict.not_applicable("SPLIT-DEV-15", f"the order of device writes cannot be watched at the wrap: "
                                                   f"{rig.dma_watch().why}")
        while sent < WRAP_TOTAL and not failed:
            cnt = min(batch, WRAP_TOTAL - sent)
            frames = [make_frame(s, 60 + (s * 37) % 400) for s in range(sent, sent + cnt)]
            for k, f in enumerate(frames):
                slot = (sent + k) % size
                mem.write(txpool + slot * WRAP_BUF, hdr + f)
                mem.write(tx.desc_addr + DESC_SIZE * slot, DESC.pack(txpool + slot * WRAP_BUF, hl + len(f), 0, 0))
                mem.write(tx.avail_addr + SplitLayout.AVAIL_RING + 2 * slot, U16.pack(slot))
            old, new = sent & 0xFFFF, (sent + cnt) & 0xFFFF
            want_tx = False
            if event_idx:
                crossing = new < old
                offsets = [cnt - 1, cnt, 0, -1, cnt // 2]
                ev = 0xFFFF if crossing else (old + offsets[scenario % len(offsets)]) & 0xFFFF
                scenario += 1
                want_tx = vring_need_event(ev, new, old)
                tx.set_used_event(ev)
                rx.set_used_event((new - 1) & 0xFFFF)
            # Watch the batches whose window holds a multiple of 0x8000 (where a narrower counter would wrap).
            crossing_half = (sent + cnt) // 0x8000 != sent // 0x8000
            watch = rig.dma_watch({rig.RX: rx, rig.TX: tx})
            with contextlib.ExitStack() as stack:
                if crossing_half:
                    stack.enter_context(watch)
                tx.write_avail_idx(new)
                rig.kick(rig.TX)
                ok_rx, seen_rx = rig.wait_used_idx(rig.RX, new)
                ok_tx, seen_tx = rig.wait_used_idx(rig.TX, new)
            if crossing_half and watch.available:
                for q, kind in ((rig.RX, "device-writable"), (rig.TX, "device-readable")):
                    label = f"{kind}, batch to used idx {new}"

                    def batch_kind(_entry: int, label: str = label) -> str:
                        return label

                    watched += judge_exposures(verdict, "SPLIT-DEV-15", watch, q, batch_kind)
            got_rx, got_tx = rx.used_idx(), tx.used_idx()
            if not verdict.check("SPLIT-DEV-16", ok_rx and ok_tx,
                                 f"after {sent + cnt} buffers used idx reads RX {got_rx} TX {got_tx} (previous {old}), "
                                 f"not {new} = {sent + cnt} mod 2^16: the used entries of buffers {sent}.."
                                 f"{sent + cnt - 1} did not come"):
                failed = True
                break
            if event_idx:
                # an asynchronous device's interrupt may already have come during wait_used
                n_tx = rig.notified(rig.TX, seen_tx, want_tx)
                n_rx = rig.notified(rig.RX, seen_rx, True)
                what = f"used idx {old}->{new}: TX used_event {ev} gave {n_tx} interrupt(s), expected " \
                       f"{int(want_tx)}; RX used_event {(new - 1) & 0xFFFF} gave {n_rx}, expected 1"
                ok13 = verdict.check("SPLIT-DEV-13", n_rx >= 1 and (n_tx >= 1 or not want_tx), what)
                ok14 = verdict.check("SPLIT-DEV-14", n_tx == int(want_tx) and n_rx <= 1, what)
                if not (ok13 and ok14):
                    failed = True  # one wrong notification is enough evidence; the rest would only wait
                    break
            else:
                rig.drain_irqs()
            # Used rings: TX ids are this batch's slots; RX entries hold the frames in order, byte for byte.
            ring_rx = mem.read(used_base_rx, USED_ELEM_SIZE * size)
            ring_tx = mem.read(used_base_tx, USED_ELEM_SIZE * size)
            pool = mem.read(rxpool, size * WRAP_BUF)
            tx_ids = sorted(used_entry(ring_tx, sent + k, size)[0] for k in range(cnt))
            want_ids = sorted((sent + k) % size for k in range(cnt))
            verdict.check("SPLIT-DEV-16", tx_ids == want_ids,
                          f"TX used entries for idx {old}..{new - 1} name ids outside this batch")
            bad: list[str] = []
            repost: list[int] = []
            for k, f in enumerate(frames):
                uid, ulen = used_entry(ring_rx, sent + k, size)
                repost.append(uid)
                if uid >= size:
                    bad.append(f"used idx {(sent + k) & 0xFFFF}: id {uid} >= queue size")
                    continue
                data = pool[uid * WRAP_BUF + hl: uid * WRAP_BUF + min(ulen, WRAP_BUF)]
                if ulen != hl + len(f) or data != f:
                    bad.append(f"used idx {(sent + k) & 0xFFFF} (buffer {sent + k}): id {uid} len {ulen} "
                               f"(expected {hl + len(f)}), data {'intact' if data == f else 'differs'}")
            verdict.check("SPLIT-DEV-16", not bad, "; ".join(bad[:4]) + (f" (+{len(bad) - 4} more)"
                                                                         if len(bad) > 4 else ""))
            if bad:
                failed = True
            for uid in repost:
                mem.write(rx.avail_addr + SplitLayout.AVAIL_RING + 2 * (rx_avail % size), U16.pack(uid % size))
                rx_avail += 1
            rx.write_avail_idx(rx_avail)
            rig.kick(rig.RX)
            sent += cnt
        if rig.dma_watch().available and not failed:
            verdict.check("SPLIT-DEV-15", watched > 0, f"{watched} used entries exposed at the 0x8000 multiples")
        _alive(rig, verdict, "SPLIT-DEV-16", "index wrap run")
        # The driver's own bookkeeping was bypassed: reset before the rings are freed.
        rig.drv.reset()
