"""Dirty logging for live migration (issue 14): the log bitmap, the vhost-user protocol through a real
session, and the used-ring relay that logs every page the device writes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from backend.device import VdpaDevice
from backend.drivers.quirks import IFCVF, VDPA_BENCH_RTL, VDPA_BENCH_VQ_STATE_IDS, QuirkTable
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import new_eventfd, wait_eventfd
from backend.pci.abilities import Lacking
from backend.pci.device import DmaPerm
from backend.targets import default_registry
from backend.vhost_user import messages as m
from backend.vhost_user.device_log import DeviceLog, DeviceLogError, device_logging
from backend.vhost_user.dirty_log import LOG_PAGE, DirtyLog, DirtyLogError, atomic_or_available, page_span
from backend.vhost_user.log_shadow import UsedRelay
from backend.vhost_user.memory import MemoryTable
from backend.vhost_user.server import VhostUserServer
from backend.vhost_user.session import VhostUserSession
from backend.virtio.features import DeviceStatus, F
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.split_ring import SplitLayout
from models.targets import loopback_device
from models.virtio_net.dirty_log_block import SPEC as DIRTY_LOG_SPEC
from models.virtio_net.vq_state_block import SPEC as VQ_STATE_SPEC
from sim.memory import GuestMemory
from testbenches.conformance.requirements import VHOST_USER_TABLE, load_requirements
from testbenches.driver.split_ring import DriverSplitQueue
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import WANTED_FEATURES, WANTED_PROTOCOL, FrontendError, VhostUserFrontend
from tests.rtl_build import require_rtl_build
from tests.test_driver_quirks import IfcvfLikeNet
from tests.vhost_user_rig import Devices

#: The backend's vhost-user logging rows (testbenches/conformance/spec/vhost-user-requirements.csv) and the tests
#: here that judge each one; a failure names its ids.
VULOG = load_requirements(table=VHOST_USER_TABLE)
COVERS: dict[str, tuple[str, ...]] = {}
TestFn = TypeVar("TestFn", bound=Callable[..., None])


def covers(*ids: str) -> Callable[[TestFn], TestFn]:
    VULOG.validate(ids)

    def mark(fn: TestFn) -> TestFn:
        COVERS[fn.__name__] = ids
        return fn
    return mark


pytestmark = pytest.mark.skipif(not atomic_or_available(), reason="libatomic.so.1 missing: apt-get install libatomic1")


def new_log(size: int, offset: int = 0, file_size: int | None = None) -> DirtyLog:
    fd = os.memfd_create("test-dirty-log", os.MFD_CLOEXEC)
    os.ftruncate(fd, file_size if file_size is not None else offset + size)
    return DirtyLog(fd, size, offset)


@pytest.fixture
def log() -> Iterator[DirtyLog]:
    d = new_log(64)
    yield d
    d.close()


@covers("VULOG-DEV-03")
def test_one_bit_per_page_little_endian_in_each_byte(log: DirtyLog) -> None:
    assert log.pages == 512 and log.limit == 512 * LOG_PAGE
    log.mark(9 * LOG_PAGE + 5, 1)
    assert log.dirty_pages() == {9}
    assert log.is_dirty(9) and not log.is_dirty(8) and not log.is_dirty(10)
    log.mark(7 * LOG_PAGE + 4095, 2)  # straddles pages 7 and 8 (and bytes 0 and 1)
    assert log.dirty_pages() == {7, 8, 9}
    log.mark(100 * LOG_PAGE, 0)  # nothing written, nothing logged
    assert log.dirty_pages() == {7, 8, 9}


@covers("VULOG-DEV-03")
def test_the_frontend_reads_bits_where_the_spec_puts_them() -> None:
    fd = os.memfd_create("shared-log", os.MFD_CLOEXEC)
    os.ftruncate(fd, 8192)
    frontend = os.dup(fd)
    d = DirtyLog(fd, 16, 4096)  # an offset into the fd, as SET_LOG_BASE may give
    try:
        d.mark(13 * LOG_PAGE, 3 * LOG_PAGE)  # pages 13, 14, 15
        raw = os.pread(frontend, 16, 4096)
        assert raw[1] == 0b1110_0000 and raw.count(0) == 15  # log[page / 8] |= 1 << page % 8
    finally:
        d.close()
        os.close(frontend)


@pytest.mark.parametrize(("gpa", "length"), [(512 * LOG_PAGE, 1), (511 * LOG_PAGE + 4095, 2), (1 << 60, 8)])
@covers("VULOG-DEV-06")
def test_a_write_outside_the_log_is_an_error_not_an_overrun(log: DirtyLog, gpa: int, length: int) -> None:
    with pytest.raises(DirtyLogError, match="outside the dirty log"):
        log.mark(gpa, length)
    assert log.dirty_pages() == set()  # not even the part inside


@pytest.mark.parametrize(("size", "offset", "file_size", "why"), [
    (0, 0, 4096, "not in 1"), (4096, 0, 100, "runs past the end"), (16, 8192, 4096, "runs past the end")])
@covers("VULOG-DEV-02")
def test_bad_log_descriptions_are_refused(size: int, offset: int, file_size: int, why: str) -> None:
    with pytest.raises(DirtyLogError, match=why):
        new_log(size, offset, file_size)


@covers("VULOG-DEV-06")
def test_closed_log_refuses_marks() -> None:
    d = new_log(8)
    d.close()
    with pytest.raises(DirtyLogError, match="after close"):
        d.mark(0, 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 64 * 8 * LOG_PAGE - 1), st.integers(0, 5 * LOG_PAGE)), max_size=20))
@covers("VULOG-DEV-03")
def test_marked_pages_are_exactly_the_pages_written(writes: list[tuple[int, int]]) -> None:
    d = new_log(64)
    try:
        expected: set[int] = set()
        for gpa, length in writes:
            if (gpa + length + LOG_PAGE - 1) // LOG_PAGE > d.pages:
                with pytest.raises(DirtyLogError):
                    d.mark(gpa, length)
                continue
            d.mark(gpa, length)
            expected |= set(page_span(gpa, length))
        assert d.dirty_pages() == expected
    finally:
        d.close()


@covers("VULOG-DEV-05")
def test_concurrent_writers_lose_no_bit() -> None:
    """Two logs on one fd (two backends sharing QEMU's log) set every bit of the same bytes at once."""
    fd = os.memfd_create("shared-log", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    a, b = DirtyLog(fd, 4096), DirtyLog(os.dup(fd), 4096)
    go = threading.Barrier(2)

    def writer(d: DirtyLog, parity: int) -> None:
        go.wait(5.0)
        for page in range(parity, d.pages, 2):  # interleaved: both writers hit every byte
            d.mark(page * LOG_PAGE, 1)

    threads = [threading.Thread(target=writer, args=(d, k)) for k, d in enumerate((a, b))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60.0)
        assert not any(t.is_alive() for t in threads)
        assert a.dirty_pages() == set(range(a.pages))
    finally:
        a.close()
        b.close()


# --- the protocol through a real session ---------------------------------------------------------------

GPA = 0x1_0000_0000
MEM_SIZE = 4 << 20
UVA_OFFSET = 0x7F00_0000_0000
LOG_ALL = 1 << m.VHOST_F_LOG_ALL
LOG_PROTOCOL = WANTED_PROTOCOL | m.ProtocolFeature.LOG_SHMFD.mask | m.ProtocolFeature.RARP.mask
#: Bytes of log for the test memory: one bit per page up to its end.
LOG_SIZE = -(-(GPA + MEM_SIZE) // LOG_PAGE // 8)
R = m.FrontendRequest


class IfcDevices:
    """Sessions get the model variant with the IFC VF live-migration block (tests/test_driver_quirks.py),
    driven through the IFCVF quirk: a device that reports and restores last_avail_idx."""

    def __init__(self) -> None:
        self.made: list[VirtioPciVdpaDevice] = []

    def __call__(self) -> VdpaDevice:
        dev = VirtioPciVdpaDevice(loopback_device(IfcvfLikeNet(), "sim:ifcvf-like"))
        self.made.append(dev)
        return dev


@dataclass
class Rig:
    devices: Devices | IfcDevices
    server: VhostUserServer
    fe: VhostUserFrontend
    mem: GuestMemory
    log_fd: int  # the frontend's copy of the log

    @property
    def session(self) -> VhostUserSession:
        s = self.server.sessions[0].session
        assert s is not None
        return s

    def dirty(self) -> set[int]:
        """Pages set in the log, read from the frontend's side of the memfd."""
        raw = os.pread(self.log_fd, LOG_SIZE, 0)
        return {i * 8 + b for i, v in enumerate(raw) if v for b in range(8) if v >> b & 1}

    def clear(self) -> None:
        os.pwrite(self.log_fd, bytes(LOG_SIZE), 0)


def new_log_fd(size: int = LOG_SIZE) -> int:
    fd = os.memfd_create("frontend-log", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def set_log_base(fe: VhostUserFrontend, fd: int, size: int = LOG_SIZE, offset: int = 0) -> int:
    """SET_LOG_BASE with the log's fd; returns the u64 of the reply the backend always sends."""
    fe.send(m.Message(R.SET_LOG_BASE, m.LogDescription(size, offset), (fd,)))
    reply = fe.recv()
    assert reply.request is R.SET_LOG_BASE and isinstance(reply.payload, m.U64)
    return reply.payload.value


def set_features(fe: VhostUserFrontend, features: int) -> None:
    fe.request(R.SET_FEATURES, m.U64(features), need_reply=True)  # QEMU waits for it when LOG_ALL is set


def start_logged(fe: VhostUserFrontend, log_fd: int, *, logging: bool, size: int = 64) -> None:
    """QEMU's order with LOG_SHMFD: the log, then features with LOG_ALL, rings with VHOST_VRING_F_LOG."""
    offered = fe.negotiate(WANTED_FEATURES | LOG_ALL, protocol=LOG_PROTOCOL)
    assert offered & LOG_ALL and fe.protocol_features == LOG_PROTOCOL
    for q in (0, 1):
        fe.calls[q] = new_eventfd()
        fe.request(R.SET_VRING_CALL, m.VringFile(q), [fe.calls[q]])
    fe.set_mem_table()
    assert set_log_base(fe, log_fd) == 0
    set_features(fe, offered if logging else offered & ~LOG_ALL)
    up = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK
    fe.request(R.SET_STATUS, m.Status(up), need_reply=True)
    for q in (0, 1):
        ring = fe.add_ring(q, size)
        o = fe.uva_offset
        fe.request(R.SET_VRING_ADDR, m.VringAddr(q, int(logging), ring.desc_addr + o, ring.used_addr + o,
                                                 ring.avail_addr + o, ring.used_addr), need_reply=True)
    # The rings' page holds no buffer, so a device that writes a used ring without logging it is seen.
    top = max(r.used_addr + SplitLayout(size).used_bytes for r in fe.rings.values())
    if top % LOG_PAGE:
        assert fe.alloc.alloc(LOG_PAGE - top % LOG_PAGE) <= top + 16, "the allocator left room on the rings' page"
    for q in (0, 1):
        fe.enable(q, True)
    fe.request(R.SET_STATUS, m.Status(up | DeviceStatus.DRIVER_OK), need_reply=True)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    yield from new_rig(tmp_path, Devices("sim:virtio-net,wire=loopback"))


@pytest.fixture
def ifc_rig(tmp_path: Path) -> Iterator[Rig]:
    yield from new_rig(tmp_path, IfcDevices())


def new_rig(tmp_path: Path, devices: Devices | IfcDevices) -> Iterator[Rig]:
    path = str(tmp_path / "vu.sock")
    srv = VhostUserServer(path, devices)
    mem = GuestMemory.single(MEM_SIZE, gpa=GPA)
    fe = VhostUserFrontend.connect(path, mem, uva_offset=UVA_OFFSET)
    log_fd = new_log_fd()
    try:
        yield Rig(devices, srv, fe, mem, log_fd)
    finally:
        fe.close()
        srv.close()
        mem.close()
        os.close(log_fd)


@covers("VULOG-DEV-01")
def test_log_all_log_shmfd_and_rarp_are_offered(rig: Rig) -> None:
    offered = rig.fe.negotiate(WANTED_FEATURES | LOG_ALL, protocol=LOG_PROTOCOL)
    assert offered & LOG_ALL
    assert rig.fe.protocol_features & m.ProtocolFeature.LOG_SHMFD.mask
    assert rig.fe.protocol_features & m.ProtocolFeature.RARP.mask


@covers("VULOG-DEV-02")
def test_set_log_base_is_answered_and_replaced(rig: Rig) -> None:
    fe = rig.fe
    fe.negotiate(WANTED_FEATURES | LOG_ALL, protocol=LOG_PROTOCOL)
    assert set_log_base(fe, rig.log_fd) == 0
    first = rig.session.dirty_log
    assert first is not None and first.limit >= GPA + MEM_SIZE
    bigger = new_log_fd(2 * LOG_SIZE)
    try:
        assert set_log_base(fe, bigger, LOG_SIZE, LOG_SIZE) == 0  # a new log (QEMU resizes it) replaces the old
    finally:
        os.close(bigger)
    second = rig.session.dirty_log
    assert second is not None and second is not first and second.offset == LOG_SIZE
    with pytest.raises(DirtyLogError, match="after close"):
        first.mark(0, 1)  # the old mapping is gone
    fe.request(R.GET_FEATURES)  # the session goes on


@covers("VULOG-DEV-02")
def test_bad_log_base_is_refused_with_its_reply(rig: Rig) -> None:
    fe = rig.fe
    fe.negotiate(WANTED_FEATURES | LOG_ALL, protocol=LOG_PROTOCOL)
    assert set_log_base(fe, rig.log_fd, size=LOG_SIZE + 4096) == 1  # past the end of the fd
    assert rig.session.dirty_log is None
    assert any("runs past the end" in e for e in rig.session.stats.errors), rig.session.stats.errors


@covers("VULOG-DEV-02")
def test_log_base_without_log_shmfd_is_refused(rig: Rig) -> None:
    fe = rig.fe
    fe.negotiate(WANTED_FEATURES | LOG_ALL)  # no LOG_SHMFD
    with pytest.raises(FrontendError, match="refused"):
        fe.request(R.SET_LOG_BASE, m.U64(0x1000), need_reply=True)
    assert any("without LOG_SHMFD" in e for e in rig.session.stats.errors)


def test_log_all_needs_a_log(rig: Rig) -> None:
    fe = rig.fe
    offered = fe.negotiate(WANTED_FEATURES | LOG_ALL, protocol=LOG_PROTOCOL)
    with pytest.raises(FrontendError, match="refused"):
        set_features(fe, offered)
    assert any("before SET_LOG_BASE" in e for e in rig.session.stats.errors)


@covers("VULOG-DEV-10")
def test_send_rarp_is_accepted_and_recorded(rig: Rig) -> None:
    fe = rig.fe
    fe.negotiate(WANTED_FEATURES, protocol=LOG_PROTOCOL)
    mac = bytes.fromhex("525400abcdef")
    fe.request(R.SEND_RARP, m.U64(int.from_bytes(mac + b"\0\0", "little")), need_reply=True)
    assert rig.session.stats.rarp == ["52:54:00:ab:cd:ef"]


@covers("VULOG-DEV-10")
def test_send_rarp_needs_the_rarp_protocol_feature(rig: Rig) -> None:
    rig.fe.negotiate(WANTED_FEATURES)
    with pytest.raises(FrontendError, match="refused"):
        rig.fe.request(R.SEND_RARP, m.U64(1), need_reply=True)


def test_running_ring_takes_the_log_flag_but_no_new_address(rig: Rig) -> None:
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=True)
    ring = fe.rings[0]
    o = fe.uva_offset
    moved_log = ring.used_addr + 0x10_0000  # log_guest_addr need not be the used ring's own address
    fe.request(R.SET_VRING_ADDR, m.VringAddr(0, 1, ring.desc_addr + o, ring.used_addr + o, ring.avail_addr + o,
                                             moved_log), need_reply=True)
    assert rig.session.rings[0].log_used and rig.session.rings[0].log_addr == moved_log
    with pytest.raises(FrontendError, match="refused"):
        fe.request(R.SET_VRING_ADDR, m.VringAddr(0, 1, ring.desc_addr + o + 4096, ring.used_addr + o,
                                                 ring.avail_addr + o, ring.used_addr), need_reply=True)
    traffic(fe, 20)
    assert moved_log // LOG_PAGE in rig.dirty()  # the used ring's writes are logged at log_guest_addr


def test_log_flag_needs_log_all(rig: Rig) -> None:
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=False)
    ring = fe.rings[0]
    o = fe.uva_offset
    with pytest.raises(FrontendError, match="refused"):
        fe.request(R.SET_VRING_ADDR, m.VringAddr(0, 1, ring.desc_addr + o, ring.used_addr + o, ring.avail_addr + o,
                                                 ring.used_addr), need_reply=True)
    assert any("VHOST_F_LOG_ALL is off" in e for e in rig.session.stats.errors)


def test_log_all_on_a_running_ring_is_refused_where_the_state_cannot_move(rig: Rig) -> None:
    """virtio-pci cannot restart a queue at a given last_avail_idx: the toggle is refused, traffic goes on."""
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=False)
    traffic(fe, 10)
    with pytest.raises(FrontendError, match="refused"):
        set_features(fe, fe.features | LOG_ALL)
    assert any("cannot change paths" in e for e in rig.session.stats.errors), rig.session.stats.errors
    assert not rig.session.logging_on
    traffic(fe, 10, start=10)
    assert not rig.dirty()


def traffic(fe: VhostUserFrontend, n: int, start: int = 0) -> None:
    sent = [test_frame(i, 60 + i % 200) for i in range(start, start + n)]
    assert fe.exchange(sent, timeout=10.0) == sent


@covers("VULOG-DEV-03", "VULOG-DEV-04", "VULOG-DEV-07")
def test_logged_traffic_marks_buffers_and_used_rings(rig: Rig) -> None:
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=True)
    assert rig.session.relayed_rings == {0, 1}
    traffic(fe, 30)
    rx_used = fe.rings[0].used_addr // LOG_PAGE
    assert rx_used in rig.dirty() and fe.rings[1].used_addr // LOG_PAGE in rig.dirty()
    bases = fe.stop()
    assert bases == {0: 30, 1: 30}
    assert not rig.session.relayed_rings
    assert not rig.session.stats.errors, rig.session.stats.errors


