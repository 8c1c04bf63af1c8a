"""cocotb unit bench of virtio_pci_regs: the BAR0 register blocks and the interrupt unit on their own.

The bench plays the ring engine's side of the block's ports (it acknowledges
device and queue resets after a delay, raises queue interrupts and driver
errors) and the driver's side through an AXI4-Lite master. Every test records
functional coverage and fails if one of its bins stayed empty.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable, Iterable
from typing import TYPE_CHECKING, Any, cast

import cocotb
from cocotb.handle import HierarchyObject, LogicArrayObject, LogicObject
from cocotb.triggers import ClockCycles, RisingEdge

from backend.virtio.features import DeviceStatus, F, NetF, bits
from backend.virtio.pci_regs import ISR_CONFIG, ISR_QUEUE, NO_VECTOR, VIRTIO_NET_S_LINK_UP, CommonCfg, NetCfg
from models.rtl import (
    DEVICE_CFG_OFF,
    ISR_OFF,
    LOG_BASE_HI,
    LOG_BASE_LO,
    LOG_CTRL,
    LOG_CTRL_BUSY,
    LOG_CTRL_ENABLE,
    LOG_PAGES,
    LOG_STATUS,
    LOG_STATUS_FAULT,
    LOG_STATUS_OVERFLOW,
    NOTIFY_OFF,
    NOTIFY_OFF_MULTIPLIER,
    VQ_STATE_OFF,
    VQ_STATE_STRIDE,
)
from tests.rtl import designs
from tests.rtl.bench_common import Bar0, covered_test, start
from tests.rtl.coverage import Coverage

if TYPE_CHECKING:
    from cocotb._decorators import TestGenerator

NUM_QUEUES = designs.REGS_NUM_QUEUES
MAX_QUEUE_SIZE = designs.REGS_MAX_QUEUE_SIZE
MSIX_VECTORS = designs.REGS_MSIX_VECTORS
MAC = designs.REGS_MAC
MTU = designs.REGS_MTU
FEATURES = designs.REGS_FEATURES
C = CommonCfg
S = DeviceStatus
ERR_QUEUE_CONFIG = 8
TIMEOUT_US = 2000


class EngineSide:
    """The engine's half of the ports: acknowledges resets ``ack_delay`` cycles late and records pulses."""

    def __init__(self, dut: HierarchyObject, ack_delay: int = 12) -> None:
        self.dut = dut
        self.ack_delay = ack_delay
        self.kicks: list[int] = []
        self.vqs_writes: list[tuple[int, int, int]] = []  # (queue, data, half)
        self.irqs: list[int] = []
        self.dev_resets = 0
        self.queue_resets: list[int] = []

    async def run(self) -> None:
        dut = self.dut
        dev_wait = 0
        q_wait = [0] * NUM_QUEUES
        while True:
            await RisingEdge(dut.clk)
            dut.dev_reset_ack.value = 0
            dut.qreset_ack.value = 0
            if int(dut.kick_valid.value):
                self.kicks.append(int(dut.kick_queue.value))
            if int(dut.vqs_wr_valid.value):
                self.vqs_writes.append((int(dut.vqs_wr_queue.value), int(dut.vqs_wr_data.value),
                                        int(dut.vqs_wr_half.value)))
            if int(dut.irq_valid.value) and int(dut.irq_ready.value):
                self.irqs.append(int(dut.irq_vector.value))
            if int(dut.dev_reset_req.value):
                dev_wait += 1
                if dev_wait == self.ack_delay:
                    dut.dev_reset_ack.value = 1
                    self.dev_resets += 1
            else:
                dev_wait = 0
            req = int(dut.qreset_req.value)
            ack = 0
            for q in range(NUM_QUEUES):
                if req >> q & 1:
                    q_wait[q] += 1
                    if q_wait[q] == self.ack_delay:
                        ack |= 1 << q
                        self.queue_resets.append(q)
                else:
                    q_wait[q] = 0
            if ack:
                dut.qreset_ack.value = ack


