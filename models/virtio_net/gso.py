"""Host GSO of the behavioral virtio-net device (5.1.6.2, 5.1.9.2): VIRTIO_NET_F_HOST_TSO4, HOST_TSO6, HOST_ECN,
HOST_UFO and HOST_USO, offered only when the model's ``features=`` asks (each with CSUM, the dependency table).

A transmit packet whose header has a gso_type other than NONE leaves the device as the packets its gso_size
makes of it, each with its headers and checksums complete:

- TCPv4 / TCPv6 (TSO): the payload after the TCP header cut into gso_size pieces; each segment's sequence number
  advances by the bytes before it, FIN and PSH stay on the last segment only, CWR on the first only (with
  VIRTIO_NET_HDR_GSO_ECN; a driver without HOST_ECN sends no CWR packet to segment, NET-DRV-24); IPv4 ids
  count up from the packet's, total length / payload length and the TCP checksum are per segment.
- UDP (UFO): the datagram's checksum completed over all of it, then IP fragments of gso_size bytes of IP payload
  (rounded down to 8, the fragment offset unit): IPv4 fragments share the packet's id; IPv6 ones get a fragment
  header with an identification of the device's own.
- UDP_L4 (USO): the payload after the UDP header cut into gso_size pieces, each a UDP datagram of its own with
  its length and checksum (and an IPv4 id counting up).

The headers are found by parsing the frame (Ethernet, one VLAN tag at most, IPv4 or IPv6 without extension
headers); hdr_len is never read (NET-DEV-21). A request the device cannot honour is the driver's error and the
packet is dropped, as :mod:`models.virtio_net.offload` drops a checksum header pointing outside the frame: a
gso_type (or the ECN bit) whose feature was not negotiated, NEEDS_CSUM clear
(NET-DRV-39), gso_size 0, a frame that is not the kind gso_type says or whose IP length disagrees with it,
csum_start / csum_offset not at the transport checksum.

With HOST_UDP_TUNNEL_GSO (and _CSUM) a packet with a UDP-tunnel bit is an inner TCP / UDP_L4 flow inside outer
IP + UDP headers: the inner flow segmented as above, the outer headers fixed per segment
(:mod:`models.virtio_net.gso_tunnel`, which also says what is rejected).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from backend.virtio.features import NetF, bits, has
from backend.virtio.net_hdr import (
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    GSO_UDP_TUNNEL,
    NetHdr,
)
from models.virtio_net import gso_tunnel
from models.virtio_net.offload import IPPROTO_TCP, IPPROTO_UDP, complete_checksum, ones_sum

#: The host GSO features and what each needs (CSUM for all, TSO4 or TSO6 for ECN: NETFEAT-DEV-05/06).
HOST_GSO_FEATURES = bits(NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_ECN, NetF.HOST_UFO, NetF.HOST_USO)
#: gso_type (without the ECN bit) -> the feature that allows it.
GSO_FEATURE = {GSO_TCPV4: NetF.HOST_TSO4, GSO_TCPV6: NetF.HOST_TSO6, GSO_UDP: NetF.HOST_UFO,
               GSO_UDP_L4: NetF.HOST_USO}
TCP_FIN, TCP_PSH, TCP_CWR = 0x01, 0x08, 0x80
_VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")
_ETH_P_IP = b"\x08\x00"
_ETH_P_IPV6 = b"\x86\xdd"
_IPV6_HLEN = 40
_UDP_HLEN = 8
_IP_MF = 0x2000
_NEXTHDR_FRAGMENT = 44
#: Where the transport checksum is in each header (csum_offset).
CSUM_OFFSET = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}


@dataclass(frozen=True, slots=True)
class Headers:
    """Where a frame's headers are: network header at ``l3`` (``l3_len`` bytes), transport at ``l4`` (``l4_len``),
    the IP packet ending at ``end`` (Ethernet padding after it is not part of it)."""

    v6: bool
    l3: int
    l3_len: int
    proto: int
    l4: int
    l4_len: int
    end: int

    @property
    def payload(self) -> int:
        """Where the transport payload starts."""
        return self.l4 + self.l4_len


def parse(frame: bytes) -> Headers | None:
    """The headers of an unfragmented IPv4 or IPv6 (no extension header) TCP or UDP frame, or None."""
    off = 12
    ethertype = frame[off:off + 2]
    if ethertype in _VLAN_TPIDS:
        off += 4
        ethertype = frame[off:off + 2]
    version = 4 if ethertype == _ETH_P_IP else 6 if ethertype == _ETH_P_IPV6 else 0
    l3 = off + 2
    if not version or len(frame) <= l3 or frame[l3] >> 4 != version:
        return None
    return parse_ip(frame, l3)


def parse_ip(frame: bytes, l3: int) -> Headers | None:
    """The headers of the unfragmented IPv4 or IPv6 (no extension header) TCP or UDP packet at ``l3`` of
    ``frame``, or None (the inner packet of a tunnel packet is found this way too)."""
    if len(frame) < l3 + 20:
        return None
    if frame[l3] >> 4 == 4:
        l3_len = (frame[l3] & 0x0F) * 4
        end = l3 + int.from_bytes(frame[l3 + 2:l3 + 4], "big")
        if l3_len < 20 or end < l3 + l3_len or int.from_bytes(frame[l3 + 6:l3 + 8], "big") & 0x3FFF:
            return None  # a bad length, or already a fragment
        proto, v6 = frame[l3 + 9], False
    elif frame[l3] >> 4 == 6:
        if len(frame) < l3 + _IPV6_HLEN:
            return None
        l3_len, end = _IPV6_HLEN, l3 + _IPV6_HLEN + int.from_bytes(frame[l3 + 4:l3 + 6], "big")
        proto, v6 = frame[l3 + 6], True
    else:
        return None
    l4 = l3 + l3_len
    if end > len(frame):
        return None
    if proto == IPPROTO_TCP:
        if l4 + 20 > end:
            return None
        l4_len = (frame[l4 + 12] >> 4) * 4
        if l4_len < 20 or l4 + l4_len > end:
            return None
    elif proto == IPPROTO_UDP:
        l4_len = _UDP_HLEN
        if l4 + l4_len > end or int.from_bytes(frame[l4 + 4:l4 + 6], "big") != end - l4:
            return None
    else:
        return None
    return Headers(v6, l3, l3_len, proto, l4, l4_len, end)


def ipv4_header_checksum(out: bytearray, h: Headers) -> None:
    """The IPv4 header checksum of ``out``'s network header, recomputed."""
    out[h.l3 + 10:h.l3 + 12] = b"\0\0"
    struct.pack_into("!H", out, h.l3 + 10, ~ones_sum(out[h.l3:h.l3 + h.l3_len]) & 0xFFFF)


