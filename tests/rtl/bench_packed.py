"""cocotb bench of virtio_net_top's packed rings (VIRTIO_F_RING_PACKED negotiated), beside bench_engine's split ones.

The same rig as :mod:`tests.rtl.bench_engine` (guest memory shared with cocotbext-axi's AxiRam, frames on
AXI4-Stream, MSI-X requests recorded by vector); the driver side is
:class:`testbenches.driver.packed.DriverPackedQueue`. Queue sizes are mostly not powers of two, which only a
packed ring allows. Coverage: both wrap counters on both queues, lists of 1..3 descriptors (and lists that cross
the ring's end), the vq state block's packed word, each driver event suppression mode (ENABLE, DISABLE, DESC
crossed and not crossed), every packed driver error code.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable

from cocotb.triggers import ClockCycles

from backend.virtio.features import F, bits, has
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.packed_ring import (
    DESC_SIZE,
    EventFlags,
    PackedDescFlags,
    PackedDescriptor,
    advance,
    avail_bits,
    linear,
    packed_need_event,
)
from models.rtl import ERROR_CODES, NOTIFY_OFF, NOTIFY_OFF_MULTIPLIER, VQ_STATE_OFF, VQ_STATE_STRIDE
from testbenches.driver.packed import DriverPackedQueue
from testbenches.driver.split_ring import UsedBuffer
from tests.rtl.bench_common import workload
from tests.rtl.bench_engine import (
    BASE_FEATURES,
    MTU,
    RX_HDR,
    RXQ,
    SEED,
    TXQ,
    VEC_CONFIG,
    VEC_RX,
    VEC_TX,
    C,
    NetBench,
    QueuePair,
    S,
    bench_test,
    cuts_for,
    ethernet,
    split,
)
from tests.rtl.coverage import Coverage

PACKED = BASE_FEATURES | bits(F.RING_PACKED)
NEXT = int(PackedDescFlags.NEXT)
WRITE = int(PackedDescFlags.WRITE)
INDIRECT = int(PackedDescFlags.INDIRECT)
#: last_err_code of the packed driver errors (models.rtl.ERROR_CODES), by the rule the driver broke
PACKED_ERRORS = {code: rid for code, (rid, _) in ERROR_CODES.items() if rid.startswith("PACKED-")}


class PackedRig(QueuePair[DriverPackedQueue]):
    """receiveq1 and transmitq1 as packed rings on a :class:`NetBench`, brought up like a driver through BAR0."""

    def __init__(self, bench: NetBench) -> None:
        self.bench = bench
        self.queues: list[DriverPackedQueue] = []

    def close(self) -> None:
        for q in self.queues:
            q.close()
        self.queues = []

    async def up(self, size: int, features: int = PACKED) -> None:
        """Negotiate ``features`` (RING_PACKED among them), both queues of ``size`` slots (vector = index + 1),
        DRIVER_OK."""
        self.close()
        b = self.bench
        assert await b.negotiate(features) & S.FEATURES_OK, f"features {features:#x} refused"
        await b.bar.set_common(C.CONFIG_MSIX_VECTOR, VEC_CONFIG)
        self.queues = [DriverPackedQueue(b.mem, b.alloc, size, index=i, event_idx=has(features, F.EVENT_IDX),
                                         auto_used_event=False) for i in (RXQ, TXQ)]
        for q in self.queues:
            await self.program(q)
            await b.bar.set_common(C.QUEUE_ENABLE, 1)
            assert await b.bar.common(C.QUEUE_ENABLE) == 1, f"queue {q.index} of size {size} not enabled"
        await b.bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)

    async def program(self, q: DriverPackedQueue, driver_addr: int | None = None) -> None:
        b = self.bench
        await b.bar.set_common(C.QUEUE_SELECT, q.index)
        await b.bar.set_common(C.QUEUE_SIZE, q.size)
        await b.bar.set_common(C.QUEUE_MSIX_VECTOR, q.index + 1)
        await b.bar.set_common(C.QUEUE_DESC, q.desc_addr)
        await b.bar.set_common(C.QUEUE_DRIVER, q.driver_addr if driver_addr is None else driver_addr)
        await b.bar.set_common(C.QUEUE_DEVICE, q.device_addr)

    async def kick(self, q: DriverPackedQueue) -> None:
        await self.bench.bar.write(NOTIFY_OFF + NOTIFY_OFF_MULTIPLIER * q.index, q.index, 2)

    async def collect(self, q: DriverPackedQueue, count: int, cycles: int = 400000) -> list[UsedBuffer]:
        """Used buffers of ``q`` until ``count`` came back (bounded polling of guest memory)."""
        got: list[UsedBuffer] = []
        for _ in range(cycles // 32):
            got += q.used()
            if len(got) >= count:
                assert q.anomalies == [], q.anomalies
                return got
            await ClockCycles(self.bench.dut.clk, 32)
        raise AssertionError(f"queue {q.index}: {len(got)} of {count} buffers used; next used slot {q.next_used} "
                             f"wrap {q.used_wrap}, flags {q.read_desc(q.next_used).flags:#06x}")

    async def vq_state(self, q: DriverPackedQueue) -> int:
        return await self.bench.bar.read(VQ_STATE_OFF + VQ_STATE_STRIDE * q.index, 4)


def driver_state(q: DriverPackedQueue) -> int:
    """The packed vq state word the driver's positions imply (all buffers used: avail and used positions agree)."""
    return q.next_avail | q.avail_wrap << 15 | q.next_used << 16 | q.used_wrap << 31


