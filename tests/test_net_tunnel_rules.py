"""The UDP-tunnel GSO driver rows of :mod:`testbenches.monitor.net_offload_rules` (NET-DRV-27/28/29/30/44/46/47):
each passes a well-formed tunnel GSO buffer and flags a hostile one (scapy-built VXLAN / GENEVE frames)."""

from __future__ import annotations

import struct

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet
from scapy.utils import checksum

from backend.virtio.features import F, NetF, bits
from backend.virtio.net_hdr import (
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    TUNNEL_FIELDS,
    TUNNEL_FIELDS_AT,
    NetHdr,
    hdr_size,
)
from testbenches.monitor.net_hdr_rules import NetConfig, TxBuffer
from testbenches.monitor.net_offload_rules import NET_DRV_TUNNEL_ROWS, TUNNEL_TX_RULES, tunnel
from testbenches.monitor.virtio_pci_rules import Finding

BASE = bits(F.VERSION_1, NetF.MAC, NetF.MTU, NetF.CSUM, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_USO,
            NetF.HOST_UDP_TUNNEL_GSO)
WITH_CSUM = BASE | bits(NetF.HOST_UDP_TUNNEL_GSO_CSUM)
CONFIG = NetConfig(mtu=1500, mac=bytes.fromhex("020000000001"))


def _sum(data: bytes) -> int:
    return ~checksum(data) & 0xFFFF


def frame(*, inner_v6: bool = False, geneve: bool = False, outer: str = "zero") -> tuple[bytes, int, int, int]:
    """A tunnel GSO frame as a driver hands it (inner checksum: pseudo-header sum) with its outer UDP checksum
    ``outer`` ("zero", "pseudo": the pseudo-header sum, "complete"); and outer_th_offset, inner_nh_offset,
    csum_start."""
    il3: Packet = IPv6(src="fd01::1", dst="fd01::2") if inner_v6 else IP(src="10.1.0.1", dst="10.1.0.2")
    tun: Packet = GENEVE(vni=1, proto=0x6558) if geneve else VXLAN(vni=1)
    pkt = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40000, dport=6081 if geneve else 4789) / tun / \
        Ether() / il3 / TCP(sport=1, dport=2) / (b"p" * 3000)
    raw = bytearray(bytes(pkt))
    outer_th, inner_nh = 34, 34 + 8 + 8 + 14
    start = inner_nh + (40 if inner_v6 else 20)
    tlen = len(raw) - start
    pseudo = raw[inner_nh + 8:inner_nh + 40] + struct.pack("!I", tlen) + b"\0\0\0\6" if inner_v6 else \
        raw[inner_nh + 12:inner_nh + 20] + b"\0\6" + struct.pack("!H", tlen)
    raw[start + 16:start + 18] = _sum(bytes(pseudo)).to_bytes(2, "big")
    ulen = len(raw) - outer_th
    opseudo = raw[26:34] + b"\0\x11" + struct.pack("!H", ulen)
    raw[outer_th + 6:outer_th + 8] = b"\0\0"
    value = {"zero": 0, "pseudo": _sum(bytes(opseudo)),
             "complete": checksum(bytes(opseudo) + bytes(raw[outer_th:])) or 0xFFFF}[outer]
    raw[outer_th + 6:outer_th + 8] = value.to_bytes(2, "big")
    return bytes(raw), outer_th, inner_nh, start


def buffer(features: int, hdr: NetHdr, eth: bytes, offsets: tuple[int, int]) -> TxBuffer:
    head = bytearray(hdr.pack().ljust(hdr_size(features), b"\0"))
    TUNNEL_FIELDS.pack_into(head, TUNNEL_FIELDS_AT, *offsets)
    data = bytes(head) + eth
    return TxBuffer(data, len(data), features, CONFIG, "test")


def good(features: int, *, inner_v6: bool = False, geneve: bool = False, csum: bool = False) -> TxBuffer:
    eth, outer_th, inner_nh, start = frame(inner_v6=inner_v6, geneve=geneve, outer="pseudo" if csum else "zero")
    gso = (GSO_TCPV6 | GSO_UDP_TUNNEL_IPV6) if inner_v6 else (GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4)
    hdr = NetHdr(F_NEEDS_CSUM | (F_UDP_TUNNEL_CSUM if csum else 0), gso, 0, 1000, start, 16)
    return buffer(features, hdr, eth, (outer_th, inner_nh))


