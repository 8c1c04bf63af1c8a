"""End to end over a real unix socket: Python frontend -> VhostUserServer -> VirtioPciVdpaDevice -> sim."""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.vhost_user import messages as m
from backend.vhost_user.server import VhostUserServer
from sim.memory import GuestMemory
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import FrontendError, VhostUserFrontend
from tests.vhost_user_rig import Devices

SPEC = "sim:virtio-net,wire=loopback"
MEM_SIZE = 4 << 20
UVA_OFFSET = 0x7F00_0000_0000  # frontend virtual = guest-physical + this


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[VhostUserServer, str]]:
    path = str(tmp_path / "vu.sock")
    srv = VhostUserServer(path, Devices())
    yield srv, path
    srv.close()


def new_mem(started: contextlib.ExitStack, gpa: int = 0x1_0000_0000) -> GuestMemory:
    """Guest memory closed at the end of the test."""
    return started.enter_context(GuestMemory.single(MEM_SIZE, gpa=gpa))


def running(path: str, mem: GuestMemory, uva_offset: int = 0) -> VhostUserFrontend:
    fe = VhostUserFrontend.connect(path, mem, uva_offset=uva_offset)
    fe.start(size=256)
    return fe


def traffic(fe: VhostUserFrontend, n: int, start: int = 0, batch: int = 50) -> None:
    for first in range(start, start + n, batch):
        sent = [test_frame(i, 60 + i % 200) for i in range(first, min(first + batch, start + n))]
        got = fe.exchange(sent, timeout=5.0)
        assert got == sent, f"frames {first}..: sent {len(sent)}, got {len(got)} back"


def test_two_hundred_frames_with_translation(server: tuple[VhostUserServer, str],
                                             started: contextlib.ExitStack) -> None:
    srv, path = server
    fe = running(path, new_mem(started), UVA_OFFSET)
    try:
        assert fe.features & (1 << m.VHOST_USER_F_PROTOCOL_FEATURES)
        assert fe.protocol_features == (m.ProtocolFeature.MQ.mask | m.ProtocolFeature.REPLY_ACK.mask
                                        | m.ProtocolFeature.STATUS.mask)
        assert fe.get_status() & 0x4, "DRIVER_OK not set on the device"
        traffic(fe, 200)
        bases = fe.stop()
        assert bases[1] == 200, f"TX ring base {bases[1]}, expected 200 (frames sent)"
    finally:
        fe.close()
    rec = srv.sessions[0]
    assert rec.ended.wait(5.0)
    assert rec.reason is None


def test_advertised_features_hide_what_backend_cannot_do(server: tuple[VhostUserServer, str],
                                                         started: contextlib.ExitStack) -> None:
    _, path = server
    fe = VhostUserFrontend.connect(path, new_mem(started))
    try:
        offered = fe.negotiate(wanted=(1 << 64) - 1)
        for bit in (33, 40, 43):  # ACCESS_PLATFORM, RING_RESET, SUSPEND (RING_PACKED: tests/test_vhost_user_packed.py)
            assert not offered >> bit & 1, f"feature bit {bit} offered in {offered:#x}"
        assert offered >> m.VHOST_F_LOG_ALL & 1  # dirty logging (tests/test_dirty_log.py)
        proto = fe._u64(m.FrontendRequest.GET_PROTOCOL_FEATURES)
        assert proto & m.ProtocolFeature.BACKEND_REQ.mask  # config changes reach the frontend on it
        assert proto & m.ProtocolFeature.LOG_SHMFD.mask
        for bit in (m.ProtocolFeature.HOST_NOTIFIER, m.ProtocolFeature.INFLIGHT_SHMFD):
            assert not proto & bit.mask, f"{bit.name} offered in {proto:#x}"
        assert fe._u64(m.FrontendRequest.GET_QUEUE_NUM) == 1
    finally:
        fe.close()


def test_two_sessions_on_two_devices(server: tuple[VhostUserServer, str], started: contextlib.ExitStack) -> None:
    srv, path = server
    a = running(path, new_mem(started))
    b = running(path, new_mem(started, gpa=0x2_0000_0000), UVA_OFFSET)
    try:
        for k in range(4):
            traffic(a, 25, start=k * 25, batch=25)
            traffic(b, 25, start=1000 + k * 25, batch=25)
    finally:
        a.close()
        b.close()
    assert len(srv.sessions) == 2
    devices = srv.factory.made  # type: ignore[attr-defined]
    assert len(devices) == 2 and devices[0] is not devices[1]


