"""A guest virtio-net driver over virtio-pci modern, acting as the guest kernel would.

The bring-up of 3.1.1 is split into public steps (:meth:`GuestNetDriver.reset`,
:meth:`acknowledge`, :meth:`negotiate`, :meth:`features_ok`, :meth:`setup_irqs`,
:meth:`setup_queues`, :meth:`driver_ok`) so a conformance check can stop
halfway or misbehave on purpose; :meth:`init` runs them in order and sets
FAILED on an unrecoverable error. Every wait is on an eventfd with a bound.
"""

from __future__ import annotations

import os
import select
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from backend.drivers.transport import VirtioPciError, VirtioPciModern
from backend.eventloop import wait_eventfd
from backend.pci.device import DmaPerm, IrqIndex, PciDevice
from backend.virtio.features import (
    DEFINED_NET_PCI,
    DeviceStatus,
    F,
    NetF,
    bits,
    dependency_violations,
    has,
)
from backend.virtio.net_hdr import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_UDP_TUNNEL,
    TUNNEL_FIELDS,
    TUNNEL_FIELDS_AT,
    NetHdr,
    hdr_size,
)
from backend.virtio.pci_regs import NO_VECTOR, VIRTIO_NET_S_LINK_UP, NetCfg
from sim.memory import Allocator, GuestMemory
from testbenches.driver.layout import (
    DriverRing,
    PackedDriverRing,
    default_allocator,
    layout_of,
    new_ring,
    ring_addresses,
    ring_size,
)
from testbenches.driver.net_ctrl import NetControl
from testbenches.driver.split_ring import DriverSplitQueue, QueueFull, UsedBuffer

ETH_HLEN = 14
ETH_DATA_LEN = 1500

#: What the guest asks for when the device offers it. VERSION_1 is mandatory (FEAT-DRV-06);
#: the others are SHOULD-acknowledge bits (FEAT-DRV-10/14/20, NET-DRV-02/07/10) or ones it handles.
DEFAULT_FEATURES = bits(F.VERSION_1, F.ACCESS_PLATFORM, F.ORDER_PLATFORM, F.NOTIF_CONFIG_DATA,
                        F.NOTIFICATION_DATA, F.EVENT_IDX, F.INDIRECT_DESC,
                        NetF.MAC, NetF.STATUS, NetF.MTU, NetF.STANDBY)


#: The guest GSO features, and the receive buffer size each needs without MRG_RXBUF (5.1.9.3.1, NET-DRV-53).
GUEST_GSO = bits(NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_UFO, NetF.GUEST_USO4, NetF.GUEST_USO6)
RX_GSO, RX_GSO_HASH = 65601, 65609


class DriverInitError(Exception):
    """Bring-up stopped; the driver has set FAILED where the step was unrecoverable."""


def choose_features(offered: int, wanted: int) -> int:
    """The subset to acknowledge: offered, wanted, defined for net over PCI (FEAT-DRV-01/04), and
    closed under the dependency table (FEAT-DRV-02): a bit whose prerequisite is missing is dropped."""
    chosen = offered & wanted & DEFINED_NET_PCI
    while True:
        broken = dependency_violations(chosen)
        if not broken:
            return chosen
        for row in broken:
            chosen &= ~(1 << row.feature)


def rx_checksum(hdr: NetHdr, frame: bytes) -> str:
    """What the driver tells the stack about a received frame's checksum (5.1.9.4.2): "partial" with NEEDS_CSUM,
    "valid" with DATA_VALID; with neither the driver checks the TCP or UDP checksum itself (NET-DRV-64): "checked"
    or "bad" ("none" for a frame without one). Other header fields and flag bits are not looked at (NET-DRV-58/61)."""
    if hdr.flags & F_NEEDS_CSUM:
        return "partial"
    if hdr.flags & F_DATA_VALID:
        return "valid"
    pkt = Ether(frame)
    l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    if IP not in pkt or l4 is None or (isinstance(l4, UDP) and l4.chksum == 0):
        return "none"
    got = l4.chksum
    l4.chksum = None
    again = Ether(bytes(pkt)).getlayer(type(l4))
    return "checked" if again is not None and again.chksum == got else "bad"


