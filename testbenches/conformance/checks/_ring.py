"""Data-path harness for the split-ring and net checks.

:func:`net_rig` brings a device to DRIVER_OK through :class:`GuestNetDriver`'s
public steps (features, queue size and event_idx chosen by the check, no
receive buffers posted) and returns a :class:`NetRig`: both
:class:`DriverSplitQueue` objects, the MSI-X eventfds, an unconditional
doorbell and bounded, event-driven waits. :meth:`NetRig.bring_up` re-runs the
bring-up on the same device so hypothesis examples can share one device.

Chains are posted with :func:`add_chain` (direct, all-indirect, or direct
descriptors followed by one indirect one) and described by :class:`Posted`
(the guest-physical ranges of every readable and writable buffer and table, as
walked back from guest memory). :class:`DmaWatch` records every device DMA
access on simulated targets (``endpoint.iommu.observers``) together with the
values each used idx write published and a snapshot of the used ring taken
just before that write.
"""

from __future__ import annotations

import itertools
import os
import select
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from backend.pci.device import DmaPerm, PciDevice
from backend.virtio.features import F, NetF, has
from backend.virtio.net_hdr import NetHdr
from backend.virtio.split_ring import (
    DESC_SIZE,
    U16,
    USED_ELEM,
    USED_ELEM_SIZE,
    DescFlags,
    Descriptor,
    SplitLayout,
    vring_need_event,
)
from sim.memory import Allocator, GuestMemory
from testbenches.conformance.checks._support import GUEST_MEMORY_BASE
from testbenches.driver.split_ring import DriverSplitQueue
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver, choose_features

OpenTarget = Callable[..., PciDevice]

#: Feature bits the rig asks for on top of the driver's defaults when a check wants them.
RING_BITS = (1 << F.EVENT_IDX) | (1 << F.INDIRECT_DESC) | (1 << F.IN_ORDER)
#: Longest wait for something that must happen (an interrupt, a used entry).
TIMEOUT = 1.0
#: Once a device has missed one deadline, later waits on the same rig are this short: a broken
#: device then fails every hypothesis example (and every shrink step) in milliseconds, not seconds.
FAIL_FAST = 0.05
DEFAULT_MEM = 32 << 20


def sim_spec(target_spec: str, **opts: object) -> str:
    """``target_spec`` with ``key=value`` options added when it is a ``sim:`` spec without them."""
    if not target_spec.startswith("sim:"):
        return target_spec
    have = {p.split("=", 1)[0] for p in target_spec.split(",")[1:]}
    extra = [f"{k}={v}" for k, v in opts.items() if k not in have]
    return ",".join([target_spec, *extra])


def is_in_process(pci: PciDevice) -> bool:
    """True for the in-process simulator: a doorbell write returns after the device finished the work."""
    from sim.pci_device import SimPciDevice

    return isinstance(pci, SimPciDevice)


def wire_of(pci: PciDevice) -> str:
    """``loopback`` when transmitted frames come back to receiveq1, ``none`` when the target says it has no wire."""
    if hasattr(pci, "wire"):
        return "none" if pci.wire is None else "loopback"
    return "loopback"  # the bench's data-path checks run real devices in loopback


