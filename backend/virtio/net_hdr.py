"""struct virtio_net_hdr (5.1.6); its scapy layer is in :mod:`backend.scapy_layers`.

With VIRTIO_F_VERSION_1 the header always carries ``num_buffers`` (12 bytes);
HASH_REPORT extends it to 20 bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HDR = struct.Struct("<BBHHHHH")
HDR_SIZE = 12
HDR_SIZE_HASH = 20

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
F_RSC_INFO = 4
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80


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