@covers("VULOG-DEV-09")
def test_log_fd_is_signalled_after_the_log_was_written(rig: Rig) -> None:
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=True)
    event = new_eventfd()
    try:
        fe.request(R.SET_LOG_FD, m.EMPTY, [event], need_reply=True)
        traffic(fe, 4)
        assert wait_eventfd(event, 5.0), "SET_LOG_FD's eventfd not signalled after logged traffic"
    finally:
        os.close(event)


def test_log_fd_needs_log_shmfd(rig: Rig) -> None:
    rig.fe.negotiate(WANTED_FEATURES)
    event = new_eventfd()
    try:
        with pytest.raises(FrontendError, match="refused"):
            rig.fe.request(R.SET_LOG_FD, m.EMPTY, [event], need_reply=True)
    finally:
        os.close(event)


def test_entries_whose_interrupt_was_suppressed_still_reach_the_frontend(rig: Rig) -> None:
    """A NAPI-style driver: RX interrupts off while it works, on again, then it waits for the interrupt. The
    device used the RX buffers without an interrupt, so only the relay's timer can publish them."""
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=True)
    rxq, txq = fe.rings[0], fe.rings[1]
    rxq.set_no_interrupt(True)
    frames = [test_frame(i, 100 + i) for i in range(8)]
    for _ in frames:
        rxq.add([], [2048])
    fe.kick(0)
    for f in frames:
        txq.add([NetHdr().pack() + f], [])
    fe.kick(1)
    while txq.in_flight:
        txq.used()
        if txq.in_flight:
            assert wait_eventfd(fe.calls[1], 10.0), "TX buffers not completed"
    rxq.set_no_interrupt(False)
    got = [u.data[HDR_SIZE:] for u in rxq.used()]
    while len(got) < len(frames):
        assert wait_eventfd(fe.calls[0], 5.0), f"{len(got)} of {len(frames)} frames published: the relay held them"
        got += [u.data[HDR_SIZE:] for u in rxq.used()]
    assert got == frames
    assert fe.rings[0].used_addr // LOG_PAGE in rig.dirty()


