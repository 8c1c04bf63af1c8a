"""Driver-side rows (INIT/STATUS/FEAT/NOTIF/PCI/CFG-DRV) judged by the passive monitor.

The drivers under test are the bench's own: the guest driver
(``testbenches.driver.virtio_net.GuestNetDriver``) and the backend's generic
vendor driver (``backend.drivers.vdpa.VirtioPciVdpaDevice``), each run
against the target through a :class:`TracingPciDevice`. Directed rows use a
fault-injecting proxy that makes the device refuse or withhold features. The guest driver's bring-up, traffic
and reset run on both ring layouts (``ring_layout``): the register rows are judged on each, the split ring rows
on split rings (not applicable on packed ones).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest

from backend.device import VdpaError
from backend.drivers.transport import VirtioPciModern
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import wait_eventfd
from backend.pci.device import PciDevice, RegionIndex
from backend.virtio.features import DEFINED_NET_PCI, NET_DEPENDENCIES, DeviceStatus, F, NetF, bits, describe, has
from backend.virtio.net_hdr import NetHdr
from backend.virtio.pci_regs import CommonCfg
from sim.memory import GuestMemory
from testbenches.conformance.checks.pcie_ext import PCI_EXT_CAP_ID_SRIOV, SriovConfigSpace, extended_capabilities
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.conformance.write_order import RecordingMemory, flag_order_breaches
from testbenches.driver.layout import Layout as RingLayout
from testbenches.driver.layout import layout_features
from testbenches.driver.vdpa_frontend import VdpaFrontend
from testbenches.driver.virtio_net import DEFAULT_FEATURES, DriverInitError, GuestNetDriver
from testbenches.monitor import PackedRingMonitor, SplitRingMonitor, TracingPciDevice, VirtioPciDriverMonitor
from testbenches.monitor.virtio_pci_rules import Layout

MEM = 8 << 20
FRAME = bytes.fromhex("020000000001020000000002") + b"\x08\x00" + bytes(range(50))

#: Rules the register monitor judges on both drivers' bring-up, traffic and reset.
MONITORED = ("INIT-DRV-01", "INIT-DRV-02", "INIT-DRV-03", "INIT-DRV-05", "INIT-DRV-06", "INIT-DRV-07",
             "INIT-DRV-09", "INIT-DRV-10", "STATUS-DRV-01", "STATUS-DRV-02", "RESET-DRV-01",
             "PCI-DRV-05", "PCI-DRV-15", "PCI-DRV-17", "PCI-DRV-18", "PCI-DRV-19", "PCI-DRV-20",
             "PCI-DRV-34", "PCI-DRV-35", "FEAT-DRV-01", "FEAT-DRV-02", "FEAT-DRV-04", "FEAT-DRV-08",
             "FEAT-DRV-10", "CFG-DRV-02", "CFG-DRV-03")
#: Doorbell rules: only the guest driver's doorbells cross the register trace (the vDPA driver's kicks
#: travel by ioeventfd, which is the point of it).
DOORBELL = ("INIT-DRV-13", "NOTIF-DRV-01", "NOTIF-DRV-03")
#: Ring rules the ring monitor judges on every published chain; SPLIT-DRV-05/10 (IN_ORDER chains) are not
#: claimed: neither driver negotiates IN_ORDER, so no chain of theirs is under that rule.
RING = ("SPLIT-DRV-01", "SPLIT-DRV-02", "SPLIT-DRV-04", "SPLIT-DRV-08", "SPLIT-DRV-11", "SPLIT-DRV-19")
#: Rules on indirect tables, judged where the driver negotiated INDIRECT_DESC and built one.
INDIRECT = ("SPLIT-DRV-06", "SPLIT-DRV-07", "SPLIT-DRV-09")
#: Packed rows read from the order of the driver's stores into its descriptor rings (write_order.py): lists
#: handed over by the head's flags stored alone after its body, and none longer than the device allows (it states
#: no limit below the queue size).
PACKED_ORDER = ("PACKED-DRV-06", "PACKED-DRV-16")
#: avail.flags without EVENT_IDX (0 or 1) and with it (0): one run each.
EVENT_IDX_RULE = {True: "SPLIT-DRV-14", False: "SPLIT-DRV-12"}


@pytest.fixture
def mem() -> Iterator[RecordingMemory]:
    """Guest memory that keeps the driver's stores in order (the packed run judges PACKED-DRV-16 on them)."""
    m = RecordingMemory()
    try:
        m.add_region(GUEST_MEMORY_BASE, MEM, "guest-ram")
        yield m
    finally:
        m.close()


