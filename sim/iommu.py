"""IOMMU: device-visible IOVA ranges mapped onto fd-backed memory with permissions.

Every device access goes through :meth:`Iommu.read` / :meth:`Iommu.write` /
:meth:`Iommu.view`. An access outside the mappings, or against their
permission, raises :class:`DmaFaultError` and is recorded: never a silent read.

A device model that moves many buffers at once uses the batch calls
(:meth:`Iommu.gather`, :meth:`Iommu.scatter`, :meth:`Iommu.try_view`): every
range is checked against the mappings (vectorised), and they stop before the
first range that is not inside one permitted mapping, so the caller can take
that one through :meth:`read` / :meth:`write`, which records the fault.
"""

from __future__ import annotations

import bisect
import mmap
import threading
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from backend.pci.device import DmaFault, DmaFaultError, DmaPerm
from backend.sigbus_guard import guard_mapping, process_guard

PAGE_SIZE = mmap.PAGESIZE
#: Faults kept, pending and logged: the newest. A device serving one hostile driver for long (a pooled
#: vfio-user device, a fuzz run) faults without end, so an unbounded record is unbounded memory.
MAX_RECORDED_FAULTS = 4096

#: Called on every device access (after the permission check): (access, iova, size).
AccessObserver = Callable[[DmaPerm, int, int], None]
#: Called after a device write landed in memory: (iova, size). A device's own dirty page log hangs here, since
#: a page must be marked after its bytes changed, never before (a log read in between would lose the write).
WriteHook = Callable[[int, int], None]


@dataclass
class Mapping:
    iova: int
    size: int
    perm: DmaPerm
    fd: int
    offset: int
    mm: mmap.mmap = field(repr=False)
    view: memoryview = field(repr=False)
    _bytes: NDArray[np.uint8] | None = field(default=None, repr=False)
    _rows: dict[tuple[int, bool], NDArray[np.uint8]] = field(default_factory=dict, repr=False)
    _words: NDArray[np.uint16] | None = field(default=None, repr=False)
    guard: weakref.finalize | None = field(default=None, repr=False)  # type: ignore[type-arg]  # SIGBUS guard range
    #: Its file was truncated under it (the SIGBUS guard replaced a page): every access faults from then on.
    truncated: bool = False

    @property
    def end(self) -> int:
        return self.iova + self.size

    def array(self) -> NDArray[np.uint8]:
        """The mapped bytes as a numpy array (no copy; read-only for a read-only mapping)."""
        arr = self._bytes
        if arr is None:
            arr = self._bytes = np.frombuffer(self.mm, dtype=np.uint8)
        return arr

    def rows(self, width: int, writable: bool) -> NDArray[np.uint8]:
        """Every ``width``-byte window of the mapping as one row (no copy): ``rows(w)[offsets]`` moves
        many equal ranges in one C loop."""
        key = (width, writable)
        win = self._rows.get(key)
        if win is None:
            if len(self._rows) >= _ROW_VIEWS:
                self._rows.clear()
            win = self._rows[key] = sliding_window_view(self.array(), width, writeable=writable)
        return win

    def words(self) -> NDArray[np.uint16]:
        """The mapping as little-endian 16-bit words: an aligned element is read or written with one access."""
        arr = self._words
        if arr is None:
            arr = self._words = np.frombuffer(self.mm, dtype="<u2")
        return arr

    def drop_arrays(self) -> None:
        self._bytes = None
        self._words = None
        self._rows.clear()


#: Window widths kept per mapping for :meth:`Mapping.rows` (frame sizes in flight are few).
_ROW_VIEWS = 16


@dataclass(frozen=True)
class _BatchTable:
    """The mappings as arrays (for checking many ranges at once) and as Python lists (for one range without
    enum arithmetic); rebuilt after every map/unmap."""

    maps: list[Mapping]
    starts: NDArray[np.uint64]
    lasts: NDArray[np.uint64]  # last byte of each mapping (a mapping may end at 2^64)
    readable: NDArray[np.bool_]
    writable: NDArray[np.bool_]
    first: list[int]
    last: list[int]
    can_read: list[bool]
    can_write: list[bool]

    def holding(self, lo: int, hi: int, write: bool) -> int:
        """Index of the one mapping holding bytes ``lo``..``hi`` (inclusive) with the permission, else -1."""
        i = bisect.bisect_right(self.first, lo) - 1
        if i < 0 or hi > self.last[i] or not (self.can_write[i] if write else self.can_read[i]):
            return -1
        return i


