"""vfio-user: the wire format, the server under hostile clients, and a simulated device in its own process
driven through the socket by the unchanged PciDevice users (guest driver, vendor driver, ``serve``, and the
conformance suite, which must pass the same requirement ids as on the in-process ``sim:`` target)."""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.drivers.transport import VirtioPciModern
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import new_eventfd
from backend.fd_channel import FdChannel
from backend.pci import vfio_user_msg as m
from backend.pci.device import DmaPerm, IrqIndex, PciError, RegionFlags, RegionIndex, config_read
from backend.pci.vfio_user import VfioUserError, VfioUserPciDevice
from backend.targets import default_registry
from backend.virtio.features import DeviceStatus, F, NetF
from backend.virtio.split_ring import Descriptor
from models.targets import open_virtio_net
from models.virtio_net.rss import RSS_FEATURES
from models.virtio_net.rx_filter import RX_FILTER_FEATURES
from sim.memory import GuestMemory
from sim.vfio_user import VfioUserServer
from testbenches.driver.vdpa_frontend import VdpaFrontend
from testbenches.driver.virtio_net import GuestNetDriver
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.serve import DeviceProcess, ServeProcess
from tests.suite_runner import ids_with, run_suite

MODEL = "virtio-net,mac=02:00:00:00:00:0b,wire=loopback"
MAC = b"\x02\x00\x00\x00\x00\x0b"
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0
WAIT = 5.0
MEM = 4 << 20  # the shared ``mem`` fixture's size and address (tests/conftest.py)
GPA = 0x1_0000_0000
VIRTIO_VENDOR = 0x1AF4
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, (1 << 64) - 1)


def frame(i: int, size: int = 96) -> bytes:
    """A test frame to the model's MAC address."""
    return test_frame(i, size, dst=MAC)


# --- the device process -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DeviceProcess]]:
    """One device process for the module: ``(socket path, process)``."""
    tmp = tmp_path_factory.mktemp("vfio-user")
    path = str(tmp / "dev.sock")
    with DeviceProcess(path, MODEL, log=tmp / "device.log") as child:
        assert child.wait_listening(READY_TIMEOUT) == f"listening on {path}"
        yield path, child


# --- codec --------------------------------------------------------------------------------------

headers = st.one_of(
    st.builds(m.Header, U16, U16, st.integers(m.HEADER_SIZE, 1 << 20), st.just(m.MsgType.COMMAND), st.booleans()),
    st.builds(m.Header, U16, U16, st.integers(m.HEADER_SIZE, 1 << 20), st.just(m.MsgType.REPLY), st.just(False),
              st.just(False)),
    st.builds(m.Header, U16, U16, st.just(m.HEADER_SIZE), st.just(m.MsgType.REPLY), st.just(False), st.just(True),
              U32),
)


@given(headers)
def test_header_round_trip(hdr: m.Header) -> None:
    assert m.Header.unpack(hdr.pack(), max_size=1 << 20) == hdr


caps = st.builds(m.Capabilities, st.integers(0, m.SCM_MAX_FD), st.integers(1, 1 << 31), st.integers(1, 1 << 31),
                 st.integers(1, (1 << 64) - 1),
                 st.none() | st.builds(m.BenchCaps, st.booleans(), st.booleans(), st.booleans()))
widths = st.sampled_from([1, 2, 4, 8])
faults = st.builds(m.FaultRecord, U64, U64, st.sampled_from([1, 2]), st.text(max_size=40))
region_caps = st.lists(st.one_of(
    st.builds(m.SparseMmapCap, st.lists(st.tuples(U64, U64), max_size=4).map(tuple)),
    st.builds(m.TypeCap, U32, U32)), max_size=3).map(tuple)


@st.composite
def ioeventfds(draw: st.DrawFn) -> m.BenchIoeventfd:
    width = draw(widths)
    return m.BenchIoeventfd(m.IoeventfdFlag(draw(st.integers(0, 3))), draw(U32), width, draw(U64),
                            draw(st.integers(0, (1 << (8 * width)) - 1)), draw(U64))


@st.composite
def irq_sets(draw: st.DrawFn) -> m.IrqSet:
    kind = draw(st.sampled_from([m.IrqSetFlag.DATA_NONE, m.IrqSetFlag.DATA_BOOL, m.IrqSetFlag.DATA_EVENTFD]))
    action = draw(st.sampled_from([m.IrqSetFlag.ACTION_MASK, m.IrqSetFlag.ACTION_UNMASK,
                                   m.IrqSetFlag.ACTION_TRIGGER]))
    count = draw(st.integers(1, 64))
    data = draw(st.binary(min_size=count, max_size=count)) if kind is m.IrqSetFlag.DATA_BOOL else b""
    return m.IrqSet(kind | action, draw(st.integers(0, 8)), draw(st.integers(0, 1024)), count, data)


