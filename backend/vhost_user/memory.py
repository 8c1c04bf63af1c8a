"""The vhost-user memory table: the frontend's shared memory regions, translated and handed to the device.

A frontend describes its memory in SET_MEM_TABLE as up to eight regions, each a file descriptor
plus four numbers: where the region sits in guest-physical space (``guest_phys_addr``), its
length, where the frontend itself has it mapped (``userspace_addr``, the address space of ring
addresses in SET_VRING_ADDR) and where it starts inside the file (``mmap_offset``). QEMU sends
guest-physical layouts; DPDK's virtio_user sends gpa == uva.

:class:`MemoryTable` checks such a layout once, owns the descriptors from then on, and offers:

* translation between the two address spaces (``uva_to_gpa``, ``gpa_to_uva``) and zero-copy
  views for the backend's own occasional reads (``gpa_view``, ``uva_view``); every range check
  happens in :meth:`MemoryTable.find`, and a range that does not lie inside one region raises
  :class:`MemoryTableError`;
* device programming: :meth:`MemoryTable.program` maps every region into the accelerator's IOVA
  space at ``iova = guest_phys_addr``; :meth:`MemoryTable.replace` moves a running device from
  one table to the next, touching only the regions that differ, so rings living in an unchanged
  region stay mapped throughout; :meth:`MemoryTable.covers` lets the session check ring
  addresses against a candidate table before it commits to it.

The regions are mapped ``MAP_SHARED`` but never populated: mapping is lazy, so a 256 MB table is
set up in microseconds and costs no resident memory until something reads it. The data path
does not use these mappings at all; the device reaches the memory through its own DMA mappings.

A table is not thread safe: the session applies control messages one at a time.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import stat
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import pairwise
from typing import Protocol

from backend.device import VdpaError
from backend.pci.device import DmaPerm, PciError
from backend.sigbus_guard import guard_mapping

PAGE_SIZE = mmap.PAGESIZE
#: vhost-user's VHOST_MEMORY_BASELINE_NREGIONS: the table size every frontend must fit in.
DEFAULT_MAX_REGIONS = 8
ADDRESS_LIMIT = 1 << 64


class MemoryTableError(Exception):
    """A memory table that cannot be accepted, or an address range it does not cover."""


@dataclass(frozen=True)
class MemoryRegion:
    """One region of a memory table; ``fd`` backs ``[mmap_offset, mmap_offset + memory_size)``."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int
    fd: int

    @property
    def gpa_end(self) -> int:
        return self.guest_phys_addr + self.memory_size

    def describe(self) -> str:
        return (f"gpa [{self.guest_phys_addr:#x}, {self.gpa_end:#x}) uva {self.userspace_addr:#x} "
                f"size {self.memory_size:#x} offset {self.mmap_offset:#x} fd {self.fd}")


#: What :meth:`MemoryTable.build` takes: the layout plus the descriptor received for it.
RegionSpec = MemoryRegion


class WireRegion(Protocol):
    """A region as decoded from SET_MEM_TABLE (the descriptors travel beside it)."""

    @property
    def guest_phys_addr(self) -> int: ...

    @property
    def memory_size(self) -> int: ...

    @property
    def userspace_addr(self) -> int: ...

    @property
    def mmap_offset(self) -> int: ...


class DmaTarget(Protocol):
    """The DMA half of ``VdpaDevice`` (and of ``PciDevice``): all that programming needs."""

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None: ...

    def dma_unmap(self, iova: int, size: int) -> None: ...


class AddressSpace(Enum):
    GPA = "gpa"  #: guest-physical (the device's IOVA space)
    UVA = "uva"  #: the frontend's virtual addresses (SET_VRING_ADDR)


@dataclass(frozen=True)
class TableChange:
    """What :meth:`MemoryTable.replace` did to the device's IOVA space."""

    unmapped: tuple[MemoryRegion, ...]  #: regions of the old table removed from the device
    mapped: tuple[MemoryRegion, ...]  #: regions of the new table newly mapped
    kept: tuple[MemoryRegion, ...]  #: regions of the new table whose old mapping stayed in place

    @property
    def changed(self) -> bool:
        return bool(self.unmapped or self.mapped)


