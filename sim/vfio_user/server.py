"""vfio-user server: a simulated PCI function served from its own process.

Each client connection is a :class:`Session` in its own thread. It serves the vfio-user
commands from an :class:`ExportedDevice` (the behavioral model's :class:`~sim.pci_device.SimPciDevice`,
the access layer the in-process ``sim:`` target uses, or the RTL's ``RtlPciDevice``, so the
targets behave alike): region accesses go to the endpoint,
``DMA_MAP`` fds are mapped into the endpoint's IOMMU by this process (guest memory is shared,
never copied over the socket), interrupts fire the client's eventfds through the endpoint's
MSI-X/INTx, and an ioeventfd (the ``BENCH_IOEVENTFD`` extension) is waited on here and turned
into the doorbell write, so kicks do not pass through the client.

Connections, their threads and their release are :class:`~backend.unix_socket.UnixSocketServer`'s;
fds come and go through :class:`~backend.fd_channel.FdChannel` (:mod:`backend.pci.vfio_user_msg`).
Clients come one after the other: when one goes away, its DMA mappings, interrupt eventfds and
ioeventfds are dropped (every fd it passed is closed) and the device is reset, ready for the
next; the server keeps no more of an ended client than its record's reason. A client connecting
while every device is in use gets another instance from the factory (up to ``max_devices``): the
conformance suite opens several devices at once, as it does in process. A malformed message drops
that client with a logged reason; a request the device refuses gets an error reply with an errno.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from backend.eventloop import EventLoop, consume_eventfd
from backend.pci import vfio_user_msg as m
from backend.pci.abilities import Lacking
from backend.pci.device import DmaFault, DmaPerm, IrqIndex, PciDevice, PciError, RegionIndex
from backend.unix_socket import Connection, UnixSocketServer
from sim.pci.endpoint import PciEndpoint

log = logging.getLogger(__name__)

#: Fds the server takes in one message (an MSI-X table's worth of eventfds needs several messages).
SERVER_MAX_FDS = 64
SERVER_CAPS = m.Capabilities(max_msg_fds=SERVER_MAX_FDS, max_data_xfer_size=m.DEFAULT_MAX_DATA_XFER,
                             bench=m.BenchCaps(ioeventfd=True, dma_faults=True, port=True))
#: Longest frame the bench port delivers (a jumbo frame with its link header).
MAX_PORT_FRAME = 65550
#: Longest message accepted: a REGION_WRITE of max_data_xfer_size plus its header.
MAX_MESSAGE = m.HEADER_SIZE + m.RegionAccess.FMT.size + SERVER_CAPS.max_data_xfer_size
#: Bound on joining a session thread or an ioeventfd thread at close.
JOIN_TIMEOUT = 5.0
#: Bound on a new client's wait for a device when ``max_devices`` are all in use.
ACQUIRE_TIMEOUT = 5.0

class ExportedDevice(PciDevice, Protocol):
    """What the server exports: a simulated device with its endpoint (behavioral model or RTL)."""

    @property
    def endpoint(self) -> PciEndpoint: ...


DeviceFactory = Callable[[], ExportedDevice]


class Refused(Exception):
    """A well-formed request the device cannot honour: an error reply with ``errno``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(eq=False)
class SessionRecord(Connection):
    """One client connection: why it ended (``reason`` None for a clean hang-up) and what it did; its
    :class:`Session` while it lasts (dropped at the end, the device going back to the pool)."""

    session: Session | None = None


@dataclass
class _Ioeventfd:
    fd: int
    index: int
    offset: int
    width: int
    value: int | None


def _require_eventfds(fds: list[int]) -> None:
    """Interrupt and doorbell fds must be eventfds: the device writes and reads them as 8-byte counters."""
    for fd in fds:
        try:
            kind = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            kind = "?"
        if kind != "anon_inode:[eventfd]":
            raise Refused(errno.EINVAL, f"fd passed as an eventfd is {kind}")