#: (strategy, encode, decode): every payload of the protocol, both directions where they differ. Replies
#: whose argsz the encoder computes are compared without it.
ROUND_TRIPS: list[tuple[st.SearchStrategy[Any], Callable[[Any], bytes], Callable[[bytes], Any]]] = [
    (st.builds(m.Version, U16, U16, caps), lambda v: v.pack(), m.Version.unpack),
    (st.builds(m.DmaMap, st.sampled_from(list(m.DmaFlag)), U64, st.integers(0, 1 << 48), st.integers(1, 1 << 40)),
     lambda v: v.pack(), m.DmaMap.unpack),
    (st.builds(m.DmaUnmap, U64, U64, st.integers(24, 1 << 20)), lambda v: v.pack(), m.DmaUnmap.unpack),
    (st.builds(m.DeviceInfo, st.integers(16, 1 << 20), st.sampled_from(list(m.DeviceFlag)), st.integers(0, 64),
               st.integers(0, 64)), lambda v: v.pack(), lambda p: m.DeviceInfo.unpack(p, reply=True)),
    (st.builds(m.RegionInfo.request, U32, st.integers(32, 1 << 16)), lambda v: v.pack_request(),
     m.RegionInfo.unpack_request),
    (st.builds(m.RegionInfo, U32, st.sampled_from([m.RegionFlag.READ, m.RegionFlag.READ | m.RegionFlag.WRITE,
                                                   m.RegionFlag.READ | m.RegionFlag.MMAP]),
               st.integers(0, 1 << 40), U64, region_caps),
     lambda v: v.pack_reply(1 << 16), lambda p: _caps_flag_of(_argsz_of(m.RegionInfo.unpack_reply(p), p))),
    (st.builds(m.IrqInfo, U32, st.sampled_from(list(m.IrqInfoFlag)), st.integers(0, 2048)), lambda v: v.pack(),
     lambda p: m.IrqInfo.unpack(p, reply=True)),
    (irq_sets(), lambda v: v.pack(), m.IrqSet.unpack),
    (st.builds(m.RegionAccess, U32, st.integers(0, 1 << 40), st.just(0)), lambda v: v.pack(),
     lambda p: m.RegionAccess.unpack(p, with_data=False, what="read")),
    (st.binary(max_size=64).flatmap(lambda d: st.builds(m.RegionAccess, U32, st.integers(0, 1 << 40),
                                                          st.just(len(d)), st.just(d))),
     lambda v: v.pack(), lambda p: m.RegionAccess.unpack(p, with_data=True, what="write")),
    (ioeventfds(), lambda v: v.pack(), m.BenchIoeventfd.unpack),
    (st.builds(m.BenchDmaFaults, st.sampled_from(list(m.FaultsFlag)), st.lists(faults, max_size=5).map(tuple)),
     lambda v: v.pack_reply(), lambda p: _argsz_of(m.BenchDmaFaults.unpack_reply(p), p)),
    (st.one_of(st.builds(m.BenchPort, st.just(m.PortOp.STATE)),
               st.builds(m.BenchPort, st.just(m.PortOp.SET_LINK), st.integers(0, 1)),
               st.builds(m.BenchPort, st.just(m.PortOp.RECEIVE), st.just(0), st.binary(min_size=1, max_size=64))),
     lambda v: v.pack(), m.BenchPort.unpack),
    (st.builds(m.PortState, st.booleans(), st.binary(min_size=6, max_size=6), st.lists(st.text()).map(tuple)),
     lambda v: v.pack(), m.PortState.unpack),
]


def _argsz_of(v: Any, payload: bytes) -> Any:
    """A reply's argsz is the size of the full reply the encoder built: check it, then compare the rest."""
    assert v.argsz == len(payload)
    return dataclasses.replace(v, argsz=type(v).__dataclass_fields__["argsz"].default)


def _caps_flag_of(v: m.RegionInfo) -> m.RegionInfo:
    """The encoder sets CAPS exactly when capabilities follow."""
    assert bool(v.flags & m.RegionFlag.CAPS) == bool(v.caps)
    return dataclasses.replace(v, flags=v.flags & ~m.RegionFlag.CAPS)


@pytest.mark.parametrize("case", range(len(ROUND_TRIPS)))
@settings(max_examples=60)
@given(data=st.data())
def test_payload_round_trip(case: int, data: st.DataObject) -> None:
    strategy, encode, decode = ROUND_TRIPS[case]
    value = data.draw(strategy)
    assert decode(encode(value)) == value


def test_region_info_capabilities() -> None:
    info = m.RegionInfo(0, m.RegionFlag.READ | m.RegionFlag.MMAP, 0x4000, 0,
                        (m.SparseMmapCap(((0x1000, 0x1000), (0x3000, 0x1000))), m.TypeCap(3, 1)))
    full = info.pack_reply(256)
    got = m.RegionInfo.unpack_reply(full)
    assert got.caps == info.caps and got.flags & m.RegionFlag.CAPS and got.argsz == len(full)
    short = m.RegionInfo.unpack_reply(info.pack_reply(32))  # argsz too small: caps left out, size announced
    assert short.caps == () and short.argsz == len(full)
    # A capability chain that points back at itself is refused, not followed forever.
    looped = bytearray(full)
    struct.pack_into("<I", looped, 32 + 4, 32)
    with pytest.raises(m.VfioUserProtocolError, match="links back"):
        m.RegionInfo.unpack_reply(bytes(looped))


DECODERS: list[Callable[[bytes], object]] = [
    m.Version.unpack, m.DmaMap.unpack, m.DmaUnmap.unpack, m.RegionInfo.unpack_request, m.RegionInfo.unpack_reply,
    m.IrqSet.unpack, m.BenchIoeventfd.unpack, m.BenchDmaFaults.unpack_request, m.BenchDmaFaults.unpack_reply,
    lambda p: m.DeviceInfo.unpack(p, reply=False), lambda p: m.DeviceInfo.unpack(p, reply=True),
    lambda p: m.IrqInfo.unpack(p, reply=False), lambda p: m.IrqInfo.unpack(p, reply=True),
    lambda p: m.RegionAccess.unpack(p, with_data=True, what="w"),
    lambda p: m.RegionAccess.unpack(p, with_data=False, what="r"),
    lambda p: m.Header.unpack(p, max_size=1 << 20), m.BenchPort.unpack, m.PortState.unpack,
]


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=96),
                 st.builds(lambda a, b: a + b, st.sampled_from([b"\0\0\1\0", b'\0\0\1\0{"capabilities":']),
                           st.binary(max_size=64))))
