"""The transmit queue's common case, compiled: a run of one-descriptor chains read in one call.

A round of the split engine in numpy costs about twenty array calls whatever the number of chains, and
that fixed cost dominated small rings (issue 16: 24 µs a round, a quarter of the per-packet rate at queue
size 64). This kernel does the same recognition as :meth:`SplitQueue.plain_chains` for its simplest case
and copies the frames, in one compiled call (numba).

It judges nothing. A chain is taken only when it needs none of :meth:`SplitQueue.parse_chain`'s checks:
head < queue size, one descriptor (no NEXT, INDIRECT or WRITE), longer than the virtio-net header, and
inside the one readable mapping handed in. The first chain that is anything else ends the run and is left
to the caller's exact path, which applies the ring rules and records faults. So the rules keep one
source, ``parse_chain``, and a variant overriding a per-chain hook never reaches this code.

Every value is read from guest memory once (heads and descriptors are copied in a first pass, the copy
pass uses those copies), so a driver rewriting the ring meanwhile cannot send a copy out of bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numba as nb  # type: ignore[import-untyped]
import numpy as np
from numba.core import cgutils  # type: ignore[import-untyped]
from numba.extending import intrinsic  # type: ignore[import-untyped]
from numpy.typing import NDArray

U64 = np.uint64
#: flags, next (the upper half of a descriptor's second word): zero for a plain device-readable descriptor.
_FLAGS_SHIFT = U64(32)
_LEN_MASK = U64(0xFFFFFFFF)

#: (chains taken, their frames back to back, the common frame length or -1); heads and lengths are in the caller's
#: arrays. One array crosses back into Python: each one boxed costs about as much as reading thirty chains.
TxRun = tuple[int, NDArray[np.uint8], int]
#: :data:`TxRun` and the used idx after the chains taken were returned.
TxUsedRun = tuple[int, NDArray[np.uint8], int, int]


@intrinsic  # type: ignore[misc]
def _copy_bytes(typingctx: object, dst: Any, dst_pos: Any, src: Any, src_pos: Any, n: Any) -> Any:
    """``dst[dst_pos:dst_pos + n] = src[src_pos:src_pos + n]`` as one memcpy (numba's slice assignment is an
    element loop, ten times slower for a 64-byte frame); the caller has checked both ranges."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        d, dp, s, sp, k = args
        dptr = context.make_array(sig.args[0])(context, builder, d).data
        sptr = context.make_array(sig.args[2])(context, builder, s).data
        cgutils.raw_memcpy(builder, builder.gep(dptr, [dp]), builder.gep(sptr, [sp]), k, 1)  # type: ignore[no-untyped-call]
        return context.get_dummy_value()

    return nb.types.void(dst, dst_pos, src, src_pos, n), codegen


@nb.njit(cache=True, nogil=True, boundscheck=False)  # type: ignore[misc]
def _gather_frames(mem: NDArray[np.uint8], offs: NDArray[np.int64], lens: NDArray[np.int64],
                   n: int) -> tuple[NDArray[np.uint8], int]:
    """The copy pass of :func:`_take_plain_tx`: the ``n`` frames at ``offs``/``lens`` in
    ``mem`` back to back, and their common length or -1. Compiled into its callers' compiled code."""
    out = np.empty(lens[:n].sum(), np.uint8)
    _, uniform = copy_frames(out, 0, mem, offs, lens, 0, n, lens[0] if n else -1)
    return out, uniform


@nb.njit(cache=True, nogil=True, boundscheck=False)  # type: ignore[misc]
def copy_frames(out: NDArray[np.uint8], pos: int, mem: NDArray[np.uint8], offs: NDArray[np.int64],
                lens: NDArray[np.int64], lo: int, hi: int, uniform: int) -> tuple[int, int]:
    """Frames ``lo``..``hi``-1 (at ``offs``/``lens`` in ``mem``) copied to ``out`` from ``pos`` on: (the position after
    them, ``uniform`` if every one is that long, else -1). The copy of every transmit kernel, split and packed."""
    for j in range(lo, hi):
        m = lens[j]
        if m != uniform:
            uniform = -1
        _copy_bytes(out, pos, mem, offs[j], m)  # type: ignore[call-arg]  # typed by numba, not by mypy
        pos += m
    return pos, uniform


