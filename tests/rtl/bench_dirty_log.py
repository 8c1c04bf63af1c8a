"""cocotb bench of virtio_net_top's vendor dirty page log block (BAR0 0x3F00, models/rtl/README.md).

The bench programs the block like the backend's driver (a bytemap allocated in guest memory, LOG_PAGES,
ENABLE), runs transmit and receive traffic over random chains and watches every write the device's AXI4
master makes through the guest memory model's write gate (bench_engine.GuestRam): writes into the bytemap
are the device's log writes, all others its guest writes. The contract checked:

* the nonzero bytes of the bytemap are exactly the pages (< LOG_PAGES) of the guest writes the memory
  accepted, each log write is the byte 0x01 and only into the bytemap;
* a page's log write comes before the device goes on to a write in another page, and before the interrupt
  of the batch (the device does not consider a write done before it is logged);
* a page >= LOG_PAGES sets OVERFLOW, a refused log write (SLVERR) or a bytemap past ADDR_W sets FAULT and
  nothing else happens; both clear by writing 1 and when ENABLE goes 0 -> 1;
* with ENABLE 0 nothing is logged, BUSY reads 0 once the log writes in flight are done, and a device reset
  clears every register of the block.

tests/rtl/test_rtl.py also runs it on the VNET_BUG_LOG_SKIP_USED build, where the bytemap check must fail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import cast

import cocotb
from cocotb.handle import LogicObject
from cocotb.triggers import ClockCycles, RisingEdge

from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.split_ring import DescFlags, Descriptor
from models.rtl import (
    LOG_BASE_HI,
    LOG_BASE_LO,
    LOG_CTRL,
    LOG_CTRL_BUSY,
    LOG_CTRL_ENABLE,
    LOG_PAGE_SHIFT,
    LOG_PAGES,
    LOG_STATUS,
    LOG_STATUS_FAULT,
    LOG_STATUS_OVERFLOW,
)
from tests.rtl import designs
from tests.rtl.bench_common import workload
from tests.rtl.bench_engine import (
    MEM_SIZE,
    MTU,
    RX_HDR,
    SEED,
    VEC_RX,
    VEC_TX,
    NetBench,
    bench_test,
    cuts_for,
    ethernet,
    split,
)
from tests.rtl.bench_packed import PackedRig
from tests.rtl.coverage import Coverage

PAGE = 1 << LOG_PAGE_SHIFT
MEM_PAGES = MEM_SIZE >> LOG_PAGE_SHIFT
BYTEMAP_DIFFERS = designs.LOG_BYTEMAP_DIFFERS
REGISTERS = {"LOG_BASE_LO": LOG_BASE_LO, "LOG_BASE_HI": LOG_BASE_HI, "LOG_PAGES": LOG_PAGES, "LOG_CTRL": LOG_CTRL,
             "LOG_STATUS": LOG_STATUS}


class WriteRefused(Exception):
    """The memory model refuses a write (the bus answers SLVERR)."""


@dataclass
class LogWatch:
    """What the device wrote, as seen by the memory model, against the block as the bench programmed it."""

    base: int = 0
    pages: int = 0
    logging: bool = False  # ENABLE is set: guest writes must be logged
    refused: range = range(0)  # bus addresses the memory refuses to write
    written: set[int] = field(default_factory=set)  # pages (< pages) of guest writes accepted while logging
    overflowed: set[int] = field(default_factory=set)  # pages (>= pages) of guest writes while logging
    pending: set[int] = field(default_factory=set)  # of written: pages whose log write has not come yet
    log_writes: int = 0
    errors: list[str] = field(default_factory=list)  # log writes the contract does not allow
    order: list[str] = field(default_factory=list)  # a write or an interrupt before an earlier page was logged

    def gate(self, address: int, data: bytes) -> None:
        """bench_engine.WriteGate: sort one run of lanes into log write or guest write, refuse some."""
        if address in self.refused:
            raise WriteRefused(f"write of {len(data)} bytes at {address:#x}")
        page = address >> LOG_PAGE_SHIFT
        if self.base <= address < self.base + self.pages:
            offset = address - self.base
            if not self.logging:
                self.errors.append(f"log write at bytemap byte {offset} with ENABLE 0")
            elif data != b"\x01":
                self.errors.append(f"log write of {data.hex()} at bytemap byte {offset} (not one byte 01)")
            elif offset not in self.pending:
                self.errors.append(f"log write for page {offset:#x}, which has no write waiting for it")
            self.pending.discard(offset)
            self.log_writes += 1
            return
        if not self.logging:
            return
        if self.pending - {page}:
            self.order.append(f"write to page {page:#x} while page(s) {sorted(self.pending)} wait for their log write")
        if page < self.pages:
            self.written.add(page)
            self.pending.add(page)
        else:
            self.overflowed.add(page)

    def interrupt(self, what: str) -> None:
        """The device raised the interrupt of a batch: everything it wrote before is logged."""
        if self.logging and self.pending:
            self.order.append(f"{what} interrupt while page(s) {sorted(self.pending)} wait for their log write")

    def restart(self, base: int, pages: int) -> None:
        self.base, self.pages = base, pages
        self.written.clear()
        self.overflowed.clear()
        self.pending.clear()


class LogRig:
    """The dirty page log block of a :class:`NetBench` through BAR0, and the watch on its memory."""

    def __init__(self, bench: NetBench) -> None:
        self.bench = bench
        self.watch = LogWatch()
        bench.ram.write_if.gate = self.watch.gate
        self.busy_rises = 0
        cocotb.start_soon(self._busy_monitor())

    async def _busy_monitor(self) -> None:
        busy = cast(LogicObject, self.bench.dut.log_busy)
        while True:
            await RisingEdge(busy)
            self.busy_rises += 1

    async def read(self, name: str) -> int:
        return await self.bench.bar.read(REGISTERS[name], 4)

    async def write(self, name: str, value: int) -> None:
        await self.bench.bar.write(REGISTERS[name], value, 4)

    async def registers(self) -> dict[str, int]:
        return {name: await self.read(name) for name in REGISTERS}

    async def program(self, base: int, pages: int) -> None:
        """LOG_BASE and LOG_PAGES (ENABLE is 0), then ENABLE; the watch expects logging from here."""
        await self.write("LOG_BASE_LO", base & 0xFFFFFFFF)
        await self.write("LOG_BASE_HI", base >> 32)
        await self.write("LOG_PAGES", pages)
        self.watch.restart(base, pages)
        self.watch.logging = True
        await self.write("LOG_CTRL", LOG_CTRL_ENABLE)

    async def stop(self, polls: int = 20) -> None:
        """Clear ENABLE, then read LOG_CTRL until BUSY is 0 (bounded), as the driver does before its last fold."""
        await self.write("LOG_CTRL", 0)
        for _ in range(polls):
            ctrl = await self.read("LOG_CTRL")
            if not ctrl & LOG_CTRL_BUSY:
                assert ctrl == 0, f"LOG_CTRL {ctrl:#x} after ENABLE 0"
                self.watch.logging = False
                return
        raise AssertionError("LOG_CTRL BUSY never dropped after ENABLE 0")

    async def settle(self, cycles: int = 20000) -> None:
        """Until no page written waits for its log write (bounded polling; ``check`` says which never came)."""
        for _ in range(cycles // 16):
            if not self.watch.pending:
                return
            await ClockCycles(cast(LogicObject, self.bench.dut.clk), 16)

    def bytemap(self) -> set[int]:
        return {p for p, b in enumerate(self.bench.mem.read(self.watch.base, self.watch.pages)) if b}

    def clear_bytemap(self) -> None:
        self.bench.mem.write(self.watch.base, bytes(self.watch.pages))

    def check(self, what: str) -> None:
        """The bytemap holds exactly the pages written; every log write was allowed and came in time."""
        w = self.watch
        got = self.bytemap()
        missing, extra = sorted(w.written - got), sorted(got - w.written)
        assert not missing and not extra, (
            f"{what}: {BYTEMAP_DIFFERS}: written but not logged {[hex(p * PAGE) for p in missing]}, "
            f"logged but not written {[hex(p * PAGE) for p in extra]}")
        assert not w.errors, f"{what}: {w.errors}"
        assert not w.order, f"{what}: {w.order[:4]}"
        assert not w.pending, f"{what}: page(s) {sorted(w.pending)} never logged"


def fill_ring_page(bench: NetBench, last_part: int) -> None:
    """Take the rest of the rings' page (the one of ``last_part``, the last ring part allocated) from the allocator,
    so that only ring writes (used elements, used idx) touch it: a missing log of them then shows in the bytemap."""
    end = (last_part | (PAGE - 1)) + 1
    while (gpa := bench.alloc.alloc(16)) < end:
        pass
    bench.alloc.free(gpa)


async def tx_frames(bench: NetBench, rig: LogRig, rng: random.Random, n: int) -> None:
    """``n`` frames in batches of 1..4 chains of 1..4 descriptors at random byte offsets; each batch is sent,
    used and notified before the next."""
    left = n
    while left:
        frames = []
        for _ in range(min(rng.randint(1, 4), left)):
            pieces = rng.randint(1, 4)
            length = rng.randint(14, MTU + 14)
            frame = ethernet(rng, length)
            bench.add_tx(frame, cuts_for(rng, HDR_SIZE + length, pieces),
                         [rng.randrange(bench.lanes) for _ in range(pieces)])
            frames.append(frame)
        left -= len(frames)
        irqs_before = len(bench.irqs)
        await bench.publish(bench.txq)
        assert [await bench.recv_frame() for _ in frames] == frames
        await bench.wait_used(bench.txq, bench.txq.published)
        await bench.wait_irq(VEC_TX, irqs_before)
        rig.watch.interrupt("transmit")
        bench.txq.used()


async def rx_frames(bench: NetBench, rig: LogRig, rng: random.Random, n: int) -> None:
    """``n`` frames of random length into posted chains of 1..3 writable buffers at random byte offsets."""
    for _ in range(n):
        pieces = rng.randint(1, 3)
        total = HDR_SIZE + MTU + 14
        cuts = cuts_for(rng, total, pieces)
        lens = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
        bench.post_rx(lens, [rng.randrange(bench.lanes) for _ in range(pieces)])
        await bench.publish(bench.rxq)
        frame = ethernet(rng, rng.randint(14, MTU + 14))
        await rx_one(bench, rig, frame)
        [used] = bench.rxq.used()
        assert bench.rx_data(used.head, used.len) == RX_HDR + frame


async def rx_one(bench: NetBench, rig: LogRig, frame: bytes) -> None:
    """``frame`` from the wire into the buffers already published; until its used element and interrupt."""
    irqs_before = len(bench.irqs)
    used_before = bench.rxq.used_idx()
    await bench.source.send(frame)
    await bench.wait_used(bench.rxq, used_before + 1)
    await bench.wait_irq(VEC_RX, irqs_before)
    rig.watch.interrupt("receive")


async def rx_across_pages(bench: NetBench, rig: LogRig, rng: random.Random, area: int) -> None:
    """One frame into a buffer that starts 100 bytes before a page boundary of ``area`` (two pages): one DMA
    command over two pages, each logged."""
    addr, length = area + PAGE - 100, 1000
    head = bench.rxq.add([], [HDR_SIZE + length])
    bench.rxq.write_desc(head, Descriptor(addr, HDR_SIZE + length, DescFlags.WRITE, 0))
    await bench.publish(bench.rxq)
    frame = ethernet(rng, length)
    await rx_one(bench, rig, frame)
    [used] = bench.rxq.used()
    assert used.head == head and bench.mem.read(addr, used.len) == RX_HDR + frame
    assert {addr >> LOG_PAGE_SHIFT, (addr + used.len - 1) >> LOG_PAGE_SHIFT} <= rig.watch.written


@bench_test(SEED + 40, "dirty_log", phase=["tx", "rx", "page_crossing", "disabled", "overflow", "fault_slverr",
                                           "fault_addr", "reset"], busy=["high", "dropped"])
async def dirty_log_tracks_device_writes(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """Every page the device writes is in the bytemap and nothing else; OVERFLOW, FAULT, ENABLE, BUSY, reset."""
    rig = LogRig(bench)
    await bench.init()
    fill_ring_page(bench, max(q.used_addr for q in bench.queues))
    bytemap = bench.alloc.alloc(MEM_PAGES, PAGE)
    area = bench.alloc.alloc(2 * PAGE, PAGE)
    refused = bench.alloc.alloc(PAGE, PAGE)
    assert await rig.registers() == dict.fromkeys(REGISTERS, 0), "the block starts cleared"

    # the whole memory logged: base and pages read back and are fixed while enabled
    await rig.program(bytemap, MEM_PAGES)
    assert await rig.registers() == {"LOG_BASE_LO": bytemap, "LOG_BASE_HI": 0, "LOG_PAGES": MEM_PAGES,
                                     "LOG_CTRL": LOG_CTRL_ENABLE, "LOG_STATUS": 0}
    await rig.write("LOG_BASE_LO", refused)
    await rig.write("LOG_PAGES", 1)
    assert (await rig.read("LOG_BASE_LO"), await rig.read("LOG_PAGES")) == (bytemap, MEM_PAGES), "writable enabled"
    await tx_frames(bench, rig, rng, workload(12, 4))
    rig.check("transmit")
    assert rig.watch.written, "transmit wrote nothing"
    cov.hit("phase", "tx")
    await rx_frames(bench, rig, rng, workload(10, 3))
    rig.check("receive")
    cov.hit("phase", "rx")
    await rx_across_pages(bench, rig, rng, area)
    rig.check("receive across a page boundary")
    cov.hit("phase", "page_crossing")
    assert await rig.read("LOG_STATUS") == 0, "no overflow, no fault"
    if rig.busy_rises:
        cov.hit("busy", "high")
    await rig.stop()
    cov.hit("busy", "dropped")
    rig.check("after ENABLE 0")

    # disabled: nothing is logged (the gate flags any bytemap write)
    rig.clear_bytemap()
    writes_before = rig.watch.log_writes
    await tx_frames(bench, rig, rng, 2)
    await rx_frames(bench, rig, rng, 1)
    assert not rig.bytemap() and rig.watch.log_writes == writes_before and not rig.watch.errors, "logged disabled"
    cov.hit("phase", "disabled")

    # LOG_PAGES short of the buffers: the ring page is logged, buffer pages set OVERFLOW and are not logged
    ring_page = bench.rxq.used_addr >> LOG_PAGE_SHIFT
    await rig.program(bytemap, ring_page + 1)
    await rx_frames(bench, rig, rng, 1)
    rig.check("LOG_PAGES short")
    assert rig.watch.written == {ring_page} and rig.watch.overflowed, (rig.watch.written, rig.watch.overflowed)
    assert await rig.read("LOG_STATUS") == LOG_STATUS_OVERFLOW
    await rig.write("LOG_STATUS", LOG_STATUS_FAULT)  # write 1 to clear: the other bit stays
    assert await rig.read("LOG_STATUS") == LOG_STATUS_OVERFLOW
    await rig.write("LOG_STATUS", LOG_STATUS_OVERFLOW)
    assert await rig.read("LOG_STATUS") == 0
    await rx_frames(bench, rig, rng, 1)
    assert await rig.read("LOG_STATUS") == LOG_STATUS_OVERFLOW
    await rig.stop()
    await rig.write("LOG_CTRL", LOG_CTRL_ENABLE)
    assert await rig.read("LOG_STATUS") == 0, "ENABLE 0 -> 1 clears the status"
    await rig.stop()
    cov.hit("phase", "overflow")

    # a bytemap the memory refuses: FAULT, and the traffic goes on (no driver error)
    rig.watch.refused = range(refused, refused + PAGE)
    await rig.program(refused, MEM_PAGES)
    rig.watch.logging = False  # nothing can land; the watch only refuses
    await tx_frames(bench, rig, rng, 1)
    assert await rig.read("LOG_STATUS") == LOG_STATUS_FAULT
    assert not await bench.status() & 0x40, "a refused log write is no device error"
    cov.hit("phase", "fault_slverr")
    await rig.stop()
    # a bytemap past the master's address width: FAULT without a bus access
    await rig.program(1 << bench.addr_w, MEM_PAGES)
    rig.watch.logging = False
    await rx_frames(bench, rig, rng, 1)
    assert await rig.read("LOG_STATUS") == LOG_STATUS_FAULT
    cov.hit("phase", "fault_addr")

    assert bench.txq.anomalies == [] and bench.rxq.anomalies == []

    # a device reset clears the block (set, enabled, with a status bit up)
    assert (await rig.read("LOG_CTRL")) & LOG_CTRL_ENABLE
    await bench.reset()
    assert await rig.registers() == dict.fromkeys(REGISTERS, 0), "a device reset clears the block"
    cov.hit("phase", "reset")


@bench_test(SEED + 41, "dirty_log_packed", phase=["packed"], tx_list=[1, 2, 3], crosses_end=[True, False])
async def dirty_log_packed_rings(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """Packed rings: the used descriptors (id and len, then flags) and the receive buffers are logged exactly."""
    rig = LogRig(bench)
    packed = PackedRig(bench)
    size = 7
    await packed.up(size)  # a device reset: the block is programmed after it
    fill_ring_page(bench, max(q.device_addr for q in packed.queues))
    await rig.program(bench.alloc.alloc(MEM_PAGES, PAGE), MEM_PAGES)
    tx, rx = packed.txq, packed.rxq
    for _ in range(workload(8, 3)):
        batch: list[bytes] = []
        while len(batch) < 3 and tx.num_free >= 3 and rx.num_free >= 1:
            frame = ethernet(rng, rng.randint(14, MTU + 14))
            data = NetHdr().pack() + frame
            pieces = rng.randint(1, 3)
            cov.hit("tx_list", pieces)
            cov.hit("crosses_end", tx.next_avail + pieces > size)
            tx.add(split(data, cuts_for(rng, len(data), pieces)), [])
            rx.add([], [HDR_SIZE + MTU + 14])
            batch.append(frame)
        await packed.kick(rx)
        await packed.kick(tx)
        for frame in batch:
            assert await bench.recv_frame() == frame
            await bench.source.send(frame)  # the loopback wire
        await packed.collect(tx, len(batch))
        assert [u.data for u in await packed.collect(rx, len(batch))] == [RX_HDR + f for f in batch]
    await rig.settle()
    rig.check("packed rings")
    assert rig.watch.written and await rig.read("LOG_STATUS") == 0
    cov.hit("phase", "packed")
    await rig.stop()
    packed.close()
