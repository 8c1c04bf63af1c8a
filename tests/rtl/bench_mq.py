"""cocotb bench of virtio_net_top built with two queue pairs: the control queue, MQ and steering.

Runs on the NUM_PAIRS=2 build (queues: receiveq1 0, transmitq1 1, receiveq2 2, transmitq2 3,
controlq 4 with MQ negotiated, 2 without) next to the tests of bench_engine.
"""

from __future__ import annotations

import random
import struct

from cocotb.triggers import with_timeout
from cocotbext.axi import AxiStreamFrame

from backend.virtio.features import F, NetF, bits
from backend.virtio.net_hdr import HDR_SIZE
from backend.virtio.pci_regs import CommonCfg, NetCfg
from models.rtl import DEVICE_CFG_OFF
from testbenches.driver.split_ring import DriverSplitQueue
from tests.rtl import designs
from tests.rtl.bench_engine import BASE_FEATURES, RX_HDR, SEED, NetBench, bench_test, ethernet
from tests.rtl.coverage import Coverage

PAIRS = designs.TOP_MQ_PAIRS
MQ = bits(NetF.CTRL_VQ, NetF.MQ)
CTRL_MQ, MQ_VQ_PAIRS_SET = 4, 0
CTRL_RX, RX_PROMISC = 0, 0
OK, ERR = 0, 1
C = CommonCfg
S_FEATURES_OK = 8


async def command(bench: NetBench, ctrlq: DriverSplitQueue, cls: int, cmd: int, data: bytes,
                  ack_room: int = 1) -> tuple[int | None, int]:
    """One control command (header and data in separate buffers, as Linux sends them); (ack, used len)."""
    ctrlq.add([bytes([cls, cmd]), data] if data else [bytes([cls, cmd])], [ack_room] if ack_room else [])
    await bench.publish(ctrlq)
    await bench.wait_used(ctrlq, ctrlq.published)
    [used] = ctrlq.used()
    return (used.data[0] if used.len else None), used.len


async def receive_on(bench: NetBench, frame: bytes, pair: int) -> int:
    """Send ``frame`` with tdest ``pair``; returns the receive queue whose used ring got it."""
    before = {q.index: q.used_idx() for q in bench.queues if q.index in (0, 2)}
    await bench.source.send(AxiStreamFrame(frame, tdest=pair))
    for _ in range(500):
        moved = [i for i, idx in before.items() if bench.queues[i].used_idx() != idx]
        if moved:
            [qi] = moved
            [used] = bench.queues[qi].used()
            assert bench.rx_data(used.head, used.len, bench.queues[qi]) == RX_HDR + frame
            return qi
        await bench.quiet(16)
    raise AssertionError(f"frame for pair {pair} never reached a receive queue")


@bench_test(SEED + 10, "mq_control_queue",
            ctrl=["vq_pairs_set_ok", "pairs_out_of_range", "pairs_zero", "unknown_class", "no_ack_room", "header_only"],
            steer=["pair0", "pair1", "pair1_before_set", "pair1_after_reset"], tx_tdest=[0, 1])
