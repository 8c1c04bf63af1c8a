"""virtio-net inner header hash (virtio 1.4 5.1.9.4.4, VIRTIO_NET_F_HASH_TUNNEL).

:class:`InnerHash` holds ``enabled_tunnel_types`` (set by VIRTIO_NET_CTRL_HASH_TUNNEL_SET, 0 after reset) and,
for a received frame, gives the frame the hash is computed over (:meth:`InnerHash.hashed_frame`): the inner
packet when the outer header is an encapsulation of an enabled type, the frame itself otherwise (NETCTRL-DEV-01).
:func:`encapsulation` recognises one level of encapsulation from the wire:

- GRE (IP protocol 47, version 0): NVGRE when the key is present and the payload is Ethernet (0x6558),
  else GRE_7676 over IPv6, else GRE_2890 with a key or a sequence number, else GRE_2784;
- GRE in UDP (destination port 4754), VXLAN (4789, I flag), VXLAN-GPE (4790), GENEVE (6081, options skipped);
- IP in IP (IP protocol 4 or 41 in IPv4 or IPv6).

An inner IP packet without a link-layer header is given one (addresses zero: the hash never reads them), so the
hash input is chosen by :func:`models.virtio_net.rss.hash_input` for the inner packet as for any other.
"""

from __future__ import annotations

import struct

from backend.virtio.features import NetF, has
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
    VIRTIO_NET_ERR,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GENEVE,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2784,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2890,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_7676,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_UDP,
    VIRTIO_NET_HASH_TUNNEL_TYPE_IPIP,
    VIRTIO_NET_HASH_TUNNEL_TYPE_NVGRE,
    VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN,
    VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN_GPE,
    VIRTIO_NET_OK,
)

#: supported_tunnel_types: every type but VXLAN-GPE (left out, so a documented type can be refused too).
SUPPORTED_TUNNEL_TYPES = (VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2784 | VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2890
                          | VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_7676 | VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_UDP
                          | VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN | VIRTIO_NET_HASH_TUNNEL_TYPE_GENEVE
                          | VIRTIO_NET_HASH_TUNNEL_TYPE_IPIP | VIRTIO_NET_HASH_TUNNEL_TYPE_NVGRE)

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_TEB = 0x6558  # transparent Ethernet bridging: the payload is an Ethernet frame
IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
IPPROTO_UDP = 17
IPPROTO_GRE = 47
UDP_PORT_GRE = 4754
UDP_PORT_VXLAN = 4789
UDP_PORT_VXLAN_GPE = 4790
UDP_PORT_GENEVE = 6081
GRE_C, GRE_K, GRE_S = 0x8000, 0x2000, 0x1000
GRE_VERSION = 0x0007
#: VXLAN-GPE next protocol -> the inner packet's ethertype
GPE_NEXT = {1: ETH_P_IP, 2: ETH_P_IPV6, 3: ETH_P_TEB}


def _inner(frame: bytes, off: int, ethertype: int) -> bytes | None:
    """The inner packet at ``off`` as a frame: as it is when it is Ethernet, with a link-layer header of zero
    addresses when it is IP, None for anything else."""
    if off > len(frame):
        return None
    if ethertype == ETH_P_TEB:
        return frame[off:]
    if ethertype in (ETH_P_IP, ETH_P_IPV6):
        return bytes(12) + struct.pack(">H", ethertype) + frame[off:]
    return None


def _gre(frame: bytes, off: int, outer_v6: bool, in_udp: bool) -> tuple[int, bytes] | None:
    if len(frame) < off + 4:
        return None
    flags, proto = struct.unpack_from(">HH", frame, off)
    if flags & GRE_VERSION:
        return None  # version 1 is PPTP's enhanced GRE, not an encapsulation of this list
    size = 4 + 4 * sum(1 for bit in (GRE_C, GRE_K, GRE_S) if flags & bit)
    if in_udp:
        kind = VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_UDP
    elif flags & GRE_K and proto == ETH_P_TEB:
        kind = VIRTIO_NET_HASH_TUNNEL_TYPE_NVGRE
    elif outer_v6:
        kind = VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_7676
    elif flags & (GRE_K | GRE_S):
        kind = VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2890
    else:
        kind = VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2784
    inner = _inner(frame, off + size, proto)
    return None if inner is None else (kind, inner)


