"""The virtio-net control virtqueue's wire format (virtio 1.4 5.1.6.5): command classes and commands, the ack
byte, and the RSS and hash reporting codes the commands and the receive header carry. Shared by the device side
(the behavioral model), the driver side (the checks, the backend's shadow control queue) and the RTL benches.

A command is ``struct virtio_net_ctrl { u8 class; u8 command; u8 command-specific-data[]; u8 ack; }``: the class
and command bytes and the data are device-readable, the ack byte device-writable.
"""

from __future__ import annotations

from typing import Final

#: The ack byte.
VIRTIO_NET_OK: Final = 0
VIRTIO_NET_ERR: Final = 1

#: Receive mode (5.1.6.5.1): one byte on/off each; PROMISC and ALLMULTI with CTRL_RX, the rest with CTRL_RX_EXTRA.
VIRTIO_NET_CTRL_RX: Final = 0
VIRTIO_NET_CTRL_RX_PROMISC: Final = 0
VIRTIO_NET_CTRL_RX_ALLMULTI: Final = 1
VIRTIO_NET_CTRL_RX_ALLUNI: Final = 2
VIRTIO_NET_CTRL_RX_NOMULTI: Final = 3
VIRTIO_NET_CTRL_RX_NOUNI: Final = 4
VIRTIO_NET_CTRL_RX_NOBCAST: Final = 5

#: MAC filtering (5.1.6.5.2): TABLE_SET carries two tables (le32 entries, then 6-byte addresses), unicast first.
VIRTIO_NET_CTRL_MAC: Final = 1
VIRTIO_NET_CTRL_MAC_TABLE_SET: Final = 0
VIRTIO_NET_CTRL_MAC_ADDR_SET: Final = 1

#: VLAN filtering (5.1.6.5.3): a le16 VLAN id.
VIRTIO_NET_CTRL_VLAN: Final = 2
VIRTIO_NET_CTRL_VLAN_ADD: Final = 0
VIRTIO_NET_CTRL_VLAN_DEL: Final = 1

#: Gratuitous packet sending (5.1.6.5.4).
VIRTIO_NET_CTRL_ANNOUNCE: Final = 3
VIRTIO_NET_CTRL_ANNOUNCE_ACK: Final = 0

#: Multiqueue, RSS and hash reporting (5.1.6.5.6 - 5.1.6.5.7).
VIRTIO_NET_CTRL_MQ: Final = 4
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: Final = 0
VIRTIO_NET_CTRL_MQ_RSS_CONFIG: Final = 1
VIRTIO_NET_CTRL_MQ_HASH_CONFIG: Final = 2

#: Hash types (5.1.6.4.3.1), in supported_hash_types and in the RSS/HASH configuration's hash_types.
VIRTIO_NET_RSS_HASH_TYPE_IPv4: Final = 1 << 0
VIRTIO_NET_RSS_HASH_TYPE_TCPv4: Final = 1 << 1
VIRTIO_NET_RSS_HASH_TYPE_UDPv4: Final = 1 << 2
VIRTIO_NET_RSS_HASH_TYPE_IPv6: Final = 1 << 3
VIRTIO_NET_RSS_HASH_TYPE_TCPv6: Final = 1 << 4
VIRTIO_NET_RSS_HASH_TYPE_UDPv6: Final = 1 << 5
VIRTIO_NET_RSS_HASH_TYPE_IP_EX: Final = 1 << 6
VIRTIO_NET_RSS_HASH_TYPE_TCP_EX: Final = 1 << 7
VIRTIO_NET_RSS_HASH_TYPE_UDP_EX: Final = 1 << 8

#: hash_report in the receive header (5.1.6.4.4).
VIRTIO_NET_HASH_REPORT_NONE: Final = 0
VIRTIO_NET_HASH_REPORT_IPv4: Final = 1
VIRTIO_NET_HASH_REPORT_TCPv4: Final = 2
VIRTIO_NET_HASH_REPORT_UDPv4: Final = 3
VIRTIO_NET_HASH_REPORT_IPv6: Final = 4
VIRTIO_NET_HASH_REPORT_TCPv6: Final = 5
VIRTIO_NET_HASH_REPORT_UDPv6: Final = 6

#: Inner header hash (5.1.9.4.4, VIRTIO_NET_F_HASH_TUNNEL): struct virtnet_hash_tunnel { le32 enabled_tunnel_types; }.
VIRTIO_NET_CTRL_HASH_TUNNEL: Final = 7
VIRTIO_NET_CTRL_HASH_TUNNEL_SET: Final = 0

#: Encapsulation types, in supported_tunnel_types and enabled_tunnel_types (5.1.9.4.4.3).
VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2784: Final = 1 << 0
VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2890: Final = 1 << 1
VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_7676: Final = 1 << 2
VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_UDP: Final = 1 << 3
VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN: Final = 1 << 4
VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN_GPE: Final = 1 << 5
VIRTIO_NET_HASH_TUNNEL_TYPE_GENEVE: Final = 1 << 6
VIRTIO_NET_HASH_TUNNEL_TYPE_IPIP: Final = 1 << 7
VIRTIO_NET_HASH_TUNNEL_TYPE_NVGRE: Final = 1 << 8
#: Every encapsulation type this spec defines (a driver disregards other bits of supported_tunnel_types).
VIRTIO_NET_HASH_TUNNEL_TYPES_DEFINED: Final = (VIRTIO_NET_HASH_TUNNEL_TYPE_NVGRE << 1) - 1

#: Offloads state (5.1.9.5.9, VIRTIO_NET_F_CTRL_GUEST_OFFLOADS): a le64 of guest offload feature bits.
VIRTIO_NET_CTRL_GUEST_OFFLOADS: Final = 5
VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET: Final = 0

#: RSS contexts (5.1.9.5.8, VIRTIO_NET_F_RSS_CONTEXT). CAP_GET answers struct virtnet_rss_ctx_cap { le16
#: max_rss_contexts; } in the command-specific-result after the ack; ADD and MOD carry struct
#: virtnet_rss_ctx_add_modify { le16 rss_ctx_id; u8 reserved[6]; struct virtio_net_rss_config rss; }, DEL
#: struct virtnet_rss_ctx_del { le16 rss_ctx_id; }.
VIRTNET_RSS_CTX_CTRL: Final = 9
VIRTNET_RSS_CTX_CTRL_CAP_GET: Final = 0
VIRTNET_RSS_CTX_CTRL_ADD: Final = 1
VIRTNET_RSS_CTX_CTRL_MOD: Final = 2
VIRTNET_RSS_CTX_CTRL_DEL: Final = 3