@dataclass(eq=False)  # identity: comparing the views would read the whole region
class _Mapped:
    index: int  # position in the table as received, for messages
    region: MemoryRegion
    backing: tuple[int, int]  # (st_dev, st_ino): which file, whatever the descriptor number
    mm: mmap.mmap = field(repr=False)
    view: memoryview = field(repr=False)  # exactly the region's bytes inside ``mm``
    #: The mapping's range in the process's SIGBUS guard (the frontend may truncate the file).
    guard: weakref.finalize | None = field(default=None, repr=False)  # type: ignore[type-arg]

    def unmap(self) -> None:
        self.view.release()
        if self.guard is not None:
            self.guard()  # released before the address range can be reused
        try:
            self.mm.close()
        except BufferError:
            pass  # a caller still holds a view: the pages stay until it is dropped


_DEVICE_ERRORS = (VdpaError, PciError, OSError, ValueError)


def _name(index: int, region: MemoryRegion) -> str:
    return f"region {index} ({region.describe()})"


class MemoryTable:
    """A validated, mapped memory table; owns its descriptors. Build it with :meth:`build`."""

    def __init__(self, entries: list[_Mapped], owned_fds: set[int]) -> None:
        self._entries = sorted(entries, key=lambda e: e.region.guest_phys_addr)
        self._by_uva = sorted(self._entries, key=lambda e: e.region.userspace_addr)
        self._gpa_starts = [e.region.guest_phys_addr for e in self._entries]
        self._uva_starts = [e.region.userspace_addr for e in self._by_uva]
        self._fds = owned_fds
        self._device: DmaTarget | None = None
        self._closed = False

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def build(cls, regions: Sequence[RegionSpec], *, max_regions: int = DEFAULT_MAX_REGIONS) -> MemoryTable:
        """Validate and map ``regions``. Their fds belong to the table from this call on.

        On any error every fd is closed before :class:`MemoryTableError` is raised.
        """
        fds = {r.fd for r in regions if r.fd >= 0}
        entries: list[_Mapped] = []
        try:
            cls._check_layout(regions, max_regions)
            for i, r in enumerate(regions):
                entries.append(cls._map_region(i, r))
        except BaseException:
            for e in entries:
                e.unmap()
            for fd in fds:
                _close_quietly(fd)
            raise
        return cls(entries, fds)

    @classmethod
    def from_wire(cls, regions: Sequence[WireRegion], fds: Sequence[int], *,
                  max_regions: int = DEFAULT_MAX_REGIONS) -> MemoryTable:
        """Pair decoded SET_MEM_TABLE regions with the fds received with them, in order."""
        if len(regions) != len(fds):
            for fd in set(fds):
                if fd >= 0:
                    _close_quietly(fd)
            raise MemoryTableError(f"memory table has {len(regions)} regions but {len(fds)} fds came with it")
        specs = [MemoryRegion(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset, fd)
                 for r, fd in zip(regions, fds, strict=True)]
        return cls.build(specs, max_regions=max_regions)

    @staticmethod
    def _check_layout(regions: Sequence[MemoryRegion], max_regions: int) -> None:
        if len(regions) > max_regions:
            raise MemoryTableError(f"memory table has {len(regions)} regions, at most {max_regions} are supported")
        for i, r in enumerate(regions):
            name = _name(i, r)
            if r.memory_size <= 0:
                raise MemoryTableError(f"{name}: size must be non-zero")
            for what, value in (("guest_phys_addr", r.guest_phys_addr), ("userspace_addr", r.userspace_addr),
                                ("mmap_offset", r.mmap_offset)):
                if value < 0:
                    raise MemoryTableError(f"{name}: {what} is negative")
                if value + r.memory_size > ADDRESS_LIMIT:
                    raise MemoryTableError(f"{name}: {what} + size wraps past 2^64")
        for space, start in ((AddressSpace.GPA, "guest_phys_addr"), (AddressSpace.UVA, "userspace_addr")):
            order = sorted(range(len(regions)), key=lambda k: getattr(regions[k], start))
            for a, b in pairwise(order):
                ra, rb = regions[a], regions[b]
                if getattr(ra, start) + ra.memory_size > getattr(rb, start):
                    raise MemoryTableError(f"{_name(b, rb)} overlaps {_name(a, ra)} in {space.value} space")

    @staticmethod
    def _map_region(index: int, r: MemoryRegion) -> _Mapped:
        name = _name(index, r)
        try:
            st = os.fstat(r.fd)
        except OSError as exc:
            raise MemoryTableError(f"{name}: fd is not usable: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            # Guest memory is a file (memfd, tmpfs, hugetlbfs); mmap of anything else fails obscurely or,
            # for a device node, maps something that is not the frontend's memory.
            raise MemoryTableError(f"{name}: fd is {_fd_kind(st.st_mode)}, not a memory file (memfd, tmpfs, hugetlbfs)")
        if r.mmap_offset + r.memory_size > st.st_size:
            raise MemoryTableError(f"{name}: offset + size {r.mmap_offset + r.memory_size:#x} "
                                   f"is beyond the end of the file ({st.st_size:#x} bytes)")
        base = r.mmap_offset - r.mmap_offset % PAGE_SIZE
        lead = r.mmap_offset - base
        try:
            # MAP_SHARED without MAP_POPULATE: nothing is faulted in until it is read.
            mm = mmap.mmap(r.fd, lead + r.memory_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                           offset=base)
        except (OSError, ValueError, OverflowError) as exc:
            raise MemoryTableError(f"{name}: cannot map the fd: {exc}") from None
        view = memoryview(mm)[lead:lead + r.memory_size]
        # A frontend that shrinks the file later would make our next read of it a SIGBUS: guarded.
        mapped = _Mapped(index, r, (st.st_dev, st.st_ino), mm, view)
        mapped.guard = guard_mapping(mapped, mm, lead + r.memory_size)
        return mapped

    # --- inspection ---------------------------------------------------------------------------

    @property
    def regions(self) -> tuple[MemoryRegion, ...]:
        """The regions in guest-physical order."""
        return tuple(e.region for e in self._entries)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def programmed(self) -> bool:
        """True while this table's regions are mapped into a device."""
        return self._device is not None

    def __len__(self) -> int:
        return len(self._entries)

    def __enter__(self) -> MemoryTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- translation (every bounds check is here) ---------------------------------------------

    def find(self, addr: int, size: int, space: AddressSpace = AddressSpace.GPA) -> MemoryRegion:
        """The region holding all of ``[addr, addr + size)`` in ``space``; else ``MemoryTableError``."""
        return self._find(addr, size, space).region

    def _find(self, addr: int, size: int, space: AddressSpace) -> _Mapped:
        if self._closed:
            raise MemoryTableError("memory table is closed")
        if size < 0 or addr < 0:
            raise MemoryTableError(f"bad {space.value} range: address {addr:#x}, size {size}")
        if space is AddressSpace.GPA:
            entries, starts = self._entries, self._gpa_starts
        else:
            entries, starts = self._by_uva, self._uva_starts
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0:
            e = entries[i]
            start = starts[i]
            end = start + e.region.memory_size
            if addr < end and addr + size <= end:
                return e
        raise MemoryTableError(f"{space.value} range [{addr:#x}, {addr + size:#x}) is not inside one region "
                               f"of the memory table")

    def uva_to_gpa(self, uva: int, size: int = 1) -> int:
        r = self._find(uva, size, AddressSpace.UVA).region
        return r.guest_phys_addr + (uva - r.userspace_addr)

    def gpa_to_uva(self, gpa: int, size: int = 1) -> int:
        r = self._find(gpa, size, AddressSpace.GPA).region
        return r.userspace_addr + (gpa - r.guest_phys_addr)

    def gpa_view(self, gpa: int, size: int) -> memoryview:
        """Writable zero-copy window on ``[gpa, gpa + size)`` (release it before :meth:`close`)."""
        e = self._find(gpa, size, AddressSpace.GPA)
        off = gpa - e.region.guest_phys_addr
        return e.view[off:off + size]

    def uva_view(self, uva: int, size: int) -> memoryview:
        e = self._find(uva, size, AddressSpace.UVA)
        off = uva - e.region.userspace_addr
        return e.view[off:off + size]

    def uncovered(self, ranges: Iterable[tuple[int, int]],
                  space: AddressSpace = AddressSpace.UVA) -> list[tuple[int, int]]:
        """The ``(addr, size)`` ranges that do not lie inside one region, in the order given."""
        out: list[tuple[int, int]] = []
        for addr, size in ranges:
            try:
                self._find(addr, size, space)
            except MemoryTableError:
                out.append((addr, size))
        return out

    def covers(self, ranges: Iterable[tuple[int, int]], space: AddressSpace = AddressSpace.UVA) -> bool:
        """True when every ``(addr, size)`` range (ring addresses, say) lies inside one region."""
        return not self.uncovered(ranges, space)

    def overlaps(self, gpa: int, size: int) -> bool:
        """True when any region shares a byte with guest-physical ``[gpa, gpa + size)``."""
        return any(e.region.guest_phys_addr < gpa + size and gpa < e.region.guest_phys_addr + e.region.memory_size
                   for e in self._entries)

    def truncated(self) -> list[str]:
        """The regions whose file is now shorter than the region (the frontend truncated it after SET_MEM_TABLE),
        one description each. An fstat per region: called after the SIGBUS guard saw a fault, not per access."""
        out = []
        for e in self._entries:
            r = e.region
            try:
                size = os.fstat(r.fd).st_size
            except OSError as exc:
                out.append(f"{_name(e.index, r)}: fd no longer usable: {exc.strerror}")
                continue
            if size < r.mmap_offset + r.memory_size:
                out.append(f"{_name(e.index, r)}: its file was truncated to {size:#x} bytes, short of "
                           f"offset + size {r.mmap_offset + r.memory_size:#x}")
        return out

    # --- device programming -------------------------------------------------------------------

    def program(self, device: DmaTarget) -> None:
        """Map every region at ``iova = guest_phys_addr`` (device may read and write); all or nothing."""
        self._check_open()
        if self._device is not None:
            raise MemoryTableError("memory table is already programmed into a device")
        self._check_aligned(self._entries)
        done: list[_Mapped] = []
        try:
            for e in self._entries:
                self._dma_map(device, e)
                done.append(e)
        except MemoryTableError as exc:
            problems = self._undo(device, unmap=done, remap=[])
            raise MemoryTableError(_with_rollback(str(exc), problems)) from None
        self._device = device

    def unprogram(self) -> None:
        """Remove this table's regions from the device it was programmed into (no-op if none)."""
        device, self._device = self._device, None
        if device is None:
            return
        errors = []
        for e in self._entries:
            try:
                self._dma_unmap(device, e)
            except MemoryTableError as exc:
                errors.append(str(exc))
        if errors:
            raise MemoryTableError("; ".join(errors))

    def replace(self, new: MemoryTable, device: DmaTarget) -> TableChange:
        """Move ``device`` from this table to ``new`` and close this table.

        A region whose guest-physical range, backing file and file offset are unchanged keeps its
        device mapping (its fd number may differ: every SET_MEM_TABLE brings fresh descriptors).
        Removed or changed regions are unmapped first, then the new ones are mapped. If the device
        refuses a step, what was done is undone, this table stays programmed and open, and
        ``MemoryTableError`` is raised; ``new`` is then left unprogrammed and owned by the caller.
        """
        self._check_open()
        new._check_open()
        if new is self:
            raise MemoryTableError("a memory table cannot replace itself")
        if new._device is not None:
            raise MemoryTableError("the new memory table is already programmed into a device")
        if self._device is None:
            new.program(device)
            self.close()
            return TableChange((), new.regions, ())
        if self._device is not device:
            raise MemoryTableError("the memory table is programmed into a different device")

        old_keys = {_device_key(e): e for e in self._entries}
        kept = [e for e in new._entries if _device_key(e) in old_keys]
        kept_keys = {_device_key(e) for e in kept}
        removed = [e for e in self._entries if _device_key(e) not in kept_keys]
        added = [e for e in new._entries if _device_key(e) not in kept_keys]
        new._check_aligned(added)

        unmapped: list[_Mapped] = []
        mapped: list[_Mapped] = []
        try:
            for e in removed:
                self._dma_unmap(device, e)
                unmapped.append(e)
            for e in added:
                self._dma_map(device, e)
                mapped.append(e)
        except MemoryTableError as exc:
            problems = self._undo(device, unmap=mapped, remap=unmapped)
            raise MemoryTableError(_with_rollback(str(exc), problems)) from None

        self._device = None
        new._device = device
        self.close()
        return TableChange(tuple(e.region for e in removed), tuple(e.region for e in added),
                           tuple(e.region for e in kept))

    # --- lifetime -----------------------------------------------------------------------------

    def close(self, *, unmap: bool = True) -> None:
        """Unmap from the device (if programmed), drop the local mappings and close every fd. ``unmap=False``
        when the device is gone (its process died): there is nothing left to unmap from."""
        if self._closed:
            return
        try:
            if unmap:
                self.unprogram()
            else:
                self._device = None
        finally:
            self._closed = True
            for e in self._entries:
                e.unmap()
            for fd in self._fds:
                _close_quietly(fd)
            self._fds = set()

    # --- helpers ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MemoryTableError("memory table is closed")

    def _check_aligned(self, entries: Iterable[_Mapped]) -> None:
        for e in entries:
            r = e.region
            if (r.guest_phys_addr | r.memory_size | r.mmap_offset) % PAGE_SIZE:
                raise MemoryTableError(f"{_name(e.index, r)}: guest_phys_addr, size and offset must be "
                                       f"multiples of the page size ({PAGE_SIZE:#x}) to map it for DMA")

    def _dma_map(self, device: DmaTarget, e: _Mapped) -> None:
        r = e.region
        try:
            device.dma_map(r.guest_phys_addr, r.memory_size, r.fd, r.mmap_offset, DmaPerm.RW)
        except _DEVICE_ERRORS as exc:
            raise MemoryTableError(f"device refused to map {_name(e.index, r)}: {exc}") from None

    def _dma_unmap(self, device: DmaTarget, e: _Mapped) -> None:
        r = e.region
        try:
            device.dma_unmap(r.guest_phys_addr, r.memory_size)
        except _DEVICE_ERRORS as exc:
            raise MemoryTableError(f"device refused to unmap {_name(e.index, r)}: {exc}") from None

    def _undo(self, device: DmaTarget, *, unmap: Sequence[_Mapped], remap: Sequence[_Mapped]) -> list[str]:
        """Roll back a partial (re)programming; returns what could not be undone."""
        problems: list[str] = []
        for e in reversed(unmap):
            try:
                device.dma_unmap(e.region.guest_phys_addr, e.region.memory_size)
            except _DEVICE_ERRORS as exc:
                problems.append(f"unmap of {e.region.describe()} failed: {exc}")
        for e in remap:
            try:
                device.dma_map(e.region.guest_phys_addr, e.region.memory_size, e.region.fd,
                               e.region.mmap_offset, DmaPerm.RW)
            except _DEVICE_ERRORS as exc:
                problems.append(f"remap of {e.region.describe()} failed: {exc}")
        return problems


def _fd_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    if stat.S_IFMT(mode) == 0:
        return "an anonymous inode (an eventfd, epoll or similar)"
    return f"of file type {stat.S_IFMT(mode):#o}"


def _close_quietly(fd: int) -> None:
    """Close an fd the table owns; one that is already invalid (a bad fd it was given) is no error."""
    with contextlib.suppress(OSError):
        os.close(fd)


def _device_key(e: _Mapped) -> tuple[int, int, tuple[int, int], int]:
    """What a device mapping depends on: IOVA range, backing file and offset (not the fd number or uva)."""
    r = e.region
    return (r.guest_phys_addr, r.memory_size, e.backing, r.mmap_offset)


def _with_rollback(message: str, problems: list[str]) -> str:
    if not problems:
        return message + " (nothing left changed on the device)"
    return message + "; rollback incomplete, device IOVA space is inconsistent: " + "; ".join(problems)
