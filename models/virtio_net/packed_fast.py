"""The packed transmit queue's common case in bulk: a run of one-descriptor lists taken, sent and returned at once.

The per-list path (:mod:`models.virtio_net.packed_datapath` through
:class:`~models.virtio_net.packed_engine.PackedQueue`) costs a dozen Python calls and DMA accesses per list. Most
lists a driver transmits are one device-readable descriptor holding header and frame (DPDK's virtio PMD and
Linux both push the header in front of the frame), so this module takes the leading run of those in two
compiled calls over the descriptor ring's mapping: the second copies their frames and returns them used
:data:`USED_CHUNK` at a time as it goes, each chunk's first used descriptor written last (so the driver sees a
chunk used at once, as with :meth:`PackedQueue.push_used`), and a driver whose ring is full gets slots back
during the run rather than after it.

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

from backend.virtio.packed_ring import DESC_SIZE, PackedDescFlags, advance
from models.virtio_net.fast_tx import TxRun, _release_fence, copy_frames
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
#: Lists returned used at a time while a run's frames are copied (as the split reader's chunk).
USED_CHUNK = 32



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


@nb.njit(cache=True, nogil=True, boundscheck=False)  # type: ignore[misc]
def _plain_slots(words: NDArray[np.uint64], off: int, k: int, mem_iova: np.uint64, mem_last: np.uint64,
                 hdr: np.uint64, offs: NDArray[np.int64], ids: NDArray[np.uint16], lens: NDArray[np.int64]) -> int:
    """The recognition pass of both packed readers: of ``k`` slots from ``off``, how many lead whose buffer holds
    more than the header inside ``mem``; each one's frame offset, Buffer ID and frame length written out."""
    size = words.shape[0]
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
    return n


def _take_used(words: NDArray[np.uint64], off: int, wrap: int, k: int, mem: NDArray[np.uint8], mem_iova: np.uint64,
               mem_last: np.uint64, hdr: np.uint64, ids: NDArray[np.uint16], lens: NDArray[np.int64],
               in_order: bool, chunk: int) -> TxRun:
    """:func:`_take` from ``off`` (where the used position is too, wrap counter ``wrap``), returning the lists used
    ``chunk`` at a time as their frames are copied, so a driver whose ring is full gets slots back during the run:
    per chunk the used descriptors after its first (with ``in_order`` none: one used descriptor for the chunk, with
    its last Buffer ID, 2.8.8), a release fence, then the first one's 8-byte store of len 0, id and flags, which
    hands the chunk back (PACKED-DEV-07)."""
    size = words.shape[0]
    offs = np.empty(k, np.int64)
    n = _plain_slots(words, off, k, mem_iova, mem_last, hdr, offs, ids, lens)
    out = np.empty(lens[:n].sum(), np.uint8)
    uniform = lens[0] if n else -1
    pos = 0
    i = 0
    while i < n:
        end = min(i + chunk, n)
        pos, uniform = copy_frames(out, pos, mem, offs, lens, i, end, uniform)
        first = ids[end - 1] if in_order else ids[i]
        if not in_order:
            slot, w = off, wrap
            for j in range(i + 1, end):
                slot += 1
                if slot == size:
                    slot, w = 0, w ^ 1
                flags = _U64(_AVAIL | _USED) if w else _U64(0)
                words[slot, 1] = (_U64(ids[j]) << _U64(32)) | (flags << _U64(48))
        _release_fence()  # type: ignore[call-arg]
        flags = _U64(_AVAIL | _USED) if wrap else _U64(0)
        words[off, 1] = (_U64(first) << _U64(32)) | (flags << _U64(48))
        off += end - i
        if off >= size:
            off -= size
            wrap ^= 1
        i = end
    return n, out, uniform


def _signatures(kind: str) -> list[object]:
    out: list[object] = []
    if kind == "take_used":
        words = nb.types.Array(nb.uint64, 2, "C")
        result = nb.types.Tuple((nb.int64, nb.uint8[::1], nb.int64))  # type: ignore[no-untyped-call]
        for ro in (False, True):
            mem = nb.types.Array(nb.uint8, 1, "C", readonly=ro)
            out.append(result(words, nb.int64, nb.int64, nb.int64, mem, nb.uint64, nb.uint64, nb.uint64,
                              nb.uint16[::1], nb.int64[::1], nb.boolean, nb.int64))
        return out
    for ro in (False, True):  # "count"
        words = nb.types.Array(nb.uint64, 2, "C", readonly=ro)
        out.append(nb.int64(words, nb.int64, nb.int64, nb.int64))
    return out


count_avail = cast(Callable[[NDArray[np.uint64], int, int, int], int],
                   nb.njit(_signatures("count"), cache=True, nogil=True, boundscheck=False)(_count_avail))
take_used = cast(Callable[[NDArray[np.uint64], int, int, int, NDArray[np.uint8], np.uint64, np.uint64, np.uint64,
                           NDArray[np.uint16], NDArray[np.int64], bool, int], TxRun],
                 nb.njit(_signatures("take_used"), cache=True, nogil=True, boundscheck=False)(_take_used))


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
    n, data, uniform = take_used(words, old[0], old[1], k, *mapping, _U64(dev.hdr_len), ids, lens,
                                 q.in_order and dev.in_order_batch, USED_CHUNK)
    if n == 0:
        return 0, old, old
    q.consume(n)
    dev.stats.tx_bulk += n
    dev._transmit_batch(FrameBatch(data, lens[:n], uniform if uniform >= 0 else None))
    new = advance(old[0], old[1], n, q.size)
    q.next_used, q.used_wrap = new
    return n, old, new


__all__ = ["BURST", "GATHER_SECONDS", "PER_LIST_HOOKS", "POLL_SECONDS", "TxMaps", "bulk_ok", "count_avail",
           "poll_head", "ring_words", "take_used", "tx_run"]
