"""Dirty tracking for a device that keeps no log of its own: the backend interposes on the used ring.

While the frontend has ``VHOST_F_LOG_ALL`` on, a ring handed to the device gets a *shadow used
ring* in backend memory, mapped into the device at an IOVA no frontend region uses (above the
shadow control queue, :data:`backend.vhost_user.shadow_cvq.SHADOW_IOVA`). The device still reads
the frontend's descriptor table and available ring and still reads and writes the frontend's
buffers in place: no packet is copied. Its used-buffer interrupt goes to an eventfd of the
backend; for each new used entry :meth:`UsedRelay.relay` marks in the dirty log every page the
device wrote (the chain's device-writable buffers, up to the entry's ``len``, found through the
frontend's descriptor table), copies the entry to the frontend's used ring and marks that, and
only then publishes the used index and signals the frontend's call eventfd. This is the mediated
used ring of DPDK's IFC VF software relay, here in the session's own thread.

The frontend's ``flags`` and ``avail_event`` in its used ring are copied on every pass. The
device's interrupt decision reads the frontend's ``used_event``/``flags`` directly, so an
interrupt the frontend suppressed is also not seen here: those entries are published at the
device's next interrupt or when the ring stops (GET_VRING_BASE relays before answering).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Final

from backend.device import VdpaDevice
from backend.eventloop import consume_eventfd, new_eventfd
from backend.pci.device import DmaPerm
from backend.vhost_user.dirty_log import DirtyLog
from backend.vhost_user.memory import MemoryTable
from backend.vhost_user.shadow_cvq import SHADOW_IOVA
from backend.virtio.split_ring import DESC, DESC_SIZE, USED_ELEM, USED_ELEM_SIZE, DescFlags, SplitLayout

#: First shadow used ring's IOVA; ring ``q`` is at ``SHADOW_USED_IOVA + q * SHADOW_STRIDE``.
SHADOW_USED_IOVA: Final = SHADOW_IOVA + 0x10_0000
#: Room per ring: a used ring of 32768 entries is 262 150 bytes.
SHADOW_STRIDE: Final = 0x10_0000
_PAGE: Final = 4096
_U16: Final = struct.Struct("<H")


class LogShadowError(Exception):
    """The device or the frontend's rings said something the relay cannot follow (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def shadow_range(index: int) -> tuple[int, int]:
    """The IOVA range ring ``index``'s shadow used ring may occupy (a memory table must not overlap it)."""
    return SHADOW_USED_IOVA + index * SHADOW_STRIDE, SHADOW_STRIDE


