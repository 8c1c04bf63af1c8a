"""Driver-side virtio-net rows about transmit offloads (5.1.9.2.1): the checksum a driver leaves to the device
(NEEDS_CSUM: NET-DRV-35/36/37), host GSO requests (NET-DRV-24/25 ECN, NET-DRV-40 gso_size, NET-DRV-41/42 hdr_len)
and the GUEST_HDRLEN choice (NET-DRV-48), judged on the buffers the ring monitors see, as the rows of
:mod:`testbenches.monitor.net_hdr_rules` are (one function per row, a :class:`Finding` or None when the buffer
gave the row no opportunity).

The frame's headers are parsed here (Ethernet with VLAN tags, IPv4 or IPv6 without extension headers, TCP or
UDP); a frame of another kind, or with a UDP-tunnel gso_type (whose inner headers these rules do not walk), judges
none of the rows that need them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from backend.virtio.features import NetF, has
from backend.virtio.net_hdr import F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_TUNNEL
from testbenches.monitor.net_hdr_rules import (
    ETH_P_IP,
    ETH_P_IPV6,
    HOST_GSO,
    IPPROTO_TCP,
    IPPROTO_UDP,
    VLAN_HLEN,
    VLAN_TPIDS,
    TxBuffer,
    checksum_errors,
    ones_sum,
)
from testbenches.monitor.virtio_pci_rules import Finding

TCP_CWR = 0x80
#: Where the transport checksum field is in each header.
CSUM_FIELD = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}


@dataclass(frozen=True)
class Transport:
    """A frame's headers: network header at ``nh``, transport header at ``l4``; ``hlen`` bytes of headers from the
    frame's start through the transport header; the IP packet ends at ``end``."""

    v6: bool
    nh: int
    l4: int
    proto: int
    hlen: int
    end: int


def transport(eth: bytes) -> Transport | None:
    """The headers of an unfragmented IPv4/IPv6 TCP or UDP frame (None for any other)."""
    off = 12
    while len(eth) >= off + 2 and struct.unpack_from("!H", eth, off)[0] in VLAN_TPIDS:
        off += VLAN_HLEN
    if len(eth) < off + 2:
        return None
    ethertype, nh = struct.unpack_from("!H", eth, off)[0], off + 2
    if ethertype == ETH_P_IP and len(eth) >= nh + 20 and eth[nh] >> 4 == 4:
        ihl = (eth[nh] & 0xF) * 4
        if ihl < 20 or struct.unpack_from("!H", eth, nh + 6)[0] & 0x3FFF:
            return None
        v6, l4, proto, end = False, nh + ihl, eth[nh + 9], nh + struct.unpack_from("!H", eth, nh + 2)[0]
    elif ethertype == ETH_P_IPV6 and len(eth) >= nh + 40 and eth[nh] >> 4 == 6:
        v6, l4, proto, end = True, nh + 40, eth[nh + 6], nh + 40 + struct.unpack_from("!H", eth, nh + 4)[0]
    else:
        return None
    if proto == IPPROTO_TCP and len(eth) >= l4 + 20:
        hlen = l4 + (eth[l4 + 12] >> 4) * 4
    elif proto == IPPROTO_UDP:
        hlen = l4 + 8
    else:
        return None
    return Transport(v6, nh, l4, proto, hlen, end) if hlen <= min(end, len(eth)) else None


def _headers(tx: TxBuffer) -> Transport | None:
    """The frame's headers, unless the header marks a UDP tunnel (the rows would need the inner ones)."""
    hdr = tx.hdr
    if hdr is None or hdr.gso_type & GSO_UDP_TUNNEL:
        return None
    return transport(tx.frame_head)


def pseudo_header_sum(eth: bytes, t: Transport) -> int:
    """The ones-complement sum of the TCP/UDP pseudo-header for the transport length the IP header gives."""
    length = t.end - t.l4
    if t.v6:
        pseudo = eth[t.nh + 8:t.nh + 40] + struct.pack("!I", length) + bytes((0, 0, 0, t.proto))
    else:
        pseudo = eth[t.nh + 12:t.nh + 20] + bytes((0, t.proto)) + struct.pack("!H", length)
    return ones_sum(pseudo)


