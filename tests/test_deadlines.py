"""The conformance checks' deadlines (testbenches/conformance/deadlines.py): one time scale per session, calibrated
at bring-up from how long the target takes for a one-chain round trip, at least what the target declares; every
wait and every silence window scaled by it; a wait that runs out says how long it was and why."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from backend.drivers.transport import VirtioPciModern
from backend.pci.device import PciDevice
from backend.pci.proxy import PciDeviceProxy
from backend.targets import default_registry
from sim.memory import GuestMemory
from testbenches.conformance.deadlines import (
    DEFAULT_BUDGET,
    FULL_SPEED_READ,
    FULL_SPEED_ROUND_TRIP,
    MAX_SCALE,
    NOMINAL,
    Calibration,
    Deadlines,
    declared_scale,
    scale_of,
)
from testbenches.conformance.harness import (
    FAIL_FAST,
    GUEST_MEMORY_BASE,
    MEM_SIZE,
    QUIET_ASYNC,
    RX,
    TX,
    Rig,
    calibrate,
)
from testbenches.conformance.packed_lists import wait_used

ICARUS = "rtl:virtio-net,sim=icarus"


def test_waits_and_silences_are_scaled() -> None:
    dl = Deadlines(12.0, ICARUS, "calibrated at bring-up")
    assert dl.wait(1.0) == pytest.approx(12.0)
    assert dl.silence(0.05) == pytest.approx(0.6)
    assert NOMINAL.wait(1.0) == 1.0 and NOMINAL.silence(0.05) == 0.05


def test_a_wait_that_ran_out_says_how_long_and_why() -> None:
    dl = Deadlines(12.0, ICARUS, "calibrated at bring-up")
    assert dl.explain(1.0) == f"12 s (1 s x time scale 12 of {ICARUS}, calibrated at bring-up)"
    assert dl.missed("no used element", 1.0) == \
        f"no used element within 12 s (1 s x time scale 12 of {ICARUS}, calibrated at bring-up)"
    assert dl.silent(0.05) == f"silent for 0.6 s (0.05 s x time scale 12 of {ICARUS}, calibrated at bring-up)"


def test_calibration_from_a_slow_measurement() -> None:
    """A round trip of 24 ms (one hiccup among them, the median ignores it) is twelve times the full-speed bound."""
    slow = Calibration.of([0.024, 0.023, 0.5, 0.024, 0.025], [0.006] * 4)
    assert slow.round_trip == pytest.approx(0.024) and slow.rounds == 5
    assert scale_of(slow) == pytest.approx(12.0)
    dl = Deadlines.calibrated(ICARUS, slow)
    assert dl.scale == pytest.approx(12.0) and dl.basis == "calibrated at bring-up"
    assert dl.wait(1.0) == pytest.approx(12.0)
    assert "one-chain round trip 24 ms (median of 5" in dl.describe()
    # a target at full speed keeps its bounds exactly
    fast = Calibration.of([0.0002] * 8, [0.00005] * 8)
    assert scale_of(fast) == 1.0 and Deadlines.calibrated("sim:virtio-net", fast).wait(1.0) == 1.0
    # bounded, and register reads when no round trip could be timed
    assert scale_of(Calibration.of([30.0], [])) == MAX_SCALE
    assert scale_of(Calibration(None, 4 * FULL_SPEED_READ, note="chain never used")) == pytest.approx(4.0)
    assert scale_of(Calibration(None, None)) == 1.0
    assert scale_of(Calibration(3 * FULL_SPEED_ROUND_TRIP, 100 * FULL_SPEED_READ)) == pytest.approx(3.0)


def test_a_declared_slowdown_is_a_floor() -> None:
    measured = Deadlines.calibrated(ICARUS, Calibration.of([0.024], []), declared=20.0)
    assert measured.scale == 20.0 and measured.basis == "declared by the target"
    assert measured.describe().startswith(f"time scale 20 of {ICARUS} (declared by the target: 20, above 12 "
                                          "calibrated at bring-up: one-chain round trip 24 ms"), measured.describe()
    assert Deadlines.calibrated(ICARUS, Calibration.of([0.06], []), declared=20.0).scale == pytest.approx(30.0)
    device = SimpleNamespace(time_scale=3.0, abilities=lambda: SimpleNamespace(time_scale=8.0))
    assert declared_scale(device) == 8.0
    assert declared_scale(SimpleNamespace(time_scale=5)) == 5.0
    assert declared_scale(SimpleNamespace(time_scale=True)) == 1.0 and declared_scale(object()) == 1.0


class SlowDoorbells(PciDeviceProxy):
    """The behavioral model with every doorbell write taking ``delay`` s: the device's work lags its notifications
    as a design on a slow simulator's does."""

    def __init__(self, inner: PciDevice, delay: float) -> None:
        super().__init__(inner, f"slow({inner.name})")
        cap = VirtioPciModern(inner).notify_cap
        self.bar, self.start, self.end = cap.bar, cap.offset, cap.offset + cap.length
        self.delay = delay

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == self.bar and self.start <= offset < self.end:
            time.sleep(self.delay)
        super().region_write(index, offset, data)


