"""IOMMU: device-visible IOVA ranges mapped onto fd-backed memory with permissions.

Every device access goes through :meth:`Iommu.read` / :meth:`Iommu.write` /
:meth:`Iommu.view`. An access outside the mappings, or against their
permission, raises :class:`DmaFaultError` and is recorded: never a silent read.
"""

from __future__ import annotations

import bisect
import mmap
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.pci.device import DmaFault, DmaFaultError, DmaPerm

PAGE_SIZE = mmap.PAGESIZE

#: Called on every device access (after the permission check): (access, iova, size).
AccessObserver = Callable[[DmaPerm, int, int], None]


@dataclass
class Mapping:
    iova: int
    size: int
    perm: DmaPerm
    fd: int
    offset: int
    mm: mmap.mmap = field(repr=False)
    view: memoryview = field(repr=False)

    @property
    def end(self) -> int:
        return self.iova + self.size


class Iommu:
    """IOVA → memory translation for one device (one VFIO container's worth)."""

    def __init__(self) -> None:
        self._maps: list[Mapping] = []
        self._starts: list[int] = []
        self._lock = threading.Lock()
        self._faults: list[DmaFault] = []
        self.fault_log: list[DmaFault] = []  # every fault ever, for reports
        self.observers: list[AccessObserver] = []
        self.on_fault: Callable[[DmaFault], None] | None = None

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
            i = bisect.bisect(self._starts, iova)
            self._maps.insert(i, m)
            self._starts.insert(i, iova)

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
        for m in gone:
            m.view.release()
            try:
                m.mm.close()
            except BufferError:
                pass  # a device-held view keeps the pages alive until it is dropped

    def unmap_all(self) -> None:
        self.unmap(0, 1 << 64)

    def mappings(self) -> list[tuple[int, int, DmaPerm]]:
        return [(m.iova, m.size, m.perm) for m in self._maps]

    def drain_faults(self) -> list[DmaFault]:
        with self._lock:
            out, self._faults = self._faults, []
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
