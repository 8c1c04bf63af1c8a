"""The vhost-user dirty log: one bit per 4 KiB guest-physical page, in memory the frontend shares.

SET_LOG_BASE (with ``VHOST_USER_PROTOCOL_F_LOG_SHMFD``) passes an fd and a 16-byte payload
(``mmap_size``, ``mmap_offset``); bit ``p % 8`` of byte ``p // 8`` stands for guest-physical page
``p`` (``VHOST_LOG_PAGE`` = 4096). The backend only sets bits; the frontend collects and clears them
while the guest runs (QEMU swaps each 64-bit word of the log with zero atomically).

Why a real atomic OR and not numpy: QEMU shares one log among every vhost device of a VM, so two
backends (two ``serve`` processes, or two rings of one) may set bits in the same byte at once. A
numpy ``|=`` is a load, an OR and a store: a bit another writer sets between the load and the
store is lost, and a page lost from the log is memory the destination never receives. Against the
frontend's clearing swap alone a plain read-modify-write would only re-report a page, never lose
one, but other writers make it unsafe. The OR here is ``__atomic_fetch_or_1`` from the GCC runtime
(``libatomic.so.1``, a ``lock or`` on x86), called through ctypes, so the backend keeps to the
standard library; :func:`atomic_or_available` says whether it loaded, and the session offers
``LOG_SHMFD`` only when it did.

Every mark is bounded: a range that reaches past the pages the log covers raises
:class:`DirtyLogError` (the caller reports it), never writes past the mapping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from typing import Final

#: Bytes of guest-physical memory one log bit stands for (VHOST_LOG_PAGE).
LOG_PAGE: Final = 0x1000
#: Largest log accepted: enough for 2^48 bytes of guest-physical memory (a 48-bit address space).
MAX_LOG_SIZE: Final = (1 << 48) // LOG_PAGE // 8
SEQ_CST: Final = 5  # __ATOMICSEQ_CST: marks are ordered with the device's writes and the used index

AtomicOr = Callable[[int, int, int], int]


class DirtyLogError(Exception):
    """A log that cannot be mapped, or a write outside the log (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@cache
def _libatomic() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _atomic(symbol: str, value_type: type[ctypes.c_uint8] | type[ctypes.c_uint64]) -> AtomicOr | None:
    """``symbol(ptr, value, memorder)`` from libatomic, or None where it is missing."""
    lib = _libatomic()
    fn = getattr(lib, symbol, None) if lib is not None else None
    if fn is None:
        return None
    fn.argtypes = (ctypes.c_void_p, value_type, ctypes.c_int)
    fn.restype = value_type
    f: AtomicOr = fn
    return f


@cache
def _atomic_or() -> AtomicOr | None:
    """``__atomic_fetch_or_1``: one byte's bits set, none another writer set lost."""
    return _atomic("__atomic_fetch_or_1", ctypes.c_uint8)


@cache
def atomic_exchange_8() -> AtomicOr | None:
    """``__atomic_exchange_8(ptr, value, memorder)``: a 64-bit word read and replaced in one step (a device byte
    written between a separate read and clear would be lost)."""
    return _atomic("__atomic_exchange_8", ctypes.c_uint64)


def atomic_or_available() -> bool:
    """True when the atomic OR primitive loaded (the session offers LOG_SHMFD only then)."""
    return _atomic_or() is not None


def page_span(gpa: int, length: int) -> range:
    """The log pages ``[gpa, gpa + length)`` touches (empty for ``length`` 0)."""
    if gpa < 0 or length < 0:
        raise DirtyLogError(f"range at {gpa:#x} of {length} bytes is negative")
    if length == 0:
        return range(0)
    return range(gpa // LOG_PAGE, (gpa + length - 1) // LOG_PAGE + 1)


class DirtyLog:
    """A mapped dirty log of ``size`` bytes, covering guest-physical ``[0, size * 8 * 4096)``.

    The log owns ``fd`` (closed by :meth:`close`). Marks are atomic ORs; reads (:meth:`dirty_pages`,
    :meth:`is_dirty`) are for the bench and the tests.
    """

    def __init__(self, fd: int, size: int, offset: int = 0) -> None:
        self._fd = fd
        self._map: mmap.mmap | None = None
        self._cells: ctypes.Array[ctypes.c_ubyte] | None = None
        try:
            self._open(size, offset)
        except BaseException:
            self.close()
            raise

    def _open(self, size: int, offset: int) -> None:
        fn = _atomic_or()
        if fn is None:
            raise DirtyLogError("no atomic OR primitive (libatomic.so.1 not found): cannot share a dirty log")
        self._or = fn
        if not 0 < size <= MAX_LOG_SIZE:
            raise DirtyLogError(f"log size {size} is not in 1..{MAX_LOG_SIZE} bytes")
        try:
            file_size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise DirtyLogError(f"log fd {self._fd}: {exc.strerror}") from None
        if offset + size > file_size:
            raise DirtyLogError(f"log [{offset:#x}, {offset + size:#x}) runs past the end of its fd "
                                f"({file_size:#x} bytes)")
        start = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be page aligned
        try:
            self._map = mmap.mmap(self._fd, size + offset - start, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        except OSError as exc:
            raise DirtyLogError(f"log of {size} bytes at offset {offset:#x}: mmap failed: {exc.strerror}") from None
        self._cells = (ctypes.c_ubyte * size).from_buffer(self._map, offset - start)
        self._base = ctypes.addressof(self._cells)
        self.size = size
        self.offset = offset

    @property
    def pages(self) -> int:
        """Pages the log covers."""
        return self.size * 8

    @property
    def limit(self) -> int:
        """The first guest-physical address past the log's coverage."""
        return self.pages * LOG_PAGE

    def mark(self, gpa: int, length: int) -> None:
        """Set the bit of every page ``[gpa, gpa + length)`` touches; past the log raises DirtyLogError."""
        span = page_span(gpa, length)
        if not span:
            return
        if self._cells is None:
            raise DirtyLogError("dirty log used after close")
        if span.stop > self.pages:
            raise DirtyLogError(f"write at gpa [{gpa:#x}, {gpa + length:#x}) is outside the dirty log "
                                f"(covers [0, {self.limit:#x}))")
        for byte, mask in _byte_masks(span):
            self._or(self._base + byte, mask, SEQ_CST)

    def mark_pages(self, pages: Iterable[int]) -> None:
        """Set the bits of ``pages`` (page numbers), one atomic OR per byte; a page past the log raises
        DirtyLogError after every page inside it was set."""
        if self._cells is None:
            raise DirtyLogError("dirty log used after close")
        masks: dict[int, int] = {}
        outside = []
        for page in pages:
            if 0 <= page < self.pages:
                masks[page >> 3] = masks.get(page >> 3, 0) | 1 << (page & 7)
            else:
                outside.append(page)
        for byte, mask in masks.items():
            self._or(self._base + byte, mask, SEQ_CST)
        if outside:
            raise DirtyLogError(f"{len(outside)} page(s) outside the dirty log (covers {self.pages} pages), first "
                                f"{min(outside)} (gpa {min(outside) * LOG_PAGE:#x})")

    def is_dirty(self, page: int) -> bool:
        if self._cells is None or not 0 <= page < self.pages:
            raise DirtyLogError(f"page {page} is outside the dirty log ({self.pages} pages)")
        return bool(self._cells[page // 8] >> (page % 8) & 1)

    def dirty_pages(self) -> set[int]:
        """Every page whose bit is set."""
        if self._cells is None:
            raise DirtyLogError("dirty log used after close")
        raw = bytes(self._cells)
        return {i * 8 + b for i, v in enumerate(raw) if v for b in range(8) if v >> b & 1}

    def close(self) -> None:
        """Unmap and close the fd (the ctypes view goes first: it pins the mapping)."""
        self._cells = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _byte_masks(span: range) -> Iterator[tuple[int, int]]:
    """(byte index, bit mask) pairs that set the pages of ``span``, one OR per byte."""
    page = span.start
    while page < span.stop:
        byte = page // 8
        last = min(span.stop, (byte + 1) * 8)
        mask = ((1 << (last - page)) - 1) << (page % 8)
        yield byte, mask
        page = last
