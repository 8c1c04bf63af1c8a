"""struct virtio_net_hdr (5.1.6); its scapy layer is in :mod:`backend.scapy_layers`.

With VIRTIO_F_VERSION_1 the header always carries ``num_buffers`` (12 bytes);
HASH_REPORT extends it to 20 bytes, HOST_UDP_TUNNEL_GSO to 24, OUT_NET_HEADER or IPSEC to 32
(:func:`hdr_size`, 5.1.6.1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from backend.virtio.features import NetF, has

HDR = struct.Struct("<BBHHHHH")
HDR_SIZE = 12
HDR_SIZE_HASH = 20
HDR_SIZE_TUNNEL = 24
HDR_SIZE_OUT_NET = 32

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
F_RSC_INFO = 4
F_UDP_TUNNEL_CSUM = 8
#: outer_th_offset and inner_nh_offset (le16 each) at this offset of the header with HOST/GUEST_UDP_TUNNEL_GSO.
TUNNEL_FIELDS = struct.Struct("<HH")
TUNNEL_FIELDS_AT = 20
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_UDP_TUNNEL_IPV4 = 0x20
GSO_UDP_TUNNEL_IPV6 = 0x40
GSO_UDP_TUNNEL = GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6
GSO_ECN = 0x80


def tunnel_offsets(raw: bytes | memoryview) -> tuple[int, int]:
    """outer_th_offset and inner_nh_offset of a header of HDR_SIZE_TUNNEL bytes or more ((0, 0) if shorter)."""
    if len(raw) < TUNNEL_FIELDS_AT + TUNNEL_FIELDS.size:
        return 0, 0
    outer_th_offset, inner_nh_offset = TUNNEL_FIELDS.unpack_from(raw, TUNNEL_FIELDS_AT)
    return int(outer_th_offset), int(inner_nh_offset)


def hdr_size(features: int) -> int:
    """The size of struct virtio_net_hdr under the negotiated ``features`` (VERSION_1): 32 bytes with OUT_NET_HEADER
    or IPSEC, else 24 with HOST_UDP_TUNNEL_GSO, else 20 with HASH_REPORT, else 12 (5.1.6.1, NET-DRV-56). 24 also
    with GUEST_UDP_TUNNEL_GSO alone: outer_th_offset and inner_nh_offset are there for received tunnel packets (5.1.6,
    "only if HOST_UDP_TUNNEL_GSO or GUEST_UDP_TUNNEL_GSO negotiated")."""
    if has(features, NetF.OUT_NET_HEADER) or has(features, NetF.IPSEC):
        return HDR_SIZE_OUT_NET
    if has(features, NetF.HOST_UDP_TUNNEL_GSO) or has(features, NetF.GUEST_UDP_TUNNEL_GSO):
        return HDR_SIZE_TUNNEL
    if has(features, NetF.HASH_REPORT):
        return HDR_SIZE_HASH
    return HDR_SIZE


@dataclass(frozen=True, slots=True)
class NetHdr:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0

    def pack(self) -> bytes:
        return HDR.pack(self.flags, self.gso_type, self.hdr_len, self.gso_size,
                        self.csum_start, self.csum_offset, self.num_buffers)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> NetHdr:
        return cls(*HDR.unpack_from(raw, offset))
