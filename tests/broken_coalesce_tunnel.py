"""Seeded bugs in the behavioral model's coalescing of UDP-tunnelled flows (one override each), which
testbenches/conformance/checks/test_net_guest_tunnel.py must catch naming the right ids
(tests/test_broken_coalesce_tunnel.py).

Each variant is the stock device with another tunnel coalescer (``coalescer_class``), whose one method carries the
bug. Loaded as ``sim:virtio-net,features=...,model=tests.broken_coalesce_tunnel:NAME``.
"""

from __future__ import annotations

import struct

from backend.virtio.features import NetF, has
from backend.virtio.net_hdr import GSO_UDP_TUNNEL_IPV4, GSO_UDP_TUNNEL_IPV6
from models.virtio_net.coalesce import Segment
from models.virtio_net.coalesce_tunnel import TunnelCoalescer, TunnelSegment
from models.virtio_net.device import VirtioNetDevice


class _OuterBit(TunnelCoalescer):
    def tunnel_bit(self, seg: TunnelSegment) -> int:
        return GSO_UDP_TUNNEL_IPV6 if seg.outer_v6 else GSO_UDP_TUNNEL_IPV4


class TunnelBitOfOuter(VirtioNetDevice):
    """The UDP-tunnel bit follows the outer network protocol, not the inner one."""

    coalescer_class = _OuterBit


class _InnerNhAtEthernet(TunnelCoalescer):
    def tunnel_header(self, packet: bytes) -> bytes:
        outer_th, inner_nh = struct.unpack("<HH", super().tunnel_header(packet))
        return struct.pack("<HH", outer_th, inner_nh - 14 if inner_nh else 0)


class InnerNhOffsetOff(VirtioNetDevice):
    """inner_nh_offset points at the inner Ethernet header, 14 bytes before the inner network header."""

    coalescer_class = _InnerNhAtEthernet


class _TunnelAlways(TunnelCoalescer):
    def gso_allowed(self, seg: Segment, negotiated: int) -> bool:
        if seg.tcp:
            return has(negotiated, NetF.GUEST_TSO6 if seg.v6 else NetF.GUEST_TSO4)
        return has(negotiated, NetF.GUEST_USO6 if seg.v6 else NetF.GUEST_USO4)


class TunnelGsoWithoutFeature(VirtioNetDevice):
    """Tunnel frames are coalesced (and delivered with a UDP-tunnel gso_type) without GUEST_UDP_TUNNEL_GSO."""

    coalescer_class = _TunnelAlways


class _OuterPartialAlways(TunnelCoalescer):
    def outer_checksum(self, head: bytearray, data: bytes, first: TunnelSegment, negotiated: int) -> bool:
        return super().outer_checksum(head, data, first, negotiated | 1 << NetF.GUEST_UDP_TUNNEL_GSO_CSUM)


class OuterChecksumOffloadedWithoutCsum(VirtioNetDevice):
    """The outer UDP checksum is left to the driver (pseudo-header sum, UDP_TUNNEL_CSUM) without
    GUEST_UDP_TUNNEL_GSO_CSUM."""

    coalescer_class = _OuterPartialAlways


class _OuterStale(TunnelCoalescer):
    def outer_checksum(self, head: bytearray, data: bytes, first: TunnelSegment, negotiated: int) -> bool:
        if has(negotiated, NetF.GUEST_UDP_TUNNEL_GSO_CSUM):
            return super().outer_checksum(head, data, first, negotiated)
        return False  # the first segment's checksum left as it came


class OuterChecksumStale(VirtioNetDevice):
    """Without GUEST_UDP_TUNNEL_GSO_CSUM the merged packet keeps the first segment's outer UDP checksum."""

    coalescer_class = _OuterStale