def test_decoders_refuse_garbage_with_a_protocol_error(raw: bytes) -> None:
    """Any byte string either decodes or raises VfioUserProtocolError (with a reason): nothing else escapes."""
    for decode in DECODERS:
        try:
            decode(raw)
        except m.VfioUserProtocolError as exc:
            assert exc.reason


# --- the server under hostile clients (in process, so hypothesis can run many sessions) ----------


@dataclass(frozen=True)
class Op:
    header: bytes
    payload: bytes
    fds: int  # eventfds passed with it
    malformed: bool  # certainly malformed on the wire: the server must drop the client
    valid: bool = False  # certainly valid: the server must answer without an error


def _op(cmd: int, payload: bytes, *, fds: int = 0, msg_id: int = 7, flags: int = 0, errno_: int = 0,
        malformed: bool = False, valid: bool = False) -> Op:
    header = struct.pack("<HHIII", msg_id, cmd, m.HEADER_SIZE + len(payload), flags, errno_)
    return Op(header, payload, fds, malformed, valid)


VALID_OPS = [
    _op(m.Command.DEVICE_GET_INFO, m.DeviceInfo().pack(), valid=True),
    _op(m.Command.DEVICE_GET_REGION_INFO, m.RegionInfo.request(0).pack_request(), valid=True),
    _op(m.Command.DEVICE_GET_IRQ_INFO, m.IrqInfo(IrqIndex.MSIX).pack(), valid=True),
    _op(m.Command.REGION_READ, m.RegionAccess(RegionIndex.CONFIG, 0, 4).pack(), valid=True),
    _op(m.Command.REGION_WRITE, m.RegionAccess(RegionIndex.CONFIG, 4, 2, b"\x06\x00").pack(), valid=True),
    _op(m.Command.DEVICE_SET_IRQS, m.IrqSet(m.IrqSetFlag.DATA_EVENTFD | m.IrqSetFlag.ACTION_TRIGGER,
                                            IrqIndex.MSIX, 0, 2).pack(), fds=2, valid=True),
    _op(m.Command.DEVICE_SET_IRQS, m.IrqSet(m.IrqSetFlag.DATA_NONE | m.IrqSetFlag.ACTION_TRIGGER,
                                            IrqIndex.MSIX, 0, 0).pack(), valid=True),
    _op(m.Command.BENCH_DMA_FAULTS, m.BenchDmaFaults().pack_request(), valid=True),
    _op(m.Command.BENCH_PORT, m.BenchPort(m.PortOp.STATE).pack(), valid=True),
    _op(m.Command.BENCH_PORT, m.BenchPort(m.PortOp.RECEIVE, 0, frame(1)).pack(), valid=True),
    _op(m.Command.DEVICE_RESET, b"", valid=True),
]

hostile_ops = st.one_of(
    st.sampled_from(VALID_OPS),
    # well-formed headers, random payloads and fds: answered, refused or (if malformed) dropped
    st.builds(lambda c, p, n: _op(c, p, fds=n), st.sampled_from(sorted(m.SERVER_BOUND - {m.Command.VERSION})),
              st.binary(max_size=48), st.integers(0, 2)),
    # unknown commands: an error reply
    st.builds(lambda c, p: _op(c, p), st.integers(19, 0xBDFF), st.binary(max_size=16)),
    # broken headers
    st.builds(lambda f: _op(m.Command.DEVICE_GET_INFO, m.DeviceInfo().pack(), flags=f, malformed=True),
              st.sampled_from([0x2, 0xF, 0x40, 0x1 | 0x10, 0x20, 0x8000_0000])),
    st.builds(lambda e: _op(m.Command.DEVICE_GET_INFO, m.DeviceInfo().pack(), errno_=e, malformed=True),
              st.integers(1, 0xFFFFFFFF)),
    st.just(Op(struct.pack("<HHIII", 1, m.Command.REGION_READ, 8, 0, 0), b"", 0, True)),  # size below the header
    st.just(Op(struct.pack("<HHIII", 1, m.Command.REGION_WRITE, 1 << 30, 0, 0), b"", 0, True)),  # absurd size
    st.just(_op(m.Command.VERSION, m.Version(0, 1).pack(), malformed=True)),  # VERSION twice
    st.just(_op(m.Command.DEVICE_GET_INFO, m.DeviceInfo().pack(), flags=int(m.MsgType.REPLY), malformed=True)),
    st.just(_op(m.Command.REGION_READ, m.RegionAccess(RegionIndex.CONFIG, 0, 4).pack(), fds=1, malformed=True)),
    st.just(_op(m.Command.DMA_MAP, b"\0" * 31, malformed=True)),
)


