"""Packed rings over vhost-user, end to end: Python frontend -> VhostUserServer -> VirtioPciVdpaDevice -> sim.

What a frontend sees of a packed ring through ``serve``: RING_PACKED offered when the device offers it, the
three ring areas of SET_VRING_ADDR, SET/GET_VRING_BASE in the packed encoding (bits 0-14 avail index, 15 its
wrap counter, 16-30 used index, 31 its wrap counter), and what a plain virtio-pci device (no ring-state
register) refuses, with the reason.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.device import VqState
from backend.eventloop import wait_eventfd
from backend.vhost_user import messages as m
from backend.vhost_user.ring_state import packed_num, packed_ring_position, packed_state
from backend.vhost_user.server import VhostUserServer
from backend.virtio.features import F, NetF
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.packed_ring import DESC_FLAGS_OFFSET, DESC_SIZE, advance, avail_bits, used_bits
from sim.memory import GuestMemory
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import PACKED_START, WANTED_FEATURES, FrontendError, VhostUserFrontend
from tests.vhost_user_rig import Devices

#: The model's offer with RING_PACKED (bit 34) and without NOTIFICATION_DATA; ``_SPLIT_ONLY`` withholds packed.
PACKED_FEATURES = 0x8000011F30018028
SPEC = f"sim:virtio-net,wire=loopback,features={PACKED_FEATURES:#x}"
SPLIT_ONLY = f"sim:virtio-net,wire=loopback,features={PACKED_FEATURES & ~(1 << F.RING_PACKED):#x}"
MEM_SIZE = 4 << 20
UVA_OFFSET = 0x7F00_0000_0000
R = m.FrontendRequest


@contextlib.contextmanager
def serve(tmp_path: Path, spec: str = SPEC, name: str = "vu.sock") -> Iterator[tuple[VhostUserServer, str]]:
    path = str(tmp_path / name)
    srv = VhostUserServer(path, Devices(spec))
    try:
        yield srv, path
    finally:
        srv.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[VhostUserServer, str]]:
    with serve(tmp_path) as got:
        yield got


def new_mem(started: contextlib.ExitStack) -> GuestMemory:
    return started.enter_context(GuestMemory.single(MEM_SIZE, gpa=0x1_0000_0000))


def traffic(fe: VhostUserFrontend, n: int, start: int = 0, batch: int = 40) -> None:
    for first in range(start, start + n, batch):
        sent = [test_frame(i, 60 + i % 200) for i in range(first, min(first + batch, start + n))]
        got = fe.exchange(sent, timeout=5.0)
        assert got == sent, f"frames {first}..: sent {len(sent)}, got {len(got)} back"


def packed_frontend(path: str, started: contextlib.ExitStack, size: int,
                    wanted: int = WANTED_FEATURES) -> VhostUserFrontend:
    fe = VhostUserFrontend.connect(path, new_mem(started), uva_offset=UVA_OFFSET)
    started.callback(fe.close)
    fe.start(size=size, wanted=wanted, packed=True)
    return fe


def packed_ring_sized(path: str, started: contextlib.ExitStack, mem: GuestMemory, queue: int, num: int,
                      uva_offset: int = 0) -> VhostUserFrontend:
    """A frontend on ``path`` that negotiated RING_PACKED, sent its features and memory table and set queue
    ``queue``'s size to ``num``: the ring's base and addresses are next."""
    fe = VhostUserFrontend.connect(path, mem, uva_offset=uva_offset)
    started.callback(fe.close)
    fe.negotiate(WANTED_FEATURES | 1 << F.RING_PACKED)
    fe.request(R.SET_FEATURES, m.U64(fe.features))
    fe.set_mem_table()
    fe.request(R.SET_VRING_NUM, m.VringState(queue, num))
    return fe


def session_errors(srv: VhostUserServer) -> list[str]:
    s = srv.sessions[0].session
    assert s is not None
    return s.stats.errors


def test_packed_offered_only_when_the_device_offers_it(tmp_path: Path, started: contextlib.ExitStack) -> None:
    for spec, offered in ((SPEC, True), (SPLIT_ONLY, False)):
        with serve(tmp_path, spec, f"{offered}.sock") as (_, path):
            fe = VhostUserFrontend.connect(path, new_mem(started))
            try:
                got = fe.negotiate(wanted=(1 << 64) - 1)
                assert bool(got >> F.RING_PACKED & 1) == offered, f"{spec}: offer {got:#x}"
            finally:
                fe.close()


@pytest.mark.parametrize("size", [128, 100])  # a wrap every 128 frames; 100 is no power of two (packed allows it)
def test_packed_traffic_and_stop_state(size: int, server: tuple[VhostUserServer, str],
                                       started: contextlib.ExitStack) -> None:
    srv, path = server
    fe = packed_frontend(path, started, size)
    assert fe.get_status() & 0x4, "DRIVER_OK not set on the device"
    traffic(fe, 300)
    bases = fe.stop()
    # 300 one-slot buffers on each ring: the position is 300 mod size, the wrap counter flipped once per lap.
    off, wrap = 300 % size, (1 + 300 // size) % 2
    want = off | wrap << 15 | off << 16 | wrap << 31
    assert bases == {0: want, 1: want}, {q: f"{b:#x}" for q, b in bases.items()}
    assert not session_errors(srv)
    dev = srv.factory.made[0]  # type: ignore[attr-defined]
    assert dev.get_driver_features() >> F.RING_PACKED & 1, "the device did not negotiate RING_PACKED"
    faults = dev.pci.dma_faults() if hasattr(dev.pci, "dma_faults") else []
    assert not faults, faults


def test_packed_in_order_and_indirect(tmp_path: Path, started: contextlib.ExitStack) -> None:
    """IN_ORDER (the model returns TX batches as one used descriptor) and INDIRECT_DESC offered to the frontend."""
    srv, path = started.enter_context(serve(tmp_path, SPEC + ",inorder_batch=1"))
    fe = packed_frontend(path, started, 64, WANTED_FEATURES | 1 << F.IN_ORDER)
    assert fe.features >> F.IN_ORDER & 1
    traffic(fe, 200, batch=30)
    rx, tx = fe.rings[0], fe.rings[1]
    for _ in range(5):
        rx.add([], [2048])
    fe.kick(0)
    for i in range(5):  # indirect TX lists next to direct ones
        tx.add([NetHdr().pack() + test_frame(1000 + i, 64)], [], indirect=bool(i % 2))
    fe.kick(1)
    got: list[bytes] = []
    deadline = time.monotonic() + 5.0
    while len(got) < 5 and time.monotonic() < deadline:
        got += [u.data[HDR_SIZE:] for u in rx.used()]
        wait_eventfd(fe.calls[0], 0.2)
    assert got == [test_frame(1000 + i, 64) for i in range(5)]
    assert not session_errors(srv)


def test_packed_base_encoding_on_a_device_without_state_register(server: tuple[VhostUserServer, str],
                                                                 started: contextlib.ExitStack) -> None:
    """The ring's start is accepted in both frontends' forms (0x8000 from DPDK, 0x80008000 from QEMU); any other
    state is refused with the reason, as a non-zero split base is."""
    srv, path = server
    fe = packed_ring_sized(path, started, new_mem(started), 0, 100)
    for start in (PACKED_START, 0x8000_8000):
        fe.request(R.SET_VRING_BASE, m.VringState(0, start), need_reply=True)
    for bad, why in ((0, "wrap counters 1"), (5 | 1 << 15, "wrap counters 1"), (0x8000 | 100, "outside the ring"),
                     (0x8000 | (120 | 0x8000) << 16, "outside the ring")):
        with pytest.raises(FrontendError, match="refused"):
            fe.request(R.SET_VRING_BASE, m.VringState(0, bad), need_reply=True)
        assert why in session_errors(srv)[-1], session_errors(srv)[-1]
    reply = fe.request(R.GET_VRING_BASE, m.VringState(0, 0))  # not running: where it would start
    assert reply is not None and isinstance(reply.payload, m.VringState)
    assert reply.payload.num == 0x8000_8000


def test_packed_ring_areas_must_lie_in_the_table(server: tuple[VhostUserServer, str],
                                                 started: contextlib.ExitStack) -> None:
    srv, path = server
    mem = new_mem(started)
    fe = packed_ring_sized(path, started, mem, 0, 1000, UVA_OFFSET)  # any size; its 16000-byte ring must fit
    end = mem.regions[0].end
    with pytest.raises(FrontendError, match="refused"):
        fe.set_ring_addr(0, end - 0x1000, end - 0x800, end - 0x400, need_reply=True)
    assert "descriptor ring outside the memory table" in session_errors(srv)[-1]
    with pytest.raises(FrontendError, match="refused"):
        fe.set_ring_addr(0, end - 0x8000, end - 0x800, end - 2, need_reply=True)
    assert "device event suppression area outside" in session_errors(srv)[-1]
    fe.set_ring_addr(0, end - 0x8000, end - 0x800, end - 4, need_reply=True)  # event areas are 4 bytes


@pytest.mark.parametrize("extra, what", [(1 << m.VHOST_F_LOG_ALL, "dirty logging"), (1 << NetF.MQ, "multiqueue")])
def test_packed_with_what_the_backend_keeps_split_is_refused(extra: int, what: str, tmp_path: Path,
                                                             started: contextlib.ExitStack) -> None:
    mq = PACKED_FEATURES | 1 << NetF.CTRL_VQ | 1 << NetF.MQ
    srv, path = started.enter_context(serve(tmp_path, f"sim:virtio-net,wire=loopback,queues=2,features={mq:#x}"))
    fe = VhostUserFrontend.connect(path, new_mem(started))
    started.callback(fe.close)
    offered = fe.negotiate(wanted=(1 << 64) - 1)
    assert offered & extra, f"{offered:#x} lacks {extra:#x}"
    with pytest.raises(FrontendError, match="refused"):
        fe.request(R.SET_FEATURES, m.U64(WANTED_FEATURES | 1 << F.RING_PACKED | extra), need_reply=True)
    assert what in session_errors(srv)[-1]
    fe.request(R.SET_FEATURES, m.U64(WANTED_FEATURES | 1 << F.RING_PACKED), need_reply=True)


def test_split_frontend_on_a_packed_offering_device_is_unaffected(server: tuple[VhostUserServer, str],
                                                                  started: contextlib.ExitStack) -> None:
    srv, path = server
    fe = VhostUserFrontend.connect(path, new_mem(started))
    started.callback(fe.close)
    fe.start(size=256)
    assert not fe.features >> F.RING_PACKED & 1
    traffic(fe, 100)
    assert fe.stop() == {0: 100, 1: 100}
    assert not session_errors(srv)


# --- the state codec and the ring reading, alone ---------------------------------------------------------------

def test_packed_state_codec() -> None:
    assert packed_state(m.VringState(0, 0x8000)) == VqState(0, 1, 0, 1)  # DPDK 22.11: used = avail
    assert packed_state(m.VringState(0, 7)) == VqState(7, 0, 7, 0)
    assert packed_state(m.VringState(0, 0x8005_0003)) == VqState(3, 0, 5, 1)
    assert packed_num(2, VqState(3, 0, 5, 1)) == m.VringState(2, 0x8005_0003)


def put_flags(ring: bytearray, slot: int, flags: int) -> None:
    at = DESC_SIZE * slot + DESC_FLAGS_OFFSET
    ring[at:at + 2] = flags.to_bytes(2, "little")


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 300), total=st.integers(0, 2000), outstanding=st.integers(0, 300))
def test_packed_ring_position_is_where_the_driver_stopped(size: int, total: int, outstanding: int) -> None:
    """A ring the driver made ``total`` one-slot buffers available on from its start (any number of laps), the
    device having used all but the last ``outstanding``: the position read from the AVAIL bits is ``total``
    slots on."""
    outstanding = min(outstanding, size, total)
    ring = bytearray(DESC_SIZE * size)
    at = (0, 1)
    for i in range(total):
        put_flags(ring, at[0], used_bits(at[1]) if i < total - outstanding else avail_bits(at[1]))
        at = advance(at[0], at[1], 1, size)
    assert packed_ring_position(bytes(ring), size) == at


def test_packed_state_through_a_device_with_a_state_register(tmp_path: Path, started: contextlib.ExitStack) -> None:
    """The model variant with the RTL's vq-state block: GET_VRING_BASE reads the packed state from the device, and a
    fresh session's device takes a non-zero packed base (refused on a plain virtio-pci function above)."""
    spec = "sim:virtio-net,wire=loopback,model=models.virtio_net.vq_state_block:VqStateNetDevice"
    srv, path = started.enter_context(serve(tmp_path, spec))
    fe = packed_frontend(path, started, 100)
    traffic(fe, 250)
    bases = fe.stop()
    # 250 one-slot buffers on a ring of 100: slot 50 of the third lap, both wrap counters back at 1
    want = 50 | 1 << 15 | 50 << 16 | 1 << 31
    assert bases == {0: want, 1: want}, {q: f"{b:#x}" for q, b in bases.items()}
    fe2 = packed_ring_sized(path, started, new_mem(started), 1, 100)
    fe2.request(R.SET_VRING_BASE, m.VringState(1, want), need_reply=True)
    reply = fe2.request(R.GET_VRING_BASE, m.VringState(1, 0))
    assert reply is not None and isinstance(reply.payload, m.VringState) and reply.payload.num == want
    assert not any("refused" in e for r in srv.sessions if r.session for e in r.session.stats.errors)
