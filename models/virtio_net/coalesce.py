"""Receive coalescing of the behavioral virtio-net device (5.1.6.4, 5.1.9.4 / 5.1.9.4.1): with a guest GSO feature
negotiated (VIRTIO_NET_F_GUEST_TSO4, GUEST_TSO6, GUEST_USO4, GUEST_USO6) consecutive frames of one flow arriving
together from the wire are delivered as one large packet, which the driver's stack may segment again.

Only what arrives at once is coalesced (a burst handed to ``receive_batch``): no timer holds a frame back.

TCP (GSO_TCPV4 / GSO_TCPV6): segments of one connection (same Ethernet header, same IP header apart from length, id
and checksum, same ports, acknowledgment number and options) whose sequence numbers follow on, each carrying data,
with no flag but ACK (and PSH, which ends a run; CWR, which may only begin one, and only with GUEST_ECN: without it a
CWR segment is delivered alone, NET-DEV-42; with it the packet carries GSO_ECN, NET-DEV-43). All segments of a run
but the last carry gso_size bytes, the last at most that many, so segmenting at gso_size (the MSS, NET-DEV-57) gives
back the segments as they came. UDP (GSO_UDP_L4, with GUEST_USO4 / GUEST_USO6): datagrams of one flow, by the same
size rule.

Every segment's checksums are verified before it is taken in (IPv4 header, transport): the coalesced packet then
carries VIRTIO_NET_HDR_F_NEEDS_CSUM (NET-DEV-56) with csum_start/csum_offset at its transport checksum, which holds the
pseudo-header sum (NET-DEV-47..49), and hdr_len through the transport header (NET-DEV-60). With VIRTIO_NET_F_RSC_EXT
a coalesced TCP packet has VIRTIO_NET_HDR_F_RSC_INFO, csum_start the number of segments and csum_offset the number of
duplicate ACKs coalesced (never any: a segment without data is not taken in) (NET-DEV-58).

A run of one segment is delivered as it came (gso_type NONE). Frames that are no TCP/UDP over IPv4 (without options
or fragments) or IPv6 (without extension headers) behind an untagged Ethernet header are never taken in.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from backend.virtio.features import NetF, bits, has
from backend.virtio.net_hdr import (
    F_NEEDS_CSUM,
    F_RSC_INFO,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NetHdr,
)
from models.virtio_net import offload

#: The guest GSO features this model coalesces for (GUEST_UFO, IP fragment reassembly, is not offered).
GUEST_GSO = bits(NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_USO4, NetF.GUEST_USO6)

ETH_HLEN = 14
_IPV4_HLEN = 20
_IPV6_HLEN = 40
_UDP_HLEN = 8
#: Largest IPv4 total length / IPv6 payload length.
IP_MAX = 0xFFFF
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_ECE, TCP_CWR = (1 << i for i in range(8))
#: Flags a segment may carry and still be taken in (CWR only with GUEST_ECN, and only to begin a run).
_MERGEABLE_FLAGS = TCP_ACK | TCP_PSH | TCP_CWR
_TCP_CSUM_OFFSET = 16
_UDP_CSUM_OFFSET = 6


@dataclass(frozen=True)
class Segment:
    """A frame that may be taken into a coalesced packet: where its headers are and what must match."""

    frame: bytes
    v6: bool
    tcp: bool
    l4: int  # offset of the transport header (= csum_start)
    payload_at: int  # offset of the data (= hdr_len)
    key: bytes  # the header bytes every segment of a run shares
    seq: int  # TCP sequence number (0 for UDP)
    flags: int  # TCP flags (0 for UDP)

    @property
    def payload_len(self) -> int:
        return len(self.frame) - self.payload_at

    @property
    def gso_type(self) -> int:
        if not self.tcp:
            return GSO_UDP_L4
        return GSO_TCPV6 if self.v6 else GSO_TCPV4


@dataclass(frozen=True)
class GsoInfo:
    """What the receive header of a coalesced packet reports."""

    gso_type: int  # GSO_TCPV4 / GSO_TCPV6 / GSO_UDP_L4, with GSO_ECN when the first segment had CWR
    gso_size: int  # the first segment's data length: the MSS
    hdr_len: int  # Ethernet, IP and transport headers
    csum_start: int
    csum_offset: int
    segments: int
    dup_acks: int


class Coalesced(bytes):
    """A coalesced packet's bytes, with what its receive header says (:attr:`gso`)."""

    gso: GsoInfo

    def __new__(cls, data: bytes, gso: GsoInfo) -> Coalesced:
        out = super().__new__(cls, data)
        out.gso = gso
        return out


