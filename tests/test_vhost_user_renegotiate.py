"""New features on a stopped session without a reset message, as DPDK's virtio_user sends them when testpmd
configures its port again with offloads: every ring stopped with GET_VRING_BASE, then SET_FEATURES with other
features, SET_STATUS up to FEATURES_OK, the memory table and the rings again (not their call eventfds), DRIVER_OK.
The backend resets the device and negotiates the new features; traffic runs again. Features changing while a
ring runs are still refused."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.vhost_user import messages as m
from backend.vhost_user.server import VhostUserServer
from backend.virtio.features import DeviceStatus, NetF, bits
from models.virtio_net.device import DEFAULT_FEATURES
from sim.memory import GuestMemory
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend
from tests.vhost_user_rig import Devices

OFFLOADS = bits(NetF.CSUM, NetF.GUEST_CSUM, NetF.HOST_TSO4)
SPEC = f"sim:virtio-net,features={DEFAULT_FEATURES | OFFLOADS:#x},wire=loopback"
UP = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK
R = m.FrontendRequest


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[VhostUserServer, str, Devices]]:
    path = str(tmp_path / "vu.sock")
    devices = Devices(SPEC)
    srv = VhostUserServer(path, devices)
    yield srv, path, devices
    srv.close()


def round_trip(fe: VhostUserFrontend, n: int) -> None:
    sent = [test_frame(i, 60 + i) for i in range(n)]
    assert fe.exchange(sent, timeout=5.0) == sent


def reconfigure(fe: VhostUserFrontend, features: int) -> None:
    """virtio_user's port reconfiguration after :meth:`VhostUserFrontend.stop`: SET_FEATURES, status, memory table,
    rings (fresh ones, kicks anew, calls kept), DRIVER_OK."""
    fe.request(R.SET_FEATURES, m.U64(features))
    fe.features = features
    fe.request(R.SET_STATUS, m.Status(UP), need_reply=True)
    assert fe.get_status() & UP == UP
    fe.set_mem_table()
    old_kicks = dict(fe.kicks)
    for q in (0, 1):
        fe.add_ring(q, 256)
    for fd in old_kicks.values():
        os.close(fd)
    for q in (0, 1):
        fe.enable(q, True)
    fe.request(R.SET_STATUS, m.Status(UP | DeviceStatus.DRIVER_OK), need_reply=True)


def test_features_change_after_every_ring_stopped(server: tuple[VhostUserServer, str, Devices]) -> None:
    srv, path, devices = server
    with contextlib.ExitStack() as stack:
        mem = stack.enter_context(GuestMemory.single(4 << 20, gpa=0x1_0000_0000))
        fe = VhostUserFrontend.connect(path, mem)
        stack.callback(fe.close)
        fe.start(size=256)
        assert not fe.features & OFFLOADS
        round_trip(fe, 20)
        fe.stop()
        reconfigure(fe, fe.features | OFFLOADS)
        assert fe.get_status() & DeviceStatus.DRIVER_OK
        driver_features = devices.model().driver_features
        assert driver_features & OFFLOADS == OFFLOADS, f"device negotiated {driver_features:#x}"
        round_trip(fe, 20)
    rec = srv.sessions[0]
    assert rec.ended.wait(5.0)
    assert rec.reason is None, rec.reason


def test_features_change_under_a_running_ring_refused(server: tuple[VhostUserServer, str, Devices]) -> None:
    srv, path, _ = server
    with contextlib.ExitStack() as stack:
        mem = stack.enter_context(GuestMemory.single(4 << 20, gpa=0x1_0000_0000))
        fe = VhostUserFrontend.connect(path, mem)
        stack.callback(fe.close)
        fe.start(size=256)
        fe.request(R.SET_FEATURES, m.U64(fe.features | OFFLOADS))
        assert fe.closed_by_peer(5.0)
    rec = srv.sessions[0]
    assert rec.ended.wait(5.0)
    assert rec.reason is not None and "while rings run" in rec.reason, rec.reason