@pytest.fixture
def sim() -> Iterator[PciDevice]:
    dev = default_registry().open("sim:virtio-net")
    try:
        yield dev
    finally:
        dev.close()


def test_a_long_check_is_left_out_only_on_a_slow_target() -> None:
    """Crossing the 16-bit idx takes ~70,000 chains: on a full-speed target it always runs (scale 1, whatever the
    count); on a slow one its estimate against the budget decides, and the reason names estimate, budget and option."""
    fast = Deadlines.calibrated("sim:virtio-net", Calibration.of([0.0003] * 8, [0.00005] * 4))
    assert fast.scale == 1 and fast.unaffordable(10**9, "this check") is None
    slow = Deadlines.calibrated(ICARUS, Calibration.of([0.029] * 8, [0.0045] * 4), declared=20.0)
    assert slow.budget == DEFAULT_BUDGET
    assert slow.chain_seconds() == pytest.approx(0.04)  # the declared scale's 20 x 2 ms, above the measured 29 ms
    assert slow.unaffordable(2500, "a small check") is None  # 100 s
    why = slow.unaffordable(70_000, "crossing the 16-bit used idx wrap")
    assert why is not None
    assert "70000 chains" in why and "about 47 min" in why and "600 s" in why and "--check-budget" in why, why
    generous = Deadlines.calibrated(ICARUS, Calibration.of([0.029] * 8, [0.0045] * 4), declared=20.0, budget=3600.0)
    assert generous.unaffordable(70_000, "crossing the 16-bit used idx wrap") is None
    measured = Deadlines.calibrated(ICARUS, Calibration.of([0.1] * 8, []))  # slower than the scale says
    assert measured.chain_seconds() == pytest.approx(0.1)


def test_bring_up_calibration_sees_a_slow_target(sim: PciDevice) -> None:
    fast = calibrate(sim, "sim:virtio-net")
    assert fast.scale == 1.0 and fast.basis == "calibrated at bring-up", fast.describe()
    slow = calibrate(SlowDoorbells(sim, 0.02), "sim:virtio-net,slow")
    assert 9.0 <= slow.scale <= 30.0, slow.describe()  # 20 ms round trips against 2 ms at full speed
    assert "one-chain round trip" in slow.describe()


def test_a_device_that_never_returns_the_chain_is_timed_by_its_reads(sim: PciDevice) -> None:
    class Deaf(PciDeviceProxy):
        """Doorbells go nowhere: the calibration chain is never used."""

        def __init__(self, inner: PciDevice) -> None:
            super().__init__(inner)
            cap = VirtioPciModern(inner).notify_cap
            self.bar, self.span = cap.bar, range(cap.offset, cap.offset + cap.length)

        def region_write(self, index: int, offset: int, data: bytes) -> None:
            if not (index == self.bar and offset in self.span):
                super().region_write(index, offset, data)

    start = time.monotonic()
    dl = calibrate(Deaf(sim), "sim:virtio-net,deaf")
    assert time.monotonic() - start < 5.0
    assert dl.scale == 1.0 and "not used within" in dl.describe(), dl.describe()


def test_the_rig_scales_its_waits_and_explains_a_miss(sim: PciDevice) -> None:
    """A rig on deadlines of scale 4: its quiet window, its patience (and the shortened one after a miss) are four
    times nominal, a wait for used buffers that never come lasts the scaled bound, and the packed helper's message
    names the bound and its reason."""
    dl = Deadlines(4.0, "sim:virtio-net", "calibrated at bring-up")
    with GuestMemory.single(MEM_SIZE, gpa=GUEST_MEMORY_BASE) as mem:
        r = Rig(sim, mem, deadlines=dl)
        try:
            assert r.time_scale == 4.0 and r.patience == pytest.approx(4.0)
            assert r.silence(QUIET_ASYNC) == pytest.approx(4 * QUIET_ASYNC)
            r.up(queue_size=16, rx_buffers=4)
            start = time.monotonic()
            assert r.wait_used(RX, 1, timeout=0.05) == []  # nothing sent: the whole scaled wait
            assert time.monotonic() - start >= 0.2
            r.up(queue_size=16, layout="packed")
            got, _, why = wait_used(r, TX, 1, 0.02)
            assert got == []
            assert why == ("queue 1: 0 of 1 buffers used within 0.08 s (0.02 s x time scale 4 of sim:virtio-net, "
                           "calibrated at bring-up)"), why
            assert r.patience == pytest.approx(4 * FAIL_FAST)  # the shortened wait stays scaled
            _, _, why = wait_used(r, TX, 1, 1.0)
            assert "0.2 s (0.05 s x time scale 4" in why and "patience" in why, why
        finally:
            r.close()


