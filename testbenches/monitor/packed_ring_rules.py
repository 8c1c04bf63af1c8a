"""Driver-side packed ring rules (2.8, PACKED-DRV rows), checked on the live rings at each doorbell.

The monitor follows queue programming and the negotiated features through the register trace; once
VIRTIO_F_RING_PACKED is negotiated the enabled queues are packed rings and, at every doorbell (and at every
:meth:`PackedRingMonitor.inspect`, e.g. when the driver consumed used descriptors), it reads what the driver
exposed since the last look. It keeps its own copy of the driver's progress (next slot and Driver Ring Wrap
Counter) and of the lists in flight, so it judges:

- PACKED-DRV-01: ring parts aligned at queue_enable;
- PACKED-DRV-04: notification data next_off/next_wrap name the first slot not yet made available;
- PACKED-DRV-02/03: a descriptor made available is not changed until the device used it;
- PACKED-DRV-07: a list is not longer than the queue; PACKED-DRV-08: readable before writable;
- PACKED-DRV-10: the ring had room for the whole list when its head was exposed;
- PACKED-DRV-11: every descriptor after a list's head is available (with its own slot's wrap counter) by the time
  the head is, seen at the doorbell;
- PACKED-DRV-12/13/14/15: INDIRECT only when negotiated, alone in its list, tables a non-zero multiple of 16 bytes
  and no longer than the queue, entries carrying no flag but WRITE;
- PACKED-DRV-17: no list made available while the device asked for notifications is left without one (judged when
  the driver resets the device, or at :meth:`PackedRingMonitor.verdicts`).

Where the target reports no device DMA (the device runs in another process) the monitor only sees the rings at its
looks, so the device may use a list and the driver take it and reuse its slots between two of them. A look then
judges a queue only while the ring shows no such step: the slot at the used position still holds its list as made
available (or a used descriptor for the used wrap counter), every other slot in flight holds what the driver or,
for a used descriptor, the device wrote there. Anything else (a slot of the other lap, a used descriptor the monitor
never saw made available, a list with no room) means the order of events is unknown: the queue's in-flight
judgement (PACKED-DRV-02/03/10 and what follows from its positions) is given up with a note in
:attr:`PackedRingMonitor.given_up`, never failed. A descriptor address changed while its slot still reads as made
available is the driver's write (the device never writes the address) and stays a failure.

It reads guest memory only; it never writes and never touches the device.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from backend.pci.abilities import Lacking
from backend.pci.device import DmaPerm
from backend.virtio.features import F, has
from backend.virtio.packed_ring import (
    DESC_ALIGN,
    DESC_FLAGS_OFFSET,
    DESC_ID_OFFSET,
    DESC_SIZE,
    EVENT_ALIGN,
    EVENT_SIZE,
    EventFlags,
    EventSuppress,
    PackedDescFlags,
    PackedDescriptor,
    advance,
    decode_notification_data,
    is_avail,
    is_used,
    linear,
    packed_need_event,
    unpack_ring,
)
from testbenches.monitor.pci_trace import Access, TracingPciDevice
from testbenches.monitor.ring_follow import QueueProgram, ReadMem, RingFollower
from testbenches.monitor.virtio_pci_rules import Event, Finding

#: The rows this monitor judges (an id is only claimed when a run gave it an opportunity).
PACKED_DRV_MONITORED = ("PACKED-DRV-01", "PACKED-DRV-02", "PACKED-DRV-03", "PACKED-DRV-04", "PACKED-DRV-07",
                        "PACKED-DRV-08", "PACKED-DRV-10", "PACKED-DRV-11", "PACKED-DRV-12", "PACKED-DRV-13",
                        "PACKED-DRV-14", "PACKED-DRV-15", "PACKED-DRV-17")


@dataclass
class _List:
    """One list in flight: head slot, wrap counter there, slots taken, Buffer ID, the ring bytes as exposed."""

    slot: int
    wrap: int
    slots: int
    buffer_id: int
    raw: bytes


@dataclass
class _Queue(QueueProgram):
    next_avail: int = 0
    avail_wrap: int = 1
    next_used: int = 0
    used_wrap: int = 1
    inflight: deque[_List] = field(default_factory=deque)
    kicked: tuple[int, int] = (0, 1)  # the avail position at the last doorbell
    doorbells: int = 0  # doorbells seen in the trace (a driver kicking by ioeventfd bypasses it)
    settle: bool = False  # the device wrote the used slot's id and flags in one store, not landed yet
    lost: bool = False  # the device's used descriptors stopped making sense: ownership is no longer followed

    @property
    def inflight_slots(self) -> int:
        return sum(x.slots for x in self.inflight)


@dataclass
class PackedRingMonitor(RingFollower[_Queue]):
    """Attach to a :class:`TracingPciDevice`; read :meth:`verdicts` after the run."""

    RING_PACKED = True
    _observed: bool = False  # device DMA reported: used updates are seen as they happen
    unreadable: list[str] = field(default_factory=list)  # queues given up because their memory could not be read
    #: Queues whose in-flight judgement was given up without a DMA observer: the order of the device's used writes
    #: and the driver's reuse of slots between two looks is unknown (what was seen, per queue).
    given_up: list[str] = field(default_factory=list)
    #: The device's DMA is reported on its own thread where it has one; the register trace on the driver's.
    _lock: threading.RLock = field(default_factory=threading.RLock)

    @classmethod
    def attach(cls, trace: TracingPciDevice, read: ReadMem, *, observe: bool = True) -> PackedRingMonitor:
        """Follow ``trace``'s register traffic, and the device's DMA where the target reports it (and ``observe``):
        the used updates then happen as the device writes them, before the driver can take a used descriptor and
        reuse its slot (without it, a slot the driver reused between two looks ends the queue's judgement).
        ``observe=False`` keeps to the register trace, as on a target without a DMA observer."""
        mon = cls._following(trace, read)
        observer = trace.abilities().dma_observer
        if observe and not isinstance(observer, Lacking):
            observer.add_observer(mon._on_dma)
            mon._observed = True
        return mon

    def verdicts(self) -> dict[str, tuple[bool, list[str]]]:
        """Per id: (every finding held, evidence of the failing ones); lost kicks are judged on the rings now."""
        with self._lock:
            self._check_lost_kicks()
        return super().verdicts()

    def _note(self, rid: str, ok: bool, evidence: str) -> None:
        self.findings.append(Finding(rid, ok, evidence))

    def _give_up(self, index: int, q: _Queue, seen: str) -> None:
        """No DMA observer and a ring the monitor's order of events does not explain: stop judging the queue."""
        q.lost = True
        self.given_up.append(f"queue {index}: {seen}; the device's used writes and the driver's reuse of slots "
                             "between two looks cannot be ordered without a DMA observer, in-flight rules "
                             "(PACKED-DRV-02/03/10) no longer judged")

    # --- following the register traffic -----------------------------------------------------------

    def _on_access(self, a: Access) -> None:
        with self._lock:
            super()._on_access(a)

    def _device_reset(self) -> None:
        self._check_lost_kicks()
        super()._device_reset()

    def _new_queue(self) -> _Queue:
        return _Queue()

    def _queue_reset(self, index: int, q: _Queue) -> None:
        self._queues[index] = _Queue(config_data=q.config_data)

    def _notified(self, e: Event) -> None:
        self.inspect()
        self._doorbell(e)

    def _enabled(self, index: int, q: _Queue) -> None:
        ok = q.desc % DESC_ALIGN == 0 and q.driver % EVENT_ALIGN == 0 and q.device % EVENT_ALIGN == 0
        self._note("PACKED-DRV-01", ok, f"queue {index}: descriptor ring {q.desc:#x}, driver area {q.driver:#x}, "
                                        f"device area {q.device:#x} break the 16/4/4 alignment")
        q.live = q.size > 0

    def _doorbell(self, e: Event) -> None:
        """PACKED-DRV-04 for the notified queue: with NOTIFICATION_DATA, next_off/next_wrap are where the monitor's
        walk of the available lists stopped (the first slot not yet made available)."""
        for each in self._queues.values():
            if each.live and not each.lost:
                if self._unkicked(each):
                    self._note("PACKED-DRV-17", True, "")
                each.kicked = (each.next_avail, each.avail_wrap)
                each.doorbells += 1
        if not has(self._features, F.NOTIFICATION_DATA):
            return
        ident, next_off, next_wrap = decode_notification_data(e.value)
        index, q = self._notified_queue(ident)
        if q is None or not q.live or q.lost:
            return
        self._note("PACKED-DRV-04", (next_off, next_wrap) == (q.next_avail, q.avail_wrap),
                   f"queue {index}: notification data next_off={next_off} next_wrap={next_wrap}, the first slot "
                   f"not made available is {q.next_avail} (wrap {q.avail_wrap})")

    def _on_dma(self, perm: DmaPerm, iova: int, size: int) -> None:
        """A device DMA access, reported before it lands. The store of the flags at a queue's used position hands
        the slot back: its id (stored before, 2.8.21.2) names the list, which is freed now."""
        if not self.ring_negotiated:
            return
        with self._lock:
            self._dma(perm, iova, size)

    def _dma(self, perm: DmaPerm, iova: int, size: int) -> None:
        for index, q in list(self._queues.items()):
            try:
                self._device_access(index, q, perm, iova, size)
            except Exception as exc:  # never disturb the device's DMA path: give the queue up instead
                q.lost = True
                self.unreadable.append(f"queue {index}: ring unreadable, no longer judged: {exc}")

    def _device_access(self, index: int, q: _Queue, perm: DmaPerm, iova: int, size: int) -> None:
        if q.live and not q.lost:
            if q.settle:
                q.settle = False
                self._take_used(index, q)
            base = q.desc + DESC_SIZE * q.next_used
            if not perm & DmaPerm.WRITE or not q.inflight or not (
                    iova <= base + DESC_FLAGS_OFFSET and base + DESC_FLAGS_OFFSET + 2 <= iova + size):
                return
            if iova <= base + DESC_ID_OFFSET + 1:
                q.settle = True  # id and flags in one store: read them once it landed
                return
            self._used(index, q, self._desc(q, q.next_used).id)
            self._take_used(index, q)

    # --- ring inspection --------------------------------------------------------------------------

    def inspect(self) -> None:
        """Look at every live packed queue now: used descriptors the device wrote, descriptors still in flight,
        lists newly made available."""
        with self._lock:
            self._inspect_all()

    def _inspect_all(self) -> None:
        for index, q in self._queues.items():
            if q.live and not q.lost and self.ring_negotiated:
                try:
                    # Each step stops where the one before gave the queue up: its positions mean nothing then.
                    for step in (self._take_used, self._check_unchanged, self._take_available):
                        if not q.lost:
                            step(index, q)
                except Exception as exc:  # the ring is not in memory the monitor can read (any more)
                    q.lost = True
                    self.unreadable.append(f"queue {index}: ring unreadable, no longer judged: {exc}")

    def _desc(self, q: _Queue, slot: int) -> PackedDescriptor:
        return PackedDescriptor.unpack(self.read(q.desc + DESC_SIZE * slot, DESC_SIZE))

    def _take_used(self, index: int, q: _Queue) -> None:
        """Follow the device's used descriptors from the monitor's used position: each frees its list (with
        IN_ORDER, every list up to the one it names), and the position moves past the slots they took."""
        while q.inflight and not q.lost:
            d = self._desc(q, q.next_used)
            if is_used(d.flags, q.used_wrap) and not self._observed:
                d = self._desc(q, q.next_used)  # read again: the id the device stored before these flags
            if not is_used(d.flags, q.used_wrap):
                if not self._observed and not is_avail(d.flags, q.used_wrap):
                    # Used, taken and reused (and maybe used again) since the last look: which list it freed and
                    # what the driver owns now are unknown.
                    self._give_up(index, q, f"the used position (slot {q.next_used}, wrap {q.used_wrap}) holds "
                                            f"flags {d.flags:#06x}, neither the list made available there nor "
                                            "a used descriptor")
                return
            self._used(index, q, d.id)

    def _used(self, index: int, q: _Queue, buffer_id: int) -> None:
        """The used descriptor at the used position names ``buffer_id``: free its list (with IN_ORDER every list up
        to it) and move the used position past the slots they took."""
        ids = [x.buffer_id for x in q.inflight]
        if buffer_id not in ids:
            q.lost = True  # a device error, not the driver's: judged by the device-side checks
            return
        freed = 0
        if has(self._features, F.IN_ORDER):
            for _ in range(ids.index(buffer_id) + 1):
                freed += q.inflight.popleft().slots
        else:
            at = ids.index(buffer_id)
            freed = q.inflight[at].slots
            del q.inflight[at]
        q.next_used, q.used_wrap = advance(q.next_used, q.used_wrap, freed, q.size)

    def _check_unchanged(self, index: int, q: _Queue) -> None:
        """PACKED-DRV-02/03: the lists still in flight read as they were exposed. Only slots the device cannot have
        written a used descriptor into yet are compared: past the used position, and there the address alone.
        Without a DMA observer the device may be writing used descriptors past the used position (a batch whose
        first flags it stores last), so the address alone is compared everywhere, and a slot reading as neither
        made available nor used for its wrap counter gives the queue up."""
        used_lin = linear(q.next_used, q.used_wrap, q.size)
        span = (linear(q.next_avail, q.avail_wrap, q.size) - used_lin) % (2 * q.size)
        for x in q.inflight:
            for k in range(x.slots):
                slot, wrap = advance(x.slot, x.wrap, k, q.size)
                now = self.read(q.desc + DESC_SIZE * slot, DESC_SIZE)
                was = x.raw[DESC_SIZE * k:DESC_SIZE * (k + 1)]
                ahead = (linear(slot, wrap, q.size) - used_lin) % (2 * q.size)
                if ahead >= span:
                    continue  # behind the used position: a used descriptor of another list is there now
                if not self._observed:
                    flags = PackedDescriptor.unpack(now).flags
                    if not is_avail(flags, wrap) and not is_used(flags, wrap):
                        self._give_up(index, q, f"slot {slot} of buffer {x.buffer_id} in flight holds flags "
                                                f"{flags:#06x}, of neither this lap's list nor its used descriptor")
                        return
                same = now[:8] == was[:8] if ahead == 0 or not self._observed else now == was
                if not same:
                    what = (f"queue {index}: slot {slot} of buffer {x.buffer_id} changed while the device owns it "
                            f"({was.hex()} -> {now.hex()})")
                    self._note("PACKED-DRV-02", False, what)
                    self._note("PACKED-DRV-03", False, what)
                    x.raw = x.raw[:DESC_SIZE * k] + now + x.raw[DESC_SIZE * (k + 1):]  # report each change once
        if q.inflight:
            self._note("PACKED-DRV-02", True, "")
            self._note("PACKED-DRV-03", True, "")

    def _take_available(self, index: int, q: _Queue) -> None:
        """Walk the lists made available since the last look, judging each. With every slot in flight the slot at
        next_avail still holds the oldest list, made available for the other wrap counter: a descriptor available
        for this one there was written over a list the device owns (PACKED-DRV-10)."""
        while True:
            head = self._desc(q, q.next_avail)
            if not is_avail(head.flags, q.avail_wrap):
                if not self._observed and is_used(head.flags, q.avail_wrap) and q.size > q.inflight_slots:
                    self._give_up(index, q, f"slot {q.next_avail} holds a used descriptor for wrap "
                                            f"{q.avail_wrap}, of a list made available and used since the last look")
                return
            descs, complete = self._gather(q)
            where = f"queue {index} list at slot {q.next_avail} (wrap {q.avail_wrap})"
            room = q.size - q.inflight_slots
            if not self._observed and (len(descs) > room or (complete and self._used_after(q, len(descs)))):
                # The device may have used lists in flight and the driver taken them since the last look, or have
                # written a used descriptor of a later list into this one's tail (used lists are not followed
                # past the ones the monitor saw made available).
                self._give_up(index, q, f"{where}: {len(descs)} descriptor(s) exposed with {room} slot(s) free "
                                        f"as last seen{', ' + complete if complete else ''}")
                return
            self._note("PACKED-DRV-07", complete != "loops",
                       f"{where}: NEXT runs on past {q.size} descriptors (the queue size)")
            self._note("PACKED-DRV-10", len(descs) <= room,
                       f"{where}: {len(descs)} descriptor(s) exposed with {room} slot(s) free")
            if complete == "loops" or len(descs) > room:
                q.lost = True  # where lists start and which the device owns is no longer known
                return
            self._note("PACKED-DRV-11", complete == "", f"{where}: {complete}")
            self._buffer(index, self._check_list(q, descs, where), where)
            raw = self.read(q.desc + DESC_SIZE * q.next_avail, DESC_SIZE * min(len(descs), q.size - q.next_avail))
            if len(raw) < DESC_SIZE * len(descs):
                raw += self.read(q.desc, DESC_SIZE * len(descs) - len(raw))
            q.inflight.append(_List(q.next_avail, q.avail_wrap, len(descs), descs[-1].id, raw))
            q.next_avail, q.avail_wrap = advance(q.next_avail, q.avail_wrap, len(descs), q.size)
            if complete:
                q.lost = True  # the rest of the list is not there: where the next one starts is unknown
                return

    def _used_after(self, q: _Queue, count: int) -> bool:
        """Whether the slot ``count`` slots past next_avail holds a used descriptor for its wrap counter."""
        slot, wrap = advance(q.next_avail, q.avail_wrap, count, q.size)
        return is_used(self._desc(q, slot).flags, wrap)

    def _gather(self, q: _Queue) -> tuple[list[PackedDescriptor], str]:
        """The list from next_avail: (descriptors, '' | why it is not complete | 'loops')."""
        descs: list[PackedDescriptor] = []
        slot, wrap = q.next_avail, q.avail_wrap
        while True:
            d = self._desc(q, slot)
            if descs and not is_avail(d.flags, wrap):
                return descs, (f"descriptor {len(descs)} (slot {slot}, flags {d.flags:#06x}) is not available for "
                               f"wrap counter {wrap} although the head is")
            descs.append(d)
            if not d.has_next or d.is_indirect:
                return descs, ""
            if len(descs) >= q.size:
                return descs, "loops"
            slot, wrap = advance(slot, wrap, 1, q.size)

    def _check_list(self, q: _Queue, descs: list[PackedDescriptor], where: str) -> list[tuple[int, int, bool]]:
        """Judge one list; returns its buffer as (address, length, device-writable) segments."""
        writable_seen = False
        segments: list[tuple[int, int, bool]] = []
        for i, d in enumerate(descs):
            if d.is_indirect:
                self._note("PACKED-DRV-12", has(self._features, F.INDIRECT_DESC),
                           f"{where}: INDIRECT without VIRTIO_F_INDIRECT_DESC")
                self._note("PACKED-DRV-15", len(descs) == 1,
                           f"{where}: INDIRECT descriptor {i} in a list of {len(descs)}")
                writable_seen = self._check_table(q, d, where, writable_seen, segments)
                continue
            segments.append((d.addr, d.len, d.is_write))
            if d.is_write:
                writable_seen = True
            else:
                self._note("PACKED-DRV-08", not writable_seen, f"{where}: readable descriptor {i} after a writable one")
        return segments

    def _check_table(self, q: _Queue, d: PackedDescriptor, where: str, writable_seen: bool,
                     segments: list[tuple[int, int, bool]]) -> bool:
        ok_len = d.len > 0 and d.len % DESC_SIZE == 0 and d.len // DESC_SIZE <= q.size
        self._note("PACKED-DRV-14", ok_len, f"{where}: indirect table of {d.len} bytes (a non-zero multiple of "
                                            f"{DESC_SIZE}, at most {q.size} entries)")
        if not ok_len:
            return writable_seen
        for j, e in enumerate(unpack_ring(self.read(d.addr, d.len))):
            self._note("PACKED-DRV-13", not e.flags & ~PackedDescFlags.WRITE.value,
                       f"{where}: indirect entry {j} carries flags {e.flags:#06x} (only WRITE allowed)")
            segments.append((e.addr, e.len, e.is_write))
            if e.is_write:
                writable_seen = True
            else:
                self._note("PACKED-DRV-08", not writable_seen, f"{where}: readable indirect entry {j} after a "
                                                               "writable one")
        return writable_seen

    # --- lost notifications -----------------------------------------------------------------------

    def _unkicked(self, q: _Queue) -> list[_List]:
        """Lists in flight (not used yet) made available after the last doorbell."""
        lap = 2 * q.size
        since = linear(*q.kicked, q.size)
        span = (linear(q.next_avail, q.avail_wrap, q.size) - since) % lap
        return [x for x in q.inflight if (linear(x.slot, x.wrap, q.size) - since) % lap < span]

    def _check_lost_kicks(self) -> None:
        """PACKED-DRV-17: lists made available after the last doorbell and still not used, while the device event
        suppression structure asks for a notification for them (ENABLE, or DESC at a slot among them with
        EVENT_IDX). Only on queues whose doorbells cross the trace (ioeventfd kicks do not)."""
        if not self.ring_negotiated:
            return
        self._inspect_all()
        for index, q in self._queues.items():
            if not q.live or q.lost or not q.doorbells:
                continue
            waiting = self._unkicked(q)
            if not waiting:
                continue
            pending = sum(x.slots for x in waiting)
            ev = EventSuppress.unpack(self.read(q.device, EVENT_SIZE))
            if ev.flags == EventFlags.DISABLE:
                continue
            wanted = True
            if ev.flags == EventFlags.DESC and has(self._features, F.EVENT_IDX):
                wanted = packed_need_event(ev.off, ev.wrap, q.next_avail, q.avail_wrap, pending, q.size)
            mode = EventFlags(ev.flags).name if ev.flags <= EventFlags.DESC else f"reserved {ev.flags}"
            self._note("PACKED-DRV-17", not wanted,
                       f"queue {index}: {len(waiting)} list(s) made available after the last notification (from "
                       f"slot {q.kicked[0]}, wrap {q.kicked[1]}) and not used, device event {mode} asks for one")
            q.kicked = (q.next_avail, q.avail_wrap)


__all__ = ["PACKED_DRV_MONITORED", "PackedRingMonitor"]