def _udp(frame: bytes, off: int, outer_v6: bool) -> tuple[int, bytes] | None:
    if len(frame) < off + 16:
        return None
    dport = struct.unpack_from(">H", frame, off + 2)[0]
    p = off + 8
    inner: bytes | None
    if dport == UDP_PORT_VXLAN and frame[p] & 0x08:
        inner = _inner(frame, p + 8, ETH_P_TEB)
        return None if inner is None else (VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN, inner)
    if dport == UDP_PORT_VXLAN_GPE and frame[p + 3] in GPE_NEXT:
        inner = _inner(frame, p + 8, GPE_NEXT[frame[p + 3]])
        return None if inner is None else (VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN_GPE, inner)
    if dport == UDP_PORT_GENEVE and frame[p] >> 6 == 0:
        opt_len = (frame[p] & 0x3F) * 4
        inner = _inner(frame, p + 8 + opt_len, struct.unpack_from(">H", frame, p + 2)[0])
        return None if inner is None else (VIRTIO_NET_HASH_TUNNEL_TYPE_GENEVE, inner)
    if dport == UDP_PORT_GRE:
        return _gre(frame, p, outer_v6, in_udp=True)
    return None


def encapsulation(frame: bytes) -> tuple[int, bytes] | None:
    """The encapsulation type of ``frame``'s outer header and its inner packet as a frame, or None: not one of
    the encapsulations of 5.1.9.4.4.3 (or a fragment, or truncated)."""
    off = ETH_HLEN
    if len(frame) < off:
        return None
    ethertype = struct.unpack_from(">H", frame, 12)[0]
    if ethertype == ETH_P_8021Q and len(frame) >= off + 4:
        ethertype = struct.unpack_from(">H", frame, 16)[0]
        off += 4
    if ethertype == ETH_P_IP and len(frame) >= off + 20 and frame[off] >> 4 == 4:
        if struct.unpack_from(">H", frame, off + 6)[0] & 0x3FFF:
            return None  # a fragment: the inner headers are not all there
        proto, l4, v6 = frame[off + 9], off + (frame[off] & 0x0F) * 4, False
    elif ethertype == ETH_P_IPV6 and len(frame) >= off + 40 and frame[off] >> 4 == 6:
        proto, l4, v6 = frame[off + 6], off + 40, True
    else:
        return None
    if proto == IPPROTO_GRE:
        return _gre(frame, l4, v6, in_udp=False)
    if proto == IPPROTO_UDP:
        return _udp(frame, l4, v6)
    if proto in (IPPROTO_IPIP, IPPROTO_IPV6):
        inner = _inner(frame, l4, ETH_P_IP if proto == IPPROTO_IPIP else ETH_P_IPV6)
        return None if inner is None else (VIRTIO_NET_HASH_TUNNEL_TYPE_IPIP, inner)
    return None


class InnerHash:
    """``enabled_tunnel_types`` of one device and the choice of the header the hash is computed over."""

    supported_tunnel_types = SUPPORTED_TUNNEL_TYPES

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Device reset: inner header hash off for every encapsulation type (NETCTRL-DEV-03)."""
        self.enabled_tunnel_types = 0

    def command(self, cmd: int, data: bytes, negotiated: int) -> int:
        """VIRTIO_NET_CTRL_HASH_TUNNEL_SET with struct virtnet_hash_tunnel; VIRTIO_NET_ERR for a type outside
        supported_tunnel_types (NETCTRL-DEV-02), without HASH_TUNNEL negotiated, or a payload not 4 bytes; an ERR
        changes nothing."""
        if cmd != VIRTIO_NET_CTRL_HASH_TUNNEL_SET or not has(negotiated, NetF.HASH_TUNNEL) or len(data) != 4:
            return VIRTIO_NET_ERR
        types = struct.unpack("<I", data)[0]
        if types & ~self.supported_tunnel_types:
            return VIRTIO_NET_ERR
        self.enabled_tunnel_types = types
        return VIRTIO_NET_OK

    def hashed_frame(self, frame: bytes) -> bytes:
        """The frame whose headers the hash is computed over: the inner packet when the outer header is an
        encapsulation enabled in enabled_tunnel_types, else ``frame`` (the outer header, NETCTRL-DEV-01)."""
        if not self.enabled_tunnel_types:
            return frame
        found = encapsulation(frame)
        if found is None or not found[0] & self.enabled_tunnel_types:
            return frame
        return found[1]


__all__ = ["SUPPORTED_TUNNEL_TYPES", "InnerHash", "encapsulation"]
