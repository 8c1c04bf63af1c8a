"""Ring state through the vendor vq-state block: a ring resumed where a frontend left it, and a queue reset that
returns a queue to the start of its ring (vhost-user SET/GET_VRING_BASE over virtio-pci, 2.6.1, 2.7.6, 2.8).

The function under test is one whose quirk record names a ring-state block that the driver stops with a queue
reset (the RTL's vq-state block in BAR0; on ``sim:`` the model variant that serves the same block,
:data:`models.virtio_net.vq_state_block.SPEC`). The backend's vDPA driver is driven the way the vhost-user server
drives it:

- split rings: the frontend resumes transmitq1 at an avail idx just short of 2^16, so the ring's indices wrap
  while frames go out. Every frame is sent (the device took the ring up exactly where the driver told it), and
  GET_VRING_BASE of the running queue reads the position it stopped at (SPLIT-DRV-11: the avail idx the device
  is handed continues the frontend's, never behind it). The queue enabled again with the state after reset
  starts at the beginning of a fresh ring (RESET-DEV-04);
- packed rings (where the function offers them): the same with a ring resumed past the ring's end of a lap, both
  wrap counters 0; the lists go out from that slot in ring order across the ring's end (PACKED-DEV-01), the
  stop position read back carries the wrap counters flipped there, and after the queue reset the queue starts at
  slot 0 with both wrap counters 1 again (RESET-DEV-04).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from backend.device import VqState
from backend.drivers.quirks import QueueStop
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import new_eventfd, wait_eventfd
from backend.virtio.features import DeviceStatus, F, bits, has
from backend.virtio.net_hdr import NetHdr
from models.virtio_net.vq_state_block import SPEC as VQ_STATE_SPEC
from sim.memory import GuestMemory
from testbenches.conformance.checks.test_driver_discovery import _transmit
from testbenches.conformance.deadlines import Deadlines
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench, make_frame
from testbenches.conformance.plugin import Verdict
from testbenches.driver.packed import DriverPackedQueue
from testbenches.driver.split_ring import UsedBuffer
from testbenches.driver.vdpa_frontend import VdpaFrontend

MEM = 8 << 20
TXQ = 1
#: Split rings: the avail idx transmitq1 resumes at, so that the frames take it past 0xFFFF.
SPLIT_RESUME = 0xFFF5
SPLIT_SIZE = 64
#: Packed rings: a size that is not a power of two, resumed 3 slots before its end, a lap done (wrap counters 0).
PACKED_SIZE = 37
PACKED_RESUME = VqState(avail_idx=PACKED_SIZE - 3, avail_wrap=0, used_idx=PACKED_SIZE - 3, used_wrap=0)
#: How long the frames of one step may take to come back used (nominal: the session's deadlines scale it).
USED_WAIT = 2.0
#: Frames enough to take the split ring's avail idx past 0xFFFF and the packed ring past its end.
FRAMES = [make_frame(i, 60 + 7 * i) for i in range(24)]


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


@contextmanager
def _ring_state_function(bench: Bench, verdict: Verdict, ids: tuple[str, ...],
                         mem: GuestMemory) -> Iterator[tuple[VirtioPciVdpaDevice, VdpaFrontend] | None]:
    """The vDPA driver over a function with a ring-state block stopped by queue reset and a frontend over it, both
    closed at the end; None (ids not applicable, with why) where the function has none."""
    spec = VQ_STATE_SPEC if bench.configurable else bench.spec
    vdpa = VirtioPciVdpaDevice(bench.open(spec), owns_pci=False)
    block = vdpa.quirk.vq_state
    why = ""
    if block is None or block.stop is not QueueStop.QUEUE_RESET:
        why = f"the function has no ring-state block stopped by a queue reset (quirk {vdpa.quirk.name})"
    elif not has(vdpa.get_device_features(), F.RING_RESET):
        why = "VIRTIO_F_RING_RESET not offered: a running queue cannot be stopped to read its state"
    if why:
        vdpa.close()
        for rid in ids:
            verdict.not_applicable(rid, why)
        yield None
        return
    front = VdpaFrontend(vdpa, mem)
    try:
        yield vdpa, front
    finally:
        vdpa.close()
        front.close()


SPLIT_IDS = ("SPLIT-DRV-11", "RESET-DEV-04")


@pytest.mark.req(*SPLIT_IDS)
def test_vdpa_driver_resumes_a_split_ring_where_the_frontend_left_it(bench: Bench, verdict: Verdict,
                                                                    mem: GuestMemory) -> None:
    with _ring_state_function(bench, verdict, SPLIT_IDS, mem) as opened:
        if opened is None:
            return
        vdpa, front = opened
        front.bring_up(vdpa.get_device_features() & ~bits(F.RING_PACKED, F.IN_ORDER), queues=(0, TXQ),
                       size=SPLIT_SIZE, state=SPLIT_RESUME)
        sent = _transmit(front, FRAMES, bench.deadlines.wait(USED_WAIT), tx=TXQ)
        stopped = vdpa.get_vq_state(TXQ).avail_idx
        want = (SPLIT_RESUME + len(FRAMES)) & 0xFFFF
        verdict.check("SPLIT-DRV-11", sent == len(FRAMES) and stopped == want,
                      f"transmitq1 resumed at avail idx {SPLIT_RESUME:#x} (SET_VRING_BASE): {sent}/{len(FRAMES)} "
                      f"frames sent; GET_VRING_BASE of the running queue read {stopped:#x}, expected {want:#x}")
        # The state after reset, and a fresh ring: the queue reset that stopped the queue left it at the start.
        vdpa.set_vq_state(TXQ, VqState())
        old = (front.kicks[TXQ], front.calls[TXQ])
        ring = front.add_queue(TXQ, SPLIT_SIZE)
        for fd in old:  # the driver holds the new eventfds now
            os.close(fd)
        again = _transmit(front, FRAMES[:3], bench.deadlines.wait(USED_WAIT), tx=TXQ)
        used_idx = ring.used_idx()
        restart = vdpa.get_vq_state(TXQ).avail_idx
    verdict.check("RESET-DEV-04", again == 3 and used_idx == 3 and restart == 3,
                  f"after the queue reset that stopped transmitq1 at {stopped:#x}, enabled again on a fresh ring "
                  f"with the state after reset: {again}/3 frames sent, used idx {used_idx}, stop position "
                  f"{restart} (expected 3: the queue started at 0)")


# --- packed rings ------------------------------------------------------------------------------------------------

PACKED_IDS = ("PACKED-DEV-01", "RESET-DEV-04")


class _PackedTx:
    """transmitq1 as a packed ring of the frontend's, resumed at ``state`` (the driver's own positions set to it)."""

    def __init__(self, front: VdpaFrontend, state: VqState, deadlines: Deadlines) -> None:
        self.front = front
        self.deadlines = deadlines
        self.ring = DriverPackedQueue(front.mem, front.alloc, PACKED_SIZE, index=TXQ)
        self.ring.next_avail, self.ring.avail_wrap = state.avail_idx, state.avail_wrap
        self.ring.next_used, self.ring.used_wrap = state.used_idx, state.used_wrap
        vdpa = front.vdpa
        if state != VqState():
            vdpa.set_vq_state(TXQ, state)
        old = [fd for fd in (front.kicks.get(TXQ), front.calls.get(TXQ)) if fd is not None]
        kick, call = new_eventfd(), new_eventfd()
        front.kicks[TXQ], front.calls[TXQ] = kick, call
        vdpa.set_vq_num(TXQ, PACKED_SIZE)
        vdpa.set_vq_address(TXQ, self.ring.desc_addr, self.ring.driver_addr, self.ring.device_addr)
        vdpa.set_vq_kick(TXQ, kick)
        vdpa.set_vq_call(TXQ, call)
        vdpa.set_vq_ready(TXQ, True)
        for fd in old:  # a ring set up again: the driver holds the new eventfds now
            os.close(fd)

    def send(self, count: int) -> tuple[list[int], list[UsedBuffer]]:
        """``count`` frames, one list each; the Buffer IDs in the order they were made available and what came
        back used within :data:`USED_WAIT` (scaled by the session's deadlines)."""
        ids = [self.ring.add([NetHdr().pack() + f], []) for f in FRAMES[:count]]
        os.eventfd_write(self.front.kicks[TXQ], 1)
        got: list[UsedBuffer] = []
        deadline = time.monotonic() + self.deadlines.wait(USED_WAIT)
        while True:
            got += self.ring.used()
            if len(got) >= count or not wait_eventfd(self.front.calls[TXQ], deadline - time.monotonic()):
                got += self.ring.used()
                return ids, got

    @property
    def position(self) -> VqState:
        r = self.ring
        return VqState(r.next_avail, r.avail_wrap, r.next_used, r.used_wrap)


@pytest.mark.req(*PACKED_IDS)
@pytest.mark.ring_layout("packed")
def test_vdpa_driver_resumes_a_packed_ring_with_its_wrap_counters(bench: Bench, verdict: Verdict,
                                                                  mem: GuestMemory) -> None:
    with _ring_state_function(bench, verdict, PACKED_IDS, mem) as opened:
        if opened is None:
            return
        vdpa, front = opened
        offered = vdpa.get_device_features()
        if not has(offered, F.RING_PACKED):
            for rid in PACKED_IDS:
                verdict.not_offered(rid, f"VIRTIO_F_RING_PACKED not offered (device features {offered:#x})")
            return
        if vdpa.quirk.vq_state is None or not vdpa.quirk.vq_state.packed:
            for rid in PACKED_IDS:
                verdict.not_applicable(rid, f"{vdpa.quirk.name}'s ring-state block holds split rings only")
            return
        front.map_memory()
        front.negotiate(offered & ~bits(F.IN_ORDER, F.EVENT_IDX))
        vdpa.set_config_call(front.config_call)
        tx = _PackedTx(front, PACKED_RESUME, bench.deadlines)
        vdpa.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK
                        | DeviceStatus.DRIVER_OK)
        count = len(FRAMES)  # 3 lists up to the ring's end, the rest after it with the wrap counters flipped to 1
        ids, got = tx.send(count)
        stopped = vdpa.get_vq_state(TXQ)
        want = tx.position
        resumed = (f"packed transmitq1 of {PACKED_SIZE} resumed at slot {PACKED_RESUME.avail_idx}, wrap counters 0 "
                   f"(SET_VRING_BASE): {len(got)}/{count} lists used, Buffer IDs {[u.head for u in got]} (made "
                   f"available {ids}), driver anomalies {tx.ring.anomalies or 'none'}; GET_VRING_BASE of the "
                   f"running queue read {stopped}, the driver is at {want}")
        verdict.check("PACKED-DEV-01", [u.head for u in got] == ids and not tx.ring.anomalies and stopped == want
                      and want == VqState(count - 3, 1, count - 3, 1), resumed)
        # Enabled again with the state after reset on a fresh ring: slot 0, both wrap counters 1.
        vdpa.set_vq_state(TXQ, VqState())
        tx = _PackedTx(front, VqState(), bench.deadlines)
        ids, got = tx.send(3)
        restart = vdpa.get_vq_state(TXQ)
    verdict.check("RESET-DEV-04", [u.head for u in got] == ids and restart == VqState(3, 1, 3, 1),
                  f"after the queue reset that stopped packed transmitq1 at {stopped}, enabled again on a fresh ring "
                  f"with the state after reset: {len(got)}/3 lists used, stop position {restart} (expected slot 3, "
                  "wrap counters 1: the queue started at slot 0)")
