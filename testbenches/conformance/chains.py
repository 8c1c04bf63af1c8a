"""What the checks put in guest memory and how they see what the device did with it.

Chains are posted with :func:`add_chain` (direct, all-indirect, or direct descriptors followed by one
indirect one) and described by :class:`Posted` (the guest-physical ranges of every readable and
writable buffer and table, as walked back from guest memory). :class:`DmaWatch` records every device
DMA access where the target declares a DMA observer, with the value each used idx write published and
the used ring as it was just before that write; :meth:`DmaWatch.exposures` turns that into the order
of the device's used-ring writes (which used entries each used idx write exposed, and whether their len
was written before it). Snapshots of guest memory (:func:`snapshot`, :func:`changed_outside`) show
device writes on any target.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backend.pci.abilities import Ability, DmaObserver, Lacking
from backend.pci.device import DmaFault, DmaPerm
from backend.virtio.features import DeviceStatus
from backend.virtio.split_ring import (
    DESC_SIZE,
    U16,
    USED_ELEM,
    USED_ELEM_SIZE,
    DescFlags,
    Descriptor,
    SplitLayout,
)
from sim.memory import GuestMemory
from testbenches.driver.split_ring import DriverBuffers, DriverSplitQueue

if TYPE_CHECKING:  # the plugin imports pytest and rich; the strategies built on this module must not
    from testbenches.conformance.plugin import Verdict

# --- chains -----------------------------------------------------------------------------------------


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


def lay_out_pieces(ring: DriverBuffers, out: Sequence[bytes], in_lens: Sequence[int],
                   write_flag: int) -> tuple[list[int], list[tuple[int, int, int]]]:
    """The buffers of one chain or list in guest memory, for either ring layout: the readable ``out`` pieces carved
    out of one allocation, the writable ones out of another. Returns the allocations (freed once the device used
    the chain) and the pieces as (gpa, len, ``write_flag`` or 0)."""
    owned: list[int] = []
    parts: list[tuple[int, int, int]] = []
    if out:
        base = ring.alloc_buffer(b"".join(out))
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
            parts.append((base + off, length, write_flag))
            off += length
    return owned, parts


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
    owned, parts = lay_out_pieces(ring, out, in_lens, DescFlags.WRITE)
    return expose_pieces(ring, parts, owned, direct=direct, pointer_flags=pointer_flags, token=token)


def expose_pieces(ring: DriverSplitQueue, parts: Sequence[tuple[int, int, int]], owned: list[int], *,
                  direct: int | None = None, pointer_flags: int = 0, token: object = None) -> Posted:
    """Expose pieces laid out in guest memory, (gpa, len, flags) each, as one chain on the ring's next free slots
    (``direct`` and ``pointer_flags`` as in :func:`add_chain`); ``owned``, the allocations, go with the chain."""
    ndesc = len(parts) if direct is None else direct + 1
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


def ring_ranges(ring: DriverSplitQueue) -> dict[str, tuple[int, int]]:
    lay = ring.layout
    return {"desc": (ring.desc_addr, lay.desc_bytes), "avail": (ring.avail_addr, lay.avail_bytes),
            "used": (ring.used_addr, lay.used_bytes)}


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


# --- DMA watching ---------------------------------------------------------------------------------------

#: Where the len field sits in a used element (after the 32-bit id), and its size.
USED_LEN_OFFSET = 4
USED_LEN_SIZE = 4


@dataclass(frozen=True)
class Access:
    seq: int
    perm: DmaPerm
    iova: int
    size: int

    @property
    def is_write(self) -> bool:
        return bool(self.perm & DmaPerm.WRITE)


@dataclass(frozen=True)
class IdxWrite:
    """One device write of used idx: the value it published and the used ring just before it."""

    seq: int
    queue: int
    value: int
    ring_before: bytes


@dataclass(frozen=True)
class Exposure:
    """One used entry as the used idx write that exposed it to the driver found it (SPLIT-DEV-15).

    ``entry`` counts the queue's used entries from the watch's start (entry 0 sits in the slot of the used
    idx the ring had then). ``len_written`` is the access number of the last device write covering the
    entry's len field after the slot's previous entry was exposed and before this publication, None if
    there was none: the device published used idx before it wrote that len.
    """

    queue: int
    entry: int
    slot: int
    published: int  # access number of the used idx write
    old: int  # the used idx before that write ...
    value: int  # ... and the one it published
    len_written: int | None
    before: tuple[int, int]  # (id, len) the slot held just before the publication


class DmaWatch:
    """Every device DMA access while active, plus each used idx publication of ``rings`` with the ring before it.

    Inert where the target declares no DMA observer; :attr:`available` says so and :attr:`why` why not.
    """

    def __init__(self, observer: Ability[DmaObserver], mem: GuestMemory,
                 rings: Mapping[int, DriverSplitQueue] | None = None) -> None:
        self.observer = None if isinstance(observer, Lacking) else observer
        self.why = observer.why if isinstance(observer, Lacking) else ""
        self.mem = mem
        self.rings = dict(rings or {})
        self.accesses: list[Access] = []
        self.idx_writes: list[IdxWrite] = []
        #: Each ring's used idx when the watch started: where its entry 0 is.
        self.start: dict[int, int] = {}
        self._pending: tuple[int, int, bytes] | None = None

    @property
    def available(self) -> bool:
        return self.observer is not None

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
        self.start = {q: ring.used_idx() for q, ring in self.rings.items()}
        if self.observer is not None:
            self.observer.add_observer(self._observe)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.observer is not None:
            self.observer.remove_observer(self._observe)
        self._settle()

    def writes(self) -> list[Access]:
        self._settle()
        return [a for a in self.accesses if a.is_write]

    def exposures(self, q: int) -> list[Exposure]:
        """Every used entry of queue ``q`` that a used idx write exposed while watched, in order.

        The entries a write exposes are those between the used idx before it and the value it wrote, as the
        driver counts them (mod 2^16). A write that covers used idx and an element at once lands both
        together: that element does not count as written before.
        """
        self._settle()
        ring = self.rings[q]
        size = ring.size
        ring_lo = ring.used_addr + SplitLayout.USED_RING
        ring_hi = ring_lo + USED_ELEM_SIZE * size
        published = {w.seq: w for w in self.idx_writes if w.queue == q}
        len_writes: dict[int, list[int]] = {}  # slot -> access numbers of writes covering its len field
        exposed_at: dict[int, int] = {}  # entry -> access number of the write that exposed it
        out: list[Exposure] = []
        prev = self.start.get(q, 0)
        entry = 0
        for a in list(self.accesses):
            if not a.is_write:
                continue
            w = published.get(a.seq)
            if w is not None:
                for k in range(entry, entry + ((w.value - prev) & 0xFFFF)):
                    slot = (self.start.get(q, 0) + k) % size
                    after = exposed_at.get(k - size, -1)  # the slot's previous entry was exposed then
                    seen = [s for s in len_writes.get(slot, ()) if after < s < a.seq]
                    out.append(Exposure(q, k, slot, a.seq, prev, w.value, max(seen) if seen else None,
                                        used_entry(w.ring_before, slot, size)))
                    exposed_at[k] = a.seq
                entry += (w.value - prev) & 0xFFFF
                prev = w.value
            lo, hi = max(a.iova, ring_lo), min(a.iova + a.size, ring_hi)
            if lo >= hi:
                continue
            first, last = (lo - ring_lo) // USED_ELEM_SIZE, (hi - 1 - ring_lo) // USED_ELEM_SIZE
            for slot in range(first, last + 1):
                len_at = ring_lo + USED_ELEM_SIZE * slot + USED_LEN_OFFSET
                if a.iova <= len_at and len_at + USED_LEN_SIZE <= a.iova + a.size:
                    len_writes.setdefault(slot, []).append(a.seq)
        return out

    def reads(self) -> list[Access]:
        return [a for a in self.accesses if a.perm & DmaPerm.READ and not a.is_write]

    def outside(self, allowed: Sequence[tuple[int, int]], access: DmaPerm | None = None) -> list[str]:
        """Accesses (of kind ``access``, or any) not inside one of the ``allowed`` (start, length) ranges."""
        out = []
        for a in list(self.accesses):
            if access is not None and not a.perm & access:
                continue
            if not any(s <= a.iova and a.iova + a.size <= s + n for s, n in allowed):
                out.append(f"{'write' if a.is_write else 'read'} {a.size}B at {a.iova:#x}")
        return out

    def describe(self, limit: int = 6) -> str:
        items = [f"{'W' if a.is_write else 'R'} {a.size}B@{a.iova:#x}" for a in self.accesses[:limit]]
        more = len(self.accesses) - limit
        return ", ".join(items) + (f" (+{more} more)" if more > 0 else "") if items else "none"


def judge_exposures(verdict: Verdict, rid: str, watch: DmaWatch, q: int, kind_of: Callable[[int], str],
                    consumed: Sequence[tuple[int, int]] | None = None) -> int:
    """Judge ``rid`` (SPLIT-DEV-15) per chain kind on every used entry a used idx write of queue ``q`` exposed:
    its len written before that write, and (``consumed``: (id, len) the driver took per entry) holding the
    len the driver then read. Returns how many entries were exposed."""
    by_kind: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    exposures = watch.exposures(q)
    for e in exposures:
        kind = kind_of(e.entry)
        counts[kind] = counts.get(kind, 0) + 1
        bad = by_kind.setdefault(kind, [])
        where = f"used idx {e.old}->{e.value} (access #{e.published}) exposed entry {e.entry} in ring[{e.slot}]"
        if e.len_written is None:
            bad.append(f"{where} before any write of its len")
        elif consumed is not None and e.entry < len(consumed) and e.before[1] != consumed[e.entry][1]:
            bad.append(f"{where} while it held id/len {e.before}; the driver then read {consumed[e.entry]}")
    for kind, bad in sorted(by_kind.items()):
        verdict.check(rid, not bad, f"queue {q}, {kind}: {len(bad)} of {counts[kind]} used entries exposed before "
                                    "their len was written: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
    return len(exposures)


# --- guest memory snapshots and evidence text ------------------------------------------------------------


def snapshot(mem: GuestMemory) -> bytes:
    r = mem.regions[0]
    return mem.read(r.gpa, r.size)


def changed_outside(mem: GuestMemory, before: bytes, after: bytes,
                    allowed: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(gpa, length) runs whose bytes changed between the snapshots outside the ``allowed`` ranges."""
    base = mem.regions[0].gpa
    step = 4096
    runs: list[tuple[int, int]] = []
    b, a = memoryview(before), memoryview(after)
    for off in range(0, min(len(b), len(a)), step):
        if b[off:off + step] == a[off:off + step]:
            continue
        for i in range(off, min(off + step, len(b))):
            if b[i] == a[i]:
                continue
            gpa = base + i
            if any(s <= gpa < s + n for s, n in allowed):
                continue
            if runs and runs[-1][0] + runs[-1][1] == gpa:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((gpa, 1))
    return runs


def fmt_runs(runs: Sequence[tuple[int, int]], limit: int = 4) -> str:
    if not runs:
        return "nowhere"
    text = ", ".join(f"{gpa:#x}+{n}" for gpa, n in runs[:limit])
    return text + (f" (+{len(runs) - limit} more runs)" if len(runs) > limit else "")


def fmt_faults(faults: Sequence[DmaFault], limit: int = 4) -> str:
    if not faults:
        return "no DMA faults"
    text = "; ".join(str(f) for f in faults[:limit])
    return text + (f" (+{len(faults) - limit} more)" if len(faults) > limit else "")


def status_text(status: int) -> str:
    names = [s.name for s in DeviceStatus if s and status & s and s.name]
    return f"{status:#04x} ({'|'.join(names) or 'RESET'})"
