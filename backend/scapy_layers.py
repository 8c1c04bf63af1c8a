"""scapy layers of the backend's wire formats, for traces, pretty-printing and fuzzing.

Needs scapy (the ``bench`` extra); the backend itself never imports this module, only
:meth:`backend.vhost_user.messages.Message.to_scapy` does, when called.
"""

from __future__ import annotations

from typing import Final

from scapy.fields import ByteEnumField, FlagsField, LEIntEnumField, LEIntField, LEShortField
from scapy.layers.l2 import Ether
from scapy.packet import Packet, bind_layers

from backend.vhost_user.messages import BackendRequest, FrontendRequest, HeaderFlag
from backend.virtio.net_hdr import GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4

_FLAG_NAMES: Final = ["VERSION0", "VERSION1", "REPLY", "NEED_REPLY"]


class VhostUserHeader(Packet):
    """The vhost-user main-channel header: ``VhostUserHeader(request=8, size=8)/Raw(...)``."""

    name = "vhost-user"
    fields_desc = [
        LEIntEnumField("request", 0, {int(m): m.name for m in FrontendRequest}),
        FlagsField("flags", int(HeaderFlag.VERSION), -32, _FLAG_NAMES),
        LEIntField("size", 0),
    ]


class VhostUserBackendHeader(Packet):
    """The vhost-user back-end channel header (back-end request numbering)."""

    name = "vhost-user backend"
    fields_desc = [
        LEIntEnumField("request", 0, {int(m): m.name for m in BackendRequest}),
        FlagsField("flags", int(HeaderFlag.VERSION), -32, _FLAG_NAMES),
        LEIntField("size", 0),
    ]


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


bind_layers(VirtioNetHdr, Ether)
