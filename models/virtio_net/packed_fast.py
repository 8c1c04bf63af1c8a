"""The packed transmit queue's common case in bulk: a run of one-descriptor lists taken, sent and returned at once.

The per-list path (:mod:`models.virtio_net.packed_datapath` through
:class:`~models.virtio_net.packed_engine.PackedQueue`) costs a dozen Python calls and DMA accesses per list. Most
lists a driver transmits are one device-readable descriptor holding header and frame (DPDK's virtio PMD and
Linux both push the header in front of the frame), so this module takes the leading run of those in two
compiled calls over the descriptor ring's mapping, gathers their frames in one copy and writes their used
descriptors in one compiled call, the first one's flags last (so the driver sees the run used at once, as with
:meth:`PackedQueue.push_used`).

It judges nothing. A slot is taken only when its flags are exactly the AVAIL/USED bits of the driver wrap
counter there (no NEXT, INDIRECT or WRITE), its buffer is longer than the virtio-net header and lies inside
the one readable mapping handed in. The first slot that is anything else ends the run and is left to the
per-list path with every check of the engine. A device whose class overrides any per-list packed hook, or
``tx_frame`` or ``tx_offload``, never gets here (:func:`bulk_ok`), so a seeded bug shows exactly as written; nor
does a device with VIRTIO_NET_F_CSUM negotiated (headers are not read here, :meth:`VirtioNetDevice.tx_bulk_now`).

Memory order: the flags of the whole run are read first (one compiled call), then, after a full barrier, the
rest of each descriptor (a second call), each value read once; the driver wrote every descriptor before its
flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import numba as nb  # type: ignore[import-untyped]
import numpy as np
from numpy.typing import NDArray

from backend.virtio.packed_ring import DESC_SIZE, PackedDescFlags, advance, used_bits
from models.virtio_net.fast_tx import TxRun, _gather_frames
from models.virtio_net.packed_engine import PackedHooks, PackedQueue
from models.virtio_net.split_engine import full_barrier
from models.virtio_net.wire import FrameBatch

if TYPE_CHECKING:
    from models.virtio_net.device import VirtioNetDevice

#: The packed hooks a list or its used descriptor goes through; a variant overriding one gets the per-list path.
PER_LIST_HOOKS = ("packed_chain_continues", "packed_buffer_id", "packed_indirect_count", "packed_indirect_entry_ok",
                  "packed_max_chain_len", "packed_advance_used", "packed_used_stores", "packed_in_order_id")
_AVAIL = int(PackedDescFlags.AVAIL)
_USED = int(PackedDescFlags.USED)
_U64 = np.uint64
#: How long the TX side keeps looking at the next slot, once it is not available, while a driver makes lists
#: available as fast as they are taken (as the split path's _POLL_SECONDS).
POLL_SECONDS = 50e-6
#: A run this long is taken at once; a shorter one is looked at again while it grows (DPDK's TX burst is 32).
BURST = 32
GATHER_SECONDS = 5e-6



def _count_avail(words: NDArray[np.uint64], off: int, wrap: int, limit: int) -> int:
    """Slots from ``off`` (driver wrap counter ``wrap``) whose flags are exactly the AVAIL/USED bits of that
    counter, up to ``limit``: one-descriptor lists made available, nothing else set."""
    size = words.shape[0]
    k = 0
    while k < limit:
        want = _AVAIL if wrap else _USED
        if (words[off, 1] >> _U64(48)) != _U64(want):
            break
        k += 1
        off += 1
        if off == size:
            off = 0
            wrap ^= 1
    return k


def _take(words: NDArray[np.uint64], off: int, k: int, mem: NDArray[np.uint8], mem_iova: np.uint64,
          mem_last: np.uint64, hdr: np.uint64, ids: NDArray[np.uint16], lens: NDArray[np.int64]) -> TxRun:
    """Of ``k`` slots from ``off`` (counted by :func:`_count_avail`), the leading ones whose buffer holds more than
    the header and lies in ``mem`` (IOVA ``mem_iova`` to ``mem_last``): (taken, frames back to back, the common
    frame length or -1); each list's Buffer ID and frame length go to ``ids`` and ``lens`` (``k`` long at least)."""
    size = words.shape[0]
    offs = np.empty(k, np.int64)
    n = 0
    slot = off
    while n < k:
        word = words[slot, 1]
        addr = words[slot, 0]
        length = word & _U64(0xFFFFFFFF)
        if length <= hdr or addr < mem_iova or addr > mem_last or length - _U64(1) > mem_last - addr:
            break  # no frame after the header, or outside this mapping: the per-list path decides
        offs[n] = np.int64(addr - mem_iova + hdr)
        lens[n] = np.int64(length - hdr)
        ids[n] = np.uint16((word >> _U64(32)) & _U64(0xFFFF))
        n += 1
        slot += 1
        if slot == size:
            slot = 0
    out, uniform = _gather_frames(mem, offs, lens, n)
    return n, out, uniform


