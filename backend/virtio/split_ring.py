"""Split virtqueue wire format (2.7): descriptor table, available ring, used ring.

One module for both sides. Codecs work on ``memoryview``/``bytes`` with
precompiled ``struct`` objects and batch unpacking.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag

from backend.wire import FlagBit


class DescFlags(IntFlag):
    NEXT = 1
    WRITE = 2
    INDIRECT = 4


VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

DESC = struct.Struct("<QIHH")
DESC_SIZE = 16
DESC_ALIGN = 16
AVAIL_ALIGN = 2
USED_ALIGN = 4
USED_ELEM = struct.Struct("<II")
USED_ELEM_SIZE = 8
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
MAX_QUEUE_SIZE = 32768

@dataclass(frozen=True, slots=True)
class Descriptor:
    addr: int
    len: int
    flags: int
    next: int

    def pack(self) -> bytes:
        return DESC.pack(self.addr, self.len, self.flags, self.next)

    @classmethod
    def unpack(cls, raw: bytes | memoryview, offset: int = 0) -> Descriptor:
        return cls(*DESC.unpack_from(raw, offset))

    has_next = FlagBit(DescFlags.NEXT)
    is_write = FlagBit(DescFlags.WRITE)
    is_indirect = FlagBit(DescFlags.INDIRECT)


def unpack_table(raw: bytes | memoryview) -> list[Descriptor]:
    """Decode a whole descriptor table (or indirect table) in one pass."""
    return [Descriptor(*t) for t in DESC.iter_unpack(raw)]


@dataclass(frozen=True)
class SplitLayout:
    """Byte sizes and offsets of the three parts of a split ring of ``size`` entries (2.7)."""

    size: int

    @property
    def desc_bytes(self) -> int:
        return DESC_SIZE * self.size

    @property
    def avail_bytes(self) -> int:  # flags, idx, ring[size], used_event
        return 6 + 2 * self.size

    @property
    def used_bytes(self) -> int:  # flags, idx, ring[size], avail_event
        return 6 + USED_ELEM_SIZE * self.size

    # available ring offsets
    AVAIL_FLAGS = 0
    AVAIL_IDX = 2
    AVAIL_RING = 4

    def avail_ring_entry(self, slot: int) -> int:
        return 4 + 2 * (slot % self.size)

    @property
    def used_event(self) -> int:
        return 4 + 2 * self.size

    # used ring offsets
    USED_FLAGS = 0
    USED_IDX = 2
    USED_RING = 4

    def used_ring_entry(self, slot: int) -> int:
        return 4 + USED_ELEM_SIZE * (slot % self.size)

    @property
    def avail_event(self) -> int:
        return 4 + USED_ELEM_SIZE * self.size


def is_valid_split_size(size: int) -> bool:
    """Split ring sizes are powers of two up to 32768 (2.7)."""
    return 0 < size <= MAX_QUEUE_SIZE and size & (size - 1) == 0


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """True when ``event_idx`` lies in the window (old_idx, new_idx] modulo 2^16 (2.7.10)."""
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old_idx) & 0xFFFF