# --- the property: every page the device wrote is in the log ----------------------------------------------

#: One RX buffer per frame: the frame, then how its writable space is cut and whether it is indirect.
WORKLOAD = st.lists(st.tuples(st.integers(60, 1514), st.lists(st.integers(16, 1600), min_size=1, max_size=4),
                              st.booleans()), min_size=1, max_size=12)


class Watch:
    """The device's writes into the frontend's memory, from the target's DMA observer (the sim IOMMU's
    observers; on the RTL its bridge reports each AXI write burst there too)."""

    def __init__(self, rig: Rig) -> None:
        observer = rig.devices.made[0].pci.abilities().dma_observer
        if isinstance(observer, Lacking):
            pytest.fail(f"the property needs the device's DMA writes: {observer.why}")
        self.observer = observer
        self.pages: set[int] = set()
        self.ever: set[int] = set()  # every page written while watched (a device's log may fold one late)
        observer.add_observer(self.seen)

    def seen(self, access: DmaPerm, iova: int, size: int) -> None:
        if access & DmaPerm.WRITE and GPA <= iova < GPA + MEM_SIZE:
            span = set(page_span(iova, size))
            self.pages |= span
            self.ever |= span

    def close(self) -> None:
        self.observer.remove_observer(self.seen)


def run_workload(rig: Rig, workload: list[tuple[int, list[int], bool]], seq: int) -> None:
    """Each frame goes out on TX and comes back into an RX buffer cut as the workload says."""
    fe = rig.fe
    rxq, txq = fe.rings[0], fe.rings[1]
    frames = []
    indirect_ok = bool(fe.features >> F.INDIRECT_DESC & 1)  # the RTL does not offer it: direct chains there
    for k, (length, cuts, indirect) in enumerate(workload):
        frame = test_frame(seq + k, length)
        frames.append(frame)
        room = sum(cuts)
        lens = cuts if room >= length + HDR_SIZE else [*cuts[:-1], cuts[-1] + length + HDR_SIZE - room]
        rxq.add([], lens, indirect=indirect and indirect_ok)
    fe.kick(0)
    for frame in frames:
        txq.add([NetHdr().pack() + frame], [])
    fe.kick(1)
    got: list[bytes] = []
    while len(got) < len(frames):
        got += [u.data[HDR_SIZE:] for u in rxq.used()]
        if len(got) < len(frames):
            assert wait_eventfd(fe.calls[0], 10.0), f"{len(got)} of {len(frames)} frames came back"
    while txq.in_flight:
        txq.used()
        if txq.in_flight:
            assert wait_eventfd(fe.calls[1], 10.0), "TX buffers not completed"
    assert got == frames