#: Ranges of a batch starting below this cannot run past 2^64 (sizes are 32-bit descriptor lengths plus a little).
_NO_WRAP = (1 << 64) - (1 << 34)


class Iommu:
    """IOVA → memory translation for one device (one VFIO container's worth)."""

    def __init__(self) -> None:
        self._maps: list[Mapping] = []
        self._starts: list[int] = []
        self._lock = threading.Lock()
        self._faults: deque[DmaFault] = deque(maxlen=MAX_RECORDED_FAULTS)
        self.fault_log: deque[DmaFault] = deque(maxlen=MAX_RECORDED_FAULTS)  # the newest faults, for reports
        self.observers: list[AccessObserver] = []
        self.write_hooks: list[WriteHook] = []
        self.on_fault: Callable[[DmaFault], None] | None = None
        self._batch: _BatchTable | None = None
        #: Bumped by every map and unmap: a device caching arrays over the mappings keys them on it.
        self.generation = 0
        # The process's SIGBUS guard comes with the first IOMMU, not its first map: its pipe and thread belong
        # to the process from the device's creation on, like the device's own fds.
        process_guard()

    # --- control (driver side) ---------------------------------------------------------------

    def map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        if size <= 0:
            raise ValueError("DMA map size must be positive")
        if iova % PAGE_SIZE or size % PAGE_SIZE or offset % PAGE_SIZE:
            raise ValueError(f"DMA map iova={iova:#x} size={size:#x} offset={offset:#x} must be page aligned")
        if iova + size > 1 << 64:
            raise ValueError("DMA map beyond the 64-bit IOVA space")
        with self._lock:
            for m in self._maps:
                if iova < m.end and m.iova < iova + size:
                    raise ValueError(f"DMA map [{iova:#x}, {iova + size:#x}) overlaps [{m.iova:#x}, {m.end:#x})")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if perm & DmaPerm.WRITE else 0)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot, offset=offset)
            m = Mapping(iova, size, perm, fd, offset, mm, memoryview(mm))
            # A frontend may shrink the file under us: the guard turns the SIGBUS into a fault of this mapping.
            owner, mapping = weakref.ref(self), weakref.ref(m)  # the guard must not keep either alive

            def truncated(offset: int) -> None:
                iommu, gone = owner(), mapping()
                if iommu is not None and gone is not None:
                    iommu._truncated(gone, offset)

            m.guard = guard_mapping(m, mm, size, truncated)
            i = bisect.bisect(self._starts, iova)
            self._maps.insert(i, m)
            self._starts.insert(i, iova)
            self._batch = None
            self.generation += 1

    def unmap(self, iova: int, size: int) -> None:
        """Remove every mapping inside [iova, iova+size); partial overlap is refused (as VFIO type1)."""
        with self._lock:
            keep: list[Mapping] = []
            gone: list[Mapping] = []
            for m in self._maps:
                if m.iova >= iova and m.end <= iova + size:
                    gone.append(m)
                elif iova < m.end and m.iova < iova + size:
                    raise ValueError(f"DMA unmap [{iova:#x}, {iova + size:#x}) splits [{m.iova:#x}, {m.end:#x})")
                else:
                    keep.append(m)
            self._maps = keep
            self._starts = [m.iova for m in keep]
            self._batch = None
            self.generation += 1
        for m in gone:
            if m.guard is not None:
                m.guard()  # released before the address range can be reused
            m.drop_arrays()
            m.view.release()
            try:
                m.mm.close()
            except BufferError:
                pass  # a device-held view keeps the pages alive until it is dropped

    def unmap_all(self) -> None:
        self.unmap(0, 1 << 64)

    def _truncated(self, m: Mapping, offset: int) -> None:
        """The SIGBUS guard's report (on its thread): the page at ``offset`` in ``m`` is past the end of its file
        now. The access that hit it completed on a zero page; from now on the mapping faults. The fault naming the
        page is recorded before the mapping is marked, so it is the first one reported, whichever thread's access
        finds the mapping truncated next."""
        iova = m.iova + offset
        self._fault(iova, PAGE_SIZE, m.perm, f"memory behind IOVA {iova:#x} is gone: its file was truncated")
        with self._lock:
            m.truncated = True
            self._batch = None
            self.generation += 1

    def mappings(self) -> list[tuple[int, int, DmaPerm]]:
        return [(m.iova, m.size, m.perm) for m in self._maps]

    def drain_faults(self) -> list[DmaFault]:
        with self._lock:
            out = list(self._faults)
            self._faults.clear()
        return out

    # --- device side ------------------------------------------------------------------------

    def fault(self, iova: int, size: int, access: DmaPerm, reason: str) -> DmaFaultError:
        """Record a fault raised outside translation (e.g. bus mastering disabled); returns the error."""
        return self._fault(iova, size, access, reason)

    def _fault(self, iova: int, size: int, access: DmaPerm, reason: str) -> DmaFaultError:
        fault = DmaFault(iova, size, access, reason)
        with self._lock:
            self._faults.append(fault)
            self.fault_log.append(fault)
        if self.on_fault is not None:
            self.on_fault(fault)
        return DmaFaultError(fault)

    def _lookup(self, iova: int, size: int, access: DmaPerm) -> list[tuple[Mapping, int, int]]:
        """Pieces (mapping, offset in mapping, length) covering the range, checked at this one place."""
        if size < 0 or iova < 0 or iova + size > 1 << 64:
            raise self._fault(iova, size, access, "address out of the IOVA space")
        pieces: list[tuple[Mapping, int, int]] = []
        maps, starts = self._maps, self._starts
        cur, left = iova, size
        while True:
            i = bisect.bisect(starts, cur) - 1
            if i < 0 or maps[i].end <= cur:
                raise self._fault(iova, size, access, f"no mapping at IOVA {cur:#x}")
            m = maps[i]
            if m.truncated:
                raise self._fault(iova, size, access, f"mapping [{m.iova:#x}, {m.end:#x}): its file was truncated")
            if not m.perm & access:
                raise self._fault(iova, size, access, f"mapping [{m.iova:#x}, {m.end:#x}) is {m.perm!r}")
            take = min(left, m.end - cur)
            pieces.append((m, cur - m.iova, take))
            left -= take
            cur += take
            if left <= 0:
                return pieces

    def _observe(self, access: DmaPerm, iova: int, size: int) -> None:
        for obs in self.observers:
            obs(access, iova, size)

    @property
    def watched(self) -> bool:
        """Someone must see each access (observers, write hooks): no arrays handed out then, every access is a call."""
        return bool(self.observers or self.write_hooks)

    def _written(self, iova: int, size: int) -> None:
        for hook in self.write_hooks:
            hook(iova, size)

    def view(self, iova: int, size: int, access: DmaPerm) -> memoryview:
        """Zero-copy window; the range must lie in one mapping (else use read/write)."""
        pieces = self._lookup(iova, size, access)
        if len(pieces) != 1:
            raise self._fault(iova, size, access, "range spans several mappings")
        m, off, n = pieces[0]
        if self.observers:
            self._observe(access, iova, size)
        return m.view[off:off + n]

    def read(self, iova: int, size: int) -> bytes:
        pieces = self._lookup(iova, size, DmaPerm.READ)
        if self.observers:
            self._observe(DmaPerm.READ, iova, size)
        if len(pieces) == 1:
            m, off, n = pieces[0]
            return m.view[off:off + n].tobytes()
        return b"".join(m.view[off:off + n].tobytes() for m, off, n in pieces)

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        pieces = self._lookup(iova, len(data), DmaPerm.WRITE)
        if self.observers:
            self._observe(DmaPerm.WRITE, iova, len(data))
        src = memoryview(data).cast("B")
        pos = 0
        for m, off, n in pieces:
            m.view[off:off + n] = src[pos:pos + n]
            pos += n
        if self.write_hooks:
            self._written(iova, len(data))

    # --- device side, fast paths -------------------------------------------------------------

    def _batch_table(self) -> _BatchTable:
        table = self._batch
        if table is None:
            with self._lock:
                maps = list(self._maps)
                first = [m.iova for m in maps]
                last = [m.end - 1 for m in maps]
                # A truncated mapping is left to the exact path, which faults.
                can_read = [bool(m.perm & DmaPerm.READ) and not m.truncated for m in maps]
                can_write = [bool(m.perm & DmaPerm.WRITE) and not m.truncated for m in maps]
                table = _BatchTable(maps, np.array(first, dtype=np.uint64), np.array(last, dtype=np.uint64),
                                    np.array(can_read, dtype=np.bool_), np.array(can_write, dtype=np.bool_),
                                    first, last, can_read, can_write)
                self._batch = table
        return table

    # --- device side, one range without enum arithmetic (the hot ring accesses) ------------------

    def read_quick(self, iova: int, size: int) -> bytes:
        """:meth:`read`, with the common case (inside one readable mapping) decided on plain ints; anything
        else goes through :meth:`read`, which records the fault."""
        table = self._batch_table()
        i = table.holding(iova, iova + size - 1, False) if size > 0 and iova >= 0 else -1
        if i < 0:
            return self.read(iova, size)
        if self.observers:
            self._observe(DmaPerm.READ, iova, size)
        m = table.maps[i]
        off = iova - m.iova
        try:
            return m.view[off:off + size].tobytes()
        except ValueError:  # unmapped in between (its view released): the exact path says so
            return self.read(iova, size)

    def write_quick(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        """:meth:`write`, with the common case decided on plain ints (else :meth:`write`, which records faults)."""
        size = len(data)
        table = self._batch_table()
        i = table.holding(iova, iova + size - 1, True) if size > 0 and iova >= 0 else -1
        if i < 0:
            self.write(iova, data)
            return
        if self.observers:
            self._observe(DmaPerm.WRITE, iova, size)
        m = table.maps[i]
        off = iova - m.iova
        try:
            m.view[off:off + size] = memoryview(data).cast("B")
        except ValueError:  # unmapped in between
            self.write(iova, data)
            return
        if self.write_hooks:
            self._written(iova, size)

    def read_u16(self, iova: int) -> int:
        """A 16-bit ring field in one load: the driver moves avail idx while the device reads it, and two byte
        loads could pair half of one value with half of the next. Anything unusual goes through :meth:`read`."""
        table = self._batch_table()
        i = table.holding(iova, iova + 1, False) if iova >= 0 and not iova & 1 else -1
        if i < 0:
            return int.from_bytes(self.read(iova, 2), "little")
        if self.observers:
            self._observe(DmaPerm.READ, iova, 2)
        m = table.maps[i]
        try:
            return int(m.words()[(iova - m.iova) >> 1])
        except ValueError:  # unmapped in between
            return int.from_bytes(self.read(iova, 2), "little")

    def write_u16(self, iova: int, value: int) -> None:
        """A 16-bit ring field (used idx, used.flags, avail_event) in one store, so the driver never reads a
        half-written index. Anything unusual goes through :meth:`write`."""
        table = self._batch_table()
        i = table.holding(iova, iova + 1, True) if iova >= 0 and not iova & 1 else -1
        if i < 0:
            self.write(iova, (value & 0xFFFF).to_bytes(2, "little"))
            return
        if self.observers:
            self._observe(DmaPerm.WRITE, iova, 2)
        m = table.maps[i]
        try:
            m.words()[(iova - m.iova) >> 1] = value & 0xFFFF
        except ValueError:  # unmapped in between
            self.write(iova, (value & 0xFFFF).to_bytes(2, "little"))
            return
        if self.write_hooks:
            self._written(iova, 2)

    # --- device side, batches ---------------------------------------------------------------

    def _check_batch(self, iovas: NDArray[np.uint64], sizes: NDArray[np.uint64] | int,
                     write: bool) -> tuple[int, int, NDArray[np.intp] | None, _BatchTable]:
        """How many leading ranges each lie inside one mapping with the permission, and where: the index of
        the one mapping holding them all (then no array), or -1 and each range's mapping."""
        table = self._batch_table()
        n = len(iovas)
        if n == 0 or not table.maps:
            return 0, -1, None, table
        lo = int(iovas.min())
        top = int(iovas.max())
        span = sizes if isinstance(sizes, int) else int(sizes.max())
        if top < _NO_WRAP and span < 1 << 34:
            # The usual batch: every range inside the span of one mapping, decided with a few reductions.
            i = table.holding(lo, top + max(span, 1) - 1, write)
            if i >= 0:
                return n, i, None, table
        if isinstance(sizes, int):
            sizes = np.full(n, sizes, dtype=np.uint64)
        which = np.searchsorted(table.starts, iovas, side="right").astype(np.intp) - 1
        at = np.maximum(which, 0)
        lasts = table.lasts[at]
        last = iovas + (sizes - np.uint64(1))  # wraps for a range running past 2^64: then last < iova
        inside = np.where(sizes > 0, (last >= iovas) & (last <= lasts), iovas <= lasts)
        allowed = table.writable if write else table.readable
        ok = (which >= 0) & inside & allowed[at]
        bad = np.flatnonzero(~ok)
        return (int(bad[0]) if len(bad) else n), -1, at, table

    def try_view(self, iova: int, size: int, access: DmaPerm) -> memoryview | None:
        """Like :meth:`view`, but None (and no fault) when the range is not inside one permitted mapping.

        For speculative bulk reads (a whole descriptor table): the caller falls back to exact accesses,
        which record a fault where one is due.
        """
        if size <= 0 or iova < 0:
            return None
        table = self._batch_table()
        i = table.holding(iova, iova + size - 1, bool(access & DmaPerm.WRITE))
        if i < 0:
            return None
        if self.observers:
            self._observe(access, iova, size)
        m = table.maps[i]
        try:
            return m.view[iova - m.iova:iova - m.iova + size]
        except ValueError:  # unmapped in between
            return None

    def mapping_bytes(self, iova: int, size: int, write: bool) -> tuple[NDArray[np.uint8], int, int] | None:
        """The bytes of the one mapping holding ``[iova, iova + size)`` with the permission, its first IOVA and its
        last byte's, for compiled code that checks each range against those bounds itself; None when no one
        mapping holds the range, or when observers are attached (they must see every access, so the batch calls
        that report each range are used instead). Valid while :attr:`generation` stays the same."""
        if self.watched or size <= 0 or iova < 0:
            return None
        table = self._batch_table()
        i = table.holding(iova, iova + size - 1, write)
        if i < 0:
            return None
        m = table.maps[i]
        try:
            return m.array(), m.iova, m.end - 1
        except ValueError:  # unmapped in between
            return None

    def gather(self, iovas: NDArray[np.uint64],
               sizes: NDArray[np.uint64] | int) -> tuple[NDArray[np.uint8], int]:
        """Device reads of several ranges (``sizes`` an int: all that long), in order: their bytes back to back,
        and how many ranges were read.

        Stops before the first range that is not inside one readable mapping (none of it is read); the
        caller reads that one with :meth:`read`, which records the fault (or crosses mappings).
        """
        n, single, at, table = self._check_batch(iovas, sizes, False)
        if n == 0:
            return np.empty(0, dtype=np.uint8), 0
        if n < len(iovas):
            iovas = iovas[:n]
        sized = np.full(n, sizes, dtype=np.uint64) if isinstance(sizes, int) else sizes[:n]
        if self.observers:
            for iova, size in zip(iovas.tolist(), sized.tolist(), strict=True):
                self._observe(DmaPerm.READ, iova, size)
        width = sizes if isinstance(sizes, int) else int(sized[0])
        try:
            if single >= 0 and width > 0 and (isinstance(sizes, int) or int(sized.min()) == int(sized.max())):
                # One mapping, equal sizes (a burst of same-sized frames): one fancy index over row windows.
                m = table.maps[single]
                offs = (iovas - np.uint64(m.iova)).astype(np.intp)
                return m.rows(width, False)[offs].reshape(-1), n
            where = np.full(n, single, dtype=np.intp) if at is None else at[:n]
            offs = (iovas - table.starts[where]).astype(np.int64)
            views = [m.view for m in table.maps]
            parts = [views[a][o:o + k] for a, o, k in zip(where.tolist(), offs.tolist(), sized.tolist(), strict=True)]
            return np.frombuffer(b"".join(parts), dtype=np.uint8), n
        except ValueError:  # a mapping went away in between: nothing read, the exact path faults
            return np.empty(0, dtype=np.uint8), 0

    def scatter(self, iovas: NDArray[np.uint64], sizes: NDArray[np.uint64], data: NDArray[np.uint8]) -> int:
        """Device writes of several ranges, in order, from ``data`` (their contents back to back).

        Returns how many ranges were written: it stops before the first range that is not inside one
        writable mapping (nothing of it is written); the caller writes that one with :meth:`write`.
        """
        n, single, at, table = self._check_batch(iovas, sizes, True)
        if n == 0:
            return 0
        if n < len(iovas):
            iovas, sizes = iovas[:n], sizes[:n]
        if self.observers:
            for iova, size in zip(iovas.tolist(), sizes.tolist(), strict=True):
                self._observe(DmaPerm.WRITE, iova, size)
        width = int(sizes[0])
        try:
            if single >= 0 and width > 0 and int(sizes.min()) == int(sizes.max()):
                m = table.maps[single]
                offs = (iovas - np.uint64(m.iova)).astype(np.intp)
                m.rows(width, True)[offs] = data[:n * width].reshape(n, width)
            else:
                where = np.full(n, single, dtype=np.intp) if at is None else at[:n]
                offs = (iovas - table.starts[where]).astype(np.int64)
                views = [m.view for m in table.maps]
                src = np.ascontiguousarray(data).data
                pos = 0
                for a, o, k in zip(where.tolist(), offs.tolist(), sizes.tolist(), strict=True):
                    views[a][o:o + k] = src[pos:pos + k]
                    pos += k
        except ValueError:  # a mapping went away in between: the exact path writes again, and faults
            return 0
        if self.write_hooks:
            for iova, size in zip(iovas.tolist(), sizes.tolist(), strict=True):
                self._written(iova, size)
        return n
