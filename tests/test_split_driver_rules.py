"""The available buffer notification rows (SPLIT-DRV-20..25): each bad publication is flagged with exactly its row
by :func:`notify_findings`, and the check's steps catch guest drivers that notify wrongly on a ``sim:`` device.
SPLIT-DRV-16/17/18: the check's run catches a driver that takes a spurious interrupt for a used entry (16 only) and
one that reads its receive buffers past the used len (17/18 only)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from backend.targets import default_registry
from backend.virtio.features import F, bits
from backend.virtio.split_ring import vring_need_event
from sim.memory import GuestMemory
from testbenches.conformance.checks.test_split_driver_rules import (
    QSIZE,
    RX_AT_BRING_UP,
    HeldDoorbells,
    PoisonRun,
    frames_back_intact,
    notification_steps,
    spurious_then_poisoned_traffic,
)
from testbenches.conformance.harness import GUEST_MEMORY_BASE
from testbenches.driver.layout import layout_features
from testbenches.driver.split_ring import DriverQueueError, DriverSplitQueue, _Inflight
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver, RxFrame
from testbenches.monitor import SplitRingMonitor
from testbenches.monitor.split_ring_rules import Publication, notify_findings
from testbenches.monitor.virtio_pci_rules import verdicts_of

# (event_idx, used.flags, avail_event, old, new) -> the row judged and whether a notification is right
CASES = [
    (False, 0, 10, 10, 11, "SPLIT-DRV-22", True),  # flags 0, avail_event agrees
    (False, 1, 20, 10, 11, "SPLIT-DRV-21", False),  # flags 1, avail_event agrees (not crossed)
    (False, 0, 20, 10, 11, "SPLIT-DRV-20", True),  # avail_event not crossed, flags 0: notify anyway
    (False, 1, 10, 10, 11, "SPLIT-DRV-20", False),  # avail_event crossed, flags 1: no notify anyway
    (True, 0, 10, 10, 11, "SPLIT-DRV-24", True),  # avail_event is the slot just filled
    (True, 0, 11, 10, 13, "SPLIT-DRV-24", True),  # crossed inside a batch of 3
    (True, 0, 11, 10, 11, "SPLIT-DRV-25", False),  # not reached
    (True, 0, 5, 10, 11, "SPLIT-DRV-25", False),  # long passed
    (True, 0, 0xFFFF, 0xFFFE, 1, "SPLIT-DRV-24", True),  # crossed across the 16-bit wrap
    (True, 1, 10, 10, 11, "SPLIT-DRV-23", True),  # bit 0 of used.flags set, avail_event crossed
    (True, 1, 11, 10, 11, "SPLIT-DRV-25", False),  # both say no
]


@pytest.mark.parametrize(("event_idx", "flags", "event", "old", "new", "row", "notify"), CASES)
def test_each_publication_judges_its_row(event_idx: bool, flags: int, event: int, old: int, new: int, row: str,
                                         notify: bool) -> None:
    good = notify_findings(Publication(0, old, new, flags, event, notify), event_idx)
    assert [(f.req_id, f.ok) for f in good] == [(row, True)]
    bad = notify_findings(Publication(0, old, new, flags, event, not notify), event_idx)
    assert [(f.req_id, f.ok) for f in bad] == [(row, False)], bad


def test_cases_agree_with_vring_need_event() -> None:
    for event_idx, flags, event, old, new, _, notify in CASES:
        follows = vring_need_event(event, new, old) if event_idx else not flags & 1
        assert follows == notify


class AlwaysNotifies(GuestNetDriver):
    def notify(self, q: int) -> bool:
        self.ring(q).publish()
        self._ring_doorbell(q)
        return True


class NeverNotifies(GuestNetDriver):
    def notify(self, q: int) -> bool:
        self.ring(q).publish()
        return False


class HeedsTheOtherField(GuestNetDriver):
    """Follows avail_event without EVENT_IDX, and used.flags as well as avail_event with it."""

    def notify(self, q: int) -> bool:
        ring = self.queues[q]
        old = ring.published
        ring.publish()
        want = vring_need_event(ring.avail_event(), ring.published, old)
        if ring.event_idx:
            want = want and not ring.used_flags() & 1
        if want:
            self._ring_doorbell(q)
        return want


@contextlib.contextmanager
def _steps_on_sim(driver: type[GuestNetDriver], event_idx: bool) -> Iterator[set[str]]:
    dev = default_registry().open("sim:virtio-net,wire=none")
    try:
        with GuestMemory.single(4 << 20, gpa=GUEST_MEMORY_BASE) as mem:
            trace = HeldDoorbells(dev)
            mon = SplitRingMonitor.attach(trace, mem.read)
            wanted = DEFAULT_FEATURES if event_idx else DEFAULT_FEATURES & ~bits(F.EVENT_IDX)
            drv = driver(trace, mem, queue_size=QSIZE, features=layout_features(wanted, "split"),
                         rx_buffers=RX_AT_BRING_UP)
            try:
                drv.init()
                findings, disturbed = notification_steps(drv, mon, mem, event_idx)
            finally:
                drv.close()
            assert disturbed == 0
            verdicts = verdicts_of(findings)
            assert verdicts, "no publication judged"
            yield {rid for rid, (ok, _) in verdicts.items() if not ok}
    finally:
        dev.close()


@pytest.mark.parametrize(("driver", "event_idx", "failed"), [
    (GuestNetDriver, False, set()),
    (GuestNetDriver, True, set()),
    (AlwaysNotifies, False, {"SPLIT-DRV-20", "SPLIT-DRV-21"}),
    (AlwaysNotifies, True, {"SPLIT-DRV-25"}),
    (NeverNotifies, False, {"SPLIT-DRV-20", "SPLIT-DRV-22"}),
    (NeverNotifies, True, {"SPLIT-DRV-23", "SPLIT-DRV-24"}),
    (HeedsTheOtherField, False, {"SPLIT-DRV-20"}),
    (HeedsTheOtherField, True, {"SPLIT-DRV-23"}),
])
def test_the_check_steps_catch_a_wrong_driver(driver: type[GuestNetDriver], event_idx: bool,
                                              failed: set[str]) -> None:
    with _steps_on_sim(driver, event_idx) as got:
        assert got == failed


class TakesInterruptsForUsedEntries(GuestNetDriver):
    """Treats every receive interrupt as a used entry: a spurious one is a protocol error to it."""

    def receive_raw(self, count: int, timeout: float = 5.0) -> list[RxFrame]:
        if self.wait_irq("rx", 0) and not self.ring(self.RX).used():
            raise DriverQueueError("receive interrupt with no used entry")
        return super().receive_raw(count, timeout)


class ReadsPastLen(DriverSplitQueue):
    """Takes the whole writable buffer, not the first used len bytes."""

    def _written(self, rec: _Inflight, length: int, what: str) -> tuple[int, bytes]:
        data = b"".join(self.mem.read(gpa, n) for gpa, n, w in rec.buffers if w)
        return len(data), data


def _poison_run(driver: type[GuestNetDriver]) -> PoisonRun:
    dev = default_registry().open("sim:virtio-net")
    try:
        with GuestMemory.single(4 << 20, gpa=GUEST_MEMORY_BASE) as mem:
            drv = driver(dev, mem, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES, "split"),
                         rx_buffers=16)
            try:
                drv.init()
                return spurious_then_poisoned_traffic(drv, looped=True)
            finally:
                drv.close()
    finally:
        dev.close()


def test_the_stock_driver_copes_and_reads_only_len() -> None:
    run = _poison_run(GuestNetDriver)
    assert run.kicks and run.poisoned and not run.problems
    assert len(run.got) == len(run.sent) and not frames_back_intact(run.sent, run.got)


def test_a_driver_taking_a_spurious_interrupt_for_a_used_entry_is_caught() -> None:
    run = _poison_run(TakesInterruptsForUsedEntries)
    assert run.problems and "no used entry" in run.problems[0]


def test_a_driver_reading_past_the_used_len_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("testbenches.driver.layout.DriverSplitQueue", ReadsPastLen)
    run = _poison_run(GuestNetDriver)
    assert not run.problems and run.got
    wrong = frames_back_intact(run.sent, run.got)
    assert len(wrong) == len(run.got) and all("poison" in w for w in wrong), wrong