# --- ECN and TSO (NET-DRV-24/25) ---------------------------------------------------------------------------------


def _tso_cwr(tx: TxBuffer) -> bool | None:
    """Whether a TSO packet (gso_type TCPV4/TCPV6) has CWR set; None for any other buffer."""
    t = _headers(tx)
    if tx.gso not in (GSO_TCPV4, GSO_TCPV6) or t is None or t.proto != IPPROTO_TCP:
        return None
    return bool(tx.frame_head[t.l4 + 13] & TCP_CWR)


def net_drv_24(tx: TxBuffer) -> Finding | None:
    """Without HOST_ECN, no TCP packet needing segmentation has CWR set (SHOULD NOT)."""
    cwr = _tso_cwr(tx)
    if cwr is None or has(tx.features, NetF.HOST_ECN):
        return None
    return Finding("NET-DRV-24", not cwr, f"{tx.where}: TSO packet with CWR set, HOST_ECN not negotiated")


def net_drv_25(tx: TxBuffer) -> Finding | None:
    """With HOST_ECN, a TSO packet with CWR set carries VIRTIO_NET_HDR_GSO_ECN in gso_type."""
    cwr = _tso_cwr(tx)
    if not cwr or tx.hdr is None or not has(tx.features, NetF.HOST_ECN):
        return None
    return Finding("NET-DRV-25", bool(tx.hdr.gso_type & GSO_ECN),
                   f"{tx.where}: TSO packet with CWR set, gso_type {tx.hdr.gso_type:#x} without GSO_ECN")


# --- NEEDS_CSUM (NET-DRV-35/36/37) ---------------------------------------------------------------------------------


def _partial(tx: TxBuffer) -> tuple[int, int, bytes, Transport | None] | None:
    """(csum_start, csum_start + csum_offset, the frame, its headers) of a whole buffer with NEEDS_CSUM."""
    hdr = tx.hdr
    if hdr is None or not hdr.flags & F_NEEDS_CSUM or len(tx.head) < tx.length:
        return None
    return hdr.csum_start, hdr.csum_start + hdr.csum_offset, tx.frame_head, _headers(tx)


def net_drv_35(tx: TxBuffer) -> Finding | None:
    """With NEEDS_CSUM, every checksum before the offloaded one is valid: the IPv4 header checksum (an IPv6 packet
    has none before its transport checksum, and is no opportunity)."""
    p = _partial(tx)
    if p is None:
        return None
    _, at, eth, t = p
    if t is None or t.v6 or at < t.l4:
        return None
    return Finding("NET-DRV-35", ones_sum(eth[t.nh:t.l4]) == 0xFFFF,
                   f"{tx.where}: NEEDS_CSUM at {at}, the IPv4 header checksum before it is wrong")


def net_drv_36(tx: TxBuffer) -> Finding | None:
    """With NEEDS_CSUM, the TCP/UDP checksum field holds the pseudo-header sum."""
    p = _partial(tx)
    if p is None:
        return None
    _, _, eth, t = p
    if t is None or t.end > len(eth):
        return None
    field = t.l4 + CSUM_FIELD[t.proto]
    got, want = struct.unpack_from("!H", eth, field)[0], pseudo_header_sum(eth, t)
    return Finding("NET-DRV-36", got == want or {got, want} <= {0, 0xFFFF},
                   f"{tx.where}: NEEDS_CSUM, checksum field {got:#06x}, pseudo-header sum {want:#06x}")


def net_drv_37(tx: TxBuffer) -> Finding | None:
    """With NEEDS_CSUM, folding the sum from csum_start to the end into csum_start + csum_offset completes the
    packet (judged on IPv4/IPv6 TCP/UDP frames: their transport checksum must then be right)."""
    p = _partial(tx)
    if p is None or p[3] is None:
        return None
    start, at, eth, _ = p
    if start >= len(eth) or at + 2 > len(eth):
        return Finding("NET-DRV-37", False, f"{tx.where}: csum_start {start}, field at {at}: outside the "
                       f"{len(eth)}-byte frame")
    folded = ~ones_sum(eth[start:]) & 0xFFFF
    done = eth[:at] + struct.pack("!H", folded or 0xFFFF) + eth[at + 2:]
    wrong = [e for e in checksum_errors(done) or [] if not e.startswith("IPv4")]
    return Finding("NET-DRV-37", not wrong, f"{tx.where}: completed at csum_start {start} + csum_offset "
                   f"{at - start}: {', '.join(wrong)} still wrong")