def _judge(verdict: Verdict, monitor: VirtioPciDriverMonitor | SplitRingMonitor | PackedRingMonitor, driver: str,
           ids: tuple[str, ...]) -> None:
    verdicts = monitor.verdicts()
    for rid in ids:
        if rid not in verdicts:
            continue  # the run gave this rule no opportunity: claim nothing (the plugin says "not covered")
        ok, evidence = verdicts[rid]
        verdict.check(rid, ok, f"{driver}: " + "; ".join(evidence[:5]))


def _judge_cap_writes(verdict: Verdict, trace: TracingPciDevice, monitor: VirtioPciDriverMonitor,
                      driver: str) -> None:
    """PCI-DRV-14 over the whole run: the monitor reports every config write into a virtio capability; the
    run is an opportunity when the driver wrote config space at all (command register, PCI_CFG window)."""
    writes = [a for a in trace.accesses if a.op == "w" and a.region == RegionIndex.CONFIG]
    if not writes:
        return
    ok, evidence = monitor.verdicts().get("PCI-DRV-14", (True, []))
    verdict.check("PCI-DRV-14", ok, f"{driver}: {len(writes)} config-space writes; " + "; ".join(evidence[:5]))


def _indirect_or_not_offered(verdict: Verdict, offered: int, negotiated: int, driver: str) -> tuple[str, ...]:
    """The indirect-table ids to judge, or none after reporting them *not offered*."""
    if has(negotiated, F.INDIRECT_DESC):
        return INDIRECT
    if not has(offered, F.INDIRECT_DESC):
        for rid in INDIRECT:
            verdict.not_offered(rid, f"{driver}: VIRTIO_F_INDIRECT_DESC not offered, so no indirect table is built")
    return ()


class CountingGuestDriver(GuestNetDriver):
    """The guest driver, counting the queue interrupts its handler (:meth:`wait_irq`) took."""

    handled = 0

    def wait_irq(self, which: str, timeout: float) -> bool:
        got = super().wait_irq(which, timeout)
        if got and which != "config":
            self.handled += 1
        return got


def _ring_ids(verdict: Verdict, offered: int, event_idx: bool, driver: str) -> tuple[str, ...]:
    """The ring ids of a run with or without EVENT_IDX (SPLIT-DRV-14 reported not offered without it)."""
    rid = EVENT_IDX_RULE[event_idx]
    if event_idx and not has(offered, F.EVENT_IDX):
        verdict.not_offered(rid, f"{driver}: VIRTIO_F_EVENT_IDX not offered")
        return RING
    return (*RING, rid)


@pytest.mark.req(*MONITORED, *DOORBELL, *RING, *INDIRECT, "PCI-DRV-14", "PCI-DRV-26", *PACKED_ORDER)
@pytest.mark.parametrize("event_idx", [
    pytest.param(True, id="event_idx", marks=pytest.mark.req("SPLIT-DRV-14")),
    pytest.param(False, id="no_event_idx", marks=pytest.mark.req("SPLIT-DRV-12"))])