@nb.njit(cache=True, nogil=True, boundscheck=False)  # type: ignore[misc]
def _plain_run(avail: NDArray[np.uint16], start: int, n: int, table: NDArray[np.uint64], mem_iova: np.uint64,
               mem_last: np.uint64, hdr: np.uint64, heads: NDArray[np.uint32], offs: NDArray[np.int64],
               lens: NDArray[np.int64]) -> int:
    """The recognition pass of both split kernels: how many of the ``n`` chains from ring slot ``start`` are plain
    (see the module's docstring), each one's head, frame offset in the mapping and frame length written to
    ``heads``/``offs``/``lens``. Every value is read from guest memory once."""
    size = avail.shape[0]
    mask = size - 1
    k = 0
    while k < n:
        head = avail[(start + k) & mask]
        if head >= size:
            break
        word = table[head, 1]
        if ((word >> _FLAGS_SHIFT) & U64(0xFFFF)) != 0:
            break  # NEXT, INDIRECT or WRITE: parse_chain's (the next field is ignored without NEXT)
        length = word & _LEN_MASK
        addr = table[head, 0]
        if length <= hdr or addr < mem_iova or addr > mem_last or length - U64(1) > mem_last - addr:
            break  # no frame after the header, or outside this mapping: the exact path decides
        heads[k] = head
        offs[k] = np.int64(addr - mem_iova + hdr)
        lens[k] = np.int64(length - hdr)
        k += 1
    return k


def _take_plain_tx(avail: NDArray[np.uint16], start: int, n: int, table: NDArray[np.uint64],
                   mem: NDArray[np.uint8], mem_iova: np.uint64, mem_last: np.uint64,
                   hdr: np.uint64, heads: NDArray[np.uint32], lens: NDArray[np.int64]) -> TxRun:
    """The leading run of plain TX chains among the ``n`` available from ring slot ``start``.

    ``avail``: the avail ring's entries (queue size of them, a power of two); ``table``: the descriptor
    table as (addr, len | flags << 32 | next << 48) words; ``mem``: the bytes of one readable mapping at
    IOVA ``mem_iova`` whose last byte is ``mem_last``; ``hdr``: the virtio-net header length skipped;
    ``heads`` and ``lens`` (``n`` long at least) receive each taken chain's head and frame length.

    Returns (chains taken, their frames back to back, the common frame length or -1).
    """
    offs = np.empty(n, np.int64)
    k = _plain_run(avail, start, n, table, mem_iova, mem_last, hdr, heads, offs, lens)
    out, uniform = _gather_frames(mem, offs, lens, k)
    return k, out, uniform


@intrinsic  # type: ignore[misc]
def _release_fence(typingctx: object) -> Any:
    """A release fence: the used elements stored before it are visible before the used idx stored after it
    (SPLIT-DEV-15). On x86 it only keeps the compiler from reordering the stores."""

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        builder.fence("release")
        return context.get_dummy_value()

    return nb.types.void(), codegen