async def setup(dut: HierarchyObject) -> tuple[Bar0, EngineSide]:
    await start(dut, {"link_up": 1, "msix_enabled": 0, "irq_ready": 1, "dev_reset_ack": 0, "qreset_ack": 0,
                      "vqs_last_avail": 0, "vqs_used_idx": 0, "fail_valid": 0, "fail_code": 0, "fail_queue": 0,
                      "q_irq_valid": 0, "q_irq_queue": 0, "log_busy": 0, "log_overflow": 0, "log_fault": 0})
    bar = Bar0(dut)
    engine = EngineSide(dut)
    cocotb.start_soon(engine.run())
    return bar, engine


#: A test of the block: the dut, BAR0, the engine's side of the ports, the test's coverage record.
RegsBody = Callable[[HierarchyObject, Bar0, EngineSide, Coverage], Coroutine[Any, Any, None]]


def regs_test(coverage: str, /, **bins: Iterable[Hashable]) -> Callable[[RegsBody], TestGenerator]:
    """Register ``body`` as a cocotb test under its own name, on a reset block with :func:`setup`'s BAR0 and engine
    side and the record ``coverage`` expecting ``bins``."""

    def register(body: RegsBody) -> TestGenerator:
        async def run(dut: HierarchyObject, cov: Coverage) -> None:
            await body(dut, *await setup(dut), cov)

        return covered_test(TIMEOUT_US, body, run, coverage, bins)

    return register


async def pulse(dut: HierarchyObject, values: dict[str, int], valid: str) -> None:
    """Drive ``values`` with ``valid`` high for one cycle."""
    for name, value in values.items():
        getattr(dut, name).value = value
    getattr(dut, valid).value = 1
    await RisingEdge(dut.clk)
    getattr(dut, valid).value = 0
    await ClockCycles(dut.clk, 2)


async def negotiate(bar: Bar0, features: int) -> int:
    """ACKNOWLEDGE, DRIVER, driver_feature windows, FEATURES_OK; returns device_status read back."""
    await bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE)
    await bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE | S.DRIVER)
    for sel in (0, 1):
        await bar.set_common(C.DRIVER_FEATURE_SELECT, sel)
        await bar.set_common(C.DRIVER_FEATURE, features >> 32 * sel & 0xFFFFFFFF)
    await bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK)
    return await bar.common(C.DEVICE_STATUS)


async def device_reset(bar: Bar0, dut: HierarchyObject) -> list[int]:
    """Write 0 and poll device_status until it reads 0 (bounded); returns the values seen while polling."""
    await bar.set_common(C.DEVICE_STATUS, 0)
    seen = []
    for _ in range(20):
        value = await bar.common(C.DEVICE_STATUS)
        seen.append(value)
        if value == 0:
            return seen
    raise AssertionError(f"device_status never read 0 after reset: {seen}")


@regs_test("regs_identity_devcfg", devcfg_field=["mac", "status", "max_virtqueue_pairs", "mtu"],
           link_change=["down", "up"])
