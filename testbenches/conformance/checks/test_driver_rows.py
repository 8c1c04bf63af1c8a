"""Generic driver rows judged on the guest driver (``testbenches.driver.virtio_net.GuestNetDriver``) by the monitors
of :mod:`testbenches.monitor.driver_rows` and :mod:`testbenches.monitor.split_ring_rules`.

- Feature choice (FEAT-DRV-13/14/20, with FEAT-DRV-18, PCI-DRV-24): the offer shown through :class:`ShownOffer`
  (bits the target lacks added as the driver reads them, never passed on to the device) over an extended config
  space holding an SR-IOV capability; the negotiation is read from the register trace.
- Addresses (FEAT-DRV-12): VIRTIO_F_ACCESS_PLATFORM withheld, every ring area and buffer segment the driver gives
  the device must lie in guest memory.
- Stores into the split rings (SPLIT-DRV-03/26, RESET-DRV-05/06): guest memory that sees each store of the driver
  (:class:`StoreWatch`) while it brings the device up, moves frames, resets with receive buffers exposed and
  comes up again; the same on the vDPA path (the backend's driver under the bench's frontend).
- Lost kicks (SPLIT-DRV-27): the doorbells held back and the used ring's suppression fields planted by the bench, as
  in ``test_split_driver_rules``; each publication the fields asked to hear about must be followed by a doorbell.
- Vendor data capability (PCI-DRV-27/28): one with a foreign vendor_id presented through the config proxy.
- IN_ORDER chains (SPLIT-DRV-05/10) and DEVICE_NEEDS_RESET with transmit buffers in flight (STATUS-DRV-04).

The virtio-net rows of the same kind (NET-DRV-11/12/57/58/61/63/64) are in ``test_net_driver_rows``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from backend.drivers.transport import VirtioPciModern
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.pci.device import PciDevice, RegionIndex
from backend.virtio.features import DeviceStatus, F, NetF, bits, has
from backend.virtio.pci_regs import PCI_CAP_ID_VNDR, CapType, CommonCfg, NetCfg
from backend.virtio.split_ring import U16
from sim.memory import GuestMemory
from testbenches.conformance.checks.pcie_ext import SriovConfigSpace
from testbenches.conformance.checks.test_net_driver_rules import HEADER_WIDENING, ShownOffer
from testbenches.conformance.checks.test_split_driver_rules import STEPS, HeldDoorbells
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout as RingLayout
from testbenches.driver.layout import layout_features
from testbenches.driver.vdpa_frontend import VdpaFrontend, exchange_frames
from testbenches.driver.virtio_net import DEFAULT_FEATURES, DriverInitError, GuestNetDriver
from testbenches.frames import test_frame
from testbenches.monitor import PackedRingMonitor, SplitRingMonitor, TracingPciDevice, VirtioPciDriverMonitor
from testbenches.monitor.config_proxy import CapEntry, ConfigSpaceEditor, target_caps
from testbenches.monitor.driver_rows import (
    SplitRingPlace,
    StoreWatch,
    avail_idx_order_findings,
    feature_ack_findings,
    physical_address_findings,
    vendor_data_findings,
)
from testbenches.monitor.split_ring_rules import lost_kick_finding
from testbenches.monitor.virtio_pci_rules import Event, Finding, Layout, verdicts_of

MEM = 4 << 20
QSIZE = 64


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


def _judge(verdict: Verdict, findings: list[Finding], ids: tuple[str, ...], name: str, seen: str) -> list[str]:
    """Record every id among ``ids`` with findings; returns those left without any."""
    verdicts = verdicts_of(findings)
    left = []
    for rid in ids:
        if rid not in verdicts:
            left.append(rid)
            continue
        ok, evidence = verdicts[rid]
        count = sum(f.req_id == rid for f in findings)
        verdict.check(rid, ok, f"{name}: {count} judged ({seen}); " + "; ".join(evidence[:5]))
    return left


def _events(trace: TracingPciDevice) -> list[Event]:
    return VirtioPciDriverMonitor(trace).events()


# --- feature choice ----------------------------------------------------------------------------------

#: Shown where the target lacks them: the SHOULD-acknowledge bits, SR_IOV (an SR-IOV capability is presented) and
#: ADMIN_VQ (administration queues).
SHOWN = bits(F.ORDER_PLATFORM, F.NOTIF_CONFIG_DATA, F.SR_IOV, F.ADMIN_VQ)
ACK_IDS = ("FEAT-DRV-13", "FEAT-DRV-14", "FEAT-DRV-20")


@pytest.mark.req(*ACK_IDS, "FEAT-DRV-18", "PCI-DRV-24")
def test_guest_driver_feature_choice(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                     ring_layout: RingLayout) -> None:
    """The guest driver negotiates with ORDER_PLATFORM, NOTIF_CONFIG_DATA, SR_IOV and ADMIN_VQ shown in the offer
    (an SR-IOV capability in the extended config space): it acknowledges the SHOULD bits, enables no virtual
    function before FEATURES_OK, and sets up administration queues only in the range the device gives."""
    name = f"guest driver ({ring_layout} rings)"
    space = SriovConfigSpace(bench.open(), sriov=True)
    trace = ShownOffer(space, add=SHOWN & ~VirtioPciModern(space).device_features())
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES, ring_layout))
    try:
        drv.init()
    finally:
        drv.close()
    offered, negotiated = drv.offered, drv.features
    _, _, negotiations = VirtioPciDriverMonitor(trace).feature_timeline(_events(trace))
    rows = ACK_IDS if ring_layout == "packed" else ACK_IDS[1:]
    if ring_layout == "split":
        verdict.not_applicable("FEAT-DRV-13", f"{name}: the bench asks this run for split rings (the packed run "
                                              "judges the choice of RING_PACKED)")
    for rid in _judge(verdict, feature_ack_findings(negotiations, rows), rows, name,
                      f"{len(negotiations)} negotiation(s), offer as read {offered:#x}"):
        verdict.not_offered(rid, f"{name}: the bit is not in the offer as read ({offered:#x})")
    if space.vf_enable_written():
        ok = has(negotiated, F.SR_IOV) and _vf_enable_after_features_ok(trace)
        verdict.check("FEAT-DRV-18", ok, f"{name}: VF Enable written; negotiated {negotiated:#x}")
    else:
        verdict.not_applicable("FEAT-DRV-18", f"{name}: enabled no virtual function (no VF Enable write into the "
                                              f"SR-IOV capability shown; SR_IOV acknowledged: "
                                              f"{has(negotiated, F.SR_IOV)})")
    if has(negotiated, F.ADMIN_VQ):
        verdict.check("PCI-DRV-24", False, f"{name}: acknowledged ADMIN_VQ ({negotiated:#x}) but the bench cannot "
                                           "judge its administration queues")
    else:
        verdict.not_applicable("PCI-DRV-24", f"{name}: ADMIN_VQ shown ({offered:#x}) and not acknowledged "
                                             f"({negotiated:#x}): no administration queue set up")


def _vf_enable_after_features_ok(trace: TracingPciDevice) -> bool:
    """Whether the first config write beyond the conventional space comes after FEATURES_OK was read back."""
    ok_seen = next((e.seq for e in _events(trace) if e.kind == "status_r" and e.value & DeviceStatus.FEATURES_OK),
                   None)
    first = next((a.seq for a in trace.accesses if a.op == "w" and a.region == RegionIndex.CONFIG
                  and a.offset >= 0x100), None)
    return ok_seen is not None and first is not None and ok_seen < first


@dataclass
class _AddressedSplit(SplitRingMonitor):
    """The split ring monitor keeping every buffer segment it walked, as (what, gpa, length)."""

    given: list[tuple[str, int, int]] = field(default_factory=list)

    def _buffer(self, index: int, segments: list[tuple[int, int, bool]], where: str) -> None:
        self.given += [(f"{where} segment", a, n) for a, n, _ in segments]
        super()._buffer(index, segments, where)


@dataclass
class _AddressedPacked(PackedRingMonitor):
    """The packed ring monitor keeping every buffer segment it walked, as (what, gpa, length)."""

    given: list[tuple[str, int, int]] = field(default_factory=list)

    def _buffer(self, index: int, segments: list[tuple[int, int, bool]], where: str) -> None:
        self.given += [(f"{where} segment", a, n) for a, n, _ in segments]
        super()._buffer(index, segments, where)


def _ring_parts(events: list[Event]) -> dict[tuple[int, CommonCfg], int]:
    """The addresses the driver wrote into queue_desc/driver/device by (queue, field), 64-bit values from their two
    halves (the last programming of each queue)."""
    parts: dict[tuple[int, CommonCfg], int] = {}
    for e in events:
        if e.kind == "common_w" and e.field in (CommonCfg.QUEUE_DESC, CommonCfg.QUEUE_DRIVER, CommonCfg.QUEUE_DEVICE):
            shift = 32 * ((e.offset - int(e.field)) // 4)
            old = parts.get((e.queue, e.field), 0)
            parts[(e.queue, e.field)] = old & ~(0xFFFFFFFF << shift) | e.value << shift
    return parts


def _ring_areas(events: list[Event]) -> list[tuple[str, int, int]]:
    return [(f"queue {q} {f.name.lower()}", addr, 1) for (q, f), addr in _ring_parts(events).items()]


@pytest.mark.req("FEAT-DRV-12")
def test_guest_driver_gives_physical_addresses(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                               ring_layout: RingLayout) -> None:
    """VIRTIO_F_ACCESS_PLATFORM withheld from the offer: every ring area and buffer segment the guest driver gives
    the device while it brings it up and moves frames lies in guest physical memory."""
    name = f"guest driver without VIRTIO_F_ACCESS_PLATFORM ({ring_layout} rings)"
    dev = bench.open()
    trace = ShownOffer(dev, hide=bits(F.ACCESS_PLATFORM))
    rings = _AddressedSplit.attach(trace, mem.read) if ring_layout == "split" else \
        _AddressedPacked.attach(trace, mem.read)
    assert isinstance(rings, (_AddressedSplit, _AddressedPacked))
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES, ring_layout))
    try:
        try:
            drv.init()
        except DriverInitError as exc:
            # A device working only through an IOMMU may refuse a driver that does not accept ACCESS_PLATFORM
            # (6.1: it MAY fail FEATURES_OK): then no address is ever given without it.
            verdict.not_applicable("FEAT-DRV-12", f"{name}: {exc}; the target offers ACCESS_PLATFORM and works only "
                                                  "with it")
            return
        if has(drv.features, F.RING_PACKED) != (ring_layout == "packed"):
            verdict.not_offered("FEAT-DRV-12", f"{name}: the target offers {drv.offered:#x}")
            return
        frames = [test_frame(seq, length, src=drv.mac()) for seq, length in enumerate((60, 342, 1000))]
        drv.send(frames, timeout=bench.deadlines.wait(5.0))
        drv.wait_tx_done(timeout=bench.deadlines.wait(5.0))
        rings.inspect()
        negotiated = drv.features
    finally:
        drv.close()
    areas = _ring_areas(_events(trace)) + rings.given
    ram = [(r.gpa, r.size) for r in mem.regions]
    _judge(verdict, physical_address_findings(areas, ram, negotiated), ("FEAT-DRV-12",), name,
           f"{len(areas)} addresses ({len(rings.given)} buffer segments), {len(frames)} frames sent; negotiated "
           f"{negotiated:#x}")


# --- stores into the split rings ---------------------------------------------------------------------

STORE_IDS = ("SPLIT-DRV-03", "SPLIT-DRV-26", "RESET-DRV-05", "RESET-DRV-06")


@pytest.fixture
def watched() -> Iterator[StoreWatch]:
    m = StoreWatch()
    try:
        m.add_region(GUEST_MEMORY_BASE, 4 << 20, "guest-ram")
        yield m
    finally:
        m.close()


def _place(drv: GuestNetDriver, q: int) -> SplitRingPlace:
    ring = drv.queues[q]
    return SplitRingPlace(q, ring.size, ring.desc_addr, ring.avail_addr, ring.used_addr)


def _judge_stores(verdict: Verdict, findings: list[Finding], watched: StoreWatch, name: str, did: str) -> None:
    """The store rows: the failures found, a pass for RESET-DRV-05/06 where the run gave them an opportunity."""
    if watched.checked:
        findings.append(Finding("RESET-DRV-05", True, ""))
    if watched.reclaimed_at_reset:
        findings.append(Finding("RESET-DRV-06", True, ""))
    seen = (f"{did}; {watched.checked} stores made with buffers exposed, {watched.reclaimed_at_reset} buffers "
            f"exposed at the reset, their entries stored {watched.reused_after_reset} times once it had completed")
    for rid in _judge(verdict, findings, STORE_IDS, name, seen):
        verdict.not_applicable(rid, f"{name}: no opportunity ({seen})")


@pytest.mark.ring_layout("split")
@pytest.mark.req(*STORE_IDS)
def test_guest_driver_ring_stores(bench: Bench, verdict: Verdict, watched: StoreWatch) -> None:
    """The guest driver on split rings, each store into its guest memory judged: it publishes entries after storing
    them, leaves the entries of exposed buffers alone while the queue is live, resets the device (receive buffers
    still exposed) before reusing their entries, and describes each buffer with few descriptors."""
    name = "guest driver (split rings)"
    looped = bench.wire().looped
    dl = bench.deadlines
    trace = TracingPciDevice(bench.open())
    common = Layout.discover(trace).common
    watched.status_register(common.bar, common.offset + CommonCfg.DEVICE_STATUS)
    trace.listeners.append(watched.on_access)
    mon = SplitRingMonitor.attach(trace, watched.read)
    drv = GuestNetDriver(trace, watched, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES, "split"),
                         rx_buffers=16)
    order: list[Finding] = []
    try:
        start = len(watched.stores)
        drv.init()
        places = [_place(drv, q) for q in (drv.RX, drv.TX)]
        for place in places:
            watched.watch(place)
        frames = [test_frame(seq, length, src=drv.mac()) for seq, length in enumerate((60, 342, 1000, 1514))]
        got = drv.exchange(frames, timeout=dl.wait(2.0) if looped else dl.silence(0.1))
        drv.wait_tx_done(timeout=dl.wait(5.0))
        mon.inspect()
        first_life = watched.stores[start:]
        drv.reset()
        drv.init()
        drv.send(frames[:2], timeout=dl.wait(5.0))
        drv.wait_tx_done(timeout=dl.wait(5.0))
    finally:
        drv.close()
    for place in places:
        order += avail_idx_order_findings(first_life, place)
    findings = [f for f in mon.findings if f.req_id == "SPLIT-DRV-03"] + order + watched.findings
    _judge_stores(verdict, findings, watched, name, f"{len(frames)} frames sent, {len(got)} back")


@pytest.mark.ring_layout("split")
@pytest.mark.parametrize("event_idx", [pytest.param(False, id="no_event_idx"), pytest.param(True, id="event_idx")])
@pytest.mark.req("SPLIT-DRV-27")
def test_guest_driver_loses_no_kick(bench: Bench, verdict: Verdict, mem: GuestMemory, event_idx: bool) -> None:
    """Receive buffers published under used.flags and avail_event planted by the bench (doorbells held back from
    the device): every publication the field in force asked to hear about is followed by a doorbell."""
    name = f"guest driver (split rings, {'EVENT_IDX' if event_idx else 'no EVENT_IDX'})"
    trace = HeldDoorbells(bench.open())
    mon = SplitRingMonitor.attach(trace, mem.read)
    wanted = DEFAULT_FEATURES if event_idx else DEFAULT_FEATURES & ~bits(F.EVENT_IDX)
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(wanted, "split"), rx_buffers=4)
    findings: list[Finding] = []
    try:
        drv.init()
        if has(drv.features, F.EVENT_IDX) != event_idx:
            verdict.not_offered("SPLIT-DRV-27", f"{name}: VIRTIO_F_EVENT_IDX not offered ({drv.offered:#x})")
            return
        ring = drv.queues[drv.RX]
        mon.publications()
        for flags, ahead, count in STEPS[event_idx]:
            event = (ring.published + ahead) & 0xFFFF
            mem.write(ring.used_addr, U16.pack(flags))
            mem.write(ring.used_addr + ring.layout.avail_event, U16.pack(event))
            drv.post_rx(count)
            for p in mon.publications():
                if p.queue == drv.RX and (p.used_flags, p.avail_event) == (flags, event):
                    f = lost_kick_finding(p, event_idx)
                    if f is not None:
                        findings.append(f)
    finally:
        drv.close()
    for rid in _judge(verdict, findings, ("SPLIT-DRV-27",), name, f"{len(STEPS[event_idx])} steps"):
        verdict.not_applicable(rid, f"{name}: no publication the device asked to hear about")


# --- vendor data capability ---------------------------------------------------------------------------

FOREIGN_VENDOR = 0x8086
#: A vendor data capability (virtio_pci_vndr_data): header, vendor_id, then the vendor's bytes.
VENDOR_CAP = bytes([PCI_CAP_ID_VNDR, 0, 16, CapType.VENDOR_CFG]) + FOREIGN_VENDOR.to_bytes(2, "little") + \
    bytes(range(0xA0, 0xAA))


def _bring_up_writes(real: PciDevice, extra: list[CapEntry]) -> tuple[ConfigSpaceEditor, TracingPciDevice,
                                                                       list[tuple[str, int, int, bytes]]]:
    edited = ConfigSpaceEditor(real, [c.entry() for c in target_caps(real)] + extra)
    trace = TracingPciDevice(edited)
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        drv = GuestNetDriver(trace, m, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES, "split"))
        try:
            drv.init()
        finally:
            drv.close()
    writes = [(a.op, a.region, a.offset, a.data) for a in trace.accesses if a.op == "w"]
    return edited, trace, writes


@pytest.mark.req("PCI-DRV-27", "PCI-DRV-28")
def test_guest_driver_leaves_foreign_vendor_data_alone(bench: Bench, verdict: Verdict) -> None:
    """A vendor data capability with a foreign vendor_id (:data:`FOREIGN_VENDOR`) added to the capability list: the
    guest driver writes nothing into it and brings the device up with the same register writes as without it."""
    name = "guest driver"
    # One device at a time: a function behind Linux VFIO can be opened once.
    with contextlib.closing(bench.open()) as plain:
        _, _, without = _bring_up_writes(plain, [])
    with contextlib.closing(bench.open()) as shown:
        edited, trace, with_cap = _bring_up_writes(shown, [CapEntry.synthetic(VENDOR_CAP)])
    at = edited.placed[-1]
    config_writes = [(a.offset, a.data) for a in trace.accesses if a.op == "w" and a.region == RegionIndex.CONFIG]
    findings = vendor_data_findings(range(at, at + len(VENDOR_CAP)), config_writes, with_cap, without)
    _judge(verdict, findings, ("PCI-DRV-27", "PCI-DRV-28"), name,
           f"vendor data capability (vendor_id {FOREIGN_VENDOR:#x}) at {at:#x}; {len(with_cap)} register writes")


# --- IN_ORDER chains ----------------------------------------------------------------------------------------


class InOrderGuestDriver(GuestNetDriver):
    """The guest driver with its split rings told when VIRTIO_F_IN_ORDER was negotiated (the ring layout helper
    hands the bit to packed rings only): a used element then completes the batch it ends."""

    def setup_queues(self) -> None:
        super().setup_queues()
        for ring in self.queues.values():
            ring.in_order = has(self.features, F.IN_ORDER)


IN_ORDER_ROW = {False: "SPLIT-DRV-05", True: "SPLIT-DRV-10"}


@pytest.mark.ring_layout("split")
@pytest.mark.parametrize("indirect", [pytest.param(False, id="chains", marks=pytest.mark.req("SPLIT-DRV-05")),
                                      pytest.param(True, id="indirect", marks=pytest.mark.req("SPLIT-DRV-10"))])
def test_guest_driver_in_order_chains(bench: Bench, verdict: Verdict, mem: GuestMemory, indirect: bool) -> None:
    """VIRTIO_F_IN_ORDER negotiated on split rings, frames sent until the transmit ring has wrapped twice: each
    chain (without INDIRECT_DESC) runs through consecutive table slots, wrapping to 0 after the last; each indirect
    table (with it) links entry i to i+1."""
    rid = IN_ORDER_ROW[indirect]
    name = f"guest driver with IN_ORDER (split rings, {'indirect tables' if indirect else 'descriptor chains'})"
    looped = bench.wire().looped
    trace = TracingPciDevice(bench.open())
    mon = SplitRingMonitor.attach(trace, mem.read)
    wanted = DEFAULT_FEATURES | bits(F.IN_ORDER) if indirect else DEFAULT_FEATURES & ~bits(F.INDIRECT_DESC) | \
        bits(F.IN_ORDER)
    drv = InOrderGuestDriver(trace, mem, queue_size=QSIZE, features=layout_features(wanted, "split"), rx_buffers=16)
    try:
        drv.init()
        if not has(drv.features, F.IN_ORDER) or has(drv.features, F.INDIRECT_DESC) != indirect:
            verdict.not_offered(rid, f"{name}: the target offers {drv.offered:#x}")
            return
        frames = [test_frame(seq, 60 + 8 * seq, src=drv.mac()) for seq in range(QSIZE + 8)]
        got = 0
        for start in range(0, len(frames), 8):
            got += len(drv.exchange(frames[start:start + 8],
                                    timeout=bench.deadlines.wait(2.0) if looped else bench.deadlines.silence(0.05)))
            drv.wait_tx_done(timeout=bench.deadlines.wait(5.0))
        mon.inspect()
        anomalies = drv.queues[drv.TX].anomalies + drv.queues[drv.RX].anomalies
    finally:
        drv.close()
    if anomalies:
        pytest.fail(f"{name}: the device's used ring puzzled the driver: {anomalies[:3]}")
    findings = [f for f in mon.findings if f.req_id == rid]
    for left in _judge(verdict, findings, (rid,), name, f"{len(frames)} frames sent, {got} back"):
        verdict.not_applicable(left, f"{name}: no chain of two or more descriptors was made available")


# --- DEVICE_NEEDS_RESET ----------------------------------------------------------------------------------


class NeedsResetShown(HeldDoorbells):
    """The target with its doorbells held back (transmit buffers stay in flight) and, once :attr:`armed`,
    DEVICE_NEEDS_RESET added to device_status as the driver reads it, until the driver writes 0 there."""

    def __init__(self, inner: PciDevice) -> None:
        super().__init__(inner)
        common = Layout.discover(self).common
        self.status_at = (common.bar, common.offset + CommonCfg.DEVICE_STATUS)
        self.armed = False

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if not self.armed or (index, offset, size) != (*self.status_at, 1):
            return super().region_read(index, offset, size)
        data = bytes([self.inner.region_read(index, offset, 1)[0] | DeviceStatus.DEVICE_NEEDS_RESET])
        self._record("r", index, offset, data)
        return data

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if (index, offset) == self.status_at and not any(data):
            self.armed = False
        super().region_write(index, offset, data)


#: How long the driver is given to wait for its transmit buffers after the device asked for a reset (nominal).
NEEDS_RESET_WAIT = 3.0


@pytest.mark.req("STATUS-DRV-04")
def test_guest_driver_resets_on_needs_reset(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    """Frames queued for transmit while the device takes none (doorbells held back), then DEVICE_NEEDS_RESET shown
    in device_status and a configuration change interrupt signalled as the device would: the driver waiting for its
    transmit buffers resets the device and brings it up again instead of waiting on the used ring."""
    name = "guest driver (split rings)"
    trace = NeedsResetShown(bench.open())
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES, "split"))
    try:
        drv.init()
        if drv.irq_fds["config"] == drv.irq_fds["tx"]:
            verdict.not_applicable("STATUS-DRV-04", f"{name}: the configuration change and transmit interrupts share "
                                                    "one vector here")
            return
        drv.send([test_frame(seq, 60, src=drv.mac()) for seq in range(4)], timeout=bench.deadlines.wait(5.0))
        outstanding = drv.ring(drv.TX).in_flight
        mark = len(trace.accesses)
        trace.armed = True
        os.eventfd_write(drv.irq_fds["config"], 1)
        start = time.monotonic()
        done = drv.wait_tx_done(timeout=bench.deadlines.wait(NEEDS_RESET_WAIT))
        took = time.monotonic() - start
        after = [e for e in _events(trace) if e.seq >= mark and e.kind == "status_w"]
        reset = next((i for i, e in enumerate(after) if e.value == 0), None)
        up_again = reset is not None and any(e.value & DeviceStatus.DRIVER_OK for e in after[reset:])
    finally:
        drv.close()
    verdict.check("STATUS-DRV-04", outstanding > 0 and reset is not None and up_again and not done
                  and took < bench.deadlines.wait(NEEDS_RESET_WAIT),
                  f"{name}: {outstanding} transmit buffers in flight when DEVICE_NEEDS_RESET was shown; the wait "
                  f"returned {done} after {took:.2f}s of {bench.deadlines.explain(NEEDS_RESET_WAIT)}; device_status "
                  "writes since: "
                  f"{[hex(e.value) for e in after]}")


@pytest.mark.ring_layout("split")
@pytest.mark.req(*STORE_IDS)
def test_vdpa_frontend_ring_stores(bench: Bench, verdict: Verdict, watched: StoreWatch) -> None:
    """The vDPA path (the backend's driver under the bench's frontend, which makes the buffers): each store into the
    split rings judged as for the guest driver, the frames exchanged, then the device reset with receive buffers
    still exposed."""
    name = "vDPA driver under the bench's frontend (split rings)"
    looped = bench.wire().looped
    trace = TracingPciDevice(bench.open())
    common = Layout.discover(trace).common
    watched.status_register(common.bar, common.offset + CommonCfg.DEVICE_STATUS)
    trace.listeners.append(watched.on_access)
    mon = SplitRingMonitor.attach(trace, watched.read)
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    front = VdpaFrontend(vdpa, watched)
    try:
        start = len(watched.stores)
        offered = vdpa.get_device_features()
        front.bring_up(offered & ~bits(F.RING_PACKED, F.IN_ORDER, *HEADER_WIDENING, NetF.MRG_RXBUF),
                       queues=(0, 1), size=QSIZE)
        places = [SplitRingPlace(q, r.size, r.desc_addr, r.avail_addr, r.used_addr) for q, r in front.rings.items()]
        for place in places:
            watched.watch(place)
        mac = vdpa.get_config(NetCfg.MAC, 6) if has(front.features, NetF.MAC) else bytes.fromhex("020000000001")
        frames = [test_frame(seq, length, src=mac) for seq, length in enumerate((60, 342, 1000, 1514))]

        def kick(q: int) -> None:
            front.kick(q)
            mon.inspect()

        got = exchange_frames(front.rings[0], front.rings[1], front.calls[0], front.calls[1], lambda: kick(0),
                              lambda: kick(1), frames, 2.0 if looped else 0.1, 2048)
        front.rings[0].add([], [2048])  # one more receive buffer left exposed at the reset
        kick(0)
        life = watched.stores[start:]
        vdpa.reset()
    finally:
        vdpa.close()
        front.close()
    order = [f for place in places for f in avail_idx_order_findings(life, place)]
    findings = [f for f in mon.findings if f.req_id == "SPLIT-DRV-03"] + order + watched.findings
    _judge_stores(verdict, findings, watched, name, f"{len(frames)} frames sent, {len(got)} back")
