"""virtio-net RSS contexts (virtio 1.4 5.1.9.5.8, VIRTIO_NET_F_RSS_CONTEXT) and automatic receive steering in
multiqueue mode (5.1.9.5.6, VIRTIO_NET_F_MQ without an RSS configuration).

:class:`RssContexts` answers the VIRTNET_RSS_CTX_CTRL commands: CAP_GET (max_rss_contexts in the
command-specific-result, at least 1: NETCTRL-DEV-32), ADD / MOD / DEL of contexts 1..max_rss_contexts, each an
RSS configuration held to the same rules as VIRTIO_NET_CTRL_MQ_RSS_CONFIG; a device reset discards them all
(NETCTRL-DEV-33). This spec version gives no way to direct packets to a context (no flow filter), so a context is
held and answered for, and the default configuration steers.

:class:`AutoSteering` steers a received packet of a flow to receiveqX when the flow's packets were last
transmitted on transmitqX (NETCTRL-DEV-B02), to a queue chosen by a hash of its addresses otherwise; a chosen
queue being reset gives another one (NETCTRL-DEV-27), all of them being reset drops the packet (NETCTRL-DEV-28).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from backend.virtio.features import NetF, has
from backend.virtio.net_ctrl import (
    VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
    VIRTNET_RSS_CTX_CTRL_ADD,
    VIRTNET_RSS_CTX_CTRL_CAP_GET,
    VIRTNET_RSS_CTX_CTRL_DEL,
    VIRTNET_RSS_CTX_CTRL_MOD,
)
from models.virtio_net.rss import Rss, RssConfig, parse_rss_config

#: max_rss_contexts of the model.
MAX_RSS_CONTEXTS = 4
#: rss_ctx_id and reserved[6] before the struct virtio_net_rss_config of ADD / MOD.
CTX_HEAD = struct.Struct("<H6x")
#: Flows remembered by automatic steering; the least recently transmitted is forgotten first.
FLOW_TABLE_SIZE = 4096

ETH_HLEN = 14
IPPROTO_TCP = 6
IPPROTO_UDP = 17


class RssContexts:
    """The RSS contexts of one device, by rss_ctx_id."""

    max_rss_contexts = MAX_RSS_CONTEXTS

    def __init__(self) -> None:
        self.contexts: dict[int, RssConfig] = {}

    def reset(self) -> None:
        """Device reset: every configured context discarded (NETCTRL-DEV-33)."""
        self.contexts.clear()

    def command(self, cmd: int, data: bytes, negotiated: int, pairs: int, enabled: set[int]) -> tuple[int, bytes]:
        """One VIRTNET_RSS_CTX_CTRL command: the ack byte and the command-specific-result. ADD of an id in use,
        MOD or DEL of one not in use, an id outside 1..max_rss_contexts, an RSS configuration RSS_CONFIG would
        refuse, or RSS_CONTEXT not negotiated: VIRTIO_NET_ERR, nothing changed."""
        if not has(negotiated, NetF.RSS_CONTEXT):
            return VIRTIO_NET_ERR, b""
        if cmd == VIRTNET_RSS_CTX_CTRL_CAP_GET:
            return VIRTIO_NET_OK, struct.pack("<H", self.max_rss_contexts)
        if len(data) < 2:
            return VIRTIO_NET_ERR, b""
        ctx_id = struct.unpack_from("<H", data)[0]
        if not 1 <= ctx_id <= self.max_rss_contexts:
            return VIRTIO_NET_ERR, b""
        if cmd == VIRTNET_RSS_CTX_CTRL_DEL and len(data) == 2 and ctx_id in self.contexts:
            del self.contexts[ctx_id]
            return VIRTIO_NET_OK, b""
        if cmd in (VIRTNET_RSS_CTX_CTRL_ADD, VIRTNET_RSS_CTX_CTRL_MOD) and len(data) > CTX_HEAD.size \
                and (ctx_id in self.contexts) == (cmd == VIRTNET_RSS_CTX_CTRL_MOD):
            cfg = parse_rss_config(data[CTX_HEAD.size:])
            if cfg is not None and Rss.rss_config_ok(cfg, pairs, enabled):
                self.contexts[ctx_id] = cfg
                return VIRTIO_NET_OK, b""
        return VIRTIO_NET_ERR, b""


def flow_ends(frame: bytes) -> tuple[bytes, bytes] | None:
    """The two ends of ``frame``'s flow, source first: IP address and, for unfragmented TCP/UDP, port; the MAC
    addresses for anything not IP (one 802.1Q tag skipped). None for a frame shorter than its headers."""
    if len(frame) < ETH_HLEN:
        return None
    off = ETH_HLEN
    ethertype = frame[12:14]
    if ethertype == b"\x81\x00" and len(frame) >= off + 4:
        ethertype = frame[16:18]
        off += 4
    if ethertype == b"\x08\x00" and len(frame) >= off + 20 and frame[off] >> 4 == 4:
        src, dst = frame[off + 12:off + 16], frame[off + 16:off + 20]
        l4 = off + (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        ported = not struct.unpack_from(">H", frame, off + 6)[0] & 0x3FFF
    elif ethertype == b"\x86\xdd" and len(frame) >= off + 40 and frame[off] >> 4 == 6:
        src, dst = frame[off + 8:off + 24], frame[off + 24:off + 40]
        l4 = off + 40
        proto = frame[off + 6]
        ported = True
    else:
        return frame[6:12], frame[0:6]
    if ported and proto in (IPPROTO_TCP, IPPROTO_UDP) and len(frame) >= l4 + 4:
        return src + frame[l4:l4 + 2], dst + frame[l4 + 2:l4 + 4]
    return src, dst


def spread_hash(frame: bytes) -> int:
    """The hash spreading flows never transmitted: CRC-32 of the IPv4 addresses, else of the MAC addresses."""
    is_ipv4 = len(frame) >= 34 and frame[12:14] == b"\x08\x00"
    return zlib.crc32(frame[26:34] if is_ipv4 else frame[:12])


class AutoSteering:
    """Automatic receive steering: the transmit queue pair each flow was last sent on."""

    def __init__(self) -> None:
        self.flows: dict[tuple[bytes, bytes], int] = {}
        #: the queue pair of the transmit queue being processed (set before its frames are transmitted)
        self.tx_pair = 0

    def reset(self) -> None:
        self.flows.clear()
        self.tx_pair = 0

    def learn(self, frame: bytes) -> None:
        """``frame`` goes out on transmitq(:attr:`tx_pair` + 1): its flow's incoming packets belong there."""
        ends = flow_ends(frame)
        if ends is None:
            return
        self.flows.pop(ends, None)
        self.flows[ends] = self.tx_pair
        if len(self.flows) > FLOW_TABLE_SIZE:
            del self.flows[next(iter(self.flows))]

    def pair_for(self, frame: bytes, active_pairs: int, ready: Callable[[int], bool]) -> int | None:
        """The receive queue pair of an incoming ``frame`` among the first ``active_pairs``: the one its flow
        was last transmitted on (the incoming packet's ends reversed), else by :func:`spread_hash`; a queue not
        ``ready`` (being reset) gives another one, chosen by the same hash among the ready ones; None when none
        is ready (the packet is dropped)."""
        h = spread_hash(frame)
        ends = flow_ends(frame)
        want = self.flows.get((ends[1], ends[0])) if ends is not None else None
        if want is None or want >= active_pairs:
            want = h % active_pairs
        if ready(want):
            return want
        others = [p for p in range(active_pairs) if ready(p)]
        return others[h % len(others)] if others else None


__all__ = ["MAX_RSS_CONTEXTS", "AutoSteering", "RssContexts", "flow_ends", "spread_hash"]