def _take_plain_tx_used(avail: NDArray[np.uint16], start: int, n: int, table: NDArray[np.uint64],
                        mem: NDArray[np.uint8], mem_iova: np.uint64, mem_last: np.uint64,
                        hdr: np.uint64, heads: NDArray[np.uint32], lens: NDArray[np.int64],
                        used_elems: NDArray[np.uint32], used_words: NDArray[np.uint16], used_idx: int,
                        in_order: bool, chunk: int) -> TxUsedRun:
    """:func:`_take_plain_tx`, returning the chains used as it goes: after every ``chunk`` frames copied, their used
    elements (len 0: nothing written) and then used idx, so the driver gets its buffers back while the rest of the
    run is copied instead of after the whole round. ``used_elems``/``used_words``: the used ring's (id, len) pairs
    and 16-bit words (idx is word 1); ``used_idx`` the device's used idx; with ``in_order`` each chunk is one used
    element for its last buffer (2.7.9). Returns (chains taken, frames, common length or -1, the new used idx).

    Only for the stock ring rules: the used idx advances by the count (RingHooks.next_used_idx); a variant
    changing that keeps :meth:`SplitQueue.push_used_array`."""
    mask = avail.shape[0] - 1
    offs = np.empty(n, np.int64)
    k = _plain_run(avail, start, n, table, mem_iova, mem_last, hdr, heads, offs, lens)
    out = np.empty(lens[:k].sum(), np.uint8)
    uniform = lens[0] if k else -1
    pos = 0
    i = 0
    idx = used_idx
    while i < k:
        end = min(i + chunk, k)
        pos, uniform = copy_frames(out, pos, mem, offs, lens, i, end, uniform)
        if in_order:
            slot = (idx + end - i - 1) & mask
            used_elems[slot, 0] = heads[end - 1]
            used_elems[slot, 1] = 0
        else:
            for j in range(i, end):
                slot = (idx + j - i) & mask
                used_elems[slot, 0] = heads[j]
                used_elems[slot, 1] = 0
        idx = (idx + end - i) & 0xFFFF
        _release_fence()  # type: ignore[call-arg]
        used_words[1] = idx
        i = end
    return k, out, uniform, idx


def _signatures() -> list[object]:
    """One signature per writability of the ring and memory views (a read-only mapping gives read-only arrays)."""
    out: list[object] = []
    result = nb.types.Tuple((nb.int64, nb.uint8[::1], nb.int64))  # type: ignore[no-untyped-call]
    for ro in (False, True):
        avail = nb.types.Array(nb.uint16, 1, "C", readonly=ro)
        table = nb.types.Array(nb.uint64, 2, "C", readonly=ro)
        mem = nb.types.Array(nb.uint8, 1, "C", readonly=ro)
        out.append(result(avail, nb.int64, nb.int64, table, mem, nb.uint64, nb.uint64, nb.uint64, nb.uint32[::1],
                          nb.int64[::1]))
    return out


take_plain_tx = cast(
    Callable[[NDArray[np.uint16], int, int, NDArray[np.uint64], NDArray[np.uint8], np.uint64, np.uint64, np.uint64,
              NDArray[np.uint32], NDArray[np.int64]], TxRun],
    nb.njit(_signatures(), cache=True, nogil=True, boundscheck=False)(_take_plain_tx),
)
"""The compiled :func:`_take_plain_tx` (signature fixed, so it is compiled, or loaded from numba's cache,
on import rather than on the first kick)."""


def _used_signatures() -> list[object]:
    out: list[object] = []
    result = nb.types.Tuple((nb.int64, nb.uint8[::1], nb.int64, nb.int64))  # type: ignore[no-untyped-call]
    for ro in (False, True):
        avail = nb.types.Array(nb.uint16, 1, "C", readonly=ro)
        table = nb.types.Array(nb.uint64, 2, "C", readonly=ro)
        mem = nb.types.Array(nb.uint8, 1, "C", readonly=ro)
        out.append(result(avail, nb.int64, nb.int64, table, mem, nb.uint64, nb.uint64, nb.uint64, nb.uint32[::1],
                          nb.int64[::1], nb.uint32[:, ::1], nb.uint16[::1], nb.int64, nb.boolean, nb.int64))
    return out


take_plain_tx_used = cast(
    Callable[[NDArray[np.uint16], int, int, NDArray[np.uint64], NDArray[np.uint8], np.uint64, np.uint64, np.uint64,
              NDArray[np.uint32], NDArray[np.int64], NDArray[np.uint32], NDArray[np.uint16], int, bool, int],
             TxUsedRun],
    nb.njit(_used_signatures(), cache=True, nogil=True, boundscheck=False)(_take_plain_tx_used),
)
"""The compiled :func:`_take_plain_tx_used`."""

__all__ = ["TxRun", "TxUsedRun", "take_plain_tx", "take_plain_tx_used"]