@dataclass
class Posted:
    """A chain made available: its head and the ranges walked back from guest memory."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)
    writable: list[tuple[int, int]] = field(default_factory=list)
    tables: list[tuple[int, int]] = field(default_factory=list)  # descriptor slots and indirect tables
    owned: list[int] = field(default_factory=list)  # allocations the rig frees itself (raw chains)
    token: object = None

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)


def walk_chain(ring: DriverSplitQueue, head: int) -> Posted:
    """The chain at ``head`` as the driver wrote it (at most one indirect level, as a device must see it)."""
    out = Posted(head)
    idx = head
    for _ in range(ring.size):
        out.tables.append((ring.desc_addr + DESC_SIZE * idx, DESC_SIZE))
        d = ring.read_desc(idx)
        if d.flags & DescFlags.INDIRECT:
            n = d.len // DESC_SIZE
            out.tables.append((d.addr, d.len))
            i = 0
            for _ in range(n):
                e = ring.read_desc(i, table=d.addr)
                (out.writable if e.flags & DescFlags.WRITE else out.readable).append((e.addr, e.len))
                if not e.flags & DescFlags.NEXT:
                    break
                i = e.next
        else:
            (out.writable if d.flags & DescFlags.WRITE else out.readable).append((d.addr, d.len))
        if not d.flags & DescFlags.NEXT:
            return out
        idx = d.next
    raise AssertionError(f"chain at {head} loops in the driver's own table")


def add_chain(ring: DriverSplitQueue, out: Sequence[bytes], in_lens: Sequence[int], *, direct: int | None = None,
              pointer_flags: int = 0, token: object = None) -> Posted:
    """Expose one chain: readable ``out`` then writable ``in_lens``.

    ``direct=None``: plain descriptors. ``direct=k``: the first ``k`` pieces as
    ordinary descriptors, the rest (at least one) in one indirect table;
    ``pointer_flags`` are ORed into the descriptor that points at the table
    (SPLIT-DEV-07). The readable pieces are carved out of one allocation and the
    writable ones out of another, so even a chain as long as a 32768-entry queue
    costs three allocations. Not visible until the ring is published.
    """
    pieces = len(out) + len(in_lens)
    if pieces == 0:
        raise ValueError("a chain needs at least one descriptor")
    if direct is not None and not 0 <= direct < pieces:
        raise ValueError(f"direct={direct} leaves no descriptor for the indirect table of {pieces}")
    ndesc = pieces if direct is None else direct + 1
    if ring.num_free < ndesc:
        raise ValueError(f"{ndesc} descriptors needed, {ring.num_free} free")
    owned: list[int] = []
    parts: list[tuple[int, int, int]] = []
    if out:
        blob = b"".join(out)
        base = ring.alloc_buffer(blob)
        owned.append(base)
        off = 0
        for data in out:
            parts.append((base + off, len(data), 0))
            off += len(data)
    if in_lens:
        base = ring.alloc_buffer(sum(in_lens))
        owned.append(base)
        off = 0
        for length in in_lens:
            parts.append((base + off, length, DescFlags.WRITE))
            off += length
    # The ring keeps its free descriptor slots privately; a raw chain takes the next ones in its order.
    slots = list(itertools.islice(ring._free, ndesc))
    descs: dict[int, Descriptor] = {}
    direct_parts = parts if direct is None else parts[:direct]
    for i, (gpa, n, fl) in enumerate(direct_parts):
        last = direct is None and i + 1 == len(direct_parts)
        descs[slots[i]] = Descriptor(gpa, n, fl | (0 if last else DescFlags.NEXT), 0 if last else slots[i + 1])
    if direct is not None:
        rest = parts[direct:]
        table = ring.write_indirect([
            Descriptor(gpa, n, fl | (DescFlags.NEXT if i + 1 < len(rest) else 0), i + 1 if i + 1 < len(rest) else 0)
            for i, (gpa, n, fl) in enumerate(rest)])
        owned.append(table)
        descs[slots[direct]] = Descriptor(table, DESC_SIZE * len(rest), DescFlags.INDIRECT | pointer_flags, 0)
    ring.add_raw(descs, slots[0], token=token)
    posted = walk_chain(ring, slots[0])
    posted.owned = owned
    posted.token = token
    return posted


def written_bytes(mem: GuestMemory, posted: Posted, n: int) -> bytes:
    """The first ``n`` bytes of the chain's writable buffers, in chain order."""
    chunks: list[bytes] = []
    for gpa, length in posted.writable:
        if n <= 0:
            break
        take = min(n, length)
        if take:
            chunks.append(mem.read(gpa, take))
        n -= take
    return b"".join(chunks)


