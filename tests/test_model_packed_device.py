"""The model on packed queues: offered by default (``features=`` may withhold it), chosen at FEATURES_OK, frames both
ways."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.pci.device import write_int
from backend.virtio.features import DeviceStatus, F, NetF, bits, has
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.packed_ring import PackedDescFlags, PackedDescriptor, avail_bits
from backend.virtio.pci_regs import CommonCfg
from models.virtio_net.device import DEFAULT_FEATURES, VirtioNetDevice
from sim.memory import Allocator
from testbenches.driver.layout import ring_addresses
from testbenches.driver.packed import DriverPackedQueue
from testbenches.frames import test_frame
from tests.test_model_device import MEM, Guest, fired

PACKED_OFFER = DEFAULT_FEATURES | bits(F.RING_PACKED, F.NOTIFICATION_DATA)
SPEC = f"virtio-net,wire=none,features={PACKED_OFFER:#x}"
BASE = bits(F.VERSION_1, F.ACCESS_PLATFORM, F.RING_PACKED)


class FirstIdOfBatch(VirtioNetDevice):
    """A seeded bug through the device's packed hooks: an IN_ORDER batch returned with its first Buffer ID."""

    def packed_in_order_id(self, ids: Sequence[int]) -> int:
        return ids[0]


@contextmanager
def packed_guest(features: int, size: int, spec: str = SPEC) -> Iterator[tuple[Guest, DriverPackedQueue,
                                                                               DriverPackedQueue]]:
    with Guest(spec) as g:
        assert g.negotiate(features)
        g.msix(3)
        g.cw(CommonCfg.CONFIG_MSIX_VECTOR, 2)
        alloc = Allocator(0x10000, MEM - 0x10000)
        queues = []
        for index in (0, 1):
            q = DriverPackedQueue(g.mem, alloc, size, index=index, event_idx=has(features, F.EVENT_IDX),
                                  in_order=has(features, F.IN_ORDER))
            g.program_queue(index, size, index, ring_addresses(q))
            assert g.cr(CommonCfg.QUEUE_ENABLE) == 1, f"queue {index} of size {size} refused"
            queues.append(q)
        g.driver_ok()
        yield g, queues[0], queues[1]


def kick(g: Guest, q: DriverPackedQueue, features: int) -> None:
    """Notify when the device event suppression structure asks for it; 32-bit with NOTIFICATION_DATA."""
    if not q.kick_needed():
        return
    g.cw(CommonCfg.QUEUE_SELECT, q.index)
    at = g.notify_base + g.cr(CommonCfg.QUEUE_NOTIFY_OFF) * g.notify_mult
    if has(features, F.NOTIFICATION_DATA):
        write_int(g.dev, 0, at, 4, q.notification_value())
    else:
        write_int(g.dev, 0, at, 2, q.index)


def test_default_offer_has_packed_ring_the_driver_chooses() -> None:
    """The default offer has RING_PACKED; the layout is what the driver acknowledged at FEATURES_OK."""
    with Guest() as g:
        assert has(g.offered(), F.RING_PACKED)
        assert g.negotiate() and not g.model.ring_packed  # the guest acknowledges every bit but RING_PACKED
        assert g.negotiate(g.offered()) and g.model.ring_packed
    with Guest(f"virtio-net,wire=none,features={DEFAULT_FEATURES & ~bits(F.RING_PACKED):#x}") as g:
        assert not has(g.offered(), F.RING_PACKED)  # features= withholds it


FEATURE_SETS = {
    "plain": BASE,
    "indirect+event_idx": BASE | bits(F.INDIRECT_DESC, F.EVENT_IDX),
    "in_order+notification_data": BASE | bits(F.IN_ORDER, F.NOTIFICATION_DATA),
    "all+mrg_rxbuf": BASE | bits(F.INDIRECT_DESC, F.EVENT_IDX, F.IN_ORDER, F.NOTIFICATION_DATA, NetF.MRG_RXBUF),
}