def test_guest_driver_bring_up_traffic_and_reset(bench: Bench, verdict: Verdict, mem: RecordingMemory,
                                                 event_idx: bool, ring_layout: RingLayout) -> None:
    """Bring-up, traffic (indirect too), reset and a second bring-up of the guest driver; on packed rings its
    stores into the descriptor rings are replayed for PACKED-DRV-16 (head flags stored alone, after the body)."""
    ring_rule = EVENT_IDX_RULE[event_idx]
    split_rows = (*RING, *INDIRECT, ring_rule)
    if ring_layout == "packed":
        offer = bench.transport().device_features()
        if not has(offer, F.RING_PACKED):
            for rid in (*MONITORED, *DOORBELL, *split_rows, "PCI-DRV-14", "PCI-DRV-26", *PACKED_ORDER):
                verdict.not_offered(rid, f"packed ring layout: VIRTIO_F_RING_PACKED not offered ({offer:#x})")
            return
        for rid in (*split_rows, "PCI-DRV-17"):  # PCI-DRV-17: the power-of-two queue size of split rings
            verdict.not_applicable(rid, "a split ring rule; this run drives packed rings")
    else:
        for rid in PACKED_ORDER:
            verdict.not_applicable(rid, "a packed ring rule; this run drives split rings")
    dl = bench.deadlines
    # Per bring-up: the descriptor rings and the stores made while they lived.
    lives: list[tuple[list[tuple[int, int]], int, int]] = []
    trace = TracingPciDevice(bench.open())
    rings = SplitRingMonitor.attach(trace, mem.read) if ring_layout == "split" else None
    wanted = DEFAULT_FEATURES if event_idx else DEFAULT_FEATURES & ~bits(F.EVENT_IDX)
    drv = CountingGuestDriver(trace, mem, queue_size=64, features=layout_features(wanted, ring_layout))
    try:
        start = len(mem.stores)
        drv.init()
        offered, negotiated, intx = drv.offered, drv.features, drv.intx
        assert has(negotiated, F.RING_PACKED) == (ring_layout == "packed"), f"negotiated {negotiated:#x}"
        drv.send([FRAME] * 8, timeout=dl.wait(5.0))
        drv.wait_tx_done(timeout=dl.wait(5.0))
        if has(drv.features, F.INDIRECT_DESC):  # an indirect chain too: header and frame in a table
            drv.ring(drv.TX).add([NetHdr().pack(), FRAME], [], indirect=True)
            drv.notify(drv.TX)
            drv.wait_tx_done(timeout=dl.wait(5.0))
        # The transmit completions raised a queue interrupt (nothing suppresses them): the driver handles it.
        drv.wait_irq("tx", dl.wait(1.0))
        handled = drv.handled
        lives.append(([(r.desc_addr, r.size) for r in drv.packed.values()], start, len(mem.stores)))
        drv.reset()  # a second bring-up exercises reset polling and re-initialisation
        start = len(mem.stores)
        drv.init()
        drv.send([FRAME] * 2, timeout=dl.wait(5.0))
        drv.wait_tx_done(timeout=dl.wait(5.0))
        lives.append(([(r.desc_addr, r.size) for r in drv.packed.values()], start, len(mem.stores)))
    finally:
        drv.close()
    name = f"guest driver ({'with' if event_idx else 'without'} EVENT_IDX, {ring_layout} rings)"
    monitor = VirtioPciDriverMonitor(trace)
    _judge(verdict, monitor, name, (*MONITORED, *DOORBELL))
    _judge_cap_writes(verdict, trace, monitor, name)
    if not intx and handled:
        ok, evidence = monitor.verdicts().get("PCI-DRV-26", (True, []))
        verdict.check("PCI-DRV-26", ok, f"{name}: {handled} queue interrupt(s) handled with MSI-X; "
                      + "; ".join(evidence[:5]))
    if rings is None:
        replays = [(addr, flag_order_breaches(mem.stores[a:b], addr, size)) for areas, a, b in lives
                   for addr, size in areas]
        heads = sum(r.heads for _, r in replays)
        bad = [f"ring at {addr:#x}: {b}" for addr, r in replays for b in r.breaches]
        if heads:
            verdict.check("PACKED-DRV-16", not bad, f"{name}: {heads} lists handed over on {len(replays)} rings; "
                          + "; ".join(bad[:4]))
            limits = sorted({size for areas, _, _ in lives for _, size in areas})
            longest = max(n for _, r in replays for n in r.lengths)
            overlong = [o for _, r in replays for o in r.overlong]
            verdict.check("PACKED-DRV-06", not overlong and longest <= min(limits),
                          f"{name}: longest list {longest} descriptors, queue size(s) {limits} (the device states no "
                          f"smaller limit); {'; '.join(overlong[:3]) or 'no list runs on past the ring'}")
        return
    ring_ids = _ring_ids(verdict, offered, event_idx, name)
    _judge(verdict, rings, name, (*ring_ids, *_indirect_or_not_offered(verdict, offered, negotiated, name)))


@pytest.mark.req(*MONITORED, *RING, *INDIRECT, "PCI-DRV-14")
@pytest.mark.parametrize("event_idx", [
    pytest.param(True, id="event_idx", marks=pytest.mark.req("SPLIT-DRV-14")),
    pytest.param(False, id="no_event_idx", marks=pytest.mark.req("SPLIT-DRV-12"))])