def _put_used(words: NDArray[np.uint64], off: int, wrap: int, ids: NDArray[np.uint16]) -> None:
    """Used descriptors (len 0) for ``ids[1:]`` in the slots after ``off`` (the first one's is the caller's, last):
    each one 8-byte store of len, id and flags, so a driver never sees a used flag over a stale id."""
    size = words.shape[0]
    for i in range(1, ids.shape[0]):
        off += 1
        if off == size:
            off = 0
            wrap ^= 1
        flags = _U64(_AVAIL | _USED) if wrap else _U64(0)
        words[off, 1] = (_U64(ids[i]) << _U64(32)) | (flags << _U64(48))


def _signatures(kind: str) -> list[object]:
    out: list[object] = []
    if kind == "put":
        ids = nb.types.Array(nb.uint16, 1, "C")
        return [nb.void(nb.types.Array(nb.uint64, 2, "C"), nb.int64, nb.int64, ids)]
    for ro in (False, True):
        words = nb.types.Array(nb.uint64, 2, "C", readonly=ro)
        if kind == "count":
            out.append(nb.int64(words, nb.int64, nb.int64, nb.int64))
            continue
        mem = nb.types.Array(nb.uint8, 1, "C", readonly=ro)
        result = nb.types.Tuple((nb.int64, nb.uint8[::1], nb.int64))  # type: ignore[no-untyped-call]
        out.append(result(words, nb.int64, nb.int64, mem, nb.uint64, nb.uint64, nb.uint64, nb.uint16[::1],
                          nb.int64[::1]))
    return out


count_avail = cast(Callable[[NDArray[np.uint64], int, int, int], int],
                   nb.njit(_signatures("count"), cache=True, nogil=True, boundscheck=False)(_count_avail))
take = cast(Callable[[NDArray[np.uint64], int, int, NDArray[np.uint8], np.uint64, np.uint64, np.uint64,
                      NDArray[np.uint16], NDArray[np.int64]], TxRun],
            nb.njit(_signatures("take"), cache=True, nogil=True, boundscheck=False)(_take))
put_used = cast(Callable[[NDArray[np.uint64], int, int, NDArray[np.uint16]], None],
                nb.njit(_signatures("put"), cache=True, nogil=True, boundscheck=False)(_put_used))


def bulk_ok(dev: VirtioNetDevice) -> bool:
    """The device keeps every per-list packed hook, ``tx_frame`` and ``tx_offload`` as VirtioNetDevice has them."""
    return dev.bulk_tx and all(getattr(type(dev), h) is getattr(PackedHooks, h) for h in PER_LIST_HOOKS)


def ring_words(q: PackedQueue) -> NDArray[np.uint64] | None:
    """The descriptor ring as (addr, len | id << 32 | flags << 48) words over guest memory, valid while the mappings
    stay as they are (:class:`TxMaps`); None when it is not inside one mapping the device may both read and write
    (the used descriptors go there too; a ring it may only write is never read through the array) or every access
    must be observed."""
    dma = q.batch_dma
    if dma is None or dma.generation() is None:
        return None
    found = dma.mapping_bytes(q.desc, DESC_SIZE * q.size, True)
    readable = dma.mapping_bytes(q.desc, DESC_SIZE * q.size, False)
    if found is None or readable is None or readable[1] != found[1]:
        return None
    mem, base, _ = found
    return mem[q.desc - base:q.desc - base + DESC_SIZE * q.size].view("<u8").reshape(q.size, 2)