async def identity_and_device_config(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    assert await bar.common(C.NUM_QUEUES) == NUM_QUEUES
    for q in range(NUM_QUEUES):
        await bar.set_common(C.QUEUE_SELECT, q)
        assert await bar.common(C.QUEUE_NOTIFY_OFF) == q  # doorbell at NOTIFY_OFF + q * multiplier
    mac = bytes([await bar.read(DEVICE_CFG_OFF + NetCfg.MAC + i, 1) for i in range(6)])
    assert mac == MAC, mac.hex()
    cov.hit("devcfg_field", "mac")
    assert await bar.read(DEVICE_CFG_OFF + NetCfg.STATUS, 2) == VIRTIO_NET_S_LINK_UP
    cov.hit("devcfg_field", "status")
    assert await bar.read(DEVICE_CFG_OFF + NetCfg.MAX_VIRTQUEUE_PAIRS, 2) == 1
    cov.hit("devcfg_field", "max_virtqueue_pairs")
    assert await bar.read(DEVICE_CFG_OFF + NetCfg.MTU, 2) == MTU
    cov.hit("devcfg_field", "mtu")
    assert await bar.read(DEVICE_CFG_OFF + 0xC, 4) == 0  # nothing past the structure

    # PCI-DEV-17: a link change moves config_generation; with DRIVER_OK it is a config notification
    gen = await bar.common(C.CONFIG_GENERATION)
    dut.link_up.value = 0
    await ClockCycles(dut.clk, 2)
    assert await bar.read(DEVICE_CFG_OFF + NetCfg.STATUS, 2) == 0
    assert await bar.common(C.CONFIG_GENERATION) == (gen + 1) & 0xFF
    assert await bar.read(ISR_OFF, 1) == 0, "no notification before DRIVER_OK"
    cov.hit("link_change", "down")
    await negotiate(bar, bits(F.VERSION_1))
    await bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK)
    dut.link_up.value = 1
    await ClockCycles(dut.clk, 2)
    assert await bar.common(C.CONFIG_GENERATION) == (gen + 2) & 0xFF
    assert int(dut.intx.value) == 1
    assert await bar.read(ISR_OFF, 1) == ISR_CONFIG
    cov.hit("link_change", "up")


@regs_test("regs_features", device_feature_select=[0, 1, 2, "big"], driver_feature_select=[0, 1, 2],
           features_ok=["accepted", "unoffered_bit", "no_version_1", "frozen_after"])
