"""A frontend's memory truncated under the device must not kill the process: a SIGBUS inside guest memory becomes
a reported fault.

A frontend shares its memory as files (memfd, tmpfs, hugetlbfs) that the backend and the device map ``MAP_SHARED``.
If the frontend shrinks such a file (``ftruncate``) after SET_MEM_TABLE, the next access to a page past the new end
raises SIGBUS (``BUS_ADRERR``), and the default action kills the process with every session in it. Checking the
file size before each access is too slow and still racy; a file sealed with ``F_SEAL_SHRINK`` (QEMU's memfd
backend seals by default) cannot shrink, but DPDK's memfds and hugetlbfs files cannot be sealed. The kernel's own
vhost copies with ``copy_from_user``, which turns the fault into ``-EFAULT``; this guard does the equivalent in
user space:

* a SIGBUS handler compiled with numba (no Python runs in it: it is async-signal-safe) looks the faulting address
  up in a table of guarded ranges (the mappings of guest memory). Inside one, it maps an anonymous zero page over
  the faulting page (``MAP_FIXED``), so the interrupted access completes harmlessly (reads see zeros, writes land
  in a private page the frontend never sees), sets the range's flag (native code that accesses guest memory
  itself, the RTL bridge, reads it after each access: :meth:`SigbusGuard.fault_flag`), and writes the ``siginfo``
  to a pipe. Outside every guarded range (a real bug) it restores the default action and returns, and the
  access kills the process as before;
* a dispatcher thread reads the pipe and calls the callback registered with the range (the IOMMU marks the
  mapping faulty, so the device's next access raises a DMA fault) and signals every subscriber's eventfd (a
  vhost-user session then checks its regions' sizes, once, and ends with the cause in one line).

Signal dispositions belong to the process, so there is one guard per process (:func:`process_guard`), installed
the first time guest memory is mapped. Linux only (x86-64 and arm64 ``struct sigaction`` and ``siginfo`` layout).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import logging
import mmap
import os
import signal
import struct
import threading
import weakref
from collections.abc import Callable
from typing import Any

from backend.eventloop import new_eventfd

log = logging.getLogger(__name__)

PAGE_SIZE = mmap.PAGESIZE
#: Guarded ranges at most (each mapping of guest memory is one: 8 regions a table, two mappings a region; the
#: handler scans them only when a SIGBUS comes).
MAX_RANGES = 4096
BUS_ADRERR = 2  #: si_code of an access past the end of a mapped file
_SA_SIGINFO = 4
_MAP_FIXED, _MAP_PRIVATE, _MAP_ANONYMOUS = 0x10, 0x02, 0x20
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
#: The head of siginfo_t the handler forwards: si_signo, si_errno, si_code, padding, si_addr.
_SIGINFO_HEAD = struct.Struct("<iiiiQ")

FaultCallback = Callable[[int], None]


class _Sigaction(ctypes.Structure):
    """glibc's ``struct sigaction`` (x86-64, arm64): handler, 1024-bit mask, flags, restorer."""

    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_uint64 * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


