"""DriverSplitQueue against a hand-written device-side reader (raw offsets of 2.7, not the shared layout)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from backend.virtio.split_ring import Descriptor
from sim.memory import Allocator, GuestMemory
from testbenches.driver.split_ring import DriverQueueError, DriverSplitQueue, QueueFull

MEM = 1 << 20


class HandDevice:
    """Just enough of a device: walks chains (direct or one indirect level) and fills used entries."""

    def __init__(self, mem: GuestMemory, q: DriverSplitQueue) -> None:
        self.mem, self.q = mem, q
        self.size = q.size
        self.last_avail = q.avail_idx
        self.used_idx = q.last_used

    def u16(self, gpa: int) -> int:
        return int(struct.unpack("<H", self.mem.read(gpa, 2))[0])

    def desc(self, table: int, i: int) -> tuple[int, int, int, int]:
        addr, length, flags, nxt = struct.unpack("<QIHH", self.mem.read(table + 16 * i, 16))
        return addr, length, flags, nxt

    def chain(self, head: int) -> Iterator[tuple[int, int, bool]]:
        addr, length, flags, nxt = self.desc(self.q.desc_addr, head)
        if flags & 4:
            assert not flags & 1, "INDIRECT with NEXT"
            table, i = addr, 0
            while True:
                a, n, f, nx = self.desc(table, i)
                assert not f & 4, "nested indirect"
                yield a, n, bool(f & 2)
                if not f & 1:
                    return
                i = nx
        seen = set()
        while True:
            assert head not in seen, "loop"
            seen.add(head)
            yield addr, length, bool(flags & 2)
            if not flags & 1:
                return
            head = nxt
            addr, length, flags, nxt = self.desc(self.q.desc_addr, head)

    def process(self, reply: bytes = b"") -> list[bytes]:
        """Consume every available buffer: record its readable bytes, write ``reply`` into its writable part."""
        got = []
        avail_idx = self.u16(self.q.avail_addr + 2)
        while self.last_avail != avail_idx:
            head = self.u16(self.q.avail_addr + 4 + 2 * (self.last_avail % self.size))
            self.last_avail = (self.last_avail + 1) & 0xFFFF
            readable, written, seen_write = b"", 0, False
            for addr, length, w in self.chain(head):
                if w:
                    seen_write = True
                    piece = reply[written:written + length]
                    self.mem.write(addr, piece)
                    written += len(piece)
                else:
                    assert not seen_write, "readable after writable"
                    readable += self.mem.read(addr, length)
            got.append(readable)
            slot = self.used_idx % self.size
            self.mem.write(self.q.used_addr + 4 + 8 * slot, struct.pack("<II", head, written))
            self.used_idx = (self.used_idx + 1) & 0xFFFF
            self.mem.write(self.q.used_addr + 2, struct.pack("<H", self.used_idx))
        return got


@pytest.fixture
def ring() -> Iterator[tuple[GuestMemory, DriverSplitQueue]]:
    with GuestMemory.single(MEM) as mem:
        yield mem, DriverSplitQueue(mem, Allocator(0x1000, MEM - 0x1000), 8)


def test_alignment_and_zeroed(ring: tuple[GuestMemory, DriverSplitQueue]) -> None:
    mem, q = ring
    assert q.desc_addr % 16 == 0 and q.avail_addr % 2 == 0 and q.used_addr % 4 == 0
    assert mem.read(q.used_addr, 6 + 8 * 8) == bytes(6 + 8 * 8)


@pytest.mark.parametrize("indirect", [False, True])
def test_round_trip(ring: tuple[GuestMemory, DriverSplitQueue], indirect: bool) -> None:
    mem, q = ring
    dev = HandDevice(mem, q)
    head = q.add([b"hello ", b"world"], [4, 8], indirect=indirect, token="t")
    assert q.used() == []  # nothing visible before publish
    assert dev.process() == []
    assert q.publish() is True  # used.flags 0: notify
    assert dev.process(reply=b"0123456789abcdef") == [b"hello world"]
    (u,) = q.used()
    assert (u.head, u.len, u.data, u.token) == (head, 12, b"0123456789ab", "t")
    assert q.num_free == 8 and q.in_flight == 0


def test_data_past_len_is_ignored(ring: tuple[GuestMemory, DriverSplitQueue]) -> None:
    mem, q = ring
    dev = HandDevice(mem, q)
    q.add([], [16])
    q.publish()
    dev.process(reply=b"abc")
    (u,) = q.used()
    assert u.data == b"abc"


def test_wrap_of_16_bit_indices(ring: tuple[GuestMemory, DriverSplitQueue]) -> None:
    mem, q = ring
    start = 0xFFFF - 5
    q.avail_idx = q.published = q.last_used = start
    mem.write(q.used_addr + 2, struct.pack("<H", start))
    dev = HandDevice(mem, q)
    for i in range(40):
        q.add([bytes([i])], [1])
        q.add([bytes([i + 100])], [1])
        q.publish()
        assert dev.process(reply=b"x") == [bytes([i]), bytes([i + 100])]
        assert [u.data for u in q.used()] == [b"x", b"x"]
    assert q.avail_idx == (start + 80) & 0xFFFF == q.last_used


def test_queue_full_and_free_list(ring: tuple[GuestMemory, DriverSplitQueue]) -> None:
    mem, q = ring
    dev = HandDevice(mem, q)
    for _ in range(4):
        q.add([b"a"], [1])
    with pytest.raises(QueueFull):
        q.add([b"b"], [])
    q.publish()
    dev.process()
    assert len(q.used()) == 4 and q.num_free == 8


def test_notification_suppression_without_event_idx(ring: tuple[GuestMemory, DriverSplitQueue]) -> None:
    mem, q = ring
    mem.write(q.used_addr, struct.pack("<H", 1))  # device: VRING_USED_F_NO_NOTIFY
    q.add([b"a"], [])
    assert q.publish() is False
    mem.write(q.used_addr + 4 + 8 * 8, struct.pack("<H", 0))  # avail_event is disregarded
    q.add([b"a"], [])
    assert q.publish() is False
    assert q.publish() is False  # nothing new
    q.set_no_interrupt(True)
    assert struct.unpack("<H", mem.read(q.avail_addr, 2))[0] == 1


def test_event_idx() -> None:
    with GuestMemory.single(MEM) as mem:
        q = DriverSplitQueue(mem, Allocator(0x1000, MEM - 0x1000), 8, event_idx=True)
        dev = HandDevice(mem, q)
        mem.write(q.used_addr, struct.pack("<H", 1))  # used.flags is ignored under EVENT_IDX
        mem.write(q.used_addr + 4 + 8 * 8, struct.pack("<H", 0))  # avail_event = 0
        q.add([b"a"], [])
        assert q.publish() is True  # idx 0 -> 1 crosses avail_event 0
        q.add([b"b"], [])
        assert q.publish() is False  # 1 -> 2 does not
        mem.write(q.used_addr + 4 + 8 * 8, struct.pack("<H", 3))
        q.add([b"c"], [])
        q.add([b"d"], [])
        assert q.publish() is True  # 2 -> 4 crosses 3
        dev.process()
        assert len(q.used()) == 4
        used_event = struct.unpack("<H", mem.read(q.avail_addr + 4 + 2 * 8, 2))[0]
        assert used_event == 4  # next interrupt wanted at the next entry
        with pytest.raises(ValueError):
            q.set_no_interrupt(True)


def test_hostile_writes_and_bad_used_id(ring: tuple[GuestMemory, DriverSplitQueue]) -> None:
    mem, q = ring
    dev = HandDevice(mem, q)
    # a loop: 0 -> 1 -> 0
    q.add_raw({0: Descriptor(0x2000, 4, 1, 1), 1: Descriptor(0x2000, 4, 1, 0)}, head=0)
    q.publish()
    with pytest.raises(AssertionError, match="loop"):
        dev.process()
    table = q.write_indirect([Descriptor(0x2000, 4, 4, 0)])
    q.write_desc(5, Descriptor(table, 16, 4, 0))
    assert q.read_desc(5).is_indirect
    # the device reports a head that is not in flight
    mem.write(q.used_addr + 4, struct.pack("<II", 7, 0))
    mem.write(q.used_addr + 2, struct.pack("<H", 1))
    with pytest.raises(DriverQueueError, match="not the head"):
        q.used()
