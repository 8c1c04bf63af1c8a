"""Frame ports with one AXI4-Stream lane per queue pair (``[stream] lanes = "per-pair"``) under cocotb, for the
Icarus device process (:mod:`sim.rtl.icarus_child`): cocotbext-axi binds its sources and sinks to whole
signals, and these lanes are slices of packed vectors."""

from __future__ import annotations

from collections import deque
from typing import Any

import cocotb
from cocotb.triggers import RisingEdge


def _uint(value: Any) -> int:
    """A sampled vector as an unsigned integer, X and Z bits read as 0 (a lane without tvalid may hold X)."""
    try:
        return int(value)
    except ValueError:
        return int(str(value).lower().replace("x", "0").replace("z", "0"), 2)


class PairLanes:
    """Frame ports with one AXI4-Stream lane per queue pair, packed in every signal (lane i of tdata at
    [i*W +: W], of tkeep at [i*W/8 +: W/8], of tvalid/tready/tlast at bit i).

    cocotbext-axi binds a source or sink to whole signals, not to a slice of one, so one coroutine here
    does what a source and a sink per lane would: each receive lane offers the next beat of its own FIFO
    and advances on its own tvalid/tready handshake, each transmit lane collects its own frame (tready held
    high), and a frame leaving on lane i is reported for queue pair i. As in the Verilator bridge, frames
    begin on their lanes in the order they were queued, one a cycle at most, so a design merging lanes can
    keep the wire's order. Sampling is at the rising edge and driving right after it, as cocotbext-axi
    does; a reset drops what the lanes held, as its models do."""

    def __init__(self, dut: Any, rx: str, tx: str, lanes: int, clk: Any, rst: Any, reset_level: bool) -> None:
        self.lanes = lanes
        self._rx = {sig: getattr(dut, rx + sig) for sig in ("tdata", "tkeep", "tlast", "tvalid", "tready")}
        self._tx = {sig: getattr(dut, tx + sig) for sig in ("tdata", "tkeep", "tlast", "tvalid", "tready")}
        self.rx_bytes = len(self._rx["tdata"]) // 8 // lanes
        self.tx_bytes = len(self._tx["tdata"]) // 8 // lanes
        self._clk, self._rst, self._reset_level = clk, rst, reset_level
        self._rx_fifo: list[deque[bytes]] = [deque() for _ in range(lanes)]
        self._rx_pos = [0] * lanes
        self._begun = [False] * lanes  # the lane's front frame is offered
        self._order: deque[int] = deque()  # the lane of every frame not yet begun, in the order queued
        self._rx_valid = 0  # the tvalid bits driven for the coming edge
        self._tx_cur: list[bytearray] = [bytearray() for _ in range(lanes)]
        self.received: deque[tuple[bytes, int]] = deque()
        self._rx["tvalid"].value = 0
        self._tx["tready"].value = (1 << lanes) - 1
        cocotb.start_soon(self._run())

    def send(self, frame: bytes, dest: int) -> bool:
        """Queues a frame on lane ``dest``; False when the design has no lane for that pair."""
        if not 0 <= dest < self.lanes:
            return False
        self._rx_fifo[dest].append(frame)
        self._order.append(dest)
        return True

    def idle(self) -> bool:
        """No frame waiting to enter, half collected or collected and not yet taken."""
        return (not any(self._rx_fifo) and not any(self._tx_cur) and not self.received)

    def _clear(self) -> None:
        for fifo in self._rx_fifo:
            fifo.clear()
        self._rx_pos = [0] * self.lanes
        self._begun = [False] * self.lanes
        self._order.clear()
        for cur in self._tx_cur:
            cur.clear()

    def _drive(self) -> None:
        if self._order and not self._begun[self._order[0]]:
            self._begun[self._order.popleft()] = True
        valid = data = keep = last = 0
        w = self.rx_bytes
        for lane, fifo in enumerate(self._rx_fifo):
            if not self._begun[lane]:
                continue
            pos = self._rx_pos[lane]
            beat = fifo[0][pos:pos + w]
            valid |= 1 << lane
            data |= int.from_bytes(beat, "little") << (8 * w * lane)
            keep |= ((1 << len(beat)) - 1) << (w * lane)
            last |= int(len(fifo[0]) - pos <= w) << lane
        self._rx_valid = valid
        self._rx["tvalid"].value = valid
        if valid:  # a lane without tvalid keeps its last beat: its data means nothing
            self._rx["tdata"].value = data
            self._rx["tkeep"].value = keep
            self._rx["tlast"].value = last

    def _take_rx(self) -> None:
        ready = _uint(self._rx["tready"].value) & self._rx_valid
        w = self.rx_bytes
        for lane in range(self.lanes):
            if ready >> lane & 1:
                self._rx_pos[lane] += w
                if self._rx_pos[lane] >= len(self._rx_fifo[lane][0]):
                    self._rx_fifo[lane].popleft()
                    self._rx_pos[lane] = 0
                    self._begun[lane] = False

    def _take_tx(self) -> None:
        valid = _uint(self._tx["tvalid"].value)
        if not valid:
            return
        data, keep, last = (_uint(self._tx[sig].value) for sig in ("tdata", "tkeep", "tlast"))
        w = self.tx_bytes
        for lane in range(self.lanes):
            if not valid >> lane & 1:
                continue
            beat = ((data >> (8 * w * lane)) & ((1 << (8 * w)) - 1)).to_bytes(w, "little")
            lane_keep = keep >> (w * lane)
            self._tx_cur[lane] += bytes(b for k, b in enumerate(beat) if lane_keep >> k & 1)
            if last >> lane & 1:
                self.received.append((bytes(self._tx_cur[lane]), lane))
                self._tx_cur[lane].clear()

    async def _run(self) -> None:
        while True:
            await RisingEdge(self._clk)
            if bool(_uint(self._rst.value)) == self._reset_level:
                self._clear()
                self._rx_valid = 0
                self._rx["tvalid"].value = 0
                continue
            self._take_rx()
            self._take_tx()
            self._drive()