@pytest.mark.parametrize("bad", ["bad_size", "unknown_request", "before_owner"])
def test_malformed_message_drops_only_that_session(bad: str, server: tuple[VhostUserServer, str],
                                                   started: contextlib.ExitStack,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    srv, path = server
    good = running(path, new_mem(started))
    victim = VhostUserFrontend.connect(path, new_mem(started, gpa=0x2_0000_0000))
    try:
        traffic(good, 20)
        with caplog.at_level(logging.WARNING):
            if bad == "bad_size":
                victim.request(m.FrontendRequest.SET_OWNER)
                # SET_VRING_NUM carries 8 bytes; this header claims 5
                victim.send_raw(struct.pack("<III", int(m.FrontendRequest.SET_VRING_NUM), 1, 5) + b"\0" * 5)
                expect = "payload size 5"
            elif bad == "unknown_request":
                victim.request(m.FrontendRequest.SET_OWNER)
                victim.send_raw(struct.pack("<III", 999, 1, 0))
                expect = "unknown front-end request number 999"
            else:
                victim.request(m.FrontendRequest.SET_VRING_NUM, m.VringState(0, 256))
                expect = "SET_VRING_NUM before SET_OWNER"
            assert victim.closed_by_peer(5.0), "backend kept a session that broke the protocol"
            rec = next(r for r in srv.sessions if r.id == 2)
            assert rec.ended.wait(5.0)
        assert rec.reason is not None and expect in rec.reason, rec.reason
        assert any(expect in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        traffic(good, 40, start=100)  # the other session keeps passing traffic
    finally:
        good.close()
        victim.close()


def test_message_before_owner_with_need_reply_gets_failure(server: tuple[VhostUserServer, str],
                                                           started: contextlib.ExitStack) -> None:
    _, path = server
    fe = VhostUserFrontend.connect(path, new_mem(started))
    try:
        with pytest.raises(FrontendError, match="refused"):
            fe.request(m.FrontendRequest.SET_VRING_NUM, m.VringState(0, 256), need_reply=True)
        fe.start()  # the session is still usable
        traffic(fe, 10)
    finally:
        fe.close()


def test_ring_address_outside_memory_table_rejected(server: tuple[VhostUserServer, str],
                                                    started: contextlib.ExitStack) -> None:
    srv, path = server
    mem = new_mem(started)
    fe = VhostUserFrontend.connect(path, mem, uva_offset=UVA_OFFSET)
    try:
        fe.negotiate()
        fe.request(m.FrontendRequest.SET_FEATURES, m.U64(fe.features))
        fe.set_mem_table()
        fe.request(m.FrontendRequest.SET_VRING_NUM, m.VringState(0, 256))
        end = mem.regions[0].end
        with pytest.raises(FrontendError, match="refused"):
            fe.set_ring_addr(0, end - 0x1000, end - 0x800, end, need_reply=True)  # desc table runs past the end
        with pytest.raises(FrontendError, match="refused"):  # a gpa given as uva is not in the table
            fe.request(m.FrontendRequest.SET_VRING_ADDR, m.VringAddr(0, 0, mem.regions[0].gpa, 0, 0, 0),
                       need_reply=True)
        session = srv.sessions[0].session
        assert session is not None and session.rings[0].desc is None
        assert any("outside the memory table" in e for e in session.stats.errors), session.stats.errors
    finally:
        fe.close()


def test_second_mem_table_at_run_time(server: tuple[VhostUserServer, str], started: contextlib.ExitStack) -> None:
    srv, path = server
    mem = new_mem(started)
    fe = running(path, mem, UVA_OFFSET)
    try:
        traffic(fe, 50)
        mem.add_region(0x1_8000_0000, MEM_SIZE, "hotplug")  # virtio_user's heap grew: a second region
        fe.remap()
        traffic(fe, 50, start=50)
        fe.remap()  # the same table again: nothing to remap
        traffic(fe, 50, start=100)
    finally:
        fe.close()
    rec = srv.sessions[0]
    assert rec.ended.wait(5.0) and rec.reason is None
    assert rec.session is not None and rec.session.stats.mem_tables == 3
    devices = srv.factory.made  # type: ignore[attr-defined]
    pci = devices[0].pci
    faults = pci.dma_faults() if hasattr(pci, "dma_faults") else []
    assert not faults, faults
