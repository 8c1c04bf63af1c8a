"""virtio-net receive-side scaling and hash reporting (virtio 1.4, 5.1.9.4.3 and 5.1.9.5.6.4-5.1.9.5.7).

:class:`Rss` holds what the driver set with VIRTIO_NET_CTRL_MQ_RSS_CONFIG (VIRTIO_NET_F_RSS: hash types, key,
indirection table, unclassified_queue) or VIRTIO_NET_CTRL_MQ_HASH_CONFIG (VIRTIO_NET_F_HASH_REPORT: hash types
and key only), answers those commands (:meth:`Rss.command`, VIRTIO_NET_ERR for anything the device cannot take,
leaving the state as it was), computes the hash of a frame from the wire (:meth:`Rss.hash_of`, Toeplitz over the
fields 5.1.9.4.3.1 names for the enabled types), chooses its receive queue pair (:meth:`Rss.pair_for`) and packs
the receive header's hash_value / hash_report (:func:`hash_fields`). Device reset clears it (:meth:`Rss.reset`).
With VIRTIO_NET_F_HASH_TUNNEL the hash of an encapsulated packet is over its inner headers for the types the driver
enabled (:attr:`Rss.inner`, :mod:`models.virtio_net.inner_hash`).

The _EX hash types (IPv6 extension headers) are not supported: supported_hash_types does not list them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from backend.virtio.features import NetF, bits, has
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    VIRTIO_NET_ERR,
    VIRTIO_NET_HASH_REPORT_NONE,
    VIRTIO_NET_OK,
    VIRTIO_NET_HASH_REPORT_IPv4,
    VIRTIO_NET_HASH_REPORT_IPv6,
    VIRTIO_NET_HASH_REPORT_TCPv4,
    VIRTIO_NET_HASH_REPORT_TCPv6,
    VIRTIO_NET_HASH_REPORT_UDPv4,
    VIRTIO_NET_HASH_REPORT_UDPv6,
    VIRTIO_NET_RSS_HASH_TYPE_IPv4,
    VIRTIO_NET_RSS_HASH_TYPE_IPv6,
    VIRTIO_NET_RSS_HASH_TYPE_TCPv4,
    VIRTIO_NET_RSS_HASH_TYPE_TCPv6,
    VIRTIO_NET_RSS_HASH_TYPE_UDPv4,
    VIRTIO_NET_RSS_HASH_TYPE_UDPv6,
)
from models.virtio_net.inner_hash import InnerHash

#: supported_hash_types: the six types without IPv6 extension headers.
SUPPORTED_HASH_TYPES = (VIRTIO_NET_RSS_HASH_TYPE_IPv4 | VIRTIO_NET_RSS_HASH_TYPE_TCPv4 | VIRTIO_NET_RSS_HASH_TYPE_UDPv4
                        | VIRTIO_NET_RSS_HASH_TYPE_IPv6 | VIRTIO_NET_RSS_HASH_TYPE_TCPv6
                        | VIRTIO_NET_RSS_HASH_TYPE_UDPv6)
#: rss_max_key_size: at least 40 (NET-DEV-07).
RSS_MAX_KEY_SIZE = 40
#: rss_max_indirection_table_length: at least 128 (NET-DEV-08).
RSS_MAX_INDIRECTION_TABLE_LENGTH = 128
#: The features of this module; each needs VIRTIO_NET_F_CTRL_VQ (NETFEAT-DEV-09, NET-DEV-13).
RSS_FEATURES = bits(NetF.CTRL_VQ, NetF.RSS, NetF.HASH_REPORT)

ETH_HLEN = 14
ETH_P_IP = b"\x08\x00"
ETH_P_IPV6 = b"\x86\xdd"
ETH_P_8021Q = b"\x81\x00"
IPPROTO_TCP = 6
IPPROTO_UDP = 17
#: struct virtio_net_hdr's hash fields after num_buffers: le32 hash_value, le16 hash_report, le16 padding_reserved.
HASH_FIELDS = struct.Struct("<IHH")


def toeplitz(key: bytes, data: bytes) -> int:
    """The Toeplitz hash of ``data`` under ``key`` (5.1.9.4.3.2): for each set bit i of the input (most significant
    first), XOR in the 32 key bits starting at bit i. Key bits past the key's end count as 0."""
    need = len(data) + 4
    k = int.from_bytes(key[:need].ljust(need, b"\0"), "big")
    width = 8 * need
    value = int.from_bytes(data, "big")
    result = 0
    nbits = 8 * len(data)
    for i in range(nbits):
        if value >> (nbits - 1 - i) & 1:
            result ^= (k >> (width - 32 - i)) & 0xFFFFFFFF
    return result