def unlogged(rig: Rig, watch: Watch) -> tuple[set[int], set[int]]:
    """(pages the device wrote that the log lacks, logged pages the device never wrote that are not a used ring)."""
    dirty = rig.dirty()
    # A page the device wrote again after the last fold of an earlier workload reaches the log only now: written
    # while logging, so logged rightly, though not by this workload.
    return watch.pages - dirty, dirty - watch.ever - used_ring_pages(rig)


def used_ring_pages(rig: Rig) -> set[int]:
    return {p for ring in rig.fe.rings.values() if isinstance(ring, DriverSplitQueue)
            for p in page_span(ring.used_addr, ring.layout.used_bytes)}


#: The behavioral model with the RTL's vendor blocks: it logs its own writes (models/virtio_net/dirty_log_block.py).
SIM_DEVICE_LOG = f"{DIRTY_LOG_SPEC},wire=loopback"
#: Its seeded bug (tests/broken_dirty_log.py).
UNLOGGED_USED = "tests.broken_dirty_log:UsedRingNotLogged"


@pytest.fixture(params=["sim:virtio-net,wire=loopback", SIM_DEVICE_LOG, "rtl:virtio-net,wire=loopback"],
                ids=["sim-relay", "sim-device-log", "rtl-device-log"])
def any_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """A session on the behavioral model, whose writes the backend's used-ring relay logs, or on a device that
    logs its own writes through its vendor block (the model's variant with the RTL's blocks, the RTL)."""
    if request.param.startswith("rtl:"):
        require_rtl_build("virtio-net")
    yield from new_rig(tmp_path, Devices(request.param))


