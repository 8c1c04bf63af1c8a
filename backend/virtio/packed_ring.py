"""Packed virtqueue wire format (2.8): descriptor ring, driver and device event suppression areas.

One module for both sides, in the style of :mod:`backend.virtio.split_ring`:
codecs on ``memoryview``/``bytes`` with precompiled ``struct`` objects and
batch unpacking, plus the wrap-counter arithmetic both sides must agree on.

Ownership of a descriptor is carried by two flag bits and a wrap counter each
side keeps (2.8.1): the driver makes a descriptor available by writing AVAIL
equal to its Driver Ring Wrap Counter and USED to the inverse; the device
marks it used by writing both bits equal to its Device Ring Wrap Counter.
Both counters start at 1 over an all-zero ring (PACKED-DEV-06), and each
flips when its side's index passes the last slot.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from backend.wire import FlagBit


class PackedDescFlags(IntFlag):
    """``flags`` of a packed descriptor (2.8.13); NEXT/WRITE/INDIRECT as in the split ring."""

    NEXT = 1
    WRITE = 2
    INDIRECT = 4
    AVAIL = 1 << 7
    USED = 1 << 15


class EventFlags(IntEnum):
    """``desc_event_flags`` of an event suppression structure (2.8.10, RING_EVENT_FLAGS_*)."""

    ENABLE = 0  # notify on every event
    DISABLE = 1  # no notifications
    DESC = 2  # notify when the descriptor at desc_event_off/wrap is reached (VIRTIO_F_EVENT_IDX only)


#: struct pvirtq_desc: le64 addr, le32 len, le16 id, le16 flags.
DESC = struct.Struct("<QIHH")
DESC_SIZE = 16
#: Alignment of each part (PACKED-DRV-01): descriptor ring 16, each event suppression area 4.
DESC_ALIGN = 16
EVENT_ALIGN = 4
#: struct pvirtq_event_suppress: le16 desc (desc_event_off:15, desc_event_wrap:1), le16 flags (desc_event_flags:2).
EVENT = struct.Struct("<HH")
EVENT_SIZE = 4
EVENT_OFF_WRAP = 0  # byte offset of the desc field inside the structure
EVENT_FLAGS = 2  # byte offset of the flags field
EVENT_FLAGS_MASK = 0x3
WRAP_BIT = 15  # desc_event_wrap / next_wrap sit above a 15-bit offset
OFF_MASK = 0x7FFF
#: Offset of the flags field inside a descriptor (the one store that hands a descriptor over, PACKED-DRV-16).
DESC_FLAGS_OFFSET = 14
DESC_ID_OFFSET = 12
U16 = struct.Struct("<H")
#: Packed rings take any size from 1 to 32768, powers of two or not (2.8, PCI-DEV-26 applies to split only).
MAX_QUEUE_SIZE = 32768

_AVAIL = int(PackedDescFlags.AVAIL)
_USED = int(PackedDescFlags.USED)
_OWNER = _AVAIL | _USED


def avail_bits(wrap: int) -> int:
    """AVAIL/USED bits a driver writes to make a descriptor available with its wrap counter ``wrap`` (2.8.1)."""
    return _AVAIL if wrap else _USED


def used_bits(wrap: int) -> int:
    """AVAIL/USED bits a device writes to mark a descriptor used with its wrap counter ``wrap`` (2.8.1)."""
    return _OWNER if wrap else 0


def is_avail(flags: int, wrap: int) -> bool:
    """The descriptor is available for the driver wrap counter ``wrap``: AVAIL == wrap and USED != wrap."""
    return flags & _OWNER == avail_bits(wrap)


def is_used(flags: int, wrap: int) -> bool:
    """The descriptor is used for the device wrap counter ``wrap``: AVAIL == USED == wrap."""
    return flags & _OWNER == used_bits(wrap)


@dataclass(frozen=True, slots=True)
class PackedDescriptor:
    addr: int
    len: int
    id: int
    flags: int

    def pack(self) -> bytes:
        return DESC.pack(self.addr, self.len, self.id, self.flags)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> PackedDescriptor:
        return cls(*DESC.unpack_from(raw, offset))

    has_next = FlagBit(PackedDescFlags.NEXT)
    is_write = FlagBit(PackedDescFlags.WRITE)
    is_indirect = FlagBit(PackedDescFlags.INDIRECT)

    def is_avail(self, wrap: int) -> bool:
        return is_avail(self.flags, wrap)

    def is_used(self, wrap: int) -> bool:
        return is_used(self.flags, wrap)


def unpack_ring(raw: bytes | memoryview) -> list[PackedDescriptor]:
    """Decode a run of packed descriptors (a window of the ring, or an indirect table) in one pass."""
    return [PackedDescriptor(*t) for t in DESC.iter_unpack(raw)]


def pack_ring(descs: Iterable[PackedDescriptor]) -> bytes:
    """Encode descriptors back to back (the inverse of :func:`unpack_ring`)."""
    return b"".join(DESC.pack(d.addr, d.len, d.id, d.flags) for d in descs)


def pack_off_wrap(off: int, wrap: int) -> int:
    """The 16-bit desc field of an event suppression structure: offset in bits 0-14, wrap counter in bit 15."""
    if not 0 <= off <= OFF_MASK:
        raise ValueError(f"desc_event_off {off} does not fit 15 bits")
    return off | (wrap & 1) << WRAP_BIT


def unpack_off_wrap(value: int) -> tuple[int, int]:
    """(desc_event_off, desc_event_wrap) of a 16-bit desc field."""
    return value & OFF_MASK, value >> WRAP_BIT & 1


@dataclass(frozen=True, slots=True)
class EventSuppress:
    """struct pvirtq_event_suppress (2.8.14): where (``off``/``wrap``) and whether (``flags``) to notify.

    The driver's area tells the device about used buffer notifications, the device's area tells the driver
    about available buffer notifications. ``reserved`` holds bits 2-15 of the flags word as read.
    """

    off: int = 0
    wrap: int = 0
    flags: int = EventFlags.ENABLE
    reserved: int = 0

    def pack(self) -> bytes:
        return EVENT.pack(pack_off_wrap(self.off, self.wrap), (self.flags & EVENT_FLAGS_MASK) | self.reserved << 2)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> EventSuppress:
        desc, flags = EVENT.unpack_from(raw, offset)
        off, wrap = unpack_off_wrap(desc)
        return cls(off, wrap, flags & EVENT_FLAGS_MASK, flags >> 2)


def unpack_events(raw: bytes | memoryview) -> list[EventSuppress]:
    """Decode back-to-back event suppression structures (a trace of them, or both areas side by side)."""
    return [EventSuppress(d & OFF_MASK, d >> WRAP_BIT, f & EVENT_FLAGS_MASK, f >> 2) for d, f in EVENT.iter_unpack(raw)]


@dataclass(frozen=True)
class PackedLayout:
    """Byte sizes of the three parts of a packed ring of ``size`` entries (2.8.10)."""

    size: int

    @property
    def desc_bytes(self) -> int:
        return DESC_SIZE * self.size

    driver_event_bytes = EVENT_SIZE
    device_event_bytes = EVENT_SIZE

    def desc_entry(self, slot: int) -> int:
        return DESC_SIZE * (slot % self.size)

    def desc_flags(self, slot: int) -> int:
        return DESC_SIZE * (slot % self.size) + DESC_FLAGS_OFFSET


def is_valid_packed_size(size: int) -> bool:
    """Packed ring sizes are 1..32768, any value (2.8)."""
    return 0 < size <= MAX_QUEUE_SIZE


def advance(off: int, wrap: int, n: int, size: int) -> tuple[int, int]:
    """Ring position ``off`` with wrap counter ``wrap`` moved on by ``n`` slots (0 <= n <= size): the counter
    flips each time the position passes the last slot (2.8.1)."""
    off += n
    if off >= size:
        off -= size
        wrap ^= 1
    return off, wrap


def linear(off: int, wrap: int, size: int) -> int:
    """A position and its wrap counter as one count modulo 2 * size: wrap 1 (the start) is the first lap."""
    return off if wrap else off + size


def packed_need_event(event_off: int, event_wrap: int, new_off: int, new_wrap: int, count: int, size: int) -> bool:
    """True when the slot ``event_off``/``event_wrap`` lies among the ``count`` slots just before
    ``new_off``/``new_wrap`` (2.8.10, RING_EVENT_FLAGS_DESC): the packed form of vring_need_event, counting
    positions modulo 2 * size so that one lap around the ring is never mistaken for none."""
    lap = 2 * size
    new = linear(new_off, new_wrap, size)
    event = linear(event_off, event_wrap, size)
    return (new - event - 1) % lap < count


def notification_data(vq_index: int, next_off: int, next_wrap: int) -> int:
    """32-bit notification with VIRTIO_F_NOTIFICATION_DATA on a packed ring (2.9, PACKED-DRV-04): next_off is
    the offset of the first descriptor not yet made available, next_wrap the driver wrap counter there."""
    return (vq_index & 0xFFFF) | (next_off & OFF_MASK) << 16 | (next_wrap & 1) << 31


def decode_notification_data(value: int) -> tuple[int, int, int]:
    """(vq_index, next_off, next_wrap) of a 32-bit notification."""
    return value & 0xFFFF, value >> 16 & OFF_MASK, value >> 31 & 1


__all__ = [
    "DESC", "DESC_ALIGN", "DESC_FLAGS_OFFSET", "DESC_ID_OFFSET", "DESC_SIZE", "EVENT", "EVENT_ALIGN",
    "EVENT_FLAGS", "EVENT_FLAGS_MASK", "EVENT_OFF_WRAP", "EVENT_SIZE", "MAX_QUEUE_SIZE", "OFF_MASK", "U16",
    "WRAP_BIT", "EventFlags", "EventSuppress", "PackedDescFlags", "PackedDescriptor", "PackedLayout", "advance",
    "avail_bits", "decode_notification_data", "is_avail", "is_used", "is_valid_packed_size", "linear",
    "notification_data", "pack_off_wrap", "pack_ring", "packed_need_event", "unpack_events", "unpack_off_wrap",
    "unpack_ring", "used_bits",
]
