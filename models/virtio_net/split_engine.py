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

For throughput, a window of available chains can be decoded at once
(:meth:`SplitQueue.plain_chains`, numpy over one read of the descriptor
table): chains of one or two plain descriptors are recognised in bulk and
everything else is left to :meth:`SplitQueue.parse_chain`, which keeps every
check. The bulk path needs a :class:`BatchDma` and the stock
:meth:`RingHooks.chain_continues`; a variant overriding that gets
:meth:`parse_chain` for every chain.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

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

#: numpy view of the descriptor layout (DESC), for decoding a window of descriptors in one go.
DESC_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])

#: With VIRTIO_F_IN_ORDER chains are contiguous (SPLIT-DRV-05), so this many descriptors are fetched per DMA read.
IN_ORDER_DESC_WINDOW = 8
_MAX_CHAIN_BYTES = 1 << 32


class Dma(Protocol):
    """Device-initiated memory access; raises ``DmaFaultError`` for anything the IOMMU refuses."""

    def read(self, iova: int, n: int) -> bytes: ...

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None: ...


@runtime_checkable
class BatchDma(Dma, Protocol):
    """A :class:`Dma` that also moves many ranges per call; each range is IOMMU-checked, and a batch stops
    before the first range outside the maps (left for ``read``/``write``, which record the fault)."""

    def read_u16(self, iova: int) -> int:
        """One aligned 16-bit load (ring indexes the other side updates concurrently)."""
        ...

    def write_u16(self, iova: int, value: int) -> None:
        """One aligned 16-bit store."""
        ...

    def try_view(self, iova: int, n: int) -> memoryview | None: ...

    def generation(self) -> int | None:
        """Changes with every map and unmap; None while arrays over guest memory must not be used at all (bus
        mastering off, or every access must be observed): then only the checked calls move data."""
        ...

    def mapping_bytes(self, iova: int, n: int, write: bool) -> tuple[NDArray[np.uint8], int, int] | None:
        """The bytes of the one mapping holding the range with the permission, its first IOVA and its last
        byte's (valid for this :meth:`generation`); None when no one mapping holds it or every access must be
        observed."""
        ...

    def gather(self, iovas: NDArray[np.uint64],
               sizes: NDArray[np.uint64] | int) -> tuple[NDArray[np.uint8], int]: ...

    def scatter(self, iovas: NDArray[np.uint64], sizes: NDArray[np.uint64], data: NDArray[np.uint8]) -> int: ...


_FENCE = threading.Lock()


def full_barrier() -> None:
    """Order a store to guest memory before a later load (the smp_mb() of the notification handshakes).

    Taking a lock is a locked instruction, which x86 never reorders with either side.
    """
    with _FENCE:
        pass


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


@dataclass(slots=True)
class PlainChains:
    """A window of available chains decoded in bulk.

    Where ``plain`` is True (everywhere when it is None) the chain is one descriptor (``addr0``/``len0``)
    or, where ``two`` is True (nowhere when it is None), that one linked to a second (``addr1``/``len1``);
    no INDIRECT, all of the requested direction. The other chains are for :meth:`SplitQueue.parse_chain`.
    """

    count: int
    plain: NDArray[np.bool_] | None
    two: NDArray[np.bool_] | None
    addr0: NDArray[np.uint64]
    len0: NDArray[np.uint64]
    addr1: NDArray[np.uint64] | None = None
    len1: NDArray[np.uint64] | None = None

    def prefix(self, ok: NDArray[np.bool_] | None = None) -> int:
        """How many leading chains are plain (and ``ok``)."""
        good = self.plain if ok is None else ok if self.plain is None else self.plain & ok
        if good is None:
            return self.count
        bad = np.flatnonzero(~good)
        return int(bad[0]) if len(bad) else self.count

    @property
    def room(self) -> NDArray[np.uint64]:
        """Bytes in each chain."""
        return self.len0 if self.len1 is None else self.len0 + self.len1


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