def device_logs(rig: Rig) -> bool:
    return rig.session.device_logging


def settle(rig: Rig, watch: Watch, event: int, timeout: float = 5.0) -> None:
    """Where the device logs its writes, the backend folds its bytemap into the log on a timer: wait (bounded,
    on SET_LOG_FD's eventfd, which each fold that found pages signals) until every page written is there."""
    if not device_logs(rig):
        return
    deadline = time.monotonic() + timeout
    while watch.pages - rig.dirty():
        left = deadline - time.monotonic()
        if left <= 0 or not wait_eventfd(event, left):
            return  # the property names what is missing


def check_dirty_log_property(rig: Rig, examples: int, *, shrink: bool = True) -> None:
    """Random workloads while logging is on: every page the device wrote has its bit set, and no other page
    (but the used rings'). Raises AssertionError naming VHOST_F_LOG_ALL on the smallest failing workload (on the
    first one found, without ``shrink``)."""
    phases = tuple(Phase) if shrink else (Phase.explicit, Phase.reuse, Phase.generate)
    start_logged(rig.fe, rig.log_fd, logging=True)
    event = new_eventfd()
    rig.fe.request(R.SET_LOG_FD, m.EMPTY, [event], need_reply=True)
    watch = Watch(rig)
    seq = 0

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=phases)
    @given(WORKLOAD)
    def workload(w: list[tuple[int, list[int], bool]]) -> None:
        nonlocal seq
        rig.clear()
        watch.pages.clear()
        run_workload(rig, w, seq)
        seq += len(w)
        settle(rig, watch, event)
        missing, extra = unlogged(rig, watch)
        if missing:
            used = used_ring_pages(rig)
            ids = [i for i, pages in (("VULOG-DEV-03", missing - used), ("VULOG-DEV-04", missing & used)) if pages]
            raise AssertionError(f"{', '.join(ids)}: pages written by the device but not logged: "
                                 f"{sorted(missing)[:8]}")
        assert not extra, f"VULOG-DEV-03: pages logged that the device did not write: {sorted(extra)[:8]}"
        assert watch.pages, "the workload wrote nothing"

    try:
        workload()
    finally:
        watch.close()
        os.close(event)


