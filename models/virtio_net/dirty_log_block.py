"""The behavioral virtio-net with the RTL's vendor blocks: ring state (0x3800) and the dirty page log (0x3F00).

``sim:virtio-net,model=models.virtio_net.dirty_log_block:DirtyLogNetDevice`` (or :data:`SPEC`) presents the
RTL's subsystem ids, so the vDPA driver applies the same quirk record (``VDPA_BENCH_RTL``) to both, and the
backend's device-side dirty logging runs on either. The block (``backend.drivers.quirks.DirtyLogBlock``,
models/rtl/README.md "Vendor dirty page log block"):

* LOG_BASE_LO/HI, LOG_PAGES: the bytemap's IOVA and how many 4 KiB pages it covers (ignored while enabled);
* LOG_CTRL bit 0 ENABLE; bit 1 BUSY reads 0 here (the model's log writes finish before the access that caused
  them returns);
* LOG_STATUS (write 1 to clear; cleared when ENABLE goes 0 -> 1): OVERFLOW, a write reached a page beyond the
  bytemap; FAULT, the host refused a log write.

While enabled, each device write to host memory is followed, once its bytes are in memory, by one DMA write of
0x01 bytes over the pages it touched (an IOMMU write hook: every device write path calls it after the copy). The
log's own writes are not logged.
"""

from __future__ import annotations

from typing import Any

from backend.drivers.quirks import (
    DIRTY_LOG_BLOCK_SIZE,
    VDPA_BENCH_RTL_DIRTY_LOG,
    VDPA_BENCH_RTL_SUBSYSTEM_ID,
    DirtyLogCtrl,
    DirtyLogReg,
    DirtyLogStatus,
)
from backend.pci.device import DmaFaultError
from models.virtio_net.vq_state_block import VqStateNetDevice
from sim.pci.endpoint import Register, RegisterBlock

#: The target spec of this variant.
SPEC = "sim:virtio-net,model=models.virtio_net.dirty_log_block:DirtyLogNetDevice"

LOG_PAGE_SHIFT = 12
_BLOCK = VDPA_BENCH_RTL_DIRTY_LOG


class DirtyLogNetDevice(VqStateNetDevice):
    """virtio-net with the RTL's ids, vq-state and dirty page log blocks (see the module docstring)."""

    SUBSYSTEM_ID = VDPA_BENCH_RTL_SUBSYSTEM_ID

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if _BLOCK.offset + DIRTY_LOG_BLOCK_SIZE > self.msix_table_off:
            raise ValueError(f"the dirty log block at BAR0 {_BLOCK.offset:#x} overlaps the MSI-X table at "
                             f"{self.msix_table_off:#x}")
        self._log_clear()

        def reg(name: str, which: DirtyLogReg, get: Any, put: Any) -> Register:
            return Register(name, which, 4, get, put)

        self.bar.mount(_BLOCK.offset, RegisterBlock("dirty_log", DIRTY_LOG_BLOCK_SIZE, [
            reg("log_base_lo", DirtyLogReg.BASE_LO, lambda: self.log_base & 0xFFFF_FFFF,
                lambda v: self._set_base(v, high=False)),
            reg("log_base_hi", DirtyLogReg.BASE_HI, lambda: self.log_base >> 32,
                lambda v: self._set_base(v, high=True)),
            reg("log_pages", DirtyLogReg.PAGES, lambda: self.log_pages, self._set_pages),
            reg("log_ctrl", DirtyLogReg.CTRL, lambda: int(DirtyLogCtrl.ENABLE) if self.log_enabled else 0,
                self._set_ctrl),
            reg("log_status", DirtyLogReg.STATUS, lambda: int(self.log_status), self._clear_status),
        ]))

    def _log_clear(self) -> None:
        self.log_base = 0
        self.log_pages = 0
        self.log_enabled = False
        self.log_status = DirtyLogStatus(0)

    def _set_base(self, value: int, *, high: bool) -> None:
        if not self.log_enabled:
            shift = 32 if high else 0
            self.log_base = self.log_base & ~(0xFFFF_FFFF << shift) | (value & 0xFFFF_FFFF) << shift

    def _set_pages(self, value: int) -> None:
        if not self.log_enabled:
            self.log_pages = value & 0xFFFF_FFFF

    def _set_ctrl(self, value: int) -> None:
        on = bool(value & DirtyLogCtrl.ENABLE)
        if on == self.log_enabled:
            return
        hooks = self.endpoint.iommu.write_hooks
        if on:
            self.log_status = DirtyLogStatus(0)
            hooks.append(self._log_write)
        else:
            hooks.remove(self._log_write)
        self.log_enabled = on

    def _clear_status(self, value: int) -> None:
        self.log_status &= ~DirtyLogStatus(value & int(DirtyLogStatus.OVERFLOW | DirtyLogStatus.FAULT))

    def _log_write(self, iova: int, size: int) -> None:
        """After a device write of [iova, iova + size) landed: mark its pages in the bytemap."""
        base, pages = self.log_base, self.log_pages
        if size <= 0 or base <= iova < base + pages:
            return  # the log's own write
        first, last = iova >> LOG_PAGE_SHIFT, (iova + size - 1) >> LOG_PAGE_SHIFT
        if last >= pages:
            self.log_status |= DirtyLogStatus.OVERFLOW
            last = pages - 1
        if first > last:
            return
        try:
            self.endpoint.dma_write(base + first, b"\x01" * (last - first + 1))
        except DmaFaultError:  # recorded by the IOMMU; the block says so too
            self.log_status |= DirtyLogStatus.FAULT

    def device_reset(self) -> None:
        super().device_reset()
        if self.log_enabled:
            self.endpoint.iommu.write_hooks.remove(self._log_write)
        self._log_clear()
