"""Chains with both device-readable and device-writable descriptors on the data queues (2.7.4, 2.7.5).

A transmit chain may end in device-writable buffers and a receive chain may start with device-readable ones:
the frame is the readable bytes after the header (transmit) and goes into the writable bytes (receive), the
other part is neither sent nor written (SPLIT-DEV-01, SPLIT-DEV-03), and used len counts only bytes the device
wrote into the writable part (SPLIT-DEV-16). Bursts mix these chains with plain ones, so a device that decodes
many chains at once meets them among the others. Every check runs on both ring layouts (``ring_layout``): on
packed rings a list with an indirect table is that one descriptor (PACKED-DRV-15).
"""

from __future__ import annotations

import pytest

from backend.virtio.features import F, NetF, has
from testbenches.conformance.chains import Posted, poison, split_at, written_bytes
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, make_frame
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout

POISON = 0xA5
#: Device-writable tail of a transmit chain, and the device-readable head of a receive chain.
TAIL = 64
HEAD = 16
IDS = ("SPLIT-DEV-01", "SPLIT-DEV-03", "SPLIT-DEV-16")


def _changed(data: bytes) -> int:
    """Bytes of a poisoned buffer that no longer hold the poison."""
    return sum(b != POISON for b in data)


@pytest.mark.req(*IDS)
def test_mixed_chains_in_bursts(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if not rig.offers(ring_layout, verdict, *IDS):
            return
        # Without VIRTIO_NET_F_MTU (no check of the others leaves it out): no length limit of the device's own
        # may then stop these ordinary frames.
        feats = rig.features_for(indirect=None, drop=1 << NetF.MTU, layout=ring_layout)
        assert feats is not None
        rig.bring_up(feats, 64)
        if not rig.looped(verdict, *IDS):
            return
        indirect = has(rig.features, F.INDIRECT_DESC)
        hdr = rig.tx_header()
        head_bytes = bytes(range(0x40, 0x40 + HEAD))
        for rnd in range(4):
            frames = [make_frame(500 + 10 * rnd + k, 80 + 50 * k) for k in range(4)]
            rx: dict[int, Posted] = {}
            rx_kind: dict[int, str] = {}
            for k, f in enumerate(frames):
                need = rig.hdr_len + len(f)
                if (rnd + k) % 2:
                    p = rig.add_chain(rig.RX, [head_bytes], [need + 40],
                                      direct=1 if indirect and rnd >= 2 else None)
                    rx_kind[p.head] = "readable head + writable"
                else:
                    p = rig.add_chain(rig.RX, [], [need + 40])
                    rx_kind[p.head] = "writable only"
                poison(rig.mem, p, POISON)
                rx[p.head] = p
            rig.publish(rig.RX)
            tx: dict[int, Posted] = {}
            tx_kind: dict[int, str] = {}
            for k, f in enumerate(frames):
                if (rnd + k) % 2 == 0:
                    cuts = [[], [rig.hdr_len]][rnd % 2]
                    t = rig.add_chain(rig.TX, split_at(hdr + f, cuts), [TAIL],
                                      direct=0 if indirect and rnd >= 2 else None)
                    tx_kind[t.head] = "readable + writable tail"
                    poison(rig.mem, t, POISON)
                else:
                    t = rig.add_chain(rig.TX, [hdr + f], [])
                    tx_kind[t.head] = "readable only"
                tx[t.head] = t
            readable_before = {p.head: [rig.mem.read(a, n) for a, n in p.readable] for p in rx.values()}
            rig.publish(rig.TX)
            sent = rig.complete(rig.TX, dict(tx), len(frames))
            got = rig.complete(rig.RX, dict(rx), len(frames))
            where = f"round {rnd}"
            for p, n in sent:
                wrote = _changed(b"".join(rig.mem.read(a, ln) for a, ln in p.writable))
                verdict.check("SPLIT-DEV-16", n <= wrote,
                              f"{where}: TX chain {p.head} ({tx_kind[p.head]}): used len {n}, {wrote} byte(s) of its "
                              f"writable part changed (used len counts bytes written)")
            received = []
            for p, n in got:
                data = written_bytes(rig.mem, p, n)
                received.append(data[rig.hdr_len:])
                verdict.check("SPLIT-DEV-16", n == rig.hdr_len + len(data[rig.hdr_len:]) and
                              data[rig.hdr_len:] in frames,
                              f"{where}: RX chain {p.head} ({rx_kind[p.head]}): used len {n}, "
                              f"{'one of the frames sent' if data[rig.hdr_len:] in frames else 'not a frame sent'}")
                kept = [rig.mem.read(a, ln) for a, ln in p.readable] == readable_before[p.head]
                verdict.check("SPLIT-DEV-03", kept,
                              f"{where}: RX chain {p.head} ({rx_kind[p.head]}): device-readable head "
                              f"{'untouched' if kept else 'written'}")
            verdict.check("SPLIT-DEV-01", received == frames,
                          f"{where}: TX kinds {list(tx_kind.values())}: received "
                          f"{[len(r) for r in received]} bytes, sent {[len(f) for f in frames]} "
                          f"({'identical, in order' if received == frames else 'different'})")
            for p in list(tx.values()) + list(rx.values()):
                rig.release(p)
            if not sent or not got:
                return


@pytest.mark.req("SPLIT-DEV-16")
def test_transmit_with_nothing_on_the_wire(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """Transmit chains are returned whatever the wire does with the frames (unplugged where the target can be
    built so): every chain, plain or not, one at a time or in a burst, comes back with used len 0, since a
    chain without device-writable buffers leaves nothing written."""
    with bench.rig(bench.variant(wire="none"), mem_size=RING_MEM_SIZE) as rig:
        if not rig.offers(ring_layout, verdict, "SPLIT-DEV-16"):
            return
        feats = rig.features_for(indirect=None, layout=ring_layout)
        assert feats is not None
        rig.bring_up(feats, 64)
        hdr = rig.tx_header()
        indirect = has(rig.features, F.INDIRECT_DESC)
        for burst in (1, 6):
            pending: dict[int, Posted] = {}
            for k in range(burst):
                cuts = [[], [rig.hdr_len], [4, rig.hdr_len, 40]][k % 3]
                t = rig.add_chain(rig.TX, split_at(hdr + make_frame(700 + k, 64 + 20 * k), cuts), [],
                                  direct=0 if indirect and k == 5 else None)
                pending[t.head] = t
            rig.publish(rig.TX)
            got = rig.complete(rig.TX, dict(pending), burst)
            lens = {p.head: n for p, n in got}
            verdict.check("SPLIT-DEV-16", len(got) == burst and not any(lens.values()),
                          f"{rig.wire.why}: a burst of {burst} transmit chain(s): {len(got)} returned, used lens "
                          f"{sorted(lens.values())} (expected 0 each)")
            for p in pending.values():
                rig.release(p)


@pytest.mark.req("SPLIT-DEV-04")
def test_transmit_chains_without_readable_buffers(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """A transmit chain whose buffers are all device-writable holds no frame: the device reads nothing of it, so
    the header and frame a driver left there never reach the wire (SPLIT-DEV-04: transmitting them means reading
    device-writable buffers). Such chains (one descriptor, two, behind an indirect pointer) come first in a burst
    with ordinary chains behind them, which carry their frames as usual."""
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if not rig.offers(ring_layout, verdict, "SPLIT-DEV-04"):
            return
        feats = rig.features_for(indirect=None, drop=1 << NetF.MTU, layout=ring_layout)
        assert feats is not None
        d = rig.up(features=feats, exact=True, queue_size=64, rx_buffers=32, layout=ring_layout)
        if not rig.looped(verdict, "SPLIT-DEV-04"):
            return
        hdr = rig.tx_header()
        stray = [make_frame(800 + k, 90 + 10 * k) for k in range(3)]
        good = [make_frame(810 + k, 70 + 10 * k) for k in range(3)]
        indirect = has(d.features, F.INDIRECT_DESC)
        writable: list[Posted] = []
        for k, f in enumerate(stray):
            t = rig.add_chain(rig.TX, [], [rig.hdr_len + len(f)] if k == 0 else [rig.hdr_len, len(f)],
                              direct=0 if indirect and k == 2 else None)
            data = hdr + f
            off = 0
            for gpa, n in t.writable:
                rig.mem.write(gpa, data[off:off + n])
                off += n
            writable.append(t)
        tx = [rig.add_chain(rig.TX, [hdr + f], []) for f in good]
        with rig.dma_watch() as watch:
            rig.publish(rig.TX)
            received = [f.frame for f in d.receive_raw(len(good), rig.stretched(1.0))]
            extra = [f.frame for f in d.receive_raw(1, rig.silence(0.05))]
        arrived = received + extra
        leaked = [k for k, f in enumerate(stray) if f in arrived]
        verdict.check("SPLIT-DEV-04", not leaked and received == good,
                      f"transmit chains holding a frame only in device-writable buffers (one, two descriptors"
                      f"{', indirect' if indirect else ''}) before {len(good)} ordinary ones: {len(arrived)} "
                      f"frame(s) arrived, {'stray ' + str(leaked) if leaked else 'none of the strays'}, the ordinary "
                      f"ones {'intact, in order' if received == good else 'not as sent'}; status "
                      f"{rig.status():#x}")
        if watch.available:
            spans = [span for t in writable for span in t.writable]
            reads = [a for a in watch.reads() if any(a.iova < g + n and g < a.iova + a.size for g, n in spans)]
            verdict.check("SPLIT-DEV-04", not reads,
                          f"device reads inside the device-writable buffers of those transmit chains: {reads[:4]}")
        for p in [*writable, *tx]:
            rig.release(p)
