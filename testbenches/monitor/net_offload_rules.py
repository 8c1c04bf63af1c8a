"""Driver-side virtio-net rows about transmit offloads (5.1.9.2.1): the checksum a driver leaves to the device
(NEEDS_CSUM: NET-DRV-35/36/37), host GSO requests (NET-DRV-24/25 ECN, NET-DRV-40 gso_size, NET-DRV-41/42 hdr_len)
and the GUEST_HDRLEN choice (NET-DRV-48), judged on the buffers the ring monitors see, as the rows of
:mod:`testbenches.monitor.net_hdr_rules` are (one function per row, a :class:`Finding` or None when the buffer
gave the row no opportunity).

The frame's headers are parsed here (Ethernet with VLAN tags, IPv4 or IPv6 without extension headers, TCP or
UDP); a frame of another kind, or with a UDP-tunnel gso_type (whose inner headers these rules do not walk), judges
none of the rows that need them.

UDP-tunnel GSO requests (HOST_UDP_TUNNEL_GSO / _CSUM: NET-DRV-27/28/29/30/44/46/47) are judged on frames that parse
as VXLAN (UDP port 4789) or GENEVE (6081, Ethernet payload) over UDP over IPv4/IPv6 around an inner IPv4/IPv6 TCP or
UDP packet (:func:`tunnel`); a tunnel packet of another encapsulation gives these rows no opportunity. "Needs outer
checksum offload" is read off the frame: an outer UDP checksum neither 0 nor the complete value (the pseudo-header
sum a driver leaves for the device).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from backend.virtio.features import NetF, has
from backend.virtio.net_hdr import (
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_TUNNEL,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    NetHdr,
    tunnel_offsets,
)
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


# --- UDP-tunnel GSO (NET-DRV-27/28/29/30/44/46/47) ---------------------------------------------------------------

VXLAN_PORT, GENEVE_PORT = 4789, 6081
ETH_P_TEB = 0x6558  # GENEVE protocol type: an Ethernet frame


@dataclass(frozen=True)
class Tunnel:
    """A UDP-tunnel frame: the ``outer`` headers (UDP) and the ``inner`` ones, offsets from the frame's start."""

    outer: Transport
    inner: Transport


def tunnel(eth: bytes) -> Tunnel | None:
    """The headers of a VXLAN or GENEVE frame around an inner IPv4/IPv6 TCP or UDP packet (None for any other)."""
    o = transport(eth)
    if o is None or o.proto != IPPROTO_UDP or len(eth) < o.l4 + 16:
        return None
    dport = struct.unpack_from("!H", eth, o.l4 + 2)[0]
    if dport == VXLAN_PORT:
        tlen = 8
    elif dport == GENEVE_PORT and struct.unpack_from("!H", eth, o.l4 + 10)[0] == ETH_P_TEB:
        tlen = 8 + (eth[o.l4 + 8] & 0x3F) * 4
    else:
        return None
    at = o.l4 + 8 + tlen
    i = transport(eth[at:])
    if i is None:
        return None
    return Tunnel(o, Transport(i.v6, i.nh + at, i.l4 + at, i.proto, i.hlen + at, i.end + at))


def _tunnelled(tx: TxBuffer) -> tuple[NetHdr, Tunnel] | None:
    hdr = tx.hdr
    t = tunnel(tx.frame_head) if hdr is not None else None
    return None if hdr is None or t is None else (hdr, t)


def _outer_csum(tx: TxBuffer, t: Tunnel) -> tuple[int, int, bool] | None:
    """(outer UDP checksum field, outer pseudo-header sum, whether the field completes the datagram), or None when
    the buffer does not hold the whole frame."""
    eth, o = tx.frame_head, t.outer
    if len(tx.head) < tx.length or o.end > len(eth):
        return None
    field = struct.unpack_from("!H", eth, o.l4 + 6)[0]
    pseudo = pseudo_header_sum(eth, o)
    return field, pseudo, ones_sum(struct.pack("!H", pseudo) + eth[o.l4:o.end]) == 0xFFFF


def _needs_outer(tx: TxBuffer, t: Tunnel) -> bool | None:
    """Whether the outer UDP checksum is left to the device (neither 0 nor complete); None: not whole."""
    c = _outer_csum(tx, t)
    return None if c is None else c[0] != 0 and not c[2]


def net_drv_27(tx: TxBuffer) -> Finding | None:
    """A UDP-tunnel GSO request carries TUNNEL_IPV4 for an inner IPv4 header, TUNNEL_IPV6 for an inner IPv6 one."""
    p = _tunnelled(tx)
    if p is None or not p[0].gso_type & GSO_UDP_TUNNEL:
        return None
    hdr, t = p
    want = GSO_UDP_TUNNEL_IPV6 if t.inner.v6 else GSO_UDP_TUNNEL_IPV4
    return Finding("NET-DRV-27", hdr.gso_type & GSO_UDP_TUNNEL == want,
                   f"{tx.where}: inner IPv{6 if t.inner.v6 else 4}, gso_type {hdr.gso_type:#x}")