class TxMaps:
    """The ring words and the last frame mapping of one queue, kept across runs and service calls while the mappings'
    generation (a new memory table changes it), the ring's address and its size stay the same."""

    def __init__(self, q: PackedQueue) -> None:
        self.q = q
        self._key: tuple[int, int, int] | None = None
        self._words: NDArray[np.uint64] | None = None
        self._frames: tuple[NDArray[np.uint8], np.uint64, np.uint64] | None = None
        #: Where a run's Buffer IDs are written (read before the next run: reused).
        self.ids = np.empty(q.size, np.uint16)

    def words(self) -> NDArray[np.uint64] | None:
        q = self.q
        dma = q.batch_dma
        gen = None if dma is None else dma.generation()
        if gen is None:
            return None
        key = (gen, q.desc, q.size)
        if key != self._key:
            self._key, self._words, self._frames = key, ring_words(q), None
        return self._words

    def frames(self, iova: int) -> tuple[NDArray[np.uint8], np.uint64, np.uint64] | None:
        """The readable mapping holding ``iova`` (call after :meth:`words`, which checks the generation)."""
        f = self._frames
        if f is not None and f[1] <= iova <= f[2]:
            return f
        dma = self.q.batch_dma
        found = None if dma is None else dma.mapping_bytes(iova, 1, False)
        if found is None:
            return None
        mem, first, last = found
        self._frames = (mem, _U64(first), _U64(last))
        return self._frames


def poll_head(q: PackedQueue) -> bool:
    """Whether the next slot is made available within :data:`POLL_SECONDS`: a bounded look, never a wait (the split
    TX path's busy look, vhost-net's busyloop: a kick and a wake-up per burst cost more)."""
    deadline = time.perf_counter() + POLL_SECONDS
    while time.perf_counter() < deadline:
        if q.head_available():
            return True
    return False


def _gather_burst(words: NDArray[np.uint64], q: PackedQueue, k: int) -> int:
    """A driver makes a burst available slot by slot (each head's flags its own store), so a device looking at the
    ring mid-burst sees a few slots and would pay a run's fixed cost for each few. Short of :data:`BURST` slots,
    look again while the count grows, for at most :data:`GATHER_SECONDS` (a bounded look, never a wait)."""
    if k >= BURST or k >= q.size:
        return k
    deadline = time.perf_counter() + GATHER_SECONDS
    while time.perf_counter() < deadline:
        more = count_avail(words, q.next_avail, q.avail_wrap, q.size)
        if more == k or more >= BURST:
            return more
        k = more
    return k


def tx_run(dev: VirtioNetDevice, q: PackedQueue, maps: TxMaps) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """Take, send and return the leading run of plain one-descriptor lists at next_avail.

    Returns (lists taken, used position before, after); 0 taken when the head is not plain (or the device holds
    lists: the used position must be where the run starts), for the per-list path.
    """
    old = (q.next_used, q.used_wrap)
    if old != (q.next_avail, q.avail_wrap):
        return 0, old, old
    words = maps.words()
    if words is None:
        return 0, old, old
    k = count_avail(words, q.next_avail, q.avail_wrap, q.size)
    if k == 0:
        return 0, old, old
    k = _gather_burst(words, q, k)
    full_barrier()  # the flags were read before the rest of each descriptor
    mapping = maps.frames(int(words[q.next_avail, 0]))  # a hint: take() checks every buffer
    if mapping is None:
        return 0, old, old
    ids, lens = maps.ids, np.empty(k, np.int64)  # the lengths go with the frames; the ids are used here only
    n, data, uniform = take(words, q.next_avail, k, *mapping, _U64(dev.hdr_len), ids, lens)
    if n == 0:
        return 0, old, old
    ids, lens = ids[:n], lens[:n]
    q.consume(n)
    dev.stats.tx_bulk += n
    dev._transmit_batch(FrameBatch(data, lens, uniform if uniform >= 0 else None))
    if q.in_order and dev.in_order_batch:
        ids = ids[-1:]  # one used descriptor for the batch, with the last Buffer ID (2.8.8)
    if len(ids) > 1:  # the first is written last, below; a single one needs no compiled call
        put_used(words, old[0], old[1], ids)
    _write_first_used(words, old, int(ids[0]))
    new = advance(old[0], old[1], n, q.size)
    q.next_used, q.used_wrap = new
    return n, old, new


def _write_first_used(words: NDArray[np.uint64], at: tuple[int, int], buffer_id: int) -> None:
    """The run's first used descriptor, through the ring words: len 0 and the id, then the flags, the store that
    hands the run back (PACKED-DEV-07: stores in program order, each field whole)."""
    slot = at[0]
    words.view(np.uint32)[slot, 2] = 0  # len: the second word's low half
    halves = words.view(np.uint16)
    halves[slot, 6] = buffer_id
    halves[slot, 7] = used_bits(at[1])


__all__ = ["BURST", "GATHER_SECONDS", "PER_LIST_HOOKS", "POLL_SECONDS", "TxMaps", "bulk_ok", "count_avail",
           "poll_head", "put_used", "ring_words", "take", "tx_run"]
