"""Driver-side split ring rules (2.7, SPLIT-DRV rows), checked on the live rings at each doorbell.

The monitor follows queue programming through the register trace and, when
the driver rings a doorbell, reads what the driver exposed since the last
look: avail idx progress, avail.flags, and every new descriptor chain (walked
with the same bounds a device applies). It reads guest memory only; it never
writes and never touches the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from backend.virtio.features import F, has
from backend.virtio.split_ring import (
    AVAIL_ALIGN,
    DESC_ALIGN,
    DESC_SIZE,
    U16,
    USED_ALIGN,
    VRING_USED_F_NO_NOTIFY,
    DescFlags,
    Descriptor,
    SplitLayout,
    unpack_table,
    vring_need_event,
)
from testbenches.monitor.pci_trace import TracingPciDevice
from testbenches.monitor.ring_follow import QueueProgram, ReadMem, RingFollower
from testbenches.monitor.virtio_pci_rules import Event, Finding


@dataclass(frozen=True)
class Publication:
    """The driver moved queue ``queue``'s avail idx from ``old`` to ``new``; the used ring then held ``used_flags``
    and ``avail_event``; ``notified`` says whether a doorbell for the queue followed before the next look."""

    queue: int
    old: int
    new: int
    used_flags: int
    avail_event: int
    notified: bool


def notify_findings(p: Publication, event_idx: bool) -> list[Finding]:
    """SPLIT-DRV-20..25 on one publication (2.7.10.1). Where the field the driver must disregard (avail_event
    without EVENT_IDX, bit 0 of used.flags with it) asks otherwise than the one it must follow, the publication
    judges only the disregard row (20 or 23); elsewhere it judges the notify (22, 24) or no-notify (21, 25) row."""
    need = vring_need_event(p.avail_event, p.new, p.old)
    no_notify = bool(p.used_flags & VRING_USED_F_NO_NOTIFY)
    where = (f"queue {p.queue}: avail idx {p.old}->{p.new}, used.flags {p.used_flags:#x}, "
             f"avail_event {p.avail_event}: {'a' if p.notified else 'no'} notification")
    if event_idx:
        if no_notify and need:
            return [Finding("SPLIT-DRV-23", p.notified, where)]
        return [Finding("SPLIT-DRV-24", p.notified, where)] if need else \
            [Finding("SPLIT-DRV-25", not p.notified, where)]
    if need == no_notify:  # avail_event says the opposite of used.flags
        return [Finding("SPLIT-DRV-20", p.notified != no_notify, where)]
    return [Finding("SPLIT-DRV-21", not p.notified, where)] if no_notify else \
        [Finding("SPLIT-DRV-22", p.notified, where)]


def lost_kick_finding(p: Publication, event_idx: bool) -> Finding | None:
    """SPLIT-DRV-27 on one publication: where the suppression field the driver must follow (bit 0 of used.flags
    without EVENT_IDX, avail_event with it) asked for a notification once the new avail idx was stored, one came
    (a driver that read the field before its idx store, with no barrier between, may miss it: a lost kick).
    None where the device said not to notify."""
    asked = vring_need_event(p.avail_event, p.new, p.old) if event_idx else \
        not p.used_flags & VRING_USED_F_NO_NOTIFY
    if not asked:
        return None
    return Finding("SPLIT-DRV-27", p.notified,
                   f"queue {p.queue}: avail idx {p.old}->{p.new} with used.flags {p.used_flags:#x}, avail_event "
                   f"{p.avail_event} asking for a notification, and none came (a lost kick)")


#: SPLIT-DRV-03: more descriptors than this for one buffer is unreasonable. A virtio-net buffer needs the header,
#: the linear part and at most 45 page fragments (the most a Linux socket buffer holds), so 64 leaves room.
REASONABLE_CHAIN = 64


def chain_length_finding(count: int, where: str) -> Finding:
    """SPLIT-DRV-03 on one buffer of ``count`` descriptors (indirect entries counted)."""
    return Finding("SPLIT-DRV-03", count <= REASONABLE_CHAIN,
                   f"{where}: {count} descriptors describe one buffer (more than {REASONABLE_CHAIN})")


@dataclass
class _Queue(QueueProgram):
    seen_avail_idx: int = 0
    published_idx: int = 0  # avail idx at the last :meth:`SplitRingMonitor.publications` look
    doorbells: int = 0  # doorbells for the queue since then

    @property
    def avail(self) -> int:
        """The Driver Area of a split ring: its available ring."""
        return self.driver

    @property
    def used(self) -> int:
        """The Device Area of a split ring: its used ring."""
        return self.device


@dataclass
class SplitRingMonitor(RingFollower[_Queue]):
    """Attach to a :class:`TracingPciDevice`; read :attr:`findings` after the run."""

    RING_PACKED = False

    @classmethod
    def attach(cls, trace: TracingPciDevice, read: ReadMem) -> SplitRingMonitor:
        return cls._following(trace, read)

    # --- following the register traffic -----------------------------------------------------------

    def _new_queue(self) -> _Queue:
        return _Queue()

    def _queue_reset(self, index: int, q: _Queue) -> None:
        q.live = False
        q.seen_avail_idx = q.published_idx = q.doorbells = 0

    def _notified(self, e: Event) -> None:
        if has(self._features, F.NOTIFICATION_DATA):
            self._check_notification_data(e)
        _, q = self._notified_queue(e.value & 0xFFFF)
        if q is not None:
            q.doorbells += 1
        self.inspect()

    def publications(self) -> list[Publication]:
        """Every live queue whose avail idx moved since the last look: the move, the used ring's suppression
        fields as they are now, and whether a doorbell came for it (for :func:`notify_findings`). The caller looks
        after each step of the driver, with the used ring's fields held still by the device side."""
        found: list[Publication] = []
        for index, q in self._queues.items():
            if not (q.live and self.ring_negotiated):
                continue
            idx = U16.unpack(self.read(q.avail + 2, 2))[0]
            if idx != q.published_idx:
                flags = U16.unpack(self.read(q.used, 2))[0]
                event = U16.unpack(self.read(q.used + SplitLayout(q.size).avail_event, 2))[0]
                found.append(Publication(index, q.published_idx, idx, flags, event, q.doorbells > 0))
            q.published_idx, q.doorbells = idx, 0
        return found

    def _check_notification_data(self, e: Event) -> None:
        """NOTIF-DRV-B01: next_off/next_wrap carry the new avail idx (bits 0-14 and bit 15)."""
        index, q = self._notified_queue(e.value & 0xFFFF)
        if q is None or not q.live:
            return
        idx = U16.unpack(self.read(q.avail + 2, 2))[0]
        next_off, next_wrap = e.value >> 16 & 0x7FFF, e.value >> 31 & 1
        self.findings.append(Finding("NOTIF-DRV-B01", next_off == idx & 0x7FFF and next_wrap == idx >> 15 & 1,
                                     f"queue {index}: notification data next_off={next_off} next_wrap={next_wrap}"
                                     f" but avail idx is {idx}"))

    def _enabled(self, index: int, q: _Queue) -> None:
        ok = q.desc % DESC_ALIGN == 0 and q.avail % AVAIL_ALIGN == 0 and q.used % USED_ALIGN == 0
        self.findings.append(Finding("SPLIT-DRV-01", ok, f"queue {index}: desc {q.desc:#x}, avail {q.avail:#x}, "
                                     f"used {q.used:#x} break the 16/2/4 alignment"))
        try:
            used_flags = U16.unpack(self.read(q.used, 2))[0]
            avail_idx = U16.unpack(self.read(q.avail + 2, 2))[0]
        except Exception as exc:  # the ring is not in memory the monitor can read
            self.findings.append(Finding("SPLIT-DRV-01", False, f"queue {index}: ring unreadable: {exc}"))
            return
        self.findings.append(Finding("SPLIT-DRV-19", used_flags == 0,
                                     f"queue {index}: used.flags is {used_flags:#x} when the queue is enabled"))
        q.live = True
        q.seen_avail_idx = q.published_idx = avail_idx
        q.doorbells = 0

    # --- ring inspection ------------------------------------------------------------------------

    def inspect(self) -> None:
        """Look at every live queue now (for doorbells that bypass the trace, e.g. ioeventfd kicks)."""
        for index, q in self._queues.items():
            if q.live and self.ring_negotiated:
                self._inspect(index, q)

    def _inspect(self, index: int, q: _Queue) -> None:
        lay = SplitLayout(q.size)
        flags, idx = U16.unpack(self.read(q.avail, 2))[0], U16.unpack(self.read(q.avail + 2, 2))[0]
        event_idx = has(self._features, F.EVENT_IDX)
        if event_idx:
            self.findings.append(Finding("SPLIT-DRV-14", flags == 0,
                                         f"queue {index}: avail.flags {flags:#x} with EVENT_IDX"))
        else:
            self.findings.append(Finding("SPLIT-DRV-12", flags in (0, 1),
                                         f"queue {index}: avail.flags {flags:#x} without EVENT_IDX"))
        new = (idx - q.seen_avail_idx) & 0xFFFF
        self.findings.append(Finding("SPLIT-DRV-11", new <= q.size,
                                     f"queue {index}: avail idx went from {q.seen_avail_idx} to {idx} "
                                     f"(more than the {q.size} entries the ring holds: moved backwards?)"))
        if new > q.size:
            q.seen_avail_idx = idx
            return
        table = unpack_table(self.read(q.desc, DESC_SIZE * q.size))
        for k in range(new):
            slot = (q.seen_avail_idx + k) & 0xFFFF
            head = U16.unpack(self.read(q.avail + lay.avail_ring_entry(slot), 2))[0]
            self._check_chain(index, q, table, head)
        q.seen_avail_idx = idx

    def _check_chain(self, index: int, q: _Queue, table: list[Descriptor], head: int) -> None:
        where = f"queue {index} chain at head {head}"
        if head >= q.size:
            self.findings.append(Finding("SPLIT-DRV-08", False, f"{where}: head outside the table of {q.size}"))
            return
        indirect_ok = has(self._features, F.INDIRECT_DESC)
        in_order = has(self._features, F.IN_ORDER)
        count = 0
        total = 0
        writable_seen = False
        segments: list[tuple[int, int, bool]] = []
        for i, d in self._links(where, table, head, "loops or leaves the table at"):
            count += 1
            if d.flags & DescFlags.INDIRECT:
                self.findings.append(Finding("SPLIT-DRV-06", indirect_ok,
                                             f"{where}: INDIRECT used without VIRTIO_F_INDIRECT_DESC"))
                self.findings.append(Finding("SPLIT-DRV-09", not d.flags & DescFlags.NEXT,
                                             f"{where}: descriptor {i} has both INDIRECT and NEXT"))
                count, total, writable_seen = self._check_indirect(where, d, count, total, writable_seen, in_order,
                                                                   segments)
            else:
                total += d.len
                segments.append((d.addr, d.len, bool(d.flags & DescFlags.WRITE)))
                writable_seen = self._writable_last(where, f"descriptor {i}", d, writable_seen)
            if not d.flags & DescFlags.NEXT or d.flags & DescFlags.INDIRECT:
                break
            if in_order:
                expect = 0 if i == q.size - 1 else i + 1
                self.findings.append(Finding("SPLIT-DRV-05", d.next == expect,
                                             f"{where}: IN_ORDER descriptor {i} links to {d.next}, not {expect}"))
        else:
            return  # the chain loops or leaves the table: a SPLIT-DRV-04 failure, nothing more to count
        self.findings.append(Finding("SPLIT-DRV-08", count <= q.size,
                                     f"{where}: {count} descriptors in a queue of {q.size}"))
        self.findings.append(chain_length_finding(count, where))
        self.findings.append(Finding("SPLIT-DRV-04", total <= 1 << 32, f"{where}: chain totals {total} bytes"))
        self._buffer(index, segments, where)

    def _check_indirect(self, where: str, d: Descriptor, count: int, total: int, writable_seen: bool,
                        in_order: bool, segments: list[tuple[int, int, bool]]) -> tuple[int, int, bool]:
        if d.len % DESC_SIZE or d.len == 0:
            self.findings.append(Finding("SPLIT-DRV-08", False, f"{where}: indirect table length {d.len}"))
            return count, total, writable_seen
        table = unpack_table(self.read(d.addr, d.len))
        for j, e in self._links(where, table, 0, "indirect chain loops at"):
            count += 1
            self.findings.append(Finding("SPLIT-DRV-07", not e.flags & DescFlags.INDIRECT,
                                         f"{where}: indirect entry {j} is itself INDIRECT"))
            total += e.len
            segments.append((e.addr, e.len, bool(e.flags & DescFlags.WRITE)))
            writable_seen = self._writable_last(where, f"indirect entry {j}", e, writable_seen)
            if not e.flags & DescFlags.NEXT:
                break
            if in_order:
                self.findings.append(Finding("SPLIT-DRV-10", e.next == j + 1,
                                             f"{where}: IN_ORDER indirect entry {j} links to {e.next}"))
        return count, total, writable_seen

    def _writable_last(self, where: str, what: str, d: Descriptor, writable_seen: bool) -> bool:
        """SPLIT-DRV-02 for the next descriptor of a chain: no device-readable one after a device-writable one.
        Returns whether a writable one has been seen now."""
        if d.flags & DescFlags.WRITE:
            return True
        self.findings.append(Finding("SPLIT-DRV-02", not writable_seen,
                                     f"{where}: readable {what} after a writable one"))
        return writable_seen

    def _links(self, where: str, table: list[Descriptor], first: int, looped: str) -> Iterator[tuple[int, Descriptor]]:
        """A chain's descriptors from ``first`` on, each with its index, following ``next`` for as long as the
        caller goes on; one that repeats or leaves ``table`` ends the walk with a SPLIT-DRV-04 failure."""
        seen: set[int] = set()
        i = first
        while i not in seen and i < len(table):
            seen.add(i)
            yield i, table[i]
            i = table[i].next
        self.findings.append(Finding("SPLIT-DRV-04", False, f"{where}: {looped} {i}"))
