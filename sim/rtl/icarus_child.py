"""The device process of ``rtl:...,sim=icarus``: cocotb on Icarus Verilog, the design exported over vfio-user.

``vvp`` loads cocotb, which runs :func:`export` as its one test. It builds the PCI function around
the design with the factory the parent names (``VDPA_ICARUS_FACTORY``, ``module:function`` taking
the spec and an :class:`IcarusRunner`), serves it with :class:`sim.vfio_user.VfioUserServer` on
``VDPA_ICARUS_SOCKET`` and reports readiness on ``VDPA_ICARUS_READY_FD``. It stops when the parent
closes ``VDPA_ICARUS_CONTROL_FD`` (end of file), also when the parent died.

The simulator runs in this process's main thread; the vfio-user sessions run in their own threads.
Their accesses become requests that :meth:`IcarusRunner._serve` (a cocotb coroutine) performs:

* BAR0: cocotbext-axi's ``AxiLiteMaster`` on ``s_axil``;
* DMA: cocotbext-axi's ``AxiSlave`` on ``m_axi`` whose target is the endpoint's :class:`~sim.iommu.Iommu`
  (the fds the client passed in DMA_MAP, mapped here); a refused access answers SLVERR and is
  recorded as a fault;
* frames: ``AxiStreamSource`` on ``s_axis`` (tdest = the pair), ``AxiStreamSink`` on ``m_axis``;
* interrupts: ``irq_ready`` held high, each ``irq_valid`` pulse is one MSI-X vector request;
* doorbells: the ioeventfds are polled here and become the doorbell write.

While the design has work the clock runs and the coroutine looks at the request queue every
:data:`SLICE_CYCLES` cycles; once the design is idle (the same signals as the Verilator harness
uses, ``models/rtl/harness/vb_design.h``) it blocks the simulator in ``poll()`` on the wake, control
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
    AxiSlave,
    AxiStreamBus,
    AxiStreamFrame,
    AxiStreamSink,
    AxiStreamSource,
)

from backend.pci.device import DmaPerm, PciError
from sim.iommu import Iommu
from sim.rtl.bridge import Events
from sim.rtl.icarus import ENV_CONTROL_FD, ENV_FACTORY, ENV_READY_FD, ENV_SOCKET, ENV_SPEC
from sim.rtl.runner import ClockStats, EventSink
from sim.vfio_user import VfioUserServer
from sim.vfio_user.server import ExportedDevice

LOG = logging.getLogger(__name__)

CLOCK_NS = 10
RESET_CYCLES = 8
#: Cycles the design runs between two looks at the request queue while it is busy.
SLICE_CYCLES = 16
#: Bound on one request (a register access waits for the design's AXI4-Lite response).
REQUEST_TIMEOUT = 30.0
#: What the status ports of the design are called (the fields RtlNetModel and RtlPciDevice read).
STATUS_PORTS = ("device_status", "last_err_code", "last_err_queue", "err_count", "stat_tx_packets",
                "stat_tx_dropped", "stat_rx_packets", "stat_rx_no_buffer", "stat_rx_dropped")

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

    def _check(self, address: int, length: int, access: DmaPerm) -> None:
        if not self.bus_master:
            raise self.iommu.fault(address, length, access, "bus mastering is disabled in the PCI command register "
                                                            "(RTL AXI4 beat answered SLVERR)")

    async def read(self, address: int, length: int) -> bytes:
        self._check(address, length, DmaPerm.READ)
        return self.iommu.read(address, length)

    async def write(self, address: int, data: bytes) -> None:
        self._check(address, len(data), DmaPerm.WRITE)
        self.iommu.write(address, data)


class IcarusRunner:
    """The clock of the design under cocotb: implements :class:`sim.rtl.runner.Runner` for the function
    built around it; called from the vfio-user threads, served by :meth:`_serve` in the simulator."""

    def __init__(self, dut: Any, iommu: Iommu, name: str, control_fd: int) -> None:
        self.dut: Any = dut  # the design's handles (cocotb types them loosely)
        self.name = name
        self.errors: list[BaseException] = []
        self._iommu_target = _IommuTarget(iommu)
        self._control_fd = control_fd
        self._sim_thread = threading.current_thread()
        self._lock = threading.Lock()
        self._requests: deque[_Request] = deque()
        self._frames_in: deque[tuple[bytes, int]] = deque()
        self._kicks: dict[tuple[int, int], tuple[int, int]] = {}  # (fd, addr) -> (value, width)
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._stop = False
        self._sink: EventSink | None = None
        self._irqs: list[int] = []
        self._status: dict[str, int] = {"intx": 0, **dict.fromkeys(STATUS_PORTS, 0)}
        self._settled = threading.Condition()
        self._settle_requests = 0
        self._settled_upto = 0
        self._kicks_taken = 0
        self._busy_seconds = 0.0
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst_n,
                                  reset_active_level=False)
        self.dma = AxiSlave(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst_n, reset_active_level=False,
                            target=self._iommu_target)
        self.source = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis"), dut.clk, dut.rst_n,
                                      reset_active_level=False)
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis"), dut.clk, dut.rst_n,
                                  reset_active_level=False)
        for log_name in ("cocotb.virtio_net_top.s_axil", "cocotb.virtio_net_top.m_axi",
                         "cocotb.virtio_net_top.s_axis", "cocotb.virtio_net_top.m_axis"):
            logging.getLogger(log_name).setLevel(logging.WARNING)  # a line per transfer otherwise

    # --- the simulator side ------------------------------------------------------------------------

    async def power_on(self) -> None:
        dut = self.dut
        dut.link_up.value = 1
        dut.msix_enabled.value = 0
        dut.irq_ready.value = 1
        dut.rst_n.value = 0
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        await ClockCycles(dut.clk, RESET_CYCLES)
        dut.rst_n.value = 1
        await RisingEdge(dut.clk)
        cocotb.start_soon(self._irq_monitor())

    async def _irq_monitor(self) -> None:
        # irq_ready is held high: each request is a one-cycle irq_valid pulse with a low cycle between
        while True:
            await RisingEdge(self.dut.irq_valid)
            await ReadOnly()  # irq_vector is written in the same step
            self._irqs.append(int(self.dut.irq_vector.value))

    def _idle(self) -> bool:
        """The engine and the register block have nothing in flight (vb_design_idle), nor do the bus models."""
        e, r, d = self.dut.u_engine, self.dut.u_regs, self.dut
        return (int(e.state.value) == 0 and int(e.kick_pend.value) == 0 and not int(e.rx_full.value)
                and not int(e.tx_active.value) and int(r.irq_pending.value) == 0
                and not int(r.cfg_irq_pending.value) and not int(r.resetting.value)
                and int(r.qreset_req.value) == 0 and int(r.link_q.value) == int(d.link_up.value)
                and not int(d.irq_valid.value) and self.source.empty() and self.source.idle()
                and self.sink.empty() and not self._irqs and not self._frames_in)

    def _snapshot(self) -> Events:
        d = self.dut
        status = {"intx": int(d.intx.value), **{p: int(getattr(d, p).value) for p in STATUS_PORTS}}
        events = Events(0)
        if status["intx"] != self._status["intx"]:
            events |= Events.INTX
        if status["err_count"] != self._status["err_count"] or status["device_status"] != self._status[
                "device_status"]:
            events |= Events.ERRORS
        with self._lock:
            self._status = status
        return events

    def _deliver(self) -> None:
        """Events in the order the Verilator runner gives them: faults (already filed with the IOMMU by
        the DMA target), status changes, transmitted frames, interrupts."""
        events = self._snapshot()
        frames: list[tuple[bytes, int]] = []
        while not self.sink.empty():
            frame = self.sink.recv_nowait()
            dest = frame.tdest if isinstance(frame.tdest, int) else (frame.tdest[0] if frame.tdest else 0)
            frames.append((bytes(frame.tdata), int(dest)))
        irqs, self._irqs = self._irqs, []
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
        while self._frames_in:
            frame, dest = self._frames_in.popleft()
            self.source.send_nowait(AxiStreamFrame(frame, tdest=dest))

    def _ready_kicks(self, timeout_ms: int) -> tuple[list[tuple[int, int, int, int]], bool]:
        """Doorbell eventfds that fired (consumed) and whether the control fd reached end of file;
        waits up to ``timeout_ms`` (-1: until something happens) with the simulator stopped."""
        with self._lock:
            kicks = dict(self._kicks)
        poller = select.poll()
        poller.register(self._wake, select.POLLIN)
        poller.register(self._control_fd, select.POLLIN)
        for fd, _ in kicks:
            poller.register(fd, select.POLLIN)
        fired: list[tuple[int, int, int, int]] = []
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
                fired += [(kfd, addr, value, width) for (kfd, addr), (value, width) in kicks.items() if kfd == fd]
        return fired, closing

    async def serve(self) -> None:
        """Run requests, doorbells and frames until the control fd closes or :meth:`close` is called."""
        try:
            while not self._stop:
                self._feed_frames()
                kicks, closing = self._ready_kicks(0)
                if closing:
                    break
                for _, addr, value, width in kicks:
                    self._kicks_taken += 1
                    await self._axil_write(addr, value << (8 * (addr & 3)), ((1 << width) - 1) << (addr & 3))
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
                    for _, addr, value, width in kicks:
                        self._kicks_taken += 1
                        await self._axil_write(addr, value << (8 * (addr & 3)), ((1 << width) - 1) << (addr & 3))
                    continue
                started = time.monotonic()
                await Timer(SLICE_CYCLES * CLOCK_NS, "ns")
                self._busy_seconds += time.monotonic() - started
        except BaseException as exc:
            self.errors.append(exc)
            raise
        finally:
            self._shut()

    def _ready_kicks_blocking(self) -> tuple[list[tuple[int, int, int, int]], bool]:
        with self._lock:
            if self._requests or self._frames_in or self._stop:
                return [], False
        return self._ready_kicks(-1)

    async def _perform(self, req: _Request) -> None:
        try:
            if req.op in ("link", "inputs", "reset"):
                # inputs change between clock edges: written at a rising edge, Icarus may let part of the
                # combinational logic see the new value in that edge's processes and part not
                await FallingEdge(self.dut.clk)
            if req.op == "read":
                resp = await self.axil.read(req.args[0], 4)
                req.result = int.from_bytes(resp.data, "little")
            elif req.op == "write":
                await self._axil_write(*req.args)
            elif req.op == "link":
                self.dut.link_up.value = int(req.args[0])
                await ClockCycles(self.dut.clk, 4)  # the register block samples it before the next access
            elif req.op == "inputs":
                self._iommu_target.bus_master = bool(req.args[0])
                self.dut.msix_enabled.value = int(req.args[1])
                await RisingEdge(self.dut.clk)
            elif req.op == "reset":
                # function-level reset: the bus models drop what they held in flight with rst_n
                self.dut.rst_n.value = 0
                await ClockCycles(self.dut.clk, RESET_CYCLES)
                self.dut.rst_n.value = 1
                await RisingEdge(self.dut.clk)
                self._irqs.clear()
            else:
                raise ValueError(f"unknown request {req.op!r}")
        except Exception as exc:
            req.error = exc
        finally:
            req.done.set()

    async def _axil_write(self, addr: int, data: int, strb: int) -> None:
        # AxiLiteMaster derives the byte strobes from address and length: the run of lanes strb names
        lo = (strb & -strb).bit_length() - 1
        n = bin(strb).count("1")
        if n == 0:
            return
        word = addr & ~3
        await self.axil.write(word + lo, ((data >> (8 * lo)) & ((1 << (8 * n)) - 1)).to_bytes(n, "little"))

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

    def axil_read(self, addr: int) -> int:
        result: int = self._call("read", addr)
        return result

    def axil_write(self, addr: int, data: int, strb: int) -> None:
        self._call("write", addr, data, strb)

    def push_frames(self, frames: Sequence[tuple[bytes, int]]) -> int:
        # also called on the simulator thread (the loopback wire): queued, never waited for
        with self._lock:
            self._frames_in.extend((bytes(f), d) for f, d in frames)
        os.eventfd_write(self._wake, 1)
        return 0

    def set_link(self, up: bool) -> None:
        self._call("link", up)

    def set_inputs(self, *, bus_master: bool, msix_enabled: bool) -> None:
        if threading.current_thread() is self._sim_thread:  # at start, before anything runs
            self._iommu_target.bus_master = bus_master
            self.dut.msix_enabled.value = int(msix_enabled)
            return
        self._call("inputs", bus_master, msix_enabled)

    def reset(self) -> None:
        self._call("reset")

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        """Nothing to do: the DMA target reads and writes through the endpoint's IOMMU, already mapped."""

    def dma_unmap(self, iova: int, size: int) -> None:
        """Nothing to do (as :meth:`dma_map`)."""

    def kick_add(self, fd: int, addr: int, value: int, width: int) -> None:
        with self._lock:
            self._kicks[fd, addr] = (value, width)
        os.eventfd_write(self._wake, 1)  # the simulator waits on the new fd from now on

    def kick_remove(self, fd: int, addr: int) -> None:
        with self._lock:
            self._kicks.pop((fd, addr), None)
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
    runner = IcarusRunner(dut, iommu, f"rtl:{spec or 'virtio-net'},sim=icarus", control_fd)
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
