"""The backend's vDPA driver off the happy path: a device that refuses or takes its time, a frontend that asks
for what it should not, and every field of the device configuration answered and written (4.1.4.3, 2.4, 2.5,
3.1.1, 2.2.1, 5.1.3.1).

The driver under test is ``backend.drivers.vdpa.VirtioPciVdpaDevice`` driven by a
:class:`~testbenches.driver.vdpa_frontend.VdpaFrontend` the way the vhost-user server drives it, against the
target seen through :class:`TracingPciDevice` (what it wrote and read) and, where the device has to refuse or
lag, through :class:`CommonCfgEditor` (what the driver reads of the common configuration).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pytest

from backend.device import NotSupported, VdpaError, VqState
from backend.drivers.transport import (
    NET_CONFIG_FIELDS,
    VirtioPciError,
    VirtioPciModern,
    config_field_exists,
)
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.pci.device import PciDevice
from backend.pci.proxy import PciDeviceProxy
from backend.virtio.features import NET_DEPENDENCIES, DeviceStatus, F, NetF, bits, dependency_violations, has
from backend.virtio.pci_regs import CommonCfg
from sim.memory import GuestMemory
from testbenches.conformance.checks.test_driver_discovery import FRAMES, _msix_variant, _transmit, run_guest, run_vdpa
from testbenches.conformance.checks.test_driver_side import FaultInjector
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.driver.vdpa_frontend import VdpaFrontend
from testbenches.monitor import TracingPciDevice, VirtioPciDriverMonitor
from testbenches.monitor.virtio_pci_rules import Event

MEM = 8 << 20
#: What a frontend asks for: everything shown but what the bench's ring driver side does not implement.
NOT_IMPLEMENTED = bits(F.RING_PACKED, F.IN_ORDER)
#: Reads for which a lagging device keeps showing the old value: past the driver's busy polls into its back-off.
LAG_READS = 100


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


class CommonCfgEditor(PciDeviceProxy):
    """The target's common configuration as a slower or smaller device would show it.

    ``status_lag``: after 0 is written to device_status, that many reads still show the value before the
    reset (a reset still in progress: the driver has to poll, 4.1.4.3.2). ``queue_reset_lag``: after 1 is
    written to queue_reset, that many reads of it for that queue still show 1. ``absent``: queues whose
    queue_size reads 0 (not available, 4.1.4.3). ``generation_changes``: the first that many reads of
    config_generation each show a new value (the device config changing under the driver, 2.5). Everything
    else is the target's own.
    """

    def __init__(self, inner: PciDevice, *, status_lag: int = 0, queue_reset_lag: int = 0,
                 absent: frozenset[int] = frozenset(), generation_changes: int = 0) -> None:
        super().__init__(inner, f"lagging({inner.name})")
        self.common = VirtioPciModern(inner).common  # discovery reads config space only
        self.status_lag, self.queue_reset_lag, self.absent = status_lag, queue_reset_lag, absent
        self._qsel = 0
        self._stale_status: tuple[int, int] | None = None  # (value shown, reads left)
        self._queue_reset_left: dict[int, int] = {}
        self.stale_reads = 0  # reads answered with a lagging value
        self.generation_changes = generation_changes
        self.generation_reads = 0

    def _field(self, index: int, offset: int) -> int | None:
        c = self.common
        return offset - c.offset if index == c.bar and c.offset <= offset < c.offset + c.length else None

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        rel = self._field(index, offset)
        value = int.from_bytes(data, "little")
        if rel == CommonCfg.QUEUE_SELECT:
            self._qsel = value
        elif rel == CommonCfg.DEVICE_STATUS and value == 0 and self.status_lag:
            before = int.from_bytes(self.inner.region_read(index, offset, 1), "little")
            self._stale_status = (before, self.status_lag) if before else None
        elif rel == CommonCfg.QUEUE_RESET and value == 1 and self.queue_reset_lag:
            self._queue_reset_left[self._qsel] = self.queue_reset_lag
        super().region_write(index, offset, data)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        data = super().region_read(index, offset, size)
        rel = self._field(index, offset)
        if rel == CommonCfg.DEVICE_STATUS and self._stale_status is not None:
            value, left = self._stale_status
            self._stale_status = (value, left - 1) if left > 1 else None
            self.stale_reads += 1
            return value.to_bytes(size, "little")
        if rel == CommonCfg.QUEUE_RESET and self._queue_reset_left.get(self._qsel, 0) > 0:
            self._queue_reset_left[self._qsel] -= 1
            self.stale_reads += 1
            return (1).to_bytes(size, "little")
        if rel == CommonCfg.QUEUE_SIZE and self._qsel in self.absent:
            return bytes(size)
        if rel == CommonCfg.CONFIG_GENERATION:
            self.generation_reads += 1
            if self.generation_reads <= self.generation_changes:
                return ((int.from_bytes(data, "little") + self.generation_reads) & 0xFF).to_bytes(size, "little")
        return data


def _events(trace: TracingPciDevice) -> list[Event]:
    return VirtioPciDriverMonitor(trace).events()


def _monitor_ok(trace: TracingPciDevice, rid: str) -> tuple[bool, list[str]]:
    return VirtioPciDriverMonitor(trace).verdicts().get(rid, (True, []))


# --- a reset that takes time (2.4, 4.1.4.3.2) -------------------------------------------------------------


@pytest.mark.req("PCI-DRV-19", "RESET-DRV-01")
@pytest.mark.parametrize("driver", ["vdpa", "guest"])
def test_drivers_wait_for_a_reset_that_takes_time(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                                  driver: str) -> None:
    """device_status keeps its old value for a few reads after 0 is written: the driver polls until it reads 0,
    and only then initialises (here: at probe, before the second bring-up and at close)."""
    looped = bench.wire().looped
    lagging = CommonCfgEditor(bench.open(), status_lag=LAG_READS)
    # a previous owner left the function initialising: the driver's first reset is one that takes time
    VirtioPciModern(lagging).set_status(DeviceStatus.ACKNOWLEDGE)
    trace = TracingPciDevice(lagging)
    run = (run_vdpa if driver == "vdpa" else run_guest)(trace, mem, looped)
    ids = ("PCI-DRV-19", "RESET-DRV-01")
    resets = sum(1 for e in _events(trace) if e.kind == "status_w" and e.value == 0)
    for rid in ids:
        ok, evidence = _monitor_ok(trace, rid)
        verdict.check(rid, ok and run.ok and lagging.stale_reads >= LAG_READS,
                      f"{driver} driver on a device whose reset shows for {LAG_READS} reads: {run}; {resets} resets "
                      f"written, {lagging.stale_reads} reads answered with the old status; {evidence[:3]}")


# --- a frontend disabling a live queue (4.1.4.3.2, 2.6.1) ---------------------------------------------------


def _queue_reset_confirmed(events: list[Event], queue: int) -> tuple[bool, str]:
    """After queue_reset=1 for ``queue``: read back as 0 before any other write to that queue's fields."""
    start = next((i for i, e in enumerate(events) if e.kind == "common_w" and e.field == CommonCfg.QUEUE_RESET
                  and e.value == 1 and e.queue == queue), None)
    if start is None:
        return False, f"queue_reset never written 1 for queue {queue}"
    ones = 0
    for e in events[start + 1:]:
        if e.kind == "common_r" and e.field == CommonCfg.QUEUE_RESET and e.queue == queue:
            if e.value == 0:
                return True, f"queue_reset read 1 {ones} time(s), then 0"
            ones += 1
        elif e.kind in ("common_w", "status_w") and e.queue in (queue, -1) and e.field != CommonCfg.QUEUE_SELECT:
            return False, f"access #{e.seq}: {e.kind} {e.field.name if e.field else ''} after queue_reset read 1 " \
                          f"{ones} time(s) and never 0"
    return False, f"queue_reset read 1 {ones} time(s) and never 0"


