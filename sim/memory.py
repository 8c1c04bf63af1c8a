"""Guest memory: memfd-backed regions, each shareable as (fd, offset) with another process or device."""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass, field

PAGE_SIZE = mmap.PAGESIZE


class MemoryError_(Exception):
    """Access to guest-physical addresses that no region backs."""


@dataclass
class MemoryRegion:
    gpa: int
    size: int
    fd: int
    name: str
    mm: mmap.mmap = field(repr=False)

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def view(self) -> memoryview:
        return memoryview(self.mm)


class GuestMemory:
    """Guest-physical address space made of memfd regions (like QEMU's memory-backend-memfd)."""

    def __init__(self) -> None:
        self._regions: list[MemoryRegion] = []
        self._starts: list[int] = []

    @classmethod
    def single(cls, size: int, gpa: int = 0, name: str = "guest-ram") -> GuestMemory:
        mem = cls()
        mem.add_region(gpa, size, name)
        return mem

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        return tuple(self._regions)

    def add_region(self, gpa: int, size: int, name: str = "ram") -> MemoryRegion:
        if size <= 0 or size % PAGE_SIZE or gpa % PAGE_SIZE:
            raise ValueError(f"region {name}: gpa {gpa:#x} and size {size:#x} must be page multiples")
        for r in self._regions:
            if gpa < r.end and r.gpa < gpa + size:
                raise ValueError(f"region {name} [{gpa:#x}, {gpa + size:#x}) overlaps {r.name}")
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        region = MemoryRegion(gpa, size, fd, name, mmap.mmap(fd, size, mmap.MAP_SHARED))
        i = bisect.bisect(self._starts, gpa)
        self._regions.insert(i, region)
        self._starts.insert(i, gpa)
        return region

    def region_at(self, gpa: int, size: int = 1) -> MemoryRegion:
        i = bisect.bisect(self._starts, gpa) - 1
        if i >= 0:
            r = self._regions[i]
            if gpa + size <= r.end:
                return r
        raise MemoryError_(f"guest-physical [{gpa:#x}, +{size:#x}) is not backed by one region")

    def _locate(self, gpa: int, size: int) -> tuple[mmap.mmap, int]:
        """The mapping holding [gpa, gpa + size) and the offset of ``gpa`` in it."""
        r = self.region_at(gpa, size)
        return r.mm, gpa - r.gpa

    def view(self, gpa: int, size: int) -> memoryview:
        mm, off = self._locate(gpa, size)
        return memoryview(mm)[off:off + size]

    def read(self, gpa: int, size: int) -> bytes:
        mm, off = self._locate(gpa, size)
        return mm[off:off + size]  # a slice of the mapping is a copy, without a view in between

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        mm, off = self._locate(gpa, len(data))
        mm[off:off + len(data)] = data

    def fd_offset(self, gpa: int) -> tuple[int, int]:
        r = self.region_at(gpa)
        return r.fd, gpa - r.gpa

    def close(self) -> None:
        for r in self._regions:
            try:
                r.mm.close()
            except BufferError:
                # A live memoryview still references the mapping; it is released with the view.
                pass
            os.close(r.fd)
        self._regions.clear()
        self._starts.clear()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Allocator:
    """First-fit allocator over a guest-physical window, for the driver side's rings and buffers.

    Sizes are rounded up to 16 bytes so that small aligned allocations leave no
    padding slivers behind; the free list stays sorted and a free merges only
    with its two neighbours.
    """

    GRANULE = 16

    def __init__(self, base: int, size: int) -> None:
        self.base = base
        self.size = size
        self._free: list[tuple[int, int]] = [(base, size)]
        self._used: dict[int, int] = {}

    def alloc(self, size: int, align: int = 16) -> int:
        if size <= 0:
            raise ValueError("allocation size must be positive")
        size = -(-size // self.GRANULE) * self.GRANULE
        for i, (start, length) in enumerate(self._free):
            addr = (start + align - 1) // align * align
            pad = addr - start
            if pad + size <= length:
                tail = length - pad - size
                pieces = []
                if pad:
                    pieces.append((start, pad))
                if tail:
                    pieces.append((addr + size, tail))
                self._free[i:i + 1] = pieces
                self._used[addr] = size
                return addr
        raise MemoryError_(f"guest memory exhausted: cannot allocate {size} bytes aligned {align}")

    def free(self, addr: int) -> None:
        size = self._used.pop(addr)
        i = bisect.bisect(self._free, (addr, size))
        start, length = addr, size
        if i < len(self._free) and self._free[i][0] == addr + size:  # merge with the next piece
            length += self._free.pop(i)[1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == start:  # and with the previous one
            start, prev = self._free[i - 1]
            self._free[i - 1] = (start, prev + length)
        else:
            self._free.insert(i, (start, length))
