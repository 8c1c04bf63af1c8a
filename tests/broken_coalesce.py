"""Seeded bugs in the behavioral model's receive coalescing (one override each), which
testbenches/conformance/checks/test_net_guest_gso.py must catch naming the right ids (tests/test_broken_coalesce.py).

Each variant is the stock device with another coalescer (``coalescer_class``), whose one method carries the bug.
Loaded as ``sim:virtio-net,features=...,model=tests.broken_coalesce:NAME``.
"""

from __future__ import annotations

from dataclasses import replace

from backend.virtio.net_hdr import F_NEEDS_CSUM, F_RSC_INFO, NetHdr
from models.virtio_net.coalesce import Coalesced, Coalescer, Segment
from models.virtio_net.device import VirtioNetDevice


class _GsoSizeIsLength(Coalescer):
    def header(self, packet: Coalesced, num_buffers: int, negotiated: int) -> NetHdr:
        h = super().header(packet, num_buffers, negotiated)
        return replace(h, gso_size=len(packet) - packet.gso.hdr_len)


class GsoSizeWrong(VirtioNetDevice):
    """gso_size is the coalesced packet's whole data length, not the MSS."""

    coalescer_class = _GsoSizeIsLength


class _NoNeedsCsum(Coalescer):
    def header(self, packet: Coalesced, num_buffers: int, negotiated: int) -> NetHdr:
        h = super().header(packet, num_buffers, negotiated)
        return replace(h, flags=h.flags & ~F_NEEDS_CSUM)


class NeedsCsumMissing(VirtioNetDevice):
    """A coalesced packet comes without NEEDS_CSUM (its checksum field holding only the pseudo-header sum)."""

    coalescer_class = _NoNeedsCsum


class _CwrAlways(Coalescer):
    def may_begin(self, seg: Segment, negotiated: int) -> bool:
        return self.gso_allowed(seg, negotiated)


class CwrCoalescedWithoutEcn(VirtioNetDevice):
    """A segment with CWR begins a coalesced packet whether or not GUEST_ECN was negotiated."""

    coalescer_class = _CwrAlways


class _HdrLenToIp(Coalescer):
    def header(self, packet: Coalesced, num_buffers: int, negotiated: int) -> NetHdr:
        h = super().header(packet, num_buffers, negotiated)
        return replace(h, hdr_len=packet.gso.csum_start)


class HdrLenShort(VirtioNetDevice):
    """hdr_len reaches only through the IP header (the transport header left out)."""

    coalescer_class = _HdrLenToIp


class _RscCountLess(Coalescer):
    def header(self, packet: Coalesced, num_buffers: int, negotiated: int) -> NetHdr:
        h = super().header(packet, num_buffers, negotiated)
        return replace(h, csum_start=h.csum_start - 1) if h.flags & F_RSC_INFO else h


class RscSegmentsMiscounted(VirtioNetDevice):
    """With RSC_EXT, csum_start counts one segment fewer than the packet holds."""

    coalescer_class = _RscCountLess