@pytest.mark.parametrize("name", list(FEATURE_SETS))
@pytest.mark.parametrize("size", [7, 100])
def test_frames_move_on_packed_tx_and_rx_queues(name: str, size: int) -> None:
    features = FEATURE_SETS[name]
    indirect = has(features, F.INDIRECT_DESC)
    with packed_guest(features, size) as (g, rx, tx):
        assert g.model.ring_packed and g.model.negotiated == features
        col = g.collect()
        frames = [test_frame(i, 60 + 13 * i % 1400) for i in range(3 * size)]  # the rings wrap at least twice
        got: list[bytes] = []
        for i, frame in enumerate(frames):
            hdr = NetHdr().pack()
            tx.add([hdr, frame] if i % 2 else [hdr + frame], [], indirect=indirect and i % 3 == 0)
            kick(g, tx, features)
            for u in tx.used():
                assert u.len == 0
            if rx.num_free:
                rx.add([], [HDR_SIZE + 1600] if i % 2 else [HDR_SIZE, 1600], indirect=indirect and i % 3 == 1)
                kick(g, rx, features)
            g.model.receive(frame)
            for u in rx.used():
                assert NetHdr.unpack(u.data[:HDR_SIZE]).num_buffers == 1
                got.append(u.data[HDR_SIZE:])
        assert col.frames == frames, "TX: every frame on the wire, intact and in order"
        assert got == frames, "RX: every frame in a buffer, intact and in order"
        assert not g.model.errors and not g.status() & DeviceStatus.DEVICE_NEEDS_RESET
        assert fired(g.calls[0]) and fired(g.calls[1])
        assert g.model.stats.tx_packets == g.model.stats.rx_packets == len(frames)
        assert not tx.anomalies and not rx.anomalies


def test_merged_rx_buffers_on_a_packed_ring() -> None:
    features = BASE | bits(NetF.MRG_RXBUF)
    with packed_guest(features, 16) as (g, rx, _tx):
        for _ in range(6):
            rx.add([], [200])
        kick(g, rx, features)
        frame = test_frame(7, 900)
        g.model.receive(frame)
        used = rx.used()
        assert len(used) == 5 and [u.len for u in used] == [200] * 4 + [HDR_SIZE + 900 - 800]
        data = b"".join(u.data for u in used)
        assert NetHdr.unpack(data[:HDR_SIZE]).num_buffers == 5 and data[HDR_SIZE:] == frame


def test_a_driver_error_on_a_packed_ring_sets_needs_reset_and_a_reset_returns_to_split() -> None:
    with packed_guest(BASE, 8) as (g, _rx, tx):
        head = PackedDescriptor(0x9000, 16, 0, int(PackedDescFlags.INDIRECT) | avail_bits(1))  # no INDIRECT_DESC
        tx.expose_raw([head], 0)
        kick(g, tx, BASE)
        assert g.status() & DeviceStatus.DEVICE_NEEDS_RESET
        assert [e.req_id for e in g.model.errors] == ["PACKED-DRV-12"]
        g.cw(CommonCfg.DEVICE_STATUS, 0)
        assert not g.model.ring_packed and g.model.packed_queues[1].next_avail == 0


def test_packed_queue_size_zero_is_refused() -> None:
    with Guest(SPEC) as g:
        assert g.negotiate(BASE)
        g.cw(CommonCfg.QUEUE_SELECT, 0)
        g.cw(CommonCfg.QUEUE_SIZE, 0)
        g.cw(CommonCfg.QUEUE_ENABLE, 1)
        assert g.cr(CommonCfg.QUEUE_ENABLE) == 0
        assert [e.req_id for e in g.model.errors] == ["PCI-DRV-16"]


def test_ring_reset_of_a_packed_queue_restores_positions_and_wrap_counters() -> None:
    features = BASE | bits(F.RING_RESET)
    with packed_guest(features, 5) as (g, _rx, tx):
        for i in range(7):  # past the end of the ring: the wrap counters flipped
            tx.add([NetHdr().pack() + test_frame(i, 60)], [])
            kick(g, tx, features)
            tx.used()
        pq = g.model.packed_queues[1]
        assert (pq.avail_wrap, pq.used_wrap) == (0, 0)
        g.cw(CommonCfg.QUEUE_SELECT, 1)
        g.cw(CommonCfg.QUEUE_RESET, 1)
        assert g.cr(CommonCfg.QUEUE_RESET) == 0 and g.cr(CommonCfg.QUEUE_ENABLE) == 0
        assert (pq.next_avail, pq.avail_wrap, pq.next_used, pq.used_wrap) == (0, 1, 0, 1)  # RESET-DEV-04


