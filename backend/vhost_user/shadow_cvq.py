"""The device's control virtqueue, owned by the backend (a *shadow* CVQ, as QEMU does for vhost-vdpa).

vhost-user frontends (DPDK virtio_user with ``cq=1``, QEMU) run the control queue themselves and
tell the backend which rings to use with SET_VRING_ENABLE; they negotiate ``VIRTIO_NET_F_MQ``
without ``VIRTIO_NET_F_CTRL_VQ``. A virtio-net device, though, only serves more than one queue
pair after ``VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`` on its control queue (NETFEAT: MQ requires
CTRL_VQ). So the backend negotiates CTRL_VQ for itself, keeps a small split ring in its own
memory, maps it into the device at an IOVA no frontend region uses, and sends the commands.

One command in flight at a time; each waits for the used entry under a deadline, woken by the
queue's call eventfd (no polling).
"""

from __future__ import annotations

import os
import struct
import time
from typing import Final

from backend.device import VdpaDevice, VqState
from backend.eventloop import new_eventfd, wait_eventfd
from backend.vhost_user.device_memory import DeviceMemory
from backend.virtio.net_ctrl import VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_OK
from backend.virtio.split_ring import DESC, USED_ELEM, DescFlags, SplitLayout

#: Where the ring lives in the device's IO address space: above any guest-physical address a
#: frontend sends (x86-64 guests stay below 2^46; virtio_user uses process addresses below 2^47).
SHADOW_IOVA: Final = 0xFFFF_0000_0000
QUEUE_SIZE: Final = 4
_PAGE: Final = 4096
_CMD_OFF: Final = 2048  # command header + data
_ACK_OFF: Final = 3072  # one status byte the device writes
COMMAND_TIMEOUT: Final = 5.0


class ControlQueueError(Exception):
    """The device did not complete a control command, or refused it."""


class ShadowControlQueue:
    """Control queue ``index`` of ``device``, driven by the backend. :meth:`setup` before DRIVER_OK."""

    def __init__(self, device: VdpaDevice, index: int, iova: int = SHADOW_IOVA) -> None:
        self.device = device
        self.index = index
        self.iova = iova
        self.size = min(QUEUE_SIZE, device.get_vq_num_max(index))
        self.layout = SplitLayout(self.size)
        self._page = DeviceMemory(device, "shadow-cvq", iova, _PAGE)
        self._mem = self._page.mem
        self._kick = new_eventfd()
        self._call = new_eventfd()
        self._avail_idx = 0
        self._used_seen = 0
        self._desc = 0
        self._avail = self.layout.desc_bytes
        self._used = (self._avail + self.layout.avail_bytes + 3) & ~3
        if self._used + self.layout.used_bytes > _CMD_OFF:
            raise ControlQueueError(f"control queue of {self.size} entries does not fit its page")

    def range(self) -> tuple[int, int]:
        """The IOVA range the queue occupies (a memory table must not overlap it)."""
        return self.iova, _PAGE

    def setup(self) -> None:
        """Map the page, program the queue and make it ready (the device must be past FEATURES_OK)."""
        d = self.device
        self._page.attach()
        d.set_vq_num(self.index, self.size)
        d.set_vq_address(self.index, self.iova + self._desc, self.iova + self._avail, self.iova + self._used)
        d.set_vq_state(self.index, VqState(avail_idx=0))
        d.set_vq_kick(self.index, self._kick)
        d.set_vq_call(self.index, self._call)
        d.set_vq_ready(self.index, True)

    def command(self, cls: int, cmd: int, data: bytes, timeout: float = COMMAND_TIMEOUT) -> int:
        """Send one command; returns the device's ack byte (VIRTIO_NET_OK = 0)."""
        if len(data) > _ACK_OFF - _CMD_OFF - 2:
            raise ControlQueueError(f"control command data of {len(data)} bytes is too long")
        mem = self._mem
        mem[_CMD_OFF:_CMD_OFF + 2] = bytes((cls, cmd))
        mem[_CMD_OFF + 2:_CMD_OFF + 2 + len(data)] = data
        mem[_ACK_OFF] = 0xFF
        base = self.iova
        descs = ((base + _CMD_OFF, 2, DescFlags.NEXT, 1), (base + _CMD_OFF + 2, len(data), DescFlags.NEXT, 2),
                 (base + _ACK_OFF, 1, DescFlags.WRITE, 0))
        for i, (addr, length, flags, nxt) in enumerate(descs):
            DESC.pack_into(mem, self._desc + 16 * i, addr, length, flags, nxt)
        slot = self._avail_idx % self.size
        struct.pack_into("<H", mem, self._avail + self.layout.avail_ring_entry(slot), 0)
        self._avail_idx = (self._avail_idx + 1) & 0xFFFF
        # The ring entry is written before avail idx (the device reads idx first, then the entry).
        struct.pack_into("<H", mem, self._avail + SplitLayout.AVAIL_IDX, self._avail_idx)
        os.eventfd_write(self._kick, 1)
        deadline = time.monotonic() + timeout
        while self._used_idx() == self._used_seen:  # woken by the queue's interrupt (call eventfd)
            if not wait_eventfd(self._call, deadline - time.monotonic()) and time.monotonic() >= deadline:
                raise ControlQueueError(f"control queue {self.index}: command {cls}/{cmd} not completed "
                                        f"within {timeout} s")
        used_slot = self._used_seen % self.size
        self._used_seen = (self._used_seen + 1) & 0xFFFF
        head, written = USED_ELEM.unpack_from(mem, self._used + self.layout.used_ring_entry(used_slot))
        if head != 0 or written < 1:
            raise ControlQueueError(f"control queue {self.index}: used entry (id {head}, len {written}) "
                                    "does not complete the command")
        return mem[_ACK_OFF]

    def set_queue_pairs(self, pairs: int) -> None:
        ack = self.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", pairs))
        if ack != VIRTIO_NET_OK:
            raise ControlQueueError(f"device refused VQ_PAIRS_SET {pairs} (ack {ack})")

    def _used_idx(self) -> int:
        idx: int = struct.unpack_from("<H", self._mem, self._used + SplitLayout.USED_IDX)[0]
        return idx

    def close(self) -> None:
        """Unmap from the device (after it was reset or the queue stopped) and free the page."""
        self._page.close()
        for fd in (self._kick, self._call):
            os.close(fd)
