"""Checksum offload of the behavioral virtio-net device (5.1.6.2, 5.1.6.4): VIRTIO_NET_F_CSUM on transmit,
VIRTIO_NET_F_GUEST_CSUM on receive. Transmit segmentation (host GSO) is :mod:`models.virtio_net.gso`, built on these.

Plain Python on bytes (no scapy on the data path). The Internet checksum (RFC 1071) is the ones-complement sum
of 16-bit big-endian words; since 2**16 is 1 modulo 0xFFFF, the bytes read as one big-endian integer taken
modulo 0xFFFF give that sum in one C-speed step (0xFFFF standing for a non-zero sum the modulus reads as 0).

Transmit (:func:`complete_checksum`): with VIRTIO_NET_HDR_F_NEEDS_CSUM the device folds the sum from csum_start
to the end of the packet and stores its complement at csum_start + csum_offset (the driver left the
pseudo-header sum there, NET-DRV-36/37). A header pointing outside the frame is the driver's error: the packet
is dropped. Without NEEDS_CSUM the packet is sent as it is (csum_start/csum_offset unused, NET-DEV-16; nothing
assumed about its checksum, NET-DEV-26); flag bits it does not know are ignored (NET-DEV-15); hdr_len is never
read (NET-DEV-21).

Receive (:func:`checksum_verified`): whether the frame is IPv4 or IPv6 carrying TCP or UDP whose checksum the
device computed and found correct; only then does it set VIRTIO_NET_HDR_F_DATA_VALID (NET-DEV-62).
"""

from __future__ import annotations

import struct

from backend.virtio.net_hdr import F_NEEDS_CSUM

ETH_HLEN = 14
_VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")
_ETH_P_IP = b"\x08\x00"
_ETH_P_IPV6 = b"\x86\xdd"
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_IPV6_HLEN = 40
_TCP_MIN = 20
_UDP_HLEN = 8


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The 16-bit ones-complement sum of ``data`` (an odd length padded with a zero byte, RFC 1071)."""
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\0"
    value = int.from_bytes(raw, "big")
    folded = value % 0xFFFF
    return 0xFFFF if folded == 0 and value else folded


def complete_checksum(flags: int, csum_start: int, csum_offset: int, frame: bytes) -> bytes | None:
    """The frame as it goes on the wire given its transmit header fields; None when NEEDS_CSUM points the checksum
    outside the frame (a driver error: the packet is dropped, never half-sent)."""
    if not flags & F_NEEDS_CSUM:
        return frame  # the other flag bits are no business of a device without them (NET-DEV-15)
    at = csum_start + csum_offset
    if csum_start >= len(frame) or at + 2 > len(frame):
        return None
    out = bytearray(frame)
    csum = ~ones_sum(memoryview(out)[csum_start:]) & 0xFFFF
    # 0 and 0xFFFF are the same ones-complement value; a UDP checksum of 0 would read "none" (RFC 768).
    struct.pack_into("!H", out, at, csum or 0xFFFF)
    return bytes(out)


def _l3(frame: bytes) -> tuple[bytes, int]:
    """(ethertype, offset of the network header), past at most one VLAN tag."""
    off = 12
    ethertype = frame[off:off + 2]
    if ethertype in _VLAN_TPIDS:
        off += 4
        ethertype = frame[off:off + 2]
    return ethertype, off + 2


def checksum_verified(frame: bytes) -> bool:
    """True only for an IPv4 or IPv6 packet carrying TCP or UDP whose checksum was computed here and is correct
    (and, for IPv4, whose header checksum is too). Anything else (fragments, IPv6 extension headers, UDP over
    IPv4 without a checksum, truncated packets) is not vouched for."""
    ethertype, nh = _l3(frame)
    if ethertype == _ETH_P_IP:
        if len(frame) < nh + 20 or frame[nh] >> 4 != 4:
            return False
        ihl = (frame[nh] & 0x0F) * 4
        total = int.from_bytes(frame[nh + 2:nh + 4], "big")
        if ihl < 20 or total < ihl or nh + total > len(frame):
            return False
        if int.from_bytes(frame[nh + 6:nh + 8], "big") & 0x3FFF:
            return False  # a fragment (MF or an offset): the transport checksum covers the whole datagram
        if ones_sum(frame[nh:nh + ihl]) != 0xFFFF:
            return False
        proto = frame[nh + 9]
        l4, l4_len = nh + ihl, total - ihl
        pseudo = frame[nh + 12:nh + 20] + bytes((0, proto)) + l4_len.to_bytes(2, "big")
    elif ethertype == _ETH_P_IPV6:
        if len(frame) < nh + _IPV6_HLEN or frame[nh] >> 4 != 6:
            return False
        proto = frame[nh + 6]  # extension headers are not walked: such packets are not vouched for
        l4, l4_len = nh + _IPV6_HLEN, int.from_bytes(frame[nh + 4:nh + 6], "big")
        if l4 + l4_len > len(frame):
            return False
        pseudo = frame[nh + 8:nh + 40] + l4_len.to_bytes(4, "big") + bytes((0, 0, 0, proto))
    else:
        return False
    if proto == IPPROTO_TCP:
        if l4_len < _TCP_MIN:
            return False
    elif proto == IPPROTO_UDP:
        if l4_len < _UDP_HLEN or int.from_bytes(frame[l4 + 4:l4 + 6], "big") != l4_len:
            return False
        if frame[l4 + 6:l4 + 8] == b"\0\0":
            return False  # no checksum sent (IPv4), or an invalid one (IPv6): nothing to validate
    else:
        return False
    return ones_sum(pseudo + frame[l4:l4 + l4_len]) == 0xFFFF


__all__ = ["IPPROTO_TCP", "IPPROTO_UDP", "checksum_verified", "complete_checksum", "ones_sum"]