async def feature_windows_and_negotiation(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    for sel, want in ((0, FEATURES & 0xFFFFFFFF), (1, FEATURES >> 32), (2, 0), (0xFFFFFFFF, 0)):
        await bar.set_common(C.DEVICE_FEATURE_SELECT, sel)
        assert await bar.common(C.DEVICE_FEATURE_SELECT) == sel
        got = await bar.common(C.DEVICE_FEATURE)
        assert got == want, f"device_feature[{sel}] = {got:#x}, want {want:#x} (PCI-DEV-14)"
        cov.hit("device_feature_select", sel if sel < 3 else "big")
    for sel in (0, 1, 2):
        await bar.set_common(C.DRIVER_FEATURE_SELECT, sel)
        await bar.set_common(C.DRIVER_FEATURE, 0xA5A5A5A5)
        want = 0xA5A5A5A5 if sel < 2 else 0  # nothing is offered past bit 63
        assert await bar.common(C.DRIVER_FEATURE) == want
        cov.hit("driver_feature_select", sel)

    # FEAT-DEV-03: FEATURES_OK sticks only for a subset of the offer that has VERSION_1
    for case, features in (("unoffered_bit", bits(F.VERSION_1, F.INDIRECT_DESC)), ("no_version_1", bits(NetF.MAC))):
        status = await negotiate(bar, features)
        assert not status & S.FEATURES_OK, f"{case}: FEATURES_OK stuck with {features:#x}"
        assert int(dut.negotiated.value) == 0
        cov.hit("features_ok", case)
        await device_reset(bar, dut)
    wanted = bits(F.VERSION_1, F.EVENT_IDX, NetF.MAC, NetF.MTU)
    status = await negotiate(bar, wanted)
    assert status & S.FEATURES_OK
    assert int(dut.negotiated.value) == wanted
    cov.hit("features_ok", "accepted")
    # INIT-DRV-07: the negotiated set is fixed once FEATURES_OK is set
    await bar.set_common(C.DRIVER_FEATURE_SELECT, 0)
    await bar.set_common(C.DRIVER_FEATURE, 0)
    assert await bar.common(C.DRIVER_FEATURE) == wanted & 0xFFFFFFFF
    assert int(dut.negotiated.value) == wanted
    cov.hit("features_ok", "frozen_after")


@regs_test("regs_status_reset", status_write=["accumulate", "needs_reset_ignored", "reset_pending", "reset_done"])
async def status_and_device_reset(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    await negotiate(bar, bits(F.VERSION_1))
    await bar.set_common(C.DEVICE_STATUS, S.DRIVER_OK)  # bits are only added, never cleared by a write
    live = S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK
    assert await bar.common(C.DEVICE_STATUS) == live
    assert int(dut.live.value) == 1
    cov.hit("status_write", "accumulate")
    await bar.set_common(C.DEVICE_STATUS, live | S.DEVICE_NEEDS_RESET)
    assert await bar.common(C.DEVICE_STATUS) == live, "DEVICE_NEEDS_RESET is the device's to set"
    cov.hit("status_write", "needs_reset_ignored")

    # program state that the reset must clear
    await bar.set_commons({C.CONFIG_MSIX_VECTOR: 0, C.QUEUE_SELECT: 1, C.QUEUE_SIZE: 64, C.QUEUE_MSIX_VECTOR: 2,
                           C.QUEUE_DESC: 0x1_2345_6000, C.DEVICE_FEATURE_SELECT: 1})
    seen = await device_reset(bar, dut)
    # PCI-DRV-19: the reset is complete only when device_status reads 0; until the engine is
    # done it keeps reading the old value
    assert seen[0] != 0 and seen[-1] == 0, seen
    cov.hit("status_write", "reset_pending")
    assert engine.dev_resets == 1
    assert int(dut.live.value) == 0 and int(dut.negotiated.value) == 0
    assert await bar.common(C.CONFIG_MSIX_VECTOR) == NO_VECTOR  # PCI-DEV-59
    assert await bar.common(C.QUEUE_SELECT) == 0
    assert await bar.common(C.DEVICE_FEATURE_SELECT) == 0
    await bar.set_common(C.QUEUE_SELECT, 1)
    assert await bar.common(C.QUEUE_SIZE) == MAX_QUEUE_SIZE
    assert await bar.common(C.QUEUE_MSIX_VECTOR) == NO_VECTOR
    assert await bar.common(C.QUEUE_DESC) == 0
    cov.hit("status_write", "reset_done")


@regs_test("regs_queues", queue_select=["0", "1", "out_of_range"], vector=["valid", "out_of_table", "no_vector"],
           queue_enable=["bad_size", "misaligned", "ok", "frozen_while_enabled"])
async def queue_registers(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    await bar.set_common(C.QUEUE_SELECT, 7)
    assert await bar.common(C.QUEUE_SIZE) == 0, "a queue that does not exist reads size 0"
    assert await bar.common(C.QUEUE_MSIX_VECTOR) == NO_VECTOR
    cov.hit("queue_select", "out_of_range")
    for q in range(NUM_QUEUES):
        await bar.set_common(C.QUEUE_SELECT, q)
        assert await bar.common(C.QUEUE_SIZE) == MAX_QUEUE_SIZE
        assert await bar.common(C.QUEUE_ENABLE) == 0
        cov.hit("queue_select", q)
    # PCI-DEV-56/61: a vector outside the table reads back as NO_VECTOR
    await bar.set_common(C.QUEUE_SELECT, 1)
    for vec, want, case in ((MSIX_VECTORS - 1, MSIX_VECTORS - 1, "valid"), (MSIX_VECTORS, NO_VECTOR, "out_of_table"),
                            (NO_VECTOR, NO_VECTOR, "no_vector")):
        await bar.set_common(C.QUEUE_MSIX_VECTOR, vec)
        assert await bar.common(C.QUEUE_MSIX_VECTOR) == want
        await bar.set_common(C.CONFIG_MSIX_VECTOR, vec)
        assert await bar.common(C.CONFIG_MSIX_VECTOR) == want
        cov.hit("vector", case)
    for field, value in ((C.QUEUE_DESC, 0xFEDC_BA98_7654_3210), (C.QUEUE_DRIVER, 0x1_0000_0002),
                         (C.QUEUE_DEVICE, 0x8000_0000_0000_0004)):
        await bar.set_common(field, value)
        assert await bar.common(field) == value
    # queue_select written with a 16-bit access only touches queue_select (byte strobes)
    await bar.set_common(C.QUEUE_SELECT, 0)
    assert await bar.common(C.DEVICE_STATUS) == 0

    # queue_enable refuses a configuration that cannot run: DEVICE_NEEDS_RESET, config notification
    await negotiate(bar, bits(F.VERSION_1))
    await bar.set_common(C.DEVICE_STATUS, S.DRIVER_OK)
    await bar.set_common(C.QUEUE_SELECT, 1)
    await bar.set_common(C.QUEUE_SIZE, 48)
    await bar.set_common(C.QUEUE_ENABLE, 1)
    assert await bar.common(C.QUEUE_ENABLE) == 0
    assert await bar.common(C.DEVICE_STATUS) & S.DEVICE_NEEDS_RESET
    assert int(dut.last_err_code.value) == ERR_QUEUE_CONFIG and int(dut.last_err_queue.value) == 1
    assert await bar.read(ISR_OFF, 1) == ISR_CONFIG  # STATUS-DEV-03
    cov.hit("queue_enable", "bad_size")
    await device_reset(bar, dut)
    await bar.set_common(C.QUEUE_SELECT, 1)
    await bar.set_common(C.QUEUE_SIZE, 64)
    await bar.set_common(C.QUEUE_DEVICE, 0x1002)  # used ring must be 4-byte aligned (SPLIT-DRV-01)
    await bar.set_common(C.QUEUE_ENABLE, 1)
    assert await bar.common(C.QUEUE_ENABLE) == 0
    assert await bar.common(C.DEVICE_STATUS) & S.DEVICE_NEEDS_RESET
    cov.hit("queue_enable", "misaligned")
    await device_reset(bar, dut)
    await bar.set_commons({C.QUEUE_SELECT: 1, C.QUEUE_SIZE: 64, C.QUEUE_DESC: 0x10000, C.QUEUE_DRIVER: 0x20002,
                           C.QUEUE_DEVICE: 0x30004, C.QUEUE_ENABLE: 1})
    assert await bar.common(C.QUEUE_ENABLE) == 1
    assert int(dut.q_enable.value) == 0b10
    assert await bar.common(C.DEVICE_STATUS) == 0
    cov.hit("queue_enable", "ok")
    # PCI-DRV-18: the ring configuration is frozen while the queue is enabled; 0 is never written
    await bar.set_common(C.QUEUE_SIZE, 128)
    await bar.set_common(C.QUEUE_DESC, 0x50000)
    await bar.set_common(C.QUEUE_ENABLE, 0)
    assert await bar.common(C.QUEUE_SIZE) == 64
    assert await bar.common(C.QUEUE_DESC) == 0x10000
    assert await bar.common(C.QUEUE_ENABLE) == 1
    cov.hit("queue_enable", "frozen_while_enabled")


@regs_test("regs_isr", isr_read=[0, ISR_QUEUE, ISR_CONFIG, ISR_QUEUE | ISR_CONFIG])
async def isr_read_to_clear_and_intx(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    await negotiate(bar, bits(F.VERSION_1))
    await bar.set_common(C.DEVICE_STATUS, S.DRIVER_OK)
    assert await bar.read(ISR_OFF, 1) == 0
    cov.hit("isr_read", 0)
    await pulse(dut, {"q_irq_queue": 0}, "q_irq_valid")
    assert int(dut.intx.value) == 1, "PCI-DEV-39: queue interrupt without MSI-X raises INTx"
    assert await bar.read(ISR_OFF, 1) == ISR_QUEUE
    cov.hit("isr_read", ISR_QUEUE)
    assert int(dut.intx.value) == 0, "PCI-DEV-41: reading ISR status clears it and INTx"
    assert await bar.read(ISR_OFF, 1) == 0
    dut.link_up.value = 0  # configuration change
    await ClockCycles(dut.clk, 2)
    assert await bar.read(ISR_OFF, 4) == ISR_CONFIG
    cov.hit("isr_read", ISR_CONFIG)
    await pulse(dut, {"q_irq_queue": 1}, "q_irq_valid")
    dut.link_up.value = 1
    await ClockCycles(dut.clk, 2)
    assert await bar.read(ISR_OFF, 1) == ISR_QUEUE | ISR_CONFIG
    cov.hit("isr_read", ISR_QUEUE | ISR_CONFIG)
    assert engine.irqs == [], "no MSI-X message while MSI-X is disabled"


@regs_test("regs_msix", irq=["queue_vector", "queue_no_vector", "config_vector", "needs_reset_config"])
async def msix_requests(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    dut.msix_enabled.value = 1
    await negotiate(bar, bits(F.VERSION_1))
    await bar.set_common(C.DEVICE_STATUS, S.DRIVER_OK)
    await bar.set_common(C.CONFIG_MSIX_VECTOR, 0)
    await bar.set_common(C.QUEUE_SELECT, 1)
    await bar.set_common(C.QUEUE_MSIX_VECTOR, 2)
    await pulse(dut, {"q_irq_queue": 1}, "q_irq_valid")
    assert engine.irqs == [2]
    cov.hit("irq", "queue_vector")
    await pulse(dut, {"q_irq_queue": 0}, "q_irq_valid")  # queue 0 has NO_VECTOR: nothing (PCI-DEV-62)
    assert engine.irqs == [2]
    assert await bar.read(ISR_OFF, 1) == 0, "with MSI-X the queue bit of ISR stays clear"
    cov.hit("irq", "queue_no_vector")
    dut.link_up.value = 0
    await ClockCycles(dut.clk, 3)
    assert engine.irqs == [2, 0]
    cov.hit("irq", "config_vector")
    # a driver error reported by the engine: DEVICE_NEEDS_RESET and a config notification, once
    await pulse(dut, {"fail_code": 3, "fail_queue": 1}, "fail_valid")
    await pulse(dut, {"fail_code": 2, "fail_queue": 1}, "fail_valid")
    assert await bar.common(C.DEVICE_STATUS) & S.DEVICE_NEEDS_RESET
    assert int(dut.live.value) == 0
    assert engine.irqs == [2, 0, 0], engine.irqs
    assert int(dut.err_count.value) == 2 and int(dut.last_err_code.value) == 2
    assert await bar.read(ISR_OFF, 1) == ISR_CONFIG  # PCI-DEV-38: set with MSI-X too
    cov.hit("irq", "needs_reset_config")
    # an irq_ready held low keeps the request (vector stable) until taken
    dut.irq_ready.value = 0
    await bar.set_common(C.DEVICE_STATUS, 0)
    await ClockCycles(dut.clk, 30)
    await negotiate(bar, bits(F.VERSION_1))
    await bar.set_common(C.DEVICE_STATUS, S.DRIVER_OK)
    await bar.set_common(C.QUEUE_SELECT, 0)
    await bar.set_common(C.QUEUE_MSIX_VECTOR, 1)
    await pulse(dut, {"q_irq_queue": 0}, "q_irq_valid")
    await ClockCycles(dut.clk, 10)
    assert int(dut.irq_valid.value) == 1 and int(dut.irq_vector.value) == 1
    dut.irq_ready.value = 1
    await ClockCycles(dut.clk, 3)
    assert engine.irqs[-1] == 1 and int(dut.irq_valid.value) == 0


@regs_test("regs_notify", kick=[0, 1, "bad_index"])
async def notify_doorbells(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    for q in (1, 0, 1):
        await bar.write(NOTIFY_OFF + NOTIFY_OFF_MULTIPLIER * q, q, 2)
        cov.hit("kick", q)
    await bar.write(NOTIFY_OFF, 5, 2)  # no such queue: no pulse
    cov.hit("kick", "bad_index")
    await ClockCycles(dut.clk, 2)
    assert engine.kicks == [1, 0, 1], engine.kicks


@regs_test("regs_queue_reset", queue_reset=["not_negotiated", "pending", "done"])
async def queue_reset(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    await negotiate(bar, bits(F.VERSION_1))
    await bar.set_common(C.DEVICE_STATUS, S.DRIVER_OK)
    await bar.set_common(C.QUEUE_SELECT, 1)
    await bar.set_common(C.QUEUE_RESET, 1)
    await ClockCycles(dut.clk, 20)
    assert engine.queue_resets == [] and await bar.common(C.QUEUE_RESET) == 0
    cov.hit("queue_reset", "not_negotiated")
    await device_reset(bar, dut)
    await negotiate(bar, bits(F.VERSION_1, F.RING_RESET))
    await bar.set_common(C.DEVICE_STATUS, S.DRIVER_OK)
    await bar.set_common(C.QUEUE_SELECT, 1)
    await bar.set_common(C.QUEUE_SIZE, 32)
    await bar.set_common(C.QUEUE_MSIX_VECTOR, 1)
    await bar.set_common(C.QUEUE_ENABLE, 1)
    await bar.set_common(C.QUEUE_RESET, 1)
    assert await bar.common(C.QUEUE_RESET) == 1, "PCI-DEV-24: reads 1 until the queue reset is done"
    cov.hit("queue_reset", "pending")
    for _ in range(10):
        if await bar.common(C.QUEUE_RESET) == 0:
            break
    assert engine.queue_resets == [1]
    assert await bar.common(C.QUEUE_ENABLE) == 0
    assert await bar.common(C.QUEUE_SIZE) == MAX_QUEUE_SIZE
    assert await bar.common(C.QUEUE_MSIX_VECTOR) == NO_VECTOR
    assert await bar.common(C.DEVICE_STATUS) & S.DRIVER_OK, "a queue reset leaves the device running"
    cov.hit("queue_reset", "done")


@regs_test("regs_vq_state", vq_state=["read", "write_disabled", "write_enabled_ignored"])
async def vq_state_block(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    dut.vqs_last_avail.value = 0x1234 << 16 | 0xABCD  # queue 1, queue 0
    dut.vqs_used_idx.value = 0x5678 << 16 | 0x0102
    await ClockCycles(dut.clk, 1)
    assert await bar.read(VQ_STATE_OFF, 4) == 0x0102ABCD
    assert await bar.read(VQ_STATE_OFF + VQ_STATE_STRIDE, 4) == 0x56781234
    cov.hit("vq_state", "read")
    await bar.write(VQ_STATE_OFF + VQ_STATE_STRIDE, 0xFFF0, 2)
    await ClockCycles(dut.clk, 2)
    assert engine.vqs_writes == [(1, 0xFFF0, 0b01)], engine.vqs_writes
    cov.hit("vq_state", "write_disabled")
    await bar.set_common(C.QUEUE_SELECT, 1)
    await bar.set_common(C.QUEUE_ENABLE, 1)
    await bar.write(VQ_STATE_OFF + VQ_STATE_STRIDE, 0x5, 4)
    await ClockCycles(dut.clk, 2)
    assert len(engine.vqs_writes) == 1, "the state of a running queue is not writable"
    cov.hit("vq_state", "write_enabled_ignored")


def sig(dut: HierarchyObject, name: str) -> LogicArrayObject:
    """A port of the design, typed (the handle's own type is known only at run time)."""
    return cast(LogicArrayObject, getattr(dut, name))


def clock(dut: HierarchyObject) -> LogicObject:
    return cast(LogicObject, dut.clk)


@regs_test("regs_dirty_log", dirty_log=["rw_disabled", "fixed_enabled", "busy", "status_set", "w1c", "set_wins",
                                        "enable_clears", "reset_clears"])
async def dirty_log_registers(dut: HierarchyObject, bar: Bar0, engine: EngineSide, cov: Coverage) -> None:
    """The dirty page log block's registers: settings toward the DMA unit, BUSY and the status from it."""
    regs = (LOG_BASE_LO, LOG_BASE_HI, LOG_PAGES, LOG_CTRL, LOG_STATUS)

    async def read_all() -> list[int]:
        return [await bar.read(r, 4) for r in regs]

    assert await read_all() == [0] * 5
    await bar.write(LOG_BASE_LO, 0x12345000, 4)
    await bar.write(LOG_BASE_HI, 0xAB, 4)
    await bar.write(LOG_PAGES, 0x300, 4)
    await bar.write(LOG_BASE_LO + 1, 0x67, 1)  # byte strobes
    assert await read_all() == [0x12346700, 0xAB, 0x300, 0, 0]
    assert int(sig(dut, "log_base").value) == 0xAB_12346700 and int(sig(dut, "log_pages").value) == 0x300
    assert int(sig(dut, "log_enable").value) == 0
    cov.hit("dirty_log", "rw_disabled")
    await bar.write(LOG_CTRL, LOG_CTRL_ENABLE | LOG_CTRL_BUSY, 4)  # BUSY is read-only
    assert await bar.read(LOG_CTRL, 4) == LOG_CTRL_ENABLE and int(sig(dut, "log_enable").value) == 1
    for r in (LOG_BASE_LO, LOG_BASE_HI, LOG_PAGES):
        await bar.write(r, 0xFFFF_FFFF, 4)
    assert await read_all() == [0x12346700, 0xAB, 0x300, LOG_CTRL_ENABLE, 0], "fixed while enabled"
    cov.hit("dirty_log", "fixed_enabled")
    sig(dut, "log_busy").value = 1
    assert await bar.read(LOG_CTRL, 4) == LOG_CTRL_ENABLE | LOG_CTRL_BUSY
    sig(dut, "log_busy").value = 0
    await ClockCycles(clock(dut), 1)
    assert await bar.read(LOG_CTRL, 4) == LOG_CTRL_ENABLE
    cov.hit("dirty_log", "busy")
    await pulse(dut, {}, "log_overflow")
    await pulse(dut, {}, "log_fault")
    assert await bar.read(LOG_STATUS, 4) == LOG_STATUS_OVERFLOW | LOG_STATUS_FAULT
    cov.hit("dirty_log", "status_set")
    await bar.write(LOG_STATUS, LOG_STATUS_FAULT, 4)
    assert await bar.read(LOG_STATUS, 4) == LOG_STATUS_OVERFLOW
    cov.hit("dirty_log", "w1c")
    sig(dut, "log_overflow").value = 1  # an event in every cycle, the clear's included: the event wins
    await bar.write(LOG_STATUS, LOG_STATUS_OVERFLOW, 4)
    sig(dut, "log_overflow").value = 0
    assert await bar.read(LOG_STATUS, 4) == LOG_STATUS_OVERFLOW
    cov.hit("dirty_log", "set_wins")
    await bar.write(LOG_CTRL, LOG_CTRL_ENABLE, 4)  # 1 -> 1: the status stays
    assert await bar.read(LOG_STATUS, 4) == LOG_STATUS_OVERFLOW
    await bar.write(LOG_CTRL, 0, 4)
    assert await bar.read(LOG_STATUS, 4) == LOG_STATUS_OVERFLOW, "disabling keeps the status for the driver"
    await bar.write(LOG_CTRL, LOG_CTRL_ENABLE, 4)
    assert await bar.read(LOG_STATUS, 4) == 0
    cov.hit("dirty_log", "enable_clears")
    await pulse(dut, {}, "log_fault")
    await bar.set_common(C.DEVICE_STATUS, S.ACKNOWLEDGE)  # so that device_status reading 0 means the reset is done
    await device_reset(bar, dut)
    assert await read_all() == [0] * 5 and int(sig(dut, "log_enable").value) == 0
    cov.hit("dirty_log", "reset_clears")
    # the vq state block ends below the log block
    await bar.write(VQ_STATE_OFF + VQ_STATE_STRIDE, 0x7, 2)
    await ClockCycles(clock(dut), 2)
    assert engine.vqs_writes == [(1, 0x7, 0b01)] and await bar.read(LOG_BASE_LO, 4) == 0
