"""Behavioral virtio-net accelerator: virtio-pci modern transport + split rings + a wire port."""

from __future__ import annotations

import contextlib
import struct
import time
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from backend.pci.device import DmaFaultError
from backend.virtio.features import F, NetF, bits, has, offer_violations
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_HASH_TUNNEL,
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
    VIRTNET_RSS_CTX_CTRL,
)
from backend.virtio.net_hdr import (
    F_DATA_VALID,
    GSO_NONE,
    HDR_SIZE,
    HDR_SIZE_HASH,
    HDR_SIZE_TUNNEL,
    NetHdr,
    hdr_size,
    tunnel_offsets,
)
from backend.virtio.pci_regs import (
    NET_CFG_SIZE,
    PCI_CLASS_NETWORK_ETHERNET,
    VIRTIO_ID_NET,
    VIRTIO_NET_S_ANNOUNCE,
    VIRTIO_NET_S_LINK_UP,
    NetCfg,
)
from backend.virtio.split_ring import VRING_USED_F_NO_NOTIFY
from models.virtio_net import gso, gso_tunnel, offload, packed_datapath, packed_fast
from models.virtio_net.coalesce import GUEST_GSO, Coalesced, Coalescer
from models.virtio_net.coalesce_tunnel import TunnelCoalescer
from models.virtio_net.fast_tx import take_plain_tx, take_plain_tx_used
from models.virtio_net.packed_engine import PackedQueue
from models.virtio_net.rss import RSS_MAX_INDIRECTION_TABLE_LENGTH, RSS_MAX_KEY_SIZE, SUPPORTED_HASH_TYPES, Rss
from models.virtio_net.rss_context import AutoSteering, RssContexts
from models.virtio_net.rx_filter import CLASSES as RX_FILTER_CLASSES
from models.virtio_net.rx_filter import FILTER_FEATURES, RX_FILTER_FEATURES, RxFilter
from models.virtio_net.split_engine import Chain, PlainChains, RingError, SplitQueue, full_barrier
from models.virtio_net.transport import VirtioPciFunction
from models.virtio_net.wire import FrameBatch, NullPort, Port
from sim.iommu import Iommu
from sim.pci.endpoint import Register

#: What the model offers unless told otherwise. Both ring layouts: a device offers RING_PACKED, the driver chooses
#: it or not at FEATURES_OK (a driver that does not know bit 34 gets split rings, as before).
DEFAULT_FEATURES = bits(F.VERSION_1, F.ACCESS_PLATFORM, F.ORDER_PLATFORM, F.INDIRECT_DESC, F.EVENT_IDX, F.IN_ORDER,
                        F.RING_RESET, F.RING_PACKED,
                        NetF.MAC, NetF.MTU, NetF.STATUS, NetF.SPEED_DUPLEX, NetF.MRG_RXBUF)
#: Added to the default offer when more than one queue pair exists (MQ depends on CTRL_VQ, NETFEAT-DEV-09).
MQ_FEATURES = bits(NetF.CTRL_VQ, NetF.MQ)
#: Receive-side scaling and hash reporting (models/virtio_net/rss.py): offered only when ``features=`` asks.
HASH_FEATURES = bits(NetF.RSS, NetF.HASH_REPORT)
#: Everything the model implements beyond :data:`DEFAULT_FEATURES`: each offered only when ``features=`` asks (any
#: subset that keeps the dependency table, 5.1.3.1). All of it at once is one device for every check of the suite.
OPTIONAL_FEATURES = (MQ_FEATURES | HASH_FEATURES | RX_FILTER_FEATURES | bits(NetF.CSUM, NetF.GUEST_CSUM)
                     | gso.HOST_GSO_FEATURES | GUEST_GSO | bits(NetF.GUEST_ECN, NetF.RSC_EXT)
                     | gso_tunnel.HOST_TUNNEL_FEATURES | bits(NetF.GUEST_UDP_TUNNEL_GSO, NetF.GUEST_UDP_TUNNEL_GSO_CSUM)
                     | bits(NetF.HASH_TUNNEL, NetF.RSS_CONTEXT, F.NOTIFICATION_DATA, F.NOTIF_CONFIG_DATA))

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_8021Q = 0x8100
_CTRL_MAX_COMMAND = 4096
_MAX_TX_ROUNDS = 64
#: Chains (or arriving frames) from which the bulk path is worth its fixed cost.
_BATCH_MIN = 2
#: Mappings the compiled TX reader switches between in one round (a driver's buffers are usually in one).
_MAPPINGS_PER_ROUND = 4
#: How long the TX side keeps looking at avail idx, once empty, while a driver is adding buffers as fast as they
#: are taken (vhost-net's busyloop): a kick and wake-up per burst costs more, and moves the thread about.
_POLL_SECONDS = 50e-6
#: A TX round costs about the same fixed time for 30 chains as for 250; while a producer is at work, a round
#: that would take fewer than _GATHER_CHAINS looks again for up to _GATHER_SECONDS as more become available
#: (make bench, queue size 256, 64-byte txonly: 6.9 -> 8.0 Mpps median of three; at 1024 rounds are larger
#: and it rarely applies). A bounded look, never a wait.
_GATHER_CHAINS = 128
_GATHER_SECONDS = 20e-6
#: Chains the compiled TX reader returns used at a time (one burst of a DPDK driver).
_TX_USED_CHUNK = 32


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
    rx_filtered: int = 0  # dropped by the receive filter (CTRL_RX modes and MAC table, CTRL_VLAN table)
    tx_bad_csum: int = 0  # NEEDS_CSUM pointing outside the frame: dropped, also counted in tx_errors
    tx_bulk: int = 0  # TX chains taken by the bulk path (the rest went through the per-chain parser)
    rx_bulk: int = 0  # frames delivered by the bulk path


