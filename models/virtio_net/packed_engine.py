"""Device side of a packed virtqueue (virtio 1.4, 2.8), beside :mod:`models.virtio_net.split_engine`.

The same shape as the split engine: the queue keeps the driver-programmed
configuration and the device's progress (next avail slot and Driver Ring Wrap
Counter as the device tracks it, next used slot and the Device Ring Wrap
Counter), and talks to guest memory only through the split engine's
:class:`~models.virtio_net.split_engine.Dma` protocol.

Memory access and judgement are apart. :meth:`PackedQueue.chain_at` only reads
(the head's flags word, then the descriptors of the list, then an indirect
table); every bound and rule of a list is checked in the ``_check_*``/``_parse_*``
methods, which see decoded descriptors and never memory (the configuration in
:meth:`PackedQueue.config_error`, notification data in
:meth:`PackedQueue.check_notification`). A malformed ring raises
:class:`~models.virtio_net.split_engine.RingError` naming the requirement the
driver broke (PACKED-DRV-*), once per violation, never an IndexError, a hang
or an access outside the ring.

The decisions a vendor implementation can get wrong are methods of
:class:`PackedHooks`, each named ``packed_*`` so that a device class can carry
them beside the split engine's :class:`~models.virtio_net.split_engine.RingHooks`
and a seeded-bug variant is a one-method override.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backend.virtio.packed_ring import (
    DESC_FLAGS_OFFSET,
    DESC_SIZE,
    EVENT_ALIGN,
    EVENT_FLAGS,
    U16,
    EventFlags,
    EventSuppress,
    PackedDescFlags,
    PackedDescriptor,
    advance,
    is_avail,
    is_valid_packed_size,
    linear,
    packed_need_event,
    unpack_off_wrap,
    unpack_ring,
    used_bits,
)
from models.virtio_net.split_engine import Chain, Dma, RingError, VirtQueue, full_barrier

#: Descriptors fetched per DMA read while walking a list (lists are contiguous in a packed ring).
DESC_WINDOW = 16
_NEXT = int(PackedDescFlags.NEXT)
_WRITE = int(PackedDescFlags.WRITE)
_INDIRECT = int(PackedDescFlags.INDIRECT)

#: A ring position: (offset of the slot, wrap counter there).
Position = tuple[int, int]


@dataclass(slots=True)
class PackedChain(Chain):
    """A descriptor list taken from a packed ring.

    ``head`` is the Buffer ID (the id of the list's last descriptor, 2.8.6), ``slots`` the ring slots the list
    occupies (1 for an indirect one), ``ndesc`` the buffers it describes (indirect entries counted).
    """

    slots: int = 1


@dataclass(frozen=True, slots=True)
class UsedElem:
    """One used descriptor to write: Buffer ID, bytes written, ring slots the buffer occupied."""

    id: int
    len: int
    slots: int = 1


class PackedHooks:
    """Packed ring decisions, one method each, so a seeded-bug variant overrides exactly one of them.

    - :meth:`packed_chain_continues`: does this descriptor link to the next slot? (the NEXT flag)
    - :meth:`packed_buffer_id`: the Buffer ID of a list (the last descriptor's id, 2.8.6).
    - :meth:`packed_indirect_count`: entries of an indirect table (len / 16, 2.8.7).
    - :meth:`packed_indirect_entry_ok`: can the device follow an indirect entry with these flags? (not INDIRECT)
    - :meth:`packed_max_chain_len`: descriptor limit per list (PACKED-DEV-09; the queue size, PACKED-DRV-07).
    - :meth:`packed_advance_used`: the used position after ``n`` slots (the wrap counter flips at the end).
    - :meth:`packed_used_stores`: the stores that write one used descriptor, in order (flags last).
    - :meth:`packed_in_order_id`: the Buffer ID of an IN_ORDER batch written as one used descriptor (the last).
    - :meth:`packed_event_crossed`: RING_EVENT_FLAGS_DESC threshold test.
    - :meth:`packed_needs_notification`: used buffer notification decision (driver event suppression).
    """

    def packed_chain_continues(self, desc: PackedDescriptor) -> bool:
        return bool(desc.flags & _NEXT)

    def packed_buffer_id(self, descs: Sequence[PackedDescriptor]) -> int:
        return descs[-1].id

    def packed_indirect_count(self, desc: PackedDescriptor) -> int:
        return desc.len // DESC_SIZE

    def packed_indirect_entry_ok(self, flags: int) -> bool:
        """WRITE is the only valid flag of an indirect entry (PACKED-DRV-13) and the device ignores the reserved
        others (2.8.7), but INDIRECT there asks for a second level of tables no device follows: refused."""
        return not flags & _INDIRECT

    def packed_max_chain_len(self, queue_size: int) -> int:
        return queue_size

    def packed_advance_used(self, off: int, wrap: int, n: int, size: int) -> Position:
        return advance(off, wrap, n, size)

    def packed_used_stores(self, buffer_id: int, length: int, flags: int) -> list[tuple[int, bytes]]:
        """(offset in the descriptor, bytes) stores: len and id first, then flags, so the driver never sees a
        used flag over a stale id (PACKED-DEV-07)."""
        return [(8, (length & 0xFFFFFFFF).to_bytes(4, "little") + (buffer_id & 0xFFFF).to_bytes(2, "little")),
                (DESC_FLAGS_OFFSET, U16.pack(flags))]

    def packed_in_order_id(self, ids: Sequence[int]) -> int:
        return ids[-1]

    def packed_event_crossed(self, event: Position, new: Position, count: int, size: int) -> bool:
        return packed_need_event(event[0], event[1], new[0], new[1], count, size)

    def packed_needs_notification(self, q: PackedQueue, old: Position, new: Position) -> bool:
        """ENABLE: always; DISABLE: never; DESC (EVENT_IDX only): when the used slots just written cover
        desc_event_off/wrap. DESC without EVENT_IDX and the reserved value 3 mean nothing defined: the device
        notifies, which is never wrong (a driver copes with spurious notifications)."""
        ev = q.read_driver_event()
        if ev.flags == EventFlags.DISABLE:
            return False
        if ev.flags == EventFlags.DESC and q.event_idx:
            count = (linear(*new, q.size) - linear(*old, q.size)) % (2 * q.size)
            return self.packed_event_crossed((ev.off, ev.wrap), new, count, q.size)
        return True


class PackedQueue(VirtQueue):
    """One packed virtqueue: configuration registers plus device progress.

    ``desc``/``driver``/``device`` are the descriptor ring and the driver and device event suppression
    areas (queue_desc, queue_driver, queue_device). ``next_avail``/``avail_wrap`` is the next slot the device
    will look at and the driver wrap counter it expects there; ``next_used``/``used_wrap`` where the next used
    descriptor goes. Both counters start at 1 and everything resets with the queue (RESET-DEV-04).
    """

    def __init__(self, index: int, max_size: int, dma: Dma, hooks: PackedHooks) -> None:
        if not is_valid_packed_size(max_size):
            raise ValueError(f"queue {index}: maximum size {max_size} is not within 1..32768")
        self.hooks = hooks
        super().__init__(index, max_size, dma)

    def reset(self) -> None:
        """Back to the power-on defaults of the queue: configuration, positions, wrap counters 1."""
        super().reset()
        self.next_avail = 0
        self.avail_wrap = 1
        self.next_used = 0
        self.used_wrap = 1

    # --- configuration -----------------------------------------------------------------------

    def config_error(self) -> RingError | None:
        """Why the programmed configuration cannot be enabled (checked at queue_enable time).

        A size of 0 breaks PCI-DRV-16; one above the maximum has no row of its own and is reported under the
        same queue_size row (the split engine does the same with PCI-DRV-17).
        """
        if not is_valid_packed_size(self.size) or self.size > self.max_size:
            return RingError("PCI-DRV-16", f"queue {self.index}: queue_size {self.size} is not within "
                                           f"1..{self.max_size}")
        return self.misaligned("PACKED-DRV-01", EVENT_ALIGN, EVENT_ALIGN)

    # --- memory access (reads and writes only; no judgement) -----------------------------------

    def read_desc_flags(self, off: int) -> int:
        return self.read_ring_u16(self.desc + DESC_SIZE * off + DESC_FLAGS_OFFSET)

    def _fetch(self, off: int, n: int) -> list[PackedDescriptor]:
        """``n`` descriptors from slot ``off`` (not past the ring's end) in one DMA read."""
        return unpack_ring(self.dma.read(self.desc + DESC_SIZE * off, DESC_SIZE * n))

    def _gather_ring_descs(self, off: int) -> list[PackedDescriptor]:
        """The descriptors of the list whose head is at ``off``, following NEXT across the ring's end; never more
        than size + 1 (the one past the queue size is what :meth:`_check_ring_descs` refuses)."""
        size = self.size
        out: list[PackedDescriptor] = []
        window: list[PackedDescriptor] = []
        start = pos = off  # window[i] is the descriptor at slot start + i
        while len(out) <= size:
            if pos - start >= len(window):
                start = pos
                window = self._fetch(pos, min(DESC_WINDOW, size - pos))
            desc = window[pos - start]
            out.append(desc)
            if not self.hooks.packed_chain_continues(desc):
                break
            pos += 1
            if pos == size:
                pos = 0
                start, window = 0, []
        return out

    def read_driver_event(self) -> EventSuppress:
        """The driver event suppression structure (used buffer notifications); the flags word is read first."""
        flags = self.read_ring_u16(self.driver + EVENT_FLAGS)
        off, wrap = unpack_off_wrap(self.read_ring_u16(self.driver))
        return EventSuppress(off, wrap, flags & 0x3, flags >> 2)

    def write_device_event(self, flags: EventFlags, off: int = 0, wrap: int = 0) -> None:
        """The device event suppression structure (available buffer notifications): desc first, flags last."""
        self.write_ring_u16(self.device, off | (wrap & 1) << 15)
        self.write_ring_u16(self.device + EVENT_FLAGS, int(flags))

    def want_kick_at_next(self) -> None:
        """Ask for an available buffer notification when the next slot is made available: RING_EVENT_FLAGS_DESC
        at next_avail with EVENT_IDX, else ENABLE (the packed form of split's avail_event and used.flags)."""
        if self.event_idx:
            self.write_device_event(EventFlags.DESC, self.next_avail, self.avail_wrap)
        else:
            self.write_device_event(EventFlags.ENABLE)

    # --- available descriptors ----------------------------------------------------------------

    def head_available(self, pos: Position | None = None) -> bool:
        """The slot at ``pos`` (default: next_avail) holds a descriptor made available for its wrap counter."""
        off, wrap = (self.next_avail, self.avail_wrap) if pos is None else pos
        return is_avail(self.read_desc_flags(off), wrap)

    def chain_at(self, pos: Position | None = None) -> PackedChain | None:
        """The list whose head is at ``pos`` (default: next_avail), or None when that head is not available.

        The head's flags word is read on its own and before the rest (the driver wrote it last, PACKED-DRV-16),
        so the descriptors read after it are the ones it published (PACKED-DEV-06).
        """
        off, wrap = (self.next_avail, self.avail_wrap) if pos is None else pos
        if not is_avail(self.read_desc_flags(off), wrap):
            return None
        full_barrier()
        descs = self._gather_ring_descs(off)
        chain, indirect = self._check_ring_descs(descs, off, wrap)
        if indirect is not None:
            count = self._check_indirect(chain, indirect)
            self._parse_indirect(chain, unpack_ring(self.dma.read(indirect.addr, DESC_SIZE * count)))
        return chain

    def peek_chains(self, limit: int | None = None) -> list[PackedChain]:
        """Successive available lists from next_avail (at most ``limit``), without consuming them."""
        out: list[PackedChain] = []
        pos = (self.next_avail, self.avail_wrap)
        used_slots = 0
        while (limit is None or len(out) < limit) and used_slots < self.size:
            chain = self.chain_at(pos)
            if chain is None:
                break
            out.append(chain)
            used_slots += chain.slots
            pos = advance(pos[0], pos[1], chain.slots, self.size)
        return out

    def consume(self, slots: int) -> None:
        """The device is done reading ``slots`` ring slots from next_avail (the driver wrap counter flips at the
        ring's end, as the driver's did)."""
        self.next_avail, self.avail_wrap = advance(self.next_avail, self.avail_wrap, slots, self.size)

    def check_notification(self, next_off: int, next_wrap: int) -> None:
        """A notification with VIRTIO_F_NOTIFICATION_DATA (2.9): next_off/next_wrap name the first slot not yet
        made available (PACKED-DRV-04). Checked where it can be without a race: the slot just before it must be
        available when it lies within a ring ahead of next_avail (nothing there was consumed yet); a position
        behind the device is an older notification the device has overtaken."""
        size = self.size
        if next_off >= size:
            raise RingError("PACKED-DRV-04", f"queue {self.index}: notification next_off {next_off} >= queue size "
                                             f"{size}")
        ahead = (linear(next_off, next_wrap, size) - linear(self.next_avail, self.avail_wrap, size)) % (2 * size)
        if not 0 < ahead <= size:
            return
        last = (next_off - 1, next_wrap) if next_off else (size - 1, next_wrap ^ 1)
        if not is_avail(self.read_desc_flags(last[0]), last[1]):
            raise RingError("PACKED-DRV-04", f"queue {self.index}: notification says slots up to {next_off} "
                                             f"(wrap {next_wrap}) are available, slot {last[0]} is not")

    # --- the rules (decoded descriptors only; every bound is checked here) ----------------------

    def _check_ring_descs(self, descs: Sequence[PackedDescriptor], off: int,
                          wrap: int) -> tuple[PackedChain, PackedDescriptor | None]:
        """Judge the ring descriptors of one list (head at ``off`` with wrap counter ``wrap``): returns the chain of
        its direct buffers and the INDIRECT descriptor, if the list is one."""
        size = self.size
        q = self.index
        limit = self.hooks.packed_max_chain_len(size)
        chain = PackedChain(self.hooks.packed_buffer_id(descs[:size]), slots=min(len(descs), size))
        writable_seen = False
        pos, pos_wrap = off, wrap
        for i, desc in enumerate(descs):
            if i >= size:
                raise RingError("PACKED-DRV-07", f"queue {q}: list from slot {off} is longer than the queue size "
                                                 f"{size}")
            if i and not is_avail(desc.flags, pos_wrap):
                raise RingError("PACKED-DRV-11", f"queue {q}: slot {pos} of the list from slot {off} was not made "
                                                 "available before its head")
            if desc.flags & _INDIRECT:
                if not self.indirect:
                    raise RingError("PACKED-DRV-12", f"queue {q}: INDIRECT descriptor at slot {pos} without "
                                                     "VIRTIO_F_INDIRECT_DESC")
                if len(descs) > 1:
                    raise RingError("PACKED-DRV-15", f"queue {q}: INDIRECT descriptor at slot {pos} is part of a "
                                                     "NEXT-linked list")
                return chain, desc
            chain.ndesc += 1
            if chain.ndesc > limit:
                raise RingError("PACKED-DRV-06", f"queue {q}: list from slot {off} has more than {limit} "
                                                 "descriptors")
            writable_seen = self._add_buffer(chain, desc.addr, desc.len, desc.flags, writable_seen)
            pos, pos_wrap = advance(pos, pos_wrap, 1, size)
        return chain, None

    def _check_indirect(self, chain: PackedChain, desc: PackedDescriptor) -> int:
        """Entries of the indirect table ``desc`` points at (its WRITE flag is disregarded, as in 2.7.5.3.2)."""
        q = self.index
        count = self.hooks.packed_indirect_count(desc)
        if desc.len == 0 or desc.len % DESC_SIZE or count <= 0:
            raise RingError("PACKED-DRV-14", f"queue {q}: indirect table len {desc.len} of buffer {chain.head} is "
                                             f"not a non-zero multiple of {DESC_SIZE}")
        limit = self.hooks.packed_max_chain_len(self.size)
        if count > limit:
            raise RingError("PACKED-DRV-14", f"queue {q}: indirect table of {count} descriptors in buffer "
                                             f"{chain.head} is longer than {limit}")
        return count

    def _parse_indirect(self, chain: PackedChain, table: Sequence[PackedDescriptor]) -> None:
        writable_seen = False
        for i, d in enumerate(table):
            if not self.hooks.packed_indirect_entry_ok(d.flags):
                raise RingError("PACKED-DRV-13", f"queue {self.index}: indirect entry {i} of buffer {chain.head} "
                                                 f"carries flags {d.flags:#x}: INDIRECT inside an indirect table")
            chain.ndesc += 1
            writable_seen = self._add_buffer(chain, d.addr, d.len, d.flags, writable_seen)

    def _add_buffer(self, chain: PackedChain, addr: int, length: int, flags: int, writable_seen: bool) -> bool:
        if flags & _WRITE:
            chain.writable.append((addr, length))
            return True
        if writable_seen:
            raise RingError("PACKED-DRV-08", f"queue {self.index}: device-readable descriptor after a "
                                             f"device-writable one in buffer {chain.head}")
        chain.readable.append((addr, length))
        return False

    # --- used descriptors -----------------------------------------------------------------------

    def _write_used(self, off: int, wrap: int, buffer_id: int, length: int) -> None:
        flags = used_bits(wrap) | (_WRITE if length else 0)  # WRITE: the device wrote into the buffer
        base = self.desc + DESC_SIZE * off
        for at, data in self.hooks.packed_used_stores(buffer_id, length, flags):
            if at == DESC_FLAGS_OFFSET and len(data) == 2:
                self.write_ring_u16(base + at, U16.unpack(data)[0])  # the store that hands the slot back: one 16-bit
            else:
                self.dma.write(base + at, data)

    def push_used(self, elems: Sequence[UsedElem], *, in_order_batch: bool = False) -> tuple[Position, Position]:
        """Write used descriptors at next_used and move it past every slot the buffers occupied.

        Each used descriptor goes in the slot where its buffer's list began, in completion order
        (PACKED-DEV-02). With ``in_order_batch`` (VIRTIO_F_IN_ORDER) the whole batch is one used descriptor with
        the last Buffer ID and length, at the first slot, and the device skips the batch's slots (2.8.8).
        The first used descriptor's flags are the last store, so a batch appears at once.
        Returns (old, new) used positions for :meth:`needs_notification`.
        """
        old = (self.next_used, self.used_wrap)
        if not elems:
            return old, old
        size = self.size
        if in_order_batch:
            total = sum(e.slots for e in elems)
            last = elems[-1]
            writes = [(old, UsedElem(self.hooks.packed_in_order_id([e.id for e in elems]), last.len, total))]
        else:
            writes = []
            pos = old
            for e in elems:
                writes.append((pos, e))
                pos = self.hooks.packed_advance_used(pos[0], pos[1], e.slots, size)
        for (off, wrap), e in writes[1:]:
            self._write_used(off, wrap, e.id, e.len)
        (off, wrap), first = writes[0]
        self._write_used(off, wrap, first.id, first.len)
        pos = old
        if in_order_batch:
            pos = self.hooks.packed_advance_used(pos[0], pos[1], writes[0][1].slots, size)
        else:
            for e in elems:
                pos = self.hooks.packed_advance_used(pos[0], pos[1], e.slots, size)
        self.next_used, self.used_wrap = pos
        return old, pos

    def needs_notification(self, old: Position, new: Position) -> bool:
        return self.hooks.packed_needs_notification(self, old, new)


__all__ = ["DESC_WINDOW", "PackedChain", "PackedHooks", "PackedQueue", "Position", "UsedElem"]