@pytest.mark.req("PCI-DRV-20")
@pytest.mark.parametrize("ring_reset", [
    pytest.param(True, id="ring_reset", marks=pytest.mark.req("PCI-DRV-21", "RESET-DRV-02", "RESET-DRV-04")),
    pytest.param(False, id="no_ring_reset")])
def test_vdpa_driver_disables_a_live_queue_only_by_queue_reset(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                                               ring_reset: bool) -> None:
    """The frontend disables transmitq1 while the device runs (SET_VRING_ENABLE 0). queue_enable is never
    written 0: with VIRTIO_F_RING_RESET the driver resets the queue and waits for queue_reset to read 0 (the
    device takes a few reads), then the frontend brings the queue back with new rings and it carries frames;
    without it the request is refused and the queue keeps running."""
    lagging = CommonCfgEditor(bench.open(), queue_reset_lag=4)
    trace = TracingPciDevice(lagging)
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    try:
        offered = vdpa.get_device_features()
        if ring_reset and not has(offered, F.RING_RESET):
            for rid in ("PCI-DRV-21", "RESET-DRV-02", "RESET-DRV-04"):
                verdict.not_offered(rid, "VIRTIO_F_RING_RESET not offered")
        wanted = offered & ~NOT_IMPLEMENTED & ~(0 if ring_reset else bits(F.RING_RESET))
        front.bring_up(wanted, queues=(0, 1), size=64)
        first = _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        try:
            vdpa.set_vq_ready(1, False)
            refused = ""
        except NotSupported as exc:
            refused = str(exc)
        negotiated = has(front.features, F.RING_RESET)
        enabled_after = vdpa.transport.queue_enabled(1)  # the device's view, not the driver's record
        reported = vdpa.get_vq_ready(1)  # the frontend's view: the same answer, as a bool
        if negotiated:
            state = vdpa.get_vq_state(1)  # a queue that no longer runs reports the state the frontend set
            old_kick, old_call = front.kicks[1], front.calls[1]
            front.add_queue(1, 32)  # new rings, new size, new eventfds: programmed as at first setup
            os.close(old_kick)
            os.close(old_call)
            again = _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        else:
            state, again = VqState(), _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        vdpa.reset()
    finally:
        vdpa.close()
        front.close()
    events = _events(trace)
    zero_enable, evidence = _monitor_ok(trace, "PCI-DRV-20")
    head = (f"transmitq1 disabled after {first}/{len(FRAMES)} frames, VIRTIO_F_RING_RESET "
            f"{'negotiated' if negotiated else 'not negotiated'}: "
            f"{'refused (' + refused + ')' if refused else 'accepted'}; queue_enable then read {enabled_after}; "
            f"{again}/{len(FRAMES)} frames afterwards")
    if negotiated:
        confirmed, how = _queue_reset_confirmed(events, 1)
        verdict.check("PCI-DRV-20", zero_enable and not refused, f"{head}; {evidence[:3]}")
        verdict.check("PCI-DRV-21", confirmed and not enabled_after and reported is False,
                      f"{head}; {how}; reported to the frontend as ready={reported!r}")
        verdict.check("RESET-DRV-02", confirmed and state.avail_idx == 0, f"{head}; {how}; state {state}")
        reprogrammed = _programmed_before_enable(events, 1)
        verdict.check("RESET-DRV-04", reprogrammed and again == len(FRAMES) and first == len(FRAMES),
                      f"{head}; queue 1 fields written before it was enabled again: {reprogrammed}")
    else:
        verdict.check("PCI-DRV-20", zero_enable and "PCI-DRV-20" in refused and enabled_after and reported is True
                      and again == len(FRAMES)
                      and not any(e.field == CommonCfg.QUEUE_RESET and e.kind == "common_w" for e in events),
                      f"{head}; {evidence[:3]}")