class VirtioNetDevice(VirtioPciFunction):
    """virtio-net over virtio-pci modern, split rings; RX queue 2n, TX queue 2n+1, control queue last.

    Packed rings when the offer has VIRTIO_F_RING_PACKED (the default offer does; ``features=`` may withhold it)
    and the driver accepts it: chosen at FEATURES_OK, served by :mod:`models.virtio_net.packed_datapath`.

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
    net: ``used_len_for(q, chain, written)`` used.len; ``rx_header(frame, num_buffers)`` receive header;
      ``tx_frame(chain)`` frame gathered from a TX chain; ``tx_offload(chain, frame)`` the frame as sent, per its
      header (checksum offload with VIRTIO_NET_F_CSUM, segmentation with host GSO); ``rx_pair_for(frame)`` steering;
      ``control_command(cls, cmd, data)`` control queue; ``rx_filter_class`` the receive filter
      (:class:`~models.virtio_net.rx_filter.RxFilter`, with CTRL_RX / CTRL_VLAN / CTRL_MAC_ADDR / GUEST_ANNOUNCE).
      ``rss_class`` receive-side scaling and hash reporting (:class:`~models.virtio_net.rss.Rss`, with RSS /
      HASH_REPORT: offered only when ``features=`` asks, with CTRL_VQ). ``gso_class`` transmit segmentation
      (:class:`~models.virtio_net.gso.Gso`, with HOST_TSO4 / TSO6 / ECN / UFO / USO: offered only when asked).

    Data path: a kick (or a burst arriving from the wire) takes every available chain in one round; chains of
    one or two plain descriptors are decoded, IOMMU-checked and copied in bulk (numpy), anything else goes
    through the per-chain parser with all its checks. The bulk path keeps the per-round hooks
    (``next_used_idx``, ``needs_notification``, ``used_event_crossed``, ``max_chain_len``); a variant that
    overrides a per-chain hook (``chain_continues``, ``used_len_for``, ``tx_frame``, ``rx_header``,
    ``rx_pair_for``) gets the per-chain path for everything, so its bug shows exactly as written.
    """

    VIRTIO_DEVICE_ID = VIRTIO_ID_NET
    PCI_CLASS = PCI_CLASS_NETWORK_ETHERNET
    rx_filter_class: type[RxFilter] = RxFilter
    rss_class: type[Rss] = Rss
    rss_contexts_class: type[RssContexts] = RssContexts
    steering_class: type[AutoSteering] = AutoSteering
    gso_class: type[gso.Gso] = gso.Gso
    coalescer_class: type[Coalescer] = TunnelCoalescer

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
        broken = offer_violations(features)
        if broken:  # a device makes no such offer (the dependency table, 5.1.3.1)
            raise ValueError(f"offered without their prerequisites: {', '.join(broken)}")
        self.rx_filter = self.rx_filter_class(parse_mac(mac))
        self.rss = self.rss_class()
        self.rss_contexts = self.rss_contexts_class()  # VIRTIO_NET_F_RSS_CONTEXT (models/virtio_net/rss_context.py)
        self.steering = self.steering_class()  # automatic receive steering with MQ (5.1.9.5.6)
        #: command-specific-result of the control command being answered (written after its ack byte)
        self.ctrl_result = b""
        self.gso = self.gso_class()
        self.coalescer = self.coalescer_class()  # receive coalescing with guest GSO (models/virtio_net/coalesce.py)
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
        self._hdr_u64 = np.uint64(self.hdr_len)
        self.bulk_tx = self._stock("tx_frame", "tx_offload", "used_len_for")
        self.bulk_rx = self._stock("rx_header", "used_len_for", "rx_pair_for")
        self.packed_bulk_tx = packed_fast.bulk_ok(self)
        #: The compiled TX reader returns chains used itself (the used idx advances by the count)
        self.tx_returns_used = self._stock("next_used_idx")

    @property
    def mac(self) -> bytes:
        """The primary MAC (the mac config field): as built, or as VIRTIO_NET_CTRL_MAC_ADDR_SET set it until reset."""
        return self.rx_filter.mac

    def _stock(self, *hooks: str) -> bool:
        """True when this class keeps VirtioNetDevice's own version of every named hook."""
        return all(getattr(type(self), h) is getattr(VirtioNetDevice, h) for h in hooks)

    # --- device configuration (5.1.4) ------------------------------------------------------------

    def device_config_registers(self) -> list[Register]:
        regs = [Register(f"mac{i}", NetCfg.MAC + i, 1, lambda i=i: self.mac[i]) for i in range(6)]  # type: ignore[misc]
        regs += [
            Register("status", NetCfg.STATUS, 2, lambda: (VIRTIO_NET_S_LINK_UP if self.link_up else 0)
                     | (VIRTIO_NET_S_ANNOUNCE if self.rx_filter.announce else 0)),
            Register("max_virtqueue_pairs", NetCfg.MAX_VIRTQUEUE_PAIRS, 2, lambda: self.pairs),
            Register("mtu", NetCfg.MTU, 2, lambda: self.mtu),
            Register("speed", NetCfg.SPEED, 4, lambda: self.speed),
            Register("duplex", NetCfg.DUPLEX, 1, lambda: self.duplex),
        ]
        if self.offered & HASH_FEATURES:  # the RSS fields (5.1.4; NET-DEV-07/08)
            regs += [Register("rss_max_key_size", NetCfg.RSS_MAX_KEY_SIZE, 1, lambda: RSS_MAX_KEY_SIZE),
                     Register("supported_hash_types", NetCfg.SUPPORTED_HASH_TYPES, 4, lambda: SUPPORTED_HASH_TYPES)]
        if has(self.offered, NetF.RSS):
            regs.append(Register("rss_max_indirection_table_length", NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 2,
                                 lambda: RSS_MAX_INDIRECTION_TABLE_LENGTH))
        if has(self.offered, NetF.HASH_TUNNEL):
            regs.append(Register("supported_tunnel_types", NetCfg.SUPPORTED_TUNNEL_TYPES, 4,
                                 lambda: self.rss.inner.supported_tunnel_types))
        return regs

    def set_link(self, up: bool) -> None:
        """Link status change: status field, config_generation, configuration change notification."""
        with self.endpoint.lock:
            if up == self.link_up:
                return
            self.link_up = up
            if up and has(self.negotiated, NetF.GUEST_ANNOUNCE):
                # The port is back, maybe somewhere else: ask the driver to announce itself (5.1.9.5.4).
                self.rx_filter.announce = True
            self.config_changed()

    # --- wiring ----------------------------------------------------------------------------------

    def attach(self, port: Port) -> None:
        self.port = port

    def on_reset(self) -> None:
        self.active_pairs = 1  # NETCTRL-DEV-25: only receiveq1 after reset
        self.rx_filter.reset()  # MAC table empty after reset (NETCTRL-DEV-17), modes off, configured MAC
        self.rss.reset()  # no hash types, no indirection table: receiveq1 and no hash until configured again
        self.rss_contexts.reset()  # every RSS context discarded (NETCTRL-DEV-33)
        self.steering.reset()
        self._set_hdr_len(HDR_SIZE)

    def on_driver_ok(self) -> None:
        # With HASH_REPORT the header carries hash_value and hash_report, in both directions (5.1.6); with
        # HOST_UDP_TUNNEL_GSO outer_th_offset and inner_nh_offset too.
        self._set_hdr_len(hdr_size(self.negotiated))

    def _set_hdr_len(self, n: int) -> None:
        self.hdr_len = n
        self._hdr_u64 = np.uint64(n)

    # --- hooks -----------------------------------------------------------------------------------

    def used_len_for(self, q: SplitQueue, chain: Chain, written: int) -> int:
        """used.len: bytes the device wrote into the chain (0 for TX, SPLIT-DEV-16)."""
        return written

    def rx_header(self, frame: bytes, num_buffers: int = 1) -> bytes:
        """virtio_net_hdr for a received frame: gso NONE (NET-DEV-55) unless the frame is a packet coalesced with guest
        GSO (:mod:`models.virtio_net.coalesce`, which gives its header); flags 0 without
        GUEST_CSUM (NET-DEV-34), DATA_VALID with it only for a checksum verified correct (NET-DEV-62); num_buffers
        is the number of buffers the packet takes: 1 without MRG_RXBUF (NET-DEV-30), the count with it
        (NET-DEV-28/31)."""
        if isinstance(frame, Coalesced):  # gso_type, gso_size, hdr_len, NEEDS_CSUM (5.1.9.4.1)
            hdr = self.coalescer.header(frame, num_buffers, self.negotiated).pack()
        else:
            valid = has(self.negotiated, NetF.GUEST_CSUM) and offload.checksum_verified(frame)
            hdr = NetHdr(flags=F_DATA_VALID if valid else 0, num_buffers=num_buffers).pack()
        if has(self.negotiated, NetF.HASH_REPORT):  # hash_value and hash_report (5.1.9.4.3)
            hdr += self.rss.header_fields(frame)
        if self.hdr_len >= HDR_SIZE_TUNNEL:  # outer_th_offset, inner_nh_offset: 0 unless a tunnel GSO packet
            hdr = hdr.ljust(HDR_SIZE_HASH, b"\0") + self.coalescer.tunnel_header(frame)
        return hdr.ljust(self.hdr_len, b"\0")  # outer_nh_offset unused without OUT_NET_HEADER (NET-DEV-45)

    def rx_pair_for(self, frame: bytes) -> int | None:
        """Queue pair a received frame goes to: receiveq1 unless VQ_PAIRS_SET enabled more, then the pair its flow
        was last transmitted on, or by a per-flow hash, skipping receive queues being reset; None: all of them are
        (dropped)."""
        if self.rss.steering and has(self.negotiated, NetF.RSS):  # RSS_CONFIG taken (5.1.9.5.7.3)
            return self.rss.pair_for(frame)
        if self.active_pairs <= 1:
            return 0
        rxqs = self.packed_queues if self.ring_packed else self.queues
        return self.steering.pair_for(frame, self.active_pairs, lambda p: bool(rxqs[2 * p].enabled))

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

    def tx_offload(self, chain: Chain, frame: bytes) -> bytes | None:
        """The frame as it goes on the wire: with VIRTIO_NET_F_CSUM and NEEDS_CSUM in the header, its checksum
        completed (:mod:`models.virtio_net.offload`); with a gso_type, the packets it is cut into
        (:mod:`models.virtio_net.gso`, a :class:`~models.virtio_net.gso.Segmented`); None drops it (NEEDS_CSUM
        pointing outside the frame, a GSO request the device cannot honour)."""
        if not has(self.negotiated, NetF.CSUM):
            return frame  # the header's fields are not used at all (NET-DEV-16/26)
        raw = b""
        for addr, length in chain.readable:  # tx_frame found the header whole: only its bytes are read again
            raw += self.dma.read(addr, min(length, self.hdr_len - len(raw)))
            if len(raw) == self.hdr_len:
                break
        hdr = NetHdr.unpack(raw.ljust(HDR_SIZE, b"\0"))
        if hdr.gso_type != GSO_NONE:  # None: dropped, counted in tx_errors
            packets = self.gso.segment(hdr, frame, self.negotiated, tunnel_offsets(raw))
            return None if packets is None else gso.Segmented(frame, packets)
        if self.negotiated & gso_tunnel.HOST_TUNNEL_FEATURES and gso_tunnel.header_rejected(hdr, self.negotiated):
            return None  # UDP_TUNNEL_CSUM without a tunnel bit (NET-DEV-25)
        out = offload.complete_checksum(hdr.flags, hdr.csum_start, hdr.csum_offset, frame)
        if out is None:
            self.stats.tx_bad_csum += 1
        return out

    def tx_bulk_now(self) -> bool:
        """Whether the bulk TX paths may take chains now: they copy frames without reading headers, so not once
        VIRTIO_NET_F_CSUM is negotiated (every chain then goes through :meth:`tx_offload`)."""
        return self.bulk_tx and not has(self.negotiated, NetF.CSUM)

    def control_reply(self, command: bytes, room: int) -> bytes:
        """The ack byte of a control command (class, command, data) and its command-specific-result, as far as
        the ``room`` of device-writable bytes takes it."""
        self.ctrl_result = b""
        ack = self.control_command(command[0], command[1], command[2:])
        return bytes([ack]) + self.ctrl_result[:room - 1]

    def control_command(self, cls: int, cmd: int, data: bytes) -> int:
        """One control queue command; returns the ack byte."""
        if cls in RX_FILTER_CLASSES:
            return self.rx_filter.command(cls, cmd, data, self.negotiated)
        if cls == VIRTIO_NET_CTRL_MQ and cmd in (VIRTIO_NET_CTRL_MQ_RSS_CONFIG, VIRTIO_NET_CTRL_MQ_HASH_CONFIG):
            rxqs = self.packed_queues if self.ring_packed else self.queues
            enabled = {p for p in range(self.pairs) if rxqs[2 * p].enabled}
            return self.rss.command(cmd, data, self.negotiated, self.pairs, enabled)
        if cls == VIRTIO_NET_CTRL_HASH_TUNNEL:
            return self.rss.inner.command(cmd, data, self.negotiated)
        if cls == VIRTNET_RSS_CTX_CTRL:
            rxqs = self.packed_queues if self.ring_packed else self.queues
            enabled = {p for p in range(self.pairs) if rxqs[2 * p].enabled}
            ack, self.ctrl_result = self.rss_contexts.command(cmd, data, self.negotiated, self.pairs, enabled)
            return ack
        if cls == VIRTIO_NET_CTRL_MQ and cmd == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET and len(data) >= 2:
            n = struct.unpack_from("<H", data)[0]
            if has(self.negotiated, NetF.MQ) and 1 <= n <= self.pairs:
                self.active_pairs = n
                return VIRTIO_NET_OK
        return VIRTIO_NET_ERR

    # --- queue processing ------------------------------------------------------------------------

    def ctrl_queue_index(self) -> int:
        """The control queue's index, 2N: N is max_virtqueue_pairs once MQ or RSS is negotiated, else 1 (5.1.2),
        so a driver that did not negotiate them finds it at 2 whatever the device's queue count; -1 without
        CTRL_VQ."""
        if not self.has_ctrl:
            return -1
        return 2 * self.pairs if has(self.negotiated, NetF.MQ) or has(self.negotiated, NetF.RSS) else 2

    def is_ctrl(self, q: SplitQueue | PackedQueue) -> bool:
        return q.index == self.ctrl_queue_index()

    def process_queue(self, q: SplitQueue) -> None:
        if self.is_ctrl(q):
            self._process_ctrl(q)
        elif q.index % 2:
            self.steering.tx_pair = q.index // 2  # the transmit queue of the frames sent now
            self._process_tx(q)
        # An RX kick only says buffers were added; they are used when frames arrive.

    def process_packed_queue(self, q: PackedQueue) -> None:
        self.steering.tx_pair = q.index // 2
        packed_datapath.process(self, q)

    def packed_tx_maps(self, q: PackedQueue) -> packed_fast.TxMaps:
        """The bulk TX path's arrays over packed queue ``q``, kept from one service call to the next (until the queue
        resets)."""
        maps = q.bulk_state
        if not isinstance(maps, packed_fast.TxMaps):
            maps = q.bulk_state = packed_fast.TxMaps(q)
        return maps

    def _process_tx(self, q: SplitQueue) -> None:
        quiet = False  # used.flags holds VRING_USED_F_NO_NOTIFY: the driver adds buffers without kicking
        rounds = 0
        try:
            for _ in range(_MAX_TX_ROUNDS):
                pending = q.available()
                if not pending and rounds > 1:  # more came while the last rounds ran: a producer is at work
                    pending = self._look_avail(q, 0, 1, _POLL_SECONDS)
                if not pending:
                    if q.event_idx:
                        # Ask for a kick at the next avail entry, then look again: the driver may have added
                        # buffers after reading the old avail_event and decided not to notify.
                        q.write_avail_event(q.last_avail_idx)
                        full_barrier()
                        if not q.available():
                            return
                        continue
                    if not quiet:
                        return
                    # Kicks wanted again, then one more look: buffers added while the driver read NO_NOTIFY
                    # came without a kick.
                    q.write_used_flags(0)
                    quiet = False
                    full_barrier()
                    if not q.available():
                        return
                    continue
                if not q.event_idx and not quiet:
                    # No kicks while the device is busy anyway (SPLIT-DEV-19): one wake-up per burst is the
                    # cost that would otherwise dominate.
                    q.write_used_flags(VRING_USED_F_NO_NOTIFY)
                    quiet = True
                if rounds:
                    # A short round pays the whole fixed cost for a few chains: gather up to _GATHER_CHAINS (at most
                    # half the ring) while the producer adds them.
                    pending = self._look_avail(q, pending, min(q.size // 2, _GATHER_CHAINS), _GATHER_SECONDS)
                self._tx_round(q, pending)
                rounds += 1
            if q.event_idx:
                # Out of rounds (the lock is given up now and then): ask for a kick at the next entry, and come
                # back for what is already there once the lock is released, since the driver may have decided
                # against kicking for it by an older avail_event.
                q.write_avail_event(q.last_avail_idx)
                full_barrier()
                if q.available():
                    index = q.index
                    self.defer(lambda: self.kick_locked(index))  # run_deferred's loop picks up what it defers
            else:
                # Out of rounds: kicks are wanted again, and what was added while they were off is taken now;
                # anything added later comes with a kick.
                if quiet:
                    q.write_used_flags(0)
                    quiet = False
                    full_barrier()
                pending = q.available()
                if pending:
                    self._tx_round(q, pending)
        except (RingError, DmaFaultError):
            if quiet:  # the device stops until reset; the driver must not be left believing it need not kick
                with contextlib.suppress(DmaFaultError):
                    q.write_used_flags(0)
            raise

    @staticmethod
    def _look_avail(q: SplitQueue, pending: int, want: int, seconds: float) -> int:
        """``pending`` entries available, looked at again until ``want`` are or ``seconds`` passed: a bounded look,
        never a wait (the busy look for a producer at work, and the gathering of a short round)."""
        if pending >= want:
            return pending
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            pending = q.available()
            if pending >= want:
                break
        return pending

    def _tx_round(self, q: SplitQueue, pending: int) -> None:
        """Take ``pending`` available TX chains, put their frames on the wire and return them used: those of the
        compiled reader as it copies them, the rest in one used update after."""
        ids: list[NDArray[np.integer]] = []
        lens: list[NDArray[np.integer]] = []
        old = q.used_idx
        bulk = self.tx_bulk_now()
        taken, returned = self._tx_compiled(q, pending, ids) if bulk else (0, 0)
        if taken < pending:
            if ids:
                lens.append(np.zeros(taken - returned, dtype=np.uint32))
            self._tx_rest(q, pending - taken, ids, lens, bulk)
        count = pending - returned  # the chains not yet returned used
        if count and self.in_order_batch and q.in_order:
            # With IN_ORDER a batch may be returned as one used element for its last buffer (2.7.9).
            last = int(ids[-1][-1])
            q.push_used([(last, int(lens[-1][-1]) if lens else 0)], count)
        elif count:
            used_ids = ids[0] if len(ids) == 1 else np.concatenate(ids)
            used_lens = np.zeros(count, dtype=np.uint32) if not lens else lens[0] if len(lens) == 1 \
                else np.concatenate(lens)
            q.push_used_array(used_ids, used_lens)
        if q.needs_notification(old, q.used_idx):
            # Fired after this batch's frames are on the wire, so whoever waits on the interrupt sees them.
            self.defer(lambda: self._notify_if_live(q))

    def _tx_compiled(self, q: SplitQueue, pending: int, ids: list[NDArray[np.integer]]) -> tuple[int, int]:
        """The leading run of one-descriptor chains through the compiled reader (models/virtio_net/fast_tx.py),
        one call per mapping their buffers lie in. Under the stock ring rules the reader also returns them used,
        :data:`_TX_USED_CHUNK` at a time as it copies their frames, so a driver whose ring is full gets buffers
        back during the round rather than after it; otherwise their heads go to ``ids`` (used len 0). Returns
        (how many were taken, how many of those are returned used): the rest, from the first chain the reader
        would not take, is for :meth:`_tx_rest`."""
        arrays = q.ring_arrays()
        if arrays is None or q.hooks.max_chain_len(q.size) < 1:
            return 0, 0
        gen, avail, table = arrays
        # a variant changing next_used_idx returns its chains through it (push_used_array)
        fields = q.ring_fields() if self.tx_returns_used else None
        in_order = self.in_order_batch and q.in_order
        taken = 0
        heads = q.bulk_state
        if not isinstance(heads, np.ndarray) or len(heads) != q.size:
            heads = q.bulk_state = np.empty(q.size, np.uint32)  # a round's heads, pushed used before the next one
        # Only a hint for which mapping to hand the reader (it reads and checks every value itself): the one the
        # last frames were in, else the one holding the next chain's buffer.
        mapping = q.frame_mapping(gen, None)
        for _ in range(_MAPPINGS_PER_ROUND):
            slot = q.last_avail_idx % q.size
            k = 0
            if mapping is not None:
                flens = np.empty(pending - taken, np.int64)  # goes with the frames
                if fields is not None:
                    k, data, uniform, q.used_idx = take_plain_tx_used(
                        avail, slot, pending - taken, table, *mapping, self._hdr_u64, heads[taken:], flens,
                        fields.used_elems, fields.used, q.used_idx, in_order, _TX_USED_CHUNK)
                else:
                    k, data, uniform = take_plain_tx(avail, slot, pending - taken, table, *mapping, self._hdr_u64,
                                                     heads[taken:], flens)
            if k == 0:
                head = int(avail[slot])
                found = q.frame_mapping(gen, int(table[head, 0])) if head < q.size else None
                if found is None or found is mapping:
                    break
                mapping = found
                continue
            q.consume(k)
            taken += k
            self.stats.tx_bulk += k
            if fields is None:
                ids.append(heads[taken - k:taken])
            self._transmit_batch(FrameBatch(data, flens[:k], uniform if uniform >= 0 else None))
            if taken == pending:
                break
        return taken, taken if fields is not None else 0

    def _tx_rest(self, q: SplitQueue, pending: int, ids: list[NDArray[np.integer]],
                 lens: list[NDArray[np.integer]], bulk_ok: bool) -> None:
        """``pending`` chains in numpy bulk where they are plain, else one by one through the exact parser."""
        heads = q.peek_heads(pending)
        pos = 0
        table = q.read_desc_table() if bulk_ok and pending >= _BATCH_MIN else None
        if table is not None:
            pc = q.plain_chains(table, heads, writable=False)
            runs: list[list[int]] = [[0, pending]]
            if pc.plain is not None or pc.two is not None:
                bulk = np.ones(pending, dtype=np.bool_) if pc.plain is None else pc.plain.copy()
                if pc.two is not None:
                    # A header ending inside the first of two descriptors splits the frame itself: per chain.
                    bulk &= ~(pc.two & (pc.len0 > self.hdr_len))
                edges = np.flatnonzero(np.diff(np.concatenate(([0], bulk.view(np.int8), [0]))))
                runs = edges.reshape(-1, 2).tolist()
            for lo, hi in runs:
                while pos < lo:
                    self._tx_chain(q, int(heads[pos]), ids, lens)
                    pos += 1
                while pos < hi:
                    done = self._tx_bulk(q, pc, pos, hi)
                    if done:
                        ids.append(heads[pos:pos + done])
                        lens.append(np.zeros(done, dtype=np.uint32))
                        pos += done
                    if pos < hi:  # a frame buffer outside the maps: the exact read records the fault
                        self._tx_chain(q, int(heads[pos]), ids, lens)
                        pos += 1
        while pos < pending:
            self._tx_chain(q, int(heads[pos]), ids, lens)
            pos += 1

    def _tx_chain(self, q: SplitQueue, head: int, ids: list[NDArray[np.integer]],
                  lens: list[NDArray[np.integer]]) -> None:
        """One TX chain through the exact parser (every check of parse_chain and of the IOMMU)."""
        chain = q.parse_chain(head)
        q.consume()
        frame = self.tx_frame(chain)
        if frame is not None:
            frame = self.tx_offload(chain, frame)
        ids.append(np.array([head], dtype=np.uint32))
        lens.append(np.array([self.used_len_for(q, chain, 0) & 0xFFFFFFFF], dtype=np.uint32))
        if frame is None:
            self.stats.tx_errors += 1
        else:
            self._transmit(frame)

    def _tx_bulk(self, q: SplitQueue, pc: PlainChains, lo: int, hi: int) -> int:
        """Chains ``lo``..``hi``-1 (plain, readable) in bulk: one gather of their frames; returns how many were
        taken, fewer when a frame buffer is not inside the maps (that chain is left for the exact path)."""
        dma = q.batch_dma
        assert dma is not None  # read_desc_table() gave a table
        hdr = self.hdr_len
        skip = np.uint64(hdr)
        len0 = pc.len0[lo:hi]
        has_frame: NDArray[np.bool_] | None = None
        shortest = int(len0.min())
        sizes: NDArray[np.uint64]
        if pc.two is None and shortest > hdr:
            # The usual burst: header and frame in one buffer each, often all frames of one size.
            iovas = pc.addr0[lo:hi] + skip
            if shortest == int(len0.max()):
                width = shortest - hdr
                data, nread = dma.gather(iovas, width)
                taken = nread if nread < hi - lo else hi - lo
                q.consume(taken)
                self.stats.tx_bulk += taken
                if nread:
                    self._transmit_batch(FrameBatch(data, np.full(nread, width, dtype=np.int64), width))
                return taken
            sizes = len0 - skip
        else:
            two = np.zeros(hi - lo, dtype=np.bool_) if pc.two is None else pc.two[lo:hi]
            addr1 = pc.addr0 if pc.addr1 is None else pc.addr1
            len1 = pc.len0 if pc.len1 is None else pc.len1
            # Where the frame starts: after the header in the one buffer, or in the second (the header filled
            # the first).
            off = np.where(two, skip - np.minimum(len0, skip), skip)
            blen = np.where(two, len1[lo:hi], len0)
            has_frame = blen > off  # else nothing after the header: a TX error, nothing read (as tx_frame)
            iovas = (np.where(two, addr1[lo:hi], pc.addr0[lo:hi]) + off)[has_frame]
            sizes = (blen - off)[has_frame]
        data, nread = dma.gather(iovas, sizes)
        if nread == len(sizes):
            taken = hi - lo
        else:
            taken = nread if has_frame is None else int(np.flatnonzero(has_frame)[nread])
        q.consume(taken)
        self.stats.tx_bulk += taken
        self.stats.tx_errors += taken - nread
        if nread:
            self._transmit_batch(FrameBatch(data, sizes[:nread].astype(np.int64)))
        return taken

    def _notify_if_live(self, q: SplitQueue) -> None:
        with self.endpoint.lock:
            if self.live and q.enabled:  # a reset in between cancels it (RESET-DEV-02/03)
                self.notify_used(q)

    def _transmit(self, frame: bytes) -> None:
        if isinstance(frame, gso.Segmented):
            # The segments leave together, one burst on the wire (as a peer's receive coalescing sees them).
            self._transmit_batch(FrameBatch.of(frame.packets))
            return
        if not self.link_up:
            self.stats.tx_link_down += 1
            return
        self.stats.tx_packets += 1
        self.stats.tx_bytes += len(frame)
        if self.active_pairs > 1:  # automatic receive steering learns the flow's transmit queue
            self.steering.learn(frame)
        port = self.port
        # Delivered once the device lock is released, still on this thread (see ModelEndpoint).
        self.defer(lambda: port.transmit(frame))

    def _transmit_batch(self, frames: FrameBatch) -> None:
        if not self.link_up:
            self.stats.tx_link_down += len(frames)
            return
        self.stats.tx_packets += len(frames)
        self.stats.tx_bytes += frames.total_bytes
        if self.active_pairs > 1:
            for frame in frames:
                self.steering.learn(frame)
        port = self.port
        self.defer(lambda: port.transmit_batch(frames))

    def _oversize(self, frame: bytes) -> bool:
        """Longer than mtu + link-layer header (+ a VLAN tag) with VIRTIO_NET_F_MTU (NET-DEV-05)."""
        if not has(self.negotiated, NetF.MTU):
            return False
        limit = self.mtu + ETH_HLEN
        if len(frame) >= ETH_HLEN and frame[12:14] == ETH_P_8021Q.to_bytes(2, "big"):
            limit += VLAN_HLEN
        return len(frame) > limit

    def receive(self, frame: bytes) -> None:
        """A frame arriving from the wire (Station interface)."""
        with self.endpoint.lock:
            self._receive_one(frame)

    def _receive_one(self, frame: bytes) -> None:
        if not self.live or not self.link_up:
            self.stats.rx_not_ready += 1
            return
        if not isinstance(frame, Coalesced) and self._oversize(frame):  # a GSO packet may be larger (NET-DEV-05)
            self.stats.rx_oversize += 1
            return
        if self.negotiated & FILTER_FEATURES and not self.rx_filter.accept(frame, self.negotiated):
            self.stats.rx_filtered += 1  # before any receive buffer is taken, on split and packed rings alike
            return
        pair = self.rx_pair_for(frame)
        if pair is None:  # every receive queue it could go to is being reset (NETCTRL-DEV-28)
            self.stats.rx_not_ready += 1
            return
        if self.ring_packed:
            pq = self.packed_queues[2 * pair]
            if not pq.enabled:
                self.stats.rx_not_ready += 1
                return
            self.run_guarded(lambda rq: packed_datapath.receive(self, rq, frame), pq)
            return
        q = self.queues[2 * pair]
        if not q.enabled:
            self.stats.rx_not_ready += 1
            return
        self.run_guarded(lambda rq: self._receive_into(rq, frame), q)

    def receive_batch(self, frames: FrameBatch) -> None:
        """A burst of frames arriving from the wire, in order (Station interface)."""
        with self.endpoint.lock:
            if not self.live or not self.link_up:
                self.stats.rx_not_ready += len(frames)
                return
            # The bulk path writes one header for all (DATA_VALID is per frame with GUEST_CSUM).
            if not self.bulk_rx or self.active_pairs > 1 or len(frames) < _BATCH_MIN or self.ring_packed \
                    or self.negotiated & HASH_FEATURES \
                    or has(self.negotiated, NetF.GUEST_CSUM) or self.negotiated & GUEST_GSO:
                # With guest GSO, consecutive segments of a flow in the burst are delivered coalesced.
                coalescing = self.negotiated & GUEST_GSO
                for frame in self.coalescer.coalesce(frames, self.negotiated, self._oversize) if coalescing \
                        else frames:
                    self._receive_one(frame)
                return
            if has(self.negotiated, NetF.MTU):
                limit = self.mtu + ETH_HLEN
                over = frames.lengths > limit
                if over.any():
                    keep = np.array([not self._oversize(f) for f in frames], dtype=np.bool_)
                    self.stats.rx_oversize += int((~keep).sum())
                    frames = frames.select(keep)
            if self.negotiated & FILTER_FEATURES:  # one check per burst: no cost unless filtering was negotiated
                accepted = np.array([self.rx_filter.accept(f, self.negotiated) for f in frames], dtype=np.bool_)
                self.stats.rx_filtered += len(frames) - int(accepted.sum())
                frames = frames.select(accepted)
            q = self.queues[0]
            if not q.enabled:
                self.stats.rx_not_ready += len(frames)
                return
            taken = [0]
            self.run_guarded(lambda rq: self._receive_bulk(rq, frames, taken), q)
            # A driver error stopped the device part-way: the rest found it not ready, as frame by frame.
            self.stats.rx_not_ready += len(frames) - taken[0]

    def _receive_bulk(self, q: SplitQueue, frames: FrameBatch, taken: list[int]) -> None:
        """Deliver ``frames`` in order; ``taken[0]`` counts the frames dealt with (including one that fails)."""
        n = len(frames)
        i = 0
        while i < n:
            taken[0] = i + 1
            avail = q.available()
            if not avail:
                self.stats.rx_no_buffer += n - i
                taken[0] = n
                return
            k = min(avail, n - i)
            done = self._rx_run(q, frames, i, k) if k >= _BATCH_MIN else 0
            i += done
            if done < k:  # the next frame needs the exact path (a chain not plain, too small, or outside the maps)
                taken[0] = i + 1
                self._receive_into(q, frames.frame(i))
                i += 1
        taken[0] = n

    def _rx_run(self, q: SplitQueue, frames: FrameBatch, i: int, k: int) -> int:
        """Frames ``i``..``i+k``-1 into the next ``k`` available chains in bulk, as far as each chain is plain
        (writable) and holds its whole packet; returns how many were delivered (one used update for them)."""
        table = q.read_desc_table()
        if table is None:
            return 0
        dma = q.batch_dma
        assert dma is not None
        heads = q.peek_heads(k)
        pc = q.plain_chains(table, heads, writable=True)
        hdr = NetHdr(num_buffers=1).pack().ljust(self.hdr_len, b"\0")  # what rx_header says for a packet in one buffer
        need = frames.lengths[i:i + k].astype(np.uint64) + np.uint64(len(hdr))
        m = pc.prefix(pc.room >= need)
        if m == 0:
            return 0
        need = need[:m]
        owner: NDArray[np.intp] | None = None
        iovas = pc.addr0[:m]
        sizes = need
        if pc.two is not None:
            first = np.minimum(pc.len0[:m], need)
            rest = need - first
            if rest.any():  # packets reaching into the second buffer of their chain: two pieces each, in order
                second = pc.addr0 if pc.addr1 is None else pc.addr1
                iovas = np.stack([iovas, second[:m]], axis=1).reshape(-1)
                sizes = np.stack([first, rest], axis=1).reshape(-1)
                owner = np.repeat(np.arange(m), 2)
                keep = sizes > 0  # an empty piece is skipped, as _scatter does
                iovas, sizes, owner = iovas[keep], sizes[keep], owner[keep]
        written = dma.scatter(iovas, sizes, frames.with_header(hdr, i, i + m))
        done = m if written == len(sizes) else int(owner[written] if owner is not None else written)
        if done:
            q.consume(done)
            old, new = q.push_used_array(heads[:done], need[:done])
            self.stats.rx_packets += done
            self.stats.rx_bulk += done
            self.stats.rx_bytes += int(frames.lengths[i:i + done].sum())
            if q.needs_notification(old, new):
                self.notify_used(q)
        return done

    def _receive_into(self, q: SplitQueue, frame: bytes) -> None:
        if has(self.negotiated, NetF.MRG_RXBUF):
            self._receive_merged(q, frame)
            return
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

    def _receive_merged(self, q: SplitQueue, frame: bytes) -> None:
        """With VIRTIO_NET_F_MRG_RXBUF a packet takes as many chains as it needs, in avail order."""
        need = self.hdr_len + len(frame)
        chains: list[Chain] = []
        room = 0
        for head in q.peek(q.available()):
            chain = q.parse_chain(head)
            chains.append(chain)
            room += chain.writable_len
            if room >= need:
                break
        if room < need:
            # Not enough buffers for the whole packet: dropped, and none of them used (no partial packet).
            self.stats.rx_no_buffer += 1
            return
        data = memoryview(self.rx_header(frame, len(chains)) + frame)  # num_buffers: chains used (NET-DEV-28/31)
        used: list[tuple[int, int]] = []
        pos = 0
        for chain in chains:
            take = min(chain.writable_len, need - pos)  # all but the last filled to their length (NET-DEV-32)
            self._scatter(chain.writable, data[pos:pos + take])
            used.append((chain.head, self.used_len_for(q, chain, take)))
            pos += take
        q.consume(len(chains))
        old, new = q.push_used(used)  # every buffer of the packet in one used idx update (NET-DEV-33)
        self.stats.rx_packets += 1
        self.stats.rx_bytes += len(frame)
        if q.needs_notification(old, new):
            self.notify_used(q)

    def _scatter(self, writable: list[tuple[int, int]], *sources: bytes | memoryview) -> None:
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
                if not q.event_idx:
                    return
                # Ask for a kick at the next command, as the TX path does: a driver following avail_event (left at
                # its reset value) would ring no doorbell for it. Then look once more, for one added meanwhile.
                q.write_avail_event(q.last_avail_idx)
                full_barrier()
                if not q.available():
                    return
                continue
            used: list[tuple[int, int]] = []
            for head in q.peek(pending):
                chain = q.parse_chain(head)
                q.consume()
                written = 0
                if chain.writable_len >= 1 and 2 <= chain.readable_len <= _CTRL_MAX_COMMAND:
                    cmd = b"".join(self.dma.read(a, n) for a, n in chain.readable if n)
                    reply = self.control_reply(cmd, chain.writable_len)
                    self._scatter(chain.writable, reply)
                    written = len(reply)
                used.append((head, self.used_len_for(q, chain, written)))
            old, new = q.push_used(used)
            if q.needs_notification(old, new):
                self.notify_used(q)
