"""Driver side of a split virtqueue (2.7) in guest memory, using the shared layout in backend.virtio.split_ring.

Well-behaved use: :meth:`DriverSplitQueue.add` then :meth:`publish` (which
says whether to notify) and :meth:`used`. Hostile tests write descriptors and
ring entries directly (:meth:`write_desc`, :meth:`add_raw`, :meth:`push_head`,
:meth:`write_avail_flags`) to build loops, bad addresses or nested indirect
tables that a correct driver would never publish.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Generic, Protocol, Self, TypeVar

from backend.virtio.split_ring import (
    AVAIL_ALIGN,
    DESC,
    DESC_ALIGN,
    DESC_SIZE,
    U16,
    USED_ALIGN,
    USED_ELEM,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_USED_F_NO_NOTIFY,
    DescFlags,
    Descriptor,
    SplitLayout,
    is_valid_split_size,
    vring_need_event,
)
from sim.memory import Allocator, GuestMemory


class DriverQueueError(Exception):
    """The device broke the ring protocol (the message says how)."""


class QueueFull(DriverQueueError):
    """Not enough free descriptors for the buffer."""


@dataclass(frozen=True)
class UsedBuffer:
    head: int
    len: int
    data: bytes  # the first ``len`` bytes the device wrote (nothing past len: SPLIT-DRV-17/18)
    token: object = None


@dataclass
class InflightBuffers:
    """A buffer made available and not yet used, in either layout: its data buffers and what to free once used."""

    buffers: list[tuple[int, int, bool]] = field(default_factory=list)  # (gpa, len, device-writable)
    allocations: list[int] = field(default_factory=list)  # gpas to free on completion
    token: object = None


@dataclass
class _Inflight(InflightBuffers):
    descs: list[int] = field(default_factory=list)  # descriptor table slots the chain occupies


class _Packable(Protocol):
    def pack(self) -> bytes: ...


class _Codec(_Packable, Protocol):
    """A descriptor of either layout: 16 bytes each way."""

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> Self: ...


_Rec = TypeVar("_Rec", bound=InflightBuffers)
_Desc = TypeVar("_Desc", bound=_Codec)


class DriverBuffers:
    """Data buffers and indirect tables in guest memory, as the queues of both ring layouts (and the conformance
    rig's hostile lists) place them. Descriptors of both layouts are 16 bytes at 16-byte alignment (2.7.5, 2.8.13)."""

    mem: GuestMemory
    alloc: Allocator
    _inflight: Sized  # buffers made available and not yet used, by head or Buffer ID

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def _u16(self, gpa: int) -> int:
        value: int = U16.unpack(self.mem.read(gpa, 2))[0]
        return value

    def _w16(self, gpa: int, value: int) -> None:
        self.mem.write(gpa, U16.pack(value & 0xFFFF))

    def write_indirect(self, descs: Sequence[_Packable]) -> int:
        """Allocate and fill an indirect table verbatim; returns its gpa (free it with :meth:`free_buffer`)."""
        gpa = self.alloc.alloc(DESC_SIZE * max(1, len(descs)), DESC_ALIGN)
        self.mem.write(gpa, b"".join(d.pack() for d in descs))
        return gpa

    def alloc_buffer(self, data: bytes | int) -> int:
        """Allocate a data buffer: filled with ``data``, or ``data`` zero bytes."""
        raw = data if isinstance(data, bytes) else bytes(data)
        gpa = self.alloc.alloc(max(1, len(raw)), 16)
        if raw:
            self.mem.write(gpa, raw)
        return gpa

    def free_buffer(self, gpa: int) -> None:
        self.alloc.free(gpa)


class DriverQueue(DriverBuffers, Generic[_Rec, _Desc]):
    """What both layouts' driver queues keep alike: the queue's settings, its parts in guest memory (allocated at
    their spec alignment and zeroed), its descriptors of type ``descriptor``, the buffers in flight by head or
    Buffer ID, and the device's protocol breaches noticed while consuming (``anomalies``)."""

    descriptor: type[_Desc]
    desc_addr: int

    def __init__(self, mem: GuestMemory, alloc: Allocator, size: int, *, index: int, event_idx: bool,
                 auto_used_event: bool) -> None:
        self.mem = mem
        self.alloc = alloc
        self.size = size
        self.index = index
        self.event_idx = event_idx
        self.auto_used_event = auto_used_event
        self._parts: list[int] = []
        self._inflight: dict[int, _Rec] = {}
        self.anomalies: list[str] = []  # device protocol breaches noticed while consuming

    def _alloc_parts(self, *parts: tuple[int, int]) -> list[int]:
        """The gpas of the queue's parts, (bytes, alignment) each, allocated and zeroed."""
        gpas = [self.alloc.alloc(n, align) for n, align in parts]
        for gpa, (n, _) in zip(gpas, parts, strict=True):
            self.mem.write(gpa, bytes(n))
        self._parts += gpas
        return gpas

    def write_desc(self, slot: int, desc: _Desc, table: int | None = None) -> None:
        """Write one descriptor verbatim into the ring (or into an indirect ``table`` at that gpa)."""
        self.mem.write(self._desc_gpa(slot, table), desc.pack())

    def read_desc(self, slot: int, table: int | None = None) -> _Desc:
        return self.descriptor.unpack(self.mem.read(self._desc_gpa(slot, table), DESC_SIZE))

    def _desc_gpa(self, slot: int, table: int | None) -> int:
        return (self.desc_addr if table is None else table) + DESC_SIZE * slot

    def in_flight_buffers(self) -> list[tuple[int, int, bool]]:
        """The data buffers of every buffer made available and not yet used, as (gpa, len, device-writable)."""
        return [b for rec in self._inflight.values() for b in rec.buffers]

    def _place_buffers(self, rec: _Rec, out: Sequence[bytes], in_lens: Sequence[int],
                       write_flag: int) -> list[tuple[int, int, int]]:
        """Allocate and fill the data buffers of one buffer, device-readable ``out`` then device-writable
        ``in_lens``, kept in ``rec``; returns them as (gpa, len, ``write_flag`` or 0)."""
        pieces: list[tuple[bytes | int, int, int]] = [(data, len(data), 0) for data in out]
        pieces += [(length, length, write_flag) for length in in_lens]
        parts: list[tuple[int, int, int]] = []
        for data, length, flag in pieces:
            gpa = self.alloc_buffer(data)
            rec.allocations.append(gpa)
            rec.buffers.append((gpa, length, bool(flag)))
            parts.append((gpa, length, flag))
        return parts

    def _written(self, rec: _Rec, length: int, what: str) -> tuple[int, bytes]:
        """The used ``length`` of ``rec`` (cut to its writable bytes, an anomaly when it claims more) and the bytes
        the device wrote there; ``what`` names the buffer in the anomaly."""
        writable = sum(n for _, n, w in rec.buffers if w)
        if length > writable and rec.buffers:
            self.anomalies.append(f"used len {length} for {what} exceeds its {writable} writable bytes")
            length = writable
        chunks: list[bytes] = []
        left = length
        for gpa, n, w in rec.buffers:
            if w and left > 0:
                take = min(left, n)
                chunks.append(self.mem.read(gpa, take))
                left -= take
        return length, b"".join(chunks)

    def _release(self, rec: _Rec) -> None:
        """Free what ``rec`` allocated (its buffers, an indirect table)."""
        for gpa in rec.allocations:
            self.alloc.free(gpa)

    def close(self) -> None:
        """Free the ring parts and every buffer still in flight."""
        for rec in self._inflight.values():
            self._release(rec)
        self._inflight.clear()
        for gpa in self._parts:
            self.alloc.free(gpa)


class DriverSplitQueue(DriverQueue[_Inflight, Descriptor]):
    """A split virtqueue of ``size`` entries whose three parts live in guest memory.

    Parts are allocated at their spec alignment (SPLIT-DRV-01) and zeroed, so
    used.flags starts at 0 (SPLIT-DRV-19). With ``event_idx`` the driver keeps
    avail.flags at 0 and moves used_event instead (SPLIT-DRV-14).
    """

    descriptor = Descriptor

    def __init__(self, mem: GuestMemory, alloc: Allocator, size: int, *, index: int = 0,
                 event_idx: bool = False, auto_used_event: bool = True, in_order: bool = False) -> None:
        if not is_valid_split_size(size):
            raise ValueError(f"split queue size {size} is not a power of two up to 32768")
        super().__init__(mem, alloc, size, index=index, event_idx=event_idx, auto_used_event=auto_used_event)
        #: VIRTIO_F_IN_ORDER negotiated: buffers come back in the order they were made available, a batch possibly
        #: as one used element (:meth:`_complete_in_order`); descriptors are taken in table order and freed in it,
        #: so chains run x, x+1, ..., wrapping to 0 (SPLIT-DRV-05).
        self.in_order = in_order
        self.layout = SplitLayout(size)
        self.desc_addr, self.avail_addr, self.used_addr = self._alloc_parts(
            (self.layout.desc_bytes, DESC_ALIGN), (self.layout.avail_bytes, AVAIL_ALIGN),
            (self.layout.used_bytes, USED_ALIGN))
        self._free: deque[int] = deque(range(size))
        self.avail_idx = 0  # next free avail ring slot (free-running, 16-bit wrap on write)
        self.published = 0  # avail idx the device has been shown
        self.last_used = 0  # next used ring entry to consume

    # --- small accessors -----------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def pending(self) -> int:
        """Entries added but not yet published."""
        return (self.avail_idx - self.published) & 0xFFFF

    def used_idx(self) -> int:
        return self._u16(self.used_addr + SplitLayout.USED_IDX)

    def used_flags(self) -> int:
        return self._u16(self.used_addr + SplitLayout.USED_FLAGS)

    def avail_event(self) -> int:
        return self._u16(self.used_addr + self.layout.avail_event)

    # --- avail ring writes (also for hostile tests, with write_desc) ----------------------------

    def push_head(self, head: int) -> None:
        """Place ``head`` in the next avail ring slot without any bookkeeping or validation."""
        self._w16(self.avail_addr + self.layout.avail_ring_entry(self.avail_idx), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF

    def add_raw(self, table: Mapping[int, Descriptor], head: int, token: object = None) -> int:
        """Write arbitrary descriptors at the given slots and expose ``head``: nothing is checked."""
        for slot, desc in table.items():
            self.write_desc(slot, desc)
            try:
                self._free.remove(slot)
            except ValueError:
                pass
        self._inflight[head] = _Inflight(descs=sorted(table), token=token)
        self.push_head(head)
        return head

    def write_avail_flags(self, flags: int) -> None:
        self._w16(self.avail_addr + SplitLayout.AVAIL_FLAGS, flags)

    def write_avail_idx(self, idx: int) -> None:
        """Raw avail idx write (hostile use); :meth:`publish` is the well-behaved path."""
        self._w16(self.avail_addr + SplitLayout.AVAIL_IDX, idx)

    # --- well-behaved driver -------------------------------------------------------------------

    def add(self, out: Sequence[bytes], in_lens: Sequence[int], indirect: bool = False,
            token: object = None) -> int:
        """Expose one buffer: device-readable parts ``out`` then device-writable parts of ``in_lens``.

        Readable descriptors precede writable ones (SPLIT-DRV-02); with
        ``indirect`` the chain lives in an indirect table of one level
        (SPLIT-DRV-07/09). Returns the head index. Not visible to the device
        until :meth:`publish`.
        """
        n = len(out) + len(in_lens)
        if n == 0:
            raise ValueError("a buffer needs at least one descriptor")
        if n > self.size:
            raise ValueError(f"chain of {n} descriptors exceeds queue size {self.size} (SPLIT-DRV-08)")
        if sum(len(b) for b in out) + sum(in_lens) >= 1 << 32:
            raise ValueError("chain totals 2^32 bytes or more (SPLIT-DRV-04)")
        need = 1 if indirect else n
        if len(self._free) < need:
            raise QueueFull(f"queue {self.index}: {need} descriptors needed, {len(self._free)} free")
        rec = _Inflight(token=token)
        parts = self._place_buffers(rec, out, in_lens, DescFlags.WRITE)
        if indirect:
            table = self.alloc.alloc(DESC_SIZE * n, DESC_ALIGN)
            rec.allocations.append(table)
            self.mem.write(table, b"".join(
                DESC.pack(gpa, length, flags | (DescFlags.NEXT if i + 1 < n else 0), i + 1 if i + 1 < n else 0)
                for i, (gpa, length, flags) in enumerate(parts)))
            head = self._free.popleft()
            rec.descs.append(head)
            self.write_desc(head, Descriptor(table, DESC_SIZE * n, DescFlags.INDIRECT, 0))
        else:
            slots = [self._free.popleft() for _ in range(n)]
            rec.descs.extend(slots)
            for i, (gpa, length, flags) in enumerate(parts):
                last = i + 1 == n
                self.write_desc(slots[i], Descriptor(gpa, length, flags | (0 if last else DescFlags.NEXT),
                                                     0 if last else slots[i + 1]))
            head = slots[0]
        self._inflight[head] = rec
        self.push_head(head)
        return head

    def publish(self) -> bool:
        """Make added entries visible (avail idx written after the ring entries) and say whether to notify.

        Without EVENT_IDX: notify unless used.flags has NO_NOTIFY (SPLIT-DRV-21/22);
        with it: notify when avail_event was crossed (SPLIT-DRV-24/25), used.flags ignored.
        """
        old, new = self.published, self.avail_idx
        if old == new:
            return False
        # Descriptors and ring entries were written above; the idx store comes last (SPLIT-DRV-26).
        self.write_avail_idx(new)
        self.published = new
        # The suppression state is read only after the idx store (SPLIT-DRV-27).
        if self.event_idx:
            return vring_need_event(self.avail_event(), new, old)
        return not self.used_flags() & VRING_USED_F_NO_NOTIFY

    def set_used_event(self, value: int) -> None:
        self._w16(self.avail_addr + self.layout.used_event, value)

    def set_no_interrupt(self, suppress: bool) -> None:
        """Without EVENT_IDX: avail.flags 1 (no used buffer notifications wanted) or 0 (SPLIT-DRV-12)."""
        if self.event_idx:
            raise ValueError("with EVENT_IDX avail.flags stays 0; use set_used_event (SPLIT-DRV-14)")
        self.write_avail_flags(VRING_AVAIL_F_NO_INTERRUPT if suppress else 0)

    def used(self) -> list[UsedBuffer]:
        """Consume every new used entry, free its descriptors and buffers, and return what was written."""
        out: list[UsedBuffer] = []
        while True:
            idx = self.used_idx()
            ahead = (idx - self.last_used) & 0xFFFF
            if ahead > self.size:
                self.anomalies.append(f"used idx {idx} is {ahead} entries ahead of {self.last_used}, "
                                      f"more than the queue size {self.size}")
                raise DriverQueueError(self.anomalies[-1])
            while self.last_used != idx:
                uid, ulen = USED_ELEM.unpack(self.mem.read(
                    self.used_addr + self.layout.used_ring_entry(self.last_used), USED_ELEM.size))
                self.last_used = (self.last_used + 1) & 0xFFFF
                if self.in_order:
                    out.append(self._complete_in_order(uid, ulen))
                else:
                    out.append(self._complete(uid, ulen))
            if not (self.event_idx and self.auto_used_event):
                return out
            # Ask for an interrupt at the next entry, then look again: an entry placed before
            # the device saw the new used_event would otherwise go unannounced.
            self.set_used_event(self.last_used)
            if self.used_idx() == idx:
                return out

    def _complete_in_order(self, uid: int, ulen: int) -> UsedBuffer:
        """With IN_ORDER used idx counts buffers in the order they were made available; a batch may come back as one
        element in the slot of its last buffer (2.7.9), the slots before it left as they were. So each step of used
        idx completes the oldest buffer in flight; the element's len is its own only where the element names it."""
        head = next(iter(self._inflight), None)
        if head is None:
            self.anomalies.append(f"used idx moved past every buffer in flight (element names {uid})")
            raise DriverQueueError(self.anomalies[-1])
        return self._complete(head, ulen if uid == head else 0)

    def _complete(self, uid: int, ulen: int) -> UsedBuffer:
        rec = self._inflight.pop(uid, None)
        if rec is None:
            self.anomalies.append(f"used id {uid} is not the head of a buffer in flight")
            raise DriverQueueError(self.anomalies[-1])
        ulen, data = self._written(rec, ulen, f"head {uid}")
        self._free.extend(rec.descs)
        self._release(rec)
        return UsedBuffer(uid, ulen, data, rec.token)
