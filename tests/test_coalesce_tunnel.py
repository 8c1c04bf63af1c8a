"""Receive coalescing of VXLAN/GENEVE flows (models/virtio_net/coalesce_tunnel.py), frames built and read with scapy."""

from __future__ import annotations

import struct

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet

from backend.virtio.features import NetF, bits
from backend.virtio.net_hdr import (
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
)
from models.virtio_net import offload
from models.virtio_net.coalesce import Coalesced
from models.virtio_net.coalesce_tunnel import TunnelCoalescer
from models.virtio_net.device import DEFAULT_FEATURES, VirtioNetDevice

GSO = bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_USO4, NetF.GUEST_USO6)
TUNNEL = GSO | bits(NetF.GUEST_UDP_TUNNEL_GSO)
TUNNEL_CSUM = TUNNEL | bits(NetF.GUEST_UDP_TUNNEL_GSO_CSUM)
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def tunnel_burst(n: int, mss: int, *, outer_v6: bool = False, inner_v6: bool = False, tcp: bool = True,
                 geneve: bool = False, outer_csum: bool = False) -> list[bytes]:
    out = []
    seq = 1000
    for k in range(n):
        outer: Packet = IPv6(src="fd00::1", dst="fd00::2") if outer_v6 else IP(src="10.0.0.1", dst="10.0.0.2", id=7 + k)
        udp = UDP(sport=5555, dport=6081 if geneve else 4789, chksum=None if outer_csum or outer_v6 else 0)
        tun: Packet = GENEVE(vni=9, proto=0x6558) if geneve else VXLAN(vni=9)
        inner: Packet = IPv6(src="fd01::1", dst="fd01::2") if inner_v6 else IP(src="10.1.0.1", dst="10.1.0.2", id=k)
        l4: Packet = TCP(sport=1, dport=2, seq=seq, ack=5, flags="A") if tcp else UDP(sport=1, dport=2)
        pkt = Ether(src=MAC1, dst=MAC2) / outer / udp / tun / Ether(src=MAC2, dst=MAC1) / inner / l4 \
            / (bytes([k]) * mss)
        out.append(bytes(pkt))
        seq += mss
    return out


@pytest.mark.parametrize("outer_v6,inner_v6,tcp,geneve", [(False, False, True, False), (False, True, True, True),
                                                            (True, False, False, False), (True, True, False, True)])
def test_tunnel_run_coalesced(outer_v6: bool, inner_v6: bool, tcp: bool, geneve: bool) -> None:
    frames = tunnel_burst(4, 300, outer_v6=outer_v6, inner_v6=inner_v6, tcp=tcp, geneve=geneve)
    c = TunnelCoalescer()
    out = c.coalesce(frames, TUNNEL)
    assert len(out) == 1 and isinstance(out[0], Coalesced)
    pkt, data = Ether(out[0]), out[0]
    hdr = c.header(out[0], 1, TUNNEL)
    inner_type = (GSO_TCPV6 if inner_v6 else GSO_TCPV4) if tcp else GSO_UDP_L4
    assert hdr.gso_type == inner_type | (GSO_UDP_TUNNEL_IPV6 if inner_v6 else GSO_UDP_TUNNEL_IPV4)
    assert hdr.flags == F_NEEDS_CSUM and hdr.gso_size == 300
    outer_th, inner_nh = struct.unpack("<HH", c.tunnel_header(out[0]))
    assert outer_th == (54 if outer_v6 else 34)
    inner_eth = pkt.getlayer(Ether, 2)
    assert inner_eth is not None
    assert inner_nh == len(data) - len(bytes(inner_eth)) + 14
    assert data[outer_th + 2:outer_th + 4] == (6081 if geneve else 4789).to_bytes(2, "big")
    assert int.from_bytes(data[outer_th + 4:outer_th + 6], "big") == len(data) - outer_th
    outer_ip = pkt.getlayer(IPv6 if outer_v6 else IP)
    if not outer_v6:
        assert outer_ip is not None and outer_ip.len == len(data) - 14 and outer_ip.id == 7
    # the inner checksum completed as the driver would: the inner frame is then whole and correct
    done = offload.complete_checksum(hdr.flags, hdr.csum_start, hdr.csum_offset, bytes(out[0]))
    assert done is not None and offload.checksum_verified(done[inner_nh - 14:])
    assert b"".join(f[-300:] for f in frames) == data[hdr.hdr_len:]


def test_outer_checksum_kinds() -> None:
    frames = tunnel_burst(3, 200, outer_csum=True)
    c = TunnelCoalescer()
    (whole,) = c.coalesce(frames, TUNNEL)
    assert isinstance(whole, Coalesced)
    assert not c.header(whole, 1, TUNNEL).flags & F_UDP_TUNNEL_CSUM
    assert offload.ones_sum(bytes(whole[26:34]) + b"\0\x11" + (len(whole) - 34).to_bytes(2, "big")
                            + bytes(whole[34:])) == 0xFFFF  # complete and correct as delivered
    (partial,) = c.coalesce(frames, TUNNEL_CSUM)
    assert isinstance(partial, Coalesced)
    assert c.header(partial, 1, TUNNEL_CSUM).flags & F_UDP_TUNNEL_CSUM
    pseudo = bytes(partial[26:34]) + b"\0\x11" + (len(partial) - 34).to_bytes(2, "big")
    assert int.from_bytes(partial[40:42], "big") == offload.ones_sum(pseudo)


def test_no_tunnel_gso_without_the_feature() -> None:
    frames = tunnel_burst(4, 300)
    assert TunnelCoalescer().coalesce(frames, GSO) == frames


def test_device_refuses_offers_breaking_the_dependency_table() -> None:
    with pytest.raises(ValueError, match="NETFEAT-DEV-03"):
        VirtioNetDevice(features=DEFAULT_FEATURES | bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_UDP_TUNNEL_GSO))
    with pytest.raises(ValueError, match="NETFEAT-DEV-04"):
        VirtioNetDevice(features=DEFAULT_FEATURES | GSO | bits(NetF.GUEST_UDP_TUNNEL_GSO_CSUM))
    assert not VirtioNetDevice().offered & TUNNEL_CSUM & ~GSO  # offered only when features= asks
    assert VirtioNetDevice(features=DEFAULT_FEATURES | TUNNEL_CSUM).offered & TUNNEL_CSUM == TUNNEL_CSUM