@pytest.mark.req("PCI-DRV-21")
def test_vdpa_driver_does_not_take_an_unfinished_queue_reset_as_done(bench: Bench, verdict: Verdict,
                                                                     mem: GuestMemory) -> None:
    """queue_reset keeps reading 1 after the driver wrote it (the device never finishes the queue reset): the
    frontend's disable is refused after the driver's bounded wait, saying so, and nothing more is written to
    that queue; the queue stays the driver's running queue."""
    trace = TracingPciDevice(CommonCfgEditor(bench.open(), queue_reset_lag=1 << 30))
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    try:
        offered = vdpa.get_device_features()
        if not has(offered, F.RING_RESET):
            verdict.not_offered("PCI-DRV-21", "VIRTIO_F_RING_RESET not offered")
            return
        front.bring_up(offered & ~NOT_IMPLEMENTED, queues=(0, 1), size=64)
        try:
            vdpa.set_vq_ready(1, False)
            outcome = "accepted"
        except VdpaError as exc:
            outcome = f"refused: {exc}"
        try:
            vdpa.get_vq_state(1)
            running = False
        except NotSupported:
            running = True  # still live in the driver: its state cannot be read
    finally:
        vdpa.close()
        front.close()
    events = _events(trace)
    start = next((i for i, e in enumerate(events) if e.kind == "common_w" and e.field == CommonCfg.QUEUE_RESET
                  and e.queue == 1), len(events))
    status_0 = next((i for i, e in enumerate(events) if i > start and e.kind == "status_w" and e.value == 0),
                    len(events))
    after = [f"{e.field.name}={e.value:#x}" for e in events[start + 1:status_0] if e.kind == "common_w"
             and e.queue == 1 and e.field is not None]
    verdict.check("PCI-DRV-21", start < len(events) and outcome.startswith("refused") and "reset" in outcome
                  and running and not after,
                  f"queue_reset never reads 0: disable {outcome}; queue still live in the driver: {running}; "
                  f"queue 1 fields written after queue_reset=1, before the device reset: {after}")


def _programmed_before_enable(events: list[Event], queue: int) -> bool:
    """The last queue_enable=1 of ``queue`` follows writes of its size, addresses and vector since its reset."""
    reset = max((i for i, e in enumerate(events) if e.kind == "common_w" and e.field == CommonCfg.QUEUE_RESET
                 and e.queue == queue), default=None)
    if reset is None:
        return False
    written: set[CommonCfg] = set()
    for e in events[reset + 1:]:
        if e.kind == "common_w" and e.queue == queue and e.field is not None:
            if e.field == CommonCfg.QUEUE_ENABLE and e.value == 1:
                return {CommonCfg.QUEUE_SIZE, CommonCfg.QUEUE_DESC, CommonCfg.QUEUE_DRIVER, CommonCfg.QUEUE_DEVICE,
                        CommonCfg.QUEUE_MSIX_VECTOR} <= written
            written.add(e.field)
    return False


