"""GET_VRING_BASE after SET_STATUS 0 answers where the running ring stopped, as QEMU 7.2 needs to migrate a guest.

QEMU 7.2 stops a running vhost-user device with SET_STATUS 0 first and GET_VRING_BASE after it
(``vhost_dev_stop``), and carries those bases in the migration stream to the destination's SET_VRING_BASE. A base
of 0 there makes the destination QEMU refuse the stream ("Guest index ... inconsistent with Host index 0x0"). Both
with the vq-state register (the position read from the device) and without it (the used idx read from the ring).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.vhost_user import messages as m
from backend.vhost_user.server import VhostUserServer
from models.virtio_net.vq_state_block import SPEC as SIM_VQ_STATE
from sim.memory import GuestMemory
from testbenches.driver.packed import DriverPackedQueue
from testbenches.driver.split_ring import DriverSplitQueue
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend
from tests.vhost_user_rig import Devices

R = m.FrontendRequest
FRAMES = 300  # more than a ring of 256 holds: the indices wrapped past the ring's size


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(4 << 20, gpa=0x1_0000_0000) as g:
        yield g


@pytest.mark.parametrize("spec", [pytest.param(f"{SIM_VQ_STATE},wire=loopback", id="vq-state"),
                                  pytest.param("sim:virtio-net,wire=loopback", id="plain")])
@pytest.mark.parametrize("disable_first", [False, True], ids=["qemu-order", "enable-0-after-reset"])
def test_get_vring_base_after_set_status_0(tmp_path: Path, mem: GuestMemory, spec: str, disable_first: bool) -> None:
    path = str(tmp_path / "vu.sock")
    with VhostUserServer(path, Devices(spec)), contextlib.closing(VhostUserFrontend.connect(path, mem)) as fe:
        fe.start(size=256)
        for first in range(0, FRAMES, 50):
            sent = [test_frame(i, 60 + i % 200) for i in range(first, first + 50)]
            assert fe.exchange(sent, timeout=5.0) == sent
        used = {q: used_idx(ring) for q, ring in fe.rings.items()}
        assert used == {0: FRAMES, 1: FRAMES}, used
        fe.request(R.SET_STATUS, m.Status(0), need_reply=True)  # QEMU 7.2's vhost_dev_stop: the reset comes first
        bases = fe.stop() if disable_first else {q: base(fe, q) for q in fe.rings}
        assert bases == used, f"GET_VRING_BASE after SET_STATUS 0 answered {bases}, the rings stopped at {used}"
        # answered once: a ring the frontend sets up again starts where the frontend says
        fe.request(R.SET_VRING_NUM, m.VringState(0, 256))
        assert base(fe, 0) == 0


def used_idx(ring: DriverSplitQueue | DriverPackedQueue) -> int:
    assert isinstance(ring, DriverSplitQueue)
    return int.from_bytes(ring.mem.read(ring.used_addr + 2, 2), "little")


def base(fe: VhostUserFrontend, q: int) -> int:
    reply = fe.request(R.GET_VRING_BASE, m.VringState(q, 0))
    assert reply is not None and isinstance(reply.payload, m.VringState)
    return reply.payload.num
