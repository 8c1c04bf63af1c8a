"""Host UDP-tunnel GSO of the behavioral virtio-net device (5.1.6.2 VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO and
HOST_UDP_TUNNEL_GSO_CSUM, 5.1.9.2.2): where a tunnel packet's headers are, and the outer headers of each segment.

A tunnel GSO packet is an outer IPv4/IPv6 + UDP packet (VXLAN, GENEVE...) carrying an inner IPv4/IPv6 TCP or UDP
packet whose segmentation is asked for: gso_type is the inner kind (TCPV4, TCPV6, UDP_L4) plus VIRTIO_NET_HDR_GSO_
UDP_TUNNEL_IPV4 or _IPV6 for the inner network protocol; outer_th_offset is where the outer UDP header is,
inner_nh_offset where the inner network header is, csum_start / csum_offset the inner transport checksum. The inner
flow is cut as plain GSO cuts it (:class:`models.virtio_net.gso.Gso`); each segment's outer headers are then its
own: IPv4 total length, id counting up and header checksum, or IPv6 payload length; the outer UDP length; the outer
UDP checksum computed complete with VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM (the driver put the pseudo-header sum there),
0 without it (the outer checksum was not asked for: NET-DRV-47 lets the driver send 0 or a complete value, and a
complete value of the whole packet is no segment's).

The rejections (the packet dropped and counted in tx_errors, never sent): a tunnel bit without the feature, both
tunnel bits (NET-DEV-22), NEEDS_CSUM clear, DATA_VALID set or no inner gso_type (NET-DEV-24), UDP_TUNNEL_CSUM
without a tunnel bit (NET-DEV-25) or without HOST_UDP_TUNNEL_GSO_CSUM (NET-DRV-30), offsets that are not where the
outer UDP and inner network headers are, an inner network protocol other than the tunnel bit says.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from backend.virtio.features import NetF, bits, has
from backend.virtio.net_hdr import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_UDP_TUNNEL,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    NetHdr,
)
from models.virtio_net.offload import IPPROTO_UDP, complete_checksum, ones_sum

#: The tunnel GSO features (offered only when ``features=`` asks) and what each needs (NETFEAT-DEV-07/08).
HOST_TUNNEL_FEATURES = bits(NetF.HOST_UDP_TUNNEL_GSO, NetF.HOST_UDP_TUNNEL_GSO_CSUM)
_UDP_HLEN = 8




def header_rejected(hdr: NetHdr, negotiated: int) -> bool:
    """Whether the header's tunnel bits and flags make the packet one the device must not accept (before any
    parsing): see the module docstring."""
    tunnel = hdr.gso_type & GSO_UDP_TUNNEL
    if hdr.flags & F_UDP_TUNNEL_CSUM and (not tunnel or not has(negotiated, NetF.HOST_UDP_TUNNEL_GSO_CSUM)):
        return True
    if not tunnel:
        return False
    return (not has(negotiated, NetF.HOST_UDP_TUNNEL_GSO) or tunnel == GSO_UDP_TUNNEL
            or not hdr.flags & F_NEEDS_CSUM or bool(hdr.flags & F_DATA_VALID)
            or hdr.gso_type & ~(GSO_UDP_TUNNEL | GSO_ECN) == GSO_NONE)


@dataclass(frozen=True, slots=True)
class Outer:
    """The outer headers of a tunnel packet: network header at ``l3`` (``l3_len`` bytes, IPv6 or IPv4), UDP at
    ``l4``, the IP packet ending at ``end``."""

    v6: bool
    l3: int
    l3_len: int
    l4: int
    end: int


def outer_at(frame: bytes, outer_th_offset: int, inner_nh_offset: int, tunnel: int) -> Outer | None:
    """The outer headers when ``outer_th_offset`` is the outer UDP header of ``frame`` (an Ethernet frame, one VLAN
    tag at most, IPv4 or IPv6 without extension headers), its length reaching the frame's IP end, and
    ``inner_nh_offset`` an IP header of the version the ``tunnel`` bit says after it; else None."""
    off = 12
    if frame[off:off + 2] in (b"\x81\x00", b"\x88\xa8"):
        off += 4
    ethertype, l3 = frame[off:off + 2], off + 2
    if ethertype == b"\x08\x00" and len(frame) >= l3 + 20 and frame[l3] >> 4 == 4:
        v6, l3_len, proto = False, (frame[l3] & 0x0F) * 4, frame[l3 + 9]
        end = l3 + int.from_bytes(frame[l3 + 2:l3 + 4], "big")
        if int.from_bytes(frame[l3 + 6:l3 + 8], "big") & 0x3FFF:
            return None  # a fragment
    elif ethertype == b"\x86\xdd" and len(frame) >= l3 + 40 and frame[l3] >> 4 == 6:
        v6, l3_len, proto = True, 40, frame[l3 + 6]
        end = l3 + 40 + int.from_bytes(frame[l3 + 4:l3 + 6], "big")
    else:
        return None
    l4 = l3 + l3_len
    if proto != IPPROTO_UDP or outer_th_offset != l4 or end > len(frame) or l4 + _UDP_HLEN > end:
        return None
    if int.from_bytes(frame[l4 + 4:l4 + 6], "big") != end - l4 or not l4 + _UDP_HLEN <= inner_nh_offset < end:
        return None
    inner_version = 6 if tunnel == GSO_UDP_TUNNEL_IPV6 else 4 if tunnel == GSO_UDP_TUNNEL_IPV4 else 0
    if frame[inner_nh_offset] >> 4 != inner_version:
        return None
    return Outer(v6, l3, l3_len, l4, end)


def outer_checksum(out: bytearray, o: Outer, udp_tunnel_csum: bool) -> None:
    """The outer UDP checksum of a segment: complete with UDP_TUNNEL_CSUM (pseudo-header sum, then the whole
    datagram), 0 without it."""
    at = o.l4 + 6
    out[at:at + 2] = b"\0\0"
    if not udp_tunnel_csum:
        return
    udp_len = len(out) - o.l4
    if o.v6:
        pseudo = bytes(out[o.l3 + 8:o.l3 + 40]) + udp_len.to_bytes(4, "big") + bytes((0, 0, 0, IPPROTO_UDP))
    else:
        pseudo = bytes(out[o.l3 + 12:o.l3 + 20]) + bytes((0, IPPROTO_UDP)) + udp_len.to_bytes(2, "big")
    struct.pack_into("!H", out, at, ones_sum(pseudo))
    done = complete_checksum(F_NEEDS_CSUM, o.l4, 6, bytes(out))
    assert done is not None  # the field is inside the segment
    out[:] = done


__all__ = ["HOST_TUNNEL_FEATURES", "Outer", "header_rejected", "outer_at", "outer_checksum"]
