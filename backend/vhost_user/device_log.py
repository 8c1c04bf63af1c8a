"""Dirty tracking by the device itself: a bytemap it writes, folded into the frontend's log by the backend.

A device whose driver reports :meth:`~backend.device.DeviceDirtyLog.logs_dma_writes` (a vendor block named by
its quirk record) logs every page it writes by DMA, so while ``VHOST_F_LOG_ALL`` is on its rings keep running
on the direct path: no shadow used ring, no relay, no ring stopped to switch paths (packed rings too).

The device does not write vhost-user's bitmap. It writes a *bytemap*, one byte per 4 KiB page of IOVA
space, in a memfd of this module mapped into the device at :data:`DEVICE_LOG_IOVA` (above the shadow
rings, beyond any guest-physical address): setting a bit would be a read-modify-write of a byte that the
frontend clears and other writers set, and a device write between the read and the write would drop their
bits. IOVA equals guest-physical address in this backend (the memory table is mapped that way), so byte
``p`` stands for the frontend's page ``p``.

:meth:`DeviceLog.fold` moves what the device wrote into the frontend's log: each 64-bit word of the bytemap
holding a mark (found with ``mmap.find``) is swapped with zero in one atomic exchange (a byte the device
writes during the fold is either in the swapped word or stays for the next fold, never lost), and the pages
found are set in the log with atomic ORs. Folds run on a timer (:data:`FOLD_PERIOD`) while logging, and
always before a ring's state is answered (GET_VRING_BASE), before the log changes hands and when logging
stops: the device has finished its writes and their log writes by then (a stopped queue, a disabled block that
is no longer busy).
A used ring logged at a ``log_guest_addr`` other than its own address gets those pages marked as well.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterable
from typing import Final

from backend.device import DeviceDirtyLog, VdpaError
from backend.pci.device import PciError
from backend.vhost_user.device_memory import DeviceMemory
from backend.vhost_user.dirty_log import SEQ_CST, DirtyLog, atomic_exchange_8, page_span
from backend.vhost_user.shadow_cvq import SHADOW_IOVA

#: Where the bytemap is mapped into the device: 2 GiB above the shadow control queue and used rings.
DEVICE_LOG_IOVA: Final = SHADOW_IOVA + 0x8000_0000
#: Most pages one bytemap covers (the IOVA room up to 2^48): 8 TiB of guest memory.
MAX_PAGES: Final = (1 << 48) - DEVICE_LOG_IOVA
#: Seconds between folds while logging. QEMU reads the log once per migration pass, many milliseconds apart;
#: what is folded late is sent in a later pass, and the last fold comes before the rings' state is answered.
FOLD_PERIOD: Final = 0.01
#: What the device writes into a page's byte.
_MARK: Final = b"\x01"


class DeviceLogError(Exception):
    """The bytemap could not be set up, or the device refused to log (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def device_logging(device: object) -> DeviceDirtyLog | None:
    """The device as a :class:`DeviceDirtyLog` when it logs its own writes and this host can fold its bytemap."""
    if isinstance(device, DeviceDirtyLog) and device.logs_dma_writes() and atomic_exchange_8() is not None:
        return device
    return None


def device_log_range(pages: int) -> tuple[int, int]:
    """The IOVA range a bytemap of ``pages`` pages occupies (a memory table must not overlap it)."""
    return DEVICE_LOG_IOVA, -(-max(pages, 1) // mmap.PAGESIZE) * mmap.PAGESIZE


class DeviceLog:
    """The bytemap of one logging period: created and mapped, the device told to log into it, folded, stopped.

    ``aliases`` names, per ring, a used ring's address, the ``log_guest_addr`` its writes are also logged at
    (rings whose log address differs from the ring's own) and the ring's size in bytes.
    """

    def __init__(self, device: DeviceDirtyLog, pages: int) -> None:
        xchg = atomic_exchange_8()
        if xchg is None:
            raise DeviceLogError("no atomic exchange (libatomic.so.1): the device's bytemap cannot be folded")
        self._xchg = xchg
        self.device = device
        self.pages = min(pages, MAX_PAGES)
        self.iova, self.size = device_log_range(self.pages)
        self.aliases: dict[int, tuple[int, int, int]] = {}  # ring -> (used ring, its log address, bytes)
        self._bytemap = DeviceMemory(device, "device-log", self.iova, self.size)
        # The bytemap's address for the atomic exchange; the ctypes view pins the mapping until close drops it.
        self._cells: ctypes.Array[ctypes.c_ubyte] | None = (ctypes.c_ubyte * self.size).from_buffer(self._bytemap.mem)
        self._base = ctypes.addressof(self._cells)
        try:
            self._bytemap.attach()
            self.start()
        except (VdpaError, PciError, OSError) as exc:
            self.close()
            raise DeviceLogError(f"device-side dirty logging not started: {exc}") from None
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """(Again) tell the device to log here: after a device reset cleared its block, for example."""
        self.device.log_start(self.iova, self.pages)

    def running(self) -> bool:
        return self.device.log_running()

    def fold(self, log: DirtyLog) -> int:
        """Move every page the device marked into ``log``; returns how many. Pages past the log raise
        DirtyLogError from ``log`` (after the others were set)."""
        mem = self._bytemap.mem
        if self._cells is None:
            return 0
        found: list[int] = []
        # The device writes 0x01 (the block's contract); find() scans at C speed, each hit's word is swapped whole.
        at = mem.find(_MARK)
        while at >= 0:
            w = at >> 3
            value = self._xchg(self._base + 8 * w, 0, SEQ_CST)
            found += [8 * w + b for b in range(8) if value >> (8 * b) & 0xFF]
            at = mem.find(_MARK, 8 * (w + 1))
        if not found:
            return 0
        log.mark_pages(self._with_aliases(found))
        return len(found)

    def _with_aliases(self, pages: list[int]) -> Iterable[int]:
        if not self.aliases:
            return pages
        out = set(pages)
        for used, alias, size in self.aliases.values():
            if any(p in out for p in page_span(used, size)):
                out.update(page_span(alias, size))
        return out

    def stop(self) -> None:
        """Stop the device logging: it is done with its log writes on return (the caller folds the last of them)."""
        self.device.log_stop()

    def close(self) -> None:
        """Unmap from the device (stopped first by the caller) and free the bytemap."""
        self._cells = None
        self._bytemap.close()
