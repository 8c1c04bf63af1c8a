"""A frontend that drives a ``VdpaDevice`` directly, as the vhost-user server would on a frontend's behalf.

It owns what a frontend hands over: guest memory (mapped into the device
IOMMU), split rings, and the kick/call eventfds. With it, a check can bring a
vDPA device up queue by queue and move net traffic without the vhost-user
socket in between. Every wait is a bounded ``select`` on an eventfd.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Sequence

from backend.device import VdpaDevice, VqState
from backend.eventloop import consume_eventfd, new_eventfd, wait_eventfd
from backend.pci.device import DmaPerm
from backend.virtio.features import DeviceStatus, F, NetF, bits, has
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from sim.memory import Allocator, GuestMemory
from testbenches.driver.layout import default_allocator
from testbenches.driver.packed import DriverPackedQueue
from testbenches.driver.split_ring import DriverSplitQueue

_UP = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER


#: What this frontend does not do, so never accepts whatever it is asked to: a header other than the 12-byte one
#: (hash report, UDP-tunnel offsets, the outer network header) and receive buffers for coalesced packets.
LACKS = bits(NetF.HASH_REPORT, NetF.GUEST_UDP_TUNNEL_GSO, NetF.GUEST_UDP_TUNNEL_GSO_CSUM, NetF.HOST_UDP_TUNNEL_GSO,
             NetF.HOST_UDP_TUNNEL_GSO_CSUM, NetF.OUT_NET_HEADER, NetF.IPSEC, NetF.GUEST_TSO4, NetF.GUEST_TSO6,
             NetF.GUEST_UFO, NetF.GUEST_USO4, NetF.GUEST_USO6, NetF.GUEST_ECN, NetF.RSC_EXT)


class VdpaFrontend:
    def __init__(self, vdpa: VdpaDevice, mem: GuestMemory, alloc: Allocator | None = None) -> None:
        self.vdpa = vdpa
        self.mem = mem
        self.alloc = default_allocator(mem, alloc)
        self.rings: dict[int, DriverSplitQueue] = {}
        self.kicks: dict[int, int] = {}
        self.calls: dict[int, int] = {}
        self.config_call = new_eventfd()
        self.features = 0

    def map_memory(self) -> None:
        for r in self.mem.regions:
            self.vdpa.dma_map(r.gpa, r.size, r.fd, 0, DmaPerm.RW)

    def negotiate(self, wanted: int) -> int:
        """ACKNOWLEDGE, DRIVER, the offered subset of ``wanted``, FEATURES_OK (raises if refused)."""
        self.vdpa.set_status(DeviceStatus.ACKNOWLEDGE)
        self.vdpa.set_status(_UP)
        self.features = self.vdpa.get_device_features() & wanted & ~LACKS
        self.vdpa.set_driver_features(self.features)
        self.vdpa.set_status(_UP | DeviceStatus.FEATURES_OK)
        return self.features

    def add_queue(self, index: int, size: int, state: int = 0) -> DriverSplitQueue:
        """Rings, eventfds and queue parameters for one queue; ``state`` resumes a ring that already ran."""
        ring = DriverSplitQueue(self.mem, self.alloc, size, index=index, event_idx=has(self.features, F.EVENT_IDX),
                                in_order=has(self.features, F.IN_ORDER))
        if state:
            ring.avail_idx = ring.published = ring.last_used = state & 0xFFFF
            ring.write_avail_idx(state)
            ring.set_used_event(state)
            # the device side of a ring that ran: used idx and avail_event where it left them
            self.mem.write(ring.used_addr + 2, (state & 0xFFFF).to_bytes(2, "little"))
            self.mem.write(ring.used_addr + ring.layout.avail_event, (state & 0xFFFF).to_bytes(2, "little"))
            self.vdpa.set_vq_state(index, VqState(avail_idx=state & 0xFFFF))
        self.rings[index] = ring
        self.kicks[index], self.calls[index] = new_eventfd(), new_eventfd()
        self.vdpa.set_vq_num(index, size)
        self.vdpa.set_vq_address(index, ring.desc_addr, ring.avail_addr, ring.used_addr)
        self.vdpa.set_vq_kick(index, self.kicks[index])
        self.vdpa.set_vq_call(index, self.calls[index])
        self.vdpa.set_vq_ready(index, True)
        return ring

    def bring_up(self, wanted: int, queues: Sequence[int] = (0, 1), size: int = 64, state: int = 0) -> None:
        self.map_memory()
        self.negotiate(wanted)
        self.vdpa.set_config_call(self.config_call)
        for q in queues:
            self.add_queue(q, size, state)
        self.vdpa.set_status(_UP | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK)

    def kick(self, index: int) -> bool:
        """Publish queue ``index`` and signal its kick eventfd when the device asked for it."""
        if self.rings[index].publish():
            os.eventfd_write(self.kicks[index], 1)
            return True
        return False

    def exchange(self, frames: Sequence[bytes], rx: int = 0, tx: int = 1, timeout: float = 5.0,
                 buf_size: int = 2048) -> list[bytes]:
        """virtio-net: post receive buffers, transmit ``frames``, return the frames received in time."""
        return exchange_frames(self.rings[rx], self.rings[tx], self.calls[rx], self.calls[tx],
                               lambda: self.kick(rx), lambda: self.kick(tx), frames, timeout, buf_size)

    def close(self) -> None:
        for fd in [*self.kicks.values(), *self.calls.values(), self.config_call]:
            os.close(fd)
        self.kicks.clear()
        self.calls.clear()


def exchange_frames(rxq: DriverSplitQueue | DriverPackedQueue, txq: DriverSplitQueue | DriverPackedQueue,
                    call_rx: int, call_tx: int,
                    kick_rx: Callable[[], object], kick_tx: Callable[[], object], frames: Sequence[bytes],
                    timeout: float, buf_size: int = 2048) -> list[bytes]:
    """Post a receive buffer per frame, transmit the frames, and collect what arrives within ``timeout``
    (waiting on the call eventfds); transmit buffers are reclaimed before returning."""
    for _ in frames:
        rxq.add([], [buf_size])
    kick_rx()
    for f in frames:
        txq.add([NetHdr().pack() + f], [])
    kick_tx()
    deadline = time.monotonic() + timeout
    out: list[bytes] = []
    while True:
        out += [u.data[HDR_SIZE:] for u in rxq.used()]
        left = deadline - time.monotonic()
        if len(out) >= len(frames) or left <= 0:
            break
        wait_eventfd(call_rx, left)
    while txq.in_flight and wait_eventfd(call_tx, deadline - time.monotonic()):
        txq.used()
    txq.used()
    return out


def stream_frames(rxq: DriverSplitQueue | DriverPackedQueue, txq: DriverSplitQueue | DriverPackedQueue,
                  call_rx: int, call_tx: int,
                  kick_rx: Callable[[], object], kick_tx: Callable[[], object], frames: Sequence[bytes],
                  timeout: float, buf_size: int = 2048) -> list[bytes]:
    """:func:`exchange_frames` kept in flight: receive buffers and frames are added as ring slots come back, so
    the device always has work while the driver refills and reads (one ring's worth at a time leaves the device
    idle while the driver works). A frame is sent only once a receive buffer waits for it. Returns what arrived
    before ``timeout`` ran out without progress, in arrival order."""
    want = len(frames)
    posted = sent = 0
    out: list[bytes] = []
    hdr = NetHdr().pack()
    deadline = time.monotonic() + timeout
    while len(out) < want or txq.in_flight:
        progressed = False
        if posted < want and rxq.num_free:
            while posted < want and rxq.num_free:
                rxq.add([], [buf_size])
                posted += 1
            kick_rx()
            progressed = True
        if sent < posted and txq.num_free:
            while sent < posted and txq.num_free:
                txq.add([hdr + frames[sent]], [])
                sent += 1
            kick_tx()
            progressed = True
        got = rxq.used()
        if got:
            out += [u.data[HDR_SIZE:] for u in got]
            progressed = True
        if txq.used():
            progressed = True
        if progressed:
            deadline = time.monotonic() + timeout
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([call_rx, call_tx], [], [], left)
        for fd in ready:
            consume_eventfd(fd)
    return out
