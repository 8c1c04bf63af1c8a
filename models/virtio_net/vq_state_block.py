"""The behavioral virtio-net with the RTL's vendor vq-state block, so the model and the RTL share one quirk path.

``sim:virtio-net,model=models.virtio_net.vq_state_block:VqStateNetDevice`` (or :data:`SPEC`) presents the RTL's
PCI subsystem ids (``backend.drivers.quirks.VDPA_BENCH_RTL_IDS``), so the vDPA driver finds the same quirk record,
and serves the same block (models/rtl/README.md, "Vendor vq state block"):

* BAR0 0x3800 + 4q: ``{used_idx[31:16], last_avail_idx[15:0]}`` of queue q, live while the queue runs;
* a write while the queue is disabled: the low half sets both indices (an in-order ring resumed there has used
  everything before it), the high half then sets used_idx; they are loaded when queue_enable is written 1. A
  queue enabled without such a write since its reset starts at 0 (RESET-DEV-04);
* a queue reset keeps the indices the queue stopped at readable until the queue is enabled again (the vDPA
  driver's GET_VRING_BASE stops the queue that way). The model finishes a chain before a register access is
  served (both hold the device lock), so the stop position is exact, as the RTL's is.

Split rings only, as the RTL: VIRTIO_F_RING_PACKED is not offered.
"""

from __future__ import annotations

import struct
from typing import Any

from backend.drivers.quirks import VDPA_BENCH_RTL_SUBSYSTEM_ID, VDPA_BENCH_RTL_VQ_STATE, VDPA_BENCH_VENDOR_ID
from backend.virtio.features import F
from backend.virtio.pci_regs import PciCfg
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.split_engine import RingError, SplitQueue
from sim.pci.endpoint import Register, RegisterBlock

#: The target spec of this variant.
SPEC = "sim:virtio-net,model=models.virtio_net.vq_state_block:VqStateNetDevice"

_BLOCK = VDPA_BENCH_RTL_VQ_STATE
_NOTIFY_OFF = 0x3000  # the block shares the notification page, as on the RTL


class VqStateNetDevice(VirtioNetDevice):
    """virtio-net with the RTL's subsystem ids and its vq-state block in BAR0 (see the module docstring)."""

    SUBSYSTEM_ID = VDPA_BENCH_RTL_SUBSYSTEM_ID

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.offered &= ~(1 << F.RING_PACKED)
        n = len(self.queues)
        struct.pack_into("<H", self.config.data, PciCfg.SUBSYSTEM_VENDOR_ID, VDPA_BENCH_VENDOR_ID)
        if (self.notify_off != _NOTIFY_OFF or self.notify_off + self.notify_len > _BLOCK.offset
                or _BLOCK.offset + n * _BLOCK.stride > self.msix_table_off):
            raise ValueError(f"{n} queues (notify area {self.notify_len} bytes) do not fit beside "
                             f"the vq state block at BAR0 {_BLOCK.offset:#x}")
        #: per queue: (last_avail_idx, used_idx) held while the queue is disabled, and whether it was written
        self.held = [(0, 0)] * n
        self.loaded = [False] * n
        regs: list[Register] = []
        for q in range(n):
            base = q * _BLOCK.stride
            regs.append(Register(f"vq{q}_last_avail_idx", base, 2, lambda q=q: self._read(q) & 0xFFFF,  # type: ignore[misc]
                                 lambda v, q=q: self._write(q, v, None)))  # type: ignore[misc]
            regs.append(Register(f"vq{q}_used_idx", base + 2, 2, lambda q=q: self._read(q) >> 16,  # type: ignore[misc]
                                 lambda v, q=q: self._write(q, None, v)))  # type: ignore[misc]
        size = n * _BLOCK.stride
        self.bar.mount(_BLOCK.offset, RegisterBlock("vq_state", size, regs))

    def _read(self, q: int) -> int:
        sq = self.queues[q]
        avail, used = (sq.last_avail_idx, sq.used_idx) if sq.enabled else self.held[q]
        return used << 16 | avail

    def _write(self, q: int, avail: int | None, used: int | None) -> None:
        if self.queues[q].enabled:
            return  # accepted only while the queue is disabled, as on the RTL
        old_avail, old_used = self.held[q]
        if avail is not None:
            old_avail = old_used = avail & 0xFFFF
        if used is not None:
            old_used = used & 0xFFFF
        self.held[q] = (old_avail, old_used)
        self.loaded[q] = True

    def queue_config_error(self, q: SplitQueue) -> RingError | None:
        err = super().queue_config_error(q)
        if err is None:  # queue_enable 1: start where the written state says, else at 0
            q.last_avail_idx, q.used_idx = self.held[q.index] if self.loaded[q.index] else (0, 0)
            self.loaded[q.index] = False
        return err

    def reset_queue(self, q: SplitQueue) -> None:
        stopped = (q.last_avail_idx, q.used_idx) if q.enabled else self.held[q.index]
        super().reset_queue(q)
        self.held[q.index] = stopped  # readable in the block until the queue is enabled again
        self.loaded[q.index] = False

    def device_reset(self) -> None:
        super().device_reset()
        self.held = [(0, 0)] * len(self.queues)
        self.loaded = [False] * len(self.queues)
