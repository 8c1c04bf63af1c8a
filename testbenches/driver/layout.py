"""Either ring layout behind one driver-side interface: what a driver does alike on split and packed queues.

The guest net driver and the conformance rig add buffers, publish them, ring the doorbell and consume used
buffers without caring which layout VIRTIO_F_RING_PACKED chose at FEATURES_OK; :class:`DriverRing` is that
common part, :func:`new_ring` builds the queue of the negotiated layout. Layout-specific work (split used_event,
packed wrap counters, raw descriptor writes) stays on :class:`DriverSplitQueue` and :class:`DriverPackedQueue`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from backend.virtio.features import F, has
from backend.virtio.packed_ring import EVENT_SIZE
from sim.memory import Allocator, GuestMemory
from testbenches.driver.packed import DriverPackedQueue
from testbenches.driver.split_ring import DriverSplitQueue, UsedBuffer

Layout = Literal["split", "packed"]
#: Both layouts, split first (the layout every device has).
LAYOUTS: tuple[Layout, ...] = ("split", "packed")


class DriverRing(Protocol):
    """The calls the guest driver makes on a queue of either layout."""

    index: int
    size: int
    mem: GuestMemory
    alloc: Allocator

    @property
    def num_free(self) -> int: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def published(self) -> int: ...

    def add(self, out: Sequence[bytes], in_lens: Sequence[int], indirect: bool = False,
            token: object = None) -> int: ...

    def publish(self) -> bool: ...

    def used(self) -> list[UsedBuffer]: ...

    def alloc_buffer(self, data: bytes | int) -> int: ...

    def free_buffer(self, gpa: int) -> None: ...

    def close(self) -> None: ...


class PackedDriverRing(DriverPackedQueue):
    """A packed queue with the split queue's publish step: a list is the device's once its head flags are written
    (:meth:`add`), so publishing only decides whether to notify (the device event suppression structure)."""

    @property
    def published(self) -> int:
        """The avail position as the 16 bits a notification carries: next_off, and next_wrap in bit 15 (2.9)."""
        return self.next_avail | self.avail_wrap << 15

    def publish(self) -> bool:
        return self.kick_needed()


def layout_of(features: int) -> Layout:
    """The layout ``features`` (as negotiated) choose."""
    return "packed" if has(features, F.RING_PACKED) else "split"


def layout_features(features: int, layout: Layout) -> int:
    """``features`` with RING_PACKED set for ``layout`` "packed" and cleared for "split"."""
    if layout not in LAYOUTS:
        raise ValueError(f"ring layout {layout!r} (known: {', '.join(LAYOUTS)})")
    return features | 1 << F.RING_PACKED if layout == "packed" else features & ~(1 << F.RING_PACKED)


def ring_size(layout: Layout, wanted: int, limit: int) -> int:
    """The queue size a driver writes: at most the device's ``limit``; a power of two on split rings (PCI-DRV-17),
    any size on packed ones (PCI-DRV-16)."""
    size = min(wanted, limit)
    return size if layout == "packed" else 1 << (size.bit_length() - 1)


def default_allocator(mem: GuestMemory, alloc: Allocator | None = None) -> Allocator:
    """``alloc`` when given, else an allocator over the whole of ``mem``'s first region, where a driver that was not
    handed one places its rings and buffers."""
    if alloc is not None:
        return alloc
    region = mem.regions[0]
    return Allocator(region.gpa, region.size)


def new_ring(layout: Layout, mem: GuestMemory, alloc: Allocator, size: int, *, index: int, features: int
             ) -> DriverSplitQueue | PackedDriverRing:
    """The queue of ``layout`` for the negotiated ``features`` (EVENT_IDX; IN_ORDER completions on packed rings)."""
    event_idx = has(features, F.EVENT_IDX)
    if layout == "packed":
        return PackedDriverRing(mem, alloc, size, index=index, event_idx=event_idx, in_order=has(features, F.IN_ORDER))
    return DriverSplitQueue(mem, alloc, size, index=index, event_idx=event_idx)


def ring_addresses(ring: DriverSplitQueue | DriverPackedQueue) -> tuple[int, int, int]:
    """(descriptor area, driver area, device area) of either layout, as queue_desc/driver/device take them."""
    if isinstance(ring, DriverPackedQueue):
        return ring.desc_addr, ring.driver_addr, ring.device_addr
    return ring.desc_addr, ring.avail_addr, ring.used_addr


def ring_parts(ring: DriverSplitQueue | DriverPackedQueue) -> dict[str, tuple[int, int]]:
    """The ring's parts in guest memory by name, as (gpa, bytes)."""
    if isinstance(ring, DriverPackedQueue):
        return {"desc": (ring.desc_addr, ring.layout.desc_bytes), "driver": (ring.driver_addr, EVENT_SIZE),
                "device": (ring.device_addr, EVENT_SIZE)}
    return {"desc": (ring.desc_addr, ring.layout.desc_bytes), "avail": (ring.avail_addr, ring.layout.avail_bytes),
            "used": (ring.used_addr, ring.layout.used_bytes)}


def device_written_parts(ring: DriverSplitQueue | DriverPackedQueue) -> list[tuple[int, int]]:
    """The ring parts a device writes: the used ring (split); the descriptor ring, where used descriptors go, and
    the device event suppression structure (packed)."""
    parts = ring_parts(ring)
    return [parts["desc"], parts["device"]] if isinstance(ring, DriverPackedQueue) else [parts["used"]]


__all__ = ["LAYOUTS", "DriverRing", "Layout", "PackedDriverRing", "default_allocator", "device_written_parts",
           "layout_features",
           "layout_of", "new_ring", "ring_addresses", "ring_parts", "ring_size"]