class UsedRelay:
    """Ring ``index``'s used ring, interposed while logging.

    ``used`` is the frontend's used ring (guest-physical), ``log_used`` where writes to it are logged
    (the ring's ``log_guest_addr``), ``call`` the frontend's call eventfd (None: no interrupts).
    :meth:`attach` maps the shadow; :meth:`close` unmaps it once the device stopped the ring.
    """

    def __init__(self, device: VdpaDevice, index: int, num: int, desc: int, used: int, log_used: int,
                 call: int | None, *, indirect: bool) -> None:
        self.device = device
        self.index = index
        self.num = num
        self.layout = SplitLayout(num)
        self.desc = desc
        self.used = used
        self.log_used = log_used
        self.call = call
        self.indirect = indirect
        self.iova = shadow_range(index)[0]
        self.size = -(-self.layout.used_bytes // _PAGE) * _PAGE
        self.last = 0  # used index published to the frontend
        self.relayed = 0  # used entries copied in all
        self._fd = os.memfd_create(f"vdpa-bench-shadow-used-{index}", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, self.size)
        self._mem = mmap.mmap(self._fd, self.size)
        self.device_call = new_eventfd()
        self._mapped = False

    def attach(self, table: MemoryTable) -> None:
        """Map the shadow into the device and start it at the frontend's used index and flags."""
        front = table.gpa_view(self.used, 4)
        try:
            self._mem[0:4] = front
            self.last = int(_U16.unpack_from(front, SplitLayout.USED_IDX)[0])
        finally:
            front.release()
        self.device.dma_map(self.iova, self.size, self._fd, 0, DmaPerm.RW)
        self._mapped = True

    def service(self, table: MemoryTable, log: DirtyLog) -> int:
        """The device signalled: relay, then pass the interrupt on. Returns the entries relayed."""
        if not consume_eventfd(self.device_call):
            return 0
        n = self.relay(table, log)
        if self.call is not None:
            os.eventfd_write(self.call, 1)  # the device already applied the frontend's suppression
        return n

    def relay(self, table: MemoryTable, log: DirtyLog) -> int:
        """Log and copy every used entry the device added since the last pass, then publish the index."""
        lay, shadow = self.layout, self._mem
        dev_idx: int = _U16.unpack_from(shadow, SplitLayout.USED_IDX)[0]
        count = (dev_idx - self.last) & 0xFFFF
        if count > self.num:
            raise LogShadowError(f"ring {self.index}: device used index {dev_idx} is {count} entries past "
                                 f"{self.last}, more than the ring's {self.num}")
        front = table.gpa_view(self.used, lay.used_bytes)
        try:
            for k in range(count):
                off = lay.used_ring_entry((self.last + k) % self.num)
                head, written = USED_ELEM.unpack_from(shadow, off)
                self._log_chain(table, log, head, written)
                log.mark(self.log_used + off, USED_ELEM_SIZE)
                front[off:off + USED_ELEM_SIZE] = shadow[off:off + USED_ELEM_SIZE]
            event = lay.avail_event
            log.mark(self.log_used, 2)
            log.mark(self.log_used + event, 2)
            front[0:2] = shadow[0:2]  # flags (NO_NOTIFY)
            front[event:event + 2] = shadow[event:event + 2]
            if count:
                log.mark(self.log_used + SplitLayout.USED_IDX, 2)
                # Entries and their pages are in place before the index makes them visible.
                _U16.pack_into(front, SplitLayout.USED_IDX, dev_idx)
        finally:
            front.release()
        self.last = dev_idx
        self.relayed += count
        return count

    def _log_chain(self, table: MemoryTable, log: DirtyLog, head: int, written: int) -> None:
        """Mark the pages of the first ``written`` bytes of the chain's device-writable buffers."""
        if head >= self.num:
            raise LogShadowError(f"ring {self.index}: used entry id {head} is not below the ring size {self.num}")
        table_addr, table_len, i = self.desc, self.num, head
        left = written
        for _ in range(self.num + 1):  # a chain longer than the table loops
            if left <= 0:
                return
            addr, length, flags, nxt = _read_desc(table, table_addr, i)
            if flags & DescFlags.INDIRECT and self.indirect and table_addr == self.desc:
                if length % DESC_SIZE or not length:
                    raise LogShadowError(f"ring {self.index}: indirect table of {length} bytes at {addr:#x}")
                table_addr, table_len, i = addr, length // DESC_SIZE, 0
                continue
            if flags & DescFlags.WRITE:
                part = min(length, left)
                log.mark(addr, part)
                left -= part
            if not flags & DescFlags.NEXT:
                break
            if nxt >= table_len:
                raise LogShadowError(f"ring {self.index}: descriptor {i} links to {nxt}, past {table_len}")
            i = nxt
        if left > 0:
            raise LogShadowError(f"ring {self.index}: used entry {head} says {written} bytes written, the "
                                 f"chain's writable buffers hold {written - left}")

    def close(self) -> None:
        """Unmap from the device (stopped first by the caller) and free the shadow."""
        if self._mapped:
            self._mapped = False
            try:
                self.device.dma_unmap(self.iova, self.size)
            except Exception:  # the device may already be gone; the shadow is freed regardless
                pass
        self._mem.close()
        for fd in (self._fd, self.device_call):
            os.close(fd)


def _read_desc(table: MemoryTable, table_addr: int, i: int) -> tuple[int, int, int, int]:
    view = table.gpa_view(table_addr + i * DESC_SIZE, DESC_SIZE)
    try:
        addr, length, flags, nxt = DESC.unpack(view)
    finally:
        view.release()
    return int(addr), int(length), int(flags), int(nxt)
