"""In-process ``PciDevice``: the backend talks to a simulated endpoint exactly as it would over VFIO."""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from backend.eventloop import EventLoop
from backend.pci.abilities import Abilities, ExceptionLog, ObserverList
from backend.pci.device import (
    DmaFault,
    DmaPerm,
    IrqIndex,
    PciError,
    RegionFlags,
    RegionIndex,
    RegionInfo,
)
from backend.virtio.pci_regs import PCI_CONFIG_SPACE_SIZE
from sim.pci.endpoint import PciEndpoint


class EndpointPciAccess(ABC):
    """The part of :class:`backend.pci.device.PciDevice` every simulated endpoint serves alike: config
    space and BAR accesses, recorded DMA faults, MSI-X/INTx binding. The behavioral model's
    :class:`SimPciDevice` and the RTL's ``RtlPciDevice`` add ioeventfds and the thread that runs the device
    (the RTL also hands DMA mappings to its bridge)."""

    name: str
    endpoint: PciEndpoint

    # --- regions -------------------------------------------------------------------------------

    def region_info(self, index: int) -> RegionInfo:
        if index == RegionIndex.CONFIG:
            return RegionInfo(index, PCI_CONFIG_SPACE_SIZE, RegionFlags.READ | RegionFlags.WRITE)
        bar = self.endpoint.bars.get(index)
        if bar is None:
            return RegionInfo(index, 0, RegionFlags(0))
        return RegionInfo(index, bar.size, RegionFlags.READ | RegionFlags.WRITE)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index == RegionIndex.CONFIG:
            return self.endpoint.config_read(offset, size)
        self._check_bar(index)
        try:
            return self.endpoint.bar_read(index, offset, size)
        except ValueError as exc:
            raise PciError(str(exc)) from None

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == RegionIndex.CONFIG:
            self.endpoint.config_write(offset, bytes(data))
            return
        self._check_bar(index)
        try:
            self.endpoint.bar_write(index, offset, bytes(data))
        except ValueError as exc:
            raise PciError(str(exc)) from None

    def _check_bar(self, index: int) -> None:
        if index not in self.endpoint.bars:
            raise PciError(f"{self.name}: region {index} does not exist")

    def region_mmap(self, index: int) -> memoryview | None:
        return None  # every BAR is trapped: register side effects need the access (a bus transfer on RTL)

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        try:
            self.endpoint.iommu.map(iova, size, fd, offset, perm)
        except (ValueError, OSError) as exc:
            raise PciError(f"{self.name}: dma_map: {exc}") from None

    def dma_unmap(self, iova: int, size: int) -> None:
        try:
            self.endpoint.iommu.unmap(iova, size)
        except ValueError as exc:
            raise PciError(f"{self.name}: dma_unmap: {exc}") from None

    def dma_faults(self) -> list[DmaFault]:
        return self.endpoint.iommu.drain_faults()

    def abilities(self) -> Abilities:
        """Every DMA access passes the endpoint's IOMMU model: observed as it happens, faults recorded."""
        return Abilities(dma_observer=ObserverList(self.endpoint.iommu.observers), faults=self)

    # --- interrupts ----------------------------------------------------------------------------

    def irq_count(self, index: int) -> int:
        if index == IrqIndex.MSIX:
            return self.endpoint.msix.table_size if self.endpoint.msix is not None else 0
        if index == IrqIndex.INTX:
            return 1
        return 0

    def set_irqs(self, index: int, start: int, fds: Sequence[int | None]) -> None:
        with self.endpoint.lock:
            if index == IrqIndex.MSIX:
                msix = self.endpoint.msix
                if msix is None:
                    raise PciError(f"{self.name}: no MSI-X capability")
                if not fds:
                    msix.unbind_all()
                    msix.set_enabled(False)
                else:
                    try:
                        msix.bind(start, list(fds))
                    except ValueError as exc:
                        raise PciError(f"{self.name}: {exc}") from None
                    if not msix.enabled:
                        msix.set_enabled(True)
                self._msix_changed()
            elif index == IrqIndex.INTX:
                if start != 0 or len(fds) > 1:
                    raise PciError("INTx has exactly one vector")
                self.endpoint.intx_fd = fds[0] if fds else None
            else:
                raise PciError(f"{self.name}: irq index {index} not supported")

    def _msix_changed(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """After MSI-X was bound or unbound (the RTL forwards the enable to the design)."""

    # --- lifecycle -----------------------------------------------------------------------------

    _ioeventfds: Mapping[tuple[int, int, int], object]
    _closed: bool

    @abstractmethod
    def ioeventfd_remove(self, index: int, offset: int, fd: int) -> None: ...

    @abstractmethod
    def _stop(self) -> None:
        """Stop the thread that runs the device (its event loop, the RTL clock)."""

    def reset(self) -> None:
        self.endpoint.function_reset()

    def close(self) -> None:
        """Idempotent: ioeventfds removed, the device thread stopped, interrupts unbound, DMA unmapped."""
        if self._closed:
            return
        self._closed = True
        for index, offset, fd in list(self._ioeventfds):
            self.ioeventfd_remove(index, offset, fd)
        self._stop()
        if self.endpoint.msix is not None:
            self.endpoint.msix.unbind_all()
        self.endpoint.iommu.unmap_all()


class SimPciDevice(EndpointPciAccess):
    """Implements :class:`backend.pci.device.PciDevice` over a :class:`PciEndpoint`.

    ``ioeventfd`` is honoured by the device's own event loop thread: when the
    frontend's kick eventfd fires, the loop performs the doorbell write, so no
    relay runs in the backend (the in-process equivalent of KVM ioeventfd /
    VFIO_DEVICE_IOEVENTFD).
    """

    def __init__(self, endpoint: PciEndpoint, name: str = "sim") -> None:
        self.name = name
        self.endpoint = endpoint
        self.loop = EventLoop(f"{name}-events")
        self._ioeventfds: dict[tuple[int, int, int], tuple[int, int | None]] = {}
        self._closed = False

    # --- ioeventfd -----------------------------------------------------------------------------

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        self._check_bar(index)
        key = (index, offset, fd)

        def fire() -> None:
            # Readable means the counter is non-zero and the loop is its only reader, so this
            # read cannot block; the fd's flags are left alone (the frontend shares them).
            os.eventfd_read(fd)
            w, v = self._ioeventfds.get(key, (width, value))
            data = (v if v is not None else 0).to_bytes(w, "little")
            self.endpoint.bar_write(index, offset, data)

        try:
            self.loop.watch(fd, fire)
        except (OSError, ValueError) as exc:  # not pollable (a regular file) or not an fd: nothing is kept
            raise PciError(f"{self.name}: ioeventfd on fd {fd}: {exc}") from None
        self._ioeventfds[key] = (width, value)
        return True

    def ioeventfd_remove(self, index: int, offset: int, fd: int) -> None:
        if self._ioeventfds.pop((index, offset, fd), None) is not None:
            self.loop.unwatch(fd)

    # --- lifecycle -----------------------------------------------------------------------------

    def abilities(self) -> Abilities:
        # A doorbell write runs the model in the caller's thread: the work and its interrupts are done
        # when it returns. Kicks by ioeventfd run on the event loop, whose failures it keeps.
        return dataclasses.replace(super().abilities(), crashes=ExceptionLog(self.loop.errors),
                                   synchronous_doorbell=True)

    def _stop(self) -> None:
        self.loop.close()
