"""Receive coalescing of UDP-tunnelled flows (5.1.6.4, 5.1.9.4.1): with VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO negotiated,
consecutive VXLAN (UDP port 4789) or GENEVE (6081, Transparent Ethernet Bridging) frames of one inner TCP connection
or UDP flow arriving together are delivered as one packet with a UDP-tunnel gso_type, by the rules of
:mod:`models.virtio_net.coalesce` applied to the inner transport header.

The merged packet keeps the first segment's headers with the lengths of the whole (outer IPv4 total length and header
checksum, IPv6 payload length, outer UDP length, inner IP and UDP lengths); the IPv4 ids are the first segment's.
Its receive header (NET-DEV-51/52): gso_type the inner one (GSO_TCPV4 / GSO_TCPV6 / GSO_UDP_L4) with
VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 or _IPV6 for the inner network protocol, outer_th_offset at the outer UDP header,
inner_nh_offset at the inner network header, NEEDS_CSUM with csum_start/csum_offset at the inner transport checksum
(which holds the inner pseudo-header sum), hdr_len through the inner transport header.

The outer UDP checksum (NET-DEV-53/54/65/66): 0 when the segments came with 0; otherwise, with
GUEST_UDP_TUNNEL_GSO_CSUM, the outer pseudo-header sum with VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM, and without it the
complete checksum of the packet as delivered. Without GUEST_UDP_TUNNEL_GSO no tunnel frame is coalesced (NET-DEV-50):
each is delivered as it came. outer_nh_offset (OUT_NET_HEADER, not offered) is never written (NET-DEV-45).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from backend.virtio.features import NetF, has
from backend.virtio.net_hdr import (
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    NetHdr,
)
from models.virtio_net import offload
from models.virtio_net.coalesce import (
    ETH_HLEN,
    IP_MAX,
    TCP_ACK,
    Coalesced,
    Coalescer,
    GsoInfo,
    Segment,
)

VXLAN_PORT = 4789
GENEVE_PORT = 6081
VXLAN_HLEN = 8
GENEVE_HLEN = 8
_ETH_P_TEB = b"\x65\x58"
_IPV4_HLEN = 20
_IPV6_HLEN = 40
_UDP_HLEN = 8
_MERGEABLE_FLAGS = 0x10 | 0x08 | 0x80  # ACK, PSH, CWR


@dataclass(frozen=True)
class TunnelSegment(Segment):
    """A VXLAN/GENEVE frame: :class:`Segment`'s fields for the inner packet (``l4`` and ``payload_at`` are offsets
    in the whole frame, ``v6`` the inner network protocol), plus where the outer headers are."""

    outer_v6: bool = False
    outer_th: int = 0  # the outer UDP header (outer_th_offset)
    inner_nh: int = 0  # the inner network header (inner_nh_offset)
    outer_csum: bool = False  # the outer UDP checksum was not 0


@dataclass(frozen=True)
class TunnelInfo(GsoInfo):
    """What the receive header of a coalesced tunnel packet reports besides :class:`GsoInfo`."""

    outer_th_offset: int = 0
    inner_nh_offset: int = 0
    udp_tunnel_csum: bool = False




def _ip_at(frame: bytes, nh: int, ethertype: bytes) -> tuple[bool, int, int] | None:
    """(IPv6?, transport offset, protocol) of an IPv4 header without options or fragments or an IPv6 header without
    extension headers at ``nh`` whose length field ends exactly at the frame's end, else None."""
    if ethertype == b"\x08\x00" and len(frame) >= nh + _IPV4_HLEN and frame[nh] == 0x45:
        if int.from_bytes(frame[nh + 6:nh + 8], "big") & 0x3FFF or offload.ones_sum(frame[nh:nh + 20]) != 0xFFFF:
            return None
        if int.from_bytes(frame[nh + 2:nh + 4], "big") != len(frame) - nh:
            return None
        return False, nh + _IPV4_HLEN, frame[nh + 9]
    if ethertype == b"\x86\xdd" and len(frame) >= nh + _IPV6_HLEN and frame[nh] >> 4 == 6:
        if int.from_bytes(frame[nh + 4:nh + 6], "big") != len(frame) - nh - _IPV6_HLEN:
            return None
        return True, nh + _IPV6_HLEN, frame[nh + 6]
    return None


def _pseudo(frame: bytes | bytearray, nh: int, v6: bool, proto: int, l4_len: int) -> bytes:
    if v6:
        return bytes(frame[nh + 8:nh + 40]) + l4_len.to_bytes(4, "big") + bytes((0, 0, 0, proto))
    return bytes(frame[nh + 12:nh + 20]) + bytes((0, proto)) + l4_len.to_bytes(2, "big")


