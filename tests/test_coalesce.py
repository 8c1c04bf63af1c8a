"""Receive coalescing of the model (models/virtio_net/coalesce.py), judged with scapy: runs of one flow become one
packet holding their data with the headers a driver needs to segment it again; what must not be coalesced is not."""

from __future__ import annotations

from collections.abc import Sequence

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import checksum

from backend.virtio.features import F, NetF, bits
from backend.virtio.net_hdr import F_NEEDS_CSUM, F_RSC_INFO, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, HDR_SIZE, NetHdr
from models.virtio_net.coalesce import Coalesced, Coalescer
from models.virtio_net.wire import FrameBatch
from tests.test_model_device import Guest

TSO = bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6)
USO = bits(NetF.GUEST_CSUM, NetF.GUEST_USO4, NetF.GUEST_USO6)
RXBUF = 0x80000  # receive buffers in the model test's guest memory


def tcp_burst(sizes: Sequence[int], *, v6: bool = False, flags: Sequence[str] | None = None,
              seq: int = 0xFFFFFF00) -> list[bytes]:
    out = []
    for k, n in enumerate(sizes):
        l3: Packet = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2", id=k)
        f = flags[k] if flags else "A"
        eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
        out.append(bytes(eth / l3 / TCP(sport=1, dport=2, seq=seq, ack=9, flags=f) / (bytes([k]) * n)))
        seq = (seq + n) & 0xFFFFFFFF
    return out


def udp_burst(sizes: Sequence[int], *, v6: bool = False) -> list[bytes]:
    l3: Packet = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    eth = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
    return [bytes(eth / l3 / UDP(sport=1, dport=2) / (bytes([k]) * n)) for k, n in enumerate(sizes)]


def completed(packet: Coalesced) -> bytes:
    """The packet with its transport checksum finished as a driver does from csum_start/csum_offset."""
    g = packet.gso
    at = g.csum_start + g.csum_offset
    folded = checksum(packet[g.csum_start:])
    return bytes(packet[:at]) + (folded or 0xFFFF).to_bytes(2, "big") + bytes(packet[at + 2:])


def valid(frame: bytes) -> bool:
    pkt = Ether(frame)
    l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    assert l4 is not None
    got = int(l4.chksum)
    del pkt[type(l4)].chksum
    if pkt.getlayer(IP) is not None:
        del pkt[IP].chksum
    again = Ether(bytes(pkt))
    ip_ok = again.getlayer(IP) is None or int(again[IP].chksum) == int(Ether(frame)[IP].chksum)
    return ip_ok and int(again[type(l4)].chksum) == got


def test_tcp_run_is_one_packet_with_gso_fields() -> None:
    frames = tcp_burst([100, 100, 100, 40])
    out = Coalescer().coalesce(frames, TSO)
    assert len(out) == 1 and isinstance(out[0], Coalesced)
    p = out[0]
    g = p.gso
    assert (g.gso_type, g.gso_size, g.hdr_len, g.csum_start, g.csum_offset, g.segments) == (GSO_TCPV4, 100, 54, 34,
                                                                                           16, 4)
    pkt = Ether(completed(p))
    assert bytes(pkt[TCP].payload) == b"".join(f[54:] for f in frames)
    assert pkt[TCP].seq == 0xFFFFFF00 and pkt[IP].len == len(p) - 14
    assert valid(completed(p))
    h = Coalescer().header(p, 1, TSO)
    assert h.flags == F_NEEDS_CSUM and h.gso_size == 100 and h.hdr_len == 54


def test_ipv6_and_udp_runs() -> None:
    p6 = Coalescer().coalesce(tcp_burst([64, 64, 10], v6=True), TSO)
    assert len(p6) == 1 and isinstance(p6[0], Coalesced) and p6[0].gso.gso_type == GSO_TCPV6
    assert valid(completed(p6[0]))
    for v6 in (False, True):
        out = Coalescer().coalesce(udp_burst([200, 200, 199], v6=v6), USO)
        assert len(out) == 1 and isinstance(out[0], Coalesced)
        assert out[0].gso.gso_type == GSO_UDP_L4 and out[0].gso.gso_size == 200
        assert Ether(completed(out[0]))[UDP].len == 8 + 599 and valid(completed(out[0]))