class Session:
    """The server side of one connection, bound to one device while it lasts."""

    def __init__(self, record: SessionRecord, dev: ExportedDevice, label: str) -> None:
        self.record = record
        self.sock = record.sock
        self.dev = dev
        self.label = label
        self.negotiated = False
        self.client_caps = m.Capabilities()
        self.bench = m.BenchCaps()
        self.irq_fds: dict[tuple[int, int], int] = {}  # (irq index, vector) -> eventfd from the client
        self.ioeventfds: dict[tuple[int, int, int], _Ioeventfd] = {}  # (index, offset, cookie)
        self._io_lock = threading.Lock()  # an ioeventfd handler never reads an fd being removed
        self._io_loop: EventLoop | None = None
        self.faults: list[DmaFault] = []  # drained from the IOMMU, not yet sent
        # The bench port is what the device declares: its port control and the driver errors it records.
        abilities = dev.abilities()
        self.port = None if isinstance(abilities.port, Lacking) else abilities.port
        self.errors = None if isinstance(abilities.errors, Lacking) else abilities.errors
        self.link_at_start: bool | None = None  # the link before this client first changed it
        # The first DMA fault is logged as it happens (a file of the client's truncated under the device is only
        # ever seen here); a client collecting faults (BENCH_DMA_FAULTS) still gets every one.
        self._fault_logged = False
        dev.endpoint.iommu.on_fault = self._on_fault
        self._handlers: dict[int, Callable[[m.Message], bytes]] = {
            m.Command.VERSION: self._version,
            m.Command.DMA_MAP: self._dma_map,
            m.Command.DMA_UNMAP: self._dma_unmap,
            m.Command.DEVICE_GET_INFO: self._device_info,
            m.Command.DEVICE_GET_REGION_INFO: self._region_info,
            m.Command.DEVICE_GET_IRQ_INFO: self._irq_info,
            m.Command.DEVICE_SET_IRQS: self._set_irqs,
            m.Command.REGION_READ: self._region_read,
            m.Command.REGION_WRITE: self._region_write,
            m.Command.DEVICE_RESET: self._reset,
            m.Command.BENCH_IOEVENTFD: self._ioeventfd,
            m.Command.BENCH_DMA_FAULTS: self._dma_faults,
            m.Command.BENCH_PORT: self._bench_port,
        }

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Serve messages until the client hangs up or is dropped; :meth:`release` gives back what it took."""
        while True:
            try:
                msg = m.recv_message(self.sock, max_size=MAX_MESSAGE, max_fds=SERVER_MAX_FDS)
            except m.ConnectionClosed as exc:
                if exc.partial:
                    self.record.reason = "connection closed in the middle of a message"
                return
            except (m.VfioUserProtocolError, OSError) as exc:
                self._end(exc, "malformed message", "socket error")
                return
            try:
                self._dispatch(msg)
            except (m.VfioUserProtocolError, OSError) as exc:
                self._end(exc, f"malformed {msg.header.command_name()}", "socket error while replying")
                return
            finally:
                msg.close_fds()
            self.record.handled += 1

    def _end(self, exc: m.VfioUserProtocolError | OSError, malformed: str, socket_error: str) -> None:
        """Record why the session ends: a malformed message drops the client (logged), a socket error
        means the client is gone already."""
        if isinstance(exc, m.VfioUserProtocolError):
            self._drop(f"{malformed}: {exc.reason}")
        else:
            self.record.reason = f"{socket_error}: {exc.strerror or exc}"

    def _drop(self, reason: str) -> None:
        self.record.reason = reason
        log.warning("%s: client dropped: %s", self.label, reason)

    def _dispatch(self, msg: m.Message) -> None:
        hdr = msg.header
        if hdr.is_reply:
            raise m.VfioUserProtocolError(f"a reply ({hdr.command_name()}) where a command was expected "
                                          "(this server sends no commands)")
        if not self.negotiated and hdr.command != m.Command.VERSION:
            raise m.VfioUserProtocolError(f"{hdr.command_name()} before VERSION")
        handler = self._handlers.get(hdr.command)
        try:
            if handler is None:
                known = hdr.command in m.Command._value2member_map_
                raise Refused(errno.ENOTSUP if known else errno.ENOSYS,
                              f"{hdr.command_name()} is not {'supported' if known else 'a command'} here")
            try:
                payload = handler(msg)
            except OSError as exc:  # a system call on the client's behalf failed: its request is refused
                raise Refused(exc.errno or errno.EIO, f"{exc.strerror or exc}") from None
        except Refused as exc:
            log.debug("%s: %s refused: %s", self.label, hdr.command_name(), exc.reason)
            if not hdr.no_reply:
                m.send_message(self.sock, m.reply(hdr, errno=exc.code))
            return
        if not hdr.no_reply:
            m.send_message(self.sock, m.reply(hdr, payload), payload)

    @staticmethod
    def _fds(msg: m.Message, allowed: tuple[int, ...]) -> None:
        if len(msg.fds) not in allowed:
            raise m.VfioUserProtocolError(f"{msg.header.command_name()} came with {len(msg.fds)} fds "
                                          f"({' or '.join(map(str, allowed))} expected)")

    # --- negotiation and information ---------------------------------------------------------

    def _version(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        if self.negotiated:
            raise m.VfioUserProtocolError("VERSION sent twice")
        ver = m.Version.unpack(msg.payload)
        if ver.major != m.VERSION_MAJOR:
            raise m.VfioUserProtocolError(f"protocol major version {ver.major} (this server speaks "
                                          f"{m.VERSION_MAJOR})")
        self.negotiated = True
        self.client_caps = ver.caps
        theirs = ver.caps.bench
        ours = SERVER_CAPS.bench or m.BenchCaps()
        if self.port is None:  # this device has no bench port to export
            ours = m.BenchCaps(ours.ioeventfd, ours.dma_faults, False)
        self.bench = ours.common(theirs) if theirs else m.BenchCaps()
        # The reply's capabilities are a subset of the proposal: ours only where the client named them.
        caps = m.Capabilities(SERVER_CAPS.max_msg_fds, SERVER_CAPS.max_data_xfer_size, SERVER_CAPS.max_dma_maps,
                              SERVER_CAPS.pgsizes, self.bench if theirs is not None else None)
        log.info("%s: client speaks vfio-user %d.%d%s", self.label, ver.major, ver.minor,
                 f", vdpa_bench {self.bench}" if theirs is not None else "")
        return m.Version(m.VERSION_MAJOR, min(ver.minor, m.VERSION_MINOR), caps).pack()

    def _device_info(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        m.DeviceInfo.unpack(msg.payload, reply=False)
        return m.DeviceInfo(16, m.DeviceFlag.RESET | m.DeviceFlag.PCI, m.PCI_NUM_REGIONS, m.PCI_NUM_IRQS).pack()

    def _region_info(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        req = m.RegionInfo.unpack_request(msg.payload)
        if req.index >= m.PCI_NUM_REGIONS:
            raise Refused(errno.EINVAL, f"region {req.index} (the device has {m.PCI_NUM_REGIONS})")
        info = self.dev.region_info(req.index)
        flags = m.RegionFlag(int(info.flags) & int(m.RegionFlag.READ | m.RegionFlag.WRITE))
        # Every region is trapped (register side effects need the access): no mmap is offered.
        return m.RegionInfo(req.index, flags, info.size).pack_reply(req.argsz)

    def _irq_info(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        req = m.IrqInfo.unpack(msg.payload, reply=False)
        if req.index >= m.PCI_NUM_IRQS:
            raise Refused(errno.EINVAL, f"irq index {req.index} (the device has {m.PCI_NUM_IRQS})")
        count = self.dev.irq_count(req.index)
        flags = m.IrqInfoFlag.EVENTFD if count else m.IrqInfoFlag.NONE
        return m.IrqInfo(req.index, flags, count).pack()

    # --- DMA ---------------------------------------------------------------------------------

    def _dma_map(self, msg: m.Message) -> bytes:
        self._fds(msg, (0, 1))
        req = m.DmaMap.unpack(msg.payload)
        if not msg.fds:
            raise Refused(errno.ENOTSUP, "DMA_MAP without an fd: this server accesses client memory only "
                                         "through mapped fds (no DMA_READ/DMA_WRITE)")
        if len(self.dev.endpoint.iommu.mappings()) >= SERVER_CAPS.max_dma_maps:
            raise Refused(errno.ENOSPC, f"{SERVER_CAPS.max_dma_maps} DMA maps already")
        perm = DmaPerm(int(req.flags))
        for iova, size, _ in self.dev.endpoint.iommu.mappings():
            if req.address < iova + size and iova < req.address + req.size:
                raise Refused(errno.EEXIST, f"DMA_MAP [{req.address:#x}, +{req.size:#x}) overlaps "
                                            f"[{iova:#x}, +{size:#x})")
        fd = msg.fds[0]
        st = os.fstat(fd)
        # Touching a shared mapping beyond the end of its file kills the process (SIGBUS): refuse it here.
        if not stat.S_ISREG(st.st_mode) or req.offset + req.size > st.st_size:
            raise Refused(errno.EINVAL, f"DMA_MAP [{req.address:#x}, +{req.size:#x}) at offset {req.offset:#x}: "
                                        f"the fd is not a file of at least {req.offset + req.size:#x} bytes")
        try:
            # The IOMMU mmaps the fd; the mapping outlives the descriptor, closed after this message.
            self.dev.dma_map(req.address, req.size, fd, req.offset, perm)
        except PciError as exc:
            raise Refused(errno.EINVAL, str(exc)) from None
        return b""

    def _dma_unmap(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        req = m.DmaUnmap.unpack(msg.payload)
        exact = any(iova == req.address and size == req.size for iova, size, _ in self.dev.endpoint.iommu.mappings())
        if not exact:
            raise Refused(errno.EINVAL, f"DMA_UNMAP [{req.address:#x}, +{req.size:#x}) matches no mapping")
        self.dev.dma_unmap(req.address, req.size)
        return m.DmaUnmap(req.address, req.size, req.argsz).pack()

    def _dma_faults(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        req = m.BenchDmaFaults.unpack_request(msg.payload)
        if not self.bench.dma_faults:
            raise Refused(errno.ENOTSUP, "BENCH_DMA_FAULTS without the negotiated capability")
        room = min(req.argsz, SERVER_CAPS.max_data_xfer_size) - m.BenchDmaFaults.REPLY.size
        self.faults += self.dev.dma_faults()
        out: list[m.FaultRecord] = []
        while self.faults:
            f = self.faults[0]
            rec = m.FaultRecord(f.iova, f.size, int(f.access), f.reason)
            size = len(rec.pack())
            if size > room and out:  # the rest waits for the next request
                return m.BenchDmaFaults(m.FaultsFlag.MORE, tuple(out)).pack_reply()
            room -= size
            out.append(rec)
            self.faults.pop(0)
        return m.BenchDmaFaults(m.FaultsFlag.NONE, tuple(out)).pack_reply()

    # --- interrupts --------------------------------------------------------------------------

    def _set_irqs(self, msg: m.Message) -> bytes:
        req = m.IrqSet.unpack(msg.payload)
        if req.index >= m.PCI_NUM_IRQS:
            raise Refused(errno.EINVAL, f"irq index {req.index}")
        available = self.dev.irq_count(req.index)
        kind, action = req.data_kind, req.action
        if kind is m.IrqSetFlag.DATA_EVENTFD:
            self._fds(msg, (0, req.count))
        else:
            self._fds(msg, (0,))
        if req.count == 0:  # disable the whole index
            self._bind(req.index, 0, [], msg)
            return b""
        if req.start + req.count > available:
            raise Refused(errno.EINVAL, f"irq index {req.index}: vectors {req.start}..{req.start + req.count - 1} "
                                        f"of {available}")
        if action is not m.IrqSetFlag.ACTION_TRIGGER:
            raise Refused(errno.ENOTSUP, "MASK/UNMASK actions are not supported (the device masks through "
                                         "its MSI-X table)")
        if kind is m.IrqSetFlag.DATA_EVENTFD:
            _require_eventfds(msg.fds)
            fds: list[int | None] = list(msg.fds) if msg.fds else [None] * req.count
            self._bind(req.index, req.start, fds, msg)
            return b""
        # DATA_NONE / DATA_BOOL with TRIGGER: the client fires the interrupts itself.
        for i in range(req.count):
            if kind is m.IrqSetFlag.DATA_NONE or req.data[i]:
                fd = self.irq_fds.get((req.index, req.start + i))
                if fd is not None:
                    os.eventfd_write(fd, 1)
        return b""

    def _bind(self, index: int, start: int, fds: list[int | None], msg: m.Message) -> None:
        try:
            self.dev.set_irqs(index, start, fds)
        except PciError as exc:
            raise Refused(errno.EINVAL, str(exc)) from None
        # Bound: this session owns the new fds and closes those they replaced (no longer signalled,
        # MSI-X binding and delivery share one lock).
        msg.fds.clear()
        span = range(start, start + len(fds)) if fds else range(1 << 32)
        for key in [k for k in self.irq_fds if k[0] == index and k[1] in span]:
            fd = self.irq_fds.pop(key, None)
            if fd is not None:
                os.close(fd)
        for i, new in enumerate(fds):
            if new is not None:
                self.irq_fds[(index, start + i)] = new

    # --- region access -----------------------------------------------------------------------

    def _region_read(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        req = m.RegionAccess.unpack(msg.payload, with_data=False, what="REGION_READ")
        self._check_access(req)
        try:
            data = self.dev.region_read(req.region, req.offset, req.count)
        except PciError as exc:
            raise Refused(errno.EINVAL, str(exc)) from None
        return m.RegionAccess(req.region, req.offset, req.count, data).pack()

    def _region_write(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        req = m.RegionAccess.unpack(msg.payload, with_data=True, what="REGION_WRITE")
        self._check_access(req)
        try:
            self.dev.region_write(req.region, req.offset, req.data)
        except PciError as exc:
            raise Refused(errno.EINVAL, str(exc)) from None
        return m.RegionAccess(req.region, req.offset, req.count).pack()

    @staticmethod
    def _check_access(req: m.RegionAccess) -> None:
        # Bounds are the access layer's (as in process: a BAR access beyond its end is refused,
        # config space beyond 256 bytes reads as all ones).
        if req.count > SERVER_CAPS.max_data_xfer_size:
            raise Refused(errno.EINVAL, f"access of {req.count} bytes exceeds max_data_xfer_size")

    # --- ioeventfds --------------------------------------------------------------------------

    def _ioeventfd(self, msg: m.Message) -> bytes:
        req = m.BenchIoeventfd.unpack(msg.payload)
        self._fds(msg, (0,) if req.flags & m.IoeventfdFlag.REMOVE else (1,))
        if not self.bench.ioeventfd:
            raise Refused(errno.ENOTSUP, "BENCH_IOEVENTFD without the negotiated capability")
        key = (req.index, req.offset, req.cookie)
        if req.flags & m.IoeventfdFlag.REMOVE:
            self._remove_ioeventfd(key)
            return b""
        info = self.dev.region_info(req.index)
        if req.index == RegionIndex.CONFIG or not info.size or req.offset + req.width > info.size:
            raise Refused(errno.EINVAL, f"ioeventfd at region {req.index} {req.offset:#x}+{req.width}")
        _require_eventfds(msg.fds)
        self._remove_ioeventfd(key)
        entry = _Ioeventfd(msg.take_fd(), req.index, req.offset, req.width,
                           req.datamatch if req.flags & m.IoeventfdFlag.DATAMATCH else None)
        with self._io_lock:
            self.ioeventfds[key] = entry
        if self._io_loop is None:
            self._io_loop = EventLoop(f"{self.label}-kicks")
        self._io_loop.watch(entry.fd, lambda: self._kick(key, entry))
        return b""

    def _kick(self, key: tuple[int, int, int], entry: _Ioeventfd) -> None:
        """In the ioeventfd thread: the kick eventfd fired, perform the doorbell write."""
        with self._io_lock:
            if self.ioeventfds.get(key) is not entry:
                return  # removed while the loop was already dispatching it
            consume_eventfd(entry.fd)
            data = (entry.value or 0).to_bytes(entry.width, "little")
            self.dev.region_write(entry.index, entry.offset, data)

    def _remove_ioeventfd(self, key: tuple[int, int, int]) -> None:
        with self._io_lock:
            entry = self.ioeventfds.pop(key, None)
            if entry is None:
                return
            if self._io_loop is not None:
                self._io_loop.unwatch(entry.fd)
            os.close(entry.fd)

    # --- bench port --------------------------------------------------------------------------

    def _bench_port(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        req = m.BenchPort.unpack(msg.payload)
        if not self.bench.port or self.port is None:
            raise Refused(errno.ENOTSUP, "BENCH_PORT without the negotiated capability")
        if req.op is m.PortOp.STATE:
            errors = tuple(self.errors.driver_errors()) if self.errors is not None else ()
            return m.PortState(bool(self.port.link_up), bytes(self.port.mac), errors).pack()
        if req.op is m.PortOp.SET_LINK:
            if self.link_at_start is None:
                self.link_at_start = bool(self.port.link_up)
            self.port.set_link(bool(req.arg))
            return b""
        if len(req.data) > MAX_PORT_FRAME:
            raise Refused(errno.EMSGSIZE, f"frame of {len(req.data)} bytes")
        self.port.receive(req.data)
        return b""

    # --- reset and release -------------------------------------------------------------------

    def _reset(self, msg: m.Message) -> bytes:
        self._fds(msg, (0,))
        if msg.payload:
            raise m.VfioUserProtocolError(f"DEVICE_RESET with {len(msg.payload)} payload bytes")
        self.dev.reset()
        return b""

    def _on_fault(self, fault: DmaFault) -> None:
        if not self._fault_logged:
            self._fault_logged = True
            log.warning("%s: DMA fault at IOVA %#x (+%#x): %s", self.label, fault.iova, fault.size, fault.reason)

    def release(self) -> None:
        """The client is gone: reset the device, drop its ioeventfds and interrupts, put the link back as the
        client found it, and unmap its memory (every fd it passed is closed)."""
        self.dev.reset()  # quiesces the device before its eventfds and memory go away
        self.dev.endpoint.iommu.on_fault = None
        for key in list(self.ioeventfds):
            self._remove_ioeventfd(key)
        if self._io_loop is not None:
            self._io_loop.close()
            self._io_loop = None
        for index in (IrqIndex.MSIX, IrqIndex.INTX):
            if self.dev.irq_count(index):
                with contextlib.suppress(PciError):
                    self.dev.set_irqs(index, 0, [])
        for fd in self.irq_fds.values():
            os.close(fd)
        self.irq_fds.clear()
        if self.link_at_start is not None and self.port is not None:  # the cable as the client found it
            self.port.set_link(self.link_at_start)
        for iova, size, _ in self.dev.endpoint.iommu.mappings():  # through the device: it may mirror them (RTL)
            with contextlib.suppress(PciError):
                self.dev.dma_unmap(iova, size)
        self.dev.endpoint.iommu.unmap_all()
        left = self.dev.dma_faults()
        if left:
            log.info("%s: %d DMA fault(s) the client never collected, first: %s", self.label, len(left), left[0])


class VfioUserServer(UnixSocketServer[SessionRecord]):
    """Listens on ``path``; each connection is served by a device from ``factory`` (reused after a reset)."""

    def __init__(self, path: str, factory: DeviceFactory, *, name: str = "vfio-user", max_devices: int = 8,
                 backlog: int = 8) -> None:
        self.factory = factory
        self.max_devices = max_devices
        self.devices: list[ExportedDevice] = []
        self._idle: list[ExportedDevice] = []
        self._free = threading.Condition()  # guards the device pool; notified when a device goes idle
        self._building = 0
        super().__init__(path, backlog=backlog, name=name)

    def new_connection(self, id: int, sock: socket.socket) -> SessionRecord:
        return SessionRecord(id, sock)

    def _acquire(self, record: SessionRecord) -> ExportedDevice | None:
        """An idle device (reset when its last client left), a new one, or after a bounded wait for one."""
        with self._free:
            while True:
                if self.closed:
                    return None
                if self._idle:
                    return self._idle.pop()
                if self._building + len(self.devices) < self.max_devices:
                    self._building += 1
                    break
                if not self._free.wait(ACQUIRE_TIMEOUT):
                    record.reason = f"all {self.max_devices} devices stayed in use for {ACQUIRE_TIMEOUT}s"
                    return None
        try:
            dev = self.factory()
        except Exception as exc:
            record.reason = f"cannot build the device: {exc}"
            return None
        finally:
            with self._free:
                self._building -= 1
        with self._free:
            self.devices.append(dev)
        return dev

    def serve_connection(self, record: SessionRecord) -> None:
        label = f"{self.name}#{record.id}"
        dev = self._acquire(record)
        if dev is None:
            if record.reason:
                log.warning("%s: refused: %s", label, record.reason)
            return
        log.info("%s: client connected (device %s)", label, dev.name)
        record.session = Session(record, dev, label)
        record.session.run()

    def release_connection(self, record: SessionRecord) -> None:
        session, record.session = record.session, None
        if session is None:
            return
        dev = session.dev
        try:
            session.release()
        finally:
            with self._free:
                closing = self.closed  # read once: close() takes the idle devices after this
                if closing:
                    self.devices.remove(dev)
                else:
                    self._idle.append(dev)
                    self._free.notify()
            if closing:
                dev.close()

    def connection_ended(self, record: SessionRecord) -> None:
        how = f"dropped ({record.reason})" if record.reason else "disconnected"
        log.info("%s#%d: client %s after %d message(s); device reset", self.name, record.id, how, record.handled)

    def stopping(self) -> None:
        with self._free:
            self._free.notify_all()  # clients waiting for a device give up

    def close(self, timeout: float = JOIN_TIMEOUT) -> None:
        super().close(timeout)
        with self._free:
            idle, self._idle = self._idle, []
            for dev in idle:
                self.devices.remove(dev)
        for dev in idle:
            dev.close()
