"""ctypes binding of the native bridge (generated from ``harness/bridge.cpp.j2``) built by :mod:`sim.rtl.build`.

One :class:`NativeBridge` is one instance of the Verilated design with its bus models. It is
not thread-safe: :class:`sim.rtl.runner.RtlRunner` serialises every call except :meth:`wait`.
ctypes releases the GIL for the duration of each call, so the clock runs while Python threads
(the backend, the frontend's driver in the same process) go on.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import Any

from backend.pci.device import DmaPerm
from backend.sigbus_guard import optional_guard

_u8p = ctypes.POINTER(ctypes.c_uint8)
_u16p = ctypes.POINTER(ctypes.c_uint16)
_u32p = ctypes.POINTER(ctypes.c_uint32)
_u64p = ctypes.POINTER(ctypes.c_uint64)
_intp = ctypes.POINTER(ctypes.c_int)
ObserveFn = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64)


class Events(IntFlag):
    FRAMES = 1
    IRQS = 2
    FAULTS = 4
    INTX = 8
    ERRORS = 16


class RunResult(IntFlag):
    IDLE = 1
    EVENTS = 2
    CYCLES = 4


#: ``vb_axil``'s state bit: the design stayed idle after the access.
AXIL_IDLE = 0x100


class FaultReason(IntEnum):
    UNMAPPED = 1
    PERMISSION = 2
    BUS_MASTER = 3
    ADDRESS_SPACE = 4
    #: The beat touched a page whose file the frontend truncated (the SIGBUS guard replaced it), or an earlier
    #: beat did: the mapping faults from then on.
    GONE = 5
    #: A write into the MSI window that is not one aligned 32-bit message.
    MSI = 6


FAULT_TEXT = {
    FaultReason.UNMAPPED: "no mapping covers the burst",
    FaultReason.PERMISSION: "the mapping does not permit this access",
    FaultReason.BUS_MASTER: "bus mastering is disabled in the PCI command register",
    FaultReason.ADDRESS_SPACE: "burst runs past the end of the IOVA space",
    FaultReason.GONE: "the memory behind it is gone: its file was truncated",
    FaultReason.MSI: "a write into the MSI window that is not one aligned 32-bit message",
}

#: ``vb_status``'s own fields; the design's status ports follow (:func:`sim.rtl.generate.status_fields`).
BRIDGE_STATUS_FIELDS = ("cycles", "intx", "kicks", "rx_fifo_drops", "busy_ns")


@dataclass(frozen=True)
class Fault:
    iova: int
    size: int
    access: DmaPerm
    reason: FaultReason


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "vb_new": (ctypes.c_void_p, [ctypes.c_char_p]),
    "vb_free": (None, [ctypes.c_void_p]),
    "vb_has_trace": (ctypes.c_int, []),
    "vb_width": (ctypes.c_uint, [ctypes.c_void_p, ctypes.c_uint]),
    "vb_reset": (None, [ctypes.c_void_p, ctypes.c_int]),
    "vb_set_link": (None, [ctypes.c_void_p, ctypes.c_int]),
    "vb_set_msix_enabled": (None, [ctypes.c_void_p, ctypes.c_int]),
    "vb_set_msix_fmask": (None, [ctypes.c_void_p, ctypes.c_int]),
    "vb_set_bus_master": (None, [ctypes.c_void_p, ctypes.c_int]),
    "vb_set_observer": (None, [ctypes.c_void_p, ObserveFn]),
    "vb_set_wake_fd": (None, [ctypes.c_void_p, ctypes.c_int]),
    "vb_dma_map": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int,
                                  ctypes.c_int64, ctypes.c_int]),
    "vb_dma_map_host": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p,
                                       ctypes.c_int]),
    "vb_dma_unmap": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]),
    "vb_dma_host": (ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_uint64]),
    "vb_dma_guard": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_void_p]),
    "vb_kick_add": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32,
                                   ctypes.c_int]),
    "vb_kick_remove": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_uint32]),
    "vb_wait": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "vb_run": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]),
    "vb_axil": (ctypes.c_int64, [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32,
                                 ctypes.c_uint32, _u32p, _intp]),
    "vb_push_frame": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32]),
    "vb_pop_frames": (ctypes.c_int, [ctypes.c_void_p, _u8p, ctypes.c_uint64, _u32p, _u32p, ctypes.c_int]),
    "vb_pop_irqs": (ctypes.c_int, [ctypes.c_void_p, _u16p, ctypes.c_int]),
    "vb_pop_faults": (ctypes.c_int, [ctypes.c_void_p, _u64p, _u64p, _intp, _intp, ctypes.c_int]),
    "vb_events": (ctypes.c_int, [ctypes.c_void_p]),
    "vb_status": (ctypes.c_int, [ctypes.c_void_p, _u64p, ctypes.c_int]),
    "vb_bench_plain": (ctypes.c_uint64, [ctypes.c_void_p, ctypes.c_uint64]),
}

_FRAME_BUF = 1 << 18
_MAX_FRAMES = 256
_MAX_ITEMS = 256


class BridgeError(Exception):
    """The native bridge refused a request or the design's bus hung."""


