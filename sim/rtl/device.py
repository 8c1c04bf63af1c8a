"""An RTL design as an in-process ``PciDevice``: the PCI endpoint is Python, the function is the design.

The configuration space, capability list, BAR layout and the MSI-X table/PBA are built in Python
with the endpoint framework (as for the behavioral models); the BAR range the design decodes is
an :class:`AxiLiteBlock`, whose every access is an AXI4-Lite transfer on the design. DMA goes
through the native bridge's table of IOMMU mappings, kept equal to the endpoint's :class:`Iommu`
(which validates each map and holds the fault list ``dma_faults()`` drains). Doorbell eventfds
(``ioeventfd``) are polled by the native bridge itself, which performs the doorbell write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from backend.pci.abilities import Abilities, ExceptionLog
from backend.pci.device import (
    DmaPerm,
    PciError,
)
from backend.virtio.pci_regs import MSIX_CONTROL_FUNCTION_MASK
from sim.iommu import Iommu
from sim.pci.endpoint import Bar, ConfigSpace, Msix, PciEndpoint
from sim.pci_device import EndpointPciAccess
from sim.rtl.bridge import FAULT_TEXT, Events, Fault, FaultReason
from sim.rtl.runner import Runner

AXIL_WORD = 4


class AxiLiteBlock:
    """A BAR range served by one of the design's slave ports (``slave``, its window starting ``base``
    bytes into the slave's address space): accesses become 32-bit transfers with byte strobes (reads
    of several words read each word once; the slave has no read strobes, so a narrow read reads its
    whole word, as on the real bus)."""

    def __init__(self, runner: Runner, size: int, slave: int = 0, base: int = 0) -> None:
        self.runner = runner
        self.size = size
        self.slave = slave
        self.base = base

    def read(self, offset: int, size: int) -> bytes:
        out = bytearray()
        first = offset & ~(AXIL_WORD - 1)
        for word in range(first, offset + size, AXIL_WORD):
            out += self.runner.axil_read(self.base + word, self.slave).to_bytes(AXIL_WORD, "little")
        lo = offset - first
        return bytes(out[lo:lo + size])

    def write(self, offset: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            addr = offset + pos
            word = addr & ~(AXIL_WORD - 1)
            lane = addr - word
            n = min(AXIL_WORD - lane, len(data) - pos)
            value = int.from_bytes(data[pos:pos + n], "little") << (8 * lane)
            strb = ((1 << n) - 1) << lane
            self.runner.axil_write(self.base + word, value, strb, self.slave)
            pos += n


class RtlEndpoint(PciEndpoint):
    """A PciEndpoint whose bus-mastering and MSI-X enable bits are inputs of the design and its bridge."""

    def __init__(self, config: ConfigSpace, bars: list[Bar], msix: Msix | None, runner: Runner,
                 iommu: Iommu | None = None) -> None:
        super().__init__(config, bars, msix, iommu)
        self.runner = runner
        self.reset_hooks.append(runner.reset)

    def sync_inputs(self) -> None:
        msix = self.msix
        self.runner.set_inputs(bus_master=self.config.bus_master, msix_enabled=msix is not None and msix.enabled,
                               msix_function_mask=msix is not None and bool(msix.control & MSIX_CONTROL_FUNCTION_MASK))

    def config_write(self, offset: int, data: bytes) -> None:
        super().config_write(offset, data)
        self.sync_inputs()

    def function_reset(self) -> None:
        super().function_reset()
        self.sync_inputs()


class RtlPciDevice(EndpointPciAccess):
    """Implements :class:`backend.pci.device.PciDevice` over an :class:`RtlEndpoint` and its runner.

    ``model`` and ``wire`` are set by the target that builds the device (the stimulus the
    conformance checks use, and the wire the transmit port feeds); ``loop`` is the clock runner,
    whose ``errors`` list what crashed the device thread.
    """

    endpoint: RtlEndpoint

    def __init__(self, endpoint: RtlEndpoint, name: str) -> None:
        self.name = name
        self.endpoint = endpoint
        self.runner = endpoint.runner
        self.loop = self.runner
        self.model: object = None
        self.wire: object = None
        self._ioeventfds: dict[tuple[int, int, int], int] = {}
        self._frame_sink: Callable[[Sequence[tuple[bytes, int]]], None] | None = None
        self._status_sink: Callable[[dict[str, int], Events], None] | None = None
        self._closed = False
        self.last_status: dict[str, int] = {}

    def start(self, frames: Callable[[Sequence[tuple[bytes, int]]], None] | None = None,
              status: Callable[[dict[str, int], Events], None] | None = None) -> None:
        """Start the clock; transmitted frames go to ``frames``, error/INTx changes also to ``status``."""
        self._frame_sink = frames
        self._status_sink = status
        self.endpoint.sync_inputs()
        self.runner.start(self)

    # --- EventSink (called on the clock thread) -------------------------------------------------------

    def faults(self, faults: Sequence[Fault]) -> None:
        iommu = self.endpoint.iommu
        for f in faults:
            # A truncated file is named as the IOMMU model names it (serve and the logs match on the words).
            what = (f"memory behind IOVA {f.iova:#x} is gone: its file was truncated" if f.reason == FaultReason.GONE
                    else FAULT_TEXT[f.reason])
            iommu.fault(f.iova, f.size, f.access, f"{what} (RTL AXI4 burst at {f.iova:#x}, {f.size} bytes, "
                                                  f"answered SLVERR)")

    def status_changed(self, status: dict[str, int], events: Events) -> None:
        self.last_status = status
        if events & Events.INTX:
            self.endpoint.set_intx(bool(status["intx"]))
        if self._status_sink is not None:
            self._status_sink(status, events)

    def irqs(self, vectors: Sequence[int]) -> None:
        msix = self.endpoint.msix
        if msix is None:
            return
        for v in vectors:
            msix.fire(v)

    def frames(self, frames: Sequence[tuple[bytes, int]]) -> None:
        if self._frame_sink is not None:
            self._frame_sink(frames)

    # --- DMA ------------------------------------------------------------------------------------------

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        super().dma_map(iova, size, fd, offset, perm)  # the IOMMU model first: it checks the request
        try:
            self.runner.dma_map(iova, size, fd, offset, perm)
        except Exception as exc:
            self.endpoint.iommu.unmap(iova, size)
            raise PciError(f"{self.name}: dma_map: {exc}") from None

    def dma_unmap(self, iova: int, size: int) -> None:
        super().dma_unmap(iova, size)
        self.runner.dma_unmap(iova, size)

    # --- interrupts ---------------------------------------------------------------------------------

    def _msix_changed(self) -> None:
        self.endpoint.sync_inputs()  # the design's msix_enabled input follows the capability

    # --- ioeventfd ----------------------------------------------------------------------------------

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        """Doorbells inside the design's AXI4-Lite range are written by the native bridge when ``fd``
        fires (nothing in Python per kick); elsewhere the caller relays (returns False)."""
        self._check_bar(index)
        at = self._slave_address(index, offset)
        if at is None or width not in (1, 2, 4) or (offset & 3) + width > 4:
            return False
        slave, addr = at
        key = (index, offset, fd)
        if key in self._ioeventfds:
            self.runner.kick_remove(fd, addr, slave)
        self.runner.kick_add(fd, addr, (value or 0) & ((1 << (8 * width)) - 1), width, slave)
        self._ioeventfds[key] = width
        return True

    def _slave_address(self, index: int, offset: int) -> tuple[int, int] | None:
        """(slave, address in its space) of a BAR offset the design decodes, else None."""
        bar = self.endpoint.bars[index]
        for off, block in bar.blocks:
            if isinstance(block, AxiLiteBlock) and off <= offset < off + block.size:
                return block.slave, block.base + offset - off
        return None

    def ioeventfd_remove(self, index: int, offset: int, fd: int) -> None:
        if self._ioeventfds.pop((index, offset, fd), None) is not None:
            at = self._slave_address(index, offset)
            if at is not None:
                self.runner.kick_remove(fd, at[1], at[0])

    # --- lifecycle ----------------------------------------------------------------------------------

    def abilities(self) -> Abilities:
        # The clock thread runs the design: a doorbell returns before the design has acted on it.
        return dataclasses.replace(super().abilities(), crashes=ExceptionLog(self.runner.errors))

    def _stop(self) -> None:
        self.runner.close()
