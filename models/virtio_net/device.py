"""Behavioral virtio-net accelerator: virtio-pci modern transport + split rings + a wire port."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from backend.virtio.features import F, NetF, bits, has
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.pci_regs import (
    NET_CFG_SIZE,
    PCI_CLASS_NETWORK_ETHERNET,
    VIRTIO_ID_NET,
    VIRTIO_NET_S_LINK_UP,
    NetCfg,
)
from models.virtio_net.split_engine import Chain, SplitQueue
from models.virtio_net.transport import VirtioPciFunction
from models.virtio_net.wire import NullPort, Port
from sim.iommu import Iommu
from sim.pci.endpoint import Register

#: What the model offers unless told otherwise.
DEFAULT_FEATURES = bits(F.VERSION_1, F.ACCESS_PLATFORM, F.ORDER_PLATFORM, F.INDIRECT_DESC, F.EVENT_IDX, F.IN_ORDER,
                        F.RING_RESET,
                        NetF.MAC, NetF.MTU, NetF.STATUS, NetF.SPEED_DUPLEX)
#: Added to the default offer when more than one queue pair exists (MQ depends on CTRL_VQ, NETFEAT-DEV-09).
MQ_FEATURES = bits(NetF.CTRL_VQ, NetF.MQ)

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_8021Q = 0x8100
VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1
VIRTIO_NET_CTRL_MQ = 4
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0
_CTRL_MAX_COMMAND = 4096
_MAX_TX_ROUNDS = 64


def parse_mac(mac: str | bytes) -> bytes:
    if isinstance(mac, bytes):
        raw = mac
    else:
        try:
            raw = bytes(int(part, 16) for part in mac.split(":"))
        except ValueError:
            raise ValueError(f"bad MAC address {mac!r}") from None
    if len(raw) != 6:
        raise ValueError(f"MAC address {mac!r} is not 6 bytes")
    return raw


@dataclass
class NetStats:
    tx_packets: int = 0
    tx_bytes: int = 0
    tx_errors: int = 0  # chains too short to hold a virtio_net_hdr, or empty frames
    tx_link_down: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    rx_no_buffer: int = 0  # no RX chain available: dropped, like a NIC with an empty ring
    rx_buffer_too_small: int = 0
    rx_oversize: int = 0  # longer than mtu + link-layer header with VIRTIO_NET_F_MTU (NET-DEV-05)
    rx_not_ready: int = 0  # device not live, link down or receive queue not enabled


class VirtioNetDevice(VirtioPciFunction):
    """virtio-net over virtio-pci modern, split rings; RX queue 2n, TX queue 2n+1, control queue last.

    Constructor: ``pairs`` (queue pairs), ``mac``, ``mtu``, ``max_queue_size``,
    ``features`` (the offer; None = :data:`DEFAULT_FEATURES`, plus CTRL_VQ|MQ when
    pairs > 1), ``speed`` (Mbit/s), ``duplex`` (1 full, 0 half, 0xff unknown),
    ``notify_off_multiplier``, ``msix_vectors`` (default num_queues + 1),
    ``in_order_batch`` (with IN_ORDER, return a TX batch as one used element),
    ``iommu``.

    Runtime API: :attr:`endpoint` (the PciEndpoint), :meth:`attach` (a wire
    :class:`~models.virtio_net.wire.Port` to transmit on), :meth:`receive` (a
    frame arriving from the wire), :meth:`set_link`, :attr:`stats`,
    :attr:`errors` (driver errors that set DEVICE_NEEDS_RESET).

    Override hooks for seeded-bug variants (each a single method):

    ring (:class:`~models.virtio_net.split_engine.RingHooks`):
      ``chain_continues(desc)`` NEXT flag; ``indirect_next_is_error(desc)`` INDIRECT+NEXT refused;
      ``next_used_idx(idx, count)`` 16-bit used idx wrap; ``used_event_crossed(event, new, old)``
      EVENT_IDX threshold; ``needs_notification(q, old, new)`` whether a used update interrupts;
      ``max_chain_len(size)``.
    transport (:class:`~models.virtio_net.transport.VirtioPciFunction`):
      ``features_acceptable(features)`` FEATURES_OK; ``reset_queue(q)`` per-queue reset;
      ``queue_config_error(q)`` queue_enable validation; ``notify_used(q)`` interrupt delivery;
      ``notif_config_data(index)``.
    net: ``used_len_for(q, chain, written)`` used.len; ``rx_header(frame)`` receive header;
      ``tx_frame(chain)`` frame gathered from a TX chain; ``rx_pair_for(frame)`` steering;
      ``control_command(cls, cmd, data)`` control queue.
    """

    VIRTIO_DEVICE_ID = VIRTIO_ID_NET
    PCI_CLASS = PCI_CLASS_NETWORK_ETHERNET

    def __init__(self, *, pairs: int = 1, mac: str | bytes = "02:00:00:00:00:01", mtu: int = 1500,
                 max_queue_size: int = 256, features: int | None = None, speed: int = 10000, duplex: int = 1,
                 notify_off_multiplier: int = 4, msix_vectors: int | None = None, in_order_batch: bool = True,
                 iommu: Iommu | None = None) -> None:
        if not 1 <= pairs <= 0x8000:
            raise ValueError("pairs must be 1..0x8000 (NET-DEV-01)")
        if not 68 <= mtu <= 65535:
            raise ValueError("mtu must be 68..65535 (NET-DEV-02)")
        if features is None:
            features = DEFAULT_FEATURES | (MQ_FEATURES if pairs > 1 else 0)
        self.pairs = pairs
        self.mac = parse_mac(mac)
        self.mtu = mtu
        self.speed = speed
        self.duplex = duplex
        self.in_order_batch = in_order_batch
        self.link_up = True
        self.active_pairs = 1
        self.stats = NetStats()
        self.port: Port = NullPort()
        self.has_ctrl = has(features, NetF.CTRL_VQ)
        num_queues = 2 * pairs + (1 if self.has_ctrl else 0)
        super().__init__(num_queues=num_queues, max_queue_size=max_queue_size, features=features,
                         device_cfg_size=NET_CFG_SIZE,
                         msix_vectors=msix_vectors if msix_vectors is not None else max(num_queues + 1, 3),
                         notify_off_multiplier=notify_off_multiplier, iommu=iommu)
        self.hdr_len = HDR_SIZE  # VERSION_1 is required, so num_buffers is always present

    # --- device configuration (5.1.4) ------------------------------------------------------------

    def device_config_registers(self) -> list[Register]:
        regs = [Register(f"mac{i}", NetCfg.MAC + i, 1, lambda i=i: self.mac[i]) for i in range(6)]  # type: ignore[misc]
        regs += [
            Register("status", NetCfg.STATUS, 2, lambda: VIRTIO_NET_S_LINK_UP if self.link_up else 0),
            Register("max_virtqueue_pairs", NetCfg.MAX_VIRTQUEUE_PAIRS, 2, lambda: self.pairs),
            Register("mtu", NetCfg.MTU, 2, lambda: self.mtu),
            Register("speed", NetCfg.SPEED, 4, lambda: self.speed),
            Register("duplex", NetCfg.DUPLEX, 1, lambda: self.duplex),
        ]
        return regs

    def set_link(self, up: bool) -> None:
        """Link status change: status field, config_generation, configuration change notification."""
        with self.endpoint.lock:
            if up == self.link_up:
                return
            self.link_up = up
            self.config_changed()

    # --- wiring ----------------------------------------------------------------------------------

    def attach(self, port: Port) -> None:
        self.port = port

    def on_reset(self) -> None:
        self.active_pairs = 1  # NETCTRL-DEV-25: only receiveq1 after reset

    # --- hooks -----------------------------------------------------------------------------------

    def used_len_for(self, q: SplitQueue, chain: Chain, written: int) -> int:
        """used.len: bytes the device wrote into the chain (0 for TX, SPLIT-DEV-16)."""
        return written

    def rx_header(self, frame: bytes) -> bytes:
        """virtio_net_hdr for a received frame: no offloads, gso NONE, num_buffers 1 (NET-DEV-30/34/55)."""
        return NetHdr(num_buffers=1).pack()

    def rx_pair_for(self, frame: bytes) -> int:
        """Queue pair a received frame goes to: receiveq1 unless VQ_PAIRS_SET enabled more (per-flow hash)."""
        if self.active_pairs <= 1:
            return 0
        is_ipv4 = len(frame) >= 34 and frame[12:14] == b"\x08\x00"
        key = frame[26:34] if is_ipv4 else frame[:12]  # IPv4 addresses, else the MAC pair
        return zlib.crc32(key) % self.active_pairs

    def tx_frame(self, chain: Chain) -> bytes | None:
        """The frame in a TX chain: readable bytes after the header, wherever the descriptors split (SPLIT-DEV-01)."""
        skip = self.hdr_len
        pieces: list[bytes] = []
        for addr, length in chain.readable:
            if skip >= length:
                skip -= length
                continue
            pieces.append(self.dma.read(addr + skip, length - skip))
            skip = 0
        if skip or not pieces:
            return None
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def control_command(self, cls: int, cmd: int, data: bytes) -> int:
        """One control queue command; returns the ack byte."""
        if cls == VIRTIO_NET_CTRL_MQ and cmd == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET and len(data) >= 2:
            n = struct.unpack_from("<H", data)[0]
            if has(self.negotiated, NetF.MQ) and 1 <= n <= self.pairs:
                self.active_pairs = n
                return VIRTIO_NET_OK
        return VIRTIO_NET_ERR

    # --- queue processing ------------------------------------------------------------------------

    def is_ctrl(self, q: SplitQueue) -> bool:
        return self.has_ctrl and q.index == len(self.queues) - 1

    def process_queue(self, q: SplitQueue) -> None:
        if self.is_ctrl(q):
            self._process_ctrl(q)
        elif q.index % 2:
            self._process_tx(q)
        # An RX kick only says buffers were added; they are used when frames arrive.

    def _process_tx(self, q: SplitQueue) -> None:
        batch = self.in_order_batch and q.in_order
        for _ in range(_MAX_TX_ROUNDS):
            pending = q.available()
            if not pending:
                if not q.event_idx:
                    return
                # Ask for a kick at the next avail entry, then look again: the driver may have added
                # buffers after reading the old avail_event and decided not to notify.
                q.write_avail_event(q.last_avail_idx)
                if not q.available():
                    return
                continue
            used: list[tuple[int, int]] = []
            for head in q.peek(pending):
                chain = q.parse_chain(head)
                q.consume()
                frame = self.tx_frame(chain)
                used.append((head, self.used_len_for(q, chain, 0)))
                if frame is None:
                    self.stats.tx_errors += 1
                else:
                    self._transmit(frame)
            # With IN_ORDER a batch may be returned as one used element for its last buffer (2.7.9).
            old, new = q.push_used(used[-1:], len(used)) if batch else q.push_used(used)
            if q.needs_notification(old, new):
                # Fired after this batch's frames are on the wire, so whoever waits on the interrupt sees them.
                self.defer(lambda: self._notify_if_live(q))

    def _notify_if_live(self, q: SplitQueue) -> None:
        with self.endpoint.lock:
            if self.live and q.enabled:  # a reset in between cancels it (RESET-DEV-02/03)
                self.notify_used(q)

    def _transmit(self, frame: bytes) -> None:
        if not self.link_up:
            self.stats.tx_link_down += 1
            return
        self.stats.tx_packets += 1
        self.stats.tx_bytes += len(frame)
        port = self.port
        # Delivered once the device lock is released, still on this thread (see ModelEndpoint).
        self.defer(lambda: port.transmit(frame))

    def receive(self, frame: bytes) -> None:
        """A frame arriving from the wire (Station interface)."""
        with self.endpoint.lock:
            if not self.live or not self.link_up:
                self.stats.rx_not_ready += 1
                return
            limit = self.mtu + ETH_HLEN
            if len(frame) >= ETH_HLEN and frame[12:14] == ETH_P_8021Q.to_bytes(2, "big"):
                limit += VLAN_HLEN
            if has(self.negotiated, NetF.MTU) and len(frame) > limit:
                self.stats.rx_oversize += 1
                return
            q = self.queues[2 * self.rx_pair_for(frame)]
            if not q.enabled:
                self.stats.rx_not_ready += 1
                return
            self.run_guarded(lambda rq: self._receive_into(rq, frame), q)

    def _receive_into(self, q: SplitQueue, frame: bytes) -> None:
        if not q.available():
            self.stats.rx_no_buffer += 1
            return
        head = q.peek(1)[0]
        chain = q.parse_chain(head)
        need = self.hdr_len + len(frame)
        if chain.writable_len < need:
            # Without MRG_RXBUF one buffer holds the whole packet (NET-DEV-29); leave this one for later.
            self.stats.rx_buffer_too_small += 1
            return
        self._scatter(chain.writable, self.rx_header(frame), frame)
        q.consume()
        old, new = q.push_used([(head, self.used_len_for(q, chain, need))])
        self.stats.rx_packets += 1
        self.stats.rx_bytes += len(frame)
        if q.needs_notification(old, new):
            self.notify_used(q)

    def _scatter(self, writable: list[tuple[int, int]], *sources: bytes) -> None:
        """Write the sources back to back into the device-writable buffers, one DMA write per piece."""
        bufs = iter(writable)
        addr, room = 0, 0
        for src in sources:
            mv = memoryview(src)
            pos = 0
            while pos < len(mv):
                while room == 0:
                    addr, room = next(bufs)
                n = min(room, len(mv) - pos)
                self.dma.write(addr, mv[pos:pos + n])
                addr += n
                room -= n
                pos += n

    def _process_ctrl(self, q: SplitQueue) -> None:
        for _ in range(_MAX_TX_ROUNDS):
            pending = q.available()
            if not pending:
                return
            used: list[tuple[int, int]] = []
            for head in q.peek(pending):
                chain = q.parse_chain(head)
                q.consume()
                written = 0
                if chain.writable_len >= 1 and 2 <= chain.readable_len <= _CTRL_MAX_COMMAND:
                    cmd = b"".join(self.dma.read(a, n) for a, n in chain.readable if n)
                    ack = self.control_command(cmd[0], cmd[1], cmd[2:])
                    self._scatter(chain.writable, bytes([ack]))
                    written = 1
                used.append((head, self.used_len_for(q, chain, written)))
            old, new = q.push_used(used)
            if q.needs_notification(old, new):
                self.notify_used(q)