def hash_input(frame: bytes, hash_types: int) -> tuple[bytes, int] | None:
    """The bytes the hash is computed over and the hash_report type, by 5.1.9.4.3.1, or None when no enabled type
    applies (no hash: unclassified_queue, VIRTIO_NET_HASH_REPORT_NONE). TCP/UDP ports only in an unfragmented
    IPv4 packet, or an IPv6 packet whose next header is TCP/UDP itself; one 802.1Q tag is skipped."""
    off = ETH_HLEN
    ethertype = frame[12:14]
    if ethertype == ETH_P_8021Q:
        ethertype = frame[16:18]
        off += 4
    if ethertype == ETH_P_IP and len(frame) >= off + 20 and frame[off] >> 4 == 4:
        ihl = (frame[off] & 0x0F) * 4
        addrs = frame[off + 12:off + 20]
        fragment = int.from_bytes(frame[off + 6:off + 8], "big") & 0x3FFF  # MF or a fragment offset
        l4 = off + ihl
        proto = frame[off + 9]
        if not fragment and ihl >= 20:
            if proto == IPPROTO_TCP and hash_types & VIRTIO_NET_RSS_HASH_TYPE_TCPv4 and len(frame) >= l4 + 20:
                return addrs + frame[l4:l4 + 4], VIRTIO_NET_HASH_REPORT_TCPv4
            if proto == IPPROTO_UDP and hash_types & VIRTIO_NET_RSS_HASH_TYPE_UDPv4 and len(frame) >= l4 + 8:
                return addrs + frame[l4:l4 + 4], VIRTIO_NET_HASH_REPORT_UDPv4
        if hash_types & VIRTIO_NET_RSS_HASH_TYPE_IPv4:
            return addrs, VIRTIO_NET_HASH_REPORT_IPv4
        return None
    if ethertype == ETH_P_IPV6 and len(frame) >= off + 40 and frame[off] >> 4 == 6:
        addrs = frame[off + 8:off + 40]
        nxt = frame[off + 6]
        l4 = off + 40
        if nxt == IPPROTO_TCP and hash_types & VIRTIO_NET_RSS_HASH_TYPE_TCPv6 and len(frame) >= l4 + 20:
            return addrs + frame[l4:l4 + 4], VIRTIO_NET_HASH_REPORT_TCPv6
        if nxt == IPPROTO_UDP and hash_types & VIRTIO_NET_RSS_HASH_TYPE_UDPv6 and len(frame) >= l4 + 8:
            return addrs + frame[l4:l4 + 4], VIRTIO_NET_HASH_REPORT_UDPv6
        if hash_types & VIRTIO_NET_RSS_HASH_TYPE_IPv6:
            return addrs, VIRTIO_NET_HASH_REPORT_IPv6
    return None


def hash_fields(value: int, report: int) -> bytes:
    """hash_value, hash_report and padding_reserved (0) as they follow num_buffers with HASH_REPORT."""
    return HASH_FIELDS.pack(value, report, 0)


@dataclass(frozen=True, slots=True)
class RssConfig:
    """A parsed struct virtio_net_rss_config (5.1.9.5.7.1); queue numbers as receive queue pair indices
    (rss_rq_id.vqn_1_16: bits 1..16 of the receive virtqueue's number)."""

    hash_types: int
    indirection_table_mask: int
    unclassified_queue: int
    indirection_table: tuple[int, ...]
    max_tx_vq: int
    hash_key: bytes


def parse_rss_config(data: bytes) -> RssConfig | None:
    """The RSS_CONFIG payload, or None when its lengths disagree (the table by indirection_table_mask + 1, the key
    by hash_key_length, nothing after it)."""
    if len(data) < 8:
        return None
    hash_types, mask, unclassified = struct.unpack_from("<IHH", data)
    entries = mask + 1
    pos = 8 + 2 * entries
    if len(data) < pos + 3:
        return None
    table = struct.unpack_from(f"<{entries}H", data, 8)
    max_tx_vq, key_len = struct.unpack_from("<HB", data, pos)
    pos += 3
    if len(data) != pos + key_len:
        return None
    return RssConfig(hash_types, mask, unclassified, table, max_tx_vq, bytes(data[pos:]))


def parse_hash_config(data: bytes) -> tuple[int, bytes] | None:
    """A struct virtio_net_hash_config payload (hash_types, le16 reserved[4], hash_key_length, key): the types and
    the key, or None when malformed."""
    if len(data) < 13:
        return None
    hash_types = struct.unpack_from("<I", data)[0]
    key_len = data[12]
    if len(data) != 13 + key_len:
        return None
    return hash_types, bytes(data[13:])


