"""Pieces shared by the cocotb benches: a test with its coverage record, clock and reset, BAR0 over AXI4-Lite."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import cocotb
from cocotb.clock import Clock
from cocotb.handle import HierarchyObject
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from backend.virtio.pci_regs import COMMON_CFG_WIDTH, CommonCfg
from models.rtl import COMMON_CFG_OFF
from tests.rtl.coverage import Coverage

if TYPE_CHECKING:
    from cocotb._decorators import TestGenerator

CLOCK_NS = 10


def workload(full: int, icarus: int) -> int:
    """How many items a randomised loop runs: ``full`` on Verilator, the smaller ``icarus`` on Icarus.

    Icarus simulates ~15x slower here (toolchain.md); the smaller count still has to close every
    coverage bin, which the bench checks either way.
    """
    return icarus if cocotb.SIM_NAME.lower().startswith("icarus") else full


def covered_test(timeout_us: int, body: Callable[..., object],
                 run: Callable[[HierarchyObject, Coverage], Coroutine[Any, Any, None]], coverage: str,
                 bins: Mapping[str, Iterable[Hashable]]) -> TestGenerator:
    """``run`` as the cocotb test named and documented after the bench's ``body``: it gets the dut and a fresh
    coverage record ``coverage`` expecting ``bins``, which is closed after it (every bin hit, the record written)."""

    async def test(dut: HierarchyObject) -> None:
        cov = Coverage(coverage, **bins)
        await run(dut, cov)
        cov.close()

    functools.update_wrapper(test, body)
    return cocotb.test(timeout_time=timeout_us, timeout_unit="us")(test)


async def start(dut: HierarchyObject, inputs: dict[str, int]) -> None:
    """Drive the given inputs, start the clock and hold rst_n low for a few cycles."""
    for name, value in inputs.items():
        getattr(dut, name).value = value
    dut.rst_n.value = 0
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    await ClockCycles(dut.clk, 5)
    dut.rst_n.value = 1
    await RisingEdge(dut.clk)


class Bar0:
    """BAR0 of the function through its AXI4-Lite slave; reads and writes at natural widths (byte strobes)."""

    def __init__(self, dut: HierarchyObject) -> None:
        self.master = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst_n,
                                    reset_active_level=False)
        self.trace: list[tuple[str, int, int, int]] = []  # (r|w, offset, width, value)

    async def read(self, offset: int, width: int) -> int:
        resp = await self.master.read(offset, width)
        value = int.from_bytes(resp.data, "little")
        self.trace.append(("r", offset, width, value))
        return value

    async def write(self, offset: int, value: int, width: int) -> None:
        self.trace.append(("w", offset, width, value))
        await self.master.write(offset, (value & ((1 << 8 * width) - 1)).to_bytes(width, "little"))

    async def common(self, field: CommonCfg) -> int:
        width = COMMON_CFG_WIDTH[field]
        if width == 8:  # two 32-bit halves, as drivers do (4.1.3.1)
            lo = await self.read(COMMON_CFG_OFF + field, 4)
            hi = await self.read(COMMON_CFG_OFF + field + 4, 4)
            return lo | hi << 32
        return await self.read(COMMON_CFG_OFF + field, width)

    async def set_commons(self, values: Mapping[CommonCfg, int]) -> None:
        """Write common configuration fields in the order given, as a driver's register script."""
        for field, value in values.items():
            await self.set_common(field, value)

    async def set_common(self, field: CommonCfg, value: int) -> None:
        width = COMMON_CFG_WIDTH[field]
        if width == 8:
            await self.write(COMMON_CFG_OFF + field, value & 0xFFFFFFFF, 4)
            await self.write(COMMON_CFG_OFF + field + 4, value >> 32, 4)
        else:
            await self.write(COMMON_CFG_OFF + field, value, width)
