"""Split-ring engine on its own: a bytearray behind the Dma protocol, hand-built rings."""

from __future__ import annotations

import pytest

from backend.virtio.split_ring import DESC, U16, USED_ELEM, DescFlags, SplitLayout
from models.virtio_net.split_engine import RingError, RingHooks, SplitQueue

SIZE = 8
DESC_AT, AVAIL_AT, USED_AT = 0x1000, 0x2000, 0x3000


class FakeDma:
    def __init__(self, size: int = 0x10000) -> None:
        self.mem = bytearray(size)
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int]] = []

    def read(self, iova: int, n: int) -> bytes:
        assert iova >= 0 and iova + n <= len(self.mem), "engine read outside memory"
        self.reads.append((iova, n))
        return bytes(self.mem[iova:iova + n])

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        assert iova >= 0 and iova + len(data) <= len(self.mem), "engine wrote outside memory"
        self.writes.append((iova, len(data)))
        self.mem[iova:iova + len(data)] = data


def make(features: dict[str, bool] | None = None, hooks: RingHooks | None = None) -> tuple[SplitQueue, FakeDma]:
    dma = FakeDma()
    q = SplitQueue(0, SIZE, dma, hooks or RingHooks())
    q.desc, q.driver, q.device = DESC_AT, AVAIL_AT, USED_AT
    q.activate(**{"event_idx": False, "indirect": True, "in_order": False, **(features or {})})
    q.enabled = True
    return q, dma


def desc(dma: FakeDma, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int = DESC_AT) -> bool:
    DESC.pack_into(dma.mem, table + 16 * i, addr, length, flags, nxt)
    return True


def publish(dma: FakeDma, heads: list[int], start: int = 0) -> None:
    for k, h in enumerate(heads):
        U16.pack_into(dma.mem, AVAIL_AT + SplitLayout(SIZE).avail_ring_entry(start + k), h)
    U16.pack_into(dma.mem, AVAIL_AT + 2, (start + len(heads)) & 0xFFFF)


def test_chain_readable_then_writable() -> None:
    q, dma = make()
    desc(dma, 0, 0x5000, 12, DescFlags.NEXT, 1)
    desc(dma, 1, 0x5100, 100, DescFlags.NEXT, 2)
    desc(dma, 2, 0x6000, 200, DescFlags.WRITE)
    publish(dma, [0])
    assert q.available() == 1
    [head] = q.peek(1)
    c = q.parse_chain(head)
    assert c.readable == [(0x5000, 12), (0x5100, 100)] and c.writable == [(0x6000, 200)]


@pytest.mark.parametrize("setup, req", [
    (lambda d: (desc(d, 0, 0x5000, 1, DescFlags.NEXT, 1), desc(d, 1, 0x5000, 1, DescFlags.NEXT, 0)), "SPLIT-DRV-04"),
    (lambda d: desc(d, 0, 0x5000, 1, DescFlags.NEXT, SIZE), "SPLIT-DRV-04"),
    (lambda d: (desc(d, 0, 0x6000, 1, DescFlags.WRITE | DescFlags.NEXT, 1), desc(d, 1, 0x5000, 1)), "SPLIT-DRV-02"),
    (lambda d: desc(d, 0, 0x7000, 32, DescFlags.INDIRECT | DescFlags.NEXT, 1), "SPLIT-DRV-09"),
    (lambda d: desc(d, 0, 0x7000, 20, DescFlags.INDIRECT), "SPLIT-DRV-08"),
    (lambda d: desc(d, 0, 0x7000, 0, DescFlags.INDIRECT), "SPLIT-DRV-08"),
    (lambda d: desc(d, 0, 0x7000, 16 * (SIZE + 1), DescFlags.INDIRECT), "SPLIT-DRV-08"),
    (lambda d: (desc(d, 0, 0x7000, 16, DescFlags.INDIRECT), desc(d, 0, 0x7100, 16, DescFlags.INDIRECT, table=0x7000)),
     "SPLIT-DRV-07"),
    (lambda d: (desc(d, 0, 0x7000, 32, DescFlags.INDIRECT), desc(d, 0, 0x5000, 1, DescFlags.NEXT, 1, table=0x7000),
                desc(d, 1, 0x5000, 1, DescFlags.NEXT, 0, table=0x7000)), "SPLIT-DRV-04"),
    (lambda d: (desc(d, 0, 0x7000, 32, DescFlags.INDIRECT), desc(d, 0, 0x5000, 1, DescFlags.NEXT, 5, table=0x7000)),
     "SPLIT-DRV-04"),
    (lambda d: (desc(d, 0, 0x5000, 0xFFFFFFFF, DescFlags.NEXT, 1), desc(d, 1, 0x5000, 2)), "SPLIT-DRV-04"),
])
def test_hostile_chains_raise_ring_error(setup, req) -> None:  # type: ignore[no-untyped-def]
    q, dma = make()
    setup(dma)
    publish(dma, [0])
    with pytest.raises(RingError) as ei:
        q.parse_chain(q.peek(1)[0])
    assert ei.value.req_id == req


