"""Packed-ring lists as the packed checks build them, and the device-side judgements they share.

:func:`post` writes one buffer into a :class:`~testbenches.driver.packed.DriverPackedQueue` exactly as given:
direct or through an indirect table, its non-last descriptors carrying ids of the caller's choosing (only the
last descriptor's id is the Buffer ID, 2.8.6, so a device that reads another one is caught). :func:`wait_used`
collects used buffers and counts the queue's interrupts meanwhile; :func:`rewrites_after_used` judges a DMA
trace against PACKED-DEV-07 (no device write into a descriptor after the store that flipped its USED flag).
"""

from __future__ import annotations

import select
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backend.virtio.packed_ring import (
    DESC_FLAGS_OFFSET,
    DESC_SIZE,
    PackedDescFlags,
    PackedDescriptor,
    advance,
    avail_bits,
    pack_ring,
)
from testbenches.conformance.chains import Access
from testbenches.conformance.harness import Rig, drain
from testbenches.driver.packed import DriverPackedQueue
from testbenches.driver.split_ring import DriverQueueError, UsedBuffer

NEXT = int(PackedDescFlags.NEXT)
WRITE = int(PackedDescFlags.WRITE)
INDIRECT = int(PackedDescFlags.INDIRECT)


class IdPool:
    """Buffer IDs of one ring: 0..size-1, each in flight at most once (a ring holds at most size buffers)."""

    def __init__(self, size: int) -> None:
        self._free = deque(range(size))

    def take(self) -> int:
        return self._free.popleft()

    def give(self, buffer_id: int) -> None:
        self._free.append(buffer_id)


@dataclass
class Posted:
    """One buffer made available: its Buffer ID, the ring slots it took, its parts as (gpa, len, writable)."""

    buffer_id: int
    slots: int
    parts: list[tuple[int, int, bool]]

    @property
    def writable(self) -> list[tuple[int, int]]:
        return [(gpa, n) for gpa, n, w in self.parts if w]

    def written(self, ring: DriverPackedQueue, length: int) -> bytes:
        """The first ``length`` bytes of the device-writable parts, in list order."""
        out: list[bytes] = []
        for gpa, n in self.writable:
            if length <= 0:
                break
            take = min(n, length)
            out.append(ring.mem.read(gpa, take))
            length -= take
        return b"".join(out)


def post(ring: DriverPackedQueue, buffer_id: int, out: Sequence[bytes], in_lens: Sequence[int], *,
         indirect: bool = False, other_ids: Sequence[int] = ()) -> Posted:
    """Make one buffer available (readable ``out`` parts, then writable parts of ``in_lens``), head flags last.

    ``other_ids`` are written into the non-last descriptors of a direct list (the device must ignore them);
    an indirect list is one ring descriptor carrying the Buffer ID. Freed with the rig's memory at reset.
    """
    parts: list[tuple[int, int, bool]] = [(ring.alloc_buffer(d), len(d), False) for d in out]
    parts += [(ring.alloc_buffer(n), n, True) for n in in_lens]
    if indirect:
        table = pack_ring(PackedDescriptor(gpa, n, 0, WRITE if w else 0) for gpa, n, w in parts)
        gpa = ring.alloc_buffer(table)
        descs = [PackedDescriptor(gpa, len(table), buffer_id, INDIRECT | avail_bits(ring.avail_wrap))]
    else:
        descs = []
        pos = (ring.next_avail, ring.avail_wrap)
        for i, (gpa, n, w) in enumerate(parts):
            last = i == len(parts) - 1
            ident = buffer_id if last else (other_ids[i] if i < len(other_ids) else buffer_id)
            descs.append(PackedDescriptor(gpa, n, ident, (0 if last else NEXT) | (WRITE if w else 0)
                                          | avail_bits(pos[1])))
            pos = advance(pos[0], pos[1], 1, ring.size)
    ring.expose_raw(descs, buffer_id)
    return Posted(buffer_id, len(descs), parts)


def wait_used(r: Rig, q: int, count: int, timeout: float) -> tuple[list[UsedBuffer], int, str]:
    """Consume used buffers of packed queue ``q`` until ``count`` came back or ``timeout``; returns them, the
    interrupts signalled on the queue meanwhile, and what went wrong ('' if nothing). After one missed deadline the
    rig's patience is short, so a broken device fails every hypothesis example (and shrink step) quickly."""
    ring = r.packed[q]
    nominal, timeout = timeout, r.bounded(timeout)
    fd = r.irq_fd(q)
    got: list[UsedBuffer] = []
    irqs = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            got += ring.used()
        except DriverQueueError as exc:
            return got, irqs, f"queue {q}: {exc}"
        if len(got) >= count:
            return got, irqs, ""
        left = deadline - time.monotonic()
        if left <= 0:
            r.missed_deadline()
            return got, irqs, f"queue {q}: {len(got)} of {count} buffers used within {r.explain_bounded(nominal)}"
        ready, _, _ = select.select([fd], [], [], min(left, 0.005))
        if ready:
            irqs += drain(fd)


def rewrites_after_used(accesses: Sequence[Access], rings: Mapping[int, DriverPackedQueue]) -> list[str]:
    """PACKED-DEV-07 on one round's device DMA: a device write into a descriptor slot after the write that covered
    its flags (the USED flip). Each slot is handed back at most once per round (a round makes available at most
    the free slots), so any later write there changed a used descriptor."""
    bad: list[str] = []
    flipped: set[tuple[int, int]] = set()
    for a in accesses:
        if not a.is_write:
            continue
        for q, ring in rings.items():
            lo, hi = ring.desc_addr, ring.desc_addr + DESC_SIZE * ring.size
            start, end = max(a.iova, lo), min(a.iova + a.size, hi)
            if start >= end:
                continue
            for slot in range((start - lo) // DESC_SIZE, (end - 1 - lo) // DESC_SIZE + 1):
                if (q, slot) in flipped:
                    bad.append(f"queue {q}: device wrote {a.size} byte(s) at {a.iova:#x} into slot {slot} after "
                               f"its USED flag was written (DMA #{a.seq})")
                flags = lo + DESC_SIZE * slot + DESC_FLAGS_OFFSET
                if a.iova <= flags and flags + 2 <= a.iova + a.size:
                    flipped.add((q, slot))
    return bad


__all__ = ["INDIRECT", "NEXT", "WRITE", "IdPool", "Posted", "post", "rewrites_after_used", "wait_used"]
