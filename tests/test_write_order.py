"""PACKED-DRV-16 replay (testbenches/conformance/write_order.py): the bench's packed driver hands every list over
with the head's flags stored alone after its body, across laps; a driver storing a head whole, or its flags over a
stale body, is caught with the slot named."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.virtio.packed_ring import DESC, DESC_SIZE, PackedDescFlags, avail_bits, used_bits
from sim.memory import Allocator, GuestMemory
from testbenches.conformance.write_order import RecordingMemory, flag_order_breaches
from testbenches.driver.layout import PackedDriverRing

BASE = 0x100000
SIZE = 5


@pytest.fixture
def mem() -> Iterator[RecordingMemory]:
    m = RecordingMemory()
    try:
        m.add_region(BASE, 1 << 20)
        yield m
    finally:
        m.close()


def _device_uses_all(mem: RecordingMemory, ring: PackedDriverRing) -> None:
    """What a device does, stored past the log (a device writes through its own mapping): every buffer in flight
    used in order, one used descriptor each."""
    while ring.in_flight:
        buffer_id = next(iter(ring._inflight))
        GuestMemory.write(mem, ring.desc_addr + DESC_SIZE * ring.next_used,
                          DESC.pack(0, 0, buffer_id, used_bits(ring.used_wrap)))
        ring.used()


def test_the_bench_driver_hands_lists_over_in_order(mem: RecordingMemory) -> None:
    ring = PackedDriverRing(mem, Allocator(BASE, 1 << 20), SIZE, index=1)
    for k in range(12):  # lists of two across the ring's end, over several laps
        ring.add([bytes(12), bytes(60 + k)], [])
        _device_uses_all(mem, ring)
    got = flag_order_breaches(mem.stores, ring.desc_addr, SIZE)
    assert got.heads == 12 and got.breaches == []


def test_a_head_stored_whole_or_over_a_stale_body_is_caught(mem: RecordingMemory) -> None:
    ring = PackedDriverRing(mem, Allocator(BASE, 1 << 20), SIZE, index=1)
    ring.add([bytes(12)], [])  # slot 0, as it should be
    _device_uses_all(mem, ring)
    # Slot 1: the head descriptor stored in one 16-byte store, flags and all.
    mem.write(ring.desc_addr + DESC_SIZE, DESC.pack(0x2000, 12, 0, avail_bits(1)))
    # Slot 2: flags alone, but addr/len/id never stored for this hand-over.
    mem.write(ring.desc_addr + 2 * DESC_SIZE + 14, int(avail_bits(1)).to_bytes(2, "little"))
    got = flag_order_breaches(mem.stores, ring.desc_addr, SIZE)
    assert got.heads == 3
    assert len(got.breaches) == 2
    assert "head slot 1" in got.breaches[0] and "one 16-byte store" in got.breaches[0]
    assert "head slot 2" in got.breaches[1] and "not stored since" in got.breaches[1]


def test_a_list_running_past_the_ring_is_reported(mem: RecordingMemory) -> None:
    """Every slot says NEXT and the head is handed over last: the walk runs out of ring (PACKED-DRV-06/07)."""
    ring = PackedDriverRing(mem, Allocator(BASE, 1 << 20), SIZE, index=1)
    nxt = int(PackedDescFlags.NEXT)
    for slot in range(1, SIZE):
        mem.write(ring.desc_addr + DESC_SIZE * slot, DESC.pack(0x2000, 4, 0, nxt | avail_bits(1)))
    mem.write(ring.desc_addr, DESC.pack(0x2000, 4, 0, 0)[:14])
    mem.write(ring.desc_addr + 14, int(nxt | avail_bits(1)).to_bytes(2, "little"))
    got = flag_order_breaches(mem.stores, ring.desc_addr, SIZE)
    assert got.heads == 1 and got.breaches == [] and got.lengths == [SIZE]
    assert len(got.overlong) == 1 and "slot 0" in got.overlong[0]