def test_head_out_of_range_and_avail_jump() -> None:
    q, dma = make()
    publish(dma, [SIZE + 3])
    with pytest.raises(RingError, match="SPLIT-DRV-04"):
        q.parse_chain(q.peek(1)[0])
    U16.pack_into(dma.mem, AVAIL_AT + 2, SIZE + 1)
    with pytest.raises(RingError, match="SPLIT-DRV-11"):
        q.available()


def test_indirect_without_feature() -> None:
    q, dma = make({"indirect": False})
    desc(dma, 0, 0x7000, 16, DescFlags.INDIRECT)
    publish(dma, [0])
    with pytest.raises(RingError, match="SPLIT-DRV-06"):
        q.parse_chain(0)


def test_direct_then_indirect_and_write_flag_on_pointer_ignored() -> None:
    q, dma = make()
    desc(dma, 0, 0x5000, 12, DescFlags.NEXT, 1)
    desc(dma, 1, 0x7000, 32, DescFlags.INDIRECT | DescFlags.WRITE)  # SPLIT-DEV-07/08
    desc(dma, 0, 0x5100, 50, DescFlags.NEXT, 1, table=0x7000)
    desc(dma, 1, 0x6000, 60, DescFlags.WRITE, table=0x7000)
    c = q.parse_chain(0)
    assert c.readable == [(0x5000, 12), (0x5100, 50)] and c.writable == [(0x6000, 60)]
    assert (0x7000, 32) in dma.reads  # the whole table in one read


def test_used_ring_wraps_and_elements_precede_idx() -> None:
    q, dma = make()
    q.used_idx = 0xFFFF
    old, new = q.push_used([(3, 10), (4, 20)])
    assert (old, new) == (0xFFFF, 1)
    assert U16.unpack_from(dma.mem, USED_AT + 2)[0] == 1
    lay = SplitLayout(SIZE)
    assert USED_ELEM.unpack_from(dma.mem, USED_AT + lay.used_ring_entry(0xFFFF)) == (3, 10)
    assert USED_ELEM.unpack_from(dma.mem, USED_AT + lay.used_ring_entry(0)) == (4, 20)
    assert dma.writes[-1] == (USED_AT + 2, 2)  # used idx is the last write (SPLIT-DEV-15)


def test_in_order_batch_writes_last_slot() -> None:
    q, dma = make({"in_order": True})
    old, new = q.push_used([(5, 0)], 3)
    assert (old, new) == (0, 3)
    assert USED_ELEM.unpack_from(dma.mem, USED_AT + SplitLayout(SIZE).used_ring_entry(2)) == (5, 0)


def test_notification_decisions() -> None:
    q, dma = make()
    assert q.needs_notification(0, 1)
    U16.pack_into(dma.mem, AVAIL_AT, 1)  # VRING_AVAIL_F_NO_INTERRUPT
    assert not q.needs_notification(0, 1)
    q2, dma2 = make({"event_idx": True})
    U16.pack_into(dma2.mem, AVAIL_AT, 1)  # disregarded with EVENT_IDX (SPLIT-DEV-12)
    U16.pack_into(dma2.mem, AVAIL_AT + SplitLayout(SIZE).used_event, 2)
    assert not q2.needs_notification(0, 2)
    assert q2.needs_notification(2, 3)


def test_hook_override_is_one_method() -> None:
    class IgnoreNext(RingHooks):
        def chain_continues(self, d):  # type: ignore[no-untyped-def]
            return False

    q, dma = make(hooks=IgnoreNext())
    desc(dma, 0, 0x5000, 12, DescFlags.NEXT, 1)
    desc(dma, 1, 0x5100, 100)
    assert q.parse_chain(0).readable == [(0x5000, 12)]