def judged(tx: TxBuffer) -> list[Finding]:
    return [f for rule in TUNNEL_TX_RULES if (f := rule(tx)) is not None]


def failing(tx: TxBuffer) -> set[str]:
    return {f.req_id for f in judged(tx) if not f.ok}


def _with(tx: TxBuffer, **changes: int) -> NetHdr:
    hdr = tx.hdr
    assert hdr is not None
    fields = {k: getattr(hdr, k) for k in ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")}
    fields.update(changes)
    return NetHdr(**fields)


@pytest.mark.parametrize("inner_v6", [False, True])
@pytest.mark.parametrize("geneve", [False, True])
@pytest.mark.parametrize("csum", [False, True])
def test_good_tunnel_buffers_pass(inner_v6: bool, geneve: bool, csum: bool) -> None:
    tx = good(WITH_CSUM if csum else BASE, inner_v6=inner_v6, geneve=geneve, csum=csum)
    assert tunnel(tx.frame_head) is not None
    findings = judged(tx)
    assert not failing(tx), findings
    want = {"NET-DRV-27", "NET-DRV-44"} | ({"NET-DRV-28", "NET-DRV-29", "NET-DRV-46"} if csum else
                                           {"NET-DRV-30", "NET-DRV-47"})
    assert {f.req_id for f in findings} == want


def _hostile() -> dict[str, TxBuffer]:
    v4 = good(BASE)
    v4c = good(WITH_CSUM, csum=True)
    eth_pseudo, th, nh, _ = frame(outer="pseudo")
    return {
        # inner IPv4 marked TUNNEL_IPV6
        "NET-DRV-27": buffer(BASE, _with(v4, gso_type=GSO_TCPV4 | GSO_UDP_TUNNEL_IPV6), v4.frame_head, (th, nh)),
        # outer checksum left to the device without _CSUM negotiated (flag set, as the driver would)
        "NET-DRV-28": buffer(BASE, _with(v4c, flags=F_NEEDS_CSUM), eth_pseudo, (th, nh)),
        # outer checksum left to the device, _CSUM negotiated, but no UDP_TUNNEL_CSUM flag
        "NET-DRV-29": buffer(WITH_CSUM, _with(v4c, flags=F_NEEDS_CSUM), eth_pseudo, (th, nh)),
        # UDP_TUNNEL_CSUM set without the feature
        "NET-DRV-30": buffer(BASE, _with(v4, flags=F_NEEDS_CSUM | F_UDP_TUNNEL_CSUM), v4.frame_head, (th, nh)),
        # inner_nh_offset past the inner network header
        "NET-DRV-44": buffer(BASE, _with(v4), v4.frame_head, (th, nh + 14)),
        # UDP_TUNNEL_CSUM with an outer checksum of 0x1234
        "NET-DRV-46": buffer(WITH_CSUM, _with(v4c), eth_pseudo[:th + 6] + b"\x12\x34" + eth_pseudo[th + 8:], (th, nh)),
        # no _CSUM, an outer checksum that is not 0 and not complete
        "NET-DRV-47": buffer(BASE, _with(v4), v4.frame_head[:th + 6] + b"\x12\x34" + v4.frame_head[th + 8:],
                             (th, nh)),
    }


@pytest.mark.parametrize("rid", NET_DRV_TUNNEL_ROWS)
def test_each_row_flags_its_hostile_buffer(rid: str) -> None:
    assert rid in failing(_hostile()[rid])


def test_complete_outer_checksum_without_csum_passes() -> None:
    eth, th, nh, start = frame(outer="complete")
    tx = buffer(BASE, NetHdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4, 0, 1000, start, 16), eth, (th, nh))
    assert not failing(tx)
    assert "NET-DRV-47" in {f.req_id for f in judged(tx)}


def test_non_tunnel_frames_give_no_opportunity() -> None:
    plain = bytes(Ether() / IP() / TCP() / (b"x" * 100))
    tx = buffer(WITH_CSUM, NetHdr(F_NEEDS_CSUM, GSO_TCPV4, 0, 1000, 34, 16), plain, (0, 0))
    assert judged(tx) == []
