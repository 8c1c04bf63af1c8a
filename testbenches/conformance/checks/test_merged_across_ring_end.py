"""Merged receive buffers across the ring's end (5.1.6.3.2 over 2.7.6 and 2.8).

With VIRTIO_NET_F_MRG_RXBUF a packet takes as many receive buffers as it needs, in the order they were made
available. :mod:`test_net_datapath` judges that on a large ring; here the receive ring is small and the packets
take one to four buffers each, round after round, so the buffers of a packet regularly sit on both sides of the
ring's end (the last avail ring slots and the first ones; on a packed ring, the last descriptor slots and the
first ones of the next lap). Every packet must arrive whole over buffers named in order: num_buffers in its
first header counts them (NET-DEV-28, NET-DEV-31), and all but the last are full (NET-DEV-32).
"""

from __future__ import annotations

import pytest

from backend.virtio.net_hdr import NetHdr
from testbenches.conformance.chains import Posted, poison, written_bytes
from testbenches.conformance.checks.test_net_datapath import MERGED_UNIT, _buffers_for, merged_up
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, make_frame
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout

IDS = ("NET-DEV-28", "NET-DEV-31", "NET-DEV-32")
#: The receive ring: small, so that the rounds below go around it several times.
QSIZE = 16
#: Frame lengths of one round: with the header they take 1, 2, 3, 4, 2 and 3 buffers of MERGED_UNIT bytes.
ROUND = (60, 2 * MERGED_UNIT - 40, 3 * MERGED_UNIT - 40, 4 * MERGED_UNIT - 40, MERGED_UNIT + 7, 2 * MERGED_UNIT + 100)
ROUNDS = 8


@pytest.mark.req(*IDS)
def test_merged_buffers_across_the_ring_end(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if not merged_up(rig, verdict, ring_layout, IDS, QSIZE):
            return
        hl = rig.hdr_len
        unit = MERGED_UNIT
        hdr = rig.tx_header()
        bad: list[str] = []
        packets = 0
        for r in range(ROUNDS):
            frames = [make_frame(1000 + 10 * r + i, n) for i, n in enumerate(ROUND)]
            need = [_buffers_for(hl + len(f), unit) for f in frames]
            # One round at a time, as many buffers as the round takes: the next round starts where this one ended.
            pending: dict[int, Posted] = {}
            for _ in range(sum(need)):
                p = rig.add_chain(rig.RX, [], [unit])
                poison(rig.mem, p)
                pending[p.head] = p
            rig.publish(rig.RX)
            for f in frames:
                rig.add_chain(rig.TX, [hdr, f], [])
                rig.publish(rig.TX)
                rig.ring(rig.TX).used()
            got = rig.complete(rig.RX, pending, sum(need))
            rig.ring(rig.TX).used()
            k = 0
            for j, f in enumerate(frames):
                where = f"round {r}, frame {j} ({len(f)} bytes, {need[j]} buffers of {unit})"
                if k >= len(got):
                    bad.append(f"{where}: no used buffer left ({len(got)} of {sum(need)} came back)")
                    break
                nb = NetHdr.unpack(written_bytes(rig.mem, got[k][0], got[k][1]).ljust(12, b"\0")).num_buffers
                span = got[k:k + max(nb, 1)]
                lens = [n for _, n in span]
                data = b"".join(written_bytes(rig.mem, p, n) for p, n in span)
                if nb != need[j] or len(span) != nb or data[hl:] != f:
                    bad.append(f"{where}: num_buffers {nb}, the next {len(span)} used buffers hold {sum(lens)} "
                               f"bytes, frame {'intact' if data[hl:] == f else 'not intact'}")
                if not all(n == p.writable_len for p, n in span[:-1]):
                    bad.append(f"{where}: used lens {lens} (all but the last must be full)")
                k += len(span)
                packets += 1
            for p, _ in got:
                rig.release(p)
            for p in pending.values():
                rig.release(p)
            if bad:
                break
        what = (f"{packets} packets over {ROUNDS} rounds on a {ring_layout} receive ring of {QSIZE} (the buffers of "
                f"a packet on both sides of the ring's end): {'; '.join(bad[:3]) or 'every packet whole'}")
        for rid in IDS:
            verdict.check(rid, not bad and packets == ROUNDS * len(ROUND), what)