def _ip_key(frame: bytes, nh: int, v6: bool) -> bytes:
    """The IP header bytes every segment of a run shares (all but lengths, id and header checksum)."""
    if v6:
        return frame[nh:nh + 4] + frame[nh + 6:nh + 40]
    return frame[nh:nh + 2] + frame[nh + 6:nh + 10] + frame[nh + 12:nh + 20]


class TunnelCoalescer(Coalescer):
    """:class:`Coalescer` with VXLAN/GENEVE frames taken in as :class:`TunnelSegment` (one method per rule, for the
    seeded-bug variants: :meth:`tunnel_bit`, :meth:`tunnel_header`, :meth:`gso_allowed`)."""

    def gso_allowed(self, seg: Segment, negotiated: int) -> bool:
        """A tunnel segment begins a run only with GUEST_UDP_TUNNEL_GSO (NET-DEV-50) and its inner gso_type's
        feature (which the dependency table makes part of it)."""
        if isinstance(seg, TunnelSegment) and not has(negotiated, NetF.GUEST_UDP_TUNNEL_GSO):
            return False
        return super().gso_allowed(seg, negotiated)

    def parse(self, frame: bytes) -> Segment | None:
        return self.parse_tunnel(frame) or super().parse(frame)

    def parse_tunnel(self, frame: bytes) -> TunnelSegment | None:
        """The frame as a tunnel segment: outer IP/UDP to port 4789 (VXLAN, I flag) or 6081 (GENEVE carrying
        Ethernet), inner Ethernet, IP and TCP/UDP, checksums correct (the outer UDP one may be 0); else None."""
        outer = _ip_at(frame, ETH_HLEN, frame[12:14]) if len(frame) > ETH_HLEN else None
        if outer is None or outer[2] != offload.IPPROTO_UDP:
            return None
        outer_v6, th, _ = outer
        if len(frame) < th + _UDP_HLEN + 8:
            return None
        dport = int.from_bytes(frame[th + 2:th + 4], "big")
        tun = th + _UDP_HLEN
        if dport == VXLAN_PORT and frame[tun] & 0x08:
            inner_eth = tun + VXLAN_HLEN
        elif dport == GENEVE_PORT and frame[tun] >> 6 == 0 and frame[tun + 2:tun + 4] == _ETH_P_TEB:
            inner_eth = tun + GENEVE_HLEN + (frame[tun] & 0x3F) * 4
        else:
            return None
        csum = int.from_bytes(frame[th + 6:th + 8], "big")
        if csum and offload.ones_sum(_pseudo(frame, ETH_HLEN, outer_v6, offload.IPPROTO_UDP, len(frame) - th)
                                     + frame[th:]) != 0xFFFF:
            return None
        nh = inner_eth + ETH_HLEN
        inner = frame[inner_eth:]
        if len(frame) < nh + _IPV4_HLEN or not offload.checksum_verified(inner):
            return None
        parsed = _ip_at(frame, nh, frame[nh - 2:nh])
        if parsed is None:
            return None
        v6, l4, proto = parsed
        # outer Ethernet, outer IP, outer UDP ports, the tunnel header, inner Ethernet, inner IP
        key = frame[:ETH_HLEN] + _ip_key(frame, ETH_HLEN, outer_v6) + frame[th:th + 4] + bytes((csum != 0,)) \
            + frame[tun:nh] + _ip_key(frame, nh, v6)
        if proto == offload.IPPROTO_TCP and len(frame) >= l4 + 20:
            payload_at = l4 + (frame[l4 + 12] >> 4) * 4
            flags = frame[l4 + 13]
            if flags & ~_MERGEABLE_FLAGS or not flags & TCP_ACK or payload_at >= len(frame):
                return None
            key += frame[l4:l4 + 4] + frame[l4 + 8:l4 + 13] + frame[l4 + 20:payload_at]
            seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
            return TunnelSegment(frame, v6, True, l4, payload_at, key, seq, flags, outer_v6, th, nh, csum != 0)
        if proto == offload.IPPROTO_UDP and l4 + _UDP_HLEN < len(frame):
            return TunnelSegment(frame, v6, False, l4, l4 + _UDP_HLEN, key + frame[l4:l4 + 4], 0, 0, outer_v6, th,
                                 nh, csum != 0)
        return None

    def joins(self, run: list[Segment], seg: Segment, negotiated: int) -> bool:
        first = run[0]
        if isinstance(first, TunnelSegment) != isinstance(seg, TunnelSegment):
            return False
        if not super().joins(run, seg, negotiated):
            return False
        if not isinstance(first, TunnelSegment):
            return True
        outer_headers = first.payload_at - ETH_HLEN - (_IPV6_HLEN if first.outer_v6 else 0)
        return outer_headers + sum(s.payload_len for s in run) + seg.payload_len <= IP_MAX

    def build(self, run: list[Segment], negotiated: int) -> bytes:
        first = run[0]
        if not isinstance(first, TunnelSegment) or len(run) == 1:
            return super().build(run, negotiated)
        data = b"".join(s.frame[s.payload_at:] for s in run)
        head = bytearray(first.frame[:first.payload_at])
        total = len(head) + len(data)
        # The inner packet: what Coalescer.build does for a plain one, at the inner network header.
        inner = super().build([_at(s, first.inner_nh - ETH_HLEN) for s in run], negotiated)
        head[first.inner_nh - ETH_HLEN:] = inner[:first.payload_at - first.inner_nh + ETH_HLEN]
        # The outer headers: lengths of the whole, the IPv4 header checksum again.
        if first.outer_v6:
            struct.pack_into("!H", head, ETH_HLEN + 4, total - ETH_HLEN - _IPV6_HLEN)
        else:
            struct.pack_into("!H", head, ETH_HLEN + 2, total - ETH_HLEN)  # the id stays the first segment's
            struct.pack_into("!H", head, ETH_HLEN + 10, 0)
            struct.pack_into("!H", head, ETH_HLEN + 10,
                             ~offload.ones_sum(head[ETH_HLEN:ETH_HLEN + _IPV4_HLEN]) & 0xFFFF)
        th = first.outer_th
        struct.pack_into("!H", head, th + 4, total - th)
        partial = self.outer_checksum(head, data, first, negotiated)
        g = inner.gso if isinstance(inner, Coalesced) else None
        assert g is not None  # a run of two or more is always coalesced
        shift = first.inner_nh - ETH_HLEN
        info = TunnelInfo(gso_type=g.gso_type | self.tunnel_bit(first), gso_size=g.gso_size,
                          hdr_len=g.hdr_len + shift, csum_start=g.csum_start + shift, csum_offset=g.csum_offset,
                          segments=g.segments, dup_acks=g.dup_acks, outer_th_offset=th,
                          inner_nh_offset=first.inner_nh, udp_tunnel_csum=partial)
        return Coalesced(bytes(head) + data, info)

    def outer_checksum(self, head: bytearray, data: bytes, first: TunnelSegment, negotiated: int) -> bool:
        """The merged packet's outer UDP checksum, in ``head`` (its headers, lengths already fixed): 0 where the
        segments had 0; else with GUEST_UDP_TUNNEL_GSO_CSUM the outer pseudo-header sum (NET-DEV-65), and True
        (UDP_TUNNEL_CSUM to be set); else complete and correct over the packet as delivered (NET-DEV-53/54/66)."""
        th = first.outer_th
        if not first.outer_csum:
            return False
        length = len(head) + len(data) - th
        pseudo = _pseudo(head, ETH_HLEN, first.outer_v6, offload.IPPROTO_UDP, length)
        if has(negotiated, NetF.GUEST_UDP_TUNNEL_GSO_CSUM):
            struct.pack_into("!H", head, th + 6, offload.ones_sum(pseudo))
            return True
        struct.pack_into("!H", head, th + 6, 0)
        csum = ~offload.ones_sum(pseudo + bytes(head[th:]) + data) & 0xFFFF
        struct.pack_into("!H", head, th + 6, csum or 0xFFFF)
        return False

    def tunnel_bit(self, seg: TunnelSegment) -> int:
        """VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 or _IPV6 for the inner network protocol (NET-DEV-51)."""
        return GSO_UDP_TUNNEL_IPV6 if seg.v6 else GSO_UDP_TUNNEL_IPV4

    def header(self, packet: Coalesced, num_buffers: int, negotiated: int) -> NetHdr:
        g = packet.gso
        if not isinstance(g, TunnelInfo):
            return super().header(packet, num_buffers, negotiated)
        flags = F_NEEDS_CSUM | (F_UDP_TUNNEL_CSUM if g.udp_tunnel_csum else 0)
        return NetHdr(flags=flags, gso_type=g.gso_type, hdr_len=g.hdr_len, gso_size=g.gso_size,
                      csum_start=g.csum_start, csum_offset=g.csum_offset, num_buffers=num_buffers)

    def tunnel_header(self, packet: bytes) -> bytes:
        """outer_th_offset and inner_nh_offset (bytes 20..23 of the header) of a delivered packet: the real header
        positions for a coalesced tunnel packet (NET-DEV-52), 0 otherwise."""
        g = packet.gso if isinstance(packet, Coalesced) else None
        if not isinstance(g, TunnelInfo):
            return bytes(4)
        return struct.pack("<HH", g.outer_th_offset, g.inner_nh_offset)


def _at(seg: Segment, shift: int) -> Segment:
    """``seg``'s inner packet as a plain segment (its Ethernet header where the frame begins)."""
    return Segment(seg.frame[shift:], seg.v6, seg.tcp, seg.l4 - shift, seg.payload_at - shift, seg.key, seg.seq,
                   seg.flags)


__all__ = ["GENEVE_PORT", "VXLAN_PORT", "TunnelCoalescer", "TunnelInfo", "TunnelSegment"]