def pseudo_header_sum(out: bytes | bytearray, h: Headers, l4_bytes: int) -> int:
    """The ones-complement sum of the TCP/UDP pseudo-header for ``l4_bytes`` bytes of transport header and data."""
    if h.v6:
        pseudo = bytes(out[h.l3 + 8:h.l3 + 40]) + l4_bytes.to_bytes(4, "big") + bytes((0, 0, 0, h.proto))
    else:
        pseudo = bytes(out[h.l3 + 12:h.l3 + 20]) + bytes((0, h.proto)) + l4_bytes.to_bytes(2, "big")
    return ones_sum(pseudo)


class Segmented(bytes):
    """A transmit packet as the driver handed it (these bytes) and the ``packets`` it goes on the wire as: what
    :meth:`VirtioNetDevice.tx_offload` returns for a GSO request, whichever ring layout took it."""

    packets: tuple[bytes, ...]

    def __new__(cls, frame: bytes, packets: list[bytes]) -> Segmented:
        obj = super().__new__(cls, frame)
        obj.packets = tuple(packets)
        return obj


class Gso:
    """Segmentation of transmit packets (one per device: IPv6 fragment identifications are its own). Seeded-bug
    variants override one method (tests/broken_gso.py)."""

    def __init__(self) -> None:
        self.fragment_id = 0

    def segment(self, hdr: NetHdr, frame: bytes, negotiated: int,
                offsets: tuple[int, int] = (0, 0)) -> list[bytes] | None:
        """The packets ``frame`` becomes under ``hdr`` (gso_type not NONE; ``offsets`` its outer_th_offset and
        inner_nh_offset, used with a UDP-tunnel bit only); None drops it (a driver error)."""
        if gso_tunnel.header_rejected(hdr, negotiated):
            return None
        tunnel = hdr.gso_type & GSO_UDP_TUNNEL
        gso = hdr.gso_type & ~(GSO_ECN | GSO_UDP_TUNNEL)
        feature = GSO_FEATURE.get(gso)
        if feature is None or not has(negotiated, feature) or (tunnel and gso == GSO_UDP):
            return None
        if hdr.gso_type & GSO_ECN and (gso not in (GSO_TCPV4, GSO_TCPV6) or not has(negotiated, NetF.HOST_ECN)):
            return None
        outer = gso_tunnel.outer_at(frame, *offsets, tunnel) if tunnel else None
        if tunnel and outer is None:
            return None
        h = parse(frame) if outer is None else parse_ip(frame, offsets[1])
        if not hdr.flags & F_NEEDS_CSUM or hdr.gso_size == 0 or h is None or (outer and h.end != outer.end):
            return None
        want = (IPPROTO_TCP, gso == GSO_TCPV6) if gso in (GSO_TCPV4, GSO_TCPV6) else (IPPROTO_UDP, h.v6)
        if (h.proto, h.v6) != want or (hdr.csum_start, hdr.csum_offset) != (h.l4, CSUM_OFFSET[h.proto]):
            return None
        if gso == GSO_UDP:
            return self.fragments(frame, h, hdr.gso_size)
        packets = self.segments(frame, h, hdr.gso_size)
        if outer is None:
            return packets
        o = Headers(outer.v6, outer.l3, outer.l3_len, IPPROTO_UDP, outer.l4, _UDP_HLEN, outer.end)
        csum = bool(hdr.flags & F_UDP_TUNNEL_CSUM)
        return [self.outer_headers(bytearray(p), o, k, csum) for k, p in enumerate(packets)]

    def outer_headers(self, out: bytearray, o: Headers, k: int, udp_tunnel_csum: bool) -> bytes:
        """Segment ``k`` of a tunnel packet with its outer headers made its own (``o``: where they are): the outer
        UDP length, the outer IP header (:meth:`network_header`), the outer UDP checksum
        (:func:`models.virtio_net.gso_tunnel.outer_checksum`)."""
        udp_len = len(out) - o.l4
        struct.pack_into("!H", out, o.l4 + 4, udp_len)
        self.network_header(out, o, udp_len, k)
        gso_tunnel.outer_checksum(out, gso_tunnel.Outer(o.v6, o.l3, o.l3_len, o.l4, o.end), udp_tunnel_csum)
        return bytes(out)

    def segments(self, frame: bytes, h: Headers, mss: int) -> list[bytes]:
        """TSO and USO: ``mss`` bytes of payload a segment, each with its own headers."""
        headers, payload = frame[:h.payload], frame[h.payload:h.end]
        count = max(1, -(-len(payload) // mss))
        return [self.finish(bytearray(headers + payload[k * mss:(k + 1) * mss]), h, k, count, k * mss)
                for k in range(count)]

    def finish(self, out: bytearray, h: Headers, k: int, count: int, offset: int) -> bytes:
        """Segment ``k`` of ``count`` (its payload ``offset`` bytes into the packet's) with its headers made its
        own: lengths, IPv4 id, TCP sequence number and flags, the transport checksum."""
        l4_bytes = len(out) - h.l4
        if h.proto == IPPROTO_TCP:
            seq = int.from_bytes(out[h.l4 + 4:h.l4 + 8], "big")
            struct.pack_into("!I", out, h.l4 + 4, (seq + offset) & 0xFFFFFFFF)
            out[h.l4 + 13] = self.tcp_flags(out[h.l4 + 13], k, count)
        else:
            struct.pack_into("!H", out, h.l4 + 4, l4_bytes)
        self.network_header(out, h, l4_bytes, k)
        return self.transport_checksum(out, h)

    def tcp_flags(self, flags: int, k: int, count: int) -> int:
        """FIN and PSH on the last segment only, CWR on the first only."""
        if k < count - 1:
            flags &= ~(TCP_FIN | TCP_PSH)
        if k > 0:
            flags &= ~TCP_CWR
        return flags

    def network_header(self, out: bytearray, h: Headers, l4_bytes: int, k: int) -> None:
        """IPv4: total length, id + ``k``, header checksum; IPv6: payload length."""
        if h.v6:
            struct.pack_into("!H", out, h.l3 + 4, l4_bytes)
            return
        ip_id = int.from_bytes(out[h.l3 + 4:h.l3 + 6], "big")
        struct.pack_into("!HH", out, h.l3 + 2, h.l3_len + l4_bytes, (ip_id + k) & 0xFFFF)
        ipv4_header_checksum(out, h)

    def transport_checksum(self, out: bytearray, h: Headers) -> bytes:
        """The TCP/UDP checksum of a whole packet: its pseudo-header sum in the field, then completed as
        NEEDS_CSUM is (:func:`models.virtio_net.offload.complete_checksum`)."""
        at = h.l4 + CSUM_OFFSET[h.proto]
        struct.pack_into("!H", out, at, pseudo_header_sum(out, h, len(out) - h.l4))
        done = complete_checksum(F_NEEDS_CSUM, h.l4, CSUM_OFFSET[h.proto], bytes(out))
        assert done is not None  # the field is inside the packet: parse() saw the whole transport header
        return done

    def fragments(self, frame: bytes, h: Headers, mss: int) -> list[bytes] | None:
        """UFO: the datagram checksummed whole, then IP fragments of ``mss`` bytes of IP payload (rounded down to a
        multiple of 8); None when that leaves nothing."""
        datagram = self.transport_checksum(bytearray(frame[:h.end]), h)
        data = datagram[h.l4:]
        if len(data) <= mss:
            return [datagram]
        size = mss & ~7
        if size == 0:
            return None
        if h.v6:
            self.fragment_id = (self.fragment_id + 1) & 0xFFFFFFFF
        out = []
        for offset in range(0, len(data), size):
            chunk, more = data[offset:offset + size], offset + size < len(data)
            head = bytearray(datagram[:h.l4])
            if h.v6:
                head[h.l3 + 6] = _NEXTHDR_FRAGMENT
                struct.pack_into("!H", head, h.l3 + 4, 8 + len(chunk))
                head += struct.pack("!BBHI", h.proto, 0, offset | int(more), self.fragment_id)
            else:
                struct.pack_into("!H", head, h.l3 + 2, h.l3_len + len(chunk))
                struct.pack_into("!H", head, h.l3 + 6, (offset >> 3) | (_IP_MF if more else 0))  # DF cleared
                ipv4_header_checksum(head, h)
            out.append(bytes(head) + chunk)
        return out


__all__ = ["GSO_FEATURE", "HOST_GSO_FEATURES", "Gso", "Headers", "Segmented", "parse", "parse_ip"]
