"""Seeded bugs in the behavioral model's host UDP-tunnel GSO (:mod:`models.virtio_net.gso` with
:mod:`models.virtio_net.gso_tunnel`), one override each, which the check
``testbenches/conformance/checks/test_net_tunnel_gso.py`` must catch with the right ids
(``tests/test_broken_tunnel_gso.py``). Loaded through the target spec, e.g.
``sim:virtio-net,model=tests.broken_tunnel_gso:OuterUdpLengthNotFixed``; the check module adds the tunnel GSO
features."""

from __future__ import annotations

from dataclasses import replace

from backend.virtio.net_hdr import GSO_UDP_TUNNEL, GSO_UDP_TUNNEL_IPV6, NetHdr
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.gso import Gso, Headers


class _OuterLength(Gso):
    def outer_headers(self, out: bytearray, o: Headers, k: int, udp_tunnel_csum: bool) -> bytes:
        length = bytes(out[o.l4 + 4:o.l4 + 6])  # the whole packet's outer UDP length, as the driver wrote it
        done = bytearray(super().outer_headers(out, o, k, udp_tunnel_csum))
        done[o.l4 + 4:o.l4 + 6] = length
        return bytes(done)


class OuterUdpLengthNotFixed(VirtioNetDevice):
    """Every segment of a tunnel packet keeps the outer UDP length of the whole packet."""

    gso_class = _OuterLength


class _BothBits(Gso):
    def segment(self, hdr: NetHdr, frame: bytes, negotiated: int,
                offsets: tuple[int, int] = (0, 0)) -> list[bytes] | None:
        if hdr.gso_type & GSO_UDP_TUNNEL == GSO_UDP_TUNNEL:
            hdr = replace(hdr, gso_type=hdr.gso_type & ~GSO_UDP_TUNNEL_IPV6)  # taken as TUNNEL_IPV4
        return super().segment(hdr, frame, negotiated, offsets)


class BothTunnelBitsAccepted(VirtioNetDevice):
    """A packet with both UDP-tunnel bits is segmented as if only TUNNEL_IPV4 were set."""

    gso_class = _BothBits


class _NoOuterChecksum(Gso):
    def outer_headers(self, out: bytearray, o: Headers, k: int, udp_tunnel_csum: bool) -> bytes:
        return super().outer_headers(out, o, k, False)


class TunnelCsumIgnored(VirtioNetDevice):
    """VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM is ignored: the outer UDP checksum of every segment is left 0."""

    gso_class = _NoOuterChecksum
