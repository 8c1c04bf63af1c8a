"""Driver-side split ring rules (2.7, SPLIT-DRV rows), checked on the live rings at each doorbell.

The monitor follows queue programming through the register trace and, when
the driver rings a doorbell, reads what the driver exposed since the last
look: avail idx progress, avail.flags, and every new descriptor chain (walked
with the same bounds a device applies). It reads guest memory only; it never
writes and never touches the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from backend.virtio.features import F, has
from backend.virtio.pci_regs import CommonCfg
from backend.virtio.split_ring import (
    AVAIL_ALIGN,
    DESC_ALIGN,
    DESC_SIZE,
    U16,
    USED_ALIGN,
    DescFlags,
    Descriptor,
    SplitLayout,
    unpack_table,
)
from testbenches.monitor.pci_trace import Access, TracingPciDevice
from testbenches.monitor.virtio_pci_rules import Decoder, Event, Finding, Layout

ReadMem = Callable[[int, int], bytes]


@dataclass
class _Queue:
    size: int = 0
    desc: int = 0
    avail: int = 0
    used: int = 0
    live: bool = False
    seen_avail_idx: int = 0
    config_data: int | None = None


@dataclass
class SplitRingMonitor:
    """Attach to a :class:`TracingPciDevice`; read :attr:`findings` after the run."""

    read: ReadMem
    layout: Layout
    findings: list[Finding] = field(default_factory=list)
    _queues: dict[int, _Queue] = field(default_factory=dict)
    _features: int = 0
    _feature_select: int = 0
    _decoder: Decoder | None = None

    @classmethod
    def attach(cls, trace: TracingPciDevice, read: ReadMem) -> SplitRingMonitor:
        mon = cls(read, Layout.discover(trace))
        mon._decoder = Decoder(mon.layout)
        trace.listeners.append(mon._on_access)
        return mon

    def verdicts(self) -> dict[str, tuple[bool, list[str]]]:
        out: dict[str, tuple[bool, list[str]]] = {}
        for f in self.findings:
            ok, ev = out.get(f.req_id, (True, []))
            out[f.req_id] = (ok and f.ok, ev if f.ok else [*ev, f.evidence])
        return out

    # --- following the register traffic -----------------------------------------------------------

    def _on_access(self, a: Access) -> None:
        assert self._decoder is not None
        e = self._decoder.feed(a)
        if e is None or not (e.kind.endswith(("_w", "notify")) or e.field == CommonCfg.QUEUE_NOTIF_CONFIG_DATA):
            return
        if e.kind == "status_w" and e.value == 0:
            self._queues.clear()
            self._features = 0
        elif e.kind == "common_w" and e.field == CommonCfg.DRIVER_FEATURE_SELECT:
            self._feature_select = e.value
        elif e.kind == "common_w" and e.field == CommonCfg.DRIVER_FEATURE:
            sel = self._feature_select
            self._features = self._features & ~(0xFFFFFFFF << (32 * sel)) | e.value << (32 * sel)
        elif e.kind == "common_w" and e.queue >= 0:
            self._queue_write(e)
        elif e.kind == "common_r" and e.field == CommonCfg.QUEUE_NOTIF_CONFIG_DATA and e.queue >= 0:
            self._queues.setdefault(e.queue, _Queue()).config_data = e.value
        elif e.kind == "notify" and not has(self._features, F.RING_PACKED):  # packed rings: packed_ring_rules
            if has(self._features, F.NOTIFICATION_DATA):
                self._check_notification_data(e)
            for index, q in self._queues.items():
                if q.live:
                    self._inspect(index, q)

    def _queue_write(self, e: Event) -> None:
        q = self._queues.setdefault(e.queue, _Queue())
        half = (e.offset - int(e.field or 0)) // 4  # 64-bit addresses arrive as two 32-bit halves
        shift = 32 * half
        if e.field == CommonCfg.QUEUE_SIZE:
            q.size = e.value
        elif e.field == CommonCfg.QUEUE_DESC:
            q.desc = q.desc & ~(0xFFFFFFFF << shift) | e.value << shift
        elif e.field == CommonCfg.QUEUE_DRIVER:
            q.avail = q.avail & ~(0xFFFFFFFF << shift) | e.value << shift
        elif e.field == CommonCfg.QUEUE_DEVICE:
            q.used = q.used & ~(0xFFFFFFFF << shift) | e.value << shift
        elif e.field == CommonCfg.QUEUE_ENABLE and e.value == 1 and not has(self._features, F.RING_PACKED):
            self._enabled(e.queue, q)
        elif e.field == CommonCfg.QUEUE_RESET and e.value == 1:
            q.live = False
            q.seen_avail_idx = 0

    def _check_notification_data(self, e: Event) -> None:
        """NOTIF-DRV-B01: next_off/next_wrap carry the new avail idx (bits 0-14 and bit 15)."""
        ident = e.value & 0xFFFF
        if has(self._features, F.NOTIF_CONFIG_DATA):
            index = next((i for i, q in self._queues.items() if q.config_data == ident), -1)
        else:
            index = ident
        q = self._queues.get(index)
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
        q.seen_avail_idx = avail_idx

    # --- ring inspection ------------------------------------------------------------------------

    def inspect(self) -> None:
        """Look at every live queue now (for doorbells that bypass the trace, e.g. ioeventfd kicks)."""
        for index, q in self._queues.items():
            if q.live and not has(self._features, F.RING_PACKED):
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
        seen: set[int] = set()
        count = 0
        total = 0
        writable_seen = False
        i = head
        while True:
            if i in seen or i >= q.size:
                self.findings.append(Finding("SPLIT-DRV-04", False, f"{where}: loops or leaves the table at {i}"))
                return
            seen.add(i)
            d = table[i]
            count += 1
            if d.flags & DescFlags.INDIRECT:
                self.findings.append(Finding("SPLIT-DRV-06", indirect_ok,
                                             f"{where}: INDIRECT used without VIRTIO_F_INDIRECT_DESC"))
                self.findings.append(Finding("SPLIT-DRV-09", not d.flags & DescFlags.NEXT,
                                             f"{where}: descriptor {i} has both INDIRECT and NEXT"))
                count, total, writable_seen = self._check_indirect(where, d, count, total, writable_seen, in_order)
            else:
                total += d.len
                if d.flags & DescFlags.WRITE:
                    writable_seen = True
                else:
                    self.findings.append(Finding("SPLIT-DRV-02", not writable_seen,
                                                 f"{where}: readable descriptor {i} after a writable one"))
            if not d.flags & DescFlags.NEXT or d.flags & DescFlags.INDIRECT:
                break
            if in_order:
                expect = 0 if i == q.size - 1 else i + 1
                self.findings.append(Finding("SPLIT-DRV-05", d.next == expect,
                                             f"{where}: IN_ORDER descriptor {i} links to {d.next}, not {expect}"))
            i = d.next
        self.findings.append(Finding("SPLIT-DRV-08", count <= q.size,
                                     f"{where}: {count} descriptors in a queue of {q.size}"))
        self.findings.append(Finding("SPLIT-DRV-04", total <= 1 << 32, f"{where}: chain totals {total} bytes"))

    def _check_indirect(self, where: str, d: Descriptor, count: int, total: int, writable_seen: bool,
                        in_order: bool) -> tuple[int, int, bool]:
        if d.len % DESC_SIZE or d.len == 0:
            self.findings.append(Finding("SPLIT-DRV-08", False, f"{where}: indirect table length {d.len}"))
            return count, total, writable_seen
        table = unpack_table(self.read(d.addr, d.len))
        n = len(table)
        seen: set[int] = set()
        j = 0
        while True:
            if j in seen or j >= n:
                self.findings.append(Finding("SPLIT-DRV-04", False, f"{where}: indirect chain loops at {j}"))
                break
            seen.add(j)
            e = table[j]
            count += 1
            self.findings.append(Finding("SPLIT-DRV-07", not e.flags & DescFlags.INDIRECT,
                                         f"{where}: indirect entry {j} is itself INDIRECT"))
            total += e.len
            if e.flags & DescFlags.WRITE:
                writable_seen = True
            else:
                self.findings.append(Finding("SPLIT-DRV-02", not writable_seen,
                                             f"{where}: readable indirect entry {j} after a writable one"))
            if not e.flags & DescFlags.NEXT:
                break
            if in_order:
                self.findings.append(Finding("SPLIT-DRV-10", e.next == j + 1,
                                             f"{where}: IN_ORDER indirect entry {j} links to {e.next}"))
            j = e.next
        return count, total, writable_seen
