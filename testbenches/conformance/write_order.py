"""The order of a driver's stores into a packed descriptor ring (PACKED-DRV-16), read from its own guest memory.

:class:`RecordingMemory` is guest memory that keeps every store the driver side makes through it, in program
order (a device writes through its own mapping, so only the driver's stores are seen). :func:`flag_order_breaches`
replays them over a packed ring: a list is handed over by the flags of its head descriptor, so those flags must be
stored alone, after addr/len/id of that descriptor (2.8.21.1.1: a barrier between them); a store that writes the
head's body and flags at once, or flags over a body not written since the slot was last handed over, breaches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from backend.virtio.packed_ring import DESC_FLAGS_OFFSET, DESC_SIZE, U16, PackedDescFlags, advance, is_avail
from sim.memory import GuestMemory

_NEXT = int(PackedDescFlags.NEXT)


class RecordingMemory(GuestMemory):
    """Guest memory that records each store (gpa, bytes) made through :meth:`write`, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.stores: list[tuple[int, bytes]] = []

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.stores.append((gpa, bytes(data)))
        super().write(gpa, data)


@dataclass
class FlagOrder:
    """What the replay found on one ring: lists handed over (head flag stores) and the breaches among them."""

    heads: int
    breaches: list[str]
    #: Descriptors in each list handed over, walked along NEXT (at most the ring's size).
    lengths: list[int] = field(default_factory=list)
    #: Lists whose NEXT chain went on past the ring's size (a list longer than the queue: PACKED-DRV-06/07).
    overlong: list[str] = field(default_factory=list)


def flag_order_breaches(stores: Sequence[tuple[int, bytes]], desc_addr: int, size: int) -> FlagOrder:
    """Replay ``stores`` over the packed descriptor ring of ``size`` slots at ``desc_addr``.

    The replay follows the driver's position (next slot, Driver Ring Wrap Counter) as a device would: a store of
    flags making the slot there available hands a list over; it must store the flags alone, after a store of that
    slot's addr/len/id since its flags were last stored. The list's length is then walked along NEXT (its tail
    is in place by now) and the position moves past it. A store of the whole ring (its zeroing) starts over."""
    end = desc_addr + DESC_SIZE * size
    shadow = bytearray(DESC_SIZE * size)
    body_fresh = [False] * size
    pos, wrap = 0, 1
    out = FlagOrder(0, [])
    for n, (gpa, data) in enumerate(stores):
        lo, hi = max(gpa, desc_addr), min(gpa + len(data), end)
        if lo >= hi:
            continue
        shadow[lo - desc_addr:hi - desc_addr] = data[lo - gpa:hi - gpa]
        if lo == desc_addr and hi == end:
            body_fresh = [False] * size
            pos, wrap = 0, 1
            continue
        for slot in range((lo - desc_addr) // DESC_SIZE, (hi - 1 - desc_addr) // DESC_SIZE + 1):
            base = desc_addr + DESC_SIZE * slot
            body = lo < base + DESC_FLAGS_OFFSET and hi > base
            if not (lo < base + DESC_SIZE and hi > base + DESC_FLAGS_OFFSET):
                body_fresh[slot] |= body
                continue
            flags = _flags(shadow, slot)
            if slot == pos and is_avail(flags, wrap):
                out.heads += 1
                if body:
                    out.breaches.append(f"store #{n}: head slot {slot}: addr/len/id and flags {flags:#06x} in one "
                                    f"{len(data)}-byte store (no barrier can separate them)")
                elif not body_fresh[slot]:
                    out.breaches.append(f"store #{n}: head slot {slot}: flags {flags:#06x} stored, addr/len/id not "
                                    "stored since the slot was last handed over")
                length = 1
                while length < size and _flags(shadow, (slot + length - 1) % size) & _NEXT:
                    length += 1
                out.lengths.append(length)
                if _flags(shadow, (slot + length - 1) % size) & _NEXT:
                    out.overlong.append(f"store #{n}: the list at slot {slot} still says NEXT after {size} "
                                        "descriptors (longer than the queue)")
                pos, wrap = advance(pos, wrap, length, size)
            body_fresh[slot] = False
    return out


def _flags(shadow: bytearray, slot: int) -> int:
    off = DESC_SIZE * slot + DESC_FLAGS_OFFSET
    value: int = U16.unpack(shadow[off:off + 2])[0]
    return value


__all__ = ["FlagOrder", "RecordingMemory", "flag_order_breaches"]
