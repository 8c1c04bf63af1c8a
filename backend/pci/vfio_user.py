"""``VfioUserPciDevice``: a :class:`~backend.pci.device.PciDevice` served by another process over vfio-user.

The client side of the protocol (messages in :mod:`backend.pci.vfio_user_msg`): version and
capability negotiation, device/region/irq information, region reads and writes, DMA maps that
always pass the memory fd (the device process maps guest memory itself: no data crosses the
socket), interrupts bound to eventfds the device process signals, and function reset.

Beyond standard vfio-user, when the server names the ``vdpa_bench`` capability:

* :meth:`ioeventfd` hands the kick eventfd to the device process (``BENCH_IOEVENTFD``), which
  waits on it and performs the doorbell write itself, so a frontend's kicks reach the device
  without the backend. Against a server without it, ``ioeventfd`` returns False and the vendor
  driver relays (and says so).
* :meth:`dma_faults` drains the faults the device process's IOMMU recorded (``BENCH_DMA_FAULTS``);
  without it a fault cannot be observed from here and ``dma_faults`` raises, never returning a
  silent empty list.
* :attr:`model` is the device's bench port (``BENCH_PORT``): its link, its MAC, the driver errors
  it logged, and frames delivered as if from the wire; the checks use it as they use a ``sim:``
  target's model for stimuli. None when the server has no such port.

A server that cannot carry commands of its own (a device process on libvfio-user, :mod:`sim.rtl.vfu_export`)
may offer them on a second socket, the bench side channel: with ``bench=PATH`` the extensions go over a
connection of their own to PATH (vfio-user framing, ``VERSION`` negotiated there), everything else over the
main one.

Target spec: ``vfio-user:PATH[,wire=loopback|none][,bench=PATH]`` (the server's unix socket; ``wire`` as for
``vfio:``; ``bench`` the side channel's socket).
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import logging
import mmap
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from backend.pci import vfio_user_msg as m
from backend.pci.abilities import Abilities, Lacking, WireKind
from backend.pci.device import (
    DmaFault,
    DmaPerm,
    PciError,
    RegionFlags,
    RegionInfo,
)
from backend.targets import parse_spec

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Fds this client accepts in one message (only region info replies carry any).
CLIENT_MAX_FDS = 8
#: Bound on waiting for one reply (a device reset included).
DEFAULT_TIMEOUT = 10.0
CLIENT_CAPS = m.Capabilities(max_msg_fds=CLIENT_MAX_FDS, max_data_xfer_size=m.DEFAULT_MAX_DATA_XFER,
                             bench=m.BenchCaps(ioeventfd=True, dma_faults=True, port=True))
#: The extension commands: over the bench side channel when there is one.
BENCH_COMMANDS = frozenset({m.Command.BENCH_IOEVENTFD, m.Command.BENCH_DMA_FAULTS, m.Command.BENCH_PORT})


class VfioUserError(PciError):
    """The server refused a request (``errno`` from the error reply) or the connection failed."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass
class _Mapped:
    iova: int
    size: int


