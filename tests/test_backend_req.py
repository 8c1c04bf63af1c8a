"""The back-end request channel and requests the device cannot honour, over a real unix socket.

Python frontend -> VhostUserServer -> VirtioPciVdpaDevice -> sim model. The frontend waits on its end of
the SET_BACKEND_REQ_FD channel (bounded), never polling GET_STATUS, for what the device's configuration
interrupt turns into: CONFIG_CHANGE_MSG on a link change of the model's wire and on DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.vhost_user import messages as m
from backend.vhost_user.server import VhostUserServer
from backend.virtio.features import DeviceStatus
from backend.virtio.pci_regs import VIRTIO_NET_S_LINK_UP, NetCfg
from backend.virtio.split_ring import MAX_QUEUE_SIZE
from sim.memory import GuestMemory
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import WANTED_PROTOCOL, FrontendError, VhostUserFrontend
from tests.vhost_user_rig import Devices

MEM_SIZE = 4 << 20
WAIT = 5.0  # bound on waiting for a back-end request
R = m.FrontendRequest


@pytest.fixture
def devices() -> Devices:
    return Devices("sim:virtio-net,wire=loopback")


@pytest.fixture
def path(tmp_path: Path, devices: Devices) -> Iterator[str]:
    sock = str(tmp_path / "vu.sock")
    with VhostUserServer(sock, devices):
        yield sock


def frontend(started: contextlib.ExitStack, path: str) -> VhostUserFrontend:
    mem = started.enter_context(GuestMemory.single(MEM_SIZE, gpa=0x1_0000_0000))
    fe = VhostUserFrontend.connect(path, mem)
    started.callback(fe.close)
    return fe


def link_status(fe: VhostUserFrontend) -> int:
    (status,) = struct.unpack("<H", fe.get_config(NetCfg.STATUS, 2))
    return int(status & VIRTIO_NET_S_LINK_UP)


def test_link_down_and_up_reach_the_frontend(started: contextlib.ExitStack, path: str, devices: Devices) -> None:
    fe = frontend(started, path)
    fe.start(backend_req=True)
    assert fe.exchange([test_frame(0, 64)]) == [test_frame(0, 64)]
    model = devices.model()
    assert fe.recv_backend(0.2) is None  # nothing changed yet: nothing sent
    for up in (False, True):
        model.set_link(up)
        msg = fe.recv_backend(WAIT)
        assert msg is not None, f"no CONFIG_CHANGE_MSG within {WAIT} s of link {'up' if up else 'down'}"
        assert msg.request is m.BackendRequest.CONFIG_CHANGE_MSG and msg.need_reply  # REPLY_ACK was negotiated
        assert link_status(fe) == int(up)
    assert fe.exchange([test_frame(1, 64)]) == [test_frame(1, 64)]  # the session still runs
    assert fe.get_status() & DeviceStatus.DEVICE_NEEDS_RESET == 0


def test_needs_reset_reaches_the_frontend_without_polling(started: contextlib.ExitStack, path: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    fe = frontend(started, path)
    fe.start(backend_req=True)
    tx = fe.rings[1]
    tx.push_head(tx.size + 5)  # SPLIT-DRV-04 broken by the driver: the device must set DEVICE_NEEDS_RESET
    with caplog.at_level(logging.INFO, logger="backend.vhost_user"):
        assert fe.kick(1)
        msg = fe.recv_backend(WAIT)
    assert msg is not None and msg.request is m.BackendRequest.CONFIG_CHANGE_MSG
    assert fe.get_status() & DeviceStatus.DEVICE_NEEDS_RESET
    lines = [r.getMessage() for r in caplog.records if "DEVICE_NEEDS_RESET" in r.getMessage()]
    assert any("device raised DEVICE_NEEDS_RESET" in line for line in lines), lines
    fe.request(R.RESET_DEVICE)  # the way out is a reset; the session goes on
    assert fe.get_status() == 0


def test_without_reply_ack_no_reply_is_asked(started: contextlib.ExitStack, path: str, devices: Devices) -> None:
    fe = frontend(started, path)
    fe.start(backend_req=True, protocol=WANTED_PROTOCOL & ~m.ProtocolFeature.REPLY_ACK.mask)
    assert fe.get_status() & DeviceStatus.DRIVER_OK  # a reply: the session has handled DRIVER_OK
    devices.model().set_link(False)
    msg = fe.recv_backend(WAIT)
    assert msg is not None and msg.request is m.BackendRequest.CONFIG_CHANGE_MSG and not msg.need_reply


def test_frontend_that_never_answers_does_not_hang_the_session(started: contextlib.ExitStack, path: str,
                                                               devices: Devices,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    fe = frontend(started, path)
    fe.start(backend_req=True)
    with caplog.at_level(logging.WARNING, logger="backend.vhost_user"):
        devices.model().set_link(False)
        msg = fe.recv_backend(WAIT, answer=None)  # read, never answered
        assert msg is not None and msg.need_reply
        # The session waits a bounded time for the ack, then answers the frontend again.
        assert fe.get_status() & DeviceStatus.DRIVER_OK
    assert any("no answer to VHOST_USER_BACKEND_CONFIG_CHANGE_MSG" in r.getMessage() for r in caplog.records)


def test_backend_req_fd_must_be_a_unix_stream_socket(started: contextlib.ExitStack, path: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    fe = frontend(started, path)
    fe.negotiate(protocol=WANTED_PROTOCOL | m.ProtocolFeature.BACKEND_REQ.mask)
    efd = os.eventfd(0)
    try:
        with caplog.at_level(logging.WARNING, logger="backend.vhost_user"), pytest.raises(FrontendError):
            fe.request(R.SET_BACKEND_REQ_FD, m.EMPTY, [efd], need_reply=True)
    finally:
        os.close(efd)
    assert any("is not a socket" in r.getMessage() for r in caplog.records), caplog.text
    fe.open_backend_channel()  # a proper one is still taken


def test_backend_req_fd_needs_the_protocol_feature(started: contextlib.ExitStack, path: str) -> None:
    fe = frontend(started, path)
    fe.negotiate()  # without BACKEND_REQ
    with pytest.raises(FrontendError, match="refused"):
        fe.open_backend_channel()


# --- requests the device cannot honour --------------------------------------------------------------


@pytest.mark.parametrize("size", [1024, 4096, MAX_QUEUE_SIZE])
def test_default_device_takes_every_queue_size(started: contextlib.ExitStack, path: str, size: int) -> None:
    mem = started.enter_context(GuestMemory.single(8 << 20, gpa=0x1_0000_0000))
    fe = VhostUserFrontend.connect(path, mem)
    started.callback(fe.close)
    fe.start(size=size)
    frames = [test_frame(i, 64) for i in range(4)]
    assert fe.exchange(frames) == frames


@pytest.mark.parametrize("limit", [256])
def test_queue_size_above_the_maximum_is_refused_with_the_limit(tmp_path: Path, started: contextlib.ExitStack,
                                                                caplog: pytest.LogCaptureFixture, limit: int) -> None:
    sock = str(tmp_path / "small.sock")
    started.enter_context(VhostUserServer(sock, Devices(f"sim:virtio-net,wire=loopback,queue_size_max={limit}")))
    fe = frontend(started, sock)
    fe.negotiate()
    assert fe._acked()
    with caplog.at_level(logging.WARNING, logger="backend.vhost_user"):
        with pytest.raises(FrontendError, match="ack 1"):
            fe.request(R.SET_VRING_NUM, m.VringState(0, 4 * limit), need_reply=True)
        fe.request(R.SET_VRING_NUM, m.VringState(0, limit), need_reply=True)  # the session goes on
    [line] = [r.getMessage() for r in caplog.records]
    assert f"size {4 * limit} exceeds the device's maximum queue size {limit}" in line


def test_queue_size_refused_without_reply_ack_drops_the_session(tmp_path: Path, started: contextlib.ExitStack) -> None:
    sock = str(tmp_path / "small.sock")
    started.enter_context(VhostUserServer(sock, Devices("sim:virtio-net,wire=loopback,queue_size_max=256")))
    fe = frontend(started, sock)
    fe.negotiate(protocol=WANTED_PROTOCOL & ~m.ProtocolFeature.REPLY_ACK.mask)
    fe.request(R.SET_VRING_NUM, m.VringState(0, 1024))
    assert fe.closed_by_peer(WAIT)


def test_feature_the_device_lacks_is_refused_with_its_bits(started: contextlib.ExitStack, path: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    fe = frontend(started, path)
    fe.negotiate()
    offered = fe._u64(R.GET_FEATURES)
    lacking = next(bit for bit in range(24, 64) if not offered >> bit & 1)  # a transport bit the device lacks
    with caplog.at_level(logging.WARNING, logger="backend.vhost_user"), pytest.raises(FrontendError, match="ack 1"):
        fe.request(R.SET_FEATURES, m.U64(fe.features | 1 << lacking), need_reply=True)
    assert any(f"bits {lacking}" in r.getMessage() and "lacks" in r.getMessage() for r in caplog.records), caplog.text