@bench_test(SEED + 11, "packed_wrap", tx_wrap=[0, 1], rx_wrap=[0, 1], tx_list=[1, 2, 3], rx_list=[1, 2],
            crosses_end=[True, False], batch=["1", ">1"], vq_state_wrap=[0, 1])
async def packed_frames_across_wraps(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """TX lists of 1..3 descriptors and RX lists of 1..2 writable buffers over rings of sizes that are not powers
    of two, for several laps: frames intact in ring order, Buffer IDs and lengths right, used flags per the
    device wrap counter (the driver accepts nothing else), the vq state block's packed word at each lap."""
    rig = PackedRig(bench)
    for size in (7, 5):
        await rig.up(size)
        assert await rig.vq_state(rig.txq) == 0x80008000, "a fresh packed queue starts at {1, 0} / {1, 0}"
        tx, rx = rig.txq, rig.rxq
        n_frames = workload(6 * size, 3 * size + 2)
        sent: list[bytes] = []
        while len(sent) < n_frames:
            batch: list[bytes] = []
            while len(sent) + len(batch) < n_frames and tx.num_free >= 3 and rx.num_free >= 2:
                length = rng.randint(14, MTU + 14)
                frame = ethernet(rng, length)
                data = NetHdr().pack() + frame
                pieces = rng.randint(1, 3)
                cov.hit("tx_list", pieces)
                cov.hit("crosses_end", tx.next_avail + pieces > size)
                cov.hit("tx_wrap", tx.avail_wrap)  # the driver wrap counter at the list's head
                tx.add(split(data, cuts_for(rng, len(data), pieces)), [])
                rx_pieces = rng.randint(1, 2)
                total = HDR_SIZE + MTU + 14
                cov.hit("rx_wrap", rx.avail_wrap)
                rx.add([], [HDR_SIZE, total - HDR_SIZE] if rx_pieces == 2 else [total])
                cov.hit("rx_list", rx_pieces)
                batch.append(frame)
                if rng.random() < 0.4:
                    break
            cov.hit("batch", "1" if len(batch) == 1 else ">1")
            await rig.kick(rx)
            irqs_before = len(bench.irqs)
            await rig.kick(tx)
            for frame in batch:
                got = await bench.recv_frame()
                assert got == frame, f"frame {len(sent)}: sent {len(frame)} bytes, got {len(got)}"
                await bench.source.send(got)  # the loopback wire
            used_tx = await rig.collect(tx, len(batch))
            assert all(u.len == 0 for u in used_tx), "the device writes nothing into a TX buffer"
            used_rx = await rig.collect(rx, len(batch))
            for u, frame in zip(used_rx, batch, strict=True):
                assert u.len == HDR_SIZE + len(frame), f"RX used len {u.len} for a {len(frame)}-byte frame"
                assert u.data == RX_HDR + frame, "RX data differs"
            await bench.wait_irq(VEC_TX, irqs_before)
            await bench.wait_irq(VEC_RX, irqs_before)
            sent += batch
            for q in (tx, rx):
                word = await rig.vq_state(q)
                assert word == driver_state(q), f"queue {q.index}: vq state {word:#010x}, " \
                                                f"driver at {driver_state(q):#010x}"
                cov.hit("vq_state_wrap", word >> 15 & 1)
        assert bench.stat("tx_dropped") == 0
        assert await bench.status() & S.DEVICE_NEEDS_RESET == 0
    rig.close()


@bench_test(SEED + 12, "packed_suppression", mode=["enable", "disable", "desc_crossed", "desc_not_crossed"],
            wrap=[0, 1])
async def packed_event_suppression(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """The driver event suppression structure decides the used buffer notifications: DISABLE none, ENABLE one,
    and with EVENT_IDX RING_EVENT_FLAGS_DESC one exactly when the used descriptors just written cover
    desc_event_off/wrap (counted modulo two laps)."""
    rig = PackedRig(bench)
    for event_idx in (False, True):
        size = 10
        await rig.up(size, PACKED | (bits(F.EVENT_IDX) if event_idx else 0))
        tx = rig.txq
        modes = [EventFlags.ENABLE, EventFlags.DISABLE] + ([EventFlags.DESC] * 3 if event_idx else [])
        for step in range(workload(40, 16)):
            mode = rng.choice(modes)
            start = (tx.next_used, tx.used_wrap)
            n = rng.randint(1, 4)
            ahead = rng.randint(-3, 2 * n)
            lin = (linear(*start, size) + ahead) % (2 * size)
            ev = (lin % size, 1 if lin < size else 0)
            tx.set_driver_event(mode, *ev)
            for k in range(n):
                tx.add([NetHdr().pack() + ethernet(rng, 60 + k)], [])
            irqs_before = len(bench.irqs)
            await rig.kick(tx)
            for _ in range(n):
                await bench.recv_frame()
            await rig.collect(tx, n)
            await bench.quiet(300)  # the notification decision follows the last flags write
            new = advance(start[0], start[1], n, size)
            if mode == EventFlags.DESC:
                want = packed_need_event(ev[0], ev[1], new[0], new[1], n, size)
                name = "desc_crossed" if want else "desc_not_crossed"
            else:
                want = mode == EventFlags.ENABLE
                name = mode.name.lower()
            got = bench.irqs[irqs_before:].count(VEC_TX)
            assert (got >= 1) == want, (f"step {step}: {name}, {n} used from {start} to {new}, event {ev}: "
                                        f"{got} interrupt(s)")
            cov.hit("mode", name)
            cov.hit("wrap", start[1])
    rig.close()


@bench_test(SEED + 13, "packed_hostile", error=PACKED_ERRORS.values(),
            config=["odd_size_packed", "odd_size_split_refused", "driver_area_misaligned", "resume"])
async def packed_config_and_hostile_lists(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """queue_enable takes any packed size but only 4-byte aligned event areas (a size that is not a power of two
    is refused on a split ring); the vq state block resumes a packed ring where it was written; each malformed
    list stops the device with DEVICE_NEEDS_RESET, the error code naming the PACKED-DRV rule, nothing used."""
    rig = PackedRig(bench)

    # a split ring of 7 is refused (PCI-DRV-17), a packed one of 7 taken; a 2-byte aligned driver area is
    # enough for split but not for packed (PACKED-DRV-01)
    await bench.negotiate(BASE_FEATURES)
    await bench.bar.set_common(C.QUEUE_SELECT, TXQ)
    await bench.bar.set_common(C.QUEUE_SIZE, 7)
    await bench.bar.set_common(C.QUEUE_ENABLE, 1)
    assert await bench.bar.common(C.QUEUE_ENABLE) == 0 and await bench.status() & S.DEVICE_NEEDS_RESET
    cov.hit("config", "odd_size_split_refused")
    await rig.up(7)
    cov.hit("config", "odd_size_packed")
    assert await bench.negotiate(PACKED) & S.FEATURES_OK
    q = DriverPackedQueue(bench.mem, bench.alloc, 8, index=TXQ)
    await rig.program(q, driver_addr=q.driver_addr + 2)
    await bench.bar.set_common(C.QUEUE_ENABLE, 1)
    assert await bench.bar.common(C.QUEUE_ENABLE) == 0 and await bench.status() & S.DEVICE_NEEDS_RESET
    q.close()
    cov.hit("config", "driver_area_misaligned")

    # resume: the vq state word written while the queue is disabled is where it starts (offset 3, wrap 0)
    rig.close()
    assert await bench.negotiate(PACKED) & S.FEATURES_OK
    await bench.bar.set_common(C.CONFIG_MSIX_VECTOR, VEC_CONFIG)
    tx = DriverPackedQueue(bench.mem, bench.alloc, 6, index=TXQ)
    rig.queues = [DriverPackedQueue(bench.mem, bench.alloc, 6, index=RXQ), tx]
    tx.next_avail, tx.avail_wrap, tx.next_used, tx.used_wrap = 3, 0, 3, 0
    for slot in range(3, 6):  # as the ring looks there: slots 3.. used in the first lap (wrap 1), 0..2 in the
        tx.write_desc(slot, PackedDescriptor(0, 0, 0, int(PackedDescFlags.AVAIL | PackedDescFlags.USED)))
    # second (wrap 0: flags all zero, as the fresh ring already reads)
    for rq in rig.queues:
        await rig.program(rq)
        if rq is tx:
            await bench.bar.write(VQ_STATE_OFF + VQ_STATE_STRIDE * TXQ, 3, 2)
        await bench.bar.set_common(C.QUEUE_ENABLE, 1)
    await bench.bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    frames = [ethernet(rng, 100 + i) for i in range(5)]
    for frame in frames:
        tx.add([NetHdr().pack() + frame], [])
    await rig.kick(tx)
    assert [await bench.recv_frame() for _ in frames] == frames
    await rig.collect(tx, len(frames))
    assert await rig.vq_state(tx) == driver_state(tx) == 2 | 1 << 15 | 2 << 16 | 1 << 31
    cov.hit("config", "resume")

    buf = 0x80000  # a data area outside the allocator's use
    hdr = NetHdr().pack()
    bench.mem.write(buf, hdr + ethernet(rng, 60))

    def plain(q: DriverPackedQueue, descs: list[tuple[int, int]]) -> None:
        """(len, flags) per descriptor, each with the AVAIL/USED bits of its slot; head written last."""
        out = []
        pos = (q.next_avail, q.avail_wrap)
        for length, flags in descs:
            out.append(PackedDescriptor(buf, length, 0, flags | avail_bits(pos[1])))
            pos = advance(pos[0], pos[1], 1, q.size)
        q.expose_raw(out, 0)

    def tail_not_avail(q: DriverPackedQueue) -> None:
        tail_wrap = advance(q.next_avail, q.avail_wrap, 1, q.size)[1]  # flipped when the head is the last slot
        q.expose_raw([PackedDescriptor(buf, HDR_SIZE, 0, NEXT | avail_bits(q.avail_wrap)),
                      PackedDescriptor(buf, 60, 0, avail_bits(tail_wrap ^ 1))], 0)

    cases: list[tuple[str, int, Callable[[DriverPackedQueue], None]]] = [
        ("PACKED-DRV-11", TXQ, tail_not_avail),
        ("PACKED-DRV-07", TXQ, lambda q: plain(q, [(HDR_SIZE, NEXT)] * q.size)),
        ("PACKED-DRV-07", RXQ, lambda q: plain(q, [(64, WRITE | NEXT)] * q.size)),
        ("PACKED-DRV-12", TXQ, lambda q: plain(q, [(DESC_SIZE, INDIRECT)])),
        ("PACKED-DRV-08", TXQ, lambda q: plain(q, [(HDR_SIZE, WRITE | NEXT), (60, 0)])),
    ]
    for rule, qi, build in cases:
        await rig.up(5)
        q = rig.queues[qi]
        for k in range(rng.randint(0, 7)):  # somewhere in the first or second lap
            rig.txq.add([hdr + ethernet(rng, 60 + k)], [])
            await rig.kick(rig.txq)
            await bench.recv_frame()
            await rig.collect(rig.txq, 1)
        build(q)
        code = await bench.stops_on_driver_error(qi, functools.partial(rig.kick, q), rng)
        assert PACKED_ERRORS.get(code) == rule, f"{rule}: last_err_code {code}"
        assert q.used() == [], "nothing was returned from a malformed list"
        cov.hit("error", rule)
    rig.close()