@covers("VULOG-DEV-03", "VULOG-DEV-04")
def test_random_traffic_while_logging_logs_every_page_the_device_wrote(any_rig: Rig) -> None:
    """The dirty-log property (VHOST_F_LOG_ALL, SET_LOG_BASE: every page the device writes while logging is on
    has its bit set, and no other page) over 200 random workloads, on the model and on the RTL."""
    check_dirty_log_property(any_rig, 200)
    assert not any_rig.session.stats.errors, any_rig.session.stats.errors


def test_random_traffic_on_a_device_logging_itself_relays_nothing(tmp_path: Path) -> None:
    """A device whose quirk names a dirty page log keeps its rings on the direct path while logging: the backend
    maps a bytemap and folds it, relays nothing, and the property holds (a few workloads; the full run is above)."""
    rigs = new_rig(tmp_path, Devices(SIM_DEVICE_LOG))
    rig = next(rigs)
    try:
        check_dirty_log_property(rig, 10)
        assert rig.session.device_logging and not rig.session.relayed_rings
        assert rig.devices.made[0].logs_dma_writes()
        assert rig.fe.stop() and not rig.session.stats.errors, rig.session.stats.errors
    finally:
        rigs.close()


@pytest.fixture(params=[f"sim:virtio-net,wire=loopback,model={UNLOGGED_USED}",
                        "rtl:virtio-net,wire=loopback,define=VNET_BUG_LOG_SKIP_USED"],
                ids=["sim-device-log", "rtl-device-log"])
def unlogged_used_rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """A device whose own log skips its used-ring writes (the model's and the RTL's seeded bug)."""
    if request.param.startswith("rtl:"):
        require_rtl_build(request.param.replace(",wire=loopback", ""))
    yield from new_rig(tmp_path, Devices(request.param))


