"""``PciDevice``: a PCI function as the backend sees it, shaped after the VFIO device API.

Regions are numbered as in VFIO (BAR0..BAR5, ROM, CONFIG); reads and writes
are byte strings at an offset, like ``pread``/``pwrite`` on a VFIO device fd.
DMA is mapped from file descriptors (memfd, hugetlbfs) so that any device,
in process, in another process or real, reaches the same memory without a copy.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from backend.pci.abilities import Abilities


class PciError(Exception):
    """A request the device or its access layer refused."""


class RegionIndex(IntEnum):
    BAR0 = 0
    BAR1 = 1
    BAR2 = 2
    BAR3 = 3
    BAR4 = 4
    BAR5 = 5
    ROM = 6
    CONFIG = 7


class RegionFlags(IntFlag):
    READ = 1
    WRITE = 2
    MMAP = 4


@dataclass(frozen=True)
class RegionInfo:
    index: int
    size: int
    flags: RegionFlags


class IrqIndex(IntEnum):
    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


class DmaPerm(IntFlag):
    """Direction the *device* may access a mapping: READ = device reads memory."""

    READ = 1
    WRITE = 2
    RW = 3


@dataclass(frozen=True)
class DmaFault:
    """A device access the IOMMU refused: never silently served."""

    iova: int
    size: int
    access: DmaPerm
    reason: str

    def __str__(self) -> str:
        kind = "write" if self.access & DmaPerm.WRITE else "read"
        return f"DMA {kind} of {self.size} bytes at IOVA {self.iova:#x}: {self.reason}"


class DmaFaultError(PciError):
    def __init__(self, fault: DmaFault) -> None:
        super().__init__(str(fault))
        self.fault = fault


@runtime_checkable
class PciDevice(Protocol):
    """One PCI function. Every implementation (sim, vfio-user, vfio) offers exactly this."""

    name: str

    def region_info(self, index: int) -> RegionInfo: ...

    def region_read(self, index: int, offset: int, size: int) -> bytes: ...

    def region_write(self, index: int, offset: int, data: bytes) -> None: ...

    def region_mmap(self, index: int) -> memoryview | None:
        """A direct mapping of the region, or None where the device does not allow it."""
        ...

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None: ...

    def dma_unmap(self, iova: int, size: int) -> None: ...

    def irq_count(self, index: int) -> int: ...

    def set_irqs(self, index: int, start: int, fds: Sequence[int | None]) -> None:
        """Bind vectors ``start..`` to eventfds (None unbinds one); an empty list disables the index."""
        ...

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        """Make a write of ``value`` (any value if None) at that offset happen when ``fd`` is signalled.

        Returns False where the device cannot do it (the caller relays instead).
        """
        ...

    def ioeventfd_remove(self, index: int, offset: int, fd: int) -> None: ...

    def dma_faults(self) -> list[DmaFault]:
        """Faults recorded since the last call (drained)."""
        ...

    def reset(self) -> None:
        """Function-level reset."""
        ...

    def abilities(self) -> Abilities:
        """What the target offers the bench beyond this API (:mod:`backend.pci.abilities`): nothing unless
        it declares more."""
        from backend.pci.abilities import NOTHING

        return NOTHING

    def close(self) -> None: ...


# Integer helpers over the byte-oriented API -------------------------------------------------

_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


def read_int(dev: PciDevice, index: int, offset: int, width: int) -> int:
    value: int = struct.unpack(_FMT[width], dev.region_read(index, offset, width))[0]
    return value


def write_int(dev: PciDevice, index: int, offset: int, width: int, value: int) -> None:
    dev.region_write(index, offset, struct.pack(_FMT[width], value & ((1 << (8 * width)) - 1)))


def config_read(dev: PciDevice, offset: int, width: int) -> int:
    return read_int(dev, RegionIndex.CONFIG, offset, width)


def config_write(dev: PciDevice, offset: int, width: int, value: int) -> None:
    write_int(dev, RegionIndex.CONFIG, offset, width, value)