def rx_malformed(hdr: NetHdr) -> str | None:
    """Why a received packet is dropped for its header (5.1.9.4.2), or None: both UDP-tunnel bits (NET-DRV-65); a
    tunnel bit with NEEDS_CSUM clear, with DATA_VALID, or with no gso_type besides it (NET-DRV-67); UDP_TUNNEL_CSUM
    with NEEDS_CSUM but no tunnel bit (NET-DRV-68). Without a tunnel bit outer_th_offset and inner_nh_offset are not
    looked at (NET-DRV-66), nor is outer_nh_offset ever (NET-DRV-60)."""
    tunnel = hdr.gso_type & GSO_UDP_TUNNEL
    if tunnel == GSO_UDP_TUNNEL:
        return "both UDP-tunnel bits"
    if tunnel and not hdr.flags & F_NEEDS_CSUM:
        return "a UDP-tunnel bit without NEEDS_CSUM"
    if tunnel and hdr.flags & F_DATA_VALID:
        return "a UDP-tunnel bit with DATA_VALID"
    if tunnel and hdr.gso_type & ~(GSO_UDP_TUNNEL | GSO_ECN) == GSO_NONE:
        return "a UDP-tunnel bit on gso_type NONE"
    if not tunnel and hdr.flags & F_UDP_TUNNEL_CSUM and hdr.flags & F_NEEDS_CSUM:
        return "UDP_TUNNEL_CSUM with NEEDS_CSUM and no UDP-tunnel bit"
    return None


@dataclass(frozen=True)
class RxFrame:
    hdr: NetHdr
    frame: bytes

    @property
    def checksum(self) -> str:
        return rx_checksum(self.hdr, self.frame)