def test_without_session_deadlines_a_rig_takes_the_declared_slowdown(sim: PciDevice) -> None:
    class Declaring(PciDeviceProxy):
        time_scale = 6.0

    with GuestMemory.single(MEM_SIZE, gpa=GUEST_MEMORY_BASE) as mem:
        r = Rig(Declaring(sim), mem, deadlines=Deadlines(2.0, "x", "calibrated at bring-up"))
        try:
            assert r.time_scale == 6.0 and r.deadlines.basis == "declared by the target"
            assert r.event_wait == pytest.approx(6 * 0.5)
        finally:
            r.close()


def store_used_idx(r: Rig, value: int) -> None:
    """Writes the TX used idx as a device would (struct virtq_used: flags, then idx)."""
    r.mem.write(r.tx.used_addr + 2, (value & 0xFFFF).to_bytes(2, "little"))


class UsedIdxWriter:
    """Stands in for a device moving a batch slowly: a thread that stores the TX used idx ``start + by``, ``start +
    2 * by`` .. ``start + steps * by``, one store every ``gap`` s (nothing else of the ring is touched: the wait
    reads only the idx)."""

    def __init__(self, r: Rig, start: int, steps: int, gap: float, by: int = 1) -> None:
        self.stop = threading.Event()

        def run() -> None:
            for k in range(1, steps + 1):
                if self.stop.wait(gap):
                    return
                store_used_idx(r, start + k * by)

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> UsedIdxWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def test_a_wait_for_a_batch_bounds_each_step_not_the_batch(sim: PciDevice) -> None:
    """A batch whose used elements come slower, all together, than the bound (12 steps 40 ms apart against 0.1 s)
    is waited for while the idx keeps moving toward the target; a device that stops part way misses one bound after
    its last step, and a jump past the target never extends the wait."""
    with GuestMemory.single(MEM_SIZE, gpa=GUEST_MEMORY_BASE) as mem:
        r = Rig(sim, mem, deadlines=Deadlines(1.0, "sim:virtio-net", "calibrated at bring-up"))
        try:
            r.up(queue_size=64, rx_buffers=4)
            start = r.tx.used_idx()
            began = time.monotonic()
            with UsedIdxWriter(r, start, 12, 0.04):
                ok, _ = r.wait_used_idx(TX, start + 12, timeout=0.1)
            assert ok and time.monotonic() - began >= 0.4, "a moving batch was cut off by one step's bound"
            began = time.monotonic()
            with UsedIdxWriter(r, start + 12, 3, 0.04):  # stops 9 short
                ok, _ = r.wait_used_idx(TX, start + 24, timeout=0.1)
            took = time.monotonic() - began
            assert not ok and 0.2 <= took < 2.0, took
            r.patience = r.stretched(1.0)  # the miss above shortened later waits; this one is judged on its own
            store_used_idx(r, start + 30)
            began = time.monotonic()
            with UsedIdxWriter(r, start + 30, 100, 0.01):  # past start + 24 and running on: moving, never toward it
                ok, _ = r.wait_used_idx(TX, start + 24, timeout=0.1)
            took = time.monotonic() - began
            assert not ok and took < 0.6, took
        finally:
            r.close()


def test_a_batch_returned_at_once_gets_time_for_each_of_its_elements(sim: PciDevice) -> None:
    """A device may write the used idx once for a whole batch: 200 elements due are given 0.1 s plus a full-speed
    round trip each (0.5 s nominal, 2 s at scale 4), so an idx that jumps by 200 after 1 s is in time, where the
    bare 0.1 s (0.4 s) would have missed it."""
    with GuestMemory.single(MEM_SIZE, gpa=GUEST_MEMORY_BASE) as mem:
        r = Rig(sim, mem, deadlines=Deadlines(4.0, "sim:virtio-net", "calibrated at bring-up"))
        try:
            r.up(queue_size=256, rx_buffers=4)
            start = r.tx.used_idx()
            with UsedIdxWriter(r, start, 1, 1.0, by=200):  # one store, the whole batch, after 1 s
                ok, _ = r.wait_used_idx(TX, start + 200, timeout=0.1)
            assert ok
        finally:
            r.close()
