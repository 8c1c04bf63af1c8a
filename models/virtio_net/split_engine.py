"""Device side of a split virtqueue (virtio 1.4, 2.7).

Structured like rust-vmm's virtio-queue: the queue keeps the driver-programmed
configuration and the device's progress (last_avail_idx, used idx); chain
parsing and used-ring publication talk to guest memory only through a small
:class:`Dma` protocol, so every byte the device touches goes through one
``read``/``write`` pair (the endpoint's IOMMU-checked DMA in the simulator).

Every bound is checked in :meth:`SplitQueue.parse_chain` /
:meth:`SplitQueue.available`: a malformed ring raises :class:`RingError` naming
the requirement the driver broke, never an IndexError, a hang or an access
outside the ring. The decisions a vendor implementation can get wrong are
methods of :class:`RingHooks` so a bug variant is a one-method override.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

from backend.virtio.split_ring import (
    AVAIL_ALIGN,
    DESC_ALIGN,
    DESC_SIZE,
    U16,
    USED_ALIGN,
    USED_ELEM,
    USED_ELEM_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    DescFlags,
    Descriptor,
    SplitLayout,
    is_valid_split_size,
    unpack_table,
    vring_need_event,
)

#: With VIRTIO_F_IN_ORDER chains are contiguous (SPLIT-DRV-05), so this many descriptors are fetched per DMA read.
IN_ORDER_DESC_WINDOW = 8
_MAX_CHAIN_BYTES = 1 << 32


class Dma(Protocol):
    """Device-initiated memory access; raises ``DmaFaultError`` for anything the IOMMU refuses."""

    def read(self, iova: int, n: int) -> bytes: ...

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None: ...


class RingError(Exception):
    """The driver broke a rule of the ring; ``req_id`` is the violated driver requirement (e.g. SPLIT-DRV-04)."""

    def __init__(self, req_id: str, message: str) -> None:
        super().__init__(f"{req_id}: {message}")
        self.req_id = req_id
        self.message = message


@dataclass(slots=True)
class Chain:
    """One descriptor chain: device-readable then device-writable (addr, len) pieces."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)
    ndesc: int = 0

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)


class RingHooks:
    """Ring decisions, one method each, so a seeded-bug variant overrides exactly one of them.

    - :meth:`chain_continues`: does this descriptor link to ``next``? (the NEXT flag)
    - :meth:`indirect_next_is_error`: is INDIRECT together with NEXT refused (SPLIT-DRV-09)?
      Returning False makes the device honour NEXT after the indirect table.
    - :meth:`next_used_idx`: the used idx after adding ``count`` entries (16-bit wrap).
    - :meth:`used_event_crossed`: EVENT_IDX threshold test (vring_need_event).
    - :meth:`needs_notification`: used buffer notification decision (SPLIT-DEV-09..14).
    - :meth:`max_chain_len`: descriptor limit per chain (SPLIT-DEV-02; the queue size, SPLIT-DRV-08).
    """

    def chain_continues(self, desc: Descriptor) -> bool:
        return bool(desc.flags & DescFlags.NEXT)

    def indirect_next_is_error(self, desc: Descriptor) -> bool:
        return True

    def next_used_idx(self, used_idx: int, count: int) -> int:
        return (used_idx + count) & 0xFFFF

    def used_event_crossed(self, used_event: int, new_idx: int, old_idx: int) -> bool:
        return vring_need_event(used_event, new_idx, old_idx)

    def max_chain_len(self, queue_size: int) -> int:
        return queue_size

    def needs_notification(self, q: SplitQueue, old_idx: int, new_idx: int) -> bool:
        if q.event_idx:
            # SPLIT-DEV-12/13/14: with EVENT_IDX only used_event counts, avail.flags is disregarded
            return self.used_event_crossed(q.read_used_event(), new_idx & 0xFFFF, old_idx & 0xFFFF)
        # SPLIT-DEV-09/10/11: without EVENT_IDX used_event is disregarded, avail.flags bit 0 suppresses
        return not q.read_avail_flags() & VRING_AVAIL_F_NO_INTERRUPT