class GuestNetDriver:
    """Driver for one virtio-net function with one queue pair (receiveq1 = 0, transmitq1 = 1)."""

    RX = 0
    TX = 1

    def __init__(self, pci: PciDevice, mem: GuestMemory, *, alloc: Allocator | None = None,
                 queue_size: int = 256, features: int = DEFAULT_FEATURES, rx_buffers: int | None = None,
                 reset_timeout: float = 1.0, merged_rx_size: int | None = None) -> None:
        self.pci = pci
        self.mem = mem
        self.alloc = default_allocator(mem, alloc)
        self.queue_size = queue_size
        self.wanted = features
        self.rx_target = rx_buffers
        #: Receive buffer size when VIRTIO_NET_F_MRG_RXBUF is negotiated (None: whole packets anyway); a packet
        #: larger than one buffer then arrives in several, num_buffers in the header of the first.
        self.merged_rx_size = merged_rx_size
        self.transport = VirtioPciModern(pci, reset_timeout=reset_timeout)
        self.offered = 0
        self.features = 0
        self.queues: dict[int, DriverSplitQueue] = {}  # split rings (RING_PACKED not negotiated)
        self.packed: dict[int, PackedDriverRing] = {}  # packed rings (RING_PACKED negotiated)
        self.irq_fds: dict[str, int] = {}  # "config" / "rx" / "tx" -> eventfd (may be one shared fd)
        self.intx = False
        self._notify_loc: dict[int, tuple[int, int, int]] = {}
        self._live = False
        self._mapped: list[tuple[int, int]] = []
        self._backlog: deque[RxFrame] = deque()
        #: Received packets dropped for a malformed header (:func:`rx_malformed`).
        self.rx_dropped = 0
        self._held_kicks: set[int] = set()
        self.rx_buf_size = 0
        self.speed: int | None = None  # with VIRTIO_NET_F_SPEED_DUPLEX, refreshed on config interrupts
        self.duplex: int | None = None
        self.notifications = 0  # doorbell writes, for checks of SPLIT-DRV-21/22/24/25
        self.control: NetControl | None = None  # the control queue, with VIRTIO_NET_F_CTRL_VQ

    # --- memory ---------------------------------------------------------------------------------

    def map_memory(self) -> None:
        """Map every guest RAM region into the device IOMMU, identity (iova = gpa): FEAT-DRV-11."""
        for r in self.mem.regions:
            if (r.gpa, r.size) not in self._mapped:
                self.pci.dma_map(r.gpa, r.size, r.fd, 0, DmaPerm.RW)
                self._mapped.append((r.gpa, r.size))

    # --- bring-up steps ---------------------------------------------------------------------------

    def status(self) -> int:
        return self.transport.status()

    def set_status(self, value: int) -> None:
        """Raw device_status write (a well-behaved caller only adds bits: STATUS-DRV-02)."""
        self.transport.set_status(value)

    def fail(self) -> None:
        """Give up on the device: set FAILED keeping the other bits (INIT-DRV-11)."""
        self.transport.add_status(DeviceStatus.FAILED)
        self._live = False

    def reset(self) -> None:
        """Reset and wait for device_status to read 0 (INIT-DRV-01, PCI-DRV-19)."""
        self._live = False
        self.transport.reset()
        self._drop_queues()
        self.features = 0
        self.control = None

    def acknowledge(self) -> None:
        """ACKNOWLEDGE, then DRIVER (INIT-DRV-02)."""
        self.transport.add_status(DeviceStatus.ACKNOWLEDGE)
        self.transport.add_status(DeviceStatus.DRIVER)

    def negotiate(self, features: int | None = None) -> int:
        """Read the offer and write the chosen subset (INIT-DRV-03); ``features`` is written verbatim.

        Without VERSION_1 in the offer the driver cannot fall back: FAILED (FEAT-DRV-06).
        """
        self.offered = self.transport.device_features()
        if features is None:
            if not has(self.offered, F.VERSION_1):
                self.fail()
                raise DriverInitError("device does not offer VIRTIO_F_VERSION_1")
            features = choose_features(self.offered, self.wanted)
        self.transport.write_driver_features(features)
        self.features = features
        return features

    def features_ok(self) -> None:
        """Set FEATURES_OK and read it back; if it did not stick the device is unusable (INIT-DRV-06/08)."""
        self.transport.add_status(DeviceStatus.FEATURES_OK)
        if not self.status() & DeviceStatus.FEATURES_OK:
            self.fail()
            raise DriverInitError(f"device refused features {self.features:#x} (FEATURES_OK did not stick)")

    def setup_irqs(self) -> None:
        """Eventfds for config, rx and tx bound to MSI-X vectors 0, 1, 2 (shared on a smaller table,
        PCI-DRV-31/34), each mapping read back (PCI-DRV-35); INTx without MSI-X."""
        nvec = self.transport.msix_table_size()
        if nvec == 0:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.irq_fds = {"config": fd, "rx": fd, "tx": fd}
            self.pci.set_irqs(IrqIndex.INTX, 0, [fd])
            self.intx = True
            return
        if nvec >= 3:
            fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3)]
            self.irq_fds = {"config": fds[0], "rx": fds[1], "tx": fds[2]}
        else:
            fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)]
            self.irq_fds = {"config": fds[0], "rx": fds[0], "tx": fds[0]}
        bound: list[int | None] = list(fds)
        self.pci.set_irqs(IrqIndex.MSIX, 0, bound)
        got = self.transport.set_config_msix_vector(0)
        if got != 0:
            self.fail()
            raise DriverInitError(f"config_msix_vector 0 read back as {got:#x}")

    def vector_of(self, queue: int) -> int:
        """Receive queues (and the control queue after them) on the rx vector, transmit queues on the tx one."""
        if self.intx:
            return NO_VECTOR
        return queue % 2 + 1 if self.irq_fds["rx"] != self.irq_fds["config"] else 0

    def setup_queues(self) -> None:
        """Queue discovery and setup per 4.1.5.1.3: size, vector, addresses, then queue_enable."""
        for q in (self.RX, self.TX):
            self.setup_queue(q)
        self.rx_buf_size = self._rx_size()
        # With CTRL_VQ: the other queue pairs and the control queue (testbenches/driver/net_ctrl.py).
        self.control = NetControl(self) if has(self.features, NetF.CTRL_VQ) else None
        # Populate the receive queue now; the doorbell waits for DRIVER_OK (INIT-DRV-09/13).
        self.post_rx(self.rx_target if self.rx_target is not None else self.ring(self.RX).size)

    def setup_queue(self, q: int) -> None:
        """One queue: size, vector, addresses, then queue_enable."""
        layout = layout_of(self.features)  # the layout the driver chose at negotiation
        limit = self.transport.queue_size(q)
        if limit == 0:
            self.fail()
            raise DriverInitError(f"virtqueue {q} is not available")
        size = ring_size(layout, self.queue_size, limit)  # split: powers of two only (PCI-DRV-17)
        ring = new_ring(layout, self.mem, self.alloc, size, index=q, features=self.features)
        if isinstance(ring, PackedDriverRing):
            self.packed[q] = ring
        else:
            self.queues[q] = ring
        self.transport.set_queue_size(q, size)
        vector = self.vector_of(q)
        got = self.transport.set_queue_msix_vector(q, vector)
        if got != vector:
            self.fail()
            raise DriverInitError(f"queue {q} MSI-X vector {vector} read back as {got:#x}")
        self.transport.set_queue_addresses(q, *ring_addresses(ring))
        self.transport.enable_queue(q)
        self._notify_loc[q] = self.transport.notify_location(q)

    def driver_ok(self) -> None:
        """DRIVER_OK last (INIT-DRV-10), then the notifications held back until now."""
        self.transport.add_status(DeviceStatus.DRIVER_OK)
        self._live = True
        for q in sorted(self._held_kicks):
            self._ring_doorbell(q)
        self._held_kicks.clear()

    def init(self, features: int | None = None) -> None:
        """The whole 3.1.1 sequence; FAILED and :class:`DriverInitError` on an unrecoverable step."""
        self.transport.enable_device()
        self.map_memory()
        self.reset()
        self.acknowledge()
        self.negotiate(features)
        self.features_ok()
        try:
            self.setup_irqs()
            self.setup_queues()
        except (VirtioPciError, QueueFull) as exc:
            self.fail()
            raise DriverInitError(str(exc)) from exc
        self.driver_ok()

    # --- device configuration --------------------------------------------------------------------

    @property
    def hdr_len(self) -> int:
        return hdr_size(self.features)

    def mac(self) -> bytes:
        """The device's mac with VIRTIO_NET_F_MAC (NET-DRV-03), else a locally administered one (NET-DRV-04)."""
        if has(self.features, NetF.MAC):
            return self.transport.read_device_config(NetCfg.MAC, 6)
        return bytes([0x02, 0, 0, 0, 0, 0x01])

    def link_up(self) -> bool:
        """Bit 0 of status with VIRTIO_NET_F_STATUS (NET-DRV-06), otherwise up (NET-DRV-05)."""
        if not has(self.features, NetF.STATUS):
            return True
        (status,) = self.transport.read_config_fields([(NetCfg.STATUS, 2)])
        return bool(status & VIRTIO_NET_S_LINK_UP)

    def mtu(self) -> int | None:
        if not has(self.features, NetF.MTU):
            return None
        (mtu,) = self.transport.read_config_fields([(NetCfg.MTU, 2)])
        return mtu

    def _rx_size(self) -> int:
        """Each receive buffer holds a whole non-GSO packet of mtu plus link header (NET-DRV-08); with
        MRG_RXBUF the buffers may be smaller, but never smaller than the header (NET-DRV-55); without it but with a
        guest GSO feature, at least 65601 bytes (65609 with HASH_REPORT) for the largest coalesced packet
        (NET-DRV-53: rx_buffers= keeps their number down where guest memory is small)."""
        if has(self.features, NetF.MRG_RXBUF):
            if self.merged_rx_size is not None:
                return max(self.merged_rx_size, self.hdr_len)
        elif self.features & GUEST_GSO:
            return RX_GSO_HASH if has(self.features, NetF.HASH_REPORT) else RX_GSO
        return self.hdr_len + ETH_HLEN + max(ETH_DATA_LEN, self.mtu() or 0)

    # --- notifications and interrupts --------------------------------------------------------------

    def ring(self, q: int) -> DriverRing:
        """Queue ``q`` of either layout."""
        split = self.queues.get(q)
        return split if split is not None else self.packed[q]

    def notify(self, q: int) -> bool:
        """Publish what was added to queue ``q``; ring the doorbell if the device wants it and it is live."""
        if not self.ring(q).publish():
            return False
        if not self._live:
            self._held_kicks.add(q)
            return False
        self._ring_doorbell(q)
        return True

    def _ring_doorbell(self, q: int) -> None:
        self.transport.notify(q, avail_idx=self.ring(q).published, location=self._notify_loc[q])
        self.notifications += 1

    def wait_irq(self, which: str, timeout: float) -> bool:
        """Wait (bounded) for the eventfd of ``which`` ("config", "rx", "tx"); consume it if signalled."""
        if not wait_eventfd(self.irq_fds[which], timeout):
            return False
        if self.intx:
            self.transport.read_isr()  # deasserts the level interrupt
        return True

    def config_changed(self, timeout: float) -> bool:
        """Wait for a configuration change interrupt; speed and duplex are read again on it (NET-DRV-12)."""
        if not self.wait_irq("config", timeout):
            return False
        self.speed, self.duplex = self.speed_duplex()
        return True

    def speed_duplex(self) -> tuple[int | None, int | None]:
        """speed and duplex with VIRTIO_NET_F_SPEED_DUPLEX, each None when unknown: a speed above 0x7fffffff or a
        duplex other than 0x00/0x01 (NET-DRV-11)."""
        if not has(self.features, NetF.SPEED_DUPLEX):
            return None, None
        speed, duplex = self.transport.read_config_fields([(NetCfg.SPEED, 4), (NetCfg.DUPLEX, 1)])
        return (speed if speed <= 0x7FFFFFFF else None), (duplex if duplex in (0, 1) else None)

    # --- data path ------------------------------------------------------------------------------

    def post_rx(self, n: int, size: int | None = None) -> int:
        """Add up to ``n`` device-writable receive buffers; returns how many were added."""
        ring = self.ring(self.RX)
        length = size if size is not None else self.rx_buf_size
        added = 0
        for _ in range(n):
            if ring.num_free == 0:
                break
            ring.add([], [length])
            added += 1
        if added:
            self.notify(self.RX)
        return added

    def reclaim_tx(self) -> int:
        return len(self.ring(self.TX).used())

    def send(self, frames: Iterable[Packet | bytes], hdr: NetHdr | None = None, timeout: float = 5.0, *,
             tunnel: tuple[int, int] = (0, 0)) -> int:
        """Transmit frames, each behind a virtio_net_hdr (num_buffers 0, flags 0: NET-DRV-16/17), or behind ``hdr``
        (with a gso_type, the frames are GSO packets: longer than the mtu allows a frame, NET-DRV-09); ``tunnel``
        is its outer_th_offset and inner_nh_offset (a header with HOST_UDP_TUNNEL_GSO holds them)."""
        ring = self.ring(self.TX)
        head = bytearray((hdr or NetHdr()).pack().ljust(self.hdr_len, b"\0"))
        if self.hdr_len >= TUNNEL_FIELDS_AT + TUNNEL_FIELDS.size:
            TUNNEL_FIELDS.pack_into(head, TUNNEL_FIELDS_AT, *tunnel)
        limit = (self.mtu() or ETH_DATA_LEN) + ETH_HLEN if hdr is None or hdr.gso_type == GSO_NONE \
            else ETH_HLEN + 0xFFFF
        indirect = has(self.features, F.INDIRECT_DESC)
        deadline = time.monotonic() + timeout
        sent = 0
        self.reclaim_tx()
        for frame in frames:
            raw = bytes(frame)
            if len(raw) > limit and has(self.features, NetF.MTU):
                raise ValueError(f"frame of {len(raw)} bytes exceeds mtu + link header {limit} (NET-DRV-09)")
            while ring.num_free < (1 if indirect else 2):
                self.notify(self.TX)
                if self.reclaim_tx():
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"transmit queue still full after {timeout}s")
                self.wait_irq("tx", left)
            ring.add([bytes(head), raw], [], indirect=indirect)
            sent += 1
        self.notify(self.TX)
        return sent

    def wait_tx_done(self, timeout: float = 5.0) -> bool:
        """Wait until the device has used every transmit buffer. A configuration change interrupt (on its own
        vector) meanwhile is looked at once: with DEVICE_NEEDS_RESET the device is reset and brought up again, the
        buffers in flight given up rather than waited for (STATUS-DRV-04), and the wait ends False; any other change
        stays pending for :meth:`config_changed`."""
        ring = self.ring(self.TX)
        deadline = time.monotonic() + timeout
        config = self.irq_fds.get("config", -1)
        watch = config not in (-1, self.irq_fds["tx"])
        while True:
            self.reclaim_tx()
            if ring.in_flight == 0:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not watch:
                self.wait_irq("tx", left)
                continue
            ready, _, _ = select.select([self.irq_fds["tx"], config], [], [], left)
            if config in ready:
                watch = False
                if self.needs_reset():
                    self.recover()
                    return False
            if self.irq_fds["tx"] in ready:
                self.wait_irq("tx", 0)

    def needs_reset(self) -> bool:
        return bool(self.status() & DeviceStatus.DEVICE_NEEDS_RESET)

    def recover(self) -> None:
        """After DEVICE_NEEDS_RESET: reset (the buffers in flight are dropped with the rings, neither completed nor
        counted lost) and bring the device up again as at first."""
        self.reset()
        self.init()

    def _rx_complete(self, used: Sequence[UsedBuffer]) -> None:
        pending = list(used)
        i = 0
        while i < len(pending):
            u = pending[i]
            i += 1
            if u.len < self.hdr_len:
                continue  # nothing usable in it; the buffer is simply recycled
            hdr = NetHdr.unpack(u.data)
            data = u.data[self.hdr_len:]
            if has(self.features, NetF.MRG_RXBUF):
                for _ in range(max(1, hdr.num_buffers) - 1):  # the rest of the packet follows in order
                    while i >= len(pending):
                        more = self.ring(self.RX).used()
                        if not more:
                            raise TimeoutError("merged receive buffers missing from the used ring")
                        pending.extend(more)
                    data += pending[i].data
                    i += 1
            if rx_malformed(hdr) is not None:
                self.rx_dropped += 1  # never handed to the stack (5.1.9.4.2)
                continue
            self._backlog.append(RxFrame(hdr, data))
        if pending:
            self.post_rx(len(pending))

    def receive_raw(self, count: int, timeout: float = 5.0) -> list[RxFrame]:
        """Up to ``count`` received frames with their headers, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self._backlog) < count:
            self._rx_complete(self.ring(self.RX).used())
            if len(self._backlog) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.wait_irq("rx", left)
        return [self._backlog.popleft() for _ in range(min(count, len(self._backlog)))]

    def exchange(self, frames: Sequence[bytes], timeout: float = 5.0) -> list[bytes]:
        """Send ``frames`` and receive as many (as the frontends' ``exchange``): what a loopback wire returned,
        fewer after ``timeout``. The transmit buffers may still be in flight (:meth:`wait_tx_done`)."""
        self.send(frames, timeout=timeout)
        return [f.frame for f in self.receive_raw(len(frames), timeout)]

    def receive(self, count: int, timeout: float = 5.0) -> list[Packet]:
        """Up to ``count`` received frames as scapy ``Ether`` packets."""
        return [Ether(f.frame) for f in self.receive_raw(count, timeout)]

    # --- teardown -------------------------------------------------------------------------------

    def _drop_queues(self) -> None:
        if self.irq_fds:  # unbind before the eventfds are closed
            self.pci.set_irqs(IrqIndex.INTX if self.intx else IrqIndex.MSIX, 0, [])
        self._held_kicks.clear()
        rings: list[DriverRing] = [*self.queues.values(), *self.packed.values()]
        for ring in rings:
            ring.close()
        self.queues.clear()
        self.packed.clear()
        self._notify_loc.clear()
        self._backlog.clear()
        for fd in set(self.irq_fds.values()):
            os.close(fd)
        self.irq_fds.clear()

    def close(self) -> None:
        """Reset the device, unbind interrupts, unmap guest memory and free the rings."""
        try:
            self.transport.reset()
        finally:
            self._drop_queues()
            for gpa, size in self._mapped:
                self.pci.dma_unmap(gpa, size)
            self._mapped.clear()