@covers("VULOG-DEV-04")
def test_the_property_catches_a_device_that_does_not_log_its_used_ring(unlogged_used_rig: Rig) -> None:
    """Seeded bug: the device's log misses the pages of its used-ring writes; the property finds them."""
    with pytest.raises(AssertionError, match=r"^VULOG-DEV-04: pages written by the device but not logged"):
        check_dirty_log_property(unlogged_used_rig, 200, shrink=False)


@covers("VULOG-DEV-03")
def test_the_property_catches_a_relay_that_skips_a_buffer(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seeded bug: the relay logs only the first writable descriptor of each chain, so a frame whose receive
    chain has pieces on other pages leaves pages written but not logged; the property finds it."""
    real = UsedRelay._log_chain

    class FirstOnly:
        def __init__(self, log: DirtyLog) -> None:
            self.log, self.marks = log, 0

        def mark(self, gpa: int, length: int) -> None:
            self.marks += 1
            if self.marks == 1:
                self.log.mark(gpa, length)

    def log_chain(self: UsedRelay, table: MemoryTable, log: DirtyLog, head: int, written: int) -> None:
        real(self, table, FirstOnly(log), head, written)  # type: ignore[arg-type]

    monkeypatch.setattr(UsedRelay, "_log_chain", log_chain)
    # Finding the bug is the point; shrinking the workload on the RTL took 90 s of CI for nothing.
    with pytest.raises(AssertionError, match=r"^VULOG-DEV-03: pages written by the device but not logged"):
        check_dirty_log_property(rig, 200, shrink=False)


def set_log_flag(fe: VhostUserFrontend, on: bool) -> None:
    """QEMU's vhost_dev_set_log: every ring's addresses again, with or without VHOST_VRING_F_LOG."""
    o = fe.uva_offset
    for q, ring in fe.rings.items():
        fe.request(R.SET_VRING_ADDR, m.VringAddr(q, int(on), ring.desc_addr + o, ring.used_addr + o,
                                                 ring.avail_addr + o, ring.used_addr), need_reply=True)


def test_log_all_toggled_on_running_rings_of_a_device_with_ring_state(ifc_rig: Rig) -> None:
    """QEMU's migration: LOG_ALL on while traffic runs, the rings move to the relay at their ring state, every
    page written is logged; LOG_ALL off, they go back to the direct path and nothing more is logged."""
    rig = ifc_rig
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=False)
    assert rig.devices.made[0].quirk is IFCVF
    traffic(fe, 20)
    assert not rig.session.relayed_rings and not rig.dirty()

    set_features(fe, fe.features | LOG_ALL)
    set_log_flag(fe, True)
    assert rig.session.logging_on and rig.session.relayed_rings == {0, 1}
    watch = Watch(rig)
    try:
        run_workload(rig, [(1400, [200, 1300], False), (900, [1000], True), (64, [16, 16, 64], False)], 20)
        missing, extra = unlogged(rig, watch)
    finally:
        watch.close()
    assert watch.pages and not missing and not extra, (sorted(missing), sorted(extra))

    set_features(fe, fe.features & ~LOG_ALL)
    set_log_flag(fe, False)
    assert not rig.session.logging_on and not rig.session.relayed_rings
    rig.clear()
    traffic(fe, 20, start=23)
    assert not rig.dirty(), "pages logged on the direct path"
    assert fe.stop() == {0: 43, 1: 43}  # no buffer lost or repeated across the two moves
    assert not rig.session.stats.errors, rig.session.stats.errors


# --- a device that logs its own writes: no relay, no ring moved, the last fold before the answer ----------------

@pytest.fixture
def logging_device_rig(tmp_path: Path) -> Iterator[Rig]:
    yield from new_rig(tmp_path, Devices(SIM_DEVICE_LOG))


@covers("VULOG-DEV-07")
def test_device_log_on_running_rings_is_complete_when_get_vring_base_answers(logging_device_rig: Rig) -> None:
    """QEMU's migration on a device with a dirty page log: LOG_ALL on while traffic runs moves no ring (the
    device logs into a bytemap the backend maps); at GET_VRING_BASE every page the device wrote is already in
    the log, with no wait (the last fold comes before the answer); the ring state is exact."""
    rig = logging_device_rig
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=False)
    traffic(fe, 20)
    assert not rig.dirty()
    set_features(fe, fe.features | LOG_ALL)
    set_log_flag(fe, True)
    assert rig.session.device_logging and not rig.session.relayed_rings
    model = rig.devices.model()
    assert model.log_enabled and model.log_pages == LOG_SIZE * 8
    watch = Watch(rig)
    try:
        run_workload(rig, [(1400, [200, 1300], False), (900, [1000], True), (64, [16, 16, 64], False)], 20)
        assert fe.stop() == {0: 23, 1: 23}
        missing, extra = unlogged(rig, watch)
    finally:
        watch.close()
    assert watch.pages and not missing and not extra, (sorted(missing), sorted(extra))
    assert not rig.session.stats.errors, rig.session.stats.errors


def test_device_log_off_folds_and_stops_logging(logging_device_rig: Rig) -> None:
    """LOG_ALL off: what the device logged is in the log when SET_FEATURES is answered, the device stops
    logging, the bytemap is unmapped, and later traffic marks nothing."""
    rig = logging_device_rig
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=True)
    model = rig.devices.model()
    iommu = model.endpoint.iommu
    assert rig.session.device_logging and len(iommu.mappings()) == 2  # guest memory and the bytemap
    watch = Watch(rig)
    try:
        run_workload(rig, [(600, [700], False), (1500, [800, 800], False)], 0)
        set_features(fe, fe.features & ~LOG_ALL)
        missing, _ = unlogged(rig, watch)
    finally:
        watch.close()
    assert not missing, sorted(missing)
    assert not rig.session.device_logging and not model.log_enabled and not iommu.write_hooks
    assert len(iommu.mappings()) == 1
    rig.clear()
    traffic(fe, 10, start=2)
    assert not rig.dirty(), "pages logged after LOG_ALL went off"
    assert fe.stop() == {0: 12, 1: 12}


@covers("VULOG-DEV-03")
def test_packed_rings_are_logged_by_a_device_that_logs_itself(logging_device_rig: Rig) -> None:
    """Packed rings and LOG_ALL, refused where the backend would have to relay (its relay is split only), run
    on a device that logs its own writes: buffers and the descriptor ring's used entries are in the log."""
    rig = logging_device_rig
    fe = rig.fe
    fe.start(size=64, wanted=WANTED_FEATURES, protocol=LOG_PROTOCOL, packed=True)
    assert set_log_base(fe, rig.log_fd) == 0
    set_features(fe, fe.features | LOG_ALL)
    assert rig.session.device_logging
    watch = Watch(rig)
    try:
        traffic(fe, 40)
        fe.stop()
        missing = watch.pages - rig.dirty()
    finally:
        watch.close()
    assert watch.pages and not missing, sorted(missing)
    assert {p for q in (0, 1) for p in page_span(fe.rings[q].desc_addr, 16 * 64)} <= rig.dirty()
    assert not rig.session.stats.errors, rig.session.stats.errors


