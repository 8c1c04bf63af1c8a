"""Multiqueue over vhost-user: the frontend negotiates MQ without CTRL_VQ (it runs its own control
queue), the backend owns the device's control queue and turns SET_VRING_ENABLE into
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET; traffic flows on the second pair; the control queue is not the
frontend's to touch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from backend.vhost_user import messages as m
from backend.vhost_user.server import VhostUserServer
from backend.vhost_user.shadow_cvq import SHADOW_IOVA
from backend.virtio.features import NetF
from models.virtio_net.device import VirtioNetDevice
from sim.memory import GuestMemory
from testbenches.frontend.vhost_user import WANTED_FEATURES, FrontendError, VhostUserFrontend
from tests.vhost_user_rig import Devices

SPEC = "sim:virtio-net,queues=2,wire=loopback"
MQ = 1 << NetF.MQ


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Devices, str, GuestMemory]]:
    devices = Devices(SPEC)
    path = str(tmp_path / "vu.sock")
    srv = VhostUserServer(path, devices)
    mem = GuestMemory.single(8 << 20, gpa=0x1_0000_0000)
    yield devices, path, mem
    srv.close()
    mem.close()


def flows(model: VirtioNetDevice, pair: int, n: int) -> list[bytes]:
    """``n`` IPv4/UDP frames the device steers to ``pair`` (asked of the model's own steering)."""
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        f = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
                  / IP(src=f"10.0.{i // 250}.{i % 250 + 1}", dst="10.1.0.1")
                  / UDP(sport=1000 + i, dport=9) / (b"x" * 30))
        if model.rx_pair_for(f) == pair:
            out.append(f)
        i += 1
    return out


def test_two_pairs_through_the_backends_control_queue(rig: tuple[Devices, str, GuestMemory]) -> None:
    devices, path, mem = rig
    fe = VhostUserFrontend.connect(path, mem)
    try:
        fe.start(queues=(0, 1, 2, 3), wanted=WANTED_FEATURES | MQ)
        reply = fe.request(m.FrontendRequest.GET_FEATURES)
        assert reply is not None and isinstance(reply.payload, m.U64)
        assert reply.payload.value & MQ, "MQ not offered for a two-pair device"
        assert not reply.payload.value & (1 << NetF.CTRL_VQ), "the device's control queue was offered"
        model = devices.model()
        assert model.active_pairs == 2, "four enabled rings did not become two queue pairs in the device"
        dev = devices.made[0]
        cvq = dev.get_vq_count() - 1
        assert dev.get_vq_ready(cvq) and dev.get_driver_features() & (1 << NetF.CTRL_VQ)
        for pair in (0, 1):
            sent = flows(model, pair, 20)
            assert fe.exchange(sent, rx=2 * pair, tx=2 * pair + 1, timeout=5.0) == sent
        fe.enable(2, False)  # the frontend's control queue said: one pair
        fe.get_status()  # a round trip: the session has handled the enable
        assert model.active_pairs == 1
        sent = flows(model, 0, 5)
        assert fe.exchange(sent, rx=0, tx=3, timeout=5.0) == sent  # TX on queue 3 still reaches receiveq1
        fe.enable(2, True)
        fe.get_status()
        assert model.active_pairs == 2
        with pytest.raises(FrontendError):  # ring 4 is the device's control queue: not the frontend's
            fe.request(m.FrontendRequest.SET_VRING_NUM, m.VringState(cvq, 64), need_reply=True)
    finally:
        fe.close()


def test_one_pair_frontend_needs_no_control_queue(rig: tuple[Devices, str, GuestMemory]) -> None:
    devices, path, mem = rig
    fe = VhostUserFrontend.connect(path, mem)
    try:
        fe.start(queues=(0, 1))  # MQ not wanted
        dev = devices.made[0]
        assert not dev.get_driver_features() & ((1 << NetF.CTRL_VQ) | MQ)
        assert not dev.get_vq_ready(dev.get_vq_count() - 1)
        sent = flows(devices.model(), 0, 10)
        assert fe.exchange(sent, timeout=5.0) == sent
    finally:
        fe.close()


def test_memory_table_over_the_control_queue_is_refused(rig: tuple[Devices, str, GuestMemory]) -> None:
    _, path, _ = rig
    with GuestMemory.single(8 << 20, gpa=SHADOW_IOVA - (4 << 20)) as high:
        fe = VhostUserFrontend.connect(path, high)
        try:
            with pytest.raises(FrontendError):
                fe.start(queues=(0, 1, 2, 3), wanted=WANTED_FEATURES | MQ)
        finally:
            fe.close()