def test_vdpa_driver_bring_up_and_traffic(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                          event_idx: bool) -> None:
    trace = TracingPciDevice(bench.open())
    rings = SplitRingMonitor.attach(trace, mem.read)
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    try:
        offered = vdpa.get_device_features()
        # the bench's split ring driver side implements neither packed rings nor IN_ORDER batching
        wanted = offered & ~bits(F.RING_PACKED, F.IN_ORDER, *(() if event_idx else (F.EVENT_IDX,)))
        front.bring_up(wanted, queues=(0, 1), size=64)
        negotiated = front.features
        # GET_CONFIG as QEMU asks it: the whole config space in one request. The vDPA driver must read each
        # field at its natural width inside a generation bracket and touch no field whose feature was not
        # offered (CFG-DRV-03), answering zeros there.
        vdpa.get_config(0, vdpa.get_config_size())
        for q in (0, 1):  # kicks travel by ioeventfd, past the trace: let the ring monitor look now
            front.rings[q].publish()
        rings.inspect()
        front.exchange([FRAME] * 4, timeout=bench.deadlines.wait(5.0))
        rings.inspect()
        if has(negotiated, F.INDIRECT_DESC):  # a transmit chain in an indirect table too
            front.rings[1].add([NetHdr().pack(), FRAME], [], indirect=True)
            front.kick(1)
            rings.inspect()
            deadline = time.monotonic() + bench.deadlines.wait(5.0)
            while front.rings[1].in_flight and time.monotonic() < deadline:
                wait_eventfd(front.calls[1], deadline - time.monotonic())
                front.rings[1].used()
        vdpa.reset()
    finally:
        vdpa.close()
        front.close()
    name = f"backend vDPA driver ({'with' if event_idx else 'without'} EVENT_IDX)"
    monitor = VirtioPciDriverMonitor(trace)
    _judge(verdict, monitor, name, MONITORED)
    _judge_cap_writes(verdict, trace, monitor, name)
    ring_ids = _ring_ids(verdict, offered, event_idx, name)
    _judge(verdict, rings, f"frontend rings behind the {name}",
           (*ring_ids, *_indirect_or_not_offered(verdict, offered, negotiated, name)))


class FaultInjector(TracingPciDevice):
    """A proxy that edits what the driver reads: hide offered bits, add unknown ones, refuse FEATURES_OK."""

    def __init__(self, inner: PciDevice, *, hide: int = 0, add: int = 0, refuse_features_ok: bool = False) -> None:
        super().__init__(inner)
        self.layout = Layout.discover(self)
        self.hide, self.add, self.refuse = hide, add, refuse_features_ok
        self._select = 0

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        common = self.layout.common
        if index == common.bar and offset == common.offset + CommonCfg.DEVICE_FEATURE_SELECT:
            self._select = int.from_bytes(data, "little")
        if (self.refuse and index == common.bar and offset == common.offset + CommonCfg.DEVICE_STATUS):
            data = bytes([data[0] & ~DeviceStatus.FEATURES_OK & 0xFF])
        super().region_write(index, offset, data)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        data = super().region_read(index, offset, size)
        common = self.layout.common
        if index == common.bar and offset == common.offset + CommonCfg.DEVICE_FEATURE and size == 4:
            window = (int.from_bytes(data, "little") | self.add >> (32 * self._select)) \
                & ~(self.hide >> (32 * self._select))
            data = (window & 0xFFFFFFFF).to_bytes(4, "little")
        return data


def _status_writes(trace: TracingPciDevice) -> list[int]:
    mon = VirtioPciDriverMonitor(trace, Layout.discover(trace))
    return [e.value for e in mon.events() if e.kind == "status_w"]


@pytest.mark.req("INIT-DRV-08", "INIT-DRV-11", "INIT-DRV-12", "STATUS-DRV-03")
def test_guest_driver_gives_up_when_features_ok_does_not_stick(bench: Bench, verdict: Verdict,
                                                               mem: GuestMemory) -> None:
    proxy = FaultInjector(bench.open(), refuse_features_ok=True)
    drv = GuestNetDriver(proxy, mem, queue_size=64)
    raised = False
    try:
        drv.init()
    except DriverInitError:
        raised = True
    writes = _status_writes(proxy)
    verdict.check("INIT-DRV-08", raised, f"driver carried on after FEATURES_OK did not stick: writes {writes}")
    verdict.check("INIT-DRV-11", any(w & DeviceStatus.FAILED for w in writes), f"no FAILED written: {writes}")
    verdict.check("INIT-DRV-12", not any(w & DeviceStatus.DRIVER_OK for w in writes),
                  f"DRIVER_OK written after the failure: {writes}")
    # Recovery: the next attempt must start with a reset (STATUS-DRV-03), on a device that now accepts.
    proxy.refuse = False
    drv.init()
    drv.close()
    mon = VirtioPciDriverMonitor(proxy, proxy.layout)
    verdicts = mon.verdicts()
    ok, evidence = verdicts.get("STATUS-DRV-03", (True, []))
    after_failed = _status_writes(proxy)
    first_failed = next(i for i, w in enumerate(after_failed) if w & DeviceStatus.FAILED)
    verdict.check("STATUS-DRV-03", ok and after_failed[first_failed + 1] == 0,
                  f"status writes after FAILED: {after_failed[first_failed:first_failed + 3]}; {evidence}")


