"""models/virtio_net/gso.py: the packets a GSO request becomes, judged with scapy (lengths, ids, sequence numbers,
flags, checksums, reassembly), and the requests it refuses."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Packet

import testbenches.conformance.checks.test_net_tunnel_gso as tunnel_check
from backend.virtio.features import F, NetF, bits
from backend.virtio.net_hdr import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    NetHdr,
)
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.gso import Gso

ALL = bits(NetF.CSUM, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_ECN, NetF.HOST_UFO, NetF.HOST_USO)
L2 = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")


def _l3(v6: bool) -> Packet:
    return IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2", id=0xFFFE)


def _request(gso: int, frame: bytes, mss: int, v6: bool, tcp: bool) -> NetHdr:
    start = 14 + (40 if v6 else 20)
    return NetHdr(F_NEEDS_CSUM, gso, 0, mss, start, 16 if tcp else 6)


def _recomputed(pkt: Packet, transport: bool = True) -> Packet:
    """``pkt`` with every length and checksum scapy computes filled afresh (the IP ones only, not ``transport``)."""
    again = pkt.copy()
    layers = ((IP, ("len", "chksum")), (IPv6, ("plen",)), (TCP, ("chksum",)), (UDP, ("len", "chksum")))
    for layer, fields in layers if transport else layers[:2]:
        if again.haslayer(layer):
            for name in fields:
                delattr(again[layer], name)
    return Ether(bytes(again))


def _sound(pkt: Packet, transport: bool = True) -> bool:
    fresh = _recomputed(pkt, transport)
    return bytes(fresh) == bytes(pkt)


@settings(max_examples=12, deadline=None, database=None, derandomize=True)
@given(v6=st.booleans(), size=st.integers(0, 9000), mss=st.integers(200, 1460), flags=st.sampled_from(["A", "PA",
       "FPA", "CA", "FPAC"]), seq=st.integers(0, 2**32 - 1), seed=st.integers(0, 2**16))
def test_tso_segments(v6: bool, size: int, mss: int, flags: str, seq: int, seed: int) -> None:
    payload = random.Random(seed).randbytes(size)
    frame = bytes(L2 / _l3(v6) / TCP(sport=1, dport=2, seq=seq, flags=flags) / payload)
    gso = (GSO_TCPV6 if v6 else GSO_TCPV4) | GSO_ECN
    out = Gso().segment(_request(gso, frame, mss, v6, True), frame, ALL)
    assert out is not None and len(out) == max(1, -(-size // mss))
    got = b""
    for k, raw in enumerate(out):
        pkt = Ether(raw)
        assert _sound(pkt)
        data = bytes(pkt[TCP].payload)
        assert len(data) <= mss and int(pkt[TCP].seq) == (seq + len(got)) % 2**32
        last = k == len(out) - 1
        assert bool(pkt[TCP].flags.F) == ("F" in flags and last) and bool(pkt[TCP].flags.P) == ("P" in flags and last)
        assert bool(pkt[TCP].flags.C) == ("C" in flags and k == 0)
        if not v6:
            assert int(pkt[IP].id) == (0xFFFE + k) & 0xFFFF
        got += data
    assert got == payload


@settings(max_examples=8, deadline=None, database=None, derandomize=True)
@given(v6=st.booleans(), size=st.integers(0, 6000), mss=st.integers(200, 1472), seed=st.integers(0, 2**16))
def test_uso_datagrams(v6: bool, size: int, mss: int, seed: int) -> None:
    payload = random.Random(seed).randbytes(size)
    frame = bytes(L2 / _l3(v6) / UDP(sport=1, dport=2) / payload)
    out = Gso().segment(_request(GSO_UDP_L4, frame, mss, v6, False), frame, ALL)
    assert out is not None and len(out) == max(1, -(-size // mss))
    pkts = [Ether(raw) for raw in out]
    assert all(_sound(p) and len(p[UDP].payload) <= mss for p in pkts)
    assert b"".join(bytes(p[UDP].payload) for p in pkts) == payload


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_ufo_fragments_reassemble(v6: bool) -> None:
    payload = random.Random(3).randbytes(5000)
    frame = bytes(L2 / _l3(v6) / UDP(sport=1, dport=2) / payload)
    out = Gso().segment(_request(GSO_UDP, frame, 1403, v6, False), frame, ALL)
    assert out is not None and len(out) == 4  # 5008 bytes of datagram in 1400-byte pieces
    pkts = [Ether(raw) for raw in out]
    if v6:
        frags = [p[IPv6ExtHdrFragment] for p in pkts]
        assert {int(f.id) for f in frags} == {frags[0].id} and [int(f.m) for f in frags] == [1, 1, 1, 0]
        data = b"".join(bytes(f.payload) for f in frags)
        whole = Ether(bytes(L2 / _l3(True) / UDP(sport=1, dport=2) / payload))
        assert data == bytes(whole[UDP])
    else:
        assert all(_sound(p, transport=False) for p in pkts) and {int(p[IP].id) for p in pkts} == {0xFFFE}
        assert [int(p[IP].flags.MF) for p in pkts] == [1, 1, 1, 0] and [int(p[IP].frag) for p in pkts] == \
            [0, 175, 350, 525]
        data = b"".join(bytes(p[IP].payload) for p in pkts)
        whole = Ether(bytes(L2 / _l3(False) / UDP(sport=1, dport=2) / payload))
        assert data == bytes(whole[UDP])  # the datagram with its checksum completed


def test_small_request_is_one_whole_packet() -> None:
    frame = bytes(L2 / _l3(False) / TCP(sport=1, dport=2, flags="FPA") / b"abc")
    out = Gso().segment(_request(GSO_TCPV4, frame, 1000, False, True), frame, ALL)
    assert out is not None and len(out) == 1 and _sound(Ether(out[0])) and Ether(out[0])[TCP].flags == "FPA"


TCP4 = bytes(L2 / _l3(False) / TCP(sport=1, dport=2) / bytes(3000))
GOOD = NetHdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 16)
REFUSED = {
    "feature not negotiated": (GOOD, ALL & ~bits(NetF.HOST_TSO4)),
    "ECN without HOST_ECN": (NetHdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 54, 1000, 34, 16),
                             ALL & ~bits(NetF.HOST_ECN)),
    "UDP-tunnel bit": (NetHdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4, 54, 1000, 34, 16), ALL),
    "NEEDS_CSUM clear": (NetHdr(0, GSO_TCPV4, 54, 1000, 34, 16), ALL),
    "gso_size 0": (NetHdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 0, 34, 16), ALL),
    "csum_start not at TCP": (NetHdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 30, 16), ALL),
    "csum_offset not at the checksum": (NetHdr(F_NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 6), ALL),
    "TCPV6 on IPv4": (NetHdr(F_NEEDS_CSUM, GSO_TCPV6, 54, 1000, 34, 16), ALL),
    "UDP_L4 on TCP": (NetHdr(F_NEEDS_CSUM, GSO_UDP_L4, 54, 1000, 34, 6), ALL),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_request_is_dropped(case: str) -> None:
    hdr, negotiated = REFUSED[case]
    assert Gso().segment(hdr, TCP4, negotiated) is None
    assert Gso().segment(GOOD, TCP4, ALL) is not None
    assert Gso().segment(GOOD, TCP4[:-1], ALL) is None  # shorter than the IP total length says


def test_hdr_len_is_not_read() -> None:
    for hdr_len in (0, 3, 0xFFFF):
        hdr = NetHdr(F_NEEDS_CSUM, GSO_TCPV4, hdr_len, 1000, 34, 16)
        assert Gso().segment(hdr, TCP4, ALL) == Gso().segment(GOOD, TCP4, ALL)


@pytest.mark.parametrize("offer", [bits(NetF.HOST_TSO4), bits(NetF.CSUM, NetF.HOST_ECN),
                                   bits(NetF.CSUM, NetF.HOST_UFO, NetF.HOST_ECN)])
def test_model_refuses_an_offer_against_the_dependency_table(offer: int) -> None:
    with pytest.raises(ValueError, match=r"NETFEAT-DEV-0[56]"):
        VirtioNetDevice(features=bits(F.VERSION_1) | offer)


# --- UDP-tunnel GSO (models/virtio_net/gso_tunnel.py) ------------------------------------------------------------

TUNNEL_ALL = bits(NetF.CSUM, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_USO, NetF.HOST_UDP_TUNNEL_GSO,
                  NetF.HOST_UDP_TUNNEL_GSO_CSUM)


@pytest.mark.parametrize("outer_v6", [False, True])
@pytest.mark.parametrize("inner_v6", [False, True])
@pytest.mark.parametrize("tcp", [False, True])
@pytest.mark.parametrize("csum", [False, True])
def test_tunnel_segments(outer_v6: bool, inner_v6: bool, tcp: bool, csum: bool) -> None:
    case = tunnel_check.Case(outer_v6, inner_v6, tcp, outer_v6 != inner_v6, 2500, 700, csum)
    sent = tunnel_check.build(case, random.Random(3))
    out = Gso().segment(sent.hdr, sent.partial, TUNNEL_ALL, sent.offsets)
    assert out is not None and len(out) == 4
    assert tunnel_check.segment_problems(sent, case.mss, out) == []
    outer_csum = [int.from_bytes(p[sent.offsets[0] + 6:sent.offsets[0] + 8], "big") for p in out]
    assert all(outer_csum) if csum else not any(outer_csum)


def _tunnel_refused() -> dict[str, tuple[NetHdr, tuple[int, int], int]]:
    sent = tunnel_check.build(tunnel_check.Case(False, False, True, False, 2500, 700, True), random.Random(4))
    h, (th, nh) = sent.hdr, sent.offsets

    def hdr(**changes: int) -> NetHdr:
        return replace(h, **changes)

    return {
        "both tunnel bits": (hdr(gso_type=h.gso_type | GSO_UDP_TUNNEL_IPV6), (th, nh), TUNNEL_ALL),
        "NEEDS_CSUM clear": (hdr(flags=h.flags & ~F_NEEDS_CSUM), (th, nh), TUNNEL_ALL),
        "DATA_VALID": (hdr(flags=h.flags | F_DATA_VALID), (th, nh), TUNNEL_ALL),
        "no inner gso_type": (hdr(gso_type=GSO_UDP_TUNNEL_IPV4), (th, nh), TUNNEL_ALL),
        "UDP_TUNNEL_CSUM without _CSUM": (h, (th, nh), TUNNEL_ALL & ~bits(NetF.HOST_UDP_TUNNEL_GSO_CSUM)),
        "tunnel bit without the feature": (h, (th, nh), ALL),
        "outer_th_offset off": (h, (th + 2, nh), TUNNEL_ALL),
        "inner_nh_offset off": (h, (th, nh + 14), TUNNEL_ALL),
        "TUNNEL_IPV6 on an inner IPv4 header": (hdr(gso_type=GSO_TCPV4 | GSO_UDP_TUNNEL_IPV6), (th, nh), TUNNEL_ALL),
        "UDP_TUNNEL_CSUM without a tunnel bit": (hdr(gso_type=GSO_TCPV4), (th, nh), TUNNEL_ALL),
    }


@pytest.mark.parametrize("case", sorted(_tunnel_refused()))
def test_malformed_tunnel_request_is_dropped(case: str) -> None:
    sent = tunnel_check.build(tunnel_check.Case(False, False, True, False, 2500, 700, True), random.Random(4))
    hdr, offsets, negotiated = _tunnel_refused()[case]
    assert Gso().segment(hdr, sent.partial, negotiated, offsets) is None
    assert Gso().segment(sent.hdr, sent.partial, TUNNEL_ALL, sent.offsets) is not None


@pytest.mark.parametrize("offer", [bits(NetF.CSUM, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_UDP_TUNNEL_GSO),
                                   bits(NetF.CSUM, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_USO,
                                        NetF.HOST_UDP_TUNNEL_GSO_CSUM)])
def test_model_refuses_a_tunnel_offer_against_the_dependency_table(offer: int) -> None:
    with pytest.raises(ValueError, match="HOST_UDP_TUNNEL_GSO"):
        VirtioNetDevice(features=bits(F.VERSION_1) | offer)