class RawClient:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(path)

    def send(self, header: bytes, payload: bytes = b"", nfds: int = 0) -> None:
        fds = [new_eventfd() for _ in range(nfds)]
        try:
            FdChannel(self.sock, max_fds=0).send(header + payload, fds)  # sends only
        finally:
            for fd in fds:
                os.close(fd)

    def reply(self) -> m.Message | None:
        """The next reply, or None when the server hung up."""
        try:
            msg = m.recv_message(self.sock, max_size=1 << 21, max_fds=8)
        except (m.ConnectionClosed, ConnectionResetError):
            return None
        msg.close_fds()
        return msg

    def handshake(self) -> None:
        payload = m.Version(0, 1, m.Capabilities(bench=m.BenchCaps(True, True, True))).pack()
        self.send(m.command(0, m.Command.VERSION, payload).pack(), payload)
        got = self.reply()
        assert got is not None and not got.header.error and m.Version.unpack(got.payload).caps.bench is not None

    def close(self) -> None:
        self.sock.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VfioUserServer]:
    path = str(tmp_path_factory.mktemp("inproc") / "s.sock")
    server = VfioUserServer(path, lambda: open_virtio_net("virtio-net,wire=none"), max_devices=2)
    try:
        yield server
    finally:
        server.close()


def _ended(server: VfioUserServer) -> None:
    for record in list(server.sessions):
        assert record.ended.wait(WAIT), f"session {record.id} still running"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(hostile_ops, min_size=1, max_size=12), before_version=st.booleans())
def test_server_drops_only_malformed_clients(inproc: VfioUserServer, ops: list[Op], before_version: bool) -> None:
    """Each message gets a reply (an error reply when refused) or, when malformed, the client is dropped with
    the reason logged; the server never fails internally and serves the next client normally."""
    client = RawClient(inproc.path)
    try:
        if before_version and struct.unpack_from("<H", ops[0].header, 2)[0] != m.Command.VERSION:
            # anything but VERSION first is malformed
            client.send(ops[0].header, ops[0].payload, ops[0].fds)
            assert client.reply() is None, "the server answered a command sent before VERSION"
            return
        client.handshake()
        for op in ops:
            client.send(op.header, op.payload, op.fds)
            got = client.reply()
            if got is None:
                assert not op.valid, f"a valid message ({op.header.hex()}) dropped the client"
                break
            assert not op.malformed, f"a malformed message ({op.header.hex()} {op.payload.hex()}) got a reply"
            assert got.header.msg_id == struct.unpack_from("<H", op.header)[0]
            if op.valid:
                assert not got.header.error, f"valid message refused with errno {got.header.errno}"
            else:
                assert not got.header.error or got.header.errno, "error reply without an errno"
    finally:
        client.close()
    _ended(inproc)
    reasons = [r.reason for r in inproc.sessions if r.reason]
    assert not [r for r in reasons if r.startswith("internal error")], reasons


def test_server_after_hostile_clients_serves_a_good_one(inproc: VfioUserServer) -> None:
    baseline = _open_fds()
    for payload in (b"\xff" * 16, struct.pack("<HHIII", 0, 1, 21, 0, 0) + b"\0\0\1\0{"):
        bad = RawClient(inproc.path)
        bad.sock.sendall(payload)
        assert bad.reply() is None
        bad.close()
    _ended(inproc)
    assert [r.reason for r in inproc.sessions[-2:]] == [
        "malformed message: message type 15 (0 command, 1 reply)",
        "malformed VERSION: VERSION: version data is not NUL-terminated"]
    dev = VfioUserPciDevice(inproc.path)
    try:
        assert config_read(dev, 0, 2) == VIRTIO_VENDOR
    finally:
        dev.close()
    _ended(inproc)
    assert _open_fds() == baseline, "fds left behind by the sessions"


# --- a device in its own process ---------------------------------------------------------------


def test_client_in_device_process(device: tuple[str, DeviceProcess], mem: GuestMemory) -> None:
    path, _ = device
    dev = default_registry().open(f"vfio-user:{path}")
    assert isinstance(dev, VfioUserPciDevice)
    try:
        assert dev.bench == m.BenchCaps(ioeventfd=True, dma_faults=True, port=True)
        assert config_read(dev, 0, 2) == VIRTIO_VENDOR
        assert dev.region_info(RegionIndex.CONFIG).size == 256 and dev.region_info(RegionIndex.ROM).size == 0
        assert dev.irq_count(IrqIndex.MSIX) >= 3 and dev.irq_count(IrqIndex.INTX) == 1
        assert dev.irq_count(IrqIndex.ERR) == 0 and dev.region_mmap(0) is None
        with pytest.raises(PciError):
            dev.region_read(0, dev.region_info(0).size - 2, 4)  # beyond BAR0: refused, as in process
        with pytest.raises(PciError):
            dev.region_read(RegionIndex.ROM, 0, 4)
        region = mem.regions[0]
        with pytest.raises(PciError, match="Invalid argument"):  # not page aligned
            dev.dma_map(GPA + 1, 0x1000, region.fd, 0, DmaPerm.RW)
        with pytest.raises(PciError, match="Invalid argument"):  # beyond the end of the memfd
            dev.dma_map(GPA, 2 * MEM, region.fd, 0, DmaPerm.RW)
        dev.dma_map(GPA, 0x2000, region.fd, 0, DmaPerm.READ)
        with pytest.raises(PciError, match="File exists"):
            dev.dma_map(GPA + 0x1000, 0x1000, region.fd, 0, DmaPerm.RW)
        with pytest.raises(PciError, match="splits"):
            dev.dma_unmap(GPA, 0x1000)
        dev.dma_unmap(GPA, 0x2000)

        # The guest driver over the socket: frames out and back on the device's loopback wire, MSI-X
        # interrupts straight from the device process to the eventfds.
        drv = GuestNetDriver(dev, mem, queue_size=64)
        try:
            drv.init()
            sent = [frame(i, 60 + 37 * i) for i in range(20)]
            assert drv.exchange(sent, WAIT) == sent
            assert drv.wait_tx_done(timeout=WAIT)
        finally:
            drv.close()
    finally:
        dev.close()


