"""scapy layers of the backend's wire formats, for traces, pretty-printing and fuzzing.

Needs scapy (the ``bench`` extra); the backend itself never imports this module, only
:meth:`backend.vhost_user.messages.Message.to_scapy` does, when called.
"""

from __future__ import annotations

from typing import Final

from scapy.fields import (
    AnyField,
    BitEnumField,
    BitField,
    ByteEnumField,
    FlagsField,
    LEIntEnumField,
    LEIntField,
    LELongField,
    LEShortField,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers

from backend.vhost_user.messages import BackendRequest, FrontendRequest, HeaderFlag
from backend.virtio.net_hdr import GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4
from backend.virtio.packed_ring import EventFlags, PackedDescFlags

_FLAG_NAMES: Final = ["VERSION0", "VERSION1", "REPLY", "NEED_REPLY"]


def _header_fields(requests: type[FrontendRequest] | type[BackendRequest]) -> list[AnyField]:
    """u32 request, u32 flags, u32 size: the same header on both channels, which number requests apart."""
    return [
        LEIntEnumField("request", 0, {int(m): m.name for m in requests}),
        FlagsField("flags", int(HeaderFlag.VERSION), -32, _FLAG_NAMES),
        LEIntField("size", 0),
    ]


class VhostUserHeader(Packet):
    """The vhost-user main-channel header: ``VhostUserHeader(request=8, size=8)/Raw(...)``."""

    name = "vhost-user"
    fields_desc = _header_fields(FrontendRequest)


class VhostUserBackendHeader(Packet):
    """The vhost-user back-end channel header (back-end request numbering)."""

    name = "vhost-user backend"
    fields_desc = _header_fields(BackendRequest)


class VirtioNetHdr(Packet):
    """struct virtio_net_hdr (5.1.6): ``VirtioNetHdr()/Ether()/IP()/...``; dissects the frame that follows."""

    name = "virtio_net_hdr"
    fields_desc = [
        FlagsField("flags", 0, 8, ["NEEDS_CSUM", "DATA_VALID", "RSC_INFO"]),
        ByteEnumField("gso_type", GSO_NONE, {GSO_NONE: "NONE", GSO_TCPV4: "TCPV4", GSO_UDP: "UDP",
                                             GSO_TCPV6: "TCPV6", GSO_UDP_L4: "UDP_L4"}),
        LEShortField("hdr_len", 0),
        LEShortField("gso_size", 0),
        LEShortField("csum_start", 0),
        LEShortField("csum_offset", 0),
        LEShortField("num_buffers", 0),
    ]


#: Bit names of a packed descriptor's flags, bit 0 first (unnamed bits are reserved).
_PACKED_FLAG_BITS: Final = {int(f).bit_length() - 1: str(f.name) for f in PackedDescFlags}
_PACKED_FLAG_NAMES: Final = [_PACKED_FLAG_BITS.get(b, f"bit{b}") for b in range(16)]


class PackedDesc(Packet):
    """struct pvirtq_desc (2.8.13), the view of :class:`backend.virtio.packed_ring.PackedDescriptor`."""

    name = "pvirtq_desc"
    fields_desc = [
        LELongField("addr", 0),
        LEIntField("len", 0),
        LEShortField("id", 0),
        FlagsField("flags", 0, -16, _PACKED_FLAG_NAMES),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s  # descriptors follow each other: the next one is not a payload of this one


class PackedEventSuppress(Packet):
    """struct pvirtq_event_suppress (2.8.14), the view of :class:`backend.virtio.packed_ring.EventSuppress`:
    two little-endian 16-bit words, desc (desc_event_off:15, desc_event_wrap:1) and flags (desc_event_flags:2)."""

    name = "pvirtq_event_suppress"
    fields_desc = [
        # Little-endian bit groups are listed from the word's top bit down (scapy's tot_size < 0 convention).
        BitField("wrap", 0, 1, tot_size=-2),
        BitField("off", 0, 15, end_tot_size=-2),
        BitField("reserved", 0, 14, tot_size=-2),
        BitEnumField("flags", 0, 2, {int(f): f.name for f in EventFlags}, end_tot_size=-2),
    ]

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


bind_layers(VirtioNetHdr, Ether)