class _Closed:
    """Stands in for the library after close: a late call raises instead of passing a freed handle."""

    def __init__(self, library: Path) -> None:
        self.library = library

    def __getattr__(self, name: str) -> Any:
        raise BridgeError(f"{name} on a closed bridge ({self.library})")


class NativeBridge:
    """One design instance and its bus models (see ``harness/bridge.cpp`` for the protocol)."""

    def __init__(self, library: Path, waves: Path | None = None,
                 status_fields: tuple[str, ...] = BRIDGE_STATUS_FIELDS) -> None:
        self.library = library
        #: what ``status()`` names its values (the generated bridge's order)
        self.status_fields = status_fields
        lib = ctypes.CDLL(str(library))
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        self._lib: Any = lib
        self.has_trace = bool(lib.vb_has_trace())
        if waves is not None and not self.has_trace:
            raise BridgeError(f"{library} was built without tracing: waves need the --trace-fst variant")
        handle = lib.vb_new(str(waves).encode() if waves is not None else None)
        if not handle:
            raise BridgeError("vb_new failed")
        self._h = ctypes.c_void_p(handle)
        self.data_bytes = int(lib.vb_width(self._h, 0))  # the first DMA master's
        self._rdata = ctypes.c_uint32()
        self._state = ctypes.c_int()
        self._frame_buf = (ctypes.c_uint8 * _FRAME_BUF)()
        self._lens = (ctypes.c_uint32 * _MAX_FRAMES)()
        self._dests = (ctypes.c_uint32 * _MAX_FRAMES)()
        self._irqs = (ctypes.c_uint16 * _MAX_ITEMS)()
        self._f_iova = (ctypes.c_uint64 * _MAX_ITEMS)()
        self._f_size = (ctypes.c_uint64 * _MAX_ITEMS)()
        self._f_access = (ctypes.c_int * _MAX_ITEMS)()
        self._f_reason = (ctypes.c_int * _MAX_ITEMS)()
        self._status = (ctypes.c_uint64 * len(status_fields))()
        self._observer: object = None  # the CFUNCTYPE object must outlive its use in C
        #: The bridge's own mappings of guest memory in the process's SIGBUS guard: iova -> (size, slot).
        self._guarded: dict[int, tuple[int, int]] = {}

    def close(self) -> None:
        if self._h:
            self._unguard(0, 1 << 64)  # before vb_free unmaps: a released address range may be reused
            self._lib.vb_free(self._h)
            self._h = ctypes.c_void_p()
            self._lib = _Closed(self.library)

    # --- control -----------------------------------------------------------------------------------

    #: cycles the reset input is held asserted (the description's reset.cycles)
    reset_cycles = 8

    def reset(self, cycles: int | None = None) -> None:
        self._lib.vb_reset(self._h, self.reset_cycles if cycles is None else cycles)

    def set_link(self, up: bool) -> None:
        self._lib.vb_set_link(self._h, int(up))

    def set_msix_enabled(self, on: bool) -> None:
        self._lib.vb_set_msix_enabled(self._h, int(on))

    def set_msix_function_mask(self, on: bool) -> None:
        self._lib.vb_set_msix_fmask(self._h, int(on))

    def set_bus_master(self, on: bool) -> None:
        self._lib.vb_set_bus_master(self._h, int(on))

    def set_observer(self, fn: Callable[[int, int, int], None] | None) -> None:
        self._observer = ObserveFn(fn) if fn is not None else ObserveFn()
        self._lib.vb_set_observer(self._h, self._observer)

    def set_wake_fd(self, fd: int) -> None:
        self._lib.vb_set_wake_fd(self._h, fd)

    # --- DMA table -----------------------------------------------------------------------------------

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        rc = int(self._lib.vb_dma_map(self._h, iova, size, fd, offset, int(perm)))
        if rc < 0:
            raise BridgeError(f"dma_map [{iova:#x}, +{size:#x}) of fd {fd}: errno {-rc}")
        # A frontend may shrink the file under this mapping: the guard turns the SIGBUS into a flag the bridge
        # reads after each access (no Python per beat), which faults the access (SLVERR) and the mapping.
        guard = optional_guard()
        if guard is not None:
            slot = guard.protect(int(self._lib.vb_dma_host(self._h, iova)), size)
            self._guarded[iova] = (size, slot)
            if int(self._lib.vb_dma_guard(self._h, iova, guard.fault_flag(slot))) < 0:
                self._unguard(iova, size)
                self._lib.vb_dma_unmap(self._h, iova, size)
                raise BridgeError(f"dma_map [{iova:#x}, +{size:#x}): the new mapping is not in the table")

    def dma_unmap(self, iova: int, size: int) -> int:
        self._unguard(iova, size)
        return int(self._lib.vb_dma_unmap(self._h, iova, size))

    def _unguard(self, iova: int, size: int) -> None:
        """Release the guard's ranges of the mappings inside ``[iova, iova + size)`` (before they are unmapped)."""
        guard = optional_guard() if self._guarded else None
        for start, (length, slot) in list(self._guarded.items()):
            if start >= iova and start + length <= iova + size:
                del self._guarded[start]
                if guard is not None:
                    guard.release(slot)

    # --- doorbells -----------------------------------------------------------------------------------

    def kick_add(self, fd: int, addr: int, value: int, width: int, slave: int = 0) -> None:
        rc = int(self._lib.vb_kick_add(self._h, slave, fd, addr, value, width))
        if rc < 0:
            raise BridgeError(f"doorbell eventfd {fd} at {addr:#x} of slave {slave} width {width}: errno {-rc}")

    def kick_remove(self, fd: int, addr: int, slave: int = 0) -> bool:
        return bool(self._lib.vb_kick_remove(self._h, slave, fd, addr))

    def wait(self, timeout_ms: int) -> int:
        """Block (GIL released) until a doorbell or the wake eventfd is readable; no model access."""
        return int(self._lib.vb_wait(self._h, timeout_ms))

    # --- clock and bus -------------------------------------------------------------------------------

    def run(self, max_cycles: int, event_delay: int) -> RunResult:
        return RunResult(int(self._lib.vb_run(self._h, max_cycles, event_delay)))

    def axil(self, write: bool, addr: int, data: int, strb: int, slave: int = 0) -> tuple[int, int]:
        """One access on BAR slave ``slave`` run to its response: (read data, state: events | AXIL_IDLE)."""
        n = int(self._lib.vb_axil(self._h, slave, int(write), addr, data, strb, ctypes.byref(self._rdata),
                                  ctypes.byref(self._state)))
        if n == -2:
            raise BridgeError(f"no BAR slave {slave}")
        if n < 0:
            raise BridgeError(f"{'write' if write else 'read'} at {addr:#x} of slave {slave}: no response")
        return int(self._rdata.value), int(self._state.value)

    # --- streams, interrupts, faults -------------------------------------------------------------------

    def push_frame(self, frame: bytes, dest: int = 0) -> bool:
        rc = int(self._lib.vb_push_frame(self._h, frame, len(frame), dest))
        if rc == -2:
            raise BridgeError("the design has no stream ports to receive a frame on")
        return rc == 0

    def pop_frames(self) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        while True:
            n = int(self._lib.vb_pop_frames(self._h, self._frame_buf, _FRAME_BUF, self._lens, self._dests,
                                            _MAX_FRAMES))
            if n <= 0:
                return out
            raw = bytes(memoryview(self._frame_buf)[:sum(self._lens[:n])])
            pos = 0
            for i in range(n):
                k = self._lens[i]
                out.append((raw[pos:pos + k], int(self._dests[i])))
                pos += k

    def pop_irqs(self) -> list[int]:
        out: list[int] = []
        while True:
            n = int(self._lib.vb_pop_irqs(self._h, self._irqs, _MAX_ITEMS))
            if n <= 0:
                return out
            out.extend(self._irqs[:n])

    def pop_faults(self) -> list[Fault]:
        out: list[Fault] = []
        while True:
            n = int(self._lib.vb_pop_faults(self._h, self._f_iova, self._f_size, self._f_access, self._f_reason,
                                            _MAX_ITEMS))
            if n <= 0:
                return out
            out.extend(Fault(int(self._f_iova[i]), int(self._f_size[i]), DmaPerm(self._f_access[i]),
                             FaultReason(self._f_reason[i])) for i in range(n))

    def events(self) -> Events:
        return Events(int(self._lib.vb_events(self._h)))

    def status(self) -> dict[str, int]:
        n = int(self._lib.vb_status(self._h, self._status, len(self.status_fields)))
        return {self.status_fields[i]: int(self._status[i]) for i in range(n)}

    def bench_plain(self, cycles: int) -> float:
        """Seconds the bare clock loop (no bus models, no Python) takes for ``cycles``."""
        return int(self._lib.vb_bench_plain(self._h, cycles)) / 1e9
