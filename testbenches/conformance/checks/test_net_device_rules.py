"""virtio-net data path rules held over every layout and every ring position a driver may choose (2.7, 5.1.6).

A driver divides a packet into descriptors as it likes (SPLIT-DEV-01): the transmit checks cut header and frame
at every offset of the header and at several of the frame, in one, two and three descriptors, direct and
indirect (SPLIT-DEV-08), alone and in bursts where equal layouts follow each other (a device that decodes runs
of chains at once meets them all) or alternate. The receive checks do the same with the receive buffers, each
exactly as large as its packet (NET-DEV-29/30). The long run drives more than 2^16 chains of mixed layouts
through rings of 1024 entries in rounds of 500, so rounds start and end mid-ring and the 16-bit avail and used
idx wrap inside a round, with the driver kicking only when the device's suppression advice asks for it
(SPLIT-DEV-18/20): every frame must come back intact, each transmit chain used once with len 0 (SPLIT-DEV-16).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from backend.virtio.features import F, NetF, has
from backend.virtio.net_hdr import GSO_NONE, NetHdr
from backend.virtio.split_ring import (
    DESC,
    DESC_SIZE,
    U16,
    USED_ELEM,
    USED_ELEM_SIZE,
    VRING_USED_F_NO_NOTIFY,
    DescFlags,
    SplitLayout,
    vring_need_event,
)
from testbenches.conformance.chains import Posted, add_chain, expose_pieces, poison, split_at, used_entry, written_bytes
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, Rig, make_frame
from testbenches.conformance.plugin import Verdict
from testbenches.driver.split_ring import DriverSplitQueue

#: Receive features a device could use to change what it writes; left out so headers and frames are exact.
GUEST_OFFLOADS = (NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_UFO, NetF.GUEST_USO4,
                  NetF.GUEST_USO6, NetF.GUEST_ECN, NetF.MRG_RXBUF)
#: Long run: ring size, chains per round (not a divisor of 2^16 nor of the ring: rounds end mid-ring and one
#: holds the wrap), chains in all (past 2^16), bytes of buffer per chain.
WRAP_QSIZE = 1024
WRAP_ROUND = 500
WRAP_TOTAL = 0x10000 + 1500
WRAP_BUF = 512
#: Lengths of the runs of equal layouts in the long run.
WRAP_RUNS = (1, 2, 5, 16, 3, 64)
#: Mark of a used slot the device has not written (IN_ORDER batches).
SKIPPED_ID = 0xFFFF_FFFF
SKIPPED = USED_ELEM.pack(SKIPPED_ID, 0)


#: One chain of a burst: the frame, where it is cut, and how many ordinary descriptors precede an indirect
#: table (None: no indirect table).
Item = tuple[bytes, list[int], int | None]


#: Bytes left between the pieces of one chain (and kept poisoned): a device that takes a piece from where the
#: previous one ended, instead of from its own descriptor, reads or writes the wrong bytes.
GAP = 40
GAP_FILL = 0x5A


def _scattered_chain(ring: DriverSplitQueue, out: Sequence[bytes], in_lens: Sequence[int],
                     direct: int | None = None) -> Posted:
    """Like :func:`add_chain` (``direct``: ordinary descriptors before one indirect table), but every piece in a
    buffer of its own with :data:`GAP` poisoned bytes after it, so no two pieces are adjacent in memory."""
    pieces: list[tuple[int, int, int]] = []
    owned: list[int] = []
    for data in out:
        gpa = ring.alloc_buffer(data + bytes([GAP_FILL]) * GAP)
        owned.append(gpa)
        pieces.append((gpa, len(data), 0))
    for length in in_lens:
        gpa = ring.alloc_buffer(bytes([GAP_FILL]) * (length + GAP))
        owned.append(gpa)
        pieces.append((gpa, length, DescFlags.WRITE))
    return expose_pieces(ring, pieces, owned, direct=direct)


def _bits(*features: NetF) -> int:
    return sum(1 << f for f in features)


def _tx_cuts(hl: int, flen: int) -> list[list[int]]:
    """Where header + frame (``flen`` bytes) are cut into descriptors: not at all, at every offset inside and at
    the end of the header, at several inside the frame, and in three pieces around the header's end."""
    two = [[c] for c in range(1, hl + 1)] + [[hl + d] for d in (1, 13, 14, 15, flen // 2, flen - 1)]
    three = [[1, hl], [hl - 1, hl + 1], [hl, hl + 14], [2, hl + flen - 1], [hl // 2, hl + 1], [hl + 1, hl + 2]]
    return [[], *two, *three]


def _describe(cuts: Sequence[int], indirect: int | None) -> str:
    where = "in one descriptor" if not cuts else f"cut at {list(cuts)}"
    return where + ("" if indirect is None else f", {indirect} ordinary descriptor(s) then an indirect table")


def _run_tx(rig: Rig, verdict: Verdict, label: str,
            burst: Sequence[Item]) -> bool:
    """Transmit ``burst`` ((frame, cuts, indirect) each) with one doorbell; judge the used entries and the frames
    that come back. False when the device stopped answering (the rest of the check would only wait)."""
    hl = rig.hdr_len
    hdr = rig.tx_header()
    rx: dict[int, Posted] = {}
    for _ in burst:
        p = add_chain(rig.rx, [], [rig.rx_buf_size])
        rx[p.head] = p
    rig.publish(rig.RX)
    tx: dict[int, Posted] = {}
    kinds: dict[int, str] = {}
    for frame, cuts, direct in burst:
        t = _scattered_chain(rig.tx, split_at(hdr + frame, cuts), [], direct=direct)
        tx[t.head] = t
        kinds[t.head] = _describe(cuts, direct)
    rig.publish(rig.TX)
    sent = rig.complete(rig.TX, dict(tx), len(burst))
    got = rig.complete(rig.RX, dict(rx), len(burst))
    used = sorted(p.head for p, _ in sent)
    bad_len = [f"{kinds[p.head]}: len {n}" for p, n in sent if n != 0]
    verdict.check("SPLIT-DEV-16", used == sorted(tx) and not bad_len,
                  f"{label}: {len(burst)} transmit chains, {len(sent)} used entries "
                  f"({'each chain once' if used == sorted(tx) else 'not each chain once'}); used len must be 0 "
                  f"(the device writes nothing into a transmit chain): {bad_len[:4] or 'all 0'}")
    frames = [f for f, _, _ in burst]
    received = [written_bytes(rig.mem, p, n)[hl:] for p, n in got]
    wrong = [f"#{k} {_describe(cuts, direct)} ({len(f)} bytes)" for k, (f, cuts, direct) in enumerate(burst)
             if k >= len(received) or received[k] != f]
    for rid in ("SPLIT-DEV-01", *(("SPLIT-DEV-08",) if any(d is not None for _, _, d in burst) else ())):
        verdict.check(rid, received == frames,
                      f"{label}: {len(frames)} frames sent, {len(received)} received; frames not received as sent, "
                      f"in order: {wrong[:4] or 'none'}" + (f" (+{len(wrong) - 4} more)" if len(wrong) > 4 else ""))
    for p in [*tx.values(), *rx.values()]:
        rig.release(p)
    return len(sent) == len(burst) and len(got) == len(burst)


@pytest.mark.req("SPLIT-DEV-01", "SPLIT-DEV-08", "SPLIT-DEV-16")
def test_transmit_chains_split_at_every_offset(bench: Bench, verdict: Verdict) -> None:
    """Header and frame cut at every offset of the header and at several of the frame, in bursts of runs of one
    layout, of alternating layouts, one by one, and (with INDIRECT_DESC) through indirect tables."""
    ids = ("SPLIT-DEV-01", "SPLIT-DEV-08", "SPLIT-DEV-16")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(indirect=None, drop=1 << NetF.MTU)
        assert feats is not None
        rig.bring_up(feats, 256)
        if not rig.looped(verdict, *ids):
            return
        hl = rig.hdr_len
        seq = 0x5D1_0000

        def frame(length: int) -> bytes:
            nonlocal seq
            seq += 1
            return make_frame(seq, length)

        layouts = _tx_cuts(hl, 60)
        # Runs: each layout twice in a row, frames of one size per run and of other sizes between runs.
        runs: list[Item] = [(frame(60 + 7 * k), cuts, None) for k, cuts in enumerate(layouts) for _ in range(2)]
        # Alternating: a stride through the layouts, so no two neighbours share one; frames of many sizes.
        alt: list[Item] = [(frame(60 + (k * 53) % 900), layouts[(k * 7) % len(layouts)], None)
                           for k in range(len(layouts))]
        singles: list[Item] = [(frame(60 + k), [], None) for k in range(5)]
        bursts: list[tuple[str, list[Item]]] = [
            ("runs of equal layouts", runs), ("alternating layouts", alt),
            ("one descriptor each, then the rest", singles + alt[:9]),
        ]
        bursts += [(f"alone: {_describe(cuts, None)}", [(frame(61), cuts, None)]) for cuts in layouts]
        if has(rig.features, F.INDIRECT_DESC):
            indirect: list[Item] = [(frame(70 + 11 * k), cuts, k % (len(cuts) + 1)) for k, cuts in enumerate(layouts)]
            bursts += [("indirect tables", indirect), ("indirect, alone", indirect[-1:])]
        else:
            verdict.not_offered("SPLIT-DEV-08", "VIRTIO_F_INDIRECT_DESC not offered")
        for label, burst in bursts:
            if not _run_tx(rig, verdict, label, burst):
                return


def _rx_layouts(hl: int, need: int) -> list[list[int]]:
    """Writable pieces of a receive chain holding exactly ``need`` bytes (header + frame): whole, cut at every
    offset inside and at the end of the header, inside the frame, in three pieces."""
    two = [[c, need - c] for c in (*range(1, hl + 1), hl + 1, hl + 14, need - 1)]
    three = [[1, hl - 1, need - hl], [hl, 1, need - hl - 1], [hl - 2, 4, need - hl - 2]]
    return [[need], *two, *three]


@pytest.mark.req("NET-DEV-29", "NET-DEV-30", "NET-DEV-34", "SPLIT-DEV-01")
def test_receive_buffers_split_at_every_offset(bench: Bench, verdict: Verdict) -> None:
    """Without VIRTIO_NET_F_MRG_RXBUF each packet goes whole into one receive chain (NET-DEV-29) with num_buffers
    1 (NET-DEV-30) and flags 0 (NET-DEV-34), however the chain is cut: every chain here holds exactly its packet,
    cut at every offset of the header and inside the frame, in bursts and one by one."""
    ids = ("NET-DEV-29", "NET-DEV-30", "NET-DEV-34", "SPLIT-DEV-01")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(indirect=None, drop=_bits(*GUEST_OFFLOADS) | 1 << NetF.MTU)
        assert feats is not None
        rig.bring_up(feats, 256)
        if not rig.looped(verdict, *ids):
            return
        hl = rig.hdr_len
        hdr = rig.tx_header()
        indirect = has(rig.features, F.INDIRECT_DESC)
        seq = 0x5D2_0000
        plan: list[tuple[str, list[Item]]] = []
        for size in (60, 333, 1514):
            layouts = _rx_layouts(hl, hl + size)
            items: list[Item] = []
            for k, lens in enumerate(layouts):
                seq += 1
                items.append((make_frame(seq, size), lens, (k % len(lens)) if indirect and k % 3 == 2 else None))
            plan.append((f"{size}-byte frames, a burst of every layout", items))
            plan.append((f"{size}-byte frames, runs of equal layouts", [x for x in items[:6] for _ in range(2)]))
        seq += 1
        plan += [(f"alone: pieces {lens}", [(make_frame(seq + k, 100), lens, None)])
                 for k, lens in enumerate(_rx_layouts(hl, hl + 100))]
        for label, items in plan:
            rx: dict[int, Posted] = {}
            order: list[int] = []
            for _f, lens, direct in items:
                p = _scattered_chain(rig.rx, [], lens, direct=direct)
                poison(rig.mem, p)
                rx[p.head] = p
                order.append(p.head)
            rig.publish(rig.RX)
            for f, _, _ in items:
                add_chain(rig.tx, [hdr, f], [])
            rig.publish(rig.TX)
            got = rig.complete(rig.RX, dict(rx), len(items))
            rig.tx.used()
            verdict.check("NET-DEV-29", len(got) == len(items),
                          f"{label}: {len(items)} frames sent into as many chains of exactly their size, "
                          f"{len(got)} used")
            # Matched by chain, not by position: a device may use receive chains in another order; every frame of
            # one plan entry has the same size, so each fits every chain exactly.
            layout_of = {head: (lens, direct) for head, (_f, lens, direct) in zip(order, items, strict=True)}
            sent = {f for f, _, _ in items}
            bad: list[str] = []
            received: list[bytes] = []
            for p, n in got:
                data = written_bytes(rig.mem, p, n)
                h = NetHdr.unpack(data.ljust(12, b"\0"))
                lens, direct = layout_of[p.head]
                where = f"chain {p.head} (pieces {lens}{', indirect' if direct is not None else ''})"
                whole = data[hl:] in sent and n == len(data)
                received.append(data[hl:])
                verdict.check("NET-DEV-29", whole and n == p.writable_len,
                              f"{label}: {where}: used len {n} of {p.writable_len} bytes, frame "
                              f"{'whole' if whole else 'not one sent, or not whole'}")
                verdict.check("NET-DEV-30", h.num_buffers == 1, f"{label}: {where}: num_buffers {h.num_buffers}")
                verdict.check("NET-DEV-34", h.flags == 0 and h.gso_type == GSO_NONE,
                              f"{label}: {where}: flags {h.flags:#x}, gso_type {h.gso_type:#x}")
                if not whole:
                    bad.append(where)
            verdict.check("NET-DEV-29", sorted(received) == sorted(f for f, _, _ in items),
                          f"{label}: every frame sent received once, each in one chain")
            verdict.check("SPLIT-DEV-01", not bad,
                          f"{label}: each frame whole however its receive chain is cut: {bad[:4] or 'yes'}")
            for p in rx.values():
                rig.release(p)
            if len(got) < len(items):
                return


# --- the long run: rounds mid-ring, idx wrap ----------------------------------------------------------------------


def _wrap_layout(s: int, hl: int, flen: int) -> int:
    """Where chain ``s`` of the long run is cut (0: one descriptor), in runs of equal kind of varying length."""
    run = WRAP_RUNS[(s // 128) % len(WRAP_RUNS)]
    kind = (s // run) % 4
    if kind == 0:
        return 0
    if kind == 1:
        return hl
    if kind == 2:
        return 1 + s % hl
    return hl + 1 + s % (flen - 1)


@pytest.mark.parametrize(("event_idx", "in_order"), [(False, False), (True, False), (False, True)],
                         ids=["used-flags", "event-idx", "in-order"])
@pytest.mark.req("SPLIT-DEV-01", "SPLIT-DEV-16", "SPLIT-DEV-18", "SPLIT-DEV-20", "FEAT-DEV-10")
def test_rounds_mid_ring_across_the_idx_wrap(bench: Bench, verdict: Verdict, event_idx: bool, in_order: bool) -> None:
    rid = "SPLIT-DEV-20" if event_idx else "SPLIT-DEV-18"
    ids = ("SPLIT-DEV-01", "SPLIT-DEV-16", rid, *(("FEAT-DEV-10",) if in_order else ()))
    verdict.not_applicable("SPLIT-DEV-18" if event_idx else "SPLIT-DEV-20",
                           f"this run {'negotiates' if event_idx else 'does not negotiate'} VIRTIO_F_EVENT_IDX")
    if not in_order:
        verdict.not_applicable("FEAT-DEV-10", "this run does not negotiate VIRTIO_F_IN_ORDER")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(event_idx=event_idx, in_order=in_order, indirect=False, drop=1 << NetF.MTU)
        if feats is None:
            verdict.not_offered(ids[-1], f"VIRTIO_F_{'IN_ORDER' if in_order else 'EVENT_IDX'} not offered")
            return
        rig.bring_up(feats, WRAP_QSIZE)
        if not rig.looped(verdict, *ids):
            return
        mem, rx, tx = rig.mem, rig.rx, rig.tx
        size = tx.size
        hl = rig.hdr_len
        hdr = rig.tx_header()
        pairs = size // 2  # transmit chain j takes descriptors 2j and 2j+1 (at most ``pairs`` in flight)
        # A round fills all but a few pairs (a device's maximum may be below WRAP_QSIZE): never a divisor of the
        # ring or of 2^16, so rounds end mid-ring and one of them holds the wrap.
        per_round = min(WRAP_ROUND, pairs - 3)
        # The idx wrap under the suppression rule in use: EVENT_IDX's where offered (the used.flags run then
        # stays below it: rounds mid-ring only), else used.flags'.
        wraps = event_idx or (not has(rig.offered, F.EVENT_IDX) and not in_order)
        total = WRAP_TOTAL if wraps else 20 * per_round
        if (why := rig.deadlines.unaffordable(total, "this check")) is not None:
            for i in ids:
                verdict.not_applicable(i, why)
            return
        txpool = rig.drv.alloc.alloc(pairs * WRAP_BUF, 64)
        tailpool = rig.drv.alloc.alloc(pairs * WRAP_BUF, 64)  # second pieces: never adjacent to their first
        rxpool = rig.drv.alloc.alloc(size * WRAP_BUF, 64)
        # Every RX slot owns one buffer; heads are recycled by hand (the queue's bookkeeping is bypassed).
        mem.write(rx.desc_addr, b"".join(DESC.pack(rxpool + i * WRAP_BUF, WRAP_BUF, DescFlags.WRITE, 0)
                                         for i in range(size)))
        mem.write(rx.avail_addr + SplitLayout.AVAIL_RING, b"".join(U16.pack(i) for i in range(size)))
        rx_avail = size
        rx.write_avail_idx(rx_avail)
        rig.kick(rig.RX)
        used_rx = rx.used_addr + SplitLayout.USED_RING
        used_tx = tx.used_addr + SplitLayout.USED_RING
        sent = 0
        try:
            while sent < total:
                cnt = min(per_round, total - sent)
                frames: list[bytes] = []
                heads: list[int] = []
                for k in range(cnt):
                    s = sent + k
                    f = make_frame(s, 60 + (s * 37) % 400)
                    frames.append(f)
                    pair = s % pairs
                    buf = txpool + pair * WRAP_BUF
                    chain_len = hl + len(f)
                    cut = _wrap_layout(s, hl, len(f))
                    if cut:
                        tail = tailpool + pair * WRAP_BUF
                        mem.write(buf, (hdr + f)[:cut])
                        mem.write(tail, (hdr + f)[cut:])
                        descs = (DESC.pack(buf, cut, DescFlags.NEXT, 2 * pair + 1)
                                 + DESC.pack(tail, chain_len - cut, 0, 0))
                    else:
                        mem.write(buf, hdr + f)
                        descs = DESC.pack(buf, chain_len, 0, 0)
                    mem.write(tx.desc_addr + DESC_SIZE * 2 * pair, descs)
                    mem.write(tx.avail_addr + SplitLayout.AVAIL_RING + 2 * (s % size), U16.pack(2 * pair))
                    heads.append(2 * pair)
                old, new = sent & 0xFFFF, (sent + cnt) & 0xFFFF
                if in_order:
                    # With IN_ORDER a device may write one used entry for a batch (2.7.9): the slots it skips
                    # keep this mark, so written and skipped entries can be told apart.
                    for q_used in (used_tx, used_rx):
                        for k in range(cnt):
                            mem.write(q_used + USED_ELEM_SIZE * ((sent + k) % size), SKIPPED)
                tx.write_avail_idx(new)
                # A driver kicks only when the device's suppression state asks for it (read after the idx store).
                if event_idx:
                    want_kick = vring_need_event(tx.avail_event(), new, old)
                else:
                    want_kick = not tx.used_flags() & VRING_USED_F_NO_NOTIFY
                if want_kick or sent == 0:
                    rig.kick(rig.TX)
                ok_tx, _ = rig.wait_used_idx(rig.TX, new)
                ok_rx, _ = rig.wait_used_idx(rig.RX, new)
                where = f"round of chains {sent}..{sent + cnt - 1} (avail idx {old}->{new}, ring slots " \
                        f"{old % size}..{(new - 1) % size})"
                if not verdict.check("SPLIT-DEV-16", ok_tx and ok_rx,
                                     f"{where}: used idx reads TX {tx.used_idx()} RX {rx.used_idx()}, not {new}"
                                     + ("" if want_kick else " (the driver did not kick: the device's "
                                        f"{'avail_event' if event_idx else 'used.flags'} said it need not)")):
                    return
                flags = tx.used_flags()
                if event_idx:
                    verdict.check("SPLIT-DEV-20", flags == 0, f"{where}: used.flags {flags:#x} with EVENT_IDX")
                else:
                    verdict.check("SPLIT-DEV-18", flags in (0, 1), f"{where}: used.flags {flags:#x}")
                ring_tx = mem.read(used_tx, USED_ELEM_SIZE * size)
                ring_rx = mem.read(used_rx, USED_ELEM_SIZE * size)
                pool = mem.read(rxpool, size * WRAP_BUF)
                tx_used = [used_entry(ring_tx, sent + k, size) for k in range(cnt)]
                if in_order:
                    seen = [i for i, _ in tx_used]
                    stray = [i for i, h in zip(seen, heads, strict=True) if i not in (h, SKIPPED_ID)]
                    verdict.check("FEAT-DEV-10", not stray and seen[-1] == heads[-1],
                                  f"{where}: transmit used ids written in the order made available, the last one "
                                  f"written: {stray[:4]} out of order, last {seen[-1]:#x} for {heads[-1]}")
                    tx_used = [(h, 0) if i == SKIPPED_ID else (i, n)
                               for (i, n), h in zip(tx_used, heads, strict=True)]
                lens = {n for _, n in tx_used}
                verdict.check("SPLIT-DEV-16", sorted(i for i, _ in tx_used) == sorted(heads) and lens == {0},
                              f"{where}: transmit used entries name each chain of the round once "
                              f"({sorted(i for i, _ in tx_used) == sorted(heads)}), lens {sorted(lens)[:4]} "
                              "(0 expected)")
                bad: list[str] = []
                repost: list[int] = []
                for k, f in enumerate(frames):
                    uid, ulen = used_entry(ring_rx, sent + k, size)
                    if in_order and uid == SKIPPED_ID:
                        # Returned with a later entry: the chain made available at this position, len unknown.
                        at = rx.avail_addr + SplitLayout.AVAIL_RING + 2 * ((sent + k) % size)
                        repost.append(U16.unpack(mem.read(at, 2))[0])
                        continue
                    repost.append(uid % size)
                    data = pool[(uid % size) * WRAP_BUF + hl:(uid % size) * WRAP_BUF + min(ulen, WRAP_BUF)]
                    if uid >= size or ulen != hl + len(f) or data != f:
                        cut = _wrap_layout(sent + k, hl, len(f))
                        bad.append(f"chain {sent + k} ({len(f)} bytes, {'cut at ' + str(cut) if cut else 'whole'}): "
                                   f"received id {uid} len {ulen}, frame {'intact' if data == f else 'differs'}")
                if not verdict.check("SPLIT-DEV-01", not bad, f"{where}: " + "; ".join(bad[:4])
                                     + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")):
                    return
                for uid in repost:
                    mem.write(rx.avail_addr + SplitLayout.AVAIL_RING + 2 * (rx_avail % size), U16.pack(uid))
                    rx_avail += 1
                rx.write_avail_idx(rx_avail)
                rig.kick(rig.RX)
                rig.drain_irqs()
                sent += cnt
        finally:
            # The driver's own bookkeeping was bypassed: reset before the rings are freed.
            rig.drv.reset()