# --- gso_size and hdr_len (NET-DRV-40/41/42) ------------------------------------------------------------------------


def net_drv_40(tx: TxBuffer) -> Finding | None:
    """A GSO request's gso_size is the MSS: not 0, and with VIRTIO_NET_F_MTU one segment's IP and transport headers
    (IP header only for UFO fragments) and gso_size bytes fit the mtu."""
    hdr = tx.hdr
    if hdr is None or tx.gso == GSO_NONE:
        return None
    t = _headers(tx)
    mtu = tx.config.mtu if has(tx.features, NetF.MTU) else None
    if hdr.gso_size == 0 or t is None or mtu is None:
        return Finding("NET-DRV-40", hdr.gso_size > 0, f"{tx.where}: gso_type {hdr.gso_type:#x} with gso_size 0")
    headers = (t.l4 if tx.gso == GSO_UDP else t.hlen) - t.nh
    return Finding("NET-DRV-40", headers + hdr.gso_size <= mtu,
                   f"{tx.where}: gso_size {hdr.gso_size} after {headers} bytes of headers exceeds mtu {mtu}")


def net_drv_41(tx: TxBuffer) -> Finding | None:
    """With a host GSO feature and GUEST_HDRLEN, a GSO request's hdr_len is the exact header length through the
    transport header."""
    hdr, t = tx.hdr, _headers(tx)
    if hdr is None or t is None or tx.gso == GSO_NONE or not has(tx.features, NetF.GUEST_HDRLEN) \
            or not any(has(tx.features, f) for f in HOST_GSO):
        return None
    return Finding("NET-DRV-41", hdr.hdr_len == t.hlen,
                   f"{tx.where}: hdr_len {hdr.hdr_len} with GUEST_HDRLEN, the headers are {t.hlen} bytes")


def net_drv_42(tx: TxBuffer) -> Finding | None:
    """Without GUEST_HDRLEN, or with gso_type NONE, hdr_len is not smaller than the header length through the
    transport header (SHOULD)."""
    hdr, t = tx.hdr, _headers(tx)
    if hdr is None or t is None or (has(tx.features, NetF.GUEST_HDRLEN) and tx.gso != GSO_NONE):
        return None
    return Finding("NET-DRV-42", hdr.hdr_len >= t.hlen,
                   f"{tx.where}: hdr_len {hdr.hdr_len} (gso_type {hdr.gso_type:#x}), the headers are {t.hlen} bytes")


OFFLOAD_TX_RULES: tuple[Callable[[TxBuffer], Finding | None], ...] = (
    net_drv_24, net_drv_25, net_drv_35, net_drv_36, net_drv_37, net_drv_40, net_drv_41, net_drv_42)


def net_drv_48(offered: int, acked: int) -> Finding | None:
    """A driver that supplies exact header lengths accepts VIRTIO_NET_F_GUEST_HDRLEN when offered (SHOULD): judged
    only on such a driver (the check says which), not among the feature choices of every driver."""
    if not has(offered, NetF.GUEST_HDRLEN):
        return None
    return Finding("NET-DRV-48", has(acked, NetF.GUEST_HDRLEN),
                   f"VIRTIO_NET_F_GUEST_HDRLEN offered, not acknowledged (acked {acked:#x})")


#: The rows this module judges on transmit buffers.
NET_DRV_OFFLOAD_ROWS = tuple(f.__name__.replace("net_drv_", "NET-DRV-") for f in OFFLOAD_TX_RULES)


def judge_offload(tx: TxBuffer) -> list[Finding]:
    return [f for rule in OFFLOAD_TX_RULES if (f := rule(tx)) is not None]


__all__ = ["NET_DRV_OFFLOAD_ROWS", "OFFLOAD_TX_RULES", "Transport", "judge_offload", "net_drv_48", "transport"]