def _compile_handler(table: int, hits: int, slots: int, pipe_w: int) -> Any:
    """The SIGBUS handler as a C function: ``table`` is the address of ``slots`` (start, end) pairs of uint64,
    ``hits`` of ``slots`` uint64 flags, one set for a range when a page in it was replaced."""
    import numba as nb
    from llvmlite import ir  # type: ignore[import-untyped]
    from numba.extending import intrinsic

    libc = ctypes.CDLL(None, use_errno=False)
    c_mmap = libc.mmap
    c_mmap.argtypes = [ctypes.c_uint64, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
    c_mmap.restype = ctypes.c_uint64
    c_write = libc.write
    c_write.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_size_t]
    c_write.restype = ctypes.c_int64
    c_signal = libc.signal
    c_signal.argtypes = [ctypes.c_int, ctypes.c_uint64]
    c_signal.restype = ctypes.c_uint64

    def u64_at(typingctx: object, addr: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
            return builder.load_atomic(ptr, "monotonic", 8)

        return nb.types.uint64(nb.types.uint64), codegen

    def u32_at(typingctx: object, addr: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            return builder.load(builder.inttoptr(args[0], ir.IntType(32).as_pointer()))

        return nb.types.uint32(nb.types.uint64), codegen

    def set_u64(typingctx: object, addr: Any) -> Any:
        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
            builder.store_atomic(ir.Constant(ir.IntType(64), 1), ptr, "monotonic", 8)
            return context.get_dummy_value()

        return nb.types.none(nb.types.uint64), codegen

    load_u64: Any = intrinsic(u64_at)
    store_one: Any = intrinsic(set_u64)
    load_u32: Any = intrinsic(u32_at)

    page_mask = nb.types.uint64(~(PAGE_SIZE - 1) & (1 << 64) - 1)
    failed = (1 << 64) - 1
    sigbus = int(signal.SIGBUS)
    head = _SIGINFO_HEAD.size

    def handler(signum: int, info: int, context: int) -> None:
        code: int = load_u32(info + 8)
        addr = load_u64(info + 16)
        hit = False
        slot = 0
        for i in range(slots):
            start = load_u64(table + 16 * i)
            if start != 0 and start <= addr < load_u64(table + 16 * i + 8):
                hit = True
                slot = i
                break
        if not hit or code != BUS_ADRERR:
            c_signal(sigbus, 0)  # SIG_DFL: the access runs again and the fault kills, as without the guard
            return
        page = addr & page_mask
        if c_mmap(page, PAGE_SIZE, _PROT_RW, _MAP_FIXED | _MAP_PRIVATE | _MAP_ANONYMOUS, -1, 0) == failed:
            c_signal(sigbus, 0)
            return
        # Seen by native code on this thread as soon as the access completes (before the dispatcher runs).
        store_one(hits + 8 * slot)
        c_write(pipe_w, info, head)  # a full pipe drops the record: the page is already safe

    # Pointer arguments taken as integers (the same registers in the C calling convention).
    return nb.cfunc(nb.types.void(nb.types.int32, nb.types.uint64, nb.types.uint64))(handler)


class SigbusGuard:
    """The process's SIGBUS handler and its table of guarded ranges; see the module docstring."""

    def __init__(self) -> None:
        import numpy as np  # the bench's extra; the backend alone runs without a guard (see optional_guard)

        self._table: Any = np.zeros((MAX_RANGES, 2), dtype=np.uint64)
        self._hits: Any = np.zeros(MAX_RANGES, dtype=np.uint64)  # per slot: a page in it was replaced
        self._owners: dict[int, tuple[int, int, FaultCallback | None]] = {}  # slot -> (start, end, callback)
        self._subscribers: set[int] = set()
        self._lock = threading.Lock()
        self._read, self._write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._write, False)
        self.faults = 0  #: guarded SIGBUS seen (pages replaced), for reports
        # numba logs every compiler pass at DEBUG: thousands of lines in a ``serve -v`` log, none about serve.
        numba_log = logging.getLogger("numba")
        level = numba_log.level
        numba_log.setLevel(max(level, logging.INFO))
        try:
            self._handler = _compile_handler(int(self._table.ctypes.data), int(self._hits.ctypes.data), MAX_RANGES,
                                             self._write)
        finally:
            numba_log.setLevel(level)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._install()
        self._thread = threading.Thread(target=self._dispatch, name="sigbus-guard", daemon=True)
        self._thread.start()

    def _install(self) -> None:
        act = _Sigaction()
        act.handler = self._handler.address
        act.flags = _SA_SIGINFO
        if self._libc.sigaction(int(signal.SIGBUS), ctypes.byref(act), None) != 0:
            raise OSError(ctypes.get_errno(), "sigaction(SIGBUS) failed")

    def _reclaim(self) -> None:
        """Install the handler again if something replaced it since (``faulthandler.enable()`` does, and a
        pytest session run in process enables it): a guarded range is only safe while the handler is ours."""
        now = _Sigaction()
        if self._libc.sigaction(int(signal.SIGBUS), None, ctypes.byref(now)) != 0:
            raise OSError(ctypes.get_errno(), "sigaction(SIGBUS) query failed")
        if now.handler != self._handler.address:
            log.warning("the SIGBUS handler was replaced (faulthandler?): the guard installs its own again")
            self._install()

    # --- ranges and subscribers ---------------------------------------------------------------

    def protect(self, start: int, size: int, on_fault: FaultCallback | None = None) -> int:
        """Guard process addresses ``[start, start + size)``; ``on_fault(address)`` runs (on the guard's thread)
        after a page in it was replaced. Returns the slot to :meth:`release`."""
        import numpy as np

        with self._lock:
            self._reclaim()
            free = np.flatnonzero(self._table[:, 0] == 0)
            if not len(free):
                raise RuntimeError(f"more than {MAX_RANGES} guarded mappings")
            slot = int(free[0])
            self._owners[slot] = (start, start + size, on_fault)
            self._hits[slot] = 0
            self._table[slot, 1] = start + size  # end first: the handler reads a slot as live once start is set
            self._table[slot, 0] = start
            return slot

    def fault_flag(self, slot: int) -> int:
        """The address of a uint64 that the handler sets (to 1, before it returns) when it replaces a page in the
        slot's range: native code that accesses the range itself (the RTL bridge) reads it right after an access,
        on the same thread, and so faults that very access, without waiting for the dispatcher's report."""
        return int(self._hits.ctypes.data) + 8 * slot

    def release(self, slot: int) -> None:
        """Stop guarding a range (before its memory is unmapped: addresses are reused)."""
        with self._lock:
            self._table[slot, 0] = 0
            self._table[slot, 1] = 0
            self._owners.pop(slot, None)

    def subscribe(self) -> int:
        """An eventfd signalled after every guarded fault (the caller closes it after :meth:`unsubscribe`)."""
        fd = new_eventfd()
        with self._lock:
            self._subscribers.add(fd)
        return fd

    def unsubscribe(self, fd: int) -> None:
        with self._lock:
            self._subscribers.discard(fd)

    # --- the dispatcher -----------------------------------------------------------------------

    def _dispatch(self) -> None:
        size = _SIGINFO_HEAD.size
        while True:
            data = os.read(self._read, size * 64)
            for off in range(0, len(data) - size + 1, size):
                addr = _SIGINFO_HEAD.unpack_from(data, off)[4]
                self._report(addr)

    def _report(self, addr: int) -> None:
        with self._lock:
            self.faults += 1
            owner = next((cb for start, end, cb in self._owners.values() if start <= addr < end), None)
            subscribers = list(self._subscribers)
        log.warning("SIGBUS at %#x inside guest memory (its file was truncated): page replaced by zeros", addr)
        if owner is not None:
            try:
                owner(addr)
            except Exception:  # the guard's thread must go on for every other mapping
                log.exception("guarded fault callback failed")
        for fd in subscribers:
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass  # unsubscribed and closed meanwhile


def guard_mapping(holder: object, mm: mmap.mmap, size: int,
                  on_fault: Callable[[int], None] | None = None) -> weakref.finalize:  # type: ignore[type-arg]
    """Guard the first ``size`` bytes of ``mm`` for as long as ``holder`` lives; ``on_fault(offset)`` gets the
    offset in ``mm`` of a replaced page. Call the returned finalizer before closing ``mm`` (it runs once: the
    range is released then, or when ``holder`` is collected, whichever comes first)."""
    guard = optional_guard()
    if guard is None:
        return weakref.finalize(holder, _nothing)
    base = address_of(mm)
    callback = None if on_fault is None else (lambda addr: on_fault(addr - base))
    return weakref.finalize(holder, guard.release, guard.protect(base, size, callback))


def address_of(mm: mmap.mmap) -> int:
    """The process address where ``mm`` is mapped (no export is kept: the mapping can still be closed)."""
    import numpy as np

    arr = np.frombuffer(mm, dtype=np.uint8, count=1)
    try:
        return int(arr.ctypes.data)
    finally:
        del arr


_guard_lock = threading.Lock()
#: The process's guard (signal dispositions are per process, so this one piece of state is too).
_guard: list[SigbusGuard] = []
#: Why there is no guard, once that was found (the warning is given once per process).
_unguarded: list[str] = []


def process_guard() -> SigbusGuard:
    """The process's :class:`SigbusGuard`, installed on first use."""
    with _guard_lock:
        if not _guard:
            _guard.append(SigbusGuard())
        return _guard[0]


def unavailable() -> str | None:
    """Why the guard cannot be installed here (None when it can): its handler is compiled with numba, which the
    bench's extra brings; ``pip install .`` alone does not."""
    missing = [m for m in ("numpy", "numba") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def optional_guard() -> SigbusGuard | None:
    """The process's guard where it can be installed; else None, after one warning that says what is lost."""
    with _guard_lock:
        if _guard:
            return _guard[0]
        if _unguarded:
            return None
        why = unavailable()
        if why is not None:
            _unguarded.append(why)
            log.warning("no SIGBUS guard (%s): a frontend that truncates its memory under the device can end this "
                        "process; install vdpa-bench[bench] for the guard", why)
            return None
        _guard.append(SigbusGuard())
        return _guard[0]


def _nothing() -> None:
    """The release of a range no guard holds."""
