"""cocotb bench of virtio_net_top's ring engine: guest memory on the AXI4 master, frames on AXI4-Stream.

Guest memory is a memfd (sim.memory.GuestMemory) shared by two views: the
bench's driver side builds and consumes split rings in it with
testbenches.driver.split_ring (which is built on backend.virtio.split_ring),
and cocotbext-axi's AxiRam serves the same bytes to the device's AXI4 master.
The bench configures the function through BAR0 like a driver (AXI4-Lite),
feeds receive frames with an AxiStreamSource and collects transmitted frames
with an AxiStreamSink. MSI-X is enabled: interrupt requests are recorded by
vector (config 0, receiveq1 1, transmitq1 2).
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import cocotb
from cocotb.handle import HierarchyObject
from cocotb.triggers import ClockCycles, Event, ReadOnly, RisingEdge, with_timeout
from cocotbext.axi import AxiBus, AxiStreamBus, AxiStreamSink, AxiStreamSource
from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite
from cocotbext.axi.memory import Memory

from backend.virtio.features import DeviceStatus, F, NetF, bits, has
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.pci_regs import ISR_CONFIG, CommonCfg
from backend.virtio.split_ring import U16, DescFlags, Descriptor, SplitLayout
from models.rtl import ISR_OFF, NOTIFY_OFF, NOTIFY_OFF_MULTIPLIER, VQ_STATE_OFF, VQ_STATE_STRIDE
from sim.memory import Allocator, GuestMemory
from testbenches.driver.split_ring import DriverSplitQueue
from tests.rtl import designs
from tests.rtl.bench_common import Bar0, covered_test, start, workload
from tests.rtl.coverage import Coverage

if TYPE_CHECKING:
    from cocotb._decorators import TestGenerator

MTU = designs.TOP_MTU
MAC = designs.TOP_MAC
SEED = designs.TOP_SEED
MEM_SIZE = 1 << 20
QSIZE = 16
RXQ, TXQ = 0, 1
VEC_CONFIG, VEC_RX, VEC_TX = 0, 1, 2
BASE_FEATURES = bits(F.VERSION_1, NetF.MAC, NetF.STATUS, NetF.MTU)
RX_HDR = NetHdr(num_buffers=1).pack()  # VERSION_1: num_buffers 1, no offloads (NET-DEV-30/34/55)
C = CommonCfg
S = DeviceStatus
ERR_NAMES = {1: "head_range", 2: "next_range", 3: "chain_len", 4: "avail_ahead", 5: "rd_after_wr", 6: "indirect",
             7: "dma"}
TIMEOUT_US = 20000
CANARY = b"\xa5"
CANARY_SLACK = 8
Q = TypeVar("Q")


def ethernet(rng: random.Random, length: int, ethertype: int = 0x0800) -> bytes:
    """A frame of ``length`` bytes: our MAC as destination, random payload."""
    head = MAC + bytes.fromhex("020000000002") + ethertype.to_bytes(2, "big")
    return (head + rng.randbytes(max(0, length - len(head))))[:length]


def cuts_for(rng: random.Random, total: int, pieces: int) -> list[int]:
    """``pieces - 1`` distinct cut points inside ``total`` bytes (so no piece is empty)."""
    return sorted(rng.sample(range(1, total), pieces - 1)) if pieces > 1 else []


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


#: Sees each write the device's AXI4 master makes to guest memory, as (bus address, bytes) per run of enabled
#: lanes of a beat, before it lands; raising refuses it (the burst is answered SLVERR, as an IOMMU without the
#: mapping would). Write bursts never cross a 4 KiB page, so neither does a run.
WriteGate = Callable[[int, bytes], None]


class GatedRamWrite(AxiRamWrite):  # type: ignore[misc]  # cocotbext-axi has no type information
    """cocotbext-axi's RAM write side with an optional :data:`WriteGate` in front."""

    gate: WriteGate | None = None

    async def _write(self, address: int, data: bytes) -> None:
        if self.gate is not None:
            self.gate(address, bytes(data))
        await super()._write(address, data)


class GuestRam(Memory):  # type: ignore[misc]
    """Guest memory served on the design's AXI4 master (cocotbext-axi's RAM halves over ``mem``); writes pass
    :attr:`write_if`'s gate, if one is set."""

    def __init__(self, dut: HierarchyObject, mem: GuestMemory) -> None:
        super().__init__(mem=mem.regions[0].mm)
        bus = AxiBus.from_prefix(dut, "m_axi")
        self.write_if = GatedRamWrite(bus.write, dut.clk, dut.rst_n, reset_active_level=False, mem=self.mem)
        self.read_if = AxiRamRead(bus.read, dut.clk, dut.rst_n, reset_active_level=False, mem=self.mem)


class QueuePair(Generic[Q]):
    """receiveq1 and transmitq1 among a driver's ``queues`` (indices RXQ and TXQ), split or packed."""

    queues: list[Q]

    @property
    def rxq(self) -> Q:
        return self.queues[RXQ]

    @property
    def txq(self) -> Q:
        return self.queues[TXQ]