def poison(mem: GuestMemory, posted: Posted, byte: int = 0xA5) -> None:
    for gpa, length in posted.writable:
        if length:
            mem.write(gpa, bytes([byte]) * length)


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (sorted, may repeat: repeats make zero-length pieces)."""
    pos = [0, *sorted(min(max(c, 0), len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(pos)]


def make_frame(seq: int, length: int, mac: bytes = b"\x02\x00\x00\x00\x00\x01") -> bytes:
    """An Ethernet frame of ``length`` (>= 14) bytes, local experimental ethertype, payload ``seq`` repeated."""
    length = max(length, 14)
    tag = struct.pack("<I", seq & 0xFFFFFFFF)
    body = (tag * (length // 4 + 1))[:length - 14]
    return mac + b"\x02\x00\x00\x00\x00\x02" + b"\x88\xb5" + body


@dataclass(frozen=True)
class EventIdxStep:
    """One EVENT_IDX notification experiment: used idx start -> new with used_event ``event``."""

    start: int
    new: int
    event: int
    flags: int
    batch: int
    want: bool
    got: int
    done: bool

    def describe(self) -> str:
        return (f"used idx {self.start}->{self.new} ({self.batch} buffer(s)), used_event {self.event} "
                f"(used idx{(self.event - self.start + 0x8000) % 0x10000 - 0x8000:+d}), avail.flags={self.flags}: "
                f"{self.got} interrupt(s), expected {int(self.want)} (vring_need_event)")


class NetRig:
    """One device at DRIVER_OK with one queue pair, driven at the ring level."""

    RX = GuestNetDriver.RX
    TX = GuestNetDriver.TX

    def __init__(self, pci: PciDevice, mem: GuestMemory) -> None:
        self.pci = pci
        self.mem = mem
        region = mem.regions[0]
        self.drv = GuestNetDriver(pci, mem, alloc=Allocator(region.gpa, region.size), rx_buffers=0)
        self.drv.transport.enable_device()
        self.drv.map_memory()
        self.offered = self.drv.transport.device_features()
        self.max_queue_size = 0
        self.synchronous = is_in_process(pci)
        #: How long "no interrupt" is waited for: nothing on the in-process model, whose doorbell
        #: write returns after the work and its MSI-X message are done.
        self.quiet = 0.0 if self.synchronous else 0.02
        self.doorbells = 0
        self.patience = TIMEOUT  # drops to FAIL_FAST after the first missed deadline

    # --- bring-up ------------------------------------------------------------------------------

    def features_for(self, *, event_idx: bool = False, indirect: bool | None = None, in_order: bool = False,
                     extra: int = 0, drop: int = 0) -> int | None:
        """The feature set for the wanted ring options, or None if the device does not offer one of them
        (``indirect=None``: INDIRECT_DESC where offered, for checks that do not depend on it)."""
        if indirect is None:
            indirect = has(self.offered, F.INDIRECT_DESC)
        want = {F.EVENT_IDX: event_idx, F.INDIRECT_DESC: indirect, F.IN_ORDER: in_order}
        for bit, on in want.items():
            if on and not has(self.offered, bit):
                return None
        base = DEFAULT_FEATURES & ~RING_BITS | extra
        base |= sum(1 << bit for bit, on in want.items() if on)
        chosen = choose_features(self.offered, base & ~drop)
        return chosen if all(has(chosen, b) == on for b, on in want.items()) else None

    def bring_up(self, features: int, queue_size: int = 256) -> None:
        """Reset and run the 3.1.1 steps to DRIVER_OK with exactly ``features`` and rings of ``queue_size``."""
        d = self.drv
        d.queue_size = queue_size
        d.reset()
        # Everything allocated for the previous rings and chains is gone with them: start the heap afresh.
        region = self.mem.regions[0]
        d.alloc = Allocator(region.gpa, region.size)
        if not self.max_queue_size:
            self.max_queue_size = d.transport.queue_size(self.RX)
        d.acknowledge()
        d.negotiate(features)
        d.features_ok()
        d.setup_irqs()
        d.setup_queues()
        d.driver_ok()
        self.doorbells = 0

    @property
    def features(self) -> int:
        return self.drv.features

    @property
    def rx(self) -> DriverSplitQueue:
        return self.drv.queues[self.RX]

    @property
    def tx(self) -> DriverSplitQueue:
        return self.drv.queues[self.TX]

    @property
    def hdr_len(self) -> int:
        return self.drv.hdr_len

    @property
    def rx_buf_size(self) -> int:
        return self.drv.rx_buf_size

    def tx_header(self, hdr: NetHdr | None = None) -> bytes:
        return (hdr or NetHdr()).pack().ljust(self.hdr_len, b"\0")

    def status(self) -> int:
        return self.drv.status()

    def device_errors(self) -> str:
        """What a simulated device logged as driver errors (empty on other targets)."""
        model = getattr(self.pci, "model", None)
        errs = getattr(model, "errors", None) or []
        return "; ".join(str(e) for e in errs)

    # --- doorbells and interrupts --------------------------------------------------------------

    def publish(self, q: int) -> None:
        """Make added entries visible and ring the doorbell whatever the suppression state says."""
        ring = self.drv.queues[q]
        ring.publish()
        self.kick(q)

    def kick(self, q: int) -> None:
        t = self.drv.transport
        t.notify(q, avail_idx=self.drv.queues[q].published, location=t.notify_location(q))
        self.doorbells += 1

    def irq_fd(self, q: int) -> int:
        return self.drv.irq_fds["rx" if q == self.RX else "tx"]

    def _missed(self) -> None:
        self.patience = FAIL_FAST

    def irqs(self, q: int, timeout: float) -> int:
        """Interrupts signalled on the queue's eventfd, waiting up to ``timeout`` for the first (0 if none)."""
        fd = self.irq_fd(q)
        wait = max(0.0, min(timeout, self.patience))
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            if wait > self.quiet:
                self._missed()
            return 0
        try:
            return os.eventfd_read(fd)
        except BlockingIOError:
            return 0

    def drain_irqs(self) -> None:
        for q in (self.RX, self.TX):
            self.irqs(q, 0)

    def wait_used(self, q: int, target: int, timeout: float | None = None) -> tuple[bool, int]:
        """Wait until used idx of ``q`` reads ``target`` (16-bit); interrupts seen meanwhile are returned."""
        ring = self.drv.queues[q]
        deadline = time.monotonic() + min(timeout if timeout is not None else TIMEOUT, self.patience)
        fd = self.irq_fd(q)
        seen = 0
        while ring.used_idx() != target & 0xFFFF:
            left = deadline - time.monotonic()
            if left <= 0:
                self._missed()
                return False, seen
            ready, _, _ = select.select([fd], [], [], min(left, 0.005))
            if ready:
                try:
                    seen += os.eventfd_read(fd)
                except BlockingIOError:
                    pass
        return True, seen

    def event_idx_step(self, first_seq: int, event: int, flags: int, batch: int, length: int) -> EventIdxStep:
        """With EVENT_IDX: set avail.flags and used_event = used idx + ``event``, transmit ``batch`` frames,
        wait for them and count the TX interrupts; ``want`` is what vring_need_event says should happen."""
        tx = self.tx
        tx.write_avail_flags(flags)
        start = tx.used_idx()
        ev = (start + event) & 0xFFFF
        tx.set_used_event(ev)
        for k in range(batch):
            add_chain(tx, [self.tx_header() + make_frame(first_seq + k, length)], [])
        self.publish(self.TX)
        done, seen = self.wait_used(self.TX, start + batch)
        new = tx.used_idx()
        want = vring_need_event(ev, new, start)
        got = seen + self.irqs(self.TX, TIMEOUT if want else self.quiet)
        tx.used()
        return EventIdxStep(start, new, ev, flags, batch, want, got, done)

    # --- consuming used entries ----------------------------------------------------------------

    def complete(self, q: int, pending: dict[int, Posted], count: int,
                 timeout: float | None = None) -> list[tuple[Posted, int]]:
        """Consume used entries of ``q`` until ``count`` came back (or ``timeout``), in used-ring order."""
        ring = self.drv.queues[q]
        got: list[tuple[Posted, int]] = []
        deadline = time.monotonic() + min(timeout if timeout is not None else TIMEOUT, self.patience)
        while len(got) < count:
            for u in ring.used():
                p = pending.pop(u.head, None)
                if p is None:
                    raise AssertionError(f"queue {q}: used id {u.head} is not a chain in flight")
                got.append((p, u.len))
            if len(got) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self._missed()
                break
            self.irqs(q, min(left, 0.05))
        return got

    def release(self, posted: Posted) -> None:
        for gpa in posted.owned:
            self.drv.alloc.free(gpa)
        posted.owned = []

    def close(self) -> None:
        self.drv.close()


