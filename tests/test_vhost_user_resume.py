"""A frontend resuming its rings on a restarted backend, as DPDK 22.11's virtio_user does after a reconnect.

virtio_user keeps its rings when the backend goes away and, on the new connection, sends no SET_OWNER: it stops
the rings (SET_VRING_ENABLE 0, GET_VRING_BASE), negotiates again and restarts them with SET_VRING_BASE 0 although
their used idx has moved on. The session takes the ring stop before SET_OWNER as implying the owner (nothing else
before SET_OWNER is taken), and starts a ring given base 0 at its used idx, which needs a device that can set
last_avail_idx: a plain virtio-pci queue is refused with the reason, the IFC-like model with its vq-state
register resumes and keeps moving traffic.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from backend.device import VdpaDevice
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.vhost_user import messages as m
from backend.vhost_user.server import VhostUserServer
from backend.virtio.features import DeviceStatus
from models.targets import loopback_device
from sim.memory import GuestMemory
from testbenches.driver.split_ring import DriverSplitQueue
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import FrontendError, VhostUserFrontend
from tests.test_driver_quirks import IfcvfLikeNet
from tests.vhost_user_rig import Devices

R = m.FrontendRequest
SIZE = 256
FIRST_LIFE = 2 * SIZE + 88
UP = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK


def ifcvf_like() -> VdpaDevice:
    return VirtioPciVdpaDevice(loopback_device(IfcvfLikeNet(), "sim:ifcvf-like"))


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(4 << 20, gpa=0x1_0000_0000) as g:
        yield g


def serve(tmp_path: Path, factory: Callable[[], VdpaDevice]) -> VhostUserServer:
    return VhostUserServer(str(tmp_path / "resume.sock"), factory)


def traffic(fe: VhostUserFrontend, n: int, start: int) -> None:
    for first in range(start, start + n, 50):
        sent = [test_frame(i, 60 + i % 200) for i in range(first, min(first + 50, start + n))]
        assert fe.exchange(sent, timeout=5.0) == sent


def resume(old: VhostUserFrontend, path: str) -> VhostUserFrontend:
    """A new connection that takes over ``old``'s rings the way virtio_user does (no SET_OWNER, bases 0)."""
    fe = VhostUserFrontend.connect(path, old.mem)
    fe.alloc, fe.rings = old.alloc, dict(old.rings)
    assert fe.stop() == dict.fromkeys(fe.rings, 0)  # a fresh session knows no position
    fe.features = fe._u64(R.GET_FEATURES) & old.features
    fe.request(R.SET_PROTOCOL_FEATURES, m.U64(old.protocol_features))
    fe.protocol_features = old.protocol_features
    for q in fe.rings:
        fe.calls[q] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fe.request(R.SET_VRING_CALL, m.VringFile(q), [fe.calls[q]])
    fe.request(R.SET_FEATURES, m.U64(fe.features))
    fe.request(R.SET_STATUS, m.Status(UP), need_reply=True)
    fe.set_mem_table()
    for q, ring in fe.rings.items():
        fe.kicks[q] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        fe.request(R.SET_VRING_NUM, m.VringState(q, SIZE))
        fe.request(R.SET_VRING_BASE, m.VringState(q, 0))
        fe.set_ring_addr(q, ring.desc_addr, ring.avail_addr, ring.used_addr)
        fe.request(R.SET_VRING_KICK, m.VringFile(q), [fe.kicks[q]])
    for q in fe.rings:
        fe.enable(q, True)
    return fe


def used_idx(ring: DriverSplitQueue) -> int:
    """The used ring's idx in guest memory (where the device left it)."""
    return int.from_bytes(ring.mem.read(ring.used_addr + 2, 2), "little")


def first_life(path: str, mem: GuestMemory) -> VhostUserFrontend:
    fe = VhostUserFrontend.connect(path, mem)
    fe.start(size=SIZE)
    traffic(fe, FIRST_LIFE, 0)  # more frames than the ring holds: a device restarted at 0 sees a corrupt ring
    return fe


def test_only_a_ring_stop_implies_the_owner(tmp_path: Path, mem: GuestMemory) -> None:
    srv = serve(tmp_path, Devices())
    path = str(tmp_path / "resume.sock")
    try:
        refused = VhostUserFrontend.connect(path, mem)
        with pytest.raises(FrontendError, match="refused"):
            refused.request(R.SET_VRING_ENABLE, m.VringState(0, 1), need_reply=True)  # a start is not a resume
        with pytest.raises(FrontendError, match="refused"):
            refused.request(R.SET_VRING_ENABLE, m.VringState(99, 0), need_reply=True)  # no such ring
        with pytest.raises(FrontendError, match="refused"):
            refused.request(R.SET_VRING_NUM, m.VringState(0, SIZE), need_reply=True)  # still no owner
        refused.close()
        fe = VhostUserFrontend.connect(path, mem)
        fe.request(R.SET_VRING_ENABLE, m.VringState(0, 0), need_reply=True)
        fe.request(R.SET_VRING_NUM, m.VringState(0, SIZE), need_reply=True)  # the owner is implied now
        with pytest.raises(FrontendError, match="refused"):
            fe.request(R.SET_OWNER, need_reply=True)
        fe.close()
        reasons = [e for rec in srv.sessions if rec.session is not None for e in rec.session.stats.errors]
        assert any("SET_VRING_NUM before SET_OWNER" in r for r in reasons), reasons
        assert any("SET_OWNER after the frontend resumed its rings without it" in r for r in reasons), reasons
    finally:
        srv.close()


def test_resume_on_plain_virtio_pci_is_refused_with_the_reason(tmp_path: Path, mem: GuestMemory) -> None:
    with contextlib.ExitStack() as stack:
        first = serve(tmp_path, Devices())
        stack.callback(first.close)
        old = first_life(str(tmp_path / "resume.sock"), mem)
        stack.callback(old.close)
        first.close()  # the backend goes away under the frontend
        again = serve(tmp_path, Devices())
        stack.callback(again.close)
        fe = resume(old, str(tmp_path / "resume.sock"))
        stack.callback(fe.close)
        used = used_idx(old.rings[0])
        assert used != 0
        with pytest.raises(FrontendError, match="refused"):
            fe.request(R.SET_STATUS, m.Status(UP | DeviceStatus.DRIVER_OK), need_reply=True)
        session = again.sessions[0].session
        assert session is not None
        assert any(f"used idx is {used} with SET_VRING_BASE 0" in e and "vq-state register" in e
                   for e in session.stats.errors), session.stats.errors


def test_resume_with_a_vq_state_register_keeps_moving_traffic(tmp_path: Path, mem: GuestMemory) -> None:
    with contextlib.ExitStack() as stack:
        first = serve(tmp_path, ifcvf_like)
        stack.callback(first.close)
        old = first_life(str(tmp_path / "resume.sock"), mem)
        stack.callback(old.close)
        first.close()
        again = serve(tmp_path, ifcvf_like)
        stack.callback(again.close)
        fe = resume(old, str(tmp_path / "resume.sock"))
        stack.callback(fe.close)
        fe.request(R.SET_STATUS, m.Status(UP | DeviceStatus.DRIVER_OK), need_reply=True)
        traffic(fe, 200, FIRST_LIFE)
        bases = fe.stop()
        assert bases == {q: used_idx(r) for q, r in fe.rings.items()} and all(bases.values()), bases