class _Channel:
    """One connection: its socket, the lock around a request and its reply, the next message id."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.next_id = 0


class VfioUserPciDevice:
    """Implements :class:`~backend.pci.device.PciDevice` over a vfio-user socket.

    One request is in flight at a time (a lock around send and reply): the device sees register
    accesses in program order, as on a PCI bus with one outstanding non-posted request. With
    ``bench_path`` the extension commands go over a second connection to that socket (the bench side
    channel, ``VERSION`` negotiated on it too); its requests do not wait for the main connection's.
    """

    def __init__(self, path: str, *, name: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 wire: WireKind = WireKind.UNKNOWN, time_scale: float = 1.0, bench_path: str | None = None) -> None:
        self.path = path
        self.bench_path = bench_path
        self.wire = wire
        self.time_scale = time_scale
        self.name = name if name is not None else f"vfio-user:{path}"
        self.timeout = timeout
        self._state = threading.Lock()  # the map and ioeventfd tables
        self._closed = False
        self._broken: str | None = None
        self._maps: list[_Mapped] = []
        self._ioeventfds: set[tuple[int, int, int]] = set()
        self._mmaps: dict[int, mmap.mmap] = {}
        self.model: BenchPort | None = None
        # Until VERSION says otherwise: the specification's defaults.
        self.xfer = m.DEFAULT_MAX_DATA_XFER
        self.max_send_fds = m.DEFAULT_MAX_MSG_FDS
        self._main = _Channel(self._connect(path))
        self._sock = self._main.sock
        self._lock = self._main.lock  # one request in flight
        self._side: _Channel | None = None
        try:
            self.server_version, self.server_caps = self._negotiate(self._main)
            offered = self.server_caps.bench
            if bench_path is not None:
                self._side = _Channel(self._connect(bench_path, side=True))
                offered = self._negotiate(self._side)[1].bench
            self.bench = (offered or m.BenchCaps()).common(CLIENT_CAPS.bench or m.BenchCaps())
            self.xfer = min(self.server_caps.max_data_xfer_size, CLIENT_CAPS.max_data_xfer_size)
            self.max_send_fds = max(1, self.server_caps.max_msg_fds)
            info = self._request(m.Command.DEVICE_GET_INFO, m.DeviceInfo().pack(),
                                 lambda p: m.DeviceInfo.unpack(p, reply=True))
            if not info.flags & m.DeviceFlag.PCI:
                raise VfioUserError(f"{self.name}: the server's device is not a PCI device (flags {info.flags!r})")
            self.device_info = info
            self.device_flags = info.flags
            self._regions = {i: self._region_info(i) for i in range(info.num_regions)}
            self._irqs = {i: self._irq_info(i) for i in range(info.num_irqs)}
            self.model = BenchPort(self) if self.bench.port else None
        except BaseException:
            self.close()
            raise

    # --- transport -----------------------------------------------------------------------------

    def _connect(self, path: str, *, side: bool = False) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            what = f"cannot connect the bench side channel {path}" if side else "cannot connect"
            raise VfioUserError(f"{self.name}: {what}: {exc.strerror or exc}", exc.errno or 0) from None
        return sock

    def _negotiate(self, channel: _Channel) -> tuple[m.Version, m.Capabilities]:
        payload = m.Version(m.VERSION_MAJOR, m.VERSION_MINOR, CLIENT_CAPS).pack()
        got = self._request(m.Command.VERSION, payload, m.Version.unpack, channel=channel)
        if got.major != m.VERSION_MAJOR or got.minor > m.VERSION_MINOR:
            side = " (bench side channel)" if channel is not self._main else ""
            raise VfioUserError(f"{self.name}: server answered version {got.major}.{got.minor} to "
                                f"{m.VERSION_MAJOR}.{m.VERSION_MINOR}{side}")
        return got, got.caps

    def _fail(self, reason: str) -> VfioUserError:
        """The stream cannot be trusted any more: close it (and the side channel), later calls fail at once."""
        self._broken = reason
        for channel in (self._main, self._side):
            if channel is not None:
                with contextlib.suppress(OSError):
                    channel.sock.shutdown(socket.SHUT_RDWR)
        return VfioUserError(f"{self.name}: {reason}", errno_mod.EIO)

    def _call(self, cmd: m.Command, payload: bytes = b"", fds: Sequence[int] = ()) -> bytes:
        data, received = self._exchange(cmd, payload, fds)
        for fd in received:
            os.close(fd)
        return data

    def _request(self, cmd: m.Command, payload: bytes, decode: Callable[[bytes], T], fds: Sequence[int] = (),
                 channel: _Channel | None = None) -> T:
        """Send, wait for the reply, decode it; a malformed reply breaks the connection."""
        data, received = self._exchange(cmd, payload, fds, channel)
        for fd in received:
            os.close(fd)
        try:
            return decode(data)
        except m.VfioUserProtocolError as exc:
            raise self._fail(f"malformed {cmd.name} reply: {exc.reason}") from None

    def _exchange(self, cmd: m.Command, payload: bytes, fds: Sequence[int],
                  channel: _Channel | None = None) -> tuple[bytes, list[int]]:
        """One request and its reply on ``channel`` (default: the side channel for an extension command when there
        is one, else the main connection)."""
        if channel is None:
            channel = self._side if self._side is not None and cmd in BENCH_COMMANDS else self._main
        with channel.lock:
            if self._closed:
                raise VfioUserError(f"{self.name}: closed", errno_mod.EBADF)
            if self._broken is not None:
                raise VfioUserError(f"{self.name}: connection lost ({self._broken})", errno_mod.EIO)
            msg_id = channel.next_id
            channel.next_id = (channel.next_id + 1) & 0xFFFF
            try:
                m.send_message(channel.sock, m.command(msg_id, cmd, payload), payload, fds)
                while True:
                    msg = m.recv_message(channel.sock, max_size=m.HEADER_SIZE + 64 + self.xfer,
                                         max_fds=CLIENT_MAX_FDS)
                    if not msg.header.is_reply:
                        self._refuse_server_command(channel, msg)
                        continue
                    break
            except TimeoutError:
                raise self._fail(f"no reply to {cmd.name} within {self.timeout}s") from None
            except (m.ConnectionClosed, BrokenPipeError, ConnectionResetError):
                raise self._fail(f"server closed the connection during {cmd.name}") from None
            except m.VfioUserProtocolError as exc:
                raise self._fail(f"protocol error in the reply to {cmd.name}: {exc.reason}") from None
            except OSError as exc:
                raise self._fail(f"{cmd.name}: {exc.strerror or exc}") from None
            hdr = msg.header
            if hdr.msg_id != msg_id or hdr.command != cmd:
                msg.close_fds()
                raise self._fail(f"reply id {hdr.msg_id} ({hdr.command_name()}) to request {msg_id} ({cmd.name})")
            if hdr.error:
                msg.close_fds()
                code = hdr.errno or errno_mod.EIO
                raise VfioUserError(f"{self.name}: {cmd.name} refused: {os.strerror(code)}", code)
            return msg.payload, msg.fds

    def _refuse_server_command(self, channel: _Channel, msg: m.Message) -> None:
        """This client shares memory by fd only: a server's DMA_READ/DMA_WRITE (or anything else) is refused."""
        msg.close_fds()
        log.warning("%s: server sent %s; refused (DMA goes through the mapped fds)", self.name,
                    msg.header.command_name())
        if not msg.header.no_reply:
            m.send_message(channel.sock, m.reply(msg.header, errno=errno_mod.ENOTSUP))

    # --- information ---------------------------------------------------------------------------

    def _region_info(self, index: int) -> m.RegionInfo:
        req = m.RegionInfo.request(index)
        payload, fds = self._exchange(m.Command.DEVICE_GET_REGION_INFO, req.pack_request(), ())
        try:
            try:
                info = m.RegionInfo.unpack_reply(payload)
            except m.VfioUserProtocolError as exc:
                raise self._fail(f"malformed DEVICE_GET_REGION_INFO reply: {exc.reason}") from None
            if info.index != index:
                raise self._fail(f"region info for {info.index} in reply to {index}")
            if info.flags & m.RegionFlag.MMAP and fds and info.size:
                self._map_region(index, info, fds[0])
        finally:
            for fd in fds:
                os.close(fd)
        return info

    def _map_region(self, index: int, info: m.RegionInfo, fd: int) -> None:
        """Map the whole region when the server allows it; a sparse region stays trapped (the API has one view)."""
        sparse = [c for c in info.caps if isinstance(c, m.SparseMmapCap)]
        if sparse and sparse[0].areas != ((0, info.size),):
            return
        prot = (mmap.PROT_READ if info.flags & m.RegionFlag.READ else 0) | \
               (mmap.PROT_WRITE if info.flags & m.RegionFlag.WRITE else 0)
        try:
            self._mmaps[index] = mmap.mmap(fd, info.size, mmap.MAP_SHARED, prot, offset=info.offset)
        except (OSError, ValueError) as exc:
            log.warning("%s: region %d offered for mmap but mapping failed (%s); accesses stay trapped",
                        self.name, index, exc)

    def _irq_info(self, index: int) -> m.IrqInfo:
        info = self._request(m.Command.DEVICE_GET_IRQ_INFO, m.IrqInfo(index).pack(),
                             lambda p: m.IrqInfo.unpack(p, reply=True))
        if info.index != index:
            raise self._fail(f"irq info for {info.index} in reply to {index}")
        return info

    def region_info(self, index: int) -> RegionInfo:
        info = self._regions.get(index)
        if info is None:
            return RegionInfo(index, 0, RegionFlags(0))
        flags = RegionFlags(int(info.flags) & int(RegionFlags.READ | RegionFlags.WRITE))
        if index in self._mmaps:
            flags |= RegionFlags.MMAP
        return RegionInfo(index, info.size, flags)

    def irq_count(self, index: int) -> int:
        info = self._irqs.get(index)
        return info.count if info is not None and info.flags & m.IrqInfoFlag.EVENTFD else 0

    # --- regions -------------------------------------------------------------------------------

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            n = min(size - len(out), self.xfer)
            req = m.RegionAccess(index, offset + len(out), n)
            try:
                got = self._request(m.Command.REGION_READ, req.pack(), _read_reply)
            except VfioUserError as exc:
                raise self._refused(exc, m.Command.REGION_READ, req) from None
            if (got.region, got.offset, got.count) != (req.region, req.offset, req.count):
                raise self._fail(f"REGION_READ reply for region {got.region} {got.offset:#x}+{got.count} to "
                                 f"{req.region} {req.offset:#x}+{req.count}")
            out += got.data
        return bytes(out)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        data = bytes(data)
        pos = 0
        while pos < len(data) or (pos == 0 and not data):
            chunk = data[pos:pos + self.xfer]
            req = m.RegionAccess(index, offset + pos, len(chunk), chunk)
            try:
                got = self._request(m.Command.REGION_WRITE, req.pack(), _write_reply)
            except VfioUserError as exc:
                raise self._refused(exc, m.Command.REGION_WRITE, req) from None
            if (got.region, got.offset, got.count) != (req.region, req.offset, req.count):
                raise self._fail(f"REGION_WRITE reply for region {got.region} {got.offset:#x}+{got.count} to "
                                 f"{req.region} {req.offset:#x}+{req.count}")
            pos += len(chunk)
            if not data:
                break

    def _refused(self, exc: VfioUserError, cmd: m.Command, req: m.RegionAccess) -> VfioUserError:
        """A refused region access named by region and range (the server's errno kept); a lost or closed
        connection as it was reported."""
        if self._broken is not None or self._closed:
            return exc
        return VfioUserError(f"{self.name}: {cmd.name} of region {req.region} [{req.offset:#x}, +{req.count:#x}) "
                             f"refused: {os.strerror(exc.errno)} (errno {exc.errno})", exc.errno)

    def region_mmap(self, index: int) -> memoryview | None:
        mm = self._mmaps.get(index)
        return memoryview(mm) if mm is not None else None

    # --- DMA -----------------------------------------------------------------------------------

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        flags = m.DmaFlag(int(perm) & int(m.DmaFlag.READ | m.DmaFlag.WRITE))
        req = m.DmaMap(flags, offset, iova, size)
        try:
            self._call(m.Command.DMA_MAP, req.pack(), [fd])
        except VfioUserError as exc:
            raise VfioUserError(f"{self.name}: dma_map [{iova:#x}, +{size:#x}) offset {offset:#x}: "
                                f"{os.strerror(exc.errno) if exc.errno else exc}", exc.errno) from None
        with self._state:
            self._maps.append(_Mapped(iova, size))

    def dma_unmap(self, iova: int, size: int) -> None:
        """Unmap every mapping inside [iova, iova+size) (vfio-user unmaps exact entries, one message each)."""
        end = iova + size
        with self._state:
            inside = [mp for mp in self._maps if mp.iova >= iova and mp.iova + mp.size <= end]
            for mp in self._maps:
                if mp not in inside and iova < mp.iova + mp.size and mp.iova < end:
                    raise VfioUserError(f"{self.name}: dma_unmap [{iova:#x}, {end:#x}) splits "
                                        f"[{mp.iova:#x}, {mp.iova + mp.size:#x})", errno_mod.EINVAL)
        for mp in inside:
            got = self._request(m.Command.DMA_UNMAP, m.DmaUnmap(mp.iova, mp.size).pack(), m.DmaUnmap.unpack)
            if (got.address, got.size) != (mp.iova, mp.size):
                raise self._fail(f"DMA_UNMAP reply for [{got.address:#x}, +{got.size:#x})")
            with self._state:
                self._maps.remove(mp)

    def dma_faults(self) -> list[DmaFault]:
        if not self.bench.dma_faults:
            raise VfioUserError(f"{self.name}: the server reports no DMA faults (no vdpa_bench dma_faults "
                                "capability): faults cannot be observed from the client", errno_mod.ENOTSUP)
        out: list[DmaFault] = []
        while True:
            got = self._request(m.Command.BENCH_DMA_FAULTS, m.BenchDmaFaults(argsz=self.xfer).pack_request(),
                                m.BenchDmaFaults.unpack_reply)
            out += [DmaFault(f.iova, f.size, DmaPerm(f.access), f.reason) for f in got.faults]
            if not got.flags & m.FaultsFlag.MORE:
                return out

    # --- interrupts ----------------------------------------------------------------------------

    def set_irqs(self, index: int, start: int, fds: Sequence[int | None]) -> None:
        """Runs of eventfds are bound with DATA_EVENTFD (at most ``max_msg_fds`` per message); runs of
        None are unbound with DATA_EVENTFD and no fds; an empty list disables the index."""
        trigger = m.IrqSetFlag.ACTION_TRIGGER
        if not fds:
            self._call(m.Command.DEVICE_SET_IRQS, m.IrqSet(m.IrqSetFlag.DATA_NONE | trigger, index, 0, 0).pack())
            return
        i = 0
        while i < len(fds):
            j = i
            if fds[i] is None:
                while j < len(fds) and fds[j] is None:
                    j += 1
                run: list[int] = []
            else:
                while j < len(fds) and fds[j] is not None and j - i < self.max_send_fds:
                    j += 1
                run = [fd for fd in fds[i:j] if fd is not None]
            req = m.IrqSet(m.IrqSetFlag.DATA_EVENTFD | trigger, index, start + i, j - i)
            self._call(m.Command.DEVICE_SET_IRQS, req.pack(), run)
            i = j

    # --- ioeventfd -----------------------------------------------------------------------------

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        if not self.bench.ioeventfd:
            return False
        flags = m.IoeventfdFlag.DATAMATCH if value is not None else m.IoeventfdFlag(0)
        req = m.BenchIoeventfd(flags, index, width, offset, value or 0, fd)
        self._call(m.Command.BENCH_IOEVENTFD, req.pack(), [fd])
        with self._state:
            self._ioeventfds.add((index, offset, fd))
        return True

    def ioeventfd_remove(self, index: int, offset: int, fd: int) -> None:
        with self._state:
            if (index, offset, fd) not in self._ioeventfds:
                return
            self._ioeventfds.discard((index, offset, fd))
        req = m.BenchIoeventfd(m.IoeventfdFlag.REMOVE, index, 1, offset, 0, fd)
        self._call(m.Command.BENCH_IOEVENTFD, req.pack())

    # --- bench port ----------------------------------------------------------------------------

    def bench_port(self, op: m.PortOp, arg: int = 0, data: bytes = b"") -> bytes:
        if not self.bench.port:
            raise VfioUserError(f"{self.name}: the server offers no bench port", errno_mod.ENOTSUP)
        return self._call(m.Command.BENCH_PORT, m.BenchPort(op, arg, data).pack())

    # --- lifecycle -----------------------------------------------------------------------------

    def abilities(self) -> Abilities:
        """The bench port and fault list where the server offers them; DMA is served in the server's
        process, so its accesses are not seen as they happen, and the wire is what the spec said."""
        return Abilities(
            wire=self.wire,
            wire_why=(f"{self.name}: the device process does not say what its port is connected to"
                      if self.wire is WireKind.UNKNOWN else f"{self.name}: wire={self.wire} given in the target"),
            port=self.model if self.model is not None else Lacking(f"{self.name}: the server offers no bench port"),
            errors=self.model if self.model is not None else Lacking(
                f"{self.name}: the server offers no bench port (no recorded driver errors)"),
            crashes=Lacking(f"{self.name}: the device process keeps failures of its own thread to itself"),
            dma_observer=Lacking(f"{self.name}: device DMA happens in the server's process, not seen as it happens"),
            faults=self if self.bench.dma_faults else Lacking(
                f"{self.name}: the server reports no DMA faults (no vdpa_bench dma_faults capability)"),
            time_scale=self.time_scale,
        )

    def reset(self) -> None:
        if not self.device_flags & m.DeviceFlag.RESET:
            raise VfioUserError(f"{self.name}: the device does not support reset", errno_mod.ENOTSUP)
        self._call(m.Command.DEVICE_RESET)

    def peer_fd(self) -> int | None:
        """The connection's socket fd, to be polled for hang-up only (its data belongs to this client); None
        once closed."""
        return None if self._closed else self._sock.fileno()

    def close(self) -> None:
        """Hang up; the server drops this client's mappings, interrupts and ioeventfds and resets the device."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for mm in self._mmaps.values():
                with contextlib.suppress(BufferError):
                    mm.close()
            self._mmaps.clear()
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        side = self._side
        if side is not None:
            with side.lock:
                with contextlib.suppress(OSError):
                    side.sock.shutdown(socket.SHUT_RDWR)
                side.sock.close()


class BenchPort:
    """The bench-facing side of the device in the server's process: link, MAC, logged errors, wire input."""

    def __init__(self, dev: VfioUserPciDevice) -> None:
        self._dev = dev

    def state(self) -> m.PortState:
        data = self._dev.bench_port(m.PortOp.STATE)
        try:
            return m.PortState.unpack(data)
        except m.VfioUserProtocolError as exc:
            raise self._dev._fail(f"malformed BENCH_PORT reply: {exc.reason}") from None

    @property
    def link_up(self) -> bool:
        return self.state().link_up

    @property
    def mac(self) -> bytes:
        return self.state().mac

    @property
    def errors(self) -> list[str]:
        """The driver errors the device logged (each set DEVICE_NEEDS_RESET), oldest first."""
        return list(self.state().errors)

    def driver_errors(self) -> list[str]:
        return self.errors

    def set_link(self, up: bool) -> None:
        """Plug (True) or pull (False) the cable: the device reports a configuration change."""
        self._dev.bench_port(m.PortOp.SET_LINK, int(up))

    def receive(self, frame: bytes) -> None:
        """A frame arriving from the wire; processed by the device before this returns."""
        self._dev.bench_port(m.PortOp.RECEIVE, 0, bytes(frame))