async def control_queue_and_steering(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    offered = await bench.bar.common(C.DEVICE_FEATURE)
    assert offered & MQ == MQ, f"device_feature {offered:#x} lacks CTRL_VQ|MQ"
    assert await bench.bar.common(C.NUM_QUEUES) == 2 * PAIRS + 1
    assert await bench.bar.read(DEVICE_CFG_OFF + NetCfg.MAX_VIRTQUEUE_PAIRS, 2) == PAIRS
    await bench.init(BASE_FEATURES | MQ, queues=2 * PAIRS + 1)
    ctrlq = bench.queues[2 * PAIRS]
    for q in (bench.queues[0], bench.queues[2]):
        for _ in range(4):
            bench.post_rx([HDR_SIZE + 200], [0], q)
        await bench.publish(q)

    # NETCTRL-DEV-25: until VQ_PAIRS_SET only receiveq1 is used, whatever the wire asks for
    assert await receive_on(bench, ethernet(rng, 100), 1) == 0
    cov.hit("steer", "pair1_before_set")
    assert await command(bench, ctrlq, CTRL_MQ, MQ_VQ_PAIRS_SET, struct.pack("<H", PAIRS)) == (OK, 1)
    cov.hit("ctrl", "vq_pairs_set_ok")
    assert await receive_on(bench, ethernet(rng, 100), 1) == 2
    cov.hit("steer", "pair1")
    assert await receive_on(bench, ethernet(rng, 100), 0) == 0
    cov.hit("steer", "pair0")

    # transmitted frames carry their queue pair in tdest
    for pair in (1, 0):
        txq = bench.queues[2 * pair + 1]
        frame = ethernet(rng, 128)
        txq.add([bytes(HDR_SIZE) + frame], [])
        await bench.publish(txq)
        got = await with_timeout(bench.sink.recv(), 500, "us")
        assert bytes(got.tdata) == frame and got.tdest == pair, (got.tdest, pair)
        await bench.wait_used(txq, txq.published)
        cov.hit("tx_tdest", pair)

    for case, args in (("pairs_out_of_range", (CTRL_MQ, MQ_VQ_PAIRS_SET, struct.pack("<H", PAIRS + 1))),
                       ("pairs_zero", (CTRL_MQ, MQ_VQ_PAIRS_SET, struct.pack("<H", 0))),
                       ("unknown_class", (CTRL_RX, RX_PROMISC, b"\x01"))):
        assert await command(bench, ctrlq, *args) == (ERR, 1), case
        cov.hit("ctrl", case)
    # a refused command leaves the pairs alone
    assert await receive_on(bench, ethernet(rng, 100), 1) == 2
    # no writable byte: nothing written, used len 0; a header without its argument is refused
    assert await command(bench, ctrlq, CTRL_MQ, MQ_VQ_PAIRS_SET, struct.pack("<H", 1), ack_room=0) == (None, 0)
    cov.hit("ctrl", "no_ack_room")
    assert await receive_on(bench, ethernet(rng, 100), 1) == 2, "a command without an ack byte is not run"
    assert await command(bench, ctrlq, CTRL_MQ, MQ_VQ_PAIRS_SET, b"") == (ERR, 1)
    cov.hit("ctrl", "header_only")

    # a device reset returns to one active pair
    await bench.init(BASE_FEATURES | MQ, queues=2 * PAIRS + 1)
    for q in (bench.queues[0], bench.queues[2]):
        bench.post_rx([HDR_SIZE + 200], [0], q)
        await bench.publish(q)
    assert await receive_on(bench, ethernet(rng, 100), 1) == 0
    cov.hit("steer", "pair1_after_reset")
    assert all(q.anomalies == [] for q in bench.queues)


@bench_test(SEED + 11, "mq_ctrl_without_mq", case=["mq_without_ctrl_vq_refused", "ctrl_at_index_2", "steering_off"])
async def control_queue_without_mq(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """CTRL_VQ without MQ: the control queue is queue 2 (5.1.2), MQ commands are refused; MQ needs CTRL_VQ."""
    status = await bench.negotiate(BASE_FEATURES | bits(NetF.MQ))
    assert not status & S_FEATURES_OK, "FEATURES_OK with MQ but without CTRL_VQ (NETFEAT-DEV-09)"
    cov.hit("case", "mq_without_ctrl_vq_refused")
    await bench.init(BASE_FEATURES | bits(NetF.CTRL_VQ, F.EVENT_IDX), queues=3)
    ctrlq = bench.queues[2]
    assert await command(bench, ctrlq, CTRL_MQ, MQ_VQ_PAIRS_SET, struct.pack("<H", 2)) == (ERR, 1)
    cov.hit("case", "ctrl_at_index_2")
    bench.post_rx([HDR_SIZE + 200], [3])
    await bench.publish(bench.rxq)
    before = bench.rxq.used_idx()
    frame = ethernet(rng, 90)
    await bench.source.send(AxiStreamFrame(frame, tdest=1))
    await bench.wait_used(bench.rxq, before + 1)
    [used] = bench.rxq.used()
    assert bench.rx_data(used.head, used.len) == RX_HDR + frame
    cov.hit("case", "steering_off")


@bench_test(SEED + 12, "mq_steering_queue_reset", case=["moved_to_enabled", "all_reset_dropped"])
async def steering_around_a_queue_being_reset(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """NETCTRL-DEV-27/28: a frame for a receive queue being reset goes to another enabled receive queue of the
    active pairs; with every one of them reset it is dropped."""
    await bench.init(BASE_FEATURES | MQ | bits(F.RING_RESET), queues=2 * PAIRS + 1)
    ctrlq = bench.queues[2 * PAIRS]
    for q in (bench.queues[0], bench.queues[2]):
        for _ in range(2):
            bench.post_rx([HDR_SIZE + 200], [0], q)
        await bench.publish(q)
    assert await command(bench, ctrlq, CTRL_MQ, MQ_VQ_PAIRS_SET, struct.pack("<H", PAIRS)) == (OK, 1)
    await bench.queue_reset(2, 20)
    assert await receive_on(bench, ethernet(rng, 100), 1) == 0, "receiveq2 is being reset"
    cov.hit("case", "moved_to_enabled")
    await bench.queue_reset(0, 20)
    dropped = bench.stat("rx_dropped")
    await bench.source.send(AxiStreamFrame(ethernet(rng, 100), tdest=1))
    await bench.source.wait()
    await bench.quiet(200)
    assert bench.stat("rx_dropped") == dropped + 1, "a frame with every receive queue being reset was not dropped"
    cov.hit("case", "all_reset_dropped")