class SplitQueue:
    """One split virtqueue: configuration registers plus device progress.

    Configuration fields (``size``, ``desc``, ``driver``, ``device``,
    ``msix_vector``, ``enabled``) are what the common configuration structure
    exposes for this queue; ``last_avail_idx`` / ``used_idx`` are the device's
    private progress, reset with the queue (RESET-DEV-04).
    """

    def __init__(self, index: int, max_size: int, dma: Dma, hooks: RingHooks) -> None:
        if not is_valid_split_size(max_size):
            raise ValueError(f"queue {index}: maximum size {max_size} is not a power of two <= 32768")
        self.index = index
        self.max_size = max_size
        self.dma = dma
        self.hooks = hooks
        self.notify_off = index
        self.reset()

    def reset(self) -> None:
        """Back to the power-on defaults of the queue (2.6.1: indices and configuration)."""
        self.size = self.max_size
        self.desc = 0
        self.driver = 0
        self.device = 0
        self.msix_vector = 0xFFFF
        self.enabled = False
        self.last_avail_idx = 0
        self.used_idx = 0
        self.event_idx = False
        self.indirect = False
        self.in_order = False
        self.layout = SplitLayout(self.size)

    # --- configuration -----------------------------------------------------------------------

    def config_error(self) -> RingError | None:
        """Why the programmed configuration cannot be enabled (checked at queue_enable time)."""
        if not is_valid_split_size(self.size) or self.size > self.max_size:
            return RingError("PCI-DRV-17", f"queue {self.index}: queue_size {self.size} is not a power of two "
                                           f"<= {self.max_size}")
        for name, addr, align in (("queue_desc", self.desc, DESC_ALIGN), ("queue_driver", self.driver, AVAIL_ALIGN),
                                  ("queue_device", self.device, USED_ALIGN)):
            if addr % align:
                return RingError("SPLIT-DRV-01", f"queue {self.index}: {name} {addr:#x} is not {align}-byte aligned")
        return None

    def activate(self, *, event_idx: bool, indirect: bool, in_order: bool) -> None:
        """Freeze the ring geometry and negotiated ring features when the queue goes live."""
        self.layout = SplitLayout(self.size)
        self.event_idx = event_idx
        self.indirect = indirect
        self.in_order = in_order

    # --- available ring ----------------------------------------------------------------------

    def read_avail_idx(self) -> int:
        idx: int = U16.unpack(self.dma.read(self.driver + SplitLayout.AVAIL_IDX, 2))[0]
        return idx

    def read_avail_flags(self) -> int:
        flags: int = U16.unpack(self.dma.read(self.driver + SplitLayout.AVAIL_FLAGS, 2))[0]
        return flags

    def read_used_event(self) -> int:
        ev: int = U16.unpack(self.dma.read(self.driver + self.layout.used_event, 2))[0]
        return ev

    def write_avail_event(self, value: int) -> None:
        self.dma.write(self.device + self.layout.avail_event, U16.pack(value & 0xFFFF))

    def available(self) -> int:
        """Entries the driver has made available beyond last_avail_idx (SPLIT-DRV-11 bounds it)."""
        pending = (self.read_avail_idx() - self.last_avail_idx) & 0xFFFF
        if pending > self.size:
            raise RingError("SPLIT-DRV-11", f"queue {self.index}: avail idx is {pending} entries ahead of "
                                            f"last_avail_idx {self.last_avail_idx} with queue size {self.size}")
        return pending

    def peek(self, n: int) -> list[int]:
        """Heads of the next ``n`` available chains, read in at most two DMA reads (the ring wraps once)."""
        n = min(n, self.size)
        if n <= 0:
            return []
        start = self.last_avail_idx % self.size
        first = min(n, self.size - start)
        raw = self.dma.read(self.driver + SplitLayout.AVAIL_RING + 2 * start, 2 * first)
        if n > first:
            raw += self.dma.read(self.driver + SplitLayout.AVAIL_RING, 2 * (n - first))
        return list(struct.unpack(f"<{n}H", raw))

    def consume(self, n: int = 1) -> None:
        self.last_avail_idx = (self.last_avail_idx + n) & 0xFFFF

    # --- descriptor chains -------------------------------------------------------------------

    def _read_descs(self, table: int, first: int, count: int) -> list[Descriptor]:
        return unpack_table(self.dma.read(table + DESC_SIZE * first, DESC_SIZE * count))

    def parse_chain(self, head: int) -> Chain:
        """Walk the chain starting at ``head``; every index, length and count is checked here."""
        size = self.size
        q = self.index
        if head >= size:
            raise RingError("SPLIT-DRV-04", f"queue {q}: avail ring names descriptor {head} >= queue size {size}")
        limit = self.hooks.max_chain_len(size)
        chain = Chain(head)
        total = 0
        writable_seen = False
        window: dict[int, Descriptor] = {}
        idx = head
        steps = 0  # descriptors visited in the main table: more than size means a loop
        while True:
            steps += 1
            if steps > size:
                raise RingError("SPLIT-DRV-04", f"queue {q}: chain from head {head} loops (more than {size} "
                                                "descriptors in the table)")
            desc = window.get(idx)
            if desc is None:
                count = min(IN_ORDER_DESC_WINDOW, size - idx) if self.in_order else 1
                window = {idx + i: d for i, d in enumerate(self._read_descs(self.desc, idx, count))}
                desc = window[idx]
            if desc.flags & DescFlags.INDIRECT:
                chain.ndesc += 1
                writable_seen, total = self._walk_indirect(chain, desc, limit, writable_seen, total)
                if not desc.flags & DescFlags.NEXT:
                    return chain
            else:
                chain.ndesc += 1
                if chain.ndesc > limit:
                    raise RingError("SPLIT-DRV-08", f"queue {q}: chain from head {head} has more than {limit} "
                                                    "descriptors")
                writable_seen, total = self._add_buffer(chain, desc, writable_seen, total)
            if not self.hooks.chain_continues(desc):
                return chain
            idx = desc.next
            if idx >= size:
                raise RingError("SPLIT-DRV-04", f"queue {q}: descriptor next {idx} >= queue size {size}")

    def _add_buffer(self, chain: Chain, desc: Descriptor, writable_seen: bool, total: int) -> tuple[bool, int]:
        total += desc.len
        if total > _MAX_CHAIN_BYTES:
            raise RingError("SPLIT-DRV-04", f"queue {self.index}: chain from head {chain.head} totals more than "
                                            "2^32 bytes")
        if desc.flags & DescFlags.WRITE:
            chain.writable.append((desc.addr, desc.len))
            return True, total
        if writable_seen:
            raise RingError("SPLIT-DRV-02", f"queue {self.index}: device-readable descriptor after a "
                                            f"device-writable one in chain {chain.head}")
        chain.readable.append((desc.addr, desc.len))
        return False, total

    def _walk_indirect(self, chain: Chain, desc: Descriptor, limit: int, writable_seen: bool,
                       total: int) -> tuple[bool, int]:
        q = self.index
        if not self.indirect:
            raise RingError("SPLIT-DRV-06", f"queue {q}: INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC")
        if desc.flags & DescFlags.NEXT and self.hooks.indirect_next_is_error(desc):
            raise RingError("SPLIT-DRV-09", f"queue {q}: descriptor in chain {chain.head} has both INDIRECT and NEXT")
        if desc.len == 0 or desc.len % DESC_SIZE:
            raise RingError("SPLIT-DRV-08", f"queue {q}: indirect table len {desc.len} is not a non-zero "
                                            f"multiple of {DESC_SIZE}")
        n = desc.len // DESC_SIZE
        if chain.ndesc - 1 + n > limit:
            raise RingError("SPLIT-DRV-08", f"queue {q}: indirect table of {n} descriptors makes chain "
                                            f"{chain.head} longer than {limit}")
        # The WRITE flag of the descriptor pointing at the table is disregarded (SPLIT-DEV-07);
        # the whole table is fetched in one DMA read.
        table = self._read_descs(desc.addr, 0, n)
        i = 0
        for _ in range(n):
            d = table[i]
            if d.flags & DescFlags.INDIRECT:
                raise RingError("SPLIT-DRV-07", f"queue {q}: indirect table of chain {chain.head} holds an "
                                                "INDIRECT descriptor")
            chain.ndesc += 1
            writable_seen, total = self._add_buffer(chain, d, writable_seen, total)
            if not self.hooks.chain_continues(d):
                return writable_seen, total
            i = d.next
            if i >= n:
                raise RingError("SPLIT-DRV-04", f"queue {q}: indirect descriptor next {i} >= table length {n}")
        raise RingError("SPLIT-DRV-04", f"queue {q}: indirect table of chain {chain.head} loops")

    # --- used ring ---------------------------------------------------------------------------

    def push_used(self, elems: list[tuple[int, int]], count: int | None = None) -> tuple[int, int]:
        """Write used elements, then publish used idx advanced by ``count`` (default ``len(elems)``).

        With IN_ORDER a batch may be returned as one element for the last buffer
        (``count`` > ``len(elems)``): it is written to the slot of that last buffer.
        The elements (id and len) are written before used idx (SPLIT-DEV-15).
        Returns (old used idx, new used idx).
        """
        n = len(elems) if count is None else count
        if n == 0:
            return self.used_idx, self.used_idx
        size = self.size
        start = (self.used_idx + n - len(elems)) % size
        buf = bytearray(USED_ELEM_SIZE * len(elems))
        for i, (head, length) in enumerate(elems):
            USED_ELEM.pack_into(buf, USED_ELEM_SIZE * i, head, length & 0xFFFFFFFF)
        first = min(len(elems), size - start)
        mv = memoryview(buf)
        base = self.device + SplitLayout.USED_RING
        self.dma.write(base + USED_ELEM_SIZE * start, mv[:USED_ELEM_SIZE * first])
        if len(elems) > first:
            self.dma.write(base, mv[USED_ELEM_SIZE * first:])
        old = self.used_idx
        new = self.hooks.next_used_idx(old, n)
        self.dma.write(self.device + SplitLayout.USED_IDX, U16.pack(new & 0xFFFF))
        self.used_idx = new
        return old, new

    def needs_notification(self, old_idx: int, new_idx: int) -> bool:
        return self.hooks.needs_notification(self, old_idx, new_idx)


__all__ = ["Chain", "Dma", "RingError", "RingHooks", "SplitQueue"]
