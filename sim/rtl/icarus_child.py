"""The device process of ``rtl:...,sim=icarus``: cocotb on Icarus Verilog, the design exported over vfio-user.

``vvp`` loads cocotb, which runs :func:`export` as its one test. It builds the PCI function around
the design with the factory the parent names (``VDPA_ICARUS_FACTORY``, ``module:function`` taking
the spec and an :class:`IcarusRunner`), serves it with :class:`sim.vfio_user.VfioUserServer` on
``VDPA_ICARUS_SOCKET`` and reports readiness on ``VDPA_ICARUS_READY_FD``. It stops when the parent
closes ``VDPA_ICARUS_CONTROL_FD`` (end of file), also when the parent died.

The simulator runs in this process's main thread; the vfio-user sessions run in their own threads.
Their accesses become requests that :meth:`IcarusRunner._serve` (a cocotb coroutine) performs:

The ports come from the design description (``VDPA_ICARUS_DESCRIPTION``), as for the Verilator bridge:

* BAR slaves: cocotbext-axi's ``AxiLiteMaster`` (or ``AxiMaster``, single beats) on each slave port;
* DMA: cocotbext-axi's ``AxiSlave`` on each master whose target is the endpoint's :class:`~sim.iommu.Iommu`
  (the fds the client passed in DMA_MAP, mapped here); a refused access answers SLVERR and is
  recorded as a fault; with interrupts as message writes, a write into the MSI window is the vector;
* frames: ``AxiStreamSource`` on the receive port (tdest = the pair), ``AxiStreamSink`` on the transmit port;
  with one lane per queue pair (``[stream] lanes = "per-pair"``) :class:`PairLanes` drives and collects
  the packed lanes, each with its own handshake;
* interrupts: the ready input held high, each valid pulse is one MSI-X vector request;
* doorbells: the ioeventfds are polled here and become the doorbell write.

While the design has work the clock runs and the coroutine looks at the request queue every
:data:`SLICE_CYCLES` cycles; once the design is idle (the description's ``[idle]``, as the Verilator
bridge tests it) it blocks the simulator in ``poll()`` on the wake, control
and doorbell eventfds, so an idle device costs no CPU and simulated time stands still.
"""

from __future__ import annotations

import importlib
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge, Timer
from cocotbext.axi import (  # type: ignore[import-untyped]
    AxiBus,
    AxiLiteBus,
    AxiLiteMaster,
    AxiMaster,
    AxiSlave,
    AxiStreamBus,
    AxiStreamFrame,
    AxiStreamSink,
    AxiStreamSource,
)

from backend.pci.device import DmaPerm, PciError
from sim.iommu import Iommu
from sim.rtl.bridge import Events
from sim.rtl.description import Description
from sim.rtl.icarus import ENV_CONTROL_FD, ENV_DESCRIPTION, ENV_FACTORY, ENV_READY_FD, ENV_SOCKET, ENV_SPEC
from sim.rtl.icarus_lanes import PairLanes
from sim.rtl.msix import MSI_ADDRESS
from sim.rtl.runner import ClockStats, EventSink
from sim.vfio_user import VfioUserServer
from sim.vfio_user.server import ExportedDevice

LOG = logging.getLogger(__name__)

CLOCK_NS = 10
#: Cycles the design runs between two looks at the request queue while it is busy.
SLICE_CYCLES = 16
#: Bound on one request (a register access waits for the design's AXI4-Lite response).
REQUEST_TIMEOUT = 30.0
MSI_WINDOW = 0x100000

DeviceFactory = Callable[[str, "IcarusRunner", Iommu], ExportedDevice]


class RunnerStopped(PciError):
    """The device process is shutting down: no more accesses."""


@dataclass
class _Request:
    op: str
    args: tuple[Any, ...]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class _IommuTarget:
    """cocotbext-axi's AxiSlave target: DMA through the endpoint's IOMMU (faults recorded there)."""

    def __init__(self, iommu: Iommu) -> None:
        self.iommu = iommu
        self.bus_master = False
        #: with interrupts as message writes: called with the vector of a write into the MSI window
        self.on_msi: Callable[[int], None] | None = None

    def _check(self, address: int, length: int, access: DmaPerm) -> None:
        if not self.bus_master:
            raise self.iommu.fault(address, length, access, "bus mastering is disabled in the PCI command register "
                                                            "(RTL AXI4 beat answered SLVERR)")

    async def read(self, address: int, length: int) -> bytes:
        self._check(address, length, DmaPerm.READ)
        return self.iommu.read(address, length)

    async def write(self, address: int, data: bytes) -> None:
        if self.on_msi is not None and MSI_ADDRESS <= address < MSI_ADDRESS + MSI_WINDOW:
            if not self.bus_master or len(data) != 4 or address & 3:
                raise self.iommu.fault(address, len(data), DmaPerm.WRITE,
                                       "a write into the MSI window that is not one aligned 32-bit message "
                                       "(or bus mastering is off)")
            self.on_msi(int.from_bytes(data, "little") & 0xFFFF)
            return
        self._check(address, len(data), DmaPerm.WRITE)
        self.iommu.write(address, data)