def test_dma_fault_reported_and_next_client_finds_a_reset_device(device: tuple[str, DeviceProcess],
                                                                 mem: GuestMemory) -> None:
    path, _ = device
    dev = VfioUserPciDevice(path)
    drv = GuestNetDriver(dev, mem, queue_size=64, rx_buffers=0)
    try:
        drv.init()
        assert dev.dma_faults() == []
        outside = GPA + 2 * MEM  # no mapping covers it
        tx = drv.queues[GuestNetDriver.TX]
        tx.add_raw({0: Descriptor(outside, 64, 0, 0)}, 0)
        drv.notify(GuestNetDriver.TX)  # a doorbell write: answered once the device has processed it
        faults = dev.dma_faults()
        # one read fault inside the buffer (the device may skip the header it does not need)
        assert [f.access for f in faults] == [DmaPerm.READ], faults
        assert outside <= faults[0].iova and faults[0].iova + faults[0].size <= outside + 64, faults
        assert "no mapping" in faults[0].reason
        assert drv.status() & DeviceStatus.DEVICE_NEEDS_RESET
        assert dev.dma_faults() == []  # drained
        assert dev.model is not None and dev.model.errors, "the device logged no driver error"
    finally:
        dev.close()  # the client goes away with the device mid-error, rings and memory still mapped
        for fd in set(drv.irq_fds.values()):
            os.close(fd)
    # The next client finds the device reset, its IOMMU empty and its interrupts unbound.
    dev = VfioUserPciDevice(path)
    try:
        t = VirtioPciModern(dev)
        assert t.status() == 0
        assert dev.dma_faults() == []
    finally:
        dev.close()


def test_bench_port_link_and_wire(device: tuple[str, DeviceProcess], mem: GuestMemory) -> None:
    """The device's bench port: the link is pulled and plugged (a config interrupt each time), a frame arrives
    from the wire; the link is back as found when the client leaves."""
    path, _ = device
    dev = VfioUserPciDevice(path)
    drv = GuestNetDriver(dev, mem, queue_size=64)
    try:
        port = dev.model
        assert port is not None and port.link_up and port.mac == bytes.fromhex("02000000000b")
        drv.init()
        assert drv.mac() == port.mac
        port.set_link(False)
        assert drv.config_changed(WAIT) and not drv.link_up() and not port.link_up
        port.receive(frame(7))  # link down: dropped
        assert drv.receive_raw(1, timeout=0.0) == []  # processed before receive() returned
        port.set_link(True)
        assert drv.config_changed(WAIT) and drv.link_up()
        port.set_link(False)  # left down: the server plugs it back when this client goes
        port.set_link(False)
        with pytest.raises(PciError, match="Message too long"):
            port.receive(bytes(70_000))
    finally:
        drv.close()
        dev.close()
    dev = VfioUserPciDevice(path)
    drv = GuestNetDriver(dev, mem, queue_size=64)
    try:
        assert dev.model is not None and dev.model.link_up
        drv.init()
        dev.model.receive(frame(8))
        assert [f.frame for f in drv.receive_raw(1, timeout=WAIT)] == [frame(8)]
    finally:
        drv.close()
        dev.close()


def test_vendor_driver_kicks_reach_the_device_process(device: tuple[str, DeviceProcess], mem: GuestMemory) -> None:
    """The backend's vendor driver over vfio-user: the kick eventfds become the device process's ioeventfds
    (no relay thread in this process), the call eventfds its MSI-X vectors."""
    path, _ = device
    pci = VfioUserPciDevice(path)
    vdpa = VirtioPciVdpaDevice(pci)
    fe = VdpaFrontend(vdpa, mem)
    try:
        fe.bring_up(1 << F.VERSION_1 | 1 << F.ACCESS_PLATFORM | 1 << F.EVENT_IDX, size=128)
        assert not vdpa.kicks_relayed() and not vdpa.calls_relayed()
        for burst in range(3):
            sent = [frame(100 * burst + i, 64 + 9 * i) for i in range(32)]
            assert fe.exchange(sent, timeout=WAIT) == sent
        vdpa.reset()
    finally:
        fe.close()
        vdpa.close()


def test_server_refuses_messages_the_client_never_sends(device: tuple[str, DeviceProcess]) -> None:
    """Requests the device cannot honour get an errno, and the connection stays usable."""
    path, _ = device
    client = RawClient(path)
    try:
        client.handshake()
        for cmd, payload, code in [
            (m.Command.DMA_MAP, m.DmaMap(m.DmaFlag.READ, 0, GPA, 0x1000).pack(), errno.ENOTSUP),  # no fd
            (m.Command.DMA_UNMAP, m.DmaUnmap(GPA, 0x1000).pack(), errno.EINVAL),  # nothing mapped there
            (m.Command.DEVICE_GET_REGION_IO_FDS, struct.pack("<IIII", 32, 0, 0, 0), errno.ENOTSUP),
            (0x1234, b"", errno.ENOSYS),
            (m.Command.DEVICE_GET_IRQ_INFO, m.IrqInfo(9).pack(), errno.EINVAL),
        ]:
            client.send(m.command(3, cmd, payload).pack(), payload)
            got = client.reply()
            assert got is not None and got.header.error and got.header.errno == code, (cmd, got)
        # An interrupt "eventfd" that is a memfd: the device would write 8 bytes into a file.
        irq = m.IrqSet(m.IrqSetFlag.DATA_EVENTFD | m.IrqSetFlag.ACTION_TRIGGER, IrqIndex.MSIX, 0, 1).pack()
        memfd = os.memfd_create("not-an-eventfd")
        try:
            m.send_message(client.sock, m.command(5, m.Command.DEVICE_SET_IRQS, irq), irq, [memfd])
        finally:
            os.close(memfd)
        got = client.reply()
        assert got is not None and got.header.errno == errno.EINVAL
        client.send(m.command(4, m.Command.DEVICE_GET_INFO, m.DeviceInfo().pack()).pack(), m.DeviceInfo().pack())
        got = client.reply()
        assert got is not None and m.DeviceInfo.unpack(got.payload, reply=True).num_regions == m.PCI_NUM_REGIONS
    finally:
        client.close()