@pytest.mark.req("FEAT-DRV-06")
def test_guest_driver_fails_without_version_1(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    proxy = FaultInjector(bench.open(), hide=bits(F.VERSION_1))
    drv = GuestNetDriver(proxy, mem, queue_size=64)
    with pytest.raises(DriverInitError):
        drv.init()
    writes = _status_writes(proxy)
    verdict.check("FEAT-DRV-06", any(w & DeviceStatus.FAILED for w in writes)
                  and not any(w & DeviceStatus.DRIVER_OK for w in writes),
                  f"VERSION_1 withheld: status writes {writes}")


@pytest.mark.req("FEAT-DRV-05", "FEAT-DRV-07", "FEAT-DRV-04")
def test_guest_driver_falls_back_and_ignores_unknown_bits(bench: Bench, verdict: Verdict,
                                                          mem: GuestMemory) -> None:
    unknown = bits(44, 45, 49, 100, 127)  # reserved / undefined in this spec version
    proxy = FaultInjector(bench.open(), hide=bits(F.EVENT_IDX, F.INDIRECT_DESC, NetF.MAC), add=unknown)
    drv = GuestNetDriver(proxy, mem, queue_size=64)
    try:
        drv.init()
        sent = drv.send([FRAME] * 4, timeout=bench.deadlines.wait(5.0))
        done = drv.wait_tx_done(timeout=bench.deadlines.wait(5.0))
        acked = drv.features
        verdict.check("FEAT-DRV-05", sent == 4 and done and not has(acked, F.EVENT_IDX),
                      f"without EVENT_IDX/INDIRECT_DESC/MAC: sent {sent}, completed {done} (within "
                      f"{bench.deadlines.explain(5.0)}), acked {acked:#x}")
        verdict.check("FEAT-DRV-07", bool(drv.status() & DeviceStatus.DRIVER_OK),
                      f"unknown offered bits {unknown:#x} stopped initialisation")
        verdict.check("FEAT-DRV-04", acked & unknown == 0 and acked & ~DEFINED_NET_PCI == 0,
                      f"acknowledged reserved/undefined bits {acked & unknown:#x}")
    finally:
        drv.close()


@pytest.mark.req("FEAT-DRV-02")
@pytest.mark.parametrize("row", [
    pytest.param(i, id=f"{NetF(dep.feature).name}", marks=pytest.mark.req(dep.req_id.replace("-DEV-", "-DRV-")))
    for i, dep in enumerate(NET_DEPENDENCIES)])
def test_guest_driver_never_acks_a_feature_without_its_prerequisites(
        bench: Bench, verdict: Verdict, mem: GuestMemory, row: int) -> None:
    dep = NET_DEPENDENCIES[row]
    rid = dep.req_id.replace("-DEV-", "-DRV-")
    # Offer the dependent feature while withholding its prerequisites (every all_of and any_of bit).
    prereq = bits(*dep.all_of, *dep.any_of)
    proxy = FaultInjector(bench.open(), add=bits(dep.feature), hide=prereq)
    drv = GuestNetDriver(proxy, mem, queue_size=64, features=DEFINED_NET_PCI)
    try:
        drv.init()
    except DriverInitError:
        pass  # judged on what was acknowledged, below
    finally:
        drv.close()
    mon = VirtioPciDriverMonitor(proxy, proxy.layout)
    negotiations = mon.feature_timeline(mon.events())[2]
    assert negotiations, "the driver never reached FEATURES_OK"
    _offered, acked = negotiations[0]
    bad = has(acked, dep.feature)
    verdict.check(rid, not bad, f"{NetF(dep.feature).name} acknowledged while its prerequisites "
                  f"{[NetF(b).name for b in (*dep.all_of, *dep.any_of)]} were withheld (acked {acked:#x})")
    verdict.check("FEAT-DRV-02", not bad, f"acked {acked:#x} breaks {rid}")


NOTIF_VARIANTS = {
    "notification_data": (bits(F.NOTIFICATION_DATA), ("NOTIF-DRV-02", "NOTIF-DRV-04", "NOTIF-DRV-B01",
                                                      "PACKED-DRV-04")),
    "notif_config_data": (bits(F.NOTIF_CONFIG_DATA), ("NOTIF-DRV-01", "NOTIF-DRV-05")),
    "both": (bits(F.NOTIFICATION_DATA, F.NOTIF_CONFIG_DATA), ("NOTIF-DRV-02", "NOTIF-DRV-06", "NOTIF-DRV-B01",
                                                               "PACKED-DRV-04")),
}
#: The notification data of one layout only: next_off/next_wrap as a split avail idx, or as a packed ring's
#: next slot and Driver Ring Wrap Counter (judged by the ring monitor of that layout).
LAYOUT_ROWS = {"split": ("NOTIF-DRV-B01",), "packed": ("PACKED-DRV-04",)}


def _open_offering(bench: Bench, verdict: Verdict, wanted: int, ids: Sequence[str]) -> PciDevice | None:
    """The target, offering the ``wanted`` feature bits: as it is, or (a configurable target: the behavioral model
    implements every notification format) a variant offering them too; None, with ``ids`` not offered, when
    neither can."""
    dev = bench.open()
    offered = VirtioPciModern(dev).device_features()
    if offered & wanted == wanted:
        return dev
    if not bench.configurable:
        for rid in ids:
            verdict.not_offered(rid, f"the target does not offer {describe(wanted)}")
        return None
    return bench.open(bench.variant(replace=True, features=f"{offered | wanted:#x}"))


@pytest.mark.parametrize("variant", [pytest.param(v, id=v, marks=pytest.mark.req(*NOTIF_VARIANTS[v][1]))
                                     for v in sorted(NOTIF_VARIANTS)])
def test_guest_driver_notification_formats(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                           variant: str, ring_layout: RingLayout) -> None:
    """The guest driver's doorbells in each notification format, on both ring layouts: the register rows on
    each, the notification data's position on split rings (NOTIF-DRV-B01) and on packed ones (PACKED-DRV-04)."""
    wanted, ids = NOTIF_VARIANTS[variant]
    other = "packed" if ring_layout == "split" else "split"
    for rid in LAYOUT_ROWS[other]:
        if rid in ids:
            verdict.not_applicable(rid, f"a {other} ring rule; this run drives {ring_layout} rings")
    ids = tuple(rid for rid in ids if rid not in LAYOUT_ROWS[other])
    dev = _open_offering(bench, verdict, layout_features(wanted, ring_layout), ids)
    if dev is None:
        return
    trace = TracingPciDevice(dev)
    rings = SplitRingMonitor.attach(trace, mem.read) if ring_layout == "split" else \
        PackedRingMonitor.attach(trace, mem.read)
    # Exactly this variant's notification formats: a target offering both would otherwise put every
    # variant in the "both" format and leave the single-format rows unexercised.
    notif = bits(F.NOTIFICATION_DATA, F.NOTIF_CONFIG_DATA)
    drv = GuestNetDriver(trace, mem, queue_size=64,
                         features=layout_features((DEFAULT_FEATURES & ~notif) | wanted, ring_layout))
    try:
        drv.init()
        verdict_features = drv.features & notif
        assert verdict_features == wanted, f"driver did not negotiate {describe(wanted)} ({drv.features:#x})"
        for _ in range(3):
            drv.send([FRAME] * 5, timeout=bench.deadlines.wait(5.0))
            drv.wait_tx_done(timeout=bench.deadlines.wait(5.0))
    finally:
        drv.close()
    _judge(verdict, VirtioPciDriverMonitor(trace), f"guest driver ({variant})", ids)
    _judge(verdict, rings, f"guest driver ({variant})", ids)


@pytest.mark.req("FEAT-DRV-17")
@pytest.mark.parametrize("driver", ["guest", "vdpa"])
def test_drivers_do_not_negotiate_sr_iov_without_the_capability(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                                                 driver: str) -> None:
    """VIRTIO_F_SR_IOV offered by a function whose extended config space (presented by the config-editing
    proxy) holds no SR-IOV capability: the guest driver, and the vDPA driver under a frontend that asks for
    every bit it is shown, must not acknowledge it."""
    edited = SriovConfigSpace(bench.open(), sriov=False)
    proxy = FaultInjector(edited, add=bits(F.SR_IOV))
    if driver == "guest":
        drv = GuestNetDriver(proxy, mem, queue_size=64)
        try:
            drv.init()
        finally:
            drv.close()
    else:
        vdpa = VirtioPciVdpaDevice(proxy, owns_pci=False)
        front = VdpaFrontend(vdpa, mem)
        try:
            shown = vdpa.get_device_features()
            try:
                front.negotiate(shown & ~bits(F.RING_PACKED, F.IN_ORDER))
            except VdpaError:
                pass  # refusing the frontend's request is one way of keeping the rule; judged on what was written
        finally:
            vdpa.close()
            front.close()
    mon = VirtioPciDriverMonitor(proxy, proxy.layout)
    negotiations = mon.feature_timeline(mon.events())[2]
    acked = [a for _o, a in negotiations]
    ext = extended_capabilities(edited)
    assert PCI_EXT_CAP_ID_SRIOV not in ext.ids
    verdict.check("FEAT-DRV-17", not any(has(a, F.SR_IOV) for a in acked),
                  f"{driver} driver: VIRTIO_F_SR_IOV acknowledged ({[hex(a) for a in acked]}) although the "
                  f"function has no SR-IOV capability ({ext.describe()})")


#: Available indices at both ends of each half of the 16-bit counter: next_wrap is bit 15 of the index.
AVAIL_IDX_EDGES = (0, 1, 0x7FFE, 0x7FFF, 0x8000, 0x8001, 0xFFFE, 0xFFFF)
#: The rows of each notification format about the value written (the width rows need the doorbell write).
NOTIF_VALUE_IDS = {"notification_data": ("NOTIF-DRV-04", "NOTIF-DRV-B01"), "notif_config_data": ("NOTIF-DRV-05",),
                   "both": ("NOTIF-DRV-06", "NOTIF-DRV-B01")}


@pytest.mark.parametrize("variant", [pytest.param(v, id=v, marks=pytest.mark.req(*NOTIF_VALUE_IDS[v]))
                                     for v in sorted(NOTIF_VALUE_IDS)])
def test_notification_value_over_the_whole_avail_idx_range(bench: Bench, verdict: Verdict, variant: str) -> None:
    """The value the drivers' register layer puts in a notification, for available indices a run of a few
    frames never reaches (past 0x7fff the wrap bit is set), decoded with the layout of 4.1.5.2 (vq index or
    queue_notif_config_data in bits 0-15, next_off in 16-30, next_wrap in 31) or, without NOTIFICATION_DATA,
    the 16-bit identifier alone."""
    wanted, ids = NOTIF_VARIANTS[variant][0], NOTIF_VALUE_IDS[variant]
    dev = _open_offering(bench, verdict, wanted, ids)
    if dev is None:
        return
    t = VirtioPciModern(dev)
    t.enable_device()
    t.reset()
    t.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)
    t.write_driver_features((t.device_features() & bits(F.VERSION_1, F.ACCESS_PLATFORM)) | wanted)
    t.add_status(DeviceStatus.FEATURES_OK)
    with_data = has(wanted, F.NOTIFICATION_DATA)
    wrong: list[str] = []
    for q in (0, 1):
        ident = t.queue_notif_config_data(q) if has(wanted, F.NOTIF_CONFIG_DATA) else q
        for idx in AVAIL_IDX_EDGES:
            value = t.notify_value(q, idx)
            want = (ident & 0xFFFF, idx & 0x7FFF, idx >> 15) if with_data else (ident & 0xFFFF, 0, 0)
            got = (value & 0xFFFF, value >> 16 & 0x7FFF, value >> 31)
            if got != want or value >> 32:
                wrong.append(f"queue {q} avail idx {idx:#x}: {value:#x} (expected identifier/next_off/next_wrap "
                             f"{tuple(hex(x) for x in want)})")
    t.reset()
    for rid in ids:
        verdict.check(rid, not wrong, f"{variant}: {len(AVAIL_IDX_EDGES)} available indices on queues 0 and 1: "
                      f"{wrong[:4]}")
