"""Driver-side control virtqueue rows (5.1.9.4.4.5, 5.1.9.5: NETCTRL-DRV) judged on the commands a driver makes
available, as the ring monitors see them.

Each command is read from its device-readable bytes (``u8 class; u8 command; u8 command-specific-data[]``, the
ack byte after them is device-writable) and judged under the features the driver negotiated and the device
configuration it works with (max_virtqueue_pairs, rss_max_indirection_table_length, supported_hash_types,
supported_tunnel_types, mac), and under what the driver did before it on the register trace and the other queues:
which queues it enabled, which transmit queues it used, whether it read VIRTIO_NET_S_ANNOUNCE in status. One
function per row: it returns a :class:`Finding` when the command (or transmit buffer) gave the row an opportunity,
held or not, None when it did not. A row of the form "only with feature X" is judged on every command of a driver
that did not negotiate X.

:class:`ControlQueueMonitor` gathers the findings of a run; the ring monitors feed it (``SplitRingMonitor.ctrl``,
``PackedRingMonitor.ctrl``) with every buffer they walk and every register event under their ring layout. It never
writes and never touches the device. What it cannot see: a transmit buffer and a command made available before the
same doorbell are taken in queue order (transmit queues first), not in the order the driver wrote them.

Two rows depend on the device's answer to an earlier command (NETCTRL-DRV-22 on max_rss_contexts from CAP_GET,
NETCTRL-DRV-23 on an RSS context ADD or MOD acknowledged VIRTIO_NET_OK). The answer is read from the command's
device-writable bytes once the driver has gone on after its doorbell: at its next register access, or when its next
command uses none of those bytes (a driver frees a command's buffers once used and may reuse them). This assumes a
driver that waits for each command's answer before going on, as drivers do; an answer not read in time is unknown,
and the rows it would open are not judged on it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from scapy.layers.inet6 import ICMPv6ND_NA
from scapy.layers.l2 import ARP, Ether

from backend.virtio.features import NetF, has
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_ANNOUNCE,
    VIRTIO_NET_CTRL_ANNOUNCE_ACK,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
    VIRTIO_NET_CTRL_HASH_TUNNEL,
    VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI,
    VIRTIO_NET_CTRL_RX_ALLUNI,
    VIRTIO_NET_CTRL_RX_NOBCAST,
    VIRTIO_NET_CTRL_RX_NOMULTI,
    VIRTIO_NET_CTRL_RX_NOUNI,
    VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_HASH_TUNNEL_TYPES_DEFINED,
    VIRTIO_NET_OK,
    VIRTNET_RSS_CTX_CTRL,
    VIRTNET_RSS_CTX_CTRL_ADD,
    VIRTNET_RSS_CTX_CTRL_CAP_GET,
    VIRTNET_RSS_CTX_CTRL_MOD,
)
from backend.virtio.net_hdr import hdr_size
from backend.virtio.pci_regs import VIRTIO_NET_S_ANNOUNCE, CommonCfg, NetCfg
from testbenches.monitor.virtio_pci_rules import Event, Finding, verdicts_of

#: The RSS context commands that configure a context (CAP_GET, the capability query, has no rss_ctx_id; its
#: command-specific-result after the ack is le16 max_rss_contexts).
RSS_CTX_CONFIGURE = (VIRTNET_RSS_CTX_CTRL_ADD, VIRTNET_RSS_CTX_CTRL_MOD)
RX_EXTRA_COMMANDS = (VIRTIO_NET_CTRL_RX_ALLUNI, VIRTIO_NET_CTRL_RX_NOMULTI, VIRTIO_NET_CTRL_RX_NOUNI,
                     VIRTIO_NET_CTRL_RX_NOBCAST)
#: The longest command read (a MAC table of a few hundred entries, an RSS configuration of the longest table).
CMD_PEEK = 1 << 16
#: How much of a transmitted frame is read: its addresses, and an ARP or IPv6 neighbour advertisement whole.
FRAME_PEEK = 128
ETH_ALEN = 6

NETCTRL_DRV_ROWS = ("NETCTRL-DRV-01", "NETCTRL-DRV-02", "NETCTRL-DRV-03", "NETCTRL-DRV-04", "NETCTRL-DRV-05",
                    "NETCTRL-DRV-06", "NETCTRL-DRV-07", "NETCTRL-DRV-08", "NETCTRL-DRV-10", "NETCTRL-DRV-11",
                    "NETCTRL-DRV-12", "NETCTRL-DRV-13", "NETCTRL-DRV-14", "NETCTRL-DRV-15", "NETCTRL-DRV-16",
                    "NETCTRL-DRV-17", "NETCTRL-DRV-18", "NETCTRL-DRV-19", "NETCTRL-DRV-20", "NETCTRL-DRV-21",
                    "NETCTRL-DRV-22", "NETCTRL-DRV-23", "NETCTRL-DRV-24", "NETCTRL-DRV-B01")


@dataclass(frozen=True)
class CtrlConfig:
    """The device configuration the driver works with (None: the feature that gives the field not negotiated, or
    the field not readable); read once per bring-up, before any command could change it (MAC_ADDR_SET does)."""

    max_virtqueue_pairs: int = 1
    rss_max_indirection_table_length: int | None = None
    supported_hash_types: int | None = None
    supported_tunnel_types: int | None = None
    mac: bytes | None = None
    max_rss_contexts: int | None = None


@dataclass(frozen=True)
class Command:
    """One command as made available, with what the driver had done before it."""

    cls: int
    command: int
    data: bytes
    features: int
    config: CtrlConfig
    where: str
    #: Queues enabled (queue_enable 1) since the last reset.
    enabled: frozenset[int] = frozenset()
    #: An RSS context command acknowledged VIRTIO_NET_OK came before this one.
    context_configured: bool = False

    def named(self) -> str:
        return f"{self.where}: class {self.cls} command {self.command}, {len(self.data)} data bytes"

    def le(self, offset: int, size: int) -> int | None:
        """A little-endian field of the data, None past its end."""
        if offset + size > len(self.data):
            return None
        return int.from_bytes(self.data[offset:offset + size], "little")

    def is_(self, cls: int, command: int) -> bool:
        return self.cls == cls and self.command == command


def _without(c: Command, rid: str, feature: int, sent: bool, what: str) -> Finding | None:
    """A row "never ``what`` without ``feature``": judged on every command of a driver without the feature."""
    if has(c.features, feature):
        return None
    return Finding(rid, not sent, f"{c.named()}: {what} without VIRTIO_NET_F_{NetF(feature).name}")


def drv_01(c: Command) -> Finding | None:
    return _without(c, "NETCTRL-DRV-01", NetF.HASH_TUNNEL, c.cls == VIRTIO_NET_CTRL_HASH_TUNNEL,
                    "VIRTIO_NET_CTRL_HASH_TUNNEL")


def _enabled_tunnel_types(c: Command) -> int | None:
    return c.le(0, 4) if c.is_(VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET) else None


def drv_02(c: Command) -> Finding | None:
    enabled, supported = _enabled_tunnel_types(c), c.config.supported_tunnel_types
    if enabled is None or supported is None:
        return None
    return Finding("NETCTRL-DRV-02", not enabled & ~supported,
                   f"{c.named()}: enabled_tunnel_types {enabled:#x}, supported_tunnel_types {supported:#x}")


def drv_03(c: Command) -> Finding | None:
    enabled = _enabled_tunnel_types(c)
    if enabled is None:
        return None
    return Finding("NETCTRL-DRV-03", not enabled & ~VIRTIO_NET_HASH_TUNNEL_TYPES_DEFINED,
                   f"{c.named()}: enabled_tunnel_types {enabled:#x} has bits the spec does not define")


def drv_04(c: Command) -> Finding | None:
    return _without(c, "NETCTRL-DRV-04", NetF.CTRL_RX, c.cls == VIRTIO_NET_CTRL_RX and c.command in (
        VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_CTRL_RX_ALLMULTI), "VIRTIO_NET_CTRL_RX_PROMISC/ALLMULTI")


def drv_05(c: Command) -> Finding | None:
    return _without(c, "NETCTRL-DRV-05", NetF.CTRL_RX_EXTRA,
                    c.cls == VIRTIO_NET_CTRL_RX and c.command in RX_EXTRA_COMMANDS, "ALLUNI/NOMULTI/NOUNI/NOBCAST")


def drv_06(c: Command) -> Finding | None:
    return _without(c, "NETCTRL-DRV-06", NetF.CTRL_RX, c.cls == VIRTIO_NET_CTRL_MAC, "a VIRTIO_NET_CTRL_MAC command")


def parse_mac_table(data: bytes) -> tuple[list[bytes], list[bytes]] | str:
    """A MAC_TABLE_SET payload as (unicast, multicast) addresses, or what is wrong with it."""
    tables: list[list[bytes]] = []
    at = 0
    for name in ("unicast", "multicast"):
        if at + 4 > len(data):
            return f"{len(data)} bytes end before the {name} entries count"
        (entries,) = struct.unpack_from("<I", data, at)
        at += 4
        if at + entries * ETH_ALEN > len(data):
            return f"{name} entries {entries} need {entries * ETH_ALEN} bytes, {len(data) - at} follow"
        tables.append([data[at + i * ETH_ALEN:at + (i + 1) * ETH_ALEN] for i in range(entries)])
        at += entries * ETH_ALEN
    if at != len(data):
        return f"{len(data) - at} bytes after the multicast table"
    return tables[0], tables[1]


def drv_08(c: Command) -> Finding | None:
    """A MAC_TABLE_SET payload: two counted tables filling the data exactly, unicast addresses first."""
    if not c.is_(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET):
        return None
    parsed = parse_mac_table(c.data)
    if isinstance(parsed, str):
        return Finding("NETCTRL-DRV-08", False, f"{c.named()}: {parsed}")
    unicast, multicast = parsed
    misplaced = [m.hex(":") for m in unicast if m[0] & 1] + [m.hex(":") for m in multicast if not m[0] & 1]
    return Finding("NETCTRL-DRV-08", not misplaced, f"{c.named()}: {len(unicast)} unicast, {len(multicast)} "
                   f"multicast entries; in the wrong table by the group bit: {misplaced}")


def _virtqueue_pairs(c: Command) -> int | None:
    return c.le(0, 2) if c.is_(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) else None


def drv_12(c: Command) -> Finding | None:
    """Every queue of the pairs VQ_PAIRS_SET enables was enabled on the transport first."""
    pairs = _virtqueue_pairs(c)
    if pairs is None:
        return None
    missing = sorted(set(range(2 * min(pairs, c.config.max_virtqueue_pairs))) - c.enabled)
    return Finding("NETCTRL-DRV-12", not missing,
                   f"{c.named()}: virtqueue_pairs {pairs} with queues {missing} not set up (queue_enable)")


def drv_13(c: Command) -> Finding | None:
    pairs = _virtqueue_pairs(c)
    if not c.is_(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET):
        return None
    most = c.config.max_virtqueue_pairs
    return Finding("NETCTRL-DRV-13", pairs is not None and 1 <= pairs <= most and len(c.data) == 2,
                   f"{c.named()}: virtqueue_pairs {pairs}, max_virtqueue_pairs {most}")


def drv_16(c: Command) -> Finding | None:
    return _without(c, "NETCTRL-DRV-16", NetF.RSS, c.is_(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG),
                    "VIRTIO_NET_CTRL_MQ_RSS_CONFIG")


@dataclass(frozen=True)
class RssConfig:
    """struct virtio_net_rss_config's fields up to the table (5.1.6.5.7.1)."""

    hash_types: int
    indirection_table_mask: int
    unclassified_queue: int
    indirection_table: tuple[int, ...]


