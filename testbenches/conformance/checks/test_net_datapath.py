"""virtio-net data path (5.1.6): transmit header handling, receive headers without offloads, merged receive
buffers, MTU limits; on both ring layouts (``ring_layout``)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from backend.virtio.features import NetF, has
from backend.virtio.net_hdr import F_DATA_VALID, GSO_NONE, NetHdr
from testbenches.conformance.chains import Posted, poison, split_at, written_bytes
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, Rig, make_frame
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout
from testbenches.frames import MAX_LEN

#: Transmit header flag bits no feature of this spec version defines (NEEDS_CSUM, DATA_VALID, RSC_INFO
#: and UDP_TUNNEL_CSUM are bits 0..3).
UNKNOWN_TX_FLAGS = 0xC0
GUEST_OFFLOADS = (NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_UFO, NetF.GUEST_USO4,
                  NetF.GUEST_USO6, NetF.GUEST_ECN, NetF.MRG_RXBUF)


def _bits(*features: NetF) -> int:
    return sum(1 << f for f in features)



def _tagged(frame: bytes, tpid: bytes = b"\x81\x00") -> bytes:
    """``frame`` with a 4-byte 802.1Q tag (``tpid``, VLAN 5) after the MAC addresses."""
    return frame[:12] + tpid + b"\x00\x05" + frame[12:]


def _roundtrip(rig: Rig, out: list[bytes], rx_size: int | None = None,
               rx_lens: list[int] | None = None) -> tuple[NetHdr | None, bytes, int]:
    """Send one TX chain, return (receive header, frame, used entries it took) from the looped-back copy."""
    r = rig.add_chain(rig.RX, [], rx_lens or [rx_size or rig.rx_buf_size])
    poison(rig.mem, r)
    rig.publish(rig.RX)
    t = rig.add_chain(rig.TX, out, [])
    rig.publish(rig.TX)
    got = rig.complete(rig.RX, {r.head: r}, 1)
    rig.complete(rig.TX, {t.head: t}, 1)
    rig.release(r)
    if not got:
        return None, b"", 0
    data = written_bytes(rig.mem, got[0][0], got[0][1])
    return NetHdr.unpack(data.ljust(12, b"\0")), data[rig.hdr_len:], len(got)


@pytest.mark.req("NET-DEV-15", "NET-DEV-16", "NET-DEV-21", "NET-DEV-26")
def test_transmit_header_fields_not_trusted(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    ids = ("NET-DEV-15", "NET-DEV-16", "NET-DEV-21", "NET-DEV-26")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if not rig.offers(ring_layout, verdict, *ids):
            return
        # Checksum offloads on where offered: a device able to fill checksums is the one that could misuse them.
        feats = rig.features_for(extra=_bits(NetF.CSUM, NetF.GUEST_CSUM), layout=ring_layout)
        assert feats is not None
        rig.bring_up(feats, 64)
        if not rig.looped(verdict, *ids):
            return
        pkt = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src="10.0.0.1", dst="10.0.0.2") \
            / UDP(sport=4000, dport=4001, chksum=0xBAD1) / (b"payload-" * 20)
        frame = bytes(pkt)
        udp_csum_off = 14 + 20 + 6
        cases: list[tuple[str, str, NetHdr]] = [
            ("NET-DEV-15", f"unknown flag bits {UNKNOWN_TX_FLAGS:#x}", NetHdr(flags=UNKNOWN_TX_FLAGS)),
            ("NET-DEV-16", "NEEDS_CSUM clear, csum_start/offset at the UDP checksum",
             NetHdr(csum_start=34, csum_offset=6)),
            ("NET-DEV-16", "NEEDS_CSUM clear, csum_start/offset out of range", NetHdr(csum_start=0xFFF0,
                                                                                      csum_offset=0xFFFF)),
            ("NET-DEV-21", "gso NONE, hdr_len 0xffff", NetHdr(gso_type=GSO_NONE, hdr_len=0xFFFF)),
            ("NET-DEV-21", "gso NONE, hdr_len 3", NetHdr(gso_type=GSO_NONE, hdr_len=3)),
            ("NET-DEV-26", "bad UDP checksum, NEEDS_CSUM clear", NetHdr()),
        ]
        for rid, name, hdr in cases:
            raw = hdr.pack().ljust(rig.hdr_len, b"\0")
            rx_hdr, got, _ = _roundtrip(rig, split_at(raw + frame, [rig.hdr_len]))
            same = got == frame
            verdict.check(rid, rx_hdr is not None and same,
                          f"{name}: {'received' if rx_hdr else 'nothing received'}; frame "
                          f"{'unchanged' if same else 'changed'} (UDP checksum sent 0xbad1, received "
                          f"{got[udp_csum_off:udp_csum_off + 2].hex() or '-'})")
            if rid == "NET-DEV-26" and rx_hdr is not None:
                verdict.check(rid, not rx_hdr.flags & F_DATA_VALID,
                              f"bad checksum sent without NEEDS_CSUM came back with receive flags {rx_hdr.flags:#x} "
                              "(DATA_VALID vouches for it)")


@pytest.mark.req("NET-DEV-28", "NET-DEV-29", "NET-DEV-30", "NET-DEV-31", "NET-DEV-34", "NET-DEV-55")
def test_receive_header_without_offloads(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    ids = ("NET-DEV-28", "NET-DEV-29", "NET-DEV-30", "NET-DEV-34", "NET-DEV-55")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if not rig.offers(ring_layout, verdict, *ids, "NET-DEV-31"):
            return
        feats = rig.features_for(drop=_bits(*GUEST_OFFLOADS), layout=ring_layout)
        assert feats is not None
        rig.bring_up(feats, 64)
        if has(rig.offered, NetF.MRG_RXBUF):
            verdict.not_applicable("NET-DEV-31", "this check negotiates without VIRTIO_NET_F_MRG_RXBUF")
        else:
            verdict.not_offered("NET-DEV-31", "VIRTIO_NET_F_MRG_RXBUF not offered")
        if not rig.looped(verdict, *ids):
            return
        hdr = rig.tx_header()
        limit = rig.rx_buf_size - rig.hdr_len
        sizes = [60, 61, 128, 513, 1000, limit]
        pending: dict[int, Posted] = {}
        layouts: list[list[int]] = [[rig.rx_buf_size], [rig.hdr_len, limit], [4, 100, rig.rx_buf_size - 104]]
        for i in range(len(sizes)):
            p = rig.add_chain(rig.RX, [], layouts[i % len(layouts)])
            poison(rig.mem, p)
            pending[p.head] = p
        rig.publish(rig.RX)
        frames = [make_frame(100 + i, n) for i, n in enumerate(sizes)]
        for f in frames:
            rig.add_chain(rig.TX, [hdr, f], [])
        rig.publish(rig.TX)
        got = rig.complete(rig.RX, pending, len(frames))
        verdict.check("NET-DEV-29", len(got) == len(frames),
                      f"{len(frames)} frames sent, {len(got)} receive buffers used")
        for k, (p, n) in enumerate(got):
            data = written_bytes(rig.mem, p, n)
            h = NetHdr.unpack(data.ljust(12, b"\0"))
            f = frames[k] if k < len(frames) else b""
            where = f"frame {k} ({len(f)} bytes) in buffer {p.head}"
            verdict.check("NET-DEV-29", n == rig.hdr_len + len(f) and data[rig.hdr_len:] == f,
                          f"{where}: one used entry holds len {n} (expected {rig.hdr_len + len(f)}), data "
                          f"{'whole' if data[rig.hdr_len:] == f else 'not the whole frame'}")
            verdict.check("NET-DEV-30", h.num_buffers == 1, f"{where}: num_buffers {h.num_buffers}, expected 1")
            verdict.check("NET-DEV-28", h.num_buffers == 1, f"{where}: num_buffers {h.num_buffers} for 1 buffer used")
            verdict.check("NET-DEV-34", h.flags == 0, f"{where}: flags {h.flags:#x} without GUEST_CSUM")
            verdict.check("NET-DEV-55", h.gso_type == GSO_NONE,
                          f"{where}: gso_type {h.gso_type:#x} without guest GSO features")
        rig.ring(rig.TX).used()


def _long_frame(seq: int, length: int) -> bytes:
    """The test frame of ``length`` bytes; past the longest IPv4 test frame, that one padded with zeros."""
    return make_frame(seq, min(length, MAX_LEN)) + bytes(max(0, length - MAX_LEN))


#: MTUs the limits are also tried at on a target built from spec options (the bounds NET-DEV-02 allows).
MTU_EDGES = (68, 65535)


@pytest.mark.req("NET-DEV-02", "NET-DEV-05", "NET-DEV-06")
def test_mtu_limits(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """The MTU the device reports is the one it enforces: on the target as it is and, where the bench builds the
    device from options, at the smallest and largest MTU the spec allows."""
    specs = [None, *(bench.variant(mtu=m, replace=True) for m in MTU_EDGES if bench.configurable)]
    for spec in specs:
        with bench.rig(spec, mem_size=RING_MEM_SIZE) as rig:
            if not rig.offers(ring_layout, verdict, "NET-DEV-02", "NET-DEV-05", "NET-DEV-06") or \
                    not _mtu_limits(rig, verdict, ring_layout):
                return


def _mtu_limits(rig: Rig, verdict: Verdict, layout: Layout) -> bool:
    """NET-DEV-05/06 on one device; False when there is nothing more to judge (MTU not offered, no wire)."""
    feats = rig.features_for(extra=1 << NetF.MTU, layout=layout)
    if feats is None or not has(feats, NetF.MTU):
        for rid in ("NET-DEV-02", "NET-DEV-05", "NET-DEV-06"):
            verdict.not_offered(rid, "VIRTIO_NET_F_MTU not offered")
        return False
    rig.bring_up(feats, 64)
    mtu = rig.drv.mtu() or 0
    verdict.check("NET-DEV-02", 68 <= mtu <= 65535, f"{rig.pci.name}: mtu = {mtu}")
    if not rig.looped(verdict, "NET-DEV-05", "NET-DEV-06"):
        return False
    hdr = rig.tx_header()
    room = rig.hdr_len + mtu + 14 + 256  # big enough for an oversize frame, so only the MTU rule can stop it
    # NET-DEV-06: exactly mtu + Ethernet header, forwarded whole.
    full = _long_frame(1, mtu + 14)
    _, got, used = _roundtrip(rig, [hdr, full], rx_size=room)
    verdict.check("NET-DEV-06", got == full and used == 1,
                  f"mtu {mtu}: frame of {len(full)} bytes came back as {used} buffer(s) of {len(got)} bytes "
                  f"({'intact' if got == full else 'not intact'})")
    # An 802.1Q tag is part of the link-layer header: a tagged frame of mtu + 18 bytes is forwarded whole.
    tagged = _tagged(_long_frame(5, mtu + 14))
    _, got, used = _roundtrip(rig, [hdr, tagged], rx_size=room)
    verdict.check("NET-DEV-06", got == tagged and used == 1,
                  f"mtu {mtu}: 802.1Q-tagged frame of {len(tagged)} bytes came back as {used} buffer(s) of "
                  f"{len(got)} bytes ({'intact' if got == tagged else 'not intact'})")
    # NET-DEV-05: longer frames never reach the receive queue; a marker frame proves the queue still runs.
    # Each oversize frame goes out in a burst of its own with a marker behind it (frames arriving together
    # are judged together, so one far too long must not be what gets the slightly long one dropped), then
    # all of them in one burst.
    over = [_long_frame(2, mtu + 15), _long_frame(3, mtu + 14 + 200), _long_frame(6, mtu + 18),
            _tagged(_long_frame(7, mtu + 15)), _tagged(_long_frame(8, mtu + 14), tpid=b"\x81\x01")]
    bursts = [[f] for f in over] + [over]
    pending: dict[int, Posted] = {}  # buffers a conforming device leaves posted serve the next burst
    for k, burst in enumerate(bursts):
        for _ in range(len(burst) + 1 - len(pending)):
            p = rig.add_chain(rig.RX, [], [room])
            pending[p.head] = p
        rig.publish(rig.RX)
        marker = _long_frame(40 + k, min(100, mtu + 14))  # within the smallest MTU too
        for f in [*burst, marker]:
            rig.add_chain(rig.TX, [hdr, f], [])
        rig.publish(rig.TX)
        got_all = rig.complete(rig.RX, pending, 1)
        extra = rig.complete(rig.RX, pending, len(burst), timeout=rig.quiet, expected=False)
        lens = [n - rig.hdr_len for _, n in got_all + extra]
        first = written_bytes(rig.mem, got_all[0][0], got_all[0][1])[rig.hdr_len:] if got_all else b""
        verdict.check("NET-DEV-05", first == marker and len(lens) == 1,
                      f"mtu {mtu}: sent frames of {[len(f) for f in burst]} bytes in one burst "
                      f"(802.1Q-tagged, TPID 0x8100 or 0x8101: {[len(f) for f in burst if f[12] == 0x81]}) "
                      f"then a {len(marker)}-byte marker; received lengths {lens} (only the marker: "
                      f"nothing above {mtu + 14}, {mtu + 18} with an 802.1Q tag, may be delivered)")
        for p, _ in got_all + extra:
            rig.release(p)
        rig.ring(rig.TX).used()
    return True


#: Receive buffer size of the merged-buffer check: smaller than most frames, so packets must spread.
MERGED_UNIT = 128
#: Longest frame the checks send (1500-byte payload and the Ethernet header), within any MTU the target offers.
ETH_FRAME_MAX = 1514


def merged_up(rig: Rig, verdict: Verdict, layout: Layout, ids: Sequence[str], queue_size: int) -> bool:
    """Bring ``rig`` up in ``layout`` with VIRTIO_NET_F_MRG_RXBUF and no other receive offload, rings of
    ``queue_size``; False with ``ids`` reported not offered, or not applicable where frames do not come back."""
    if not rig.offers(layout, verdict, *ids):
        return False
    feats = rig.features_for(extra=1 << NetF.MRG_RXBUF, drop=_bits(*GUEST_OFFLOADS[:-1]), layout=layout)
    return rig.up_offered(verdict, ids, feats, "VIRTIO_NET_F_MRG_RXBUF not offered", queue_size=queue_size,
                          needs=NetF.MRG_RXBUF) is not None


def _buffers_for(packet: int, unit: int) -> int:
    return -(-packet // unit)


@pytest.mark.req("NET-DEV-28", "NET-DEV-31", "NET-DEV-32", "NET-DEV-33")
def test_receive_merged_buffers(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """With VIRTIO_NET_F_MRG_RXBUF a packet larger than one receive buffer takes several: num_buffers in the
    first header counts them, all but the last are full, and they become used together (on split rings the used
    idx publications are watched too; a packed ring has no used idx, its buffers are judged as they come)."""
    ids = ("NET-DEV-28", "NET-DEV-31", "NET-DEV-32", "NET-DEV-33")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if not merged_up(rig, verdict, ring_layout, ids, 256):
            return
        hl = rig.hdr_len
        unit = MERGED_UNIT
        # Every chain holds `unit` bytes (NET-DRV-55: at least a header), in one, two or three descriptors cut at
        # every offset of the header and inside the frame; packets that fill their last buffer exactly, or spill
        # one byte into another.
        layouts = [[unit], *([c, unit - c] for c in range(1, hl + 1)), [40, unit - 40], [1, hl, unit - hl - 1]]
        sizes = [60, unit - hl, unit - hl + 1, 2 * unit - hl, 2 * unit - hl + 1, 300, 1000, ETH_FRAME_MAX,
                 3 * unit - hl]
        frames = [make_frame(300 + i, n) for i, n in enumerate(sizes)]
        need = sum(_buffers_for(hl + len(f), unit) for f in frames)
        pending: dict[int, Posted] = {}
        for i in range(need + 4):  # a few to spare: a device filling buffers part-way would take them
            p = rig.add_chain(rig.RX, [], layouts[i % len(layouts)])
            poison(rig.mem, p)
            pending[p.head] = p
        rig.publish(rig.RX)
        split = ring_layout == "split"
        start = rig.rx.used_idx() if split else 0
        hdr = rig.tx_header()
        with rig.dma_watch({rig.RX: rig.rx} if split else None) as watch:
            for f in frames:
                rig.add_chain(rig.TX, [hdr, f], [])
            rig.publish(rig.TX)
            got = rig.complete(rig.RX, pending, need)
        rig.ring(rig.TX).used()
        k = 0
        ends: list[int] = []  # used entries consumed at the end of each packet
        for j, f in enumerate(frames):
            where = f"frame {j} ({len(f)} bytes, {hl + len(f)} with the header, buffers of {unit})"
            if k >= len(got):
                verdict.check("NET-DEV-31", False, f"{where}: no used entry left ({len(got)} in all)")
                break
            head_data = written_bytes(rig.mem, got[k][0], got[k][1])
            nb = NetHdr.unpack(head_data.ljust(12, b"\0")).num_buffers
            span = got[k:k + max(nb, 1)]
            lens = [n for _, n in span]
            data = b"".join(written_bytes(rig.mem, p, n) for p, n in span)
            whole = len(span) == nb and sum(lens) == hl + len(f) and data[hl:] == f
            verdict.check("NET-DEV-31", whole,
                          f"{where}: num_buffers {nb}; the next {len(span)} used entries hold {sum(lens)} bytes, "
                          f"frame {'intact' if data[hl:] == f else 'not intact'}")
            verdict.check("NET-DEV-28", nb == len(span) and nb == _buffers_for(sum(lens), unit) and whole,
                          f"{where}: num_buffers {nb} for used entries of lens {lens}")
            full = [n == p.writable_len for p, n in span[:-1]]
            verdict.check("NET-DEV-32", all(full),
                          f"{where}: used lens {lens} of buffers of {[p.writable_len for p, _ in span]} bytes "
                          "(all but the last must be full)")
            k += len(span)
            ends.append(k)
        for p, _ in got:
            rig.release(p)
        # NET-DEV-33 (used idx): every publication of receiveq1's used idx ends on a packet boundary.
        if watch.available and split:
            published = [(w.value - start) & 0xFFFF for w in watch.idx_writes if w.queue == rig.RX]
            inside = [v for v in published if v not in ends]
            verdict.check("NET-DEV-33", bool(published) and not inside,
                          f"used idx published at {published} entries, packets end at {ends}: "
                          f"{inside or 'no'} publication(s) split a packet")
        # NET-DEV-33 (no partial packet): a packet too big for the buffers on offer is not delivered in part.
        short = dict(pending)  # the spares still posted, and two more
        for _ in range(2):
            p = rig.add_chain(rig.RX, [], [unit])
            poison(rig.mem, p)
            short[p.head] = p
        rig.publish(rig.RX)
        room = sum(p.writable_len for p in short.values())
        if room + 100 > ETH_FRAME_MAX:  # the device left too many buffers behind above (already reported)
            return
        big, small = make_frame(400, room + 100), make_frame(401, 60)
        rig.add_chain(rig.TX, [hdr, big], [])
        rig.add_chain(rig.TX, [hdr, small], [])
        rig.publish(rig.TX)
        first = rig.complete(rig.RX, short, 1)
        more = rig.complete(rig.RX, short, 1, timeout=rig.quiet, expected=False)
        rig.ring(rig.TX).used()
        seen = [written_bytes(rig.mem, p, n) for p, n in first + more]
        for p, _ in first + more:
            rig.release(p)
        verdict.check("NET-DEV-33", len(seen) == 1 and seen[0][hl:] == small
                      and NetHdr.unpack(seen[0].ljust(12, b"\0")).num_buffers == 1,
                      f"{len(short)} buffers of {room} bytes in all posted, a {len(big)}-byte then a "
                      f"{len(small)}-byte frame sent: "
                      f"{len(seen)} used entries ({[len(x) - hl for x in seen]} frame bytes), expected only the "
                      "small frame, whole, in one buffer")
