"""Packed-ring engine on its own: guest memory behind the Dma protocol, the driver side of testbenches.driver.packed."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.virtio.packed_ring import (
    DESC_FLAGS_OFFSET,
    DESC_SIZE,
    EventFlags,
    PackedDescFlags,
    PackedDescriptor,
    avail_bits,
    decode_notification_data,
    is_used,
    used_bits,
)
from models.virtio_net.packed_engine import PackedChain, PackedHooks, PackedQueue, UsedElem
from models.virtio_net.split_engine import RingError
from sim.memory import Allocator, GuestMemory
from testbenches.driver.packed import DriverPackedQueue

MEM = 4 << 20
NEXT, WRITE, INDIRECT = int(PackedDescFlags.NEXT), int(PackedDescFlags.WRITE), int(PackedDescFlags.INDIRECT)


class MemDma:
    """The engine's Dma over guest memory, recording every access (reads and writes in order)."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem
        self.writes: list[tuple[int, bytes]] = []

    def read(self, iova: int, n: int) -> bytes:
        assert iova >= 0 and iova + n <= MEM, "engine read outside memory"
        return self.mem.read(iova, n)

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        assert iova >= 0 and iova + len(data) <= MEM, "engine wrote outside memory"
        self.writes.append((iova, bytes(data)))
        self.mem.write(iova, data)


@dataclass
class Rig:
    mem: GuestMemory
    drv: DriverPackedQueue
    q: PackedQueue
    dma: MemDma


@contextmanager
def rig(size: int = 8, *, event_idx: bool = False, indirect: bool = True, in_order: bool = False,
        hooks: PackedHooks | None = None, auto_used_event: bool = True) -> Iterator[Rig]:
    with GuestMemory.single(MEM) as mem:
        drv = DriverPackedQueue(mem, Allocator(0x1000, MEM - 0x1000), size, event_idx=event_idx, in_order=in_order,
                                auto_used_event=auto_used_event)
        dma = MemDma(mem)
        q = PackedQueue(0, max(size, 1), dma, hooks or PackedHooks())
        q.size = size
        q.desc, q.driver, q.device = drv.desc_addr, drv.driver_addr, drv.device_addr
        assert q.config_error() is None
        q.activate(event_idx=event_idx, indirect=indirect, in_order=in_order)
        q.enabled = True
        yield Rig(mem, drv, q, dma)


def read_all(dma: MemDma, pieces: list[tuple[int, int]]) -> bytes:
    return b"".join(dma.read(a, n) for a, n in pieces)


def serve(r: Rig, chains: list[PackedChain], reply: Callable[[PackedChain], bytes]) -> list[UsedElem]:
    """Write ``reply(chain)`` into each chain's writable part; the used elements to push."""
    out = []
    for c in chains:
        data = reply(c)
        assert len(data) <= c.writable_len
        pos = 0
        for addr, n in c.writable:
            take = min(n, len(data) - pos)
            if take > 0:
                r.dma.write(addr, data[pos:pos + take])
            pos += take
        out.append(UsedElem(c.head, len(data), c.slots))
    return out


# --- directed --------------------------------------------------------------------------------------


def test_chain_readable_then_writable_and_used_back() -> None:
    with rig() as r:
        bid = r.drv.add([b"head", b"payload"], [6])
        assert r.q.head_available()
        [c] = r.q.peek_chains()
        assert c.head == bid and c.slots == 3 and c.ndesc == 3
        assert read_all(r.dma, c.readable) == b"headpayload" and c.writable_len == 6
        r.q.consume(c.slots)
        assert r.q.chain_at() is None
        old, new = r.q.push_used(serve(r, [c], lambda _: b"reply!"))
        assert (old, new) == ((0, 1), (3, 1))
        [u] = r.drv.used()
        assert (u.head, u.len, u.data) == (bid, 6, b"reply!")
        assert r.drv.num_free == 8 and not r.drv.anomalies


def test_indirect_list_and_write_flag_of_pointer_disregarded() -> None:
    with rig() as r:
        bid = r.drv.add([b"abc"], [4, 4], indirect=True)
        [c] = r.q.peek_chains()
        assert (c.head, c.slots, c.ndesc) == (bid, 1, 3)
        assert read_all(r.dma, c.readable) == b"abc" and c.writable_len == 8


