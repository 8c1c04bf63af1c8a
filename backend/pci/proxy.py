"""``PciDeviceProxy``: a ``PciDevice`` that forwards every operation to another one.

Subclasses override only what they change (recording, editing what a driver
sees, logging); target-specific extras of the inner device stay reachable.
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.pci.abilities import Abilities
from backend.pci.device import DmaFault, DmaPerm, PciDevice, RegionInfo


class PciDeviceProxy:
    def __init__(self, inner: PciDevice, name: str | None = None) -> None:
        self.inner = inner
        self.name = name if name is not None else f"proxy({inner.name})"

    def region_info(self, index: int) -> RegionInfo:
        return self.inner.region_info(index)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        return self.inner.region_read(index, offset, size)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        self.inner.region_write(index, offset, data)

    def region_mmap(self, index: int) -> memoryview | None:
        return self.inner.region_mmap(index)

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        self.inner.dma_map(iova, size, fd, offset, perm)

    def dma_unmap(self, iova: int, size: int) -> None:
        self.inner.dma_unmap(iova, size)

    def irq_count(self, index: int) -> int:
        return self.inner.irq_count(index)

    def set_irqs(self, index: int, start: int, fds: Sequence[int | None]) -> None:
        self.inner.set_irqs(index, start, fds)

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        return self.inner.ioeventfd(index, offset, width, value, fd)

    def ioeventfd_remove(self, index: int, offset: int, fd: int) -> None:
        self.inner.ioeventfd_remove(index, offset, fd)

    def dma_faults(self) -> list[DmaFault]:
        return self.inner.dma_faults()

    def reset(self) -> None:
        self.inner.reset()

    def abilities(self) -> Abilities:
        return self.inner.abilities()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> object:
        # Target-specific extras (e.g. the simulator's ``model``) stay reachable through the proxy.
        return getattr(self.inner, name)
