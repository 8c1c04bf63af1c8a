"""Memory of the backend's own that the device reaches by DMA: the shadow control queue, shadow used rings,
the device's dirty-log bytemap.

A memfd of ``size`` bytes, mapped in this process (:attr:`DeviceMemory.mem`) and, by :meth:`DeviceMemory.attach`,
into the device at ``iova``, which the caller chose above every guest-physical address a frontend may use.
:meth:`DeviceMemory.close` unmaps it from the device (stopped first by the caller; a device that is already gone or
reset holds nothing of it) and frees it.
"""

from __future__ import annotations

import mmap
import os

from backend.device import VdpaDevice
from backend.pci.device import DmaPerm


class DeviceMemory:
    def __init__(self, device: VdpaDevice, name: str, iova: int, size: int) -> None:
        self.device = device
        self.iova = iova
        self.size = size
        self.fd = os.memfd_create(f"vdpa-bench-{name}", os.MFD_CLOEXEC)
        self._mapped = False
        try:
            os.ftruncate(self.fd, size)
            self.mem = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise

    def attach(self) -> None:
        """Map it into the device, readable and writable."""
        self.device.dma_map(self.iova, self.size, self.fd, 0, DmaPerm.RW)
        self._mapped = True

    def close(self) -> None:
        """Idempotent. Views of :attr:`mem` (numpy arrays, ctypes) must be dropped first: they pin the mapping."""
        if self._mapped:
            self._mapped = False
            try:
                self.device.dma_unmap(self.iova, self.size)
            except Exception:  # the device may already be gone; the memory is freed regardless
                pass
        if self.fd >= 0:
            self.mem.close()
            os.close(self.fd)
            self.fd = -1