@contextmanager
def net_rig(open_target: OpenTarget, spec: str | None = None, mem_size: int = DEFAULT_MEM) -> Iterator[NetRig]:
    """A fresh device (``spec`` or the session target) with guest memory mapped; closed on exit."""
    pci = open_target(spec) if spec else open_target()
    with GuestMemory.single(mem_size, gpa=GUEST_MEMORY_BASE) as mem:
        rig = NetRig(pci, mem)
        try:
            yield rig
        finally:
            rig.close()


# --- DMA watching (simulated targets) -------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    seq: int
    perm: DmaPerm
    iova: int
    size: int


@dataclass(frozen=True)
class IdxWrite:
    """One device write of used idx: the value it published and the used ring just before it."""

    seq: int
    queue: int
    value: int
    ring_before: bytes


class DmaWatch:
    """Every device DMA access while active, plus each used idx publication with the ring before it.

    Only on targets whose IOMMU is visible (the simulator); :attr:`available` says so.
    """

    def __init__(self, pci: PciDevice, mem: GuestMemory, rings: dict[int, DriverSplitQueue]) -> None:
        endpoint: Any = getattr(pci, "endpoint", None)
        self.iommu: Any = getattr(endpoint, "iommu", None)
        self.available = self.iommu is not None and hasattr(self.iommu, "observers")
        self.mem = mem
        self.rings = rings
        self.accesses: list[Access] = []
        self.idx_writes: list[IdxWrite] = []
        self._pending: tuple[int, int, bytes] | None = None

    def _settle(self) -> None:
        if self._pending is None:
            return
        seq, q, before = self._pending
        self._pending = None
        ring = self.rings[q]
        value = U16.unpack(self.mem.read(ring.used_addr + SplitLayout.USED_IDX, 2))[0]
        self.idx_writes.append(IdxWrite(seq, q, value, before))

    def _observe(self, perm: DmaPerm, iova: int, size: int) -> None:
        self._settle()  # the previous write has landed by now: accesses are sequential
        seq = len(self.accesses)
        self.accesses.append(Access(seq, perm, iova, size))
        if not perm & DmaPerm.WRITE:
            return
        for q, ring in self.rings.items():
            idx_addr = ring.used_addr + SplitLayout.USED_IDX
            if iova < idx_addr + 2 and idx_addr < iova + size:
                before = self.mem.read(ring.used_addr + SplitLayout.USED_RING, USED_ELEM_SIZE * ring.size)
                self._pending = (seq, q, before)

    def __enter__(self) -> DmaWatch:
        if self.available:
            self.iommu.observers.append(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.available:
            self.iommu.observers.remove(self._observe)
        self._settle()

    def writes(self) -> list[Access]:
        self._settle()
        return [a for a in self.accesses if a.perm & DmaPerm.WRITE]

    def reads(self) -> list[Access]:
        return [a for a in self.accesses if a.perm & DmaPerm.READ and not a.perm & DmaPerm.WRITE]


def used_entry(ring_bytes: bytes, slot: int, size: int) -> tuple[int, int]:
    i: int
    n: int
    i, n = USED_ELEM.unpack_from(ring_bytes, USED_ELEM_SIZE * (slot % size))
    return i, n


def overlaps(a: int, alen: int, b: int, blen: int) -> bool:
    return alen > 0 and blen > 0 and a < b + blen and b < a + alen


def uncovered(need: Sequence[tuple[int, int]], writes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Parts of the ``need`` ranges no write range covers."""
    merged: list[list[int]] = []
    for a, n in sorted(w for w in writes if w[1] > 0):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], a + n)
        else:
            merged.append([a, a + n])
    gaps: list[tuple[int, int]] = []
    for a, n in need:
        cur, end = a, a + n
        for lo, hi in merged:
            if hi <= cur or lo >= end:
                continue
            if lo > cur:
                gaps.append((cur, lo - cur))
            cur = max(cur, hi)
            if cur >= end:
                break
        if cur < end:
            gaps.append((cur, end - cur))
    return gaps


def feature_names(features: int) -> str:
    names = [b.name for b in (F.EVENT_IDX, F.INDIRECT_DESC, F.IN_ORDER) if has(features, b)]
    names += [b.name for b in (NetF.MTU, NetF.MRG_RXBUF, NetF.GUEST_CSUM) if has(features, b)]
    return "|".join(names) or "none of the ring options"