def test_runs_break_where_segmenting_would_not_give_them_back() -> None:
    # a longer segment after the first, a segment after a short one, a gap in sequence numbers
    out = Coalescer().coalesce(tcp_burst([100, 120, 100, 50, 100]), TSO)
    assert [p.gso.segments if isinstance(p, Coalesced) else 1 for p in out] == [1, 2, 1, 1]
    gap = tcp_burst([100, 100])
    gap += tcp_burst([100], seq=5)
    assert [isinstance(p, Coalesced) for p in Coalescer().coalesce(gap, TSO)] == [True, False]


def test_flags_and_features() -> None:
    # SYN/FIN never taken in; PSH ends a run; without the gso feature of the flow nothing is coalesced
    out = Coalescer().coalesce(tcp_burst([100, 100, 100, 100], flags=["A", "AP", "A", "AF"]), TSO)
    assert [p.gso.segments if isinstance(p, Coalesced) else 1 for p in out] == [2, 1, 1]
    assert all(not isinstance(p, Coalesced) for p in Coalescer().coalesce(tcp_burst([50, 50]), USO))
    assert all(not isinstance(p, Coalesced) for p in Coalescer().coalesce(udp_burst([50, 50]), TSO))


def test_cwr_needs_guest_ecn() -> None:
    frames = tcp_burst([100, 100, 100, 100], flags=["A", "AC", "A", "A"])
    plain = Coalescer().coalesce(frames, TSO)
    assert [p.gso.segments if isinstance(p, Coalesced) else 1 for p in plain] == [1, 1, 2]
    assert not any(isinstance(p, Coalesced) and Ether(p)[TCP].flags.C for p in plain)
    ecn = Coalescer().coalesce(frames, TSO | bits(NetF.GUEST_ECN))
    assert [p.gso.segments if isinstance(p, Coalesced) else 1 for p in ecn] == [1, 3]
    last = ecn[1]
    assert isinstance(last, Coalesced) and last.gso.gso_type == GSO_TCPV4 | GSO_ECN


def test_bad_checksum_and_size_limit() -> None:
    frames = tcp_burst([100, 100, 100])
    bad = bytearray(frames[1])
    bad[-1] ^= 1
    out = Coalescer().coalesce([frames[0], bytes(bad), frames[2]], TSO)
    assert not any(isinstance(p, Coalesced) for p in out)  # nothing vouched for is put behind NEEDS_CSUM
    big = Coalescer().coalesce(tcp_burst([1460] * 50), TSO)
    assert all(len(p) - 14 <= 0xFFFF for p in big) and sum(len(p) - 54 for p in big) == 1460 * 50
    assert len(big) == 2 and all(isinstance(p, Coalesced) for p in big)


def test_rsc_ext_header() -> None:
    feats = TSO | bits(NetF.RSC_EXT)
    out = Coalescer().coalesce(tcp_burst([100, 100, 100]), feats)
    assert isinstance(out[0], Coalesced)
    h = Coalescer().header(out[0], 1, feats)
    assert h.flags == F_NEEDS_CSUM | F_RSC_INFO and (h.csum_start, h.csum_offset) == (3, 0)


def test_device_delivers_a_coalesced_packet_across_merged_buffers() -> None:
    """On the model: a burst from the wire with GUEST_TSO4 and MRG_RXBUF negotiated comes back as one packet spread
    over as many 2048-byte buffers as it needs, its header (num_buffers included) in the first."""
    base = bits(F.VERSION_1, F.ACCESS_PLATFORM, NetF.MRG_RXBUF)
    feats = base | TSO
    frames = tcp_burst([1000] * 10)
    with Guest(f"virtio-net,wire=none,features={feats:#x}") as g:
        rx, _tx = g.bring_up(feats)
        for k in range(8):
            rx.add_chain([(RXBUF + 0x800 * k, 0x800, True)])
        g.model.receive_batch(FrameBatch.of(frames))
        used = [rx.used_elem(k) for k in range(rx.used_idx())]
        data = b"".join(g.mem.read(RXBUF + 0x800 * head, n) for head, n in used)
    h = NetHdr.unpack(data)
    assert (h.flags, h.gso_type, h.gso_size, h.hdr_len, h.num_buffers) == (F_NEEDS_CSUM, GSO_TCPV4, 1000, 54,
                                                                             len(used))
    assert len(used) == -(-(HDR_SIZE + 54 + 10000) // 0x800)
    packet = data[HDR_SIZE:]
    assert packet[54:] == b"".join(f[54:] for f in frames)
    at = h.csum_start + h.csum_offset
    assert valid(packet[:at] + (checksum(packet[h.csum_start:]) or 0xFFFF).to_bytes(2, "big") + packet[at + 2:])