class Rss:
    """The hash configuration of one device and, with RSS configured, its indirection table."""

    #: the inner header hash (VIRTIO_NET_F_HASH_TUNNEL) of the device
    inner_class: type[InnerHash] = InnerHash

    def __init__(self) -> None:
        self.inner = self.inner_class()
        self.reset()

    def reset(self) -> None:
        """Device reset: no hash types (nothing hashed, nothing reported), no key, RSS not configured, no inner
        header hash."""
        self.inner.reset()
        self.hash_types = 0
        self.key = b""
        #: True once a valid RSS_CONFIG was taken: steering by the indirection table until reset
        self.steering = False
        self.mask = 0
        self.unclassified_queue = 0
        self.table: tuple[int, ...] = (0,)

    # --- the control commands --------------------------------------------------------------------

    def command(self, cmd: int, data: bytes, negotiated: int, pairs: int, enabled: set[int]) -> int:
        """One VIRTIO_NET_CTRL_MQ command RSS_CONFIG or HASH_CONFIG; ``enabled``: the receive queue pairs whose
        receive virtqueue is enabled. Returns the ack byte; an ERR changes nothing."""
        if cmd == VIRTIO_NET_CTRL_MQ_RSS_CONFIG and has(negotiated, NetF.RSS):
            cfg = parse_rss_config(data)
            if cfg is None or not self.rss_config_ok(cfg, pairs, enabled):
                return VIRTIO_NET_ERR
            self.take_rss_config(cfg)
            return VIRTIO_NET_OK
        if cmd == VIRTIO_NET_CTRL_MQ_HASH_CONFIG and has(negotiated, NetF.HASH_REPORT):
            parsed = parse_hash_config(data)
            if parsed is None or parsed[0] & ~SUPPORTED_HASH_TYPES or len(parsed[1]) > RSS_MAX_KEY_SIZE:
                return VIRTIO_NET_ERR
            self.hash_types, self.key = parsed
            return VIRTIO_NET_OK
        return VIRTIO_NET_ERR

    @staticmethod
    def rss_config_ok(cfg: RssConfig, pairs: int, enabled: set[int]) -> bool:
        """5.1.9.5.7.2 as the device holds the driver to it: a power-of-two table no longer than
        rss_max_indirection_table_length, only supported hash types, a key no longer than rss_max_key_size, every
        queue named an enabled receive queue, max_tx_vq 1..max_virtqueue_pairs."""
        entries = cfg.indirection_table_mask + 1
        return (entries & (entries - 1) == 0 and entries <= RSS_MAX_INDIRECTION_TABLE_LENGTH
                and not cfg.hash_types & ~SUPPORTED_HASH_TYPES and len(cfg.hash_key) <= RSS_MAX_KEY_SIZE
                and all(q in enabled for q in (cfg.unclassified_queue, *cfg.indirection_table))
                and 1 <= cfg.max_tx_vq <= pairs)

    def take_rss_config(self, cfg: RssConfig) -> None:
        self.hash_types = cfg.hash_types
        self.key = cfg.hash_key
        self.mask = cfg.indirection_table_mask
        self.unclassified_queue = cfg.unclassified_queue
        self.table = cfg.indirection_table
        self.steering = True

    # --- the receive path ------------------------------------------------------------------------

    def hash_of(self, frame: bytes) -> tuple[int, int] | None:
        """(hash_value, hash_report) for ``frame`` under the hash types and key in force, or None: not hashed."""
        found = hash_input(self.inner.hashed_frame(frame), self.hash_types)
        if found is None:
            return None
        return toeplitz(self.key, found[0]), found[1]

    def pair_for(self, frame: bytes) -> int:
        """The receive queue pair with RSS configured: the indirection table entry at (hash & mask) for a hashed
        packet (NETCTRL-DEV-29), unclassified_queue for one without a hash (NETCTRL-DEV-30)."""
        h = self.hash_of(frame)
        if h is None:
            return self.unclassified_queue
        return self.table[h[0] & self.mask]

    def header_fields(self, frame: bytes) -> bytes:
        """hash_value / hash_report of the receive header with HASH_REPORT: the hash computed for the packet and
        its type, or 0 and VIRTIO_NET_HASH_REPORT_NONE."""
        h = self.hash_of(frame)
        return hash_fields(*h) if h is not None else hash_fields(0, VIRTIO_NET_HASH_REPORT_NONE)


__all__ = [
    "RSS_FEATURES",
    "RSS_MAX_INDIRECTION_TABLE_LENGTH",
    "RSS_MAX_KEY_SIZE",
    "SUPPORTED_HASH_TYPES",
    "Rss",
    "RssConfig",
    "hash_fields",
    "hash_input",
    "parse_hash_config",
    "parse_rss_config",
    "toeplitz",
]