def test_notification_data_past_what_was_made_available_is_a_driver_error() -> None:
    features = BASE | bits(F.NOTIFICATION_DATA)
    with packed_guest(features, 8) as (g, _rx, tx):
        tx.add([NetHdr().pack() + test_frame(0, 60)], [])
        g.cw(CommonCfg.QUEUE_SELECT, 1)
        at = g.notify_base + g.cr(CommonCfg.QUEUE_NOTIFY_OFF) * g.notify_mult
        write_int(g.dev, 0, at, 4, 1 | 3 << 16 | 1 << 31)  # next_off 3: slots 1 and 2 were never made available
        assert [e.req_id for e in g.model.errors] == ["PACKED-DRV-04"]
        assert g.status() & DeviceStatus.DEVICE_NEEDS_RESET


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, 256), extra=st.sets(st.sampled_from([F.INDIRECT_DESC, F.EVENT_IDX, F.IN_ORDER,
                                                                 F.NOTIFICATION_DATA, NetF.MRG_RXBUF])),
       seed=st.integers(0, 2**32 - 1))
def test_random_packed_workloads_through_the_model(size: int, extra: set[int], seed: int) -> None:
    """Random ring sizes (any, 1..256) and ring features; frames of random lengths sent in random bursts with
    random buffer layouts, and as many received: every frame on the wire and in the RX buffers, intact and in
    order, with no driver error, after the rings wrapped at least twice."""
    rnd = random.Random(seed)
    features = BASE | bits(*extra)
    indirect = has(features, F.INDIRECT_DESC)
    with packed_guest(features, size) as (g, rx, tx):
        col = g.collect()
        frames = [test_frame(i, rnd.randint(60, 1514)) for i in range(2 * size + 3)]
        got: list[bytes] = []
        sent = 0
        while sent < len(frames) or tx.in_flight:
            for _ in range(rnd.randint(1, 4)):
                if sent == len(frames):
                    break
                hdr, frame = NetHdr().pack(), frames[sent]
                cut = rnd.randint(0, len(frame))
                parts = [hdr + frame] if size < 3 or rnd.random() < 0.5 else [hdr, frame[:cut], frame[cut:]]
                use_indirect = indirect and rnd.random() < 0.4
                if tx.num_free < (1 if use_indirect else len(parts)) or tx.in_flight == size:
                    break
                tx.add(parts, [], indirect=use_indirect)
                sent += 1
            kick(g, tx, features)
            tx.used()
            for frame in col.frames[len(got):]:
                while rx.num_free and rx.in_flight < size:  # the RX ring kept full, so no frame is dropped
                    use_indirect = indirect and rnd.random() < 0.4
                    two = size >= 2 and (use_indirect or rx.num_free >= 2) and rnd.random() < 0.5
                    lens = [HDR_SIZE, 1514] if two else [HDR_SIZE + 1514]
                    rx.add([], lens, indirect=use_indirect)
                kick(g, rx, features)
                g.model.receive(frame)
                got += [u.data[HDR_SIZE:] for u in rx.used()]
        assert col.frames == frames
        assert got == frames
        assert not g.model.errors and not tx.anomalies and not rx.anomalies


def test_a_packed_hook_of_the_device_is_a_one_method_variant() -> None:
    """The device carries the packed engine's hooks: overriding one seeds one bug, and the driver side sees it
    (an IN_ORDER batch named by its first buffer completes only that one, and the ring stalls)."""
    features = BASE | bits(F.IN_ORDER)
    spec = f"{SPEC},model={__name__}:FirstIdOfBatch"
    for variant, expect_all in ((SPEC, True), (spec, False)):
        with packed_guest(features, 8, variant) as (g, _rx, tx):
            g.collect()
            tx.set_no_interrupt(True)
            g.cw(CommonCfg.QUEUE_SELECT, 1)
            at = g.notify_base + g.cr(CommonCfg.QUEUE_NOTIFY_OFF) * g.notify_mult
            ids = [tx.add([NetHdr().pack() + test_frame(i, 60)], []) for i in range(3)]
            write_int(g.dev, 0, at, 2, 1)  # one kick for the three: one batch
            done = [u.head for u in tx.used()]
            assert (done == ids) == expect_all, (variant, done, ids)