def _read_reply(payload: bytes) -> m.RegionAccess:
    return m.RegionAccess.unpack(payload, with_data=True, what="REGION_READ reply")


def _write_reply(payload: bytes) -> m.RegionAccess:
    return m.RegionAccess.unpack(payload, with_data=False, what="REGION_WRITE reply")


def open_vfio_user(rest: str) -> VfioUserPciDevice:
    """``vfio-user:PATH[,wire=loopback|none][,slowdown=N][,bench=PATH]``: the server's socket path; what the device's
    port is connected to when the bench should not find out itself (default: unknown, probed by the suite); how many
    times slower than hardware the device behind it runs (a simulator: the checks' deadlines stretch by it); and the
    socket of the server's bench side channel, where the extension commands go (a server that cannot carry them on
    its main socket)."""
    path, opts = parse_spec("vfio-user", rest, ("wire", "slowdown", "bench"))
    if not path:
        raise ValueError("vfio-user: target needs the server's socket path: vfio-user:PATH")
    value = opts.get("wire")
    if value is not None and value not in (WireKind.LOOPBACK, WireKind.NONE):
        raise ValueError(f"vfio-user:{rest}: wire={value!r} (known: loopback, none)")
    wire = WireKind(value or WireKind.UNKNOWN)
    time_scale = _slowdown(rest, opts["slowdown"]) if "slowdown" in opts else 1.0
    bench = opts.get("bench")
    if bench is not None and not bench:
        raise ValueError(f"vfio-user:{rest}: bench= needs the side channel's socket path")
    try:
        return VfioUserPciDevice(path, wire=wire, time_scale=time_scale, bench_path=bench)
    except VfioUserError as exc:  # the registry's callers report OSError/ValueError as a bad target
        raise ConnectionError(str(exc)) from None


#: The largest slowdown a target may declare: beyond it a check's one-second deadline would exceed a quarter hour.
MAX_SLOWDOWN = 1000.0


def _slowdown(rest: str, value: str) -> float:
    """``slowdown=N``: a number from 1 to :data:`MAX_SLOWDOWN`."""
    try:
        factor = float(value)
    except ValueError:
        factor = float("nan")
    if not 1.0 <= factor <= MAX_SLOWDOWN:  # also refuses nan
        raise ValueError(f"vfio-user:{rest}: slowdown={value!r} (a number from 1 to {MAX_SLOWDOWN:g})")
    return factor