class IcarusRunner:
    """The clock of the design under cocotb: implements :class:`sim.rtl.runner.Runner` for the function
    built around it; called from the vfio-user threads, served by :meth:`_serve` in the simulator."""

    def __init__(self, dut: Any, iommu: Iommu, name: str, control_fd: int, desc: Description) -> None:
        self.dut: Any = dut  # the design's handles (cocotb types them loosely)
        self.desc = desc
        self.name = name
        self.errors: list[BaseException] = []
        self._iommu_target = _IommuTarget(iommu)
        self._control_fd = control_fd
        self._sim_thread = threading.current_thread()
        self._lock = threading.Lock()
        self._requests: deque[_Request] = deque()
        self._frames_in: deque[tuple[bytes, int]] = deque()
        self._kicks: dict[tuple[int, int, int], tuple[int, int]] = {}  # (fd, addr, slave) -> (value, width)
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._stop = False
        self._sink: EventSink | None = None
        self._irqs: list[int] = []
        from sim.rtl.generate import status_ports

        self._status_ports = status_ports(desc)
        self._status: dict[str, int] = {"intx": 0, **dict.fromkeys(self._status_ports, 0)}
        self._settled = threading.Condition()
        self._settle_requests = 0
        self._settled_upto = 0
        self._kicks_taken = 0
        self._busy_seconds = 0.0
        self.clk = getattr(dut, desc.clock)
        self.rst = getattr(dut, desc.reset)
        level = not desc.reset_active_low
        self.slaves = [(AxiLiteMaster(AxiLiteBus.from_prefix(dut, sl.prefix.rstrip("_")), self.clk, self.rst,
                                      reset_active_level=level) if sl.protocol == "axi4-lite" else
                        AxiMaster(AxiBus.from_prefix(dut, sl.prefix.rstrip("_")), self.clk, self.rst,
                                  reset_active_level=level)) for sl in desc.slaves]
        if desc.interrupts["style"] == "msi-write":
            self._iommu_target.on_msi = self._irqs.append
        self.dma = [AxiSlave(AxiBus.from_prefix(dut, m["prefix"].rstrip("_")), self.clk, self.rst,
                             reset_active_level=level, target=self._iommu_target) for m in desc.raw["dma"]]
        self.source = self.sink = None
        self.lanes: PairLanes | None = None
        if desc.stream_rx is not None and desc.stream_tx is not None and desc.stream_lanes == "per-pair":
            # one tvalid bit per lane: the width the build's parameters (the variant's queue pairs) gave it
            pairs = len(getattr(dut, desc.stream_rx + "tvalid"))
            self.lanes = PairLanes(dut, desc.stream_rx, desc.stream_tx, pairs, self.clk, self.rst, level)
        elif desc.stream_rx is not None and desc.stream_tx is not None:
            self.source = AxiStreamSource(AxiStreamBus.from_prefix(dut, desc.stream_rx.rstrip("_")), self.clk,
                                          self.rst, reset_active_level=level)
            self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, desc.stream_tx.rstrip("_")), self.clk,
                                      self.rst, reset_active_level=level)
        prefixes = [sl.prefix for sl in desc.slaves] + [m["prefix"] for m in desc.raw["dma"]]
        prefixes += [p for p in (desc.stream_rx, desc.stream_tx) if p is not None]
        for prefix in prefixes:  # a line per transfer otherwise
            logging.getLogger(f"cocotb.{desc.top}.{prefix.rstrip('_')}").setLevel(logging.WARNING)

    # --- the simulator side ------------------------------------------------------------------------

    def _set(self, port: str | None, value: int) -> None:
        if port is not None:
            getattr(self.dut, port).value = value

    async def power_on(self) -> None:
        desc, irq = self.desc, self.desc.interrupts
        self._set(desc.link, 1)
        self._set(irq.get("msix_enabled"), 0)
        self._set(irq.get("function_mask"), 0)
        self._set(irq.get("ready"), 1)
        self._set(desc.bus_master_enable, 0)
        self.rst.value = 0 if desc.reset_active_low else 1
        Clock(self.clk, CLOCK_NS, unit="ns").start()
        await ClockCycles(self.clk, desc.reset_cycles)
        self.rst.value = 1 if desc.reset_active_low else 0
        await RisingEdge(self.clk)
        if irq["style"] == "vector":
            cocotb.start_soon(self._irq_monitor())

    async def _irq_monitor(self) -> None:
        # the ready input is held high: each request is a one-cycle valid pulse with a low cycle between
        irq = self.desc.interrupts
        valid, vector = getattr(self.dut, irq["valid"]), getattr(self.dut, irq["vector"])
        while True:
            await RisingEdge(valid)
            await ReadOnly()  # the vector is written in the same step
            self._irqs.append(int(vector.value))

    def _signal(self, path: str) -> int:
        handle = self.dut
        for part in path.split("."):
            handle = getattr(handle, part)
        return int(handle.value)

    def _design_idle(self) -> bool:
        """The description's [idle]: its idle port, or every internal signal at its idle value."""
        desc = self.desc
        if desc.idle_port is not None:
            return bool(self._signal(desc.idle_port))
        for sig in desc.idle_signals:
            value = self._signal(sig.path if sig.path is not None else str(sig.port))
            want = self._signal(sig.equals_port) if sig.equals_port is not None else sig.equals
            if value != want:
                return False
        return True

    def _idle(self) -> bool:
        """The design has nothing in flight, nor do the bus models."""
        streams = self.source is None or self.sink is None or (self.source.empty() and self.source.idle()
                                                               and self.sink.empty())
        streams = streams and (self.lanes is None or self.lanes.idle())
        return self._design_idle() and streams and not self._irqs and not self._frames_in

    def _snapshot(self) -> Events:
        intx = self.desc.interrupts.get("intx")
        status = {"intx": self._signal(intx) if intx else 0,
                  **{name: self._signal(port) for name, port in self._status_ports.items()}}
        events = Events(0)
        if status["intx"] != self._status["intx"]:
            events |= Events.INTX
        if any(status.get(k) != self._status.get(k) for k in ("err_count", "device_status")):
            events |= Events.ERRORS
        with self._lock:
            self._status = status
        return events

    def _deliver(self) -> None:
        """Events in the order the Verilator runner gives them: faults (already filed with the IOMMU by
        the DMA target), status changes, transmitted frames, interrupts."""
        events = self._snapshot()
        frames: list[tuple[bytes, int]] = []
        while self.sink is not None and not self.sink.empty():
            frame = self.sink.recv_nowait()
            dest = frame.tdest if isinstance(frame.tdest, int) else (frame.tdest[0] if frame.tdest else 0)
            frames.append((bytes(frame.tdata), int(dest)))
        while self.lanes is not None and self.lanes.received:
            frames.append(self.lanes.received.popleft())
        # the same list emptied, not a new one: the DMA target's MSI window appends to it through a bound method
        irqs = self._irqs[:]
        self._irqs.clear()
        sink = self._sink
        if sink is None:
            return
        if events:
            sink.status_changed(dict(self._status), events)
        if frames:
            sink.frames(frames)
        if irqs:
            sink.irqs(irqs)

    def _feed_frames(self) -> None:
        while self._frames_in and self.lanes is not None:
            frame, dest = self._frames_in.popleft()
            if not self.lanes.send(frame, dest):
                LOG.warning("%s: a frame for queue pair %d: the design has %d lanes", self.name, dest,
                            self.lanes.lanes)
        while self._frames_in and self.source is not None:
            frame, dest = self._frames_in.popleft()
            self.source.send_nowait(AxiStreamFrame(frame, tdest=dest))

    def _ready_kicks(self, timeout_ms: int) -> tuple[list[tuple[int, int, int, int, int]], bool]:
        """Doorbell eventfds that fired (consumed) and whether the control fd reached end of file;
        waits up to ``timeout_ms`` (-1: until something happens) with the simulator stopped."""
        with self._lock:
            kicks = dict(self._kicks)
        poller = select.poll()
        poller.register(self._wake, select.POLLIN)
        poller.register(self._control_fd, select.POLLIN)
        for fd, _, _ in kicks:
            poller.register(fd, select.POLLIN)
        fired: list[tuple[int, int, int, int, int]] = []
        closing = False
        for fd, ev in poller.poll(timeout_ms):
            if fd == self._wake:
                os.eventfd_read(self._wake)
            elif fd == self._control_fd:
                closing = closing or bool(ev & (select.POLLHUP | select.POLLERR)) or not os.read(fd, 64)
            else:
                try:
                    os.read(fd, 8)
                except BlockingIOError:
                    continue
                fired += [(kfd, addr, value, width, slave) for (kfd, addr, slave), (value, width) in kicks.items()
                          if kfd == fd]
        return fired, closing

    async def serve(self) -> None:
        """Run requests, doorbells and frames until the control fd closes or :meth:`close` is called."""
        try:
            while not self._stop:
                self._feed_frames()
                kicks, closing = self._ready_kicks(0)
                if closing:
                    break
                for _, addr, value, width, slave in kicks:
                    self._kicks_taken += 1
                    await self._axil_write(addr, value << (8 * (addr & 3)), ((1 << width) - 1) << (addr & 3), slave)
                with self._lock:
                    req = self._requests.popleft() if self._requests else None
                if req is not None:
                    await self._perform(req)
                    continue
                if kicks:
                    continue
                self._deliver()
                if self._idle():
                    with self._settled:
                        self._settled_upto = self._settle_requests
                        self._settled.notify_all()
                    kicks, closing = self._ready_kicks_blocking()
                    if closing:
                        break
                    for _, addr, value, width, slave in kicks:
                        self._kicks_taken += 1
                        await self._axil_write(addr, value << (8 * (addr & 3)), ((1 << width) - 1) << (addr & 3),
                                               slave)
                    continue
                started = time.monotonic()
                await Timer(SLICE_CYCLES * CLOCK_NS, "ns")
                self._busy_seconds += time.monotonic() - started
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            self._shut()

    def _ready_kicks_blocking(self) -> tuple[list[tuple[int, int, int, int, int]], bool]:
        with self._lock:
            if self._requests or self._frames_in or self._stop:
                return [], False
        return self._ready_kicks(-1)

    async def _perform(self, req: _Request) -> None:
        try:
            if req.op in ("link", "inputs", "reset"):
                # inputs change between clock edges: written at a rising edge, Icarus may let part of the
                # combinational logic see the new value in that edge's processes and part not
                await FallingEdge(self.clk)
            if req.op == "read":
                resp = await self.slaves[req.args[1]].read(req.args[0], 4)
                req.result = int.from_bytes(resp.data, "little")
            elif req.op == "write":
                await self._axil_write(*req.args)
            elif req.op == "link":
                self._set(self.desc.link, int(req.args[0]))
                await ClockCycles(self.clk, 4)  # the register block samples it before the next access
            elif req.op == "inputs":
                self._iommu_target.bus_master = bool(req.args[0])
                self._set(self.desc.bus_master_enable, int(req.args[0]))
                self._set(self.desc.interrupts.get("msix_enabled"), int(req.args[1]))
                self._set(self.desc.interrupts.get("function_mask"), int(req.args[2]))
                await RisingEdge(self.clk)
            elif req.op == "reset":
                # function-level reset: the bus models drop what they held in flight with the reset
                self.rst.value = 0 if self.desc.reset_active_low else 1
                await ClockCycles(self.clk, self.desc.reset_cycles)
                self.rst.value = 1 if self.desc.reset_active_low else 0
                await RisingEdge(self.clk)
                self._irqs.clear()
            else:
                raise ValueError(f"unknown request {req.op!r}")
        except Exception as exc:
            req.error = exc
        finally:
            req.done.set()

    async def _axil_write(self, addr: int, data: int, strb: int, slave: int = 0) -> None:
        # AxiLiteMaster derives the byte strobes from address and length: the run of lanes strb names
        lo = (strb & -strb).bit_length() - 1
        n = bin(strb).count("1")
        if n == 0:
            return
        word = addr & ~3
        await self.slaves[slave].write(word + lo, ((data >> (8 * lo)) & ((1 << (8 * n)) - 1)).to_bytes(n, "little"))

    def _shut(self) -> None:
        with self._lock:
            self._stop = True
            pending, self._requests = list(self._requests), deque()
        for req in pending:
            req.error = RunnerStopped(f"{self.name}: the device process is stopping")
            req.done.set()
        with self._settled:
            self._settled.notify_all()

    # --- Runner: called from the vfio-user threads -------------------------------------------------

    def _call(self, op: str, *args: Any) -> Any:
        if threading.current_thread() is self._sim_thread:
            raise RuntimeError(f"{self.name}: {op} from the simulator thread would wait for itself")
        req = _Request(op, args)
        with self._lock:
            if self._stop:
                raise RunnerStopped(f"{self.name}: the device process is stopping")
            self._requests.append(req)
        os.eventfd_write(self._wake, 1)
        if not req.done.wait(REQUEST_TIMEOUT):
            raise PciError(f"{self.name}: {op} not served within {REQUEST_TIMEOUT} s")
        if req.error is not None:
            raise req.error
        return req.result

    def start(self, sink: EventSink) -> None:
        self._sink = sink

    def settle(self, timeout: float) -> bool:
        with self._settled:
            self._settle_requests += 1
            target = self._settle_requests
        os.eventfd_write(self._wake, 1)
        with self._settled:
            return self._settled.wait_for(lambda: self._settled_upto >= target or self._stop, timeout)

    def axil_read(self, addr: int, slave: int = 0) -> int:
        result: int = self._call("read", addr, slave)
        return result

    def axil_write(self, addr: int, data: int, strb: int, slave: int = 0) -> None:
        self._call("write", addr, data, strb, slave)

    def push_frames(self, frames: Sequence[tuple[bytes, int]]) -> int:
        # also called on the simulator thread (the loopback wire): queued, never waited for
        with self._lock:
            self._frames_in.extend((bytes(f), d) for f, d in frames)
        os.eventfd_write(self._wake, 1)
        return 0

    def set_link(self, up: bool) -> None:
        self._call("link", up)

    def set_inputs(self, *, bus_master: bool, msix_enabled: bool, msix_function_mask: bool = False) -> None:
        if threading.current_thread() is self._sim_thread:  # at start, before anything runs
            self._iommu_target.bus_master = bus_master
            self._set(self.desc.bus_master_enable, int(bus_master))
            self._set(self.desc.interrupts.get("msix_enabled"), int(msix_enabled))
            self._set(self.desc.interrupts.get("function_mask"), int(msix_function_mask))
            return
        self._call("inputs", bus_master, msix_enabled, msix_function_mask)

    def reset(self) -> None:
        try:
            self._call("reset")
        except RunnerStopped:
            return  # the process is stopping (a session released at shutdown): nothing is left to reset

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        """Nothing to do: the DMA target reads and writes through the endpoint's IOMMU, already mapped."""

    def dma_unmap(self, iova: int, size: int) -> None:
        """Nothing to do (as :meth:`dma_map`)."""

    def kick_add(self, fd: int, addr: int, value: int, width: int, slave: int = 0) -> None:
        with self._lock:
            self._kicks[fd, addr, slave] = (value, width)
        os.eventfd_write(self._wake, 1)  # the simulator waits on the new fd from now on

    def kick_remove(self, fd: int, addr: int, slave: int = 0) -> None:
        with self._lock:
            self._kicks.pop((fd, addr, slave), None)
        os.eventfd_write(self._wake, 1)

    def stats(self) -> ClockStats:
        cycles = int(cocotb.utils.get_sim_time("ns")) // CLOCK_NS if threading.current_thread() is \
            self._sim_thread else 0
        return ClockStats(cycles, self._busy_seconds, self._kicks_taken)

    def intx(self) -> bool:
        with self._lock:
            return bool(self._status["intx"])

    def close(self) -> None:
        with self._lock:
            self._stop = True
        os.eventfd_write(self._wake, 1)


def _factory(name: str) -> DeviceFactory:
    module, _, func = name.partition(":")
    fn: DeviceFactory = getattr(importlib.import_module(module), func)
    return fn


@cocotb.test()
async def export(dut: Any) -> None:
    """Serve the design over vfio-user until the parent closes the control fd."""
    path = os.environ[ENV_SOCKET]
    spec = os.environ.get(ENV_SPEC, "")
    ready_fd = int(os.environ[ENV_READY_FD])
    control_fd = int(os.environ[ENV_CONTROL_FD])
    iommu = Iommu()
    desc = Description.load(os.environ[ENV_DESCRIPTION])
    runner = IcarusRunner(dut, iommu, f"rtl:{spec or desc.name},sim=icarus", control_fd, desc)
    await runner.power_on()
    dev = _factory(os.environ[ENV_FACTORY])(spec, runner, iommu)
    server = VfioUserServer(path, lambda: dev, name="vfio-user-icarus", max_devices=1)
    try:
        os.write(ready_fd, f"listening on {path}\n".encode())
        os.close(ready_fd)
        await runner.serve()
    finally:
        runner.close()
        server.close()
        dev.close()
    LOG.info("%s: stopped at %d ns", runner.name, int(cocotb.utils.get_sim_time("ns")))