class NetBench(QueuePair[DriverSplitQueue]):
    """The driver side of the function plus the wire: BAR0, guest memory, the two queues, the streams."""

    def __init__(self, dut: HierarchyObject, mem: GuestMemory) -> None:
        self.dut = dut
        self.mem = mem
        self.lanes = len(dut.m_axi_wstrb)  # bytes per beat of the build under test
        self.addr_w = len(dut.m_axi_araddr)
        self.alloc = Allocator(0x1000, MEM_SIZE - 0x1000)
        self.bar = Bar0(dut)
        self.ram = GuestRam(dut, mem)
        self.source = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis"), dut.clk, dut.rst_n,
                                      reset_active_level=False)
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis"), dut.clk, dut.rst_n,
                                  reset_active_level=False)
        self.irqs: list[int] = []
        self.irq_seen = Event()
        self.queues: list[DriverSplitQueue] = []
        #: (queue, head) -> device-writable buffers as (allocation, gpa, len)
        self.rx_posted: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        cocotb.start_soon(self._irq_monitor())

    async def _irq_monitor(self) -> None:
        # irq_ready is held high: every request is a one-cycle irq_valid pulse with a low cycle between
        while True:
            await RisingEdge(self.dut.irq_valid)
            # irq_vector is written in the same cycle; Icarus may report the irq_valid change before
            # that update, so read it once the time step has settled
            await ReadOnly()
            self.irqs.append(int(self.dut.irq_vector.value))
            self.irq_seen.set()

    def stat(self, name: str) -> int:
        return int(getattr(self.dut, f"stat_{name}").value)

    # --- control path ---------------------------------------------------------------------------

    async def status(self) -> int:
        return await self.bar.common(C.DEVICE_STATUS)

    async def reset(self) -> None:
        """Device reset: write 0, poll until device_status reads 0 (bounded)."""
        await self.bar.set_common(C.DEVICE_STATUS, 0)
        for _ in range(50):
            if await self.status() == 0:
                break
        else:
            raise AssertionError("device_status never read 0 after a reset")
        for q in self.queues:
            q.close()
        self.queues = []
        self.rx_posted.clear()

    async def negotiate(self, features: int) -> int:
        """Reset, ACKNOWLEDGE, DRIVER, the driver_feature windows, FEATURES_OK; returns device_status."""
        await self.reset()
        await self.bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE)
        await self.bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE | S.DRIVER)
        for sel in (0, 1):
            await self.bar.set_common(C.DRIVER_FEATURE_SELECT, sel)
            await self.bar.set_common(C.DRIVER_FEATURE, features >> 32 * sel & 0xFFFFFFFF)
        await self.bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
        return await self.status()

    async def init(self, features: int = BASE_FEATURES, *, start_idx: int = 0, queues: int = 2) -> None:
        """Negotiate ``features``, set up queues 0..queues-1 of QSIZE entries (vector = index + 1), DRIVER_OK.

        ``start_idx`` restores the queues at that ring index through the vendor vq state block.
        """
        assert await self.negotiate(features) & S.FEATURES_OK, f"features {features:#x} refused"
        await self.bar.set_common(C.CONFIG_MSIX_VECTOR, VEC_CONFIG)
        event_idx = has(features, F.EVENT_IDX)
        self.queues = [DriverSplitQueue(self.mem, self.alloc, QSIZE, index=i, event_idx=event_idx)
                       for i in range(queues)]
        for q in self.queues:
            await self.bar.set_common(C.QUEUE_SELECT, q.index)
            await self.bar.set_common(C.QUEUE_SIZE, QSIZE)
            await self.bar.set_common(C.QUEUE_MSIX_VECTOR, q.index + 1)
            await self.bar.set_common(C.QUEUE_DESC, q.desc_addr)
            await self.bar.set_common(C.QUEUE_DRIVER, q.avail_addr)
            await self.bar.set_common(C.QUEUE_DEVICE, q.used_addr)
            if start_idx:
                await self.restore(q, start_idx)
            await self.bar.set_common(C.QUEUE_ENABLE, 1)
            assert await self.bar.common(C.QUEUE_ENABLE) == 1
        await self.bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)

    async def restore(self, q: DriverSplitQueue, idx: int) -> None:
        """Both sides of a ring resumed at ``idx`` (as after a migration): vendor vq state + ring memory."""
        await self.bar.write(VQ_STATE_OFF + VQ_STATE_STRIDE * q.index, idx, 2)
        assert await self.bar.read(VQ_STATE_OFF + VQ_STATE_STRIDE * q.index, 4) == idx << 16 | idx
        q.avail_idx = q.published = q.last_used = idx
        q.write_avail_idx(idx)
        self.mem.write(q.used_addr + SplitLayout.USED_IDX, U16.pack(idx))

    async def kick(self, q: DriverSplitQueue) -> None:
        await self.bar.write(NOTIFY_OFF + NOTIFY_OFF_MULTIPLIER * q.index, q.index, 2)

    async def publish(self, q: DriverSplitQueue) -> None:
        if q.publish():
            await self.kick(q)

    async def queue_reset(self, index: int, polls: int) -> None:
        """VIRTIO_F_RING_RESET on queue ``index``: queue_reset 1, then read it until the reset is done (bounded)."""
        await self.bar.set_common(C.QUEUE_SELECT, index)
        await self.bar.set_common(C.QUEUE_RESET, 1)
        for _ in range(polls):
            await self.bar.set_common(C.QUEUE_SELECT, index)
            if await self.bar.common(C.QUEUE_RESET) == 0:
                return
        raise AssertionError("queue reset did not complete")

    async def stops_on_driver_error(self, qi: int, kick: Callable[[], Awaitable[None]], rng: random.Random,
                                    publish: Callable[[], Awaitable[None]] | None = None) -> int:
        """A malformed ring on queue ``qi`` is handed over (``publish``; then ``kick`` for a transmit queue, a frame
        from the wire for a receive queue): the device must stop with DEVICE_NEEDS_RESET, the driver's bits kept,
        name ``qi`` and notify a configuration change. Returns last_err_code."""
        irqs_before = len(self.irqs)
        if publish is not None:
            await publish()
        if qi == RXQ:
            await self.source.send(ethernet(rng, 64))
        else:
            await kick()
        status = await self.wait_status(S.DEVICE_NEEDS_RESET)
        assert status & S.DRIVER_OK, "the driver's bits stay"
        code = int(self.dut.last_err_code.value)
        assert int(self.dut.last_err_queue.value) == qi
        await self.wait_irq(VEC_CONFIG, irqs_before)  # STATUS-DEV-03
        assert await self.bar.read(ISR_OFF, 1) & ISR_CONFIG
        return code

    # --- buffers --------------------------------------------------------------------------------

    def _shift_chain(self, q: DriverSplitQueue, head: int, pieces: Sequence[int], offsets: Sequence[int],
                     fill: Sequence[bytes] | None) -> list[tuple[int, int]]:
        """Move each descriptor of a fresh chain ``offsets[i]`` bytes into its (larger) buffer."""
        segs = []
        slot = head
        for i, (length, off) in enumerate(zip(pieces, offsets, strict=True)):
            d = q.read_desc(slot)
            if fill is not None:
                self.mem.write(d.addr + off, fill[i])
            q.write_desc(slot, Descriptor(d.addr + off, length, d.flags, d.next))
            segs.append((d.addr + off, length))
            slot = d.next
        return segs

    def add_tx(self, frame: bytes, cuts: Sequence[int], offsets: Sequence[int]) -> list[tuple[int, int]]:
        """One TX chain: virtio_net_hdr + frame cut at ``cuts``, each piece ``offsets[i]`` bytes unaligned."""
        pieces = split(NetHdr().pack() + frame, cuts)
        head = self.txq.add([bytes(len(p) + o) for p, o in zip(pieces, offsets, strict=True)], [])
        return self._shift_chain(self.txq, head, [len(p) for p in pieces], offsets, pieces)

    def post_rx(self, lens: Sequence[int], offsets: Sequence[int], q: DriverSplitQueue | None = None) -> int:
        """One RX chain of device-writable buffers ``lens`` long, each ``offsets[i]`` bytes unaligned.

        Each buffer sits in an allocation CANARY_SLACK bytes longer than offset + length, filled
        with CANARY, so :meth:`rx_data` can tell whether the device wrote outside what it reported.
        """
        q = q or self.rxq
        head = q.add([], [n + o + CANARY_SLACK for n, o in zip(lens, offsets, strict=True)])
        bases = []
        slot = head
        for n, o in zip(lens, offsets, strict=True):
            d = q.read_desc(slot)
            self.mem.write(d.addr, CANARY * (n + o + CANARY_SLACK))
            bases.append(d.addr)
            slot = d.next
        segs = self._shift_chain(q, head, lens, offsets, None)
        self.rx_posted[q.index, head] = [(base, addr, n) for base, (addr, n) in zip(bases, segs, strict=True)]
        return head

    def rx_data(self, head: int, length: int, q: DriverSplitQueue | None = None) -> bytes:
        """The first ``length`` bytes written into chain ``head``; asserts nothing else was touched."""
        out = b""
        for base, addr, n in self.rx_posted.pop(((q or self.rxq).index, head)):
            take = min(n, length - len(out))
            out += self.mem.read(addr, take)
            before = self.mem.read(base, addr - base)
            after = self.mem.read(addr + take, n - take + CANARY_SLACK)
            assert before + after == CANARY * (len(before) + len(after)), (
                f"device wrote outside [{addr:#x}, +{take}) of its {n}-byte buffer")
        return out

    # --- waiting (bounded) ----------------------------------------------------------------------

    async def wait_used(self, q: DriverSplitQueue, idx: int, cycles: int = 200000) -> None:
        for _ in range(cycles // 16):
            if q.used_idx() == idx & 0xFFFF:
                return
            await ClockCycles(self.dut.clk, 16)
        raise AssertionError(f"queue {q.index}: used idx stuck at {q.used_idx()}, expected {idx & 0xFFFF}")

    async def wait_status(self, bit: int, cycles: int = 20000) -> int:
        for _ in range(cycles // 16):
            value = await self.status()
            if value & bit:
                return value
            await ClockCycles(self.dut.clk, 16)
        raise AssertionError(f"device_status never showed {bit:#x}")

    async def wait_irq(self, vector: int, since: int, cycles: int = 20000) -> None:
        for _ in range(cycles // 16):
            if vector in self.irqs[since:]:
                return
            await ClockCycles(self.dut.clk, 16)
        raise AssertionError(f"no interrupt on vector {vector}; seen {self.irqs[since:]}")

    async def quiet(self, cycles: int = 64) -> None:
        """Let the engine finish what it started (notification reads come after used idx)."""
        await ClockCycles(self.dut.clk, cycles)

    async def recv_frame(self) -> bytes:
        frame = await with_timeout(self.sink.recv(), 500, "us")
        return bytes(frame.tdata)


async def make_bench(dut: HierarchyObject, mem: GuestMemory) -> NetBench:
    await start(dut, {"link_up": 1, "msix_enabled": 1, "irq_ready": 1})
    return NetBench(dut, mem)


#: A test of the top: the bench on fresh guest memory, the test's seeded random source, its coverage record.
BenchBody = Callable[[NetBench, random.Random, Coverage], Coroutine[Any, Any, None]]


def bench_test(seed: int, coverage: str, /, **bins: Iterable[Hashable]) -> Callable[[BenchBody], TestGenerator]:
    """Register ``body`` as a cocotb test under its own name: it runs on a reset design with a NetBench on
    MEM_SIZE bytes of guest memory, ``random.Random(seed)`` and the record ``coverage`` expecting ``bins``."""

    def register(body: BenchBody) -> TestGenerator:
        async def run(dut: HierarchyObject, cov: Coverage) -> None:
            rng = random.Random(seed)
            with GuestMemory.single(MEM_SIZE) as mem:
                await body(await make_bench(dut, mem), rng, cov)

        return covered_test(TIMEOUT_US, body, run, coverage, bins)

    return register


# ---------------------------------------------------------------------------------------------------


@bench_test(SEED + 1, "engine_tx", chain_len=range(1, 5), hdr_split=[True, False],
            frame_len=["<=64", "65..1023", ">=1024"], batch=["1", ">1"], irq=["tx"])
async def tx_random_chains(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """Frames of random length in chains of 1..4 descriptors at random byte offsets, in batches."""
    cov.expect("start_lane", range(bench.lanes))
    await bench.init()
    sent: list[bytes] = []
    received: list[bytes] = []
    lengths = [14, 15, 60, 64, 65, 127, 128, 129, 1023, 1024, MTU + 14]
    n_frames = workload(80, 36)
    while len(sent) < n_frames:
        batch = min(rng.randint(1, 5), n_frames - len(sent))
        added = 0
        for _ in range(batch):
            pieces = rng.randint(1, 4)
            if bench.txq.num_free < pieces:
                break
            # every listed length twice (lane and burst edges), then random ones
            length = lengths[len(sent) % len(lengths)] if len(sent) < 2 * len(lengths) else rng.randint(14, MTU + 14)
            frame = ethernet(rng, length)
            cuts = cuts_for(rng, HDR_SIZE + length, pieces)
            offsets = [rng.randrange(bench.lanes) for _ in range(pieces)]
            segs = bench.add_tx(frame, cuts, offsets)
            sent.append(frame)
            added += 1
            cov.hit("chain_len", pieces)
            cov.hit("hdr_split", bool(cuts) and cuts[0] < HDR_SIZE)
            for addr, _ in segs:
                cov.hit("start_lane", addr % bench.lanes)  # first byte lane of each buffer
            cov.hit("frame_len", "<=64" if length <= 64 else "65..1023" if length < 1024 else ">=1024")
        if added:
            cov.hit("batch", "1" if added == 1 else ">1")
            irqs_before = len(bench.irqs)
            await bench.publish(bench.txq)
            for _ in range(added):
                received.append(await bench.recv_frame())
            await bench.wait_used(bench.txq, bench.txq.published)
            await bench.wait_irq(VEC_TX, irqs_before)
            cov.hit("irq", "tx")
        for used in bench.txq.used():
            assert used.len == 0, f"TX used len {used.len}: the device writes nothing (SPLIT-DEV-16)"
    assert received == sent, next(f"frame {i}: sent {len(a)} bytes, got {len(b)}"
                                  for i, (a, b) in enumerate(zip(sent, received, strict=True)) if a != b)
    assert bench.txq.anomalies == [], bench.txq.anomalies
    assert bench.stat("tx_packets") == n_frames and bench.stat("tx_dropped") == 0
    assert await bench.status() & S.DEVICE_NEEDS_RESET == 0


@bench_test(SEED + 2, "engine_rx", chain_len=range(1, 4), hdr_split=[True, False],
            frame_len=["<=64", "65..1023", ">=1024"],
            drop=["no_buffer", "too_small", "oversize", "vlan_fits", "link_down"], irq=["rx"])
async def rx_into_posted_buffers(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """Frames from the wire land behind a virtio_net_hdr in posted chains of 1..3 writable buffers."""
    dut = bench.dut
    cov.expect("start_lane", range(bench.lanes))
    await bench.init()
    n_frames = workload(48, 20)
    posted = 0
    for i in range(n_frames):
        while bench.rxq.num_free >= 3 and len(bench.rx_posted) < 6:
            pieces = rng.randint(1, 3)
            total = HDR_SIZE + MTU + 14 + rng.randrange(64)
            cuts = cuts_for(rng, total, pieces)
            if pieces > 1 and rng.random() < 0.4:  # the header itself spread over two buffers
                cuts[0] = rng.randint(1, HDR_SIZE - 1)
            lens = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
            offsets = [rng.randrange(bench.lanes) for _ in range(pieces)]
            head = bench.post_rx(lens, offsets)
            posted += 1
            cov.hit("chain_len", pieces)
            cov.hit("hdr_split", lens[0] < HDR_SIZE)
            for _, addr, _ in bench.rx_posted[RXQ, head]:
                cov.hit("start_lane", addr % bench.lanes)
        await bench.publish(bench.rxq)
        length = [14, 60, 64, 65, 1024, MTU + 14][i] if i < 6 else rng.randint(14, MTU + 14)
        frame = ethernet(rng, length)
        irqs_before = len(bench.irqs)
        used_before = bench.rxq.used_idx()
        await bench.source.send(frame)
        await bench.wait_used(bench.rxq, used_before + 1)
        await bench.wait_irq(VEC_RX, irqs_before)
        cov.hit("irq", "rx")
        [used] = bench.rxq.used()
        assert used.len == HDR_SIZE + length, f"used len {used.len} for a {length}-byte frame (SPLIT-DEV-16)"
        got = bench.rx_data(used.head, used.len)
        assert got == RX_HDR + frame, f"frame {i}: data differs"
        cov.hit("frame_len", "<=64" if length <= 64 else "65..1023" if length < 1024 else ">=1024")
    assert bench.stat("rx_packets") == n_frames

    # the ring has buffers left: use them up, then a frame with nothing posted is dropped
    while bench.rx_posted:
        used_before = bench.rxq.used_idx()
        await bench.source.send(ethernet(rng, 100))
        await bench.wait_used(bench.rxq, used_before + 1)
        for used in bench.rxq.used():
            bench.rx_data(used.head, used.len)
    await bench.source.send(ethernet(rng, 100))
    await bench.source.wait()
    await bench.quiet(200)
    assert bench.stat("rx_no_buffer") == 1
    cov.hit("drop", "no_buffer")

    # NET-DEV-29 without MRG_RXBUF: a chain too small for the packet stays available, the frame is dropped
    head = bench.post_rx([40], [0])
    await bench.publish(bench.rxq)
    used_before = bench.rxq.used_idx()
    await bench.source.send(ethernet(rng, 100))
    await bench.source.wait()
    await bench.quiet(200)
    assert bench.rxq.used_idx() == used_before and bench.stat("rx_dropped") == 1
    cov.hit("drop", "too_small")
    small = ethernet(rng, 28)  # 12 + 28 = 40 bytes fit exactly
    await bench.source.send(small)
    await bench.wait_used(bench.rxq, used_before + 1)
    [used] = bench.rxq.used()
    assert used.head == head and bench.rx_data(head, used.len) == RX_HDR + small

    # NET-DEV-05 with VIRTIO_NET_F_MTU: longer than mtu + 14 (+ 4 with an 802.1Q tag) is dropped
    bench.post_rx([HDR_SIZE + MTU + 40], [0])
    await bench.publish(bench.rxq)
    used_before = bench.rxq.used_idx()
    await bench.source.send(ethernet(rng, MTU + 15))
    await bench.source.wait()
    await bench.quiet(200)
    assert bench.rxq.used_idx() == used_before and bench.stat("rx_dropped") == 2
    cov.hit("drop", "oversize")
    tagged = ethernet(rng, MTU + 18, ethertype=0x8100)
    await bench.source.send(tagged)
    await bench.wait_used(bench.rxq, used_before + 1)
    [used] = bench.rxq.used()
    assert bench.rx_data(used.head, used.len) == RX_HDR + tagged
    cov.hit("drop", "vlan_fits")

    # link down: a configuration change notification, and frames from the wire are dropped
    bench.post_rx([256], [0])
    await bench.publish(bench.rxq)
    irqs_before = len(bench.irqs)
    dut.link_up.value = 0
    await bench.wait_irq(VEC_CONFIG, irqs_before)
    await bench.source.send(ethernet(rng, 64))
    await bench.source.wait()
    await bench.quiet(100)
    assert bench.stat("rx_dropped") == 3 and bench.rxq.used_idx() == used_before + 1
    cov.hit("drop", "link_down")
    dut.link_up.value = 1
    assert bench.rxq.anomalies == []


@bench_test(SEED + 3, "engine_suppression", no_event_idx=["suppressed", "notified"],
            event_idx=["before_event", "crossed", "avail_event_written", "driver_kick_skipped"], queue=["tx", "rx"])
async def interrupt_suppression(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """VRING_AVAIL_F_NO_INTERRUPT without EVENT_IDX; used_event (and avail_event) with it."""
    await bench.init()

    async def tx(n: int) -> None:
        for _ in range(n):
            bench.add_tx(ethernet(rng, 80), [], [0])
        await bench.publish(bench.txq)
        for _ in range(n):
            await bench.recv_frame()
        await bench.wait_used(bench.txq, bench.txq.published)
        await bench.quiet()
        bench.txq.used()

    async def rx(n: int) -> None:
        for _ in range(n):
            bench.post_rx([200], [0])
        await bench.publish(bench.rxq)
        for _ in range(n):
            used_before = bench.rxq.used_idx()
            await bench.source.send(ethernet(rng, 80))
            await bench.wait_used(bench.rxq, used_before + 1)
        await bench.quiet()
        for used in bench.rxq.used():
            bench.rx_data(used.head, used.len)

    # SPLIT-DEV-09/10: without EVENT_IDX the avail ring's flag decides
    for q, vec, run in ((bench.txq, VEC_TX, tx), (bench.rxq, VEC_RX, rx)):
        q.set_no_interrupt(True)
        before = len(bench.irqs)
        await run(3)
        assert vec not in bench.irqs[before:], "interrupt despite VRING_AVAIL_F_NO_INTERRUPT"
        cov.hit("no_event_idx", "suppressed")
        q.set_no_interrupt(False)
        before = len(bench.irqs)
        await run(1)
        assert bench.irqs[before:].count(vec) == 1
        cov.hit("no_event_idx", "notified")
        cov.hit("queue", "tx" if q is bench.txq else "rx")

    # SPLIT-DEV-12/13: with EVENT_IDX only used_event counts (avail.flags is disregarded)
    await bench.init(BASE_FEATURES | bits(F.EVENT_IDX))
    for q, vec, run in ((bench.txq, VEC_TX, tx), (bench.rxq, VEC_RX, rx)):
        q.auto_used_event = False
        q.write_avail_flags(1)  # must be ignored with EVENT_IDX
        q.set_used_event(q.used_idx() + 3)  # interrupt when entry used_idx+3 is used (idx passes +4)
        before = len(bench.irqs)
        await run(3)
        assert vec not in bench.irqs[before:], "interrupt before used_event was crossed"
        cov.hit("event_idx", "before_event")
        await run(2)
        assert bench.irqs[before:].count(vec) == 1, bench.irqs[before:]
        cov.hit("event_idx", "crossed")
        q.write_avail_flags(0)

    # with EVENT_IDX the device asks for the next kick through avail_event once it ran dry
    assert bench.txq.avail_event() == bench.txq.published, (bench.txq.avail_event(), bench.txq.published)
    cov.hit("event_idx", "avail_event_written")
    # the driver skips a doorbell when avail_event says the device has not caught up yet
    bench.mem.write(bench.txq.used_addr + bench.txq.layout.avail_event, U16.pack(bench.txq.published + 5))
    bench.add_tx(ethernet(rng, 70), [], [0])
    assert not bench.txq.publish(), "no kick wanted below avail_event"
    cov.hit("event_idx", "driver_kick_skipped")
    await bench.kick(bench.txq)  # a spurious extra doorbell is harmless (SPLIT-DEV-22)
    await bench.recv_frame()
    await bench.wait_used(bench.txq, bench.txq.published)
    assert bench.txq.anomalies == [] and bench.rxq.anomalies == []


@bench_test(SEED + 4, "engine_wrap", wrap=["tx", "rx"])
async def used_idx_wraps(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """Rings resumed at 0xFFF0 through the vq state block: used idx wraps over 65536 on both queues."""
    start_idx = 0xFFF0
    await bench.init(start_idx=start_idx)
    n_frames = workload(40, 20)  # a multiple of 4 past the 16 indices to the wrap
    frames = [ethernet(rng, rng.randint(60, 300)) for _ in range(n_frames)]
    for i in range(0, len(frames), 4):
        for f in frames[i:i + 4]:
            bench.add_tx(f, cuts_for(rng, HDR_SIZE + len(f), 2), [0, 3])
        await bench.publish(bench.txq)
        for f in frames[i:i + 4]:
            assert await bench.recv_frame() == f
        await bench.wait_used(bench.txq, bench.txq.published)
        assert len(bench.txq.used()) == 4
    assert bench.txq.used_idx() == (start_idx + n_frames) & 0xFFFF
    cov.hit("wrap", "tx")
    for f in frames:
        bench.post_rx([400], [rng.randrange(bench.lanes)])
        await bench.publish(bench.rxq)
        used_before = bench.rxq.used_idx()
        await bench.source.send(f)
        await bench.wait_used(bench.rxq, used_before + 1)
        [used] = bench.rxq.used()
        assert bench.rx_data(used.head, used.len) == RX_HDR + f
    assert bench.rxq.used_idx() == (start_idx + n_frames) & 0xFFFF
    cov.hit("wrap", "rx")
    state = await bench.bar.read(VQ_STATE_OFF + VQ_STATE_STRIDE * TXQ, 4)
    assert state == ((start_idx + n_frames) & 0xFFFF) * 0x10001, f"vq state {state:#x}"
    assert bench.txq.anomalies == [] and bench.rxq.anomalies == []


@bench_test(SEED + 5, "engine_hostile", error=ERR_NAMES.values(), queue=["tx", "rx"], recovered=[True])
async def hostile_rings_need_reset(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """Each malformed ring stops the device with DEVICE_NEEDS_RESET and a config notification; reset recovers."""
    dut = bench.dut
    buf = 0x80000  # a data area outside the allocator's use

    def chain(q: DriverSplitQueue, table: dict[int, Descriptor], head: int) -> None:
        q.add_raw(table, head)

    cases: list[tuple[str, int, Callable[[DriverSplitQueue], None]]] = [
        ("chain_len", TXQ, lambda q: chain(q, {0: Descriptor(buf, 64, DescFlags.NEXT, 1),
                                               1: Descriptor(buf, 64, DescFlags.NEXT, 0)}, 0)),
        ("chain_len", RXQ, lambda q: chain(q, {0: Descriptor(buf, 64, DescFlags.WRITE | DescFlags.NEXT, 0)}, 0)),
        ("next_range", TXQ, lambda q: chain(q, {0: Descriptor(buf, 64, DescFlags.NEXT, QSIZE)}, 0)),
        ("head_range", TXQ, lambda q: q.push_head(QSIZE)),
        ("avail_ahead", TXQ, lambda q: setattr(q, "avail_idx", QSIZE + 1)),
        ("rd_after_wr", TXQ, lambda q: chain(q, {0: Descriptor(buf, 64, DescFlags.WRITE | DescFlags.NEXT, 1),
                                                 1: Descriptor(buf, 64, 0, 0)}, 0)),
        ("indirect", TXQ, lambda q: chain(q, {0: Descriptor(buf, 32, DescFlags.INDIRECT, 0)}, 0)),
        ("dma", TXQ, lambda q: chain(q, {0: Descriptor(1 << bench.addr_w, 64, 0, 0)}, 0)),
    ]
    errors_before = int(dut.err_count.value)
    for name, qi, build in cases:
        await bench.init()
        q = bench.queues[qi]
        build(q)
        code = await bench.stops_on_driver_error(qi, functools.partial(bench.kick, q), rng,
                                                 functools.partial(bench.publish, q))
        assert ERR_NAMES.get(code) == name, f"{name}: last_err_code {code}"
        assert q.used_idx() == 0, "nothing was returned from a malformed ring"
        cov.hit("error", name)
        cov.hit("queue", "tx" if qi == TXQ else "rx")
    assert int(dut.err_count.value) == errors_before + len(cases)
    assert bench.stat("tx_packets") == 0 and bench.sink.empty()

    # a device reset brings it back
    await bench.init()
    frame = ethernet(rng, 200)
    bench.add_tx(frame, [5, 100], [1, 2, 3])
    await bench.publish(bench.txq)
    assert await bench.recv_frame() == frame
    await bench.wait_used(bench.txq, 1)
    assert await bench.status() == S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK
    cov.hit("recovered", True)


@bench_test(SEED + 6, "engine_queue_reset_link", queue_reset=["done", "restarted"], link_down=["tx_dropped"])
async def queue_reset_and_link(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """VIRTIO_F_RING_RESET on the transmit queue mid-life; link down drops transmitted frames."""
    dut = bench.dut
    await bench.init(BASE_FEATURES | bits(F.RING_RESET))
    for _ in range(3):
        bench.add_tx(ethernet(rng, 90), [], [0])
    await bench.publish(bench.txq)
    for _ in range(3):
        await bench.recv_frame()
    await bench.wait_used(bench.txq, 3)
    await bench.queue_reset(TXQ, 20)
    assert await bench.bar.common(C.QUEUE_ENABLE) == 0
    # the vendor block keeps where the queue stopped until it is enabled again (GET_VRING_BASE)
    assert await bench.bar.read(VQ_STATE_OFF + VQ_STATE_STRIDE * TXQ, 4) == 3 * 0x10001
    cov.hit("queue_reset", "done")
    bench.txq.close()
    fresh = DriverSplitQueue(bench.mem, bench.alloc, QSIZE, index=TXQ)
    bench.queues[TXQ] = fresh
    await bench.bar.set_common(C.QUEUE_SIZE, QSIZE)
    await bench.bar.set_common(C.QUEUE_MSIX_VECTOR, VEC_TX)
    await bench.bar.set_common(C.QUEUE_DESC, fresh.desc_addr)
    await bench.bar.set_common(C.QUEUE_DRIVER, fresh.avail_addr)
    await bench.bar.set_common(C.QUEUE_DEVICE, fresh.used_addr)
    await bench.bar.set_common(C.QUEUE_ENABLE, 1)
    # enabled without a vq state write: it starts at 0 (RESET-DEV-04)
    assert await bench.bar.read(VQ_STATE_OFF + VQ_STATE_STRIDE * TXQ, 4) == 0, "RESET-DEV-04: indices back to 0"
    frame = ethernet(rng, 300)
    bench.add_tx(frame, [7], [4, 5])
    await bench.publish(fresh)
    assert await bench.recv_frame() == frame
    await bench.wait_used(fresh, 1)
    cov.hit("queue_reset", "restarted")

    dut.link_up.value = 0
    irqs_before = len(bench.irqs)
    await bench.wait_irq(VEC_CONFIG, irqs_before)
    bench.add_tx(ethernet(rng, 300), [], [0])
    await bench.publish(fresh)
    await bench.wait_used(fresh, 2)
    await bench.quiet(100)
    assert bench.sink.empty() and bench.stat("tx_dropped") == 1
    assert [u.len for u in fresh.used()] == [0, 0], "a frame dropped for link down is still returned"
    cov.hit("link_down", "tx_dropped")
    dut.link_up.value = 1


# stopped_after: "none" when the request beats the first chain
@bench_test(SEED + 9, "engine_queue_stop", stopped_after=["some", "all"], resumed=[True])
async def queue_stop_mid_traffic_resumes_exactly(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """A queue reset requested while the engine works through a batch of transmit chains is a stop: the chain
    in service is finished (sent, used element and used idx written), the vendor block then reads the position
    the ring stopped at, equal to the used idx in memory and to the frames on the wire. The queue enabled again
    after a vq state write resumes there (load on enable) and sends the rest: every frame exactly once."""
    dut = bench.dut
    for attempt, delay in enumerate([0, 5, 40, 150, 300, 600, 1000, 1600, 8000]):
        await bench.init(BASE_FEATURES | bits(F.RING_RESET))
        start_idx = bench.txq.used_idx()
        frames = [ethernet(rng, 64 + 8 * k) + attempt.to_bytes(2, "big") for k in range(QSIZE - 2)]
        for f in frames:
            bench.add_tx(f, [], [0])
        await bench.publish(bench.txq)
        if delay:
            await ClockCycles(dut.clk, delay)
        await bench.queue_reset(TXQ, 200)
        state = await bench.bar.read(VQ_STATE_OFF + VQ_STATE_STRIDE * TXQ, 4)
        stopped = (state & 0xFFFF) - start_idx
        sent = []
        while not bench.sink.empty():
            sent.append(bytes((await bench.sink.recv()).tdata))
        assert state >> 16 == state & 0xFFFF == bench.txq.used_idx(), (
            f"vq state {state:#x}, used idx in memory {bench.txq.used_idx()}")
        assert sent == frames[:stopped], f"stopped at {stopped}, {len(sent)} frames on the wire"
        cov.hit("stopped_after", "none" if stopped == 0 else "all" if stopped == len(frames) else "some")
        # resume the same rings at the stop position: size, addresses, vector, state, enable
        q = bench.txq
        await bench.bar.set_common(C.QUEUE_SIZE, QSIZE)
        await bench.bar.set_common(C.QUEUE_MSIX_VECTOR, VEC_TX)
        await bench.bar.set_common(C.QUEUE_DESC, q.desc_addr)
        await bench.bar.set_common(C.QUEUE_DRIVER, q.avail_addr)
        await bench.bar.set_common(C.QUEUE_DEVICE, q.used_addr)
        await bench.bar.write(VQ_STATE_OFF + VQ_STATE_STRIDE * TXQ, state & 0xFFFF, 2)
        await bench.bar.set_common(C.QUEUE_ENABLE, 1)
        assert await bench.bar.read(VQ_STATE_OFF + VQ_STATE_STRIDE * TXQ, 4) == state, "loaded on enable"
        await bench.kick(q)
        rest = [bytes((await bench.sink.recv()).tdata) for _ in frames[stopped:]]
        assert rest == frames[stopped:]
        await bench.wait_used(q, q.avail_idx)
        await bench.quiet(200)
        assert bench.sink.empty(), "a frame was sent twice"
        q.used()
        cov.hit("resumed", True)
