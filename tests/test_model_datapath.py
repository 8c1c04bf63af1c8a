"""The model's data path: the bulk path against the per-chain one, merged receive buffers, kick suppression,
and the IOMMU's batch calls underneath."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.pci.device import DmaFaultError, DmaPerm
from backend.virtio.features import DeviceStatus, F, NetF, bits
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.split_ring import DESC, U16, USED_ELEM, DescFlags, SplitLayout, vring_need_event
from models.targets import open_virtio_net
from models.virtio_net import Chain, FrameBatch, SplitQueue, VirtioNetDevice
from sim.iommu import PAGE_SIZE, Iommu
from sim.memory import GuestMemory
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.frames import MIN_LEN, test_frame
from tests.test_model_device import FRAME, MEM, Guest, Ring, fired

BASE = bits(F.VERSION_1, F.ACCESS_PLATFORM, F.INDIRECT_DESC)
BUF = 0x40000  # TX data area in the guests' memory
RXBUF = 0x80000  # RX buffers


class PerChain(VirtioNetDevice):
    """The stock device with per-chain hooks restated: the bulk path stands aside, everything goes through
    parse_chain and the exact DMA calls. The reference the bulk path must agree with."""

    def tx_frame(self, chain: Chain) -> bytes | None:
        return super().tx_frame(chain)

    def rx_header(self, frame: bytes, num_buffers: int = 1) -> bytes:
        return super().rx_header(frame, num_buffers)


PER_CHAIN = f"model={__name__}:PerChain"


def _stats(model: VirtioNetDevice) -> dict[str, int]:
    out = dict(vars(model.stats))
    out.pop("tx_bulk")
    out.pop("rx_bulk")
    return out


# --- the bulk path is the per-chain path, faster ---------------------------------------------------


DESCS = st.tuples(
    st.sampled_from([BUF, BUF + 0x100, BUF + 0x233, BUF + 0x1000, MEM - 40, MEM + 0x1000]),  # addr
    st.sampled_from([0, 5, HDR_SIZE, HDR_SIZE + 1, 40, 60, 76, 200, 16, 32]),  # len
    st.sampled_from([0, 0, 0, 0, DescFlags.NEXT, DescFlags.NEXT, DescFlags.WRITE, DescFlags.INDIRECT,
                     DescFlags.NEXT | DescFlags.WRITE]),  # flags
    st.integers(0, 17),  # next
)


def tx_used_as_read(used: bytes, size: int, features: int, status: int) -> bytes:
    """A transmit queue's used ring (flags, idx, elements) as a driver reads it, so two ways of returning the same
    chains compare equal: with IN_ORDER only used idx and the last buffer's element (a batch is one element for its
    last buffer, 2.7.9, and how a round is cut into batches is the device's choice: the compiled reader returns 32
    chains at a time); after a driver error (DEVICE_NEEDS_RESET) nothing, since the compiled reader has returned
    the chains it took before the faulty one and the per-chain path returns none of that round."""
    if status & DeviceStatus.DEVICE_NEEDS_RESET:
        return b"(needs reset)"
    if features & bits(F.IN_ORDER):
        last = (int.from_bytes(used[2:4], "little") - 1) % size
        return used[:4] + used[4 + 8 * last:12 + 8 * last]
    return used


def _run_tx(spec: str, features: int, descs: list[tuple[int, int, int, int]], heads: list[int],
            avail_flags: int) -> tuple[object, ...]:
    with Guest(f"virtio-net,wire=none,{spec}" if spec else "virtio-net,wire=none") as g:
        col = g.collect()
        _rx, tx = g.bring_up(features)
        g.mem.write(BUF, bytes(range(256)) * 32)
        for i, (addr, length, flags, nxt) in enumerate(descs):
            tx.put_desc(i, addr, length, flags, nxt)
        # An indirect table for the INDIRECT descriptors that point at BUF + 0x1000: two plain entries.
        tx.put_desc(0, BUF + 0x10, 20, DescFlags.NEXT, 1, table=BUF + 0x1000)
        tx.put_desc(1, BUF + 0x80, 50, 0, 0, table=BUF + 0x1000)
        g.mem.write(tx.avail, U16.pack(avail_flags))
        tx.add(heads)
        tx.kick()
        ring = tx_used_as_read(g.mem.read(tx.used, 4 + 8 * tx.size), tx.size, features, g.status())
        return (col.take(), ring, g.status(), [e.req_id for e in g.model.errors],
                [(f.iova, f.size) for f in g.dev.dma_faults()], _stats(g.model), fired(g.calls[1]))


@given(descs=st.lists(DESCS, min_size=16, max_size=16), heads=st.lists(st.integers(0, 17), min_size=1, max_size=16),
       in_order=st.booleans(), event_idx=st.booleans(), avail_flags=st.integers(0, 1))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_tx_bulk_path_agrees_with_per_chain(descs: list[tuple[int, int, int, int]], heads: list[int],
                                            in_order: bool, event_idx: bool, avail_flags: int) -> None:
    features = BASE | (bits(F.IN_ORDER) if in_order else 0) | (bits(F.EVENT_IDX) if event_idx else 0)
    bulk = _run_tx("", features, descs, heads, avail_flags)
    exact = _run_tx(PER_CHAIN, features, descs, heads, avail_flags)
    assert bulk == exact


RX_DESCS = st.tuples(
    st.sampled_from([RXBUF, RXBUF + 0x800, RXBUF + 0x1000, RXBUF + 0x1803, MEM - 40, MEM + 0x1000]),
    st.sampled_from([0, 8, HDR_SIZE, 40, 64, 76, 100, 128, 2048]),
    st.sampled_from([DescFlags.WRITE, DescFlags.WRITE, DescFlags.WRITE, DescFlags.WRITE | DescFlags.NEXT,
                     DescFlags.WRITE | DescFlags.NEXT, 0, DescFlags.NEXT]),
    st.integers(0, 17),
)


def _run_rx(spec: str, features: int, descs: list[tuple[int, int, int, int]], heads: list[int],
            lengths: list[int]) -> tuple[object, ...]:
    with Guest(f"virtio-net,wire=none,{spec}" if spec else "virtio-net,wire=none") as g:
        rx, _tx = g.bring_up(features)
        g.mem.write(RXBUF, bytes(0x2000))
        for i, (addr, length, flags, nxt) in enumerate(descs):
            rx.put_desc(i, addr, length, flags, nxt)
        rx.add(heads)
        g.model.receive_batch(FrameBatch.of(test_frame(i, n) for i, n in enumerate(lengths)))
        # The bulk path publishes a run of frames with one used idx update, so one interrupt may cover several.
        return (g.mem.read(rx.used, 4 + 8 * rx.size), g.mem.read(RXBUF, 0x2000), g.status(),
                [e.req_id for e in g.model.errors], [(f.iova, f.size) for f in g.dev.dma_faults()],
                _stats(g.model), fired(g.calls[0]) > 0)


@given(descs=st.lists(RX_DESCS, min_size=16, max_size=16), heads=st.lists(st.integers(0, 17), max_size=16),
       lengths=st.lists(st.sampled_from([MIN_LEN, 60, 64, 100, 116, 117, 300, 1000]), min_size=1, max_size=12),
       mrg=st.booleans(), in_order=st.booleans())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_rx_bulk_path_agrees_with_per_chain(descs: list[tuple[int, int, int, int]], heads: list[int],
                                            lengths: list[int], mrg: bool, in_order: bool) -> None:
    features = BASE | (bits(NetF.MRG_RXBUF) if mrg else 0) | (bits(F.IN_ORDER) if in_order else 0)
    assert _run_rx("", features, descs, heads, lengths) == _run_rx(PER_CHAIN, features, descs, heads, lengths)


def test_a_burst_takes_the_bulk_path_and_a_variant_does_not() -> None:
    for spec, bulk in (("", True), (PER_CHAIN, False)):
        with Guest(f"virtio-net,wire=loopback,{spec}" if spec else "virtio-net,wire=loopback") as g:
            rx, tx = g.bring_up(BASE | bits(F.IN_ORDER))
            for k in range(8):
                rx.add_chain([(RXBUF + 0x800 * k, 2048, True)])
            for k in range(8):
                g.mem.write(BUF + 0x100 * k, NetHdr().pack() + test_frame(k, 64))
            heads = [tx.add_chain([(BUF + 0x100 * k, HDR_SIZE + 64, False)]) for k in range(8)]
            tx.kick()
            assert tx.used_idx() == 8 and tx.used_elem(7) == (heads[7], 0)  # IN_ORDER: one element for the batch
            assert rx.used_idx() == 8
            assert [rx.used_elem(k) for k in range(8)] == [(k, HDR_SIZE + 64) for k in range(8)]
            for k in range(8):
                assert g.mem.read(RXBUF + 0x800 * k, HDR_SIZE + 64) == NetHdr(num_buffers=1).pack() + test_frame(k, 64)
            s = g.model.stats
            assert (s.tx_bulk, s.rx_bulk) == ((8, 8) if bulk else (0, 0))
            assert s.tx_packets == s.rx_packets == 8


def test_fault_in_the_middle_of_a_burst() -> None:
    with Guest() as g:
        col = g.collect()
        _rx, tx = g.bring_up(BASE)
        g.dev.dma_faults()
        for k in range(6):
            g.mem.write(BUF + 0x100 * k, NetHdr().pack() + test_frame(k, 64))
        addrs = [BUF, BUF + 0x100, MEM + 0x5000, BUF + 0x300]
        for a in addrs:
            tx.add_chain([(a, HDR_SIZE + 64, False)])
        tx.kick()
        # The two frames before the unmapped buffer went out; the fault is recorded where the read started.
        assert col.take() == [test_frame(0, 64), test_frame(1, 64)]
        faults = g.dev.dma_faults()
        assert [(f.iova, f.size) for f in faults] == [(MEM + 0x5000 + HDR_SIZE, 64)]
        assert g.status() & DeviceStatus.DEVICE_NEEDS_RESET and g.model.errors[-1].req_id == "FEAT-DRV-11"
        # The two chains before it came back used as the compiled reader copied them; the rest of the round not.
        assert tx.used_idx() == 2


# --- kick suppression without EVENT_IDX ---------------------------------------------------------------


def test_no_notify_while_busy_and_cleared_after() -> None:
    for event_idx in (False, True):
        with Guest() as g:
            _rx, tx = g.bring_up(BASE | (bits(F.EVENT_IDX) if event_idx else 0))
            flags: list[int] = []

            def watch(access: DmaPerm, iova: int, size: int, tx: Ring = tx, flags: list[int] = flags) -> None:
                if access & DmaPerm.WRITE and iova == tx.used:
                    flags.append(size)

            g.model.endpoint.iommu.observers.append(watch)
            g.mem.write(BUF, NetHdr().pack() + FRAME)
            for _ in range(4):
                tx.add_chain([(BUF, HDR_SIZE + len(FRAME), False)])
            tx.kick()
            used_flags = U16.unpack(g.mem.read(tx.used, 2))[0]
            assert tx.used_idx() == 4 and used_flags == 0
            # SPLIT-DEV-19: NO_NOTIFY set while the burst is taken, cleared before the device goes idle;
            # SPLIT-DEV-20: never touched with EVENT_IDX.
            assert flags == ([] if event_idx else [2, 2])


def test_buffers_added_under_no_notify_are_taken_without_a_kick() -> None:
    with Guest() as g:
        col = g.collect()
        _rx, tx = g.bring_up(BASE)
        g.mem.write(BUF, NetHdr().pack() + FRAME)
        added: list[int] = []

        def sneak(access: DmaPerm, iova: int, size: int) -> None:
            # The driver adds a buffer the moment the device sets NO_NOTIFY, and (seeing the flag) does not kick.
            if access & DmaPerm.WRITE and iova == tx.used and not added:
                added.append(tx.add_chain([(BUF, HDR_SIZE + len(FRAME), False)]))

        g.model.endpoint.iommu.observers.append(sneak)
        tx.add_chain([(BUF, HDR_SIZE + len(FRAME), False)])
        tx.kick()
        assert added and tx.used_idx() == 2 and len(col.take()) == 2


def test_a_producer_outlasting_the_round_budget_is_served_with_event_idx() -> None:
    """A driver on another CPU adds a chain each time the device publishes a used idx and kicks only when
    avail_event asks for it (vring_need_event). The device gives up the lock after its round budget; with
    EVENT_IDX it must then ask for a kick at its position and come back for what the driver added without
    one, or the queue stalls with buffers the driver was told need no notification."""
    with Guest() as g:
        col = g.collect()
        _rx, tx = g.bring_up(BASE | bits(F.EVENT_IDX))
        g.mem.write(BUF, NetHdr().pack() + FRAME)
        extra = 150  # more than two round budgets, fewer than the ring holds at once
        added: list[int] = []
        owed: list[bool] = [False]
        used_idx_at = tx.used + 2

        def produce(access: DmaPerm, iova: int, size: int) -> None:
            if access & DmaPerm.WRITE and iova <= used_idx_at < iova + size and len(added) < extra:
                old = tx.avail_idx
                added.append(tx.add_chain([(BUF, HDR_SIZE + len(FRAME), False)]))
                event = U16.unpack(g.mem.read(tx.used + tx.lay.avail_event, 2))[0]
                owed[0] |= vring_need_event(event, tx.avail_idx, old)

        g.model.endpoint.iommu.observers.append(produce)
        tx.add_chain([(BUF, HDR_SIZE + len(FRAME), False)])
        tx.kick()
        for _ in range(extra):  # the kicks the driver owes, each after the device answered the last one
            if not owed[0]:
                break
            owed[0] = False
            tx.kick()
        assert len(added) == extra
        assert tx.used_idx() == extra + 1, f"{extra + 1 - tx.used_idx()} chains left unused without a kick"
        assert len(col.take()) == extra + 1


# --- merged receive buffers ----------------------------------------------------------------------------


@contextlib.contextmanager
def _mrg_guest(features: int) -> Iterator[tuple[Guest, Ring, Ring]]:
    with Guest("virtio-net,wire=loopback") as g:
        rx, tx = g.bring_up(features)
        yield g, rx, tx


def test_merged_rx_spreads_a_packet_and_publishes_it_at_once() -> None:
    with _mrg_guest(BASE | bits(NetF.MRG_RXBUF)) as (g, rx, tx):
        frame = test_frame(7, 300)
        for k in range(4):  # 4 buffers of 100 bytes: 312 bytes take all four
            rx.add_chain([(RXBUF + 0x100 * k, 100, True)])
        published: list[int] = []

        def watch(access: DmaPerm, iova: int, size: int) -> None:
            if access & DmaPerm.WRITE and iova == rx.used + SplitLayout.USED_IDX:
                published.append(iova)

        g.model.endpoint.iommu.observers.append(watch)
        g.mem.write(BUF, NetHdr().pack() + frame)
        tx.add_chain([(BUF, HDR_SIZE + len(frame), False)])
        tx.kick()
        assert rx.used_idx() == 4 and len(published) == 1  # NET-DEV-33: one used idx update
        assert [rx.used_elem(k) for k in range(4)] == [(0, 100), (1, 100), (2, 100), (3, 12)]  # NET-DEV-32
        data = b"".join(g.mem.read(RXBUF + 0x100 * k, n) for k, n in enumerate([100, 100, 100, 12]))
        assert NetHdr.unpack(data).num_buffers == 4 and data[HDR_SIZE:] == frame  # NET-DEV-28/31
        assert g.model.stats.rx_packets == 1


def test_merged_rx_out_of_buffers_drops_whole_packet() -> None:
    with _mrg_guest(BASE | bits(NetF.MRG_RXBUF)) as (g, rx, tx):
        rx.add_chain([(RXBUF, 100, True)])
        rx.add_chain([(RXBUF + 0x100, 100, True)])
        big, small = test_frame(1, 500), test_frame(2, 60)
        g.mem.write(BUF, NetHdr().pack() + big)
        g.mem.write(BUF + 0x400, NetHdr().pack() + small)
        tx.add_chain([(BUF, HDR_SIZE + len(big), False)])
        tx.add_chain([(BUF + 0x400, HDR_SIZE + len(small), False)])
        tx.kick()
        assert g.model.stats.rx_no_buffer == 1 and rx.used_idx() == 1
        assert rx.used_elem(0) == (0, HDR_SIZE + len(small))
        assert g.mem.read(RXBUF, HDR_SIZE + len(small)) == NetHdr(num_buffers=1).pack() + small


def test_without_mrg_a_small_buffer_waits() -> None:
    with _mrg_guest(BASE) as (g, rx, tx):
        rx.add_chain([(RXBUF, 100, True)])
        g.mem.write(BUF, NetHdr().pack() + test_frame(1, 300))
        tx.add_chain([(BUF, HDR_SIZE + 300, False)])
        tx.kick()
        assert g.model.stats.rx_buffer_too_small == 1 and rx.used_idx() == 0  # NET-DEV-29


def test_guest_driver_reassembles_merged_buffers() -> None:
    dev = open_virtio_net("virtio-net,wire=loopback")
    with GuestMemory.single(8 << 20) as mem:
        drv = GuestNetDriver(dev, mem, features=DEFAULT_FEATURES | bits(NetF.MRG_RXBUF), merged_rx_size=256)
        try:
            drv.init()
            assert drv.rx_buf_size == 256
            sent = [test_frame(i, n) for i, n in enumerate((64, 614, 1414))]
            drv.send(sent)
            got = drv.receive_raw(3, timeout=5.0)
            assert [f.frame for f in got] == sent
            assert [f.hdr.num_buffers for f in got] == [1, 3, 6]
        finally:
            drv.close()
            dev.close()


# --- the IOMMU's batch calls -------------------------------------------------------------------------------


@pytest.fixture
def iommu() -> Iommu:
    return Iommu()


def _map(io: Iommu, mem: GuestMemory, iova: int, perm: DmaPerm, offset: int = 0, size: int = 4 * PAGE_SIZE) -> None:
    fd, off = mem.fd_offset(0)
    io.map(iova, size, fd, off + offset, perm)


def _u64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_gather_and_scatter_stop_before_the_first_bad_range(iommu: Iommu) -> None:
    with GuestMemory.single(1 << 20) as mem:
        _map(iommu, mem, 0x10000, DmaPerm.RW)
        _map(iommu, mem, 0x20000, DmaPerm.READ, offset=4 * PAGE_SIZE)
        mem.write(0x100, b"abcdefgh")
        mem.write(4 * PAGE_SIZE, b"ro-data!")
        seen: list[tuple[DmaPerm, int, int]] = []
        iommu.observers.append(lambda a, i, n: seen.append((a, i, n)))
        data, n = iommu.gather(_u64(0x10100, 0x20000, 0x10104), _u64(4, 8, 4))
        assert (bytes(data), n) == (b"abcdro-data!efgh", 3)
        data, n = iommu.gather(_u64(0x10100, 0x30000, 0x10104), _u64(4, 4, 4))
        assert (bytes(data), n) == (b"abcd", 1)
        # a range crossing the end of its mapping, and one wrapping past 2^64
        assert iommu.gather(_u64(0x13FFE), _u64(4))[1] == 0
        assert iommu.gather(_u64((1 << 64) - 2), _u64(4))[1] == 0
        assert iommu.drain_faults() == []  # the batch records nothing: the exact access that follows does
        with pytest.raises(DmaFaultError):
            iommu.read(0x30000, 4)
        assert len(iommu.drain_faults()) == 1
        # writes: read-only mapping refused, order kept, equal sizes and mixed sizes
        assert iommu.scatter(_u64(0x10200, 0x20000), _u64(2, 2), np.frombuffer(b"WXYZ", np.uint8)) == 1
        assert mem.read(0x200, 2) == b"WX" and mem.read(4 * PAGE_SIZE, 2) == b"ro"
        assert iommu.scatter(_u64(0x10300, 0x10310, 0x10320), _u64(1, 3, 2),
                             np.frombuffer(b"abcdef", np.uint8)) == 3
        assert [mem.read(a, n) for a, n in ((0x300, 1), (0x310, 3), (0x320, 2))] == [b"a", b"bcd", b"ef"]
        assert (DmaPerm.READ, 0x10100, 4) in seen and (DmaPerm.WRITE, 0x10310, 3) in seen
        iommu.unmap_all()


def test_u16_accesses_and_try_view(iommu: Iommu) -> None:
    with GuestMemory.single(1 << 20) as mem:
        _map(iommu, mem, 0x10000, DmaPerm.RW)
        iommu.write_u16(0x10002, 0x1234)
        assert mem.read(2, 2) == b"\x34\x12" and iommu.read_u16(0x10002) == 0x1234
        iommu.write_u16(0x10005, 0xABCD)  # unaligned: the byte path
        assert iommu.read_u16(0x10005) == 0xABCD
        with pytest.raises(DmaFaultError):
            iommu.read_u16(0x30000)
        with pytest.raises(DmaFaultError):
            iommu.write_u16(0x30000, 1)
        assert len(iommu.drain_faults()) == 2
        view = iommu.try_view(0x10000, 16, DmaPerm.READ)
        assert view is not None and bytes(view[2:4]) == b"\x34\x12"
        view.release()
        assert iommu.try_view(0x13FF0, 32, DmaPerm.READ) is None and iommu.drain_faults() == []
        iommu.unmap_all()


def test_frame_batch() -> None:
    frames = [b"abc", b"", b"hello"]
    batch = FrameBatch.of(frames)
    assert len(batch) == 3 and list(batch) == frames and batch.total_bytes == 8 and batch.uniform is None
    assert batch.frame(2) == b"hello"
    assert bytes(batch.with_header(b"H", 0, 3)) == b"HabcHHhello"
    assert list(batch.select(np.array([True, False, True]))) == [b"abc", b"hello"]
    same = FrameBatch.of([b"ab", b"cd"])
    assert same.uniform == 2 and bytes(same.with_header(b"--", 0, 2)) == b"--ab--cd"


# --- split engine pieces -----------------------------------------------------------------------------


class _Mem:
    def __init__(self) -> None:
        self.mem = bytearray(0x10000)

    def read(self, iova: int, n: int) -> bytes:
        return bytes(self.mem[iova:iova + n])

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        self.mem[iova:iova + len(data)] = data


def test_plain_chains_classification() -> None:
    from models.virtio_net.split_engine import RingHooks

    q = SplitQueue(0, 8, _Mem(), RingHooks())
    table = bytearray(16 * 8)
    rows = [(0x100, 10, 0, 0), (0x200, 12, DescFlags.NEXT, 2), (0x300, 30, 0, 0), (0x400, 5, DescFlags.NEXT, 4),
            (0x500, 5, DescFlags.NEXT, 3), (0x600, 16, DescFlags.INDIRECT, 0), (0x700, 9, DescFlags.WRITE, 0),
            (0x800, 1, DescFlags.NEXT, 9)]
    for i, r in enumerate(rows):
        DESC.pack_into(table, 16 * i, *r)
    arr = np.frombuffer(bytes(table), dtype=np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"),
                                                        ("next", "<u2")]))
    heads = np.array([0, 1, 3, 5, 6, 7, 9], dtype=np.intp)
    pc = q.plain_chains(arr, heads, writable=False)
    assert pc.plain is not None and pc.two is not None
    # single; two (1 -> 2); loop 3 <-> 4; INDIRECT; writable in a TX window; next beyond the queue; head beyond
    assert pc.plain.tolist() == [True, True, False, False, False, False, False]
    assert pc.two.tolist()[:2] == [False, True] and pc.prefix() == 2
    assert pc.len1 is not None and int(pc.len1[1]) == 30 and int(pc.addr0[1]) == 0x200
    all_plain = q.plain_chains(arr, np.array([0, 2], dtype=np.intp), writable=False)
    assert all_plain.plain is None and all_plain.two is None and all_plain.prefix() == 2

    class OneDescriptor(RingHooks):
        def max_chain_len(self, queue_size: int) -> int:
            return 1

    q1 = SplitQueue(0, 8, _Mem(), OneDescriptor())
    assert q1.plain_chains(arr, heads[:2], writable=False).prefix() == 1


def test_push_used_array_wraps_like_push_used() -> None:
    a, b = _Mem(), _Mem()
    from models.virtio_net.split_engine import RingHooks

    qa, qb = SplitQueue(0, 4, a, RingHooks()), SplitQueue(0, 4, b, RingHooks())
    for q in (qa, qb):
        q.device = 0x1000
        q.used_idx = 0xFFFE
    qa.push_used([(1, 10), (2, 20), (3, 1 << 33 | 7)])
    qb.push_used_array(np.array([1, 2, 3]), np.array([10, 20, 1 << 33 | 7], dtype=np.uint64))
    assert a.mem == b.mem and qa.used_idx == qb.used_idx == 1
    assert USED_ELEM.unpack_from(b.mem, 0x1000 + 4 + 8 * 0) == (3, 7)