def parse_rss_config(c: Command) -> RssConfig | None:
    if not c.is_(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG) or len(c.data) < 8:
        return None
    hash_types, mask, unclassified = struct.unpack_from("<IHH", c.data)
    entries = min(mask + 1, (len(c.data) - 8) // 2)
    return RssConfig(hash_types, mask, unclassified, struct.unpack_from(f"<{entries}H", c.data, 8))


def drv_17(c: Command) -> Finding | None:
    """Every indirection_table entry (a receiveq, 0 = receiveq1) names a receive virtqueue the driver enabled."""
    rss = parse_rss_config(c)
    if rss is None:
        return None
    off = sorted({e for e in rss.indirection_table if 2 * e not in c.enabled})
    return Finding("NETCTRL-DRV-17", not off, f"{c.named()}: entries name receive queues {off} (0-based) that "
                   f"are not enabled; enabled virtqueues {sorted(c.enabled)}")


def drv_18(c: Command) -> Finding | None:
    rss = parse_rss_config(c)
    if rss is None:
        return None
    n = rss.indirection_table_mask + 1
    return Finding("NETCTRL-DRV-18", n & (n - 1) == 0, f"{c.named()}: indirection_table_mask "
                   f"{rss.indirection_table_mask:#x}: {n} entries, not a power of two")


def drv_19(c: Command) -> Finding | None:
    rss, most = parse_rss_config(c), c.config.rss_max_indirection_table_length
    if rss is None or most is None:
        return None
    return Finding("NETCTRL-DRV-19", rss.indirection_table_mask < most, f"{c.named()}: indirection_table_mask "
                   f"{rss.indirection_table_mask}, rss_max_indirection_table_length {most}")


def drv_20(c: Command) -> Finding | None:
    rss, supported = parse_rss_config(c), c.config.supported_hash_types
    if rss is None or supported is None:
        return None
    return Finding("NETCTRL-DRV-20", not rss.hash_types & ~supported,
                   f"{c.named()}: hash_types {rss.hash_types:#x}, supported_hash_types {supported:#x}")


def drv_b01(c: Command) -> Finding | None:
    """struct virtio_net_hash_config: le32 hash_types, le16 reserved[4] (all zero), the key."""
    if not c.is_(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_HASH_CONFIG):
        return None
    reserved = c.data[4:12]
    return Finding("NETCTRL-DRV-B01", len(reserved) == 8 and not any(reserved),
                   f"{c.named()}: reserved {reserved.hex()}")


def drv_21(c: Command) -> Finding | None:
    return _without(c, "NETCTRL-DRV-21", NetF.RSS_CONTEXT, c.cls == VIRTNET_RSS_CTX_CTRL,
                    "an RSS context class command")


def drv_22(c: Command) -> Finding | None:
    if c.cls != VIRTNET_RSS_CTX_CTRL or c.command == VIRTNET_RSS_CTX_CTRL_CAP_GET:
        return None
    ident, most = c.le(0, 2), c.config.max_rss_contexts
    if most is None:
        return None
    return Finding("NETCTRL-DRV-22", ident is not None and 1 <= ident <= most,
                   f"{c.named()}: rss_ctx_id {ident}, max_rss_contexts {most}")


def drv_23(c: Command) -> Finding | None:
    """After an RSS context was configured, every command is an opportunity not to send VQ_PAIRS_SET."""
    if not c.context_configured:
        return None
    return Finding("NETCTRL-DRV-23", not c.is_(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET),
                   f"{c.named()}: VQ_PAIRS_SET after an RSS context was configured")


def drv_24(c: Command) -> Finding | None:
    if not c.is_(VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET):
        return None
    offloads = c.le(0, 8)
    if offloads is None:
        return Finding("NETCTRL-DRV-24", False, f"{c.named()}: no le64 offloads")
    extra = [b for b in range(64) if offloads >> b & 1 and not has(c.features, b)]
    return Finding("NETCTRL-DRV-24", not extra,
                   f"{c.named()}: offloads {offloads:#x} enable feature bits {extra} not negotiated")


#: The rows judged on each command alone.
COMMAND_ROWS: tuple[Callable[[Command], Finding | None], ...] = (
    drv_01, drv_02, drv_03, drv_04, drv_05, drv_06, drv_08, drv_12, drv_13, drv_16, drv_17, drv_18, drv_19, drv_20,
    drv_b01, drv_21, drv_22, drv_23, drv_24)


def judge_command(c: Command) -> list[Finding]:
    return [f for rule in COMMAND_ROWS if (f := rule(c)) is not None]


@dataclass(frozen=True)
class TxFrame:
    """A frame the driver transmitted (after the header), on transmit queue ``queue`` (its virtqueue index)."""

    queue: int
    frame: bytes
    features: int
    where: str


def drv_14(tx: TxFrame, pairs: int | None, rss: bool = False) -> Finding | None:
    """Before any VQ_PAIRS_SET (``pairs`` None) with VIRTIO_NET_F_MQ: transmitq1 (virtqueue 1) only. Not judged
    once an RSS_CONFIG (``rss``) set max_tx_vq instead."""
    if pairs is not None or rss or not has(tx.features, NetF.MQ):
        return None
    return Finding("NETCTRL-DRV-14", tx.queue == 1, f"{tx.where}: a frame on virtqueue {tx.queue} before "
                   "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET")


def drv_15(tx: TxFrame, pairs: int | None) -> Finding | None:
    """After VQ_PAIRS_SET of ``pairs``: transmitq1..pairs only (virtqueues 1, 3, .. 2*pairs-1)."""
    if pairs is None:
        return None
    return Finding("NETCTRL-DRV-15", tx.queue < 2 * pairs, f"{tx.where}: a frame on virtqueue {tx.queue} (transmitq"
                   f"{tx.queue // 2 + 1}) after VQ_PAIRS_SET of {pairs}")


def drv_07(tx: TxFrame, mac: bytes | None, addr_set: bytes | None) -> Finding | None:
    """With CTRL_RX, a source address other than the mac field is one the driver set with MAC_ADDR_SET first."""
    if not has(tx.features, NetF.CTRL_RX) or mac is None or len(tx.frame) < 2 * ETH_ALEN:
        return None
    src = tx.frame[ETH_ALEN:2 * ETH_ALEN]
    if src == mac or src[0] & 1:
        return None
    return Finding("NETCTRL-DRV-07", src == addr_set, f"{tx.where}: source {src.hex(':')}, mac field "
                   f"{mac.hex(':')}, MAC_ADDR_SET sent {addr_set.hex(':') if addr_set else 'none'}")


def gratuitous(frame: bytes) -> bool:
    """An announcement of the sender's location: a gratuitous ARP (sender and target address the same) or an
    unsolicited IPv6 neighbour advertisement."""
    pkt = Ether(frame)
    if ARP in pkt:
        return bool(pkt[ARP].psrc == pkt[ARP].pdst)
    return ICMPv6ND_NA in pkt and not pkt[ICMPv6ND_NA].S


@dataclass
class _Announce:
    """The driver read VIRTIO_NET_S_ANNOUNCE (``where``); since then a gratuitous packet went out, an ACK came."""

    where: str
    gratuitous: str | None = None


@dataclass
class _Pending:
    """A command whose answer a later row needs: its device-writable parts; CAP_GET (max_rss_contexts in the
    result) or an RSS context ADD / MOD (the ack); ``armed`` once an event came after its doorbell."""

    writable: list[tuple[int, int]]
    cap_get: bool
    armed: bool = False


ConfigRead = Callable[[int, int], bytes]


@dataclass
class ControlQueueMonitor:
    """The NETCTRL-DRV findings of a run. Fed by a ring monitor: :meth:`event` with each register event (queue
    enables, device-config reads) and :meth:`buffer` with each buffer made available, under the driver's features.
    The control queue is the one after the queue pairs (virtqueue 2 * max_virtqueue_pairs with MQ or RSS, else 2)."""

    read: Callable[[int, int], bytes]
    #: The device configuration as the device shows it (not through the trace).
    read_config: ConfigRead | None = None
    findings: list[Finding] = field(default_factory=list)
    commands: int = 0
    tx_frames: int = 0
    unreadable: list[str] = field(default_factory=list)
    _config: CtrlConfig | None = None
    _enabled: set[int] = field(default_factory=set)
    _pairs: int | None = None  # virtqueue_pairs of the last VQ_PAIRS_SET (None: none since reset)
    _rss: bool = False  # an RSS_CONFIG since reset (its max_tx_vq, not VQ_PAIRS_SET, bounds the transmit queues)
    _addr_set: bytes | None = None
    #: Commands whose answer is still to be read (:class:`_Pending`), and whether a context was configured.
    _pending: list[_Pending] = field(default_factory=list)
    _context_configured: bool = False
    _announce: _Announce | None = None

    def reset(self) -> None:
        """A device reset: configuration, queues and the command history start again."""
        self._config, self._pairs, self._addr_set, self._announce, self._rss = None, None, None, None, False
        self._enabled.clear()
        self._pending.clear()
        self._context_configured = False

    def seen(self) -> str:
        return f"{self.commands} control command(s) and {self.tx_frames} transmitted frame(s) looked at"

    def opportunities(self, rid: str) -> int:
        """How many commands or frames judged row ``rid``."""
        return sum(1 for f in self.findings if f.req_id == rid)

    def verdicts(self) -> dict[str, tuple[bool, list[str]]]:
        """Per id; an announcement still unacknowledged at the end fails NETCTRL-DRV-10/11."""
        pending = []
        if self._announce is not None:
            a = self._announce
            pending.append(Finding("NETCTRL-DRV-11", False, f"{a.where}: VIRTIO_NET_S_ANNOUNCE read, no "
                                   "VIRTIO_NET_CTRL_ANNOUNCE_ACK by the end of the run"))
            if a.gratuitous is None:
                pending.append(Finding("NETCTRL-DRV-10", False, f"{a.where}: VIRTIO_NET_S_ANNOUNCE read, no "
                                       "gratuitous packet by the end of the run"))
        return verdicts_of([*self.findings, *pending])

    # --- configuration ---------------------------------------------------------------------------------------

    def _cfg(self, offset: int, size: int) -> int | None:
        if self.read_config is None:
            return None
        return int.from_bytes(self.read_config(offset, size), "little")

    def config(self, features: int) -> CtrlConfig:
        if self._config is None:
            rss = has(features, NetF.RSS)
            pairs = (self._cfg(NetCfg.MAX_VIRTQUEUE_PAIRS, 2) or 1) if has(features, NetF.MQ) or rss else 1
            mac = None
            if has(features, NetF.MAC) and self.read_config is not None:
                mac = bytes(self.read_config(NetCfg.MAC + i, 1)[0] for i in range(ETH_ALEN))
            hashing = rss or has(features, NetF.HASH_REPORT)
            self._config = CtrlConfig(
                pairs, self._cfg(NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 2) if rss else None,
                self._cfg(NetCfg.SUPPORTED_HASH_TYPES, 4) if hashing else None,
                self._cfg(NetCfg.SUPPORTED_TUNNEL_TYPES, 4) if has(features, NetF.HASH_TUNNEL) else None, mac)
        return self._config

    # --- feeding -------------------------------------------------------------------------------------------

    def event(self, e: Event, features: int) -> None:
        """A register event: queue_enable, and status reads that show VIRTIO_NET_S_ANNOUNCE (GUEST_ANNOUNCE); the
        answers of earlier commands read (the first event after a command's doorbell arms it, the next reads it)."""
        self._answers()
        if e.kind == "common_w" and e.field == CommonCfg.QUEUE_ENABLE and e.value == 1 and e.queue >= 0:
            self._enabled.add(e.queue)
        elif e.kind == "common_w" and e.field == CommonCfg.QUEUE_RESET and e.value == 1:
            self._enabled.discard(e.queue)
        elif (e.kind == "devcfg_r" and has(features, NetF.GUEST_ANNOUNCE)
              and e.offset <= NetCfg.STATUS < e.offset + e.size):
            status = e.value >> 8 * (NetCfg.STATUS - e.offset)
            if status & VIRTIO_NET_S_ANNOUNCE and self._announce is None:
                self._announce = _Announce(f"status read {status & 0xFFFF:#06x} (access {e.seq})")

    def buffer(self, queue: int, segments: Sequence[tuple[int, int, bool]], features: int, where: str) -> None:
        """One buffer made available on ``queue``: a command on the control queue, a frame on a transmit queue."""
        if not has(features, NetF.CTRL_VQ):
            return
        try:
            config = self.config(features)
            if queue == 2 * config.max_virtqueue_pairs:
                self._answers(before=segments)
                self._command(self._readable(segments, CMD_PEEK), [(a, n) for a, n, w in segments if w], features,
                              where)
            elif queue % 2:
                start = hdr_size(features)
                self._tx(queue, self._readable(segments, start + FRAME_PEEK)[start:], features, config, where)
        except Exception as exc:  # never disturb the ring monitor: a planted buffer may be unreadable
            self.unreadable.append(f"{where}: not judged: {exc}")

    def _readable(self, segments: Sequence[tuple[int, int, bool]], limit: int) -> bytes:
        out = b""
        for addr, n, writable in segments:
            if writable or len(out) >= limit:
                continue
            out += self.read(addr, min(n, limit - len(out)))
        return out

    def _written(self, writable: Sequence[tuple[int, int]], n: int) -> bytes:
        """The first ``n`` device-writable bytes of a command (the ack, then any command-specific-result)."""
        out = b""
        for addr, length in writable:
            if len(out) >= n:
                break
            out += self.read(addr, min(length, n - len(out)))
        return out

    def _answers(self, before: Sequence[tuple[int, int, bool]] | None = None) -> None:
        """Read the answers of the pending commands whose doorbell has passed (all of them, or with ``before``
        the next command's segments, those it does not overlap); the others are forgotten when ``before`` is
        given, armed otherwise."""
        keep = []
        for p in self._pending:
            reused = before is not None and any(a < pa + pn and pa < a + n for a, n, _w in before
                                                for pa, pn in p.writable)
            if p.armed and not reused:
                got = self._written(p.writable, 3 if p.cap_get else 1)
                if p.cap_get and len(got) == 3 and got[0] == VIRTIO_NET_OK and self._config is not None:
                    self._config = replace(self._config, max_rss_contexts=int.from_bytes(got[1:], "little"))
                elif not p.cap_get and got == bytes([VIRTIO_NET_OK]):
                    self._context_configured = True
            elif before is None:
                p.armed = True
                keep.append(p)
        self._pending = keep

    def _command(self, raw: bytes, writable: Sequence[tuple[int, int]], features: int, where: str) -> None:
        if len(raw) < 2:
            self.unreadable.append(f"{where}: {len(raw)} readable bytes, no class and command")
            return
        config = self.config(features)
        c = Command(raw[0], raw[1], raw[2:], features, config, where, frozenset(self._enabled),
                    self._context_configured)
        self.commands += 1
        self.findings.extend(judge_command(c))
        if c.is_(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET):
            self._pairs, self._rss = c.le(0, 2), False
        elif c.is_(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG):
            self._pairs, self._rss = None, True
        elif c.is_(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET) and len(c.data) == ETH_ALEN:
            self._addr_set = c.data
        elif c.cls == VIRTNET_RSS_CTX_CTRL and (c.command == VIRTNET_RSS_CTX_CTRL_CAP_GET
                                                   or c.command in RSS_CTX_CONFIGURE):
            self._pending.append(_Pending(list(writable), c.command == VIRTNET_RSS_CTX_CTRL_CAP_GET))
        elif c.is_(VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK) and self._announce is not None:
            a, self._announce = self._announce, None
            self.findings.append(Finding("NETCTRL-DRV-11", True, f"{a.where}, then {c.named()}"))
            self.findings.append(Finding("NETCTRL-DRV-10", a.gratuitous is not None,
                                         f"{a.where}, then {c.named()}: gratuitous packet between: "
                                         f"{a.gratuitous or 'none'}"))

    def _tx(self, queue: int, frame: bytes, features: int, config: CtrlConfig, where: str) -> None:
        tx = TxFrame(queue, frame, features, where)
        self.tx_frames += 1
        for f in (drv_14(tx, self._pairs, self._rss), drv_15(tx, self._pairs), drv_07(tx, config.mac, self._addr_set)):
            if f is not None:
                self.findings.append(f)
        if self._announce is not None and self._announce.gratuitous is None and gratuitous(frame):
            self._announce.gratuitous = where


__all__ = ["NETCTRL_DRV_ROWS", "Command", "ControlQueueMonitor", "CtrlConfig", "TxFrame", "judge_command"]