def test_client_refuses_a_server_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="cannot connect"):
        default_registry().open(f"vfio-user:{tmp_path / 'nobody.sock'}")
    with pytest.raises(ValueError, match="socket path"):
        default_registry().open("vfio-user:")
    # A server that answers VERSION with garbage: the client gives up with the reason, nothing hangs.
    path = str(tmp_path / "liar.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def liar() -> None:
        conn, _ = listener.accept()
        with conn:
            msg = m.recv_message(conn, max_size=1 << 16, max_fds=0)
            m.send_message(conn, m.reply(msg.header, b"\1\0"), b"\1\0")  # 2 bytes: too short for a version
            conn.recv(1)

    t = threading.Thread(target=liar, daemon=True)
    t.start()
    try:
        with pytest.raises(VfioUserError, match="malformed VERSION reply"):
            VfioUserPciDevice(path, timeout=WAIT)
    finally:
        t.join(WAIT)
        listener.close()


def _scripted_server(listener: socket.socket, regions: list[tuple[m.RegionInfo, int | None]]) -> None:
    """A minimal vfio-user peer offering ``regions`` (with an fd to mmap where given), answering until EOF."""
    conn, _ = listener.accept()
    with conn:
        while True:
            try:
                msg = m.recv_message(conn, max_size=1 << 16, max_fds=8)
            except m.ConnectionClosed:
                return
            msg.close_fds()
            cmd, fds = msg.header.command, []
            if cmd == m.Command.VERSION:
                out = m.Version(0, 1, m.Capabilities()).pack()
            elif cmd == m.Command.DEVICE_GET_INFO:
                out = m.DeviceInfo(16, m.DeviceFlag.PCI, len(regions), 0).pack()
            elif cmd == m.Command.DEVICE_GET_REGION_INFO:
                info, fd = regions[m.RegionInfo.unpack_request(msg.payload).index]
                out, fds = info.pack_reply(256), ([fd] if fd is not None else [])
            else:
                m.send_message(conn, m.reply(msg.header, errno=errno.ENOTSUP))
                continue
            m.send_message(conn, m.reply(msg.header, out), out, fds)


def test_client_maps_regions_the_server_offers(tmp_path: Path) -> None:
    """A region offered with MMAP and an fd is mapped whole; one with sparse areas that leave holes stays
    trapped (the PciDevice API hands out one view per region); a standard server has no bench extensions."""
    memfd = os.memfd_create("bar")
    os.ftruncate(memfd, 0x2000)
    rw_mmap = m.RegionFlag.READ | m.RegionFlag.WRITE | m.RegionFlag.MMAP
    regions = [(m.RegionInfo(0, rw_mmap, 0x1000, 0x1000), memfd),
               (m.RegionInfo(1, rw_mmap, 0x2000, 0, (m.SparseMmapCap(((0x1000, 0x1000),)),)), memfd)]
    path = str(tmp_path / "mmap.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    t = threading.Thread(target=_scripted_server, args=(listener, regions), daemon=True)
    t.start()
    try:
        dev = VfioUserPciDevice(path, timeout=WAIT)
        try:
            view = dev.region_mmap(0)
            assert view is not None and len(view) == 0x1000 and dev.region_info(0).flags & RegionFlags.MMAP
            view[:4] = b"\xaa\xbb\xcc\xdd"
            assert os.pread(memfd, 4, 0x1000) == b"\xaa\xbb\xcc\xdd"  # at the offset the server gave
            view.release()
            assert dev.region_mmap(1) is None and not dev.region_info(1).flags & RegionFlags.MMAP
            assert dev.model is None and dev.bench == m.BenchCaps()
            assert dev.ioeventfd(0, 0, 2, 0, memfd) is False  # the vendor driver relays instead
            with pytest.raises(VfioUserError, match="no DMA faults"):
                dev.dma_faults()
        finally:
            dev.close()
    finally:
        t.join(WAIT)
        listener.close()
        os.close(memfd)


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_device_command_stops_cleanly(tmp_path: Path, sock: str, signum: signal.Signals) -> None:
    path = sock
    with DeviceProcess(path, "virtio-net,queues=2", log=tmp_path / "d.log") as child:
        child.wait_listening(READY_TIMEOUT)
        VfioUserPciDevice(path).close()
        dev = VfioUserPciDevice(path)  # still connected when the signal comes
        try:
            child.proc.send_signal(signum)
            assert child.proc.wait_exit(EXIT_TIMEOUT) == 0, child.log()
            with pytest.raises(VfioUserError, match="server closed the connection"):
                config_read(dev, 0, 2)
        finally:
            dev.close()
        assert not os.path.exists(path)
        log = child.log()
        assert "client connected" in log and "signal received: shutting down" in log and "stopped" in log


def test_device_command_rejects_a_bad_model(tmp_path: Path, sock: str) -> None:
    with DeviceProcess(sock, "virtio-net,qsize=3", log=tmp_path / "x.log") as child:
        assert child.proc.wait_exit(EXIT_TIMEOUT) == 2
        assert "vdpa-bench device: error: --model 'virtio-net,qsize=3'" in child.log()


def test_serve_refuses_a_device_socket_nobody_serves(tmp_path: Path, sock_dir: Path) -> None:
    with ServeProcess(str(sock_dir / "v.sock"), f"vfio-user:{sock_dir / 'none.sock'}", log=tmp_path / "s.log") as serve:
        assert serve.proc.wait_exit(EXIT_TIMEOUT) == 2
        assert "cannot connect" in serve.log()


def test_serve_drives_the_device_process(device: tuple[str, DeviceProcess], tmp_path: Path, sock: str,
                                         mem: GuestMemory) -> None:
    """``serve --device vfio-user:PATH``: a vhost-user frontend's traffic through the backend process to the
    device process and back, the backend moving no packet."""
    path, _ = device
    with ServeProcess(sock, f"vfio-user:{path}", log=tmp_path / "serve.log") as serve:
        serve.wait_listening(READY_TIMEOUT)
        fe = VhostUserFrontend.connect(sock, mem)
        try:
            fe.start(queues=(0, 1), size=128)
            sent = [frame(i, 60 + (i * 13) % 1400) for i in range(64)]
            assert fe.exchange(sent, timeout=10.0) == sent
            fe.stop()
        finally:
            fe.close()
        assert serve.stop() == 0, serve.log()


# --- the conformance suite: the same ids as in process --------------------------------------------

#: Why a check cannot judge an id on a device in another process: it watches every device DMA access as it
#: happens (the in-process IOMMU's observers). Reported as not applicable, never failed.
NOT_OBSERVABLE = "not seen as it happens"  # the vfio-user client's declared lack of a DMA observer
#: The driver-side check that reopens a sim: target with these bits added to the offer (a sim-only option);
#: out of process, a device process started with that offer serves it.
NOTIF_CHECK = "test_guest_driver_notification_formats"
NOTIF_BITS = 1 << F.NOTIFICATION_DATA | 1 << F.NOTIF_CONFIG_DATA
#: The checks that ask a configurable target for several queue pairs (the control queue and multiqueue check,
#: queues=4; the offered config fields, queues=3); out of process, a device process started with four queue
#: pairs serves them.
MQ_CHECKS = ("test_net_ctrl_mq", "test_offered_fields_in_range", "test_guest_driver_stocks_every_receive_queue")
#: The checksum offload checks, which ask a configurable target to offer CSUM and GUEST_CSUM besides its offer; out
#: of process, a device process started with that offer serves them.
CSUM_CHECK = "test_net_csum"
CSUM_FEATURES = 1 << NetF.CSUM | 1 << NetF.GUEST_CSUM
#: The receive filter checks, which ask a configurable target to offer CTRL_RX, CTRL_VLAN and the rest besides its
#: offer; out of process, a device process started with that offer serves them.
RX_FILTER_CHECK = "test_net_rx_filter"
#: The RSS and hash reporting checks, which ask a configurable target for four queue pairs offering RSS and
#: HASH_REPORT (MQ, CTRL_VQ), and for one pair offering HASH_REPORT without RSS; out of process, one device process
#: started with each serves its test.
RSS_CHECK = "test_net_rss"
RSS_OFFER = RSS_FEATURES | 1 << NetF.MQ
HASH_REPORT_OFFER = 1 << NetF.CTRL_VQ | 1 << NetF.HASH_REPORT


#: Check modules that ask a configurable target for an offer beyond its default (segmentation, coalescing, tunnels,
#: inner hash and RSS contexts, the control queue's driver rows) and judge the dependency table on it: over one
#: vfio-user device process with the default offer they read "not offered", which is what they must say there. That
#: they pass through vfio-user when offered is not shown here (the checksum, filter, RSS and MQ runs above show it for
#: their modules); a vfio-user target the bench could start per variant would.
VARIANT_CHECKS = ("test_net_gso", "test_net_tunnel_gso", "test_net_guest_gso", "test_net_guest_tunnel",
                  "test_net_rss_context", "test_net_ctrl_driver_rules", "test_net_driver_rules", "test_features")


def _module(check: str) -> str:
    """The check module of a node id (``checks/test_x.py::test_y[...]`` -> ``test_x``)."""
    return check.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


def _test(check: str) -> str:
    return check.split("::", 1)[-1].split("[", 1)[0]


#: Bound on each of the two whole-suite runs (a vfio-user run took 5.6 min on a 2-core machine at load 12).
SUITE_TIMEOUT = 600.0


@pytest.mark.timeout(SUITE_TIMEOUT + 120)
def test_conformance_suite_passes_the_same_ids_as_sim(device: tuple[str, DeviceProcess], tmp_path: Path) -> None:
    """``pytest --target vfio-user:PATH`` against the out-of-process model passes every id the in-process model
    passes, except ids whose only check watches device DMA as it happens (reported not applicable)."""
    path, _ = device
    results: dict[str, dict[str, Any]] = {}

    def run(name: str, target: str, *extra: str) -> None:
        results[name] = run_suite(target, tmp_path / name, *extra, timeout=SUITE_TIMEOUT)

    # The two runs share the two cores; the out-of-process one waits on its socket most of the time.
    threads = [threading.Thread(target=run, args=("sim", f"sim:{MODEL}")),
               threading.Thread(target=run, args=("vfio-user", f"vfio-user:{path}"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SUITE_TIMEOUT + 60)
    # The notification-format check, on a device process offering what the check adds on sim:.
    probe = VfioUserPciDevice(path)
    try:
        base_offer = VirtioPciModern(probe).device_features()
        offer = base_offer | NOTIF_BITS
    finally:
        probe.close()
    notif_path = str(tmp_path / "notif.sock")
    with DeviceProcess(notif_path, f"{MODEL},features={offer:#x}", log=tmp_path / "notif.log") as notif:
        notif.wait_listening(READY_TIMEOUT)
        run("vfio-user-notif", f"vfio-user:{notif_path}", "-k", NOTIF_CHECK)

    # The control queue check, on a device process with the queue pairs it asks of a configurable sim: target.
    mq_path = str(tmp_path / "mq.sock")
    with DeviceProcess(mq_path, f"{MODEL},queues=4", log=tmp_path / "mq.log") as mq:
        mq.wait_listening(READY_TIMEOUT)
        run("vfio-user-mq", f"vfio-user:{mq_path}", "-k", " or ".join(MQ_CHECKS))

    # The receive filter checks, on a device process offering what they add on sim:.
    rx_path = str(tmp_path / "rx-filter.sock")
    with DeviceProcess(rx_path, f"{MODEL},features={base_offer | RX_FILTER_FEATURES:#x}",
                       log=tmp_path / "rx-filter.log") as rx:
        rx.wait_listening(READY_TIMEOUT)
        run("vfio-user-rx-filter", f"vfio-user:{rx_path}", "-k", RX_FILTER_CHECK)

    # The checksum offload checks, on a device process offering what they add on sim:.
    csum_path = str(tmp_path / "csum.sock")
    with DeviceProcess(csum_path, f"{MODEL},features={offer | CSUM_FEATURES:#x}", log=tmp_path / "csum.log") as cs:
        cs.wait_listening(READY_TIMEOUT)
        run("vfio-user-csum", f"vfio-user:{csum_path}", "-k", CSUM_CHECK)

    # The RSS checks: the steering test on four queue pairs offering RSS, the hash report test on a device offering
    # HASH_REPORT without RSS (as the two variants it asks of sim:).
    for name, opts, test in (("rss", f"queues=4,features={base_offer | RSS_OFFER:#x}", "test_rss_steering"),
                             ("hash-report", f"features={base_offer | HASH_REPORT_OFFER:#x}", "test_hash_report")):
        sock = str(tmp_path / f"{name}.sock")
        with DeviceProcess(sock, f"{MODEL},{opts}", log=tmp_path / f"{name}.log") as dp:
            dp.wait_listening(READY_TIMEOUT)
            run(f"vfio-user-{name}", f"vfio-user:{sock}", "-k", f"{RSS_CHECK} and {test}")

    sim, vu, vu_notif = results["sim"], results["vfio-user"], results["vfio-user-notif"]
    for name, data in results.items():
        failed = ids_with(data, "failed")
        assert not failed, (name, {i: data["ids"][i]["evidence"] for i in sorted(failed)})
        assert data["_exit"] == 0, (name, data["_stdout"][-3000:])
    passed_sim, passed_vu = ids_with(sim, "passed"), ids_with(vu, "passed")
    passed_notif = ids_with(vu_notif, "passed") | ids_with(results["vfio-user-mq"], "passed") \
        | ids_with(results["vfio-user-rx-filter"], "passed")
    passed_notif |= ids_with(results["vfio-user-csum"], "passed")
    passed_notif |= ids_with(results["vfio-user-rss"], "passed") | ids_with(results["vfio-user-hash-report"], "passed")
    assert len(passed_sim) >= 150
    assert passed_vu <= passed_sim, f"passed only out of process: {sorted(passed_vu - passed_sim)}"
    # Every id the default offer leaves "not offered" to the notification check passes with the offer.
    # the checks the device processes above serve: by module, or by test where a run selects tests
    def served(c: str) -> bool:
        return _module(c) in (RX_FILTER_CHECK, CSUM_CHECK, RSS_CHECK, *MQ_CHECKS) or _test(c) in (NOTIF_CHECK,
                                                                                                   *MQ_CHECKS)

    not_offered = {i for i in passed_sim - passed_vu if vu["ids"][i]["status"] == "not offered"}
    left_to_notif = {i for i in not_offered if all(served(c) for c in vu["ids"][i]["checks"])}
    assert left_to_notif and left_to_notif <= passed_notif, (sorted(left_to_notif), sorted(passed_notif))
    variant_only = {i for i in not_offered - passed_notif
                    if all(_module(c) in VARIANT_CHECKS or served(c) for c in vu["ids"][i]["checks"])}
    gap = passed_sim - passed_vu - passed_notif - variant_only
    unexplained = {i: (vu["ids"][i]["status"], vu["ids"][i]["evidence"]) for i in sorted(gap)
                   if vu["ids"][i]["status"] != "not applicable"
                   or not all(NOT_OBSERVABLE in line for line in vu["ids"][i]["evidence"])}
    assert not unexplained, unexplained
    assert len(gap) <= 3, sorted(gap)  # a guard: coverage must not drain into "not observable"
    print(f"sim passes {len(passed_sim)} ids; vfio-user {len(passed_vu)} + {len(left_to_notif)} with the "
          f"notification offer; not observable out of process: {sorted(gap)}")
