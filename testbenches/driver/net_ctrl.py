"""The guest driver's control virtqueue (5.1.6.5, 5.1.9.5), as a guest kernel drives it.

:class:`NetControl` is made by :class:`~testbenches.driver.virtio_net.GuestNetDriver` during queue setup when
VIRTIO_NET_F_CTRL_VQ is negotiated: it sets up receiveq2..N and transmitq2..N (N = max_virtqueue_pairs with MQ or
RSS) and the control queue after them, all before DRIVER_OK, so every queue a later VQ_PAIRS_SET or RSS_CONFIG names
is set up already (NETCTRL-DRV-12/17). Each command method checks the driver rules of its command before posting it
(the feature it needs, the configuration fields that bound its payload) and raises :class:`ValueError` instead of
breaking one; it then waits, bounded, for the device to use the buffer and returns the ack byte.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet
from scapy.utils import str2mac

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
    VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_CTRL_VLAN_ADD,
    VIRTIO_NET_HASH_TUNNEL_TYPES_DEFINED,
    VIRTIO_NET_OK,
    VIRTNET_RSS_CTX_CTRL,
    VIRTNET_RSS_CTX_CTRL_ADD,
    VIRTNET_RSS_CTX_CTRL_CAP_GET,
)
from backend.virtio.net_hdr import NetHdr
from backend.virtio.pci_regs import VIRTIO_NET_S_ANNOUNCE, NetCfg

if TYPE_CHECKING:
    from testbenches.driver.virtio_net import GuestNetDriver

#: Guest receive offloads GUEST_OFFLOADS_SET may toggle (5.1.6.5.9.1): the GUEST_* feature bits.
GUEST_OFFLOADS = (NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_ECN, NetF.GUEST_UFO,
                  NetF.GUEST_USO4, NetF.GUEST_USO6)
#: How long a command may stay unused before the driver gives up (the default of :attr:`NetControl.ack_timeout`).
ACK_TIMEOUT = 5.0


def _rx_mode_feature(command: int) -> int:
    """PROMISC and ALLMULTI need CTRL_RX, ALLUNI/NOMULTI/NOUNI/NOBCAST CTRL_RX_EXTRA (NETCTRL-DRV-04/05)."""
    return NetF.CTRL_RX if command in (VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_CTRL_RX_ALLMULTI) \
        else NetF.CTRL_RX_EXTRA


class NetControl:
    """The queue pairs past the first and the control queue of one :class:`GuestNetDriver`."""

    def __init__(self, drv: GuestNetDriver) -> None:
        self.drv = drv
        #: The bound on waiting for a command's used buffer, and for frames sent from here (a bench on a slow
        #: target stretches it).
        self.ack_timeout = ACK_TIMEOUT
        t = drv.transport
        self.max_virtqueue_pairs = 1
        if has(drv.features, NetF.MQ) or has(drv.features, NetF.RSS):
            (self.max_virtqueue_pairs,) = t.read_config_fields([(NetCfg.MAX_VIRTQUEUE_PAIRS, 2)])
        #: The pairs the device uses now: transmitq1 only until VQ_PAIRS_SET (NETCTRL-DRV-14).
        self.virtqueue_pairs = 1
        self.queue = 2 * self.max_virtqueue_pairs
        #: The address set with MAC_ADDR_SET (None: the device's mac, or the driver's own without MAC).
        self.mac_set: bytes | None = None
        self.acks: list[tuple[str, int]] = []
        self.result = b""  # the command-specific-result of the last command
        #: RSS contexts configured (ADD acknowledged VIRTIO_NET_OK); from the first one no VQ_PAIRS_SET.
        self.rss_contexts: set[int] = set()
        self.max_rss_contexts: int | None = None
        for q in range(2, self.queue + 1):
            drv.setup_queue(q)
        for q in range(2, self.queue, 2):
            ring = drv.ring(q)
            while ring.num_free:
                ring.add([], [drv.rx_buf_size])
            drv.notify(q)  # held until DRIVER_OK

    def _need(self, feature: int, what: str) -> None:
        if not has(self.drv.features, feature):
            raise ValueError(f"{what} needs VIRTIO_NET_F_{NetF(feature).name}, not negotiated")

    def mac(self) -> bytes:
        """The driver's address now: the one it set with MAC_ADDR_SET, else its default."""
        return self.mac_set if self.mac_set is not None else self.drv.mac()

    # --- the commands ---------------------------------------------------------------------------------------

    def command(self, what: str, cls: int, command: int, data: bytes = b"", timeout: float | None = None,
                result_len: int = 0) -> int:
        """Post ``class, command, data`` (device-readable) and the ack byte with room for ``result_len`` bytes of
        command-specific-result (device-writable); wait for the used buffer and return the ack (the result in
        :attr:`result`). :class:`TimeoutError` if the device does not use it within ``timeout`` (default
        :attr:`ack_timeout`)."""
        timeout = self.ack_timeout if timeout is None else timeout
        ring = self.drv.ring(self.queue)
        ring.add([bytes([cls, command]) + data], [1 + result_len])
        self.drv.notify(self.queue)
        deadline = time.monotonic() + timeout
        while True:
            used = ring.used()
            if used:
                ack = used[0].data[0] if used[0].len >= 1 and used[0].data else -1
                self.result = used[0].data[1:]
                self.acks.append((what, ack))
                return ack
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what}: the control command was not used within {timeout}s")
            self.drv.wait_irq("rx", min(left, 0.5))

    def rx_mode(self, command: int, on: bool) -> int:
        self._need(_rx_mode_feature(command), f"VIRTIO_NET_CTRL_RX command {command}")
        return self.command(f"RX {command} {'on' if on else 'off'}", VIRTIO_NET_CTRL_RX, command, bytes([on]))

    def mac_table_set(self, unicast: Sequence[bytes], multicast: Sequence[bytes]) -> int:
        """The two tables, each a le32 count and its addresses (NETCTRL-DRV-08), unicast ones first."""
        self._need(NetF.CTRL_RX, "VIRTIO_NET_CTRL_MAC_TABLE_SET")
        if any(m[0] & 1 for m in unicast) or not all(m[0] & 1 for m in multicast):
            raise ValueError("a group address in the unicast table or an individual one in the multicast table")
        data = struct.pack("<I", len(unicast)) + b"".join(unicast) \
            + struct.pack("<I", len(multicast)) + b"".join(multicast)
        return self.command("MAC_TABLE_SET", VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, data)

    def mac_addr_set(self, mac: bytes) -> int:
        """A new default address: announced to the device before any frame carries it (NETCTRL-DRV-07)."""
        self._need(NetF.CTRL_RX, "a VIRTIO_NET_CTRL_MAC command")
        self._need(NetF.CTRL_MAC_ADDR, "VIRTIO_NET_CTRL_MAC_ADDR_SET")
        ack = self.command("MAC_ADDR_SET", VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, bytes(mac))
        if ack == VIRTIO_NET_OK:
            self.mac_set = bytes(mac)
        return ack

    def vlan_add(self, vid: int) -> int:
        self._need(NetF.CTRL_VLAN, "VIRTIO_NET_CTRL_VLAN_ADD")
        return self.command(f"VLAN_ADD {vid}", VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, struct.pack("<H", vid))

    def vq_pairs_set(self, virtqueue_pairs: int) -> int:
        """Every pair was set up at bring-up (NETCTRL-DRV-12); 1..max_virtqueue_pairs (NETCTRL-DRV-13)."""
        self._need(NetF.MQ, "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET")
        if not 1 <= virtqueue_pairs <= self.max_virtqueue_pairs:
            raise ValueError(f"virtqueue_pairs {virtqueue_pairs} outside 1..{self.max_virtqueue_pairs}")
        if self.rss_contexts:
            raise ValueError(f"VQ_PAIRS_SET after RSS contexts {sorted(self.rss_contexts)} were configured")
        ack = self.command(f"VQ_PAIRS_SET {virtqueue_pairs}", VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                           struct.pack("<H", virtqueue_pairs))
        # From the moment the command is in the available ring the driver keeps to the new count (NETCTRL-DRV-15);
        # a refused command leaves the smaller of the two in force for it.
        self.virtqueue_pairs = virtqueue_pairs if ack == VIRTIO_NET_OK else min(virtqueue_pairs, self.virtqueue_pairs)
        return ack

    def rss_config(self, hash_types: int, indirection_table: Sequence[int], key: bytes, *,
                   unclassified_queue: int = 0, max_tx_vq: int = 1) -> int:
        """VIRTIO_NET_CTRL_MQ_RSS_CONFIG of :meth:`rss_payload`."""
        self._need(NetF.RSS, "VIRTIO_NET_CTRL_MQ_RSS_CONFIG")
        data = self.rss_payload(hash_types, indirection_table, key, unclassified_queue=unclassified_queue,
                                max_tx_vq=max_tx_vq)
        return self.command(f"RSS_CONFIG {len(indirection_table)} entries", VIRTIO_NET_CTRL_MQ,
                            VIRTIO_NET_CTRL_MQ_RSS_CONFIG, data)

    def rss_ctx_cap_get(self) -> int:
        """max_rss_contexts, from the command-specific-result of CAP_GET (0 if refused)."""
        self._need(NetF.RSS_CONTEXT, "an RSS context command")
        ack = self.command("RSS_CTX CAP_GET", VIRTNET_RSS_CTX_CTRL, VIRTNET_RSS_CTX_CTRL_CAP_GET, result_len=2)
        self.max_rss_contexts = int.from_bytes(self.result[:2], "little") if ack == VIRTIO_NET_OK else 0
        return self.max_rss_contexts

    def rss_ctx_add(self, rss_ctx_id: int, hash_types: int, indirection_table: Sequence[int], key: bytes) -> int:
        """ADD of context ``rss_ctx_id``, within 1..max_rss_contexts (NETCTRL-DRV-22, after CAP_GET)."""
        self._need(NetF.RSS_CONTEXT, "an RSS context command")
        if self.max_rss_contexts is None or not 1 <= rss_ctx_id <= self.max_rss_contexts:
            raise ValueError(f"rss_ctx_id {rss_ctx_id} outside 1..max_rss_contexts ({self.max_rss_contexts})")
        data = struct.pack("<H6x", rss_ctx_id) + self.rss_payload(hash_types, indirection_table, key)
        ack = self.command(f"RSS_CTX ADD {rss_ctx_id}", VIRTNET_RSS_CTX_CTRL, VIRTNET_RSS_CTX_CTRL_ADD, data)
        if ack == VIRTIO_NET_OK:
            self.rss_contexts.add(rss_ctx_id)
        return ack

    def rss_payload(self, hash_types: int, indirection_table: Sequence[int], key: bytes, *,
                    unclassified_queue: int = 0, max_tx_vq: int = 1) -> bytes:
        """struct virtio_net_rss_config: a power-of-two table (NETCTRL-DRV-18) within
        rss_max_indirection_table_length (19) of receive queues that were set up (17), hash types the device
        supports (20)."""
        n = len(indirection_table)
        longest, supported = self.drv.transport.read_config_fields(
            [(NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 2), (NetCfg.SUPPORTED_HASH_TYPES, 4)])
        if n == 0 or n & (n - 1) or n > longest:
            raise ValueError(f"an indirection table of {n} entries (power of two, at most {longest})")
        if hash_types & ~supported:
            raise ValueError(f"hash types {hash_types:#x} beyond supported_hash_types {supported:#x}")
        if max(*indirection_table, unclassified_queue) >= self.max_virtqueue_pairs:
            raise ValueError(f"a receive queue past the {self.max_virtqueue_pairs} set up")
        return struct.pack(f"<IHH{n}HHB", hash_types, n - 1, unclassified_queue, *indirection_table, max_tx_vq,
                           len(key)) + key

    def hash_config(self, hash_types: int, key: bytes) -> int:
        """struct virtio_net_hash_config, reserved all zero (NETCTRL-DRV-B01)."""
        self._need(NetF.HASH_REPORT, "VIRTIO_NET_CTRL_MQ_HASH_CONFIG")
        data = struct.pack("<I4HB", hash_types, 0, 0, 0, 0, len(key)) + key
        return self.command("HASH_CONFIG", VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_HASH_CONFIG, data)

    def guest_offloads_set(self, offloads: int) -> int:
        """le64 offloads, only of negotiated GUEST_* features (NETCTRL-DRV-24)."""
        self._need(NetF.CTRL_GUEST_OFFLOADS, "VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET")
        allowed = sum(1 << f for f in GUEST_OFFLOADS if has(self.drv.features, f))
        if offloads & ~allowed:
            raise ValueError(f"offloads {offloads:#x} beyond the negotiated guest offloads {allowed:#x}")
        return self.command(f"GUEST_OFFLOADS_SET {offloads:#x}", VIRTIO_NET_CTRL_GUEST_OFFLOADS,
                            VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET, struct.pack("<Q", offloads))

    def supported_tunnel_types(self) -> int:
        """supported_tunnel_types as the driver takes it: the bits this spec defines, any other disregarded
        (NETCTRL-DRV-03)."""
        self._need(NetF.HASH_TUNNEL, "supported_tunnel_types")
        (supported,) = self.drv.transport.read_config_fields([(NetCfg.SUPPORTED_TUNNEL_TYPES, 4)])
        return int(supported) & VIRTIO_NET_HASH_TUNNEL_TYPES_DEFINED

    def hash_tunnel_set(self, enabled_tunnel_types: int) -> int:
        """Only tunnel types supported_tunnel_types lists (NETCTRL-DRV-02), none the spec does not define (03)."""
        self._need(NetF.HASH_TUNNEL, "VIRTIO_NET_CTRL_HASH_TUNNEL_SET")
        (supported,) = self.drv.transport.read_config_fields([(NetCfg.SUPPORTED_TUNNEL_TYPES, 4)])
        if enabled_tunnel_types & ~(supported & VIRTIO_NET_HASH_TUNNEL_TYPES_DEFINED):
            raise ValueError(f"tunnel types {enabled_tunnel_types:#x} beyond supported_tunnel_types {supported:#x}")
        return self.command(f"HASH_TUNNEL_SET {enabled_tunnel_types:#x}", VIRTIO_NET_CTRL_HASH_TUNNEL,
                            VIRTIO_NET_CTRL_HASH_TUNNEL_SET, struct.pack("<I", enabled_tunnel_types))

    def announce_ack(self) -> int:
        self._need(NetF.GUEST_ANNOUNCE, "VIRTIO_NET_CTRL_ANNOUNCE_ACK")
        return self.command("ANNOUNCE_ACK", VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK)

    def announce_if_asked(self, ip: str) -> int | None:
        """After a configuration change: with GUEST_ANNOUNCE, if status has VIRTIO_NET_S_ANNOUNCE, a gratuitous ARP
        for ``ip`` from the driver's address (NETCTRL-DRV-10), then ANNOUNCE_ACK (11). The ack, or None when the
        device did not ask."""
        if not has(self.drv.features, NetF.GUEST_ANNOUNCE):
            return None
        (status,) = self.drv.transport.read_config_fields([(NetCfg.STATUS, 2)])
        if not status & VIRTIO_NET_S_ANNOUNCE:
            return None
        mac = str2mac(self.mac())
        garp = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip, hwdst="00:00:00:00:00:00",
                                                             pdst=ip)
        self.drv.send([garp], timeout=self.ack_timeout)
        self.drv.wait_tx_done(self.ack_timeout)
        return self.announce_ack()

    # --- transmitting on the other pairs -------------------------------------------------------------------

    def send_on(self, pair: int, frames: Iterable[Packet | bytes], timeout: float | None = None) -> int:
        """Frames on transmitq ``pair + 1``: only a pair the device uses now (NETCTRL-DRV-14/15); each behind a
        plain header, waiting until the device used them all (at most ``timeout``, default :attr:`ack_timeout`)."""
        timeout = self.ack_timeout if timeout is None else timeout
        if not 0 <= pair < self.virtqueue_pairs:
            raise ValueError(f"transmitq{pair + 1} while {self.virtqueue_pairs} pair(s) are in use")
        q = 2 * pair + 1
        ring = self.drv.ring(q)
        head = NetHdr().pack().ljust(self.drv.hdr_len, b"\0")
        sent = 0
        for frame in frames:
            if ring.num_free < 2:
                break
            ring.add([head, bytes(frame)], [])
            sent += 1
        self.drv.notify(q)
        deadline = time.monotonic() + timeout
        while ring.in_flight:
            ring.used()
            left = deadline - time.monotonic()
            if not ring.in_flight or left <= 0:
                break
            self.drv.wait_irq("tx", min(left, 0.5))
        return sent