# --- a queue the device does not have (queue_size 0) ------------------------------------------------------


@pytest.mark.req("PCI-DRV-17", "PCI-DRV-18")
def test_vdpa_driver_refuses_a_queue_whose_size_reads_0(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    """transmitq1's queue_size reads 0 (not available): the frontend's SET_VRING_NUM for it is refused, readying
    it without a size holds DRIVER_OK back, and nothing of that queue is written or enabled; receiveq1 is
    brought up as usual."""
    trace = TracingPciDevice(CommonCfgEditor(bench.open(), absent=frozenset({1})))
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    try:
        front.map_memory()
        front.negotiate(vdpa.get_device_features() & ~NOT_IMPLEMENTED)
        limit = vdpa.get_vq_num_max(1)
        try:
            vdpa.set_vq_num(1, 64)
            refused = ""
        except VdpaError as exc:
            refused = str(exc)
        front.add_queue(0, 64)
        # the frontend readies queue 1 anyway, without a size: DRIVER_OK is refused while it stays ready
        vdpa.set_vq_ready(1, True)
        try:
            vdpa.set_status(vdpa.get_status() | DeviceStatus.DRIVER_OK)
            unsized = "DRIVER_OK accepted"
        except VdpaError as exc:
            unsized = f"DRIVER_OK refused: {exc}"
        vdpa.set_vq_ready(1, False)
        vdpa.set_status(vdpa.get_status() | DeviceStatus.DRIVER_OK)
        live = bool(vdpa.get_status() & DeviceStatus.DRIVER_OK)
    finally:
        vdpa.close()
        front.close()
    events = _events(trace)
    touched = [f"{e.field.name}={e.value:#x}" for e in events if e.kind == "common_w" and e.queue == 1
               and e.field not in (None, CommonCfg.QUEUE_SELECT)]
    sizes, evidence = _monitor_ok(trace, "PCI-DRV-17")
    order, order_evidence = _monitor_ok(trace, "PCI-DRV-18")
    head = (f"queue 1 size read {limit}; SET_VRING_NUM 64 {'refused (' + refused + ')' if refused else 'accepted'}; "
            f"queue 1 readied without a size: {unsized}; queue 1 fields written: {touched}; DRIVER_OK with "
            f"receiveq1 alone: {live}")
    verdict.check("PCI-DRV-17", sizes and limit == 0 and bool(refused) and unsized.startswith("DRIVER_OK refused")
                  and not touched and live,
                  f"{head}; {evidence[:3]}")
    verdict.check("PCI-DRV-18", order and not touched and live, f"{head}; {order_evidence[:3]}")


# --- negotiation refused, features asked for that must not be acknowledged (3.1.1, 2.2.1) ----------------


@pytest.mark.req("INIT-DRV-08", "INIT-DRV-12", "FEAT-DRV-01")
def test_vdpa_driver_gives_up_when_features_ok_does_not_stick(bench: Bench, verdict: Verdict,
                                                              mem: GuestMemory) -> None:
    """The device does not keep FEATURES_OK: the frontend's negotiation fails, and its DRIVER_OK anyway is
    refused with nothing written. Before that the frontend asks for a bit that was not offered: refused."""
    proxy = FaultInjector(bench.open(), refuse_features_ok=True)
    vdpa = VirtioPciVdpaDevice(proxy, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    outcomes: dict[str, str] = {}
    try:
        shown = vdpa.get_device_features()
        unoffered = next(b for b in range(64) if not has(shown, b) and b not in (F.RING_PACKED, F.IN_ORDER))
        for what, step in (
                (f"bit {unoffered} not offered", lambda: vdpa.set_driver_features(shown | bits(unoffered))),
                ("negotiation", lambda: front.negotiate(shown & ~NOT_IMPLEMENTED)),
                ("DRIVER_OK anyway", lambda: vdpa.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER
                                                             | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK))):
            try:
                step()
                outcomes[what] = "accepted"
            except VdpaError as exc:
                outcomes[what] = f"refused: {exc}"
    finally:
        vdpa.close()
        front.close()
    mon = VirtioPciDriverMonitor(proxy, proxy.layout)
    events = mon.events()
    writes = [e.value for e in events if e.kind == "status_w"]
    acked = [a for _o, a in mon.feature_timeline(events)[2]]
    evidence = f"status writes {[hex(w) for w in writes]}; {outcomes}"
    # each refusal tells the frontend the rule it keeps
    verdict.check("INIT-DRV-08", outcomes["negotiation"].startswith("refused")
                  and "INIT-DRV-08" in outcomes["negotiation"], evidence)
    verdict.check("INIT-DRV-12", outcomes["DRIVER_OK anyway"].startswith("refused")
                  and "INIT-DRV-12" in outcomes["DRIVER_OK anyway"]
                  and not any(w & DeviceStatus.DRIVER_OK for w in writes), evidence)
    verdict.check("FEAT-DRV-01", outcomes[f"bit {unoffered} not offered"].startswith("refused")
                  and "FEAT-DRV-01" in outcomes[f"bit {unoffered} not offered"]
                  and not any(has(a, unoffered) for a in acked), f"acknowledged {[hex(a) for a in acked]}; {evidence}")


@pytest.mark.req("FEAT-DRV-02")
@pytest.mark.parametrize("row", [
    pytest.param(i, id=f"{NetF(dep.feature).name}", marks=pytest.mark.req(dep.req_id.replace("-DEV-", "-DRV-")))
    for i, dep in enumerate(NET_DEPENDENCIES)])
def test_vdpa_driver_never_acks_a_feature_without_its_prerequisites(bench: Bench, verdict: Verdict,
                                                                    mem: GuestMemory, row: int) -> None:
    """The device offers a feature while withholding its prerequisites; the frontend asks for everything it
    is shown. The driver must not acknowledge the dependent feature (refusing the request keeps the rule)."""
    dep = NET_DEPENDENCIES[row]
    rid = dep.req_id.replace("-DEV-", "-DRV-")
    proxy = FaultInjector(bench.open(), add=bits(dep.feature), hide=_withheld_for(dep.feature, dep.all_of, dep.any_of))
    vdpa = VirtioPciVdpaDevice(proxy, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    try:
        shown = vdpa.get_device_features()
        try:
            front.negotiate(shown & ~NOT_IMPLEMENTED)
            outcome = "accepted"
        except VdpaError as exc:
            outcome = f"refused: {exc}"
        # the frontend tries again without the dependent feature: the device is usable that way
        vdpa.reset()
        front.negotiate(_without_broken(shown & ~NOT_IMPLEMENTED & ~bits(dep.feature)))
        recovered = bool(vdpa.get_status() & DeviceStatus.FEATURES_OK)
    finally:
        vdpa.close()
        front.close()
    mon = VirtioPciDriverMonitor(proxy, proxy.layout)
    acked = [a for _o, a in mon.feature_timeline(mon.events())[2]]
    bad = [hex(a) for a in acked if dep.violated_by(a)]
    evidence = (f"{NetF(dep.feature).name} shown ({has(shown, dep.feature)}) with its prerequisites "
                f"{[NetF(b).name for b in (*dep.all_of, *dep.any_of)]} withheld; frontend asked for all: {outcome}; "
                f"acknowledged {[hex(a) for a in acked]}; without it: FEATURES_OK {recovered}")
    # a refusal tells the frontend which row its request breaks
    told = outcome == "accepted" or rid in outcome
    verdict.check(rid, not bad and recovered and told, evidence)
    verdict.check("FEAT-DRV-02", not bad and recovered and told, evidence)


def _withheld_for(feature: int, all_of: Sequence[int], any_of: Sequence[int]) -> int:
    """The bits to hide so that ``feature`` is the only one shown without its prerequisites: those prerequisites,
    and every other feature that needs them (directly or through another), which a full offer would otherwise
    show broken too (HOST_ECN once HOST_TSO4 and HOST_TSO6 are withheld)."""
    hide = bits(*all_of, *any_of)
    rest = (1 << 128) - 1 & ~hide & ~bits(feature)
    return hide | (rest & ~_without_broken(rest))


def _without_broken(features: int) -> int:
    """``features`` less every feature whose prerequisites are missing from it (repeated: removals cascade)."""
    while broken := dependency_violations(features):
        for r in broken:
            features &= ~bits(r.feature)
    return features


# --- device configuration through the vDPA driver (2.5, 4.1.3.1) ------------------------------------------


def _windows(size: int) -> list[tuple[int, int]]:
    """GET_CONFIG requests: the whole space, each byte alone, every field alone, and odd spans across fields."""
    out = [(0, size), *((i, 1) for i in range(size))]
    out += [(off, width) for off, width, _f in NET_CONFIG_FIELDS if off + width <= size]
    out += [(off, n) for off in (1, 3, 5, 7) for n in (2, 3, 5) if off + n <= size]
    return out


@pytest.mark.req("CFG-DRV-02", "CFG-DRV-03", "PCI-DRV-05")
def test_vdpa_driver_answers_get_config_with_the_device_fields(bench: Bench, verdict: Verdict) -> None:
    """Every GET_CONFIG span a frontend may ask for is answered with the bytes the device holds (each existing
    field read whole at its natural width inside a config_generation bracket, zeros for fields whose feature
    was not offered); the reference is read through the register layer field by field at natural width."""
    trace = TracingPciDevice(bench.open())
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    try:
        size = vdpa.get_config_size()
        reference_dev = VirtioPciModern(trace.inner)  # past the trace: the checker's reads are not the driver's
        offered = reference_dev.device_features()
        image = bytearray(size)
        for off, width, _f in NET_CONFIG_FIELDS:
            if off + width <= size and config_field_exists(vdpa.ids.device, off, offered):
                image[off:off + width] = reference_dev.read_device_config(off, width, width)
        wrong: list[str] = []
        for off, n in _windows(size):
            got = vdpa.get_config(off, n)
            if got != bytes(image[off:off + n]):
                wrong.append(f"{off:#x}+{n}: {got.hex()} (device {image[off:off + n].hex()})")
    finally:
        vdpa.close()
    head = (f"{len(_windows(size))} GET_CONFIG spans over {size} bytes (offered {offered:#x}); "
            f"answers differing from the device: {wrong[:4]}")
    for rid in ("CFG-DRV-02", "CFG-DRV-03", "PCI-DRV-05"):
        ok, evidence = _monitor_ok(trace, rid)
        verdict.check(rid, ok and not wrong and size > 0, f"{head}; {evidence[:3]}")


@pytest.mark.req("CFG-DRV-02")
@pytest.mark.parametrize("changes", [pytest.param(5, id="settles"), pytest.param(100000, id="never_settles")])
def test_vdpa_driver_rereads_config_while_the_generation_changes(bench: Bench, verdict: Verdict,
                                                                 changes: int) -> None:
    """config_generation changes between the reads that bracket a GET_CONFIG: the driver repeats the whole group
    until both reads agree and answers with the device's bytes; where it never settles the request is refused
    (saying why) after the driver's retry bound, never answered with a torn read."""
    editor = CommonCfgEditor(bench.open(), generation_changes=changes)
    trace = TracingPciDevice(editor)
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    try:
        size = vdpa.get_config_size()
        reference = VirtioPciModern(editor.inner)  # past the editor: the device's own generation
        offered = reference.device_features()
        image = bytearray(size)
        for off, width, _f in NET_CONFIG_FIELDS:
            if off + width <= size and config_field_exists(vdpa.ids.device, off, offered):
                image[off:off + width] = reference.read_device_config(off, width, width)
        try:
            answer: bytes | None = vdpa.get_config(0, size)
            outcome = "answered"
        except VdpaError as exc:
            answer, outcome = None, f"refused: {exc}"
        retries = vdpa.transport.generation_retries
    finally:
        vdpa.close()
    groups = sum(1 for e in _events(trace) if e.kind == "gen_r") // 2
    ok, evidence = _monitor_ok(trace, "CFG-DRV-02")
    head = (f"config_generation changing on its first {changes} reads: GET_CONFIG {outcome}; {groups} bracketed "
            f"groups read")
    if changes < 2 * retries:
        verdict.check("CFG-DRV-02", ok and answer == bytes(image) and groups == (changes + 1) // 2 + 1,
                      f"{head}; answer {'equals' if answer == bytes(image) else 'differs from'} the device's "
                      f"config; {evidence[:3]}")
    else:
        verdict.check("CFG-DRV-02", ok and answer is None and "config_generation" in outcome and groups == retries,
                      f"{head} (retry bound {retries}); {evidence[:3]}")


@pytest.mark.req("PCI-DRV-05", "CFG-DRV-03")
def test_vdpa_driver_writes_set_config_as_whole_fields(bench: Bench, verdict: Verdict) -> None:
    """SET_CONFIG of existing fields reaches the device as writes of each field at its natural width, exactly
    the bytes asked; a request covering part of a field, a field whose feature was not offered, or bytes past
    the end is refused with nothing written (the register layer refuses the last one too)."""
    device = bench.open()
    trace = TracingPciDevice(device)
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    outcomes: list[str] = []
    try:
        size = vdpa.get_config_size()
        offered = vdpa.transport.device_features()
        existing = [(o, w) for o, w, _f in NET_CONFIG_FIELDS
                    if o + w <= size and config_field_exists(vdpa.ids.device, o, offered)]
        absent = [(o, w) for o, w, _f in NET_CONFIG_FIELDS
                  if o + w <= size and not config_field_exists(vdpa.ids.device, o, offered)]
        current = vdpa.get_config(0, size)
        first_write = len(trace.accesses)
        wanted: list[tuple[int, bytes]] = []
        for off, width in existing:  # each field alone, then all of them in one request
            vdpa.set_config(off, current[off:off + width])
            wanted.append((off, current[off:off + width]))
        run = existing[:1]  # the leading run of adjacent existing fields, in one request, then without its first
        for o, w in existing[1:]:
            if o != run[-1][0] + run[-1][1]:
                break
            run.append((o, w))
        for part in (run, run[1:]):
            if part:
                lo, hi = part[0][0], part[-1][0] + part[-1][1]
                vdpa.set_config(lo, current[lo:hi])
                wanted += [(o, current[o:o + w]) for o, w in part]
        asked_well = len(trace.accesses)
        # requests the driver must refuse, with the rule each breaks: part of a field (either end), a field
        # that does not exist, bytes past the end
        bad_requests = [(o + 1, b"\0" * (w - 1), "PCI-DRV-05") for o, w in existing if w > 1]
        bad_requests += [(o, b"\0" * (w - 1), "PCI-DRV-05") for o, w in existing if w > 1]
        bad_requests += [(o, b"\0" * w, "CFG-DRV-03") for o, w in absent]
        bad_requests.append((size - 1, b"\0\0", "beyond"))
        for off, data, rule in bad_requests:
            try:
                vdpa.set_config(off, data)
                outcomes.append(f"{off:#x}+{len(data)} accepted")
            except VdpaError as exc:
                outcomes.append(f"{off:#x}+{len(data)} {'refused' if rule in str(exc) else 'refused without ' + rule}")
        try:
            vdpa.transport.write_device_config(size, b"\0")
            outcomes.append("register layer write past the end: accepted")
        except VirtioPciError:
            outcomes.append("register layer write past the end: refused")
        after = vdpa.get_config(0, size)
    finally:
        vdpa.close()
    # The same function shown with every feature that makes a config field exist: the last field then exists,
    # it is written whole up to the very end, and one byte more is refused before anything is written.
    shown = FaultInjector(device, add=bits(*{f for _o, _w, fs in NET_CONFIG_FIELDS for f in fs}))
    vdpa = VirtioPciVdpaDevice(shown, owns_pci=False)
    try:
        last, width = max((o, w) for o, w, _f in NET_CONFIG_FIELDS if o + w <= size)
        start = len(shown.accesses)
        vdpa.set_config(last, bytes(size - last))
        to_the_end = len(shown.accesses)
        try:
            vdpa.set_config(last, bytes(size - last + 1))
            outcomes.append(f"{last:#x}+{size - last + 1} with every field shown: accepted")
        except VdpaError as exc:
            outcomes.append(f"{last:#x}+{size - last + 1} with every field shown: "
                            f"{'refused' if 'beyond' in str(exc) else 'refused without beyond'}")
    finally:
        vdpa.close()
    assert shown.layout.device is not None
    end_writes = [(a.seq < to_the_end, a.offset - shown.layout.device.offset, a.size)
                  for a in shown.accesses[start:] if a.op == "w" and shown.layout.device.contains(a)]
    if end_writes != [(True, last, width)]:
        outcomes.append(f"writes for the last field: {end_writes} (expected one {width}-byte write at {last:#x})")
    layout = VirtioPciDriverMonitor(trace).layout
    assert layout.device is not None
    dev = layout.device
    writes = [a for a in trace.accesses[first_write:] if a.op == "w" and dev.contains(a)]
    good = [(a.offset - dev.offset, a.data) for a in writes if a.seq < asked_well]
    stray = [(hex(a.offset - dev.offset), a.data.hex()) for a in writes if a.seq >= asked_well]
    ok, evidence = _monitor_ok(trace, "PCI-DRV-05")
    head = (f"SET_CONFIG of {len(existing)} existing fields wrote {[(hex(o), d.hex()) for o, d in good][:8]} "
            f"(asked {[(hex(o), d.hex()) for o, d in wanted][:8]}; {len(good)} writes for {len(wanted)} fields); "
            f"bad requests: {outcomes}; written by them: "
            f"{stray}; config unchanged: {after == current}")
    refused_all = all(o.endswith("refused") for o in outcomes)
    verdict.check("PCI-DRV-05", ok and good == wanted and bool(existing) and refused_all and not stray,
                  f"{head}; {evidence[:3]}")
    if absent:
        verdict.check("CFG-DRV-03", refused_all and not stray, head)


# --- a shared MSI-X vector, then no longer shared (4.1.5.1.2) -----------------------------------------------


@pytest.mark.req("PCI-DRV-34")
def test_vdpa_driver_relays_a_shared_vector_only_while_shared(bench: Bench, verdict: Verdict,
                                                              mem: GuestMemory) -> None:
    """Two MSI-X vectors: config on 0, both queues share 1 and the driver fans its interrupt out to both call
    eventfds. When the frontend drops receiveq1's call eventfd, vector 1 belongs to transmitq1 alone and is
    bound to its call eventfd directly; after a reset nothing is relayed."""
    looped = bench.wire().looped
    real = bench.open()
    trace = TracingPciDevice(_msix_variant(real, 2))
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    try:
        front.bring_up(vdpa.get_device_features() & ~NOT_IMPLEMENTED, queues=(0, 1), size=64)
        shared = vdpa.calls_relayed()
        delivered = sum(f in FRAMES for f in front.exchange(FRAMES, timeout=bench.deadlines.wait(2.0))) if looped \
            else _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        vdpa.set_vq_call(0, None)
        alone = vdpa.calls_relayed()
        direct = _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        vdpa.set_vq_call(0, front.calls[0])  # the frontend hands the call eventfd back: shared again
        again = vdpa.calls_relayed()
        resumed = sum(f in FRAMES for f in front.exchange(FRAMES, timeout=bench.deadlines.wait(2.0))) if looped \
            else _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        vdpa.reset()
        after_reset = vdpa.calls_relayed()
    finally:
        vdpa.close()
        front.close()
    vectors = sorted({e.value for e in _events(trace) if e.kind == "common_w"
                      and e.field in (CommonCfg.QUEUE_MSIX_VECTOR, CommonCfg.CONFIG_MSIX_VECTOR)})
    ok, evidence = _monitor_ok(trace, "PCI-DRV-34")
    verdict.check("PCI-DRV-34", ok and all(v < 2 or v == 0xFFFF for v in vectors) and shared and not alone
                  and again and not after_reset and delivered == direct == resumed == len(FRAMES),
                  f"2-vector table: vectors programmed {vectors}; relayed while shared {shared}, after receiveq1's "
                  f"call was dropped {alone}, once handed back {again}, after reset {after_reset}; "
                  f"{delivered}/{len(FRAMES)} frames with the shared vector, {direct}/{len(FRAMES)} transmit "
                  f"completions signalled directly, {resumed}/{len(FRAMES)} once shared again; {evidence[:3]}")
    real.close()  # a real function has one owner at a time (the bench closes it too, at teardown)


# --- ring state a frontend restores (vhost-user SET_VRING_BASE / GET_VRING_BASE) ----------------------------


@pytest.mark.req("SPLIT-DRV-11", "INIT-DRV-07", "STATUS-DRV-02")
def test_vdpa_driver_ring_state_on_plain_virtio_pci(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    """Without a vendor ring-state register the driver takes only the state after reset (avail idx 0) and
    refuses another one (the device would start at 0 and find avail idx 1000 entries ahead of it); a running
    queue's state cannot be read back. The queues then run from 0. A frontend changing its features after
    FEATURES_OK is refused, with nothing written to driver_feature, and so is one clearing status bits."""
    trace = TracingPciDevice(bench.open())
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    outcomes: dict[str, str] = {}
    try:
        if vdpa.quirk.vq_state is not None:
            verdict.not_applicable("SPLIT-DRV-11", f"the function has a ring-state register ({vdpa.quirk.name})")
            return
        front.map_memory()
        negotiated = front.negotiate(vdpa.get_device_features() & ~NOT_IMPLEMENTED)
        try:
            vdpa.set_driver_features(negotiated & ~bits(F.EVENT_IDX, F.INDIRECT_DESC))
            late = "accepted"
        except VdpaError as exc:
            late = f"refused: {exc}"
        try:
            vdpa.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)  # FEATURES_OK dropped
            cleared = "accepted"
        except VdpaError as exc:
            cleared = f"refused: {exc}"
        for what, state in (("state 0", 0), ("state 1000", 1000)):
            try:
                vdpa.set_vq_state(1, VqState(avail_idx=state))
                outcomes[what] = f"accepted, reads {vdpa.get_vq_state(1).avail_idx}"
            except NotSupported:
                outcomes[what] = "refused"
        for q in (0, 1):
            front.add_queue(q, 64)
        front.vdpa.set_status(vdpa.get_status() | DeviceStatus.DRIVER_OK)
        try:
            outcomes["running"] = f"read {vdpa.get_vq_state(1).avail_idx}"
        except NotSupported:
            outcomes["running"] = "refused"
        sent = _transmit(front, FRAMES, bench.deadlines.wait(2.0))
    finally:
        vdpa.close()
        front.close()
    superset, status_evidence = _monitor_ok(trace, "STATUS-DRV-02")
    verdict.check("STATUS-DRV-02", superset and "STATUS-DRV-02" in cleared,
                  f"status FEATURES_OK cleared by the frontend: {cleared}; {status_evidence[:3]}")
    unchanged, evidence = _monitor_ok(trace, "INIT-DRV-07")
    verdict.check("INIT-DRV-07", unchanged and "INIT-DRV-07" in late,
                  f"features changed after FEATURES_OK: {late}; {evidence[:3]}")
    verdict.check("SPLIT-DRV-11", outcomes == {"state 0": "accepted, reads 0", "state 1000": "refused",
                                                     "running": "refused"} and sent == len(FRAMES),
                  f"ring state requests on a function without a ring-state register: {outcomes}; "
                  f"{sent}/{len(FRAMES)} frames transmitted from avail idx 0")