def test_used_flags_are_the_last_store_and_first_of_batch_last() -> None:
    with rig() as r:
        for _ in range(3):
            r.drv.add([b"x"], [])
        chains = r.q.peek_chains()
        r.q.consume(sum(c.slots for c in chains))
        r.dma.writes.clear()
        r.q.push_used([UsedElem(c.head, 0, c.slots) for c in chains])
        flag_stores = [(a - r.q.desc) // DESC_SIZE for a, d in r.dma.writes if (a - r.q.desc) % DESC_SIZE == 14]
        assert flag_stores == [1, 2, 0]  # later slots first, the first slot's flags last (the batch at once)
        for k, (a, _) in enumerate(r.dma.writes):
            if (a - r.q.desc) % DESC_SIZE == 14:
                slot = (a - r.q.desc) // DESC_SIZE
                # the id and len of that slot were stored before its flags (PACKED-DEV-07)
                assert any(b - r.q.desc == DESC_SIZE * slot + 8 for b, _ in r.dma.writes[:k])


def test_in_order_batch_is_one_used_descriptor_with_the_last_id() -> None:
    with rig(event_idx=False, in_order=True) as r:
        ids = [r.drv.add([b"a" * 20], []), r.drv.add([b"b", b"c"], []), r.drv.add([b"d"], [])]
        chains = r.q.peek_chains()
        r.q.consume(sum(c.slots for c in chains))
        old, new = r.q.push_used([UsedElem(c.head, 0, c.slots) for c in chains], in_order_batch=True)
        assert (old, new) == ((0, 1), (4, 1))
        used_desc = r.drv.read_desc(0)
        assert used_desc.id == ids[-1] and is_used(used_desc.flags, 1)
        assert not is_used(r.drv.read_desc(1).flags, 1)  # the rest of the batch is skipped, not written
        assert [u.head for u in r.drv.used()] == ids


def test_wrap_counter_flips_at_the_end_of_a_ring_of_32768() -> None:
    size = 32768
    with rig(size) as r:
        # as after a first lap, every slot used, and both sides two slots before the end of it
        r.mem.write(r.drv.desc_addr, PackedDescriptor(0, 0, 0, used_bits(1)).pack() * size)
        for side in (r.drv, r.q):
            side.next_avail = side.next_used = size - 2
        r.drv.num_free = size
        bid = r.drv.add([b"a", b"b", b"c", b"d"], [])  # slots 32766, 32767, 0, 1: the wrap flips mid-list
        assert (r.drv.next_avail, r.drv.avail_wrap) == (2, 0)
        assert r.drv.read_desc(0).flags & 0x8080 == avail_bits(0)
        [c] = r.q.peek_chains()
        assert read_all(r.dma, c.readable) == b"abcd" and c.head == bid
        r.q.consume(c.slots)
        assert (r.q.next_avail, r.q.avail_wrap) == (2, 0)
        assert r.q.push_used([UsedElem(bid, 0, 4)])[1] == (2, 0)
        assert [u.head for u in r.drv.used()] == [bid]
        assert (r.drv.next_used, r.drv.used_wrap) == (2, 0)


@pytest.mark.parametrize("size", [1, 3, 5, 6, 7, 100, 255, 1000])
def test_sizes_that_are_not_powers_of_two(size: int) -> None:
    per = 2 if size >= 2 else 1  # a readable and a writable descriptor, or just the writable one
    n = 3 * size + 1
    with rig(size) as r:
        for lap in range(n):
            payload = bytes([lap % 256])
            bid = r.drv.add([payload] if per == 2 else [], [1])
            [c] = r.q.peek_chains()
            assert c.slots == per and read_all(r.dma, c.readable) == payload[:per - 1]
            r.q.consume(c.slots)
            r.dma.write(c.writable[0][0], payload)
            r.q.push_used([UsedElem(c.head, 1, c.slots)])
            [u] = r.drv.used()
            assert (u.head, u.data) == (bid, payload)
        laps = n * per // size
        assert r.q.used_wrap == r.drv.used_wrap == r.q.avail_wrap == 1 ^ laps % 2
        assert r.q.next_used == r.drv.next_used == n * per % size


def test_config_errors() -> None:
    with rig() as r:
        r.q.driver += 2
        assert (e := r.q.config_error()) is not None and e.req_id == "PACKED-DRV-01"
        r.q.driver -= 2
        r.q.size = 0
        assert (e := r.q.config_error()) is not None and e.req_id == "PCI-DRV-16"
        r.q.size = 9
        assert (e := r.q.config_error()) is not None and e.req_id == "PCI-DRV-16"
    with pytest.raises(ValueError):
        PackedQueue(0, 32769, MemDma(GuestMemory()), PackedHooks())


def test_reset_restores_wrap_counters() -> None:
    with rig(5) as r:
        r.q.next_avail, r.q.avail_wrap, r.q.next_used, r.q.used_wrap = 3, 0, 2, 0
        r.q.reset()
        assert (r.q.next_avail, r.q.avail_wrap, r.q.next_used, r.q.used_wrap) == (0, 1, 0, 1)
        assert r.q.size == 5 and not r.q.enabled


# --- hostile lists: one error each, named -------------------------------------------------------------


def _d(addr: int, length: int, flags: int, bid: int = 0, wrap: int = 1) -> PackedDescriptor:
    return PackedDescriptor(addr, length, bid, flags | avail_bits(wrap))


HOSTILE: list[tuple[str, Callable[[DriverPackedQueue], None], str]] = [
    ("longer than the ring", lambda d: d.expose_raw([_d(0x9000, 1, NEXT)] * 8, 0), "PACKED-DRV-07"),
    ("tail not made available", lambda d: d.expose_raw([_d(0x9000, 1, NEXT), PackedDescriptor(0x9000, 1, 0, 0)], 0),
     "PACKED-DRV-11"),
    ("tail with the other lap's bits",
     lambda d: d.expose_raw([_d(0x9000, 1, NEXT), _d(0x9000, 1, 0, wrap=0)], 0), "PACKED-DRV-11"),
    ("readable after writable", lambda d: d.expose_raw([_d(0x9000, 1, WRITE | NEXT), _d(0x9000, 1, 0)], 0),
     "PACKED-DRV-08"),
    ("indirect with next", lambda d: d.expose_raw([_d(0x9000, 16, INDIRECT | NEXT), _d(0x9000, 1, 0)], 0),
     "PACKED-DRV-15"),
    ("indirect after a direct one", lambda d: d.expose_raw([_d(0x9000, 1, NEXT), _d(0x9000, 16, INDIRECT)], 0),
     "PACKED-DRV-15"),
    ("indirect table length not a multiple of 16", lambda d: d.expose_raw([_d(0x9000, 20, INDIRECT)], 0),
     "PACKED-DRV-14"),
    ("empty indirect table", lambda d: d.expose_raw([_d(0x9000, 0, INDIRECT)], 0), "PACKED-DRV-14"),
    ("indirect table longer than the queue", lambda d: d.expose_raw([_d(0x9000, 16 * 9, INDIRECT)], 0),
     "PACKED-DRV-14"),
    ("indirect inside indirect",
     lambda d: d.expose_raw([_d(d.write_indirect([PackedDescriptor(0x9000, 16, 0, INDIRECT)]), 16, INDIRECT)], 0),
     "PACKED-DRV-13"),
    ("readable after writable in an indirect table",
     lambda d: d.expose_raw([_d(d.write_indirect([PackedDescriptor(0x9000, 1, 0, WRITE),
                                                   PackedDescriptor(0x9000, 1, 0, 0)]), 32, INDIRECT)], 0),
     "PACKED-DRV-08"),
]


@pytest.mark.parametrize("name, build, req", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_lists_raise_the_named_ring_error(name: str, build: Callable[[DriverPackedQueue], None],
                                                  req: str) -> None:
    with rig() as r:
        build(r.drv)
        with pytest.raises(RingError) as ei:
            r.q.chain_at()
        assert ei.value.req_id == req, name


def test_reserved_flags_of_indirect_entries_are_ignored() -> None:
    """Only WRITE is valid in an indirect entry; the device ignores the others (2.8.7), NEXT included."""
    with rig() as r:
        table = r.drv.write_indirect([PackedDescriptor(0x9000, 3, 7, NEXT | int(PackedDescFlags.AVAIL)),
                                      PackedDescriptor(0x9100, 5, 0, WRITE | NEXT | int(PackedDescFlags.USED))])
        r.drv.expose_raw([_d(table, 32, INDIRECT | WRITE, bid=4)], 4)
        c = r.q.chain_at()
        assert c is not None and (c.head, c.ndesc, c.readable, c.writable) == (4, 2, [(0x9000, 3)], [(0x9100, 5)])


def test_indirect_without_the_feature() -> None:
    with rig(indirect=False) as r:
        r.drv.add([b"x"], [], indirect=True)
        with pytest.raises(RingError, match="PACKED-DRV-12"):
            r.q.chain_at()


def test_device_limit_below_the_queue_size() -> None:
    class Two(PackedHooks):
        def packed_max_chain_len(self, queue_size: int) -> int:
            return 2

    with rig(hooks=Two()) as r:
        r.drv.add([b"a", b"b", b"c"], [])
        with pytest.raises(RingError, match="PACKED-DRV-06"):
            r.q.chain_at()


def test_a_list_never_reads_past_the_ring() -> None:
    with rig(3) as r:
        r.drv.expose_raw([_d(0x9000, 1, NEXT)] * 3, 0)  # the third links back to the head, of the next lap
        with pytest.raises(RingError, match="PACKED-DRV-07"):
            r.q.chain_at()
        ring = range(r.q.desc, r.q.desc + 3 * DESC_SIZE)
        assert not r.dma.writes and ring  # nothing written; reads were bounded by the asserting Dma


# --- notifications ----------------------------------------------------------------------------------


def test_used_notifications_follow_the_driver_event_structure() -> None:
    with rig(event_idx=True, auto_used_event=False) as r:
        assert r.q.needs_notification((0, 1), (1, 1))  # all-zero area: ENABLE
        r.drv.set_no_interrupt(True)
        assert not r.q.needs_notification((0, 1), (1, 1))
        r.drv.set_driver_event(EventFlags.DESC, 2, 1)
        assert not r.q.needs_notification((0, 1), (2, 1))  # slots 0 and 1 written: 2 not reached
        assert r.q.needs_notification((1, 1), (3, 1))
        r.drv.set_driver_event(EventFlags.DESC, 1, 0)  # slot 1 of the next lap
        assert not r.q.needs_notification((0, 1), (2, 1))
        assert r.q.needs_notification((6, 1), (2, 0))
    with rig(event_idx=False) as r:
        r.drv.set_driver_event(EventFlags.DESC, 5, 1)  # DESC means nothing without EVENT_IDX: notified
        assert r.q.needs_notification((0, 1), (1, 1))


def test_available_notifications_follow_the_device_event_structure() -> None:
    with rig(event_idx=True) as r:
        r.drv.add([b"a"], [])
        assert r.drv.kick_needed()  # all-zero device area: ENABLE
        r.q.write_device_event(EventFlags.DISABLE)
        r.drv.add([b"b"], [])
        assert not r.drv.kick_needed()
        for c in r.q.peek_chains():
            r.q.consume(c.slots)
        r.q.want_kick_at_next()  # DESC at slot 2
        r.drv.add([b"c", b"d"], [])  # slots 2-3: covers it
        assert r.drv.kick_needed()
        r.drv.add([b"e"], [])  # slot 4: past it
        assert not r.drv.kick_needed()


def test_notification_data_is_checked_against_the_ring() -> None:
    with rig() as r:
        r.drv.add([b"a", b"b"], [])
        vq, off, wrap = decode_notification_data(r.drv.notification_value())
        assert (vq, off, wrap) == (0, 2, 1)
        r.q.check_notification(off, wrap)
        with pytest.raises(RingError, match="PACKED-DRV-04"):
            r.q.check_notification(3, 1)  # claims slot 2 is available: it is not
        with pytest.raises(RingError, match="PACKED-DRV-04"):
            r.q.check_notification(8, 1)  # beyond the queue
        r.q.consume(2)
        r.q.check_notification(1, 1)  # behind the device: an older notification, overtaken


# --- property: random workloads through both sides -----------------------------------------------------

sizes = st.one_of(st.integers(1, 24), st.sampled_from([31, 100, 257, 1000]))


def random_buffer(rnd: random.Random, size: int) -> tuple[list[bytes], list[int], bool]:
    """Readable parts, writable lengths and whether the list goes in an indirect table, within the queue size."""
    indirect = rnd.random() < 0.3
    limit = size if not indirect else min(size, 6)
    n_out = rnd.randint(0, min(limit, 4))
    n_in = rnd.randint(0 if n_out else 1, min(limit - n_out, 3))
    out = [rnd.randbytes(rnd.randint(0, 24)) for _ in range(n_out)]
    return out, [rnd.randint(1, 24) for _ in range(n_in)], indirect


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=sizes, in_order=st.booleans(), event_idx=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_random_workloads_wrap_many_times_and_come_back_intact(size: int, in_order: bool, event_idx: bool,
                                                                seed: int) -> None:
    """Random lists (direct and indirect, 1..7 descriptors) through rings of random sizes, taken and returned in
    random amounts (in any order, or in order and sometimes as one batch), wrapping at least once (three times
    below 100 entries): every buffer comes back once, with what the device wrote, and both sides agree on
    where the next used descriptor goes."""
    rnd = random.Random(seed)
    laps = 3 if size < 100 else 1
    with rig(size, event_idx=event_idx, in_order=in_order) as r:
        sent: dict[int, tuple[bytes, int]] = {}  # Buffer ID -> (readable bytes, writable room)
        order: list[int] = []
        taken: list[PackedChain] = []
        moved = 0
        steps = 0
        while moved < laps * size + 1:
            steps += 1
            assert steps < 40 * (laps * size + 1), "workload made no progress"
            # the driver adds a few buffers while it has room
            for _ in range(rnd.randint(0, 4)):
                out, ins, indirect = random_buffer(rnd, size)
                need = 1 if indirect else len(out) + len(ins)
                if r.drv.num_free < need or r.drv.in_flight == size:
                    break
                bid = r.drv.add(out, ins, indirect=indirect)
                sent[bid] = (b"".join(out), sum(ins))
                order.append(bid)
            # the device takes some of what is available, in ring order
            ready = r.q.peek_chains(rnd.randint(0, 5))
            for c in ready:
                assert read_all(r.dma, c.readable) == sent[c.head][0]
                assert c.writable_len == sent[c.head][1]
                r.q.consume(c.slots)
            taken += ready
            # and returns some of what it took: in order with IN_ORDER (maybe as one batch), else in any order
            k = rnd.randint(0, len(taken))
            if not in_order:
                rnd.shuffle(taken)
            done, taken = taken[:k], taken[k:]
            reply = serve(r, done, lambda c: bytes([c.head & 0xFF]) * c.writable_len)
            if in_order and reply and all(e.len == 0 for e in reply) and rnd.random() < 0.5:
                r.q.push_used(reply, in_order_batch=True)
            else:
                r.q.push_used(reply)
            got = r.drv.used()
            assert sorted(u.head for u in got) == sorted(c.head for c in done)
            if in_order:
                assert [u.head for u in got] == [c.head for c in done]
            for u in got:
                assert u.data == bytes([u.head & 0xFF]) * sent[u.head][1]
                moved += 1
        assert not r.drv.anomalies
        assert (r.q.next_used, r.q.used_wrap) == (r.drv.next_used, r.drv.used_wrap)


def test_a_used_flag_store_hook_is_one_method() -> None:
    class FlagsFirst(PackedHooks):
        def packed_used_stores(self, buffer_id: int, length: int, flags: int) -> list[tuple[int, bytes]]:
            stores = super().packed_used_stores(buffer_id, length, flags)
            return stores[::-1]

    with rig(hooks=FlagsFirst()) as r:
        r.drv.add([b"a"], [])
        [c] = r.q.peek_chains()
        r.q.consume(1)
        r.dma.writes.clear()
        r.q.push_used([UsedElem(c.head, 0, 1)])
        assert (r.dma.writes[0][0] - r.q.desc) % DESC_SIZE == DESC_FLAGS_OFFSET  # the bug shows as written


def test_a_used_wrap_counter_that_never_flips_stalls_the_driver() -> None:
    class NoFlip(PackedHooks):
        def packed_advance_used(self, off: int, wrap: int, n: int, size: int) -> tuple[int, int]:
            return (off + n) % size, wrap

    with rig(3, hooks=NoFlip()) as r:
        seen = []
        for _ in range(4):
            bid = r.drv.add([b"x"], [])
            assert [c.head for c in r.q.peek_chains()] == [bid]
            r.q.consume(1)
            r.q.push_used([UsedElem(bid, 0, 1)])
            seen += [u.head for u in r.drv.used()]
        assert len(seen) == 3  # the fourth, written with the first lap's bits, never looks used to the driver
