"""A ``PciDevice`` proxy that records every region access, for passive checking of a driver."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from backend.pci.device import DmaPerm, PciDevice
from backend.pci.proxy import PciDeviceProxy


@dataclass(frozen=True, slots=True)
class Access:
    seq: int
    op: str  # "r" or "w"
    region: int
    offset: int
    size: int
    data: bytes

    @property
    def value(self) -> int:
        return int.from_bytes(self.data, "little")


class TracingPciDevice(PciDeviceProxy):
    """Forwards to ``inner`` and appends an :class:`Access` per region read/write.

    Doorbells rung through an ioeventfd bypass the proxy (that is the point of
    ioeventfd); ``ioeventfds`` records their registrations instead.
    """

    def __init__(self, inner: PciDevice) -> None:
        super().__init__(inner, f"trace({inner.name})")
        self.accesses: list[Access] = []
        self.ioeventfds: list[tuple[int, int, int, int | None]] = []
        self.dma_maps: list[tuple[int, int, DmaPerm]] = []
        #: Called with each access as it happens (writes before they reach the device).
        self.listeners: list[Callable[[Access], None]] = []
        self._lock = threading.Lock()

    def _record(self, op: str, region: int, offset: int, data: bytes) -> None:
        with self._lock:
            access = Access(len(self.accesses), op, region, offset, len(data), data)
            self.accesses.append(access)
        for listener in self.listeners:
            listener(access)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        data = self.inner.region_read(index, offset, size)
        self._record("r", index, offset, data)
        return data

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        self._record("w", index, offset, bytes(data))
        self.inner.region_write(index, offset, data)

    def region_mmap(self, index: int) -> memoryview | None:
        return None  # a direct mapping would hide accesses from the monitor

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        self.dma_maps.append((iova, size, perm))
        self.inner.dma_map(iova, size, fd, offset, perm)

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        self.ioeventfds.append((index, offset, width, value))
        return self.inner.ioeventfd(index, offset, width, value, fd)