def _fits_ip(frame: bytes) -> bool:
    """Whether the packet's IP length field matches the frame exactly (no Ethernet padding to strip)."""
    if frame[12:14] == b"\x08\x00":
        return int.from_bytes(frame[16:18], "big") == len(frame) - ETH_HLEN
    return int.from_bytes(frame[18:20], "big") == len(frame) - ETH_HLEN - _IPV6_HLEN




class Coalescer:
    """The coalescing rules, one method each (seeded-bug variants override one): :meth:`parse` what may be taken
    in, :meth:`joins` whether a segment extends a run, :meth:`build` the packet, :meth:`header` its receive header."""

    def gso_allowed(self, seg: Segment, negotiated: int) -> bool:
        """Whether the driver accepted packets of this segment's gso_type (5.1.9.4.1, NET-DEV-36..39)."""
        if seg.tcp:
            return has(negotiated, NetF.GUEST_TSO6 if seg.v6 else NetF.GUEST_TSO4)
        return has(negotiated, NetF.GUEST_USO6 if seg.v6 else NetF.GUEST_USO4)

    def parse(self, frame: bytes) -> Segment | None:
        """The frame as a segment to take in, or None (delivered as it is)."""
        if len(frame) < ETH_HLEN + _IPV4_HLEN or not offload.checksum_verified(frame):
            return None  # its checksums are vouched for before it becomes part of a NEEDS_CSUM packet (NET-DEV-47)
        ethertype = frame[12:14]
        if ethertype == b"\x08\x00":
            nh = ETH_HLEN
            if frame[nh] != 0x45:
                return None  # IP options: not coalesced
            proto = frame[nh + 9]
            l4 = nh + _IPV4_HLEN
            # version/ihl, TOS (ECN bits included), flags and fragment offset, TTL, protocol, addresses
            key = frame[:ETH_HLEN] + frame[nh:nh + 2] + frame[nh + 6:nh + 10] + frame[nh + 12:nh + 20]
            v6 = False
        elif ethertype == b"\x86\xdd":
            nh = ETH_HLEN
            proto = frame[nh + 6]
            l4 = nh + _IPV6_HLEN
            key = frame[:ETH_HLEN] + frame[nh:nh + 4] + frame[nh + 6:nh + 40]
            v6 = True
        else:
            return None
        if not _fits_ip(frame):
            return None
        if proto == offload.IPPROTO_TCP:
            doff = (frame[l4 + 12] >> 4) * 4
            flags = frame[l4 + 13]
            payload_at = l4 + doff
            if flags & ~_MERGEABLE_FLAGS or not flags & TCP_ACK or payload_at >= len(frame):
                return None  # SYN, FIN, RST, URG, ECE, or no data: delivered as they are
            # ports, acknowledgment number, data offset and options (the window is the last segment's)
            key += frame[l4:l4 + 4] + frame[l4 + 8:l4 + 13] + frame[l4 + 20:payload_at]
            seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
            return Segment(frame, v6, True, l4, payload_at, key, seq, flags)
        if proto == offload.IPPROTO_UDP:
            payload_at = l4 + _UDP_HLEN
            if payload_at >= len(frame):
                return None
            return Segment(frame, v6, False, l4, payload_at, key + frame[l4:l4 + 4], 0, 0)
        return None

    def may_begin(self, seg: Segment, negotiated: int) -> bool:
        """Whether ``seg`` may be the first of a coalesced packet: its gso_type negotiated, and a CWR segment only with
        GUEST_ECN (NET-DEV-42)."""
        if not self.gso_allowed(seg, negotiated):
            return False
        return not seg.flags & TCP_CWR or has(negotiated, NetF.GUEST_ECN)

    def joins(self, run: list[Segment], seg: Segment, negotiated: int) -> bool:
        """Whether ``seg`` extends ``run`` (which :meth:`may_begin` accepted)."""
        first, last = run[0], run[-1]
        if seg.key != first.key or seg.tcp != first.tcp or seg.flags & TCP_CWR:
            return False  # another flow; CWR only begins a run (segmenting puts it on the first segment only)
        gso_size = first.payload_len
        if last.payload_len != gso_size or seg.payload_len > gso_size:
            return False  # every segment but the last carries gso_size bytes, the last no more
        if last.flags & TCP_PSH:
            return False  # PSH ends a run
        if seg.tcp and seg.seq != (last.seq + last.payload_len) & 0xFFFFFFFF:
            return False
        total = sum(s.payload_len for s in run) + seg.payload_len
        headers = first.payload_at - ETH_HLEN - (_IPV6_HLEN if first.v6 else 0)
        return headers + total <= IP_MAX

    def coalesce(self, frames: Iterable[bytes], negotiated: int,
                 whole: Callable[[bytes], bool] = lambda frame: False) -> list[bytes]:
        """The frames of a burst as they are delivered, in order: runs coalesced (:class:`Coalesced`), the rest as
        they came. ``whole(frame)`` True keeps a frame out of any run (the device drops what is oversize)."""
        out: list[bytes] = []
        run: list[Segment] = []
        for frame in frames:
            seg = None if whole(frame) else self.parse(frame)
            if seg is not None and run and self.joins(run, seg, negotiated):
                run.append(seg)
                continue
            if run:
                out.append(self.build(run, negotiated))
                run = []
            if seg is not None and self.may_begin(seg, negotiated):
                run = [seg]
            else:
                out.append(frame)
        if run:
            out.append(self.build(run, negotiated))
        return out

    def build(self, run: list[Segment], negotiated: int) -> bytes:
        """One packet holding the run's data: the first segment's headers, lengths for the whole, the IPv4 header
        checksum recomputed, PSH and the window from the last segment, the pseudo-header sum in the transport
        checksum field. A run of one is the segment as it came."""
        first, last = run[0], run[-1]
        if len(run) == 1:
            return first.frame
        data = b"".join(s.frame[s.payload_at:] for s in run)
        head = bytearray(first.frame[:first.payload_at])
        l4_len = len(head) - first.l4 + len(data)
        if first.v6:
            struct.pack_into("!H", head, ETH_HLEN + 4, l4_len)
            pseudo = bytes(head[ETH_HLEN + 8:ETH_HLEN + 40]) + l4_len.to_bytes(4, "big") + bytes((0, 0, 0, head[20]))
        else:
            struct.pack_into("!HH", head, ETH_HLEN + 2, first.l4 - ETH_HLEN + l4_len, 0)
            struct.pack_into("!H", head, ETH_HLEN + 10, 0)
            struct.pack_into("!H", head, ETH_HLEN + 10, ~offload.ones_sum(head[ETH_HLEN:first.l4]) & 0xFFFF)
            pseudo = bytes(head[ETH_HLEN + 12:ETH_HLEN + 20]) + bytes((0, head[ETH_HLEN + 9])) \
                + l4_len.to_bytes(2, "big")
        at = first.l4 + (_TCP_CSUM_OFFSET if first.tcp else _UDP_CSUM_OFFSET)
        if first.tcp:
            head[first.l4 + 13] |= last.flags & TCP_PSH
            head[first.l4 + 14:first.l4 + 16] = last.frame[last.l4 + 14:last.l4 + 16]
        else:
            struct.pack_into("!H", head, first.l4 + 4, l4_len)
        struct.pack_into("!H", head, at, offload.ones_sum(pseudo))  # the pseudo-header sum (NET-DEV-48)
        ecn = GSO_ECN if first.flags & TCP_CWR else 0
        info = GsoInfo(gso_type=first.gso_type | ecn, gso_size=first.payload_len, hdr_len=first.payload_at,
                       csum_start=first.l4, csum_offset=at - first.l4, segments=len(run), dup_acks=0)
        return Coalesced(bytes(head) + data, info)

    def header(self, packet: Coalesced, num_buffers: int, negotiated: int) -> NetHdr:
        """The receive header of a coalesced packet: NEEDS_CSUM with the checksum's place (NET-DEV-56, 49), or with
        RSC_EXT on TCP RSC_INFO with the segment and duplicate ACK counts in those fields (NET-DEV-58)."""
        g = packet.gso
        if has(negotiated, NetF.RSC_EXT) and g.gso_type & ~GSO_ECN in (GSO_TCPV4, GSO_TCPV6):
            return NetHdr(flags=F_NEEDS_CSUM | F_RSC_INFO, gso_type=g.gso_type, hdr_len=g.hdr_len,
                          gso_size=g.gso_size, csum_start=g.segments, csum_offset=g.dup_acks,
                          num_buffers=num_buffers)
        return NetHdr(flags=F_NEEDS_CSUM, gso_type=g.gso_type, hdr_len=g.hdr_len, gso_size=g.gso_size,
                      csum_start=g.csum_start, csum_offset=g.csum_offset, num_buffers=num_buffers)

    def tunnel_header(self, packet: bytes) -> bytes:
        """outer_th_offset and inner_nh_offset (bytes 20..23 of a 24-byte header) of a delivered packet: 0, as no
        tunnel packet is coalesced here (:mod:`models.virtio_net.coalesce_tunnel` does)."""
        return bytes(4)


__all__ = ["GSO_NONE", "GUEST_GSO", "Coalesced", "Coalescer", "GsoInfo", "Segment"]
