"""The behavioral virtio-net with the RTL's vendor vq-state block (and no dirty page log).

``sim:virtio-net,model=models.virtio_net.vq_state_block:VqStateNetDevice`` (or :data:`SPEC`) presents subsystem
ids of its own (``backend.drivers.quirks.VDPA_BENCH_VQ_STATE_IDS``, 1db5:0502) whose quirk record names the same
block as the RTL's, and nothing else: the backend logs dirty pages for it with its used-ring relay. The variant
with all of the RTL's blocks and the RTL's own ids is :mod:`models.virtio_net.dirty_log_block`. The block
(models/rtl/README.md, "Vendor vq state block"):

* BAR0 0x3800 + 4q: ``{used_idx[31:16], last_avail_idx[15:0]}`` of queue q, live while the queue runs;
* a write while the queue is disabled: the low half sets both indices (an in-order ring resumed there has used
  everything before it), the high half then sets used_idx; they are loaded when queue_enable is written 1. A
  queue enabled without such a write since its reset starts at 0 (RESET-DEV-04);
* a queue reset keeps the indices the queue stopped at readable until the queue is enabled again (the vDPA
  driver's GET_VRING_BASE stops the queue that way). The model finishes a chain before a register access is
  served (both hold the device lock), so the stop position is exact, as the RTL's is.

Packed rings too, as the RTL's block does: with VIRTIO_F_RING_PACKED the word is vhost-user's packed state,
bits 0-14 avail index, 15 avail wrap counter, 16-30 used index, 31 used wrap counter, with the same rules (a
low-half write sets both halves: the ring resumes with everything before it used).
"""

from __future__ import annotations

import struct
from typing import Any

from backend.drivers.quirks import VDPA_BENCH_RTL_VQ_STATE, VDPA_BENCH_VENDOR_ID, VDPA_BENCH_VQ_STATE_SUBSYSTEM_ID
from backend.virtio.features import F, has
from backend.virtio.pci_regs import PciCfg
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.packed_engine import PackedQueue
from models.virtio_net.split_engine import RingError, SplitQueue
from sim.pci.endpoint import Register, RegisterBlock

#: The target spec of this variant.
SPEC = "sim:virtio-net,model=models.virtio_net.vq_state_block:VqStateNetDevice"

_BLOCK = VDPA_BENCH_RTL_VQ_STATE
_NOTIFY_OFF = 0x3000  # the block shares the notification page, as on the RTL


class VqStateNetDevice(VirtioNetDevice):
    """virtio-net with the RTL's vq-state block in BAR0, under ids of its own (see the module docstring)."""

    SUBSYSTEM_ID = VDPA_BENCH_VQ_STATE_SUBSYSTEM_ID

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = len(self.queues)
        struct.pack_into("<H", self.config.data, PciCfg.SUBSYSTEM_VENDOR_ID, VDPA_BENCH_VENDOR_ID)
        if (self.notify_off != _NOTIFY_OFF or self.notify_off + self.notify_len > _BLOCK.offset
                or _BLOCK.offset + n * _BLOCK.stride > self.msix_table_off):
            raise ValueError(f"{n} queues (notify area {self.notify_len} bytes) do not fit beside "
                             f"the vq state block at BAR0 {_BLOCK.offset:#x}")
        #: per queue: the word held while the queue is disabled, and whether it was written since the reset
        self.held = [0] * n
        self.loaded = [False] * n
        regs: list[Register] = []
        for q in range(n):
            base = q * _BLOCK.stride
            regs.append(Register(f"vq{q}_avail", base, 2, lambda q=q: self._read(q) & 0xFFFF,  # type: ignore[misc]
                                 lambda v, q=q: self._write(q, v, None)))  # type: ignore[misc]
            regs.append(Register(f"vq{q}_used", base + 2, 2, lambda q=q: self._read(q) >> 16,  # type: ignore[misc]
                                 lambda v, q=q: self._write(q, None, v)))  # type: ignore[misc]
        self.bar.mount(_BLOCK.offset, RegisterBlock("vq_state", n * _BLOCK.stride, regs))

    @staticmethod
    def _word(q: SplitQueue | PackedQueue) -> int:
        """The running queue's position as the block shows it."""
        if isinstance(q, PackedQueue):
            return q.next_avail | q.avail_wrap << 15 | q.next_used << 16 | q.used_wrap << 31
        return q.last_avail_idx | q.used_idx << 16

    def _queue(self, q: int) -> SplitQueue | PackedQueue:
        return self.packed_queues[q] if self.ring_packed else self.queues[q]

    def _read(self, q: int) -> int:
        sq = self._queue(q)
        return self._word(sq) if sq.enabled else self.held[q]

    def _write(self, q: int, avail: int | None, used: int | None) -> None:
        if self._queue(q).enabled:
            return  # accepted only while the queue is disabled, as on the RTL
        word = self.held[q]
        if avail is not None:
            word = (avail & 0xFFFF) * 0x10001
        if used is not None:
            word = (word & 0xFFFF) | (used & 0xFFFF) << 16
        self.held[q] = word
        self.loaded[q] = True

    def _load(self, q: SplitQueue | PackedQueue) -> None:
        """queue_enable 1: start where the written state says, else at the start of the ring."""
        word = self.held[q.index] if self.loaded[q.index] else (1 << 31 | 1 << 15 if isinstance(q, PackedQueue)
                                                                   else 0)
        self.loaded[q.index] = False
        if isinstance(q, PackedQueue):
            q.next_avail, q.avail_wrap = word & 0x7FFF, word >> 15 & 1
            q.next_used, q.used_wrap = word >> 16 & 0x7FFF, word >> 31 & 1
        else:
            q.last_avail_idx, q.used_idx = word & 0xFFFF, word >> 16

    def queue_config_error(self, q: SplitQueue) -> RingError | None:
        err = super().queue_config_error(q)
        if err is None:
            self._load(q)
        return err

    def _activate(self, q: SplitQueue | PackedQueue) -> None:
        super()._activate(q)
        # queue_enable 1 (not DRIVER_OK activating queues already enabled); split queues were loaded when their
        # configuration was checked
        if isinstance(q, PackedQueue) and not q.enabled:
            self._load(q)

    def _set_queue_reset(self, v: int) -> None:
        q = self._q()
        stopped = self._read(q.index) if q is not None else 0
        super()._set_queue_reset(v)
        if q is not None and not q.enabled and v == 1 and has(self.negotiated, F.RING_RESET):
            self.held[q.index] = stopped  # readable in the block until the queue is enabled again
            self.loaded[q.index] = False

    def reset_queue(self, q: SplitQueue) -> None:
        stopped = self._read(q.index)
        super().reset_queue(q)
        self.held[q.index] = stopped
        self.loaded[q.index] = False

    def device_reset(self) -> None:
        super().device_reset()
        self.held = [0] * len(self.queues)
        self.loaded = [False] * len(self.queues)