def net_drv_28(tx: TxBuffer) -> Finding | None:
    """A tunnel GSO packet needing outer UDP checksum offload only with HOST_UDP_TUNNEL_GSO and _CSUM negotiated."""
    p = _tunnelled(tx)
    if p is None or p[0].gso_type == GSO_NONE or not _needs_outer(tx, p[1]):
        return None
    ok = has(tx.features, NetF.HOST_UDP_TUNNEL_GSO) and has(tx.features, NetF.HOST_UDP_TUNNEL_GSO_CSUM)
    return Finding("NET-DRV-28", ok, f"{tx.where}: tunnel GSO packet with its outer UDP checksum left to the device, "
                   f"HOST_UDP_TUNNEL_GSO and _CSUM not both negotiated")


def net_drv_29(tx: TxBuffer) -> Finding | None:
    """A GSO packet needing outer UDP checksum offload carries a tunnel bit and VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM."""
    p = _tunnelled(tx)
    if p is None or p[0].gso_type == GSO_NONE or not _needs_outer(tx, p[1]):
        return None
    hdr = p[0]
    return Finding("NET-DRV-29", bool(hdr.gso_type & GSO_UDP_TUNNEL and hdr.flags & F_UDP_TUNNEL_CSUM),
                   f"{tx.where}: outer UDP checksum left to the device, gso_type {hdr.gso_type:#x}, "
                   f"flags {hdr.flags:#x}")


def net_drv_30(tx: TxBuffer) -> Finding | None:
    """With HOST_UDP_TUNNEL_GSO and without _CSUM: no UDP_TUNNEL_CSUM flag, no tunnel GSO packet needing outer
    checksum offload (judged on buffers with the flag or a tunnel frame)."""
    hdr = tx.hdr
    if hdr is None or not has(tx.features, NetF.HOST_UDP_TUNNEL_GSO) \
            or has(tx.features, NetF.HOST_UDP_TUNNEL_GSO_CSUM):
        return None
    p = _tunnelled(tx)
    flag = bool(hdr.flags & F_UDP_TUNNEL_CSUM)
    if not flag and p is None:
        return None
    needs = p is not None and bool(hdr.gso_type & GSO_UDP_TUNNEL) and bool(_needs_outer(tx, p[1]))
    return Finding("NET-DRV-30", not flag and not needs,
                   f"{tx.where}: without HOST_UDP_TUNNEL_GSO_CSUM, flags {hdr.flags:#x}, outer UDP checksum "
                   f"{'left to the device' if needs else 'not left to the device'}")


def net_drv_44(tx: TxBuffer) -> Finding | None:
    """A tunnel-marked packet's outer_th_offset is its outer UDP header, inner_nh_offset its inner network header,
    csum_start its inner transport header."""
    p = _tunnelled(tx)
    if p is None or not p[0].gso_type & GSO_UDP_TUNNEL:
        return None
    hdr, t = p
    outer_th_offset, inner_nh_offset = tunnel_offsets(tx.head[:tx.hdr_size])
    want = (t.outer.l4, t.inner.nh, t.inner.l4)
    got = (outer_th_offset, inner_nh_offset, hdr.csum_start)
    return Finding("NET-DRV-44", got == want, f"{tx.where}: outer_th_offset/inner_nh_offset/csum_start {got}, the "
                   f"headers are at {want}")


def net_drv_46(tx: TxBuffer) -> Finding | None:
    """With UDP_TUNNEL_CSUM, the outer UDP checksum field holds the outer pseudo-header sum."""
    p = _tunnelled(tx)
    if p is None or not p[0].flags & F_UDP_TUNNEL_CSUM:
        return None
    c = _outer_csum(tx, p[1])
    if c is None:
        return None
    field, pseudo, _ = c
    return Finding("NET-DRV-46", field == pseudo or {field, pseudo} <= {0, 0xFFFF},
                   f"{tx.where}: UDP_TUNNEL_CSUM, outer UDP checksum {field:#06x}, pseudo-header sum {pseudo:#06x}")


def net_drv_47(tx: TxBuffer) -> Finding | None:
    """A tunnel-marked packet without HOST_UDP_TUNNEL_GSO_CSUM has an outer UDP checksum of 0 or complete."""
    p = _tunnelled(tx)
    if p is None or not p[0].gso_type & GSO_UDP_TUNNEL or has(tx.features, NetF.HOST_UDP_TUNNEL_GSO_CSUM):
        return None
    c = _outer_csum(tx, p[1])
    if c is None:
        return None
    return Finding("NET-DRV-47", c[0] == 0 or c[2], f"{tx.where}: without HOST_UDP_TUNNEL_GSO_CSUM, outer UDP "
                   f"checksum {c[0]:#06x}, neither 0 nor complete")


TUNNEL_TX_RULES: tuple[Callable[[TxBuffer], Finding | None], ...] = (
    net_drv_27, net_drv_28, net_drv_29, net_drv_30, net_drv_44, net_drv_46, net_drv_47)
#: The UDP-tunnel rows this module judges on transmit buffers.
NET_DRV_TUNNEL_ROWS = tuple(f.__name__.replace("net_drv_", "NET-DRV-") for f in TUNNEL_TX_RULES)


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
    return [f for rule in (*OFFLOAD_TX_RULES, *TUNNEL_TX_RULES) if (f := rule(tx)) is not None]


__all__ = ["NET_DRV_OFFLOAD_ROWS", "NET_DRV_TUNNEL_ROWS", "OFFLOAD_TX_RULES", "TUNNEL_TX_RULES", "Transport", "Tunnel",
           "judge_offload", "net_drv_48", "transport", "tunnel"]
