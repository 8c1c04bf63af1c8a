"""Driver side of a packed virtqueue (2.8) in guest memory, on the shared layout in backend.virtio.packed_ring.

Well-behaved use: :meth:`DriverPackedQueue.add` (the list is visible to the
device once its head's flags are written, last), :meth:`kick_needed` (asks the
device event suppression structure whether to notify, and what to write with
VIRTIO_F_NOTIFICATION_DATA: :meth:`notification_value`) and :meth:`used`.
Hostile tests write descriptors directly (:meth:`write_desc`,
:meth:`expose_raw`, :meth:`write_indirect`) to build lists a correct driver
would never make available.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from backend.virtio.packed_ring import (
    DESC,
    DESC_ALIGN,
    DESC_FLAGS_OFFSET,
    DESC_SIZE,
    EVENT_ALIGN,
    EVENT_FLAGS,
    EVENT_SIZE,
    EventFlags,
    EventSuppress,
    PackedDescFlags,
    PackedDescriptor,
    PackedLayout,
    advance,
    avail_bits,
    is_used,
    is_valid_packed_size,
    linear,
    notification_data,
    pack_off_wrap,
    packed_need_event,
)
from sim.memory import Allocator, GuestMemory
from testbenches.driver.split_ring import DriverQueue, DriverQueueError, InflightBuffers, QueueFull, UsedBuffer

_NEXT = int(PackedDescFlags.NEXT)
_WRITE = int(PackedDescFlags.WRITE)
_INDIRECT = int(PackedDescFlags.INDIRECT)


@dataclass
class _Inflight(InflightBuffers):
    slots: int = 1  # ring slots the list occupies


class DriverPackedQueue(DriverQueue[_Inflight, PackedDescriptor]):
    """A packed virtqueue of ``size`` entries (any size 1..32768) whose three parts live in guest memory.

    Parts are allocated at their spec alignment (PACKED-DRV-01) and zeroed, so both wrap counters start at 1
    over an all-zero ring. Buffer IDs come from a free list; with ``in_order`` (VIRTIO_F_IN_ORDER) a used
    descriptor completes every buffer made available up to the one it names (2.8.8). With ``event_idx`` the
    driver asks for used buffer notifications by position (RING_EVENT_FLAGS_DESC) instead of ENABLE.
    """

    descriptor = PackedDescriptor

    def __init__(self, mem: GuestMemory, alloc: Allocator, size: int, *, index: int = 0, event_idx: bool = False,
                 in_order: bool = False, auto_used_event: bool = True) -> None:
        if not is_valid_packed_size(size):
            raise ValueError(f"packed queue size {size} is not within 1..32768")
        super().__init__(mem, alloc, size, index=index, event_idx=event_idx, auto_used_event=auto_used_event)
        self.in_order = in_order
        self.layout = PackedLayout(size)
        # the driver event suppression structure is the driver's to write, the device one the device's
        self.desc_addr, self.driver_addr, self.device_addr = self._alloc_parts(
            (self.layout.desc_bytes, DESC_ALIGN), (EVENT_SIZE, EVENT_ALIGN), (EVENT_SIZE, EVENT_ALIGN))
        self._free_ids: deque[int] = deque(range(size))
        self._order: deque[int] = deque()  # ids in the order they were made available (IN_ORDER completion)
        self.num_free = size  # ring slots not held by a list in flight
        self.next_avail = 0
        self.avail_wrap = 1
        self.next_used = 0
        self.used_wrap = 1
        self._kicked = (0, 1)  # the avail position at the last notification decision

    # --- small accessors -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Slots made available since the last notification decision."""
        lap = 2 * self.size
        return (linear(self.next_avail, self.avail_wrap, self.size) - linear(*self._kicked, self.size)) % lap

    def device_event(self) -> EventSuppress:
        return EventSuppress.unpack(self.mem.read(self.device_addr, EVENT_SIZE))

    # --- raw lists (hostile tests, with write_desc) ---------------------------------------------

    def expose_raw(self, descs: Sequence[PackedDescriptor], buffer_id: int, token: object = None) -> None:
        """Write ``descs`` from next_avail as they are (flags included, AVAIL/USED bits too) and move on past them,
        head last; nothing is checked, so hostile lists reach the device exactly as written."""
        pos = (self.next_avail, self.avail_wrap)
        slots = []
        for _ in descs:
            slots.append(pos[0])
            pos = advance(pos[0], pos[1], 1, self.size)
        for slot, d in list(zip(slots, descs, strict=True))[1:]:
            self.write_desc(slot, d)
        if descs:
            self.mem.write(self.desc_addr + DESC_SIZE * slots[0], descs[0].pack()[:DESC_FLAGS_OFFSET])
            self._w16(self.desc_addr + DESC_SIZE * slots[0] + DESC_FLAGS_OFFSET, descs[0].flags)
        self._inflight[buffer_id] = _Inflight(slots=len(descs), token=token)
        self._order.append(buffer_id)
        self.num_free -= len(descs)
        self.next_avail, self.avail_wrap = pos

    # --- well-behaved driver -------------------------------------------------------------------

    def add(self, out: Sequence[bytes], in_lens: Sequence[int], indirect: bool = False, token: object = None) -> int:
        """Make one buffer available: device-readable parts ``out`` then device-writable parts of ``in_lens``.

        Readable descriptors precede writable ones (PACKED-DRV-08); the list fits the free slots before its head
        is exposed (PACKED-DRV-10); every descriptor carries the AVAIL/USED bits of the wrap counter at its slot,
        and the head's flags are written last, after the rest of the list (PACKED-DRV-11/16). With ``indirect``
        the list is one INDIRECT descriptor to a table whose entries carry only WRITE (PACKED-DRV-13/15).
        Returns the Buffer ID.
        """
        n = len(out) + len(in_lens)
        if n == 0:
            raise ValueError("a buffer needs at least one descriptor")
        if n > self.size:
            raise ValueError(f"list of {n} descriptors exceeds queue size {self.size} (PACKED-DRV-07/14)")
        need = 1 if indirect else n
        if self.num_free < need or not self._free_ids:
            raise QueueFull(f"queue {self.index}: {need} slots needed, {self.num_free} free")
        buffer_id = self._free_ids.popleft()
        rec = _Inflight(slots=need, token=token)
        parts = self._place_buffers(rec, out, in_lens, _WRITE)
        if indirect:
            table = self.alloc.alloc(DESC_SIZE * n, DESC_ALIGN)
            rec.allocations.append(table)
            self.mem.write(table, b"".join(DESC.pack(gpa, length, 0, flags) for gpa, length, flags in parts))
            parts = [(table, DESC_SIZE * n, _INDIRECT)]
        pos = (self.next_avail, self.avail_wrap)
        placed: list[tuple[int, int]] = []  # (slot, flags)
        for i, (gpa, length, flags) in enumerate(parts):
            f = flags | (_NEXT if i + 1 < len(parts) else 0) | avail_bits(pos[1])
            placed.append((pos[0], f))
            buf = DESC.pack(gpa, length, buffer_id, f)
            if i:
                self.mem.write(self.desc_addr + DESC_SIZE * pos[0], buf)
            else:
                self.mem.write(self.desc_addr + DESC_SIZE * pos[0], buf[:DESC_FLAGS_OFFSET])
            pos = advance(pos[0], pos[1], 1, self.size)
        # The head's flags are the one store that hands the whole list over.
        head_slot, head_flags = placed[0]
        self._w16(self.desc_addr + DESC_SIZE * head_slot + DESC_FLAGS_OFFSET, head_flags)
        self._inflight[buffer_id] = rec
        self._order.append(buffer_id)
        self.num_free -= need
        self.next_avail, self.avail_wrap = pos
        return buffer_id

    def kick_needed(self) -> bool:
        """Whether the slots made available since the last decision need a notification (2.8.21.3).

        The device event suppression structure is read after the descriptors were written (PACKED-DRV-17):
        ENABLE notifies, DISABLE does not, DESC notifies when the slots just made available cover
        desc_event_off/wrap.
        """
        count = self.pending
        if count == 0:
            return False
        new = (self.next_avail, self.avail_wrap)
        self._kicked = new
        ev = self.device_event()
        if ev.flags == EventFlags.DISABLE:
            return False
        if ev.flags == EventFlags.DESC and self.event_idx:
            return packed_need_event(ev.off, ev.wrap, new[0], new[1], count, self.size)
        return True

    def notification_value(self) -> int:
        """The 32-bit notification with VIRTIO_F_NOTIFICATION_DATA: the first slot not yet made available and the
        driver wrap counter there (PACKED-DRV-04)."""
        return notification_data(self.index, self.next_avail, self.avail_wrap)

    def set_driver_event(self, flags: EventFlags, off: int = 0, wrap: int = 0) -> None:
        """Write the driver event suppression structure: desc first, flags last."""
        self._w16(self.driver_addr, pack_off_wrap(off, wrap))
        self._w16(self.driver_addr + EVENT_FLAGS, int(flags))

    def set_no_interrupt(self, suppress: bool) -> None:
        """RING_EVENT_FLAGS_DISABLE or ENABLE for used buffer notifications."""
        self.set_driver_event(EventFlags.DISABLE if suppress else EventFlags.ENABLE)

    def used(self) -> list[UsedBuffer]:
        """Consume every new used descriptor, free its buffers and slots, and return what was written."""
        out: list[UsedBuffer] = []
        while True:
            while True:
                base = self.desc_addr + DESC_SIZE * self.next_used
                flags = self._u16(base + DESC_FLAGS_OFFSET)
                if not is_used(flags, self.used_wrap):
                    break
                ulen, uid = DESC.unpack(self.mem.read(base, DESC_SIZE))[1:3]
                # len is reserved in a used descriptor without WRITE: the device wrote nothing (2.8.4)
                out.extend(self._complete(uid, ulen if flags & _WRITE else 0))
            if not (self.event_idx and self.auto_used_event):
                return out
            # Ask for a notification at the next used slot, then look again: a descriptor used before the device
            # saw the new event position would otherwise go unannounced.
            self.set_driver_event(EventFlags.DESC, self.next_used, self.used_wrap)
            if not is_used(self._u16(self.desc_addr + DESC_SIZE * self.next_used + DESC_FLAGS_OFFSET),
                           self.used_wrap):
                return out

    def _complete(self, uid: int, ulen: int) -> list[UsedBuffer]:
        if uid not in self._inflight:
            self.anomalies.append(f"used id {uid} is not a buffer in flight")
            raise DriverQueueError(self.anomalies[-1])
        ids = [uid]
        if self.in_order:
            # One used descriptor may stand for a batch: every buffer made available up to this one (2.8.8).
            ids = []
            while self._order and self._order[0] != uid:
                ids.append(self._order.popleft())
            self._order.popleft()
            ids.append(uid)
        else:
            self._order.remove(uid)
        done: list[UsedBuffer] = []
        for i in ids:
            rec = self._inflight.pop(i)
            # only the last of a batch carries its length
            length, data = self._written(rec, ulen if i == uid else 0, f"buffer {i}")
            self.next_used, self.used_wrap = advance(self.next_used, self.used_wrap, rec.slots, self.size)
            self.num_free += rec.slots
            self._free_ids.append(i)
            self._release(rec)
            done.append(UsedBuffer(i, length, data, rec.token))
        return done


__all__ = ["DriverPackedQueue"]