class VirtQueue:
    """What a queue of either layout has: the fields the common configuration structure exposes for it (``size``,
    ``desc``, ``driver``, ``device``, ``msix_vector``, ``enabled``), the ring features frozen when it goes live, and
    the 16-bit ring fields the driver may change meanwhile (split ring indexes, packed descriptor flags), read and
    written with one 16-bit load or store where the DMA offers it. A layout adds its progress to :meth:`reset`."""

    def __init__(self, index: int, max_size: int, dma: Dma) -> None:
        self.index = index
        self.max_size = max_size
        self.dma = dma
        self.notify_off = index
        self.batch_dma: BatchDma | None = dma if isinstance(dma, BatchDma) else None
        self.reset()

    def reset(self) -> None:
        """Back to the power-on defaults of the queue's configuration (2.6.1); RESET-DEV-04 for its progress."""
        self.size = self.max_size
        self.desc = 0
        self.driver = 0
        self.device = 0
        self.msix_vector = 0xFFFF
        self.enabled = False
        self.event_idx = False
        self.indirect = False
        self.in_order = False
        # Arrays over guest memory go with the reset: held, they would keep an unmapped region's file open.
        self._read_areas: list[_Area] = []
        self._write_areas: list[_Area] = []
        #: What a device's bulk path keeps over this queue's ring between service calls (dropped likewise).
        self.bulk_state: object | None = None

    def activate(self, *, event_idx: bool, indirect: bool, in_order: bool) -> None:
        """Freeze the negotiated ring features when the queue goes live."""
        self.event_idx = event_idx
        self.indirect = indirect
        self.in_order = in_order

    def misaligned(self, req_id: str, driver_align: int, device_align: int) -> RingError | None:
        """The first ring area the driver programmed off its alignment (descriptors: DESC_ALIGN, 16 in both
        layouts), as a breach of ``req_id``."""
        for name, addr, align in (("queue_desc", self.desc, DESC_ALIGN), ("queue_driver", self.driver, driver_align),
                                  ("queue_device", self.device, device_align)):
            if addr % align:
                return RingError(req_id, f"queue {self.index}: {name} {addr:#x} is not {align}-byte aligned")
        return None

    def read_ring_u16(self, iova: int) -> int:
        """A 16-bit ring field in one load (the driver moves it meanwhile): from the words of its mapping while
        :meth:`_ring_area` has them, else through the checked access, which records any fault."""
        dma = self.batch_dma
        if dma is None:
            value: int = U16.unpack(self.dma.read(iova, 2))[0]
            return value
        area = self._ring_area(dma, iova, 2, self._read_areas, False)
        if area is None:
            return dma.read_u16(iova)
        return int(area[1].item((iova - area[2]) >> 1))

    def write_ring_u16(self, iova: int, value: int) -> None:
        """A 16-bit ring field in one store (indexes, flags: the driver never sees half of one), as
        :meth:`read_ring_u16` reads."""
        dma = self.batch_dma
        if dma is None:
            self.dma.write(iova, U16.pack(value & 0xFFFF))
            return
        area = self._ring_area(dma, iova, 2, self._write_areas, True)
        if area is None:
            dma.write_u16(iova, value & 0xFFFF)
        else:
            area[1][(iova - area[2]) >> 1] = value & 0xFFFF

    def write_ring(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        """Ring entries the device writes (used elements): straight into the mapping as :meth:`write_ring_u16` does."""
        dma = self.batch_dma
        area = None if dma is None else self._ring_area(dma, iova, len(data), self._write_areas, True)
        if area is None:
            self.dma.write(iova, data)
        else:
            off = iova - area[2]
            area[0][off:off + len(data)] = data

    def _ring_area(self, dma: BatchDma, iova: int, n: int, cache: list[_Area], write: bool) -> _Area | None:
        """The mapping holding ring fields [iova, iova + n), kept while the mappings' generation stays the same: a
        ring field is read or written a few times a round, and each checked access walks the endpoint and the
        IOMMU. None where only the checked access may be used (bus mastering off, observers attached, no one
        mapping with the permission holding the range, an odd address)."""
        gen = dma.generation()
        if gen is None or iova & 1 or n <= 0:
            return None
        for area in cache:
            if area[3] == gen and area[2] <= iova and iova + n - 1 <= area[4]:
                return area
        found = dma.mapping_bytes(iova, n, write)
        if found is None or found[1] & 1:
            return None
        mem, first, last = found
        area = (mem.data.cast("B"), mem[:(last - first + 1) & ~1].view("<u2"), first, gen, last)
        cache[:] = [a for a in cache if a[3] == gen][-(_AREAS_KEPT - 1):] + [area]
        return area


#: A mapping holding ring areas: its bytes, its 16-bit words, its first IOVA, the generation they are valid for and
#: its last byte's IOVA.
_Area = tuple[memoryview, NDArray[np.uint16], int, int, int]
#: Mappings a queue keeps per direction (its ring areas are usually in one, at most in three).
_AREAS_KEPT = 3


@dataclass(frozen=True)
class _RingFields:
    """A split ring's avail and used areas as words over guest memory, valid for ``key`` (the mappings'
    generation, queue_driver, queue_device, queue_size): ``avail`` the avail area's 16-bit words (flags, idx,
    ring, used_event), ``used`` the used area's (flags, idx, the elements, avail_event), ``used_elems`` the used
    elements as (id, len) pairs of 32-bit words."""

    key: tuple[int, int, int, int]
    avail: NDArray[np.uint16]
    used: NDArray[np.uint16]
    used_elems: NDArray[np.uint32]


class SplitQueue(VirtQueue):
    """One split virtqueue: configuration registers plus device progress.

    Configuration fields (``size``, ``desc``, ``driver``, ``device``,
    ``msix_vector``, ``enabled``) are what the common configuration structure
    exposes for this queue; ``last_avail_idx`` / ``used_idx`` are the device's
    private progress, reset with the queue (RESET-DEV-04).
    """

    def __init__(self, index: int, max_size: int, dma: Dma, hooks: RingHooks) -> None:
        if not is_valid_split_size(max_size):
            raise ValueError(f"queue {index}: maximum size {max_size} is not a power of two <= 32768")
        self.hooks = hooks
        # The bulk decoder follows NEXT itself, so a variant deciding that differently gets parse_chain.
        self.bulk_ok = type(hooks).chain_continues is RingHooks.chain_continues
        super().__init__(index, max_size, dma)

    def reset(self) -> None:
        """Back to the power-on defaults of the queue (2.6.1: indices and configuration)."""
        super().reset()
        self.last_avail_idx = 0
        self.used_idx = 0
        self.layout = SplitLayout(self.size)
        self._arrays: tuple[tuple[int, int, int, int], NDArray[np.uint16], NDArray[np.uint64]] | None = None
        self._frames: tuple[int, NDArray[np.uint8], np.uint64, np.uint64,
                            tuple[NDArray[np.uint8], np.uint64, np.uint64]] | None = None
        self._fields: _RingFields | None = None

    # --- configuration -----------------------------------------------------------------------

    def config_error(self) -> RingError | None:
        """Why the programmed configuration cannot be enabled (checked at queue_enable time)."""
        if not is_valid_split_size(self.size) or self.size > self.max_size:
            return RingError("PCI-DRV-17", f"queue {self.index}: queue_size {self.size} is not a power of two "
                                           f"<= {self.max_size}")
        return self.misaligned("SPLIT-DRV-01", AVAIL_ALIGN, USED_ALIGN)

    def activate(self, *, event_idx: bool, indirect: bool, in_order: bool) -> None:
        """Freeze the ring geometry and negotiated ring features when the queue goes live."""
        self.layout = SplitLayout(self.size)
        super().activate(event_idx=event_idx, indirect=indirect, in_order=in_order)

    # --- available ring ----------------------------------------------------------------------

    def ring_fields(self) -> _RingFields | None:
        """The avail and used areas as words over guest memory (:class:`_RingFields`), kept while the mappings and
        the ring addresses stay the same: the 16-bit fields are read or written several times a round, and each
        checked access finds its mapping again. None where only the checked accesses may be used (as for
        :meth:`_ring_area`: bus mastering off, observers attached, an area not inside one mapping with the
        permission it needs)."""
        dma = self.batch_dma
        if dma is None:
            return None
        gen = dma.generation()
        if gen is None:
            return None
        fields = self._fields
        if fields is not None and fields.key == (gen, self.driver, self.device, self.size):
            return fields
        self._fields = None
        lay = self.layout
        avail = dma.mapping_bytes(self.driver, lay.avail_bytes, False)
        used = dma.mapping_bytes(self.device, lay.used_bytes, True)
        if avail is None or used is None or self.driver & 1 or self.device & 3:
            return None
        mem, base, _ = avail
        avail_words = mem[self.driver - base:self.driver - base + lay.avail_bytes].view("<u2")
        mem, base, _ = used
        used_bytes = mem[self.device - base:self.device - base + lay.used_bytes]
        elems = used_bytes[SplitLayout.USED_RING:SplitLayout.USED_RING + USED_ELEM_SIZE * self.size]
        self._fields = _RingFields((gen, self.driver, self.device, self.size), avail_words, used_bytes.view("<u2"),
                                   elems.view("<u4").reshape(self.size, 2))
        return self._fields

    def read_avail_idx(self) -> int:
        fields = self.ring_fields()
        if fields is not None:
            return int(fields.avail.item(SplitLayout.AVAIL_IDX >> 1))
        return self.read_ring_u16(self.driver + SplitLayout.AVAIL_IDX)

    def read_avail_flags(self) -> int:
        fields = self.ring_fields()
        if fields is not None:
            return int(fields.avail.item(SplitLayout.AVAIL_FLAGS >> 1))
        return self.read_ring_u16(self.driver + SplitLayout.AVAIL_FLAGS)

    def read_used_event(self) -> int:
        fields = self.ring_fields()
        if fields is not None:
            return int(fields.avail.item(self.layout.used_event >> 1))
        return self.read_ring_u16(self.driver + self.layout.used_event)

    def write_avail_event(self, value: int) -> None:
        fields = self.ring_fields()
        if fields is not None:
            fields.used[self.layout.avail_event >> 1] = value & 0xFFFF
            return
        self.write_ring_u16(self.device + self.layout.avail_event, value)

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

    def peek_heads(self, n: int) -> NDArray[np.intp]:
        """:meth:`peek` as an array."""
        n = min(n, self.size)
        if n <= 0:
            return np.zeros(0, dtype=np.intp)
        start = self.last_avail_idx % self.size
        first = min(n, self.size - start)
        raw = self.dma.read(self.driver + SplitLayout.AVAIL_RING + 2 * start, 2 * first)
        if n > first:
            raw += self.dma.read(self.driver + SplitLayout.AVAIL_RING, 2 * (n - first))
        return np.frombuffer(raw, dtype="<u2").astype(np.intp)

    def consume(self, n: int = 1) -> None:
        self.last_avail_idx = (self.last_avail_idx + n) & 0xFFFF

    def write_used_flags(self, flags: int) -> None:
        """used.flags: VRING_USED_F_NO_NOTIFY or 0 (only without EVENT_IDX, SPLIT-DEV-18/19/20)."""
        fields = self.ring_fields()
        if fields is not None:
            fields.used[SplitLayout.USED_FLAGS >> 1] = flags & 0xFFFF
            return
        self.write_ring_u16(self.device + SplitLayout.USED_FLAGS, flags)

    # --- descriptor chains in bulk -----------------------------------------------------------

    def read_desc_table(self) -> NDArray[np.void] | None:
        """The descriptor table as one DMA read, or None when the bulk path is not available (no BatchDma,
        a NEXT hook of a variant, or a table not inside one readable mapping: then every access is exact)."""
        if self.batch_dma is None or not self.bulk_ok:
            return None
        view = self.batch_dma.try_view(self.desc, DESC_SIZE * self.size)
        if view is None:
            return None
        return np.frombuffer(view, dtype=DESC_DTYPE)

    def ring_arrays(self) -> tuple[int, NDArray[np.uint16], NDArray[np.uint64]] | None:
        """(the mappings' generation, the avail ring's entries, the descriptor table as (addr, len | flags << 32 |
        next << 48) words): arrays over guest memory kept while the mappings and the ring addresses stay the
        same; None when the bulk path is not available (as :meth:`read_desc_table`) or a ring is not inside
        one readable mapping."""
        dma = self.batch_dma
        if dma is None or not self.bulk_ok:
            return None
        gen = dma.generation()
        if gen is None:
            return None
        cached = self._arrays
        if cached is not None and cached[0] == (gen, self.desc, self.driver, self.size):
            return gen, cached[1], cached[2]
        self._arrays = None
        ring = self.driver + SplitLayout.AVAIL_RING
        avail = dma.mapping_bytes(ring, 2 * self.size, False)
        desc = dma.mapping_bytes(self.desc, DESC_SIZE * self.size, False)
        if avail is None or desc is None:
            return None
        mem, base, _ = avail
        entries = mem[ring - base:ring - base + 2 * self.size].view("<u2")
        mem, base, _ = desc
        words = mem[self.desc - base:self.desc - base + DESC_SIZE * self.size].view("<u8").reshape(self.size, 2)
        self._arrays = ((gen, self.desc, self.driver, self.size), entries, words)
        return gen, entries, words

    def frame_mapping(self, gen: int, iova: int | None) -> tuple[NDArray[np.uint8], np.uint64, np.uint64] | None:
        """The readable mapping holding ``iova`` as (bytes, first IOVA, last byte's IOVA), for mappings of
        generation ``gen`` (from :meth:`ring_arrays`); the last one found is kept, a driver's buffers are
        usually in one. ``iova`` None: the one kept, if still of generation ``gen``."""
        cached = self._frames
        if cached is not None and cached[0] == gen and (iova is None or cached[2] <= iova <= cached[3]):
            return cached[4]
        if iova is None:
            return None
        self._frames = None
        found = None if self.batch_dma is None else self.batch_dma.mapping_bytes(iova, 1, False)
        if found is None:
            return None
        mem, first, last = found
        mapping = (mem, np.uint64(first), np.uint64(last))
        self._frames = (gen, mem, mapping[1], mapping[2], mapping)
        return mapping

    def plain_chains(self, table: NDArray[np.void], heads: NDArray[np.intp], *, writable: bool) -> PlainChains:
        """Decode the chains at ``heads`` that need none of parse_chain's judgement.

        Plain: head < queue size; one descriptor, or one with NEXT to a second (index < queue size) without
        NEXT; no INDIRECT; all device-writable (``writable``) or all device-readable; at most
        max_chain_len descriptors and 2^32 bytes. Anything else, including every malformed chain, is not
        plain and goes through :meth:`parse_chain`.
        """
        size = self.size
        n = len(heads)
        limit = self.hooks.max_chain_len(size)
        want = int(DescFlags.WRITE) if writable else 0
        inside_all = int(heads.max()) < size
        d0 = table[heads if inside_all else np.where(heads < size, heads, 0)]
        f0 = d0["flags"]
        len0 = d0["len"].astype(np.uint64)
        addr0 = d0["addr"]
        single = f0 == want
        if inside_all and limit >= 1 and bool(single.all()):
            return PlainChains(n, None, None, addr0, len0)  # the usual burst: one descriptor each
        inside = heads < size
        single &= limit >= 1
        nxt = d0["next"].astype(np.intp)
        linked = (f0 == want | DescFlags.NEXT) & (nxt < size) & (limit >= 2)
        if not linked.any():
            return PlainChains(n, inside & single, None, addr0, len0)
        d1 = table[np.where(linked, nxt, 0)]
        zero = np.zeros(n, dtype=np.uint64)
        len1 = d1["len"].astype(np.uint64)
        two = linked & (d1["flags"] == want) & (len0 + len1 <= _MAX_CHAIN_BYTES)
        return PlainChains(n, inside & (single | two), two, addr0, len0, np.where(two, d1["addr"], zero),
                           np.where(two, len1, zero))

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
        fields = self.ring_fields()
        if fields is not None and len(elems) == 1:  # the one element of an in-order batch, or one chain
            head, length = elems[0]
            slot = (self.used_idx + n - 1) % self.size
            fields.used_elems[slot, 0] = head  # two scalar stores: a tuple into the row costs three times as much
            fields.used_elems[slot, 1] = length & 0xFFFFFFFF
            return self._publish_used_idx(fields, n)
        buf = bytearray(USED_ELEM_SIZE * len(elems))
        for i, (head, length) in enumerate(elems):
            USED_ELEM.pack_into(buf, USED_ELEM_SIZE * i, head, length & 0xFFFFFFFF)
        return self._publish_used(buf, len(elems), n)

    def push_used_array(self, ids: NDArray[np.integer], lens: NDArray[np.integer],
                        count: int | None = None) -> tuple[int, int]:
        """:meth:`push_used` for elements given as arrays of ids and lens (one write, two if the ring wraps)."""
        k = len(ids)
        n = k if count is None else count
        if n == 0:
            return self.used_idx, self.used_idx
        fields = self.ring_fields()
        if fields is not None:
            start = (self.used_idx + n - k) % self.size
            first = min(k, self.size - start)
            for at, lo, hi in ((start, 0, first), (0, first, k)):
                if hi > lo:
                    fields.used_elems[at:at + hi - lo, 0] = ids[lo:hi]
                    fields.used_elems[at:at + hi - lo, 1] = lens[lo:hi]  # a length beyond 32 bits keeps its low 32
            return self._publish_used_idx(fields, n)
        if k == 1:
            raw = USED_ELEM.pack(int(ids[0]), int(lens[0]) & 0xFFFFFFFF)
        else:
            elems = np.empty((k, 2), dtype="<u4")
            elems[:, 0] = ids
            elems[:, 1] = lens  # a length beyond 32 bits keeps its low 32, as push_used does
            raw = elems.tobytes()
        return self._publish_used(raw, k, n)

    def _publish_used(self, raw: bytes | bytearray, k: int, n: int) -> tuple[int, int]:
        """Write ``k`` packed elements ending at the slot of entry used_idx + n - 1, then used idx + n."""
        size = self.size
        start = (self.used_idx + n - k) % size
        first = min(k, size - start)
        mv = memoryview(raw)
        base = self.device + SplitLayout.USED_RING
        self.write_ring(base + USED_ELEM_SIZE * start, mv[:USED_ELEM_SIZE * first])
        if k > first:
            self.write_ring(base, mv[USED_ELEM_SIZE * first:])
        old = self.used_idx
        new = self.hooks.next_used_idx(old, n)
        self.write_ring_u16(self.device + SplitLayout.USED_IDX, new)
        self.used_idx = new
        return old, new

    def _publish_used_idx(self, fields: _RingFields, n: int) -> tuple[int, int]:
        """used idx + ``n`` through the words of :meth:`ring_fields`, after the elements written there
        (SPLIT-DEV-15: the stores are made in program order)."""
        old = self.used_idx
        new = self.hooks.next_used_idx(old, n)
        fields.used[SplitLayout.USED_IDX >> 1] = new & 0xFFFF
        self.used_idx = new
        return old, new

    def needs_notification(self, old_idx: int, new_idx: int) -> bool:
        return self.hooks.needs_notification(self, old_idx, new_idx)


__all__ = ["BatchDma", "Chain", "Dma", "PlainChains", "RingError", "RingHooks", "SplitQueue", "VirtQueue",
           "full_barrier"]