def test_packed_rings_with_log_all_are_refused_where_the_backend_would_relay(rig: Rig) -> None:
    fe = rig.fe
    fe.start(size=64, wanted=WANTED_FEATURES, protocol=LOG_PROTOCOL, packed=True)
    assert set_log_base(fe, rig.log_fd) == 0
    with pytest.raises(FrontendError, match="refused"):
        set_features(fe, fe.features | LOG_ALL)


def test_a_device_whose_log_does_not_start_is_refused_and_keeps_nothing() -> None:
    """A quirk record that names a dirty log block the device lacks: ENABLE does not read back, the backend says
    so, and the bytemap it mapped is unmapped and freed."""
    pci = default_registry().open(f"{VQ_STATE_SPEC},wire=loopback")
    dev = VirtioPciVdpaDevice(pci, quirks=QuirkTable(((VDPA_BENCH_VQ_STATE_IDS, VDPA_BENCH_RTL),)))
    try:
        assert device_logging(dev) is dev
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(DeviceLogError, match="ENABLE did not stick"):
            DeviceLog(dev, 64)
        assert pci.endpoint.iommu.mappings() == [] and len(os.listdir("/proc/self/fd")) == fds
    finally:
        dev.close()


@covers("VULOG-DEV-08")
def test_a_new_log_base_takes_over_from_the_device_log(logging_device_rig: Rig) -> None:
    """QEMU resizes its log by sending SET_LOG_BASE again while logging: what the device wrote before is folded
    into the old log before it is unmapped, what it writes after lands in the new one."""
    rig = logging_device_rig
    fe = rig.fe
    start_logged(fe, rig.log_fd, logging=True)
    watch = Watch(rig)
    second = new_log_fd()
    try:
        run_workload(rig, [(1000, [1100], False)], 0)
        before = set(watch.pages)
        assert set_log_base(fe, second) == 0
        assert before <= rig.dirty(), sorted(before - rig.dirty())  # the old log, complete at the switch
        watch.pages.clear()
        run_workload(rig, [(1400, [700, 800], False)], 1)
        fe.stop()
        raw = os.pread(second, LOG_SIZE, 0)
        in_second = {i * 8 + b for i, v in enumerate(raw) if v for b in range(8) if v >> b & 1}
        assert watch.pages and watch.pages <= in_second, sorted(watch.pages - in_second)
    finally:
        watch.close()
        os.close(second)
    assert not rig.session.stats.errors, rig.session.stats.errors


def test_every_vhost_user_logging_row_is_judged() -> None:
    """Each row of the backend's vhost-user logging table is judged by at least one test here, by name."""
    judged = {rid for ids in COVERS.values() for rid in ids}
    assert set(VULOG) == judged, f"rows no test judges: {sorted(set(VULOG) - judged)}"
    assert all(name in globals() for name in COVERS)
