"""The packed-ring monitor passes a careful driver and catches a hostile one, naming the PACKED-DRV row it broke."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from backend.drivers.transport import VirtioPciModern
from backend.targets import default_registry
from backend.virtio.features import DeviceStatus, F, bits
from backend.virtio.packed_ring import DESC_SIZE, PackedDescFlags, PackedDescriptor, advance, avail_bits, pack_ring
from sim.memory import GuestMemory
from testbenches.driver.layout import PackedDriverRing
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.monitor import PACKED_DRV_MONITORED, PackedRingMonitor, SplitRingMonitor, TracingPciDevice

#: The model offering packed rings (with IN_ORDER, INDIRECT_DESC, EVENT_IDX, NOTIFICATION_DATA), frames looped back.
SPEC = "sim:virtio-net,features=0x8000015f30018028,wire=loopback"
PACKED = DEFAULT_FEATURES | bits(F.RING_PACKED)
NEXT, WRITE, INDIRECT = int(PackedDescFlags.NEXT), int(PackedDescFlags.WRITE), int(PackedDescFlags.INDIRECT)
FRAME = bytes.fromhex("020000000001020000000002") + b"\x08\x00" + bytes(range(50))


@contextlib.contextmanager
def packed_driver(features: int = PACKED, queue_size: int = 13, observe: bool = True) -> Iterator[
        tuple[GuestNetDriver, PackedRingMonitor, SplitRingMonitor]]:
    """The guest driver on packed rings of ``queue_size`` behind the register trace, both ring monitors attached
    (the packed one without the device's DMA where not ``observe``, as on a target lacking a DMA observer)."""
    dev = default_registry().open(SPEC)
    try:
        with GuestMemory.single(4 << 20) as mem:
            trace = TracingPciDevice(dev)
            packed = PackedRingMonitor.attach(trace, mem.read, observe=observe)
            split = SplitRingMonitor.attach(trace, mem.read)
            drv = GuestNetDriver(trace, mem, queue_size=queue_size, features=features)
            try:
                drv.init()
                assert drv.packed, f"the driver did not negotiate packed rings ({drv.features:#x})"
                yield drv, packed, split
            finally:
                drv.close()
    finally:
        dev.close()


def _failed(mon: PackedRingMonitor) -> dict[str, list[str]]:
    return {rid: ev for rid, (ok, ev) in mon.verdicts().items() if not ok}


def _desc(ring: PackedDriverRing, k: int, addr: int, length: int, flags: int, ident: int = 0) -> PackedDescriptor:
    """Descriptor ``k`` of a list from next_avail, with the AVAIL/USED bits of its own slot's wrap counter."""
    wrap = advance(ring.next_avail, ring.avail_wrap, k, ring.size)[1]
    return PackedDescriptor(addr, length, ident, flags | avail_bits(wrap))


def test_a_careful_packed_driver_passes() -> None:
    """Frames over several laps of a ring of 13 (header and frame in one descriptor, in indirect tables too), receive
    buffers reposted: every rule the run exercised holds, and the split monitor stays out of packed rings."""
    with packed_driver() as (drv, mon, split):
        for _ in range(5):
            assert len(drv.exchange([FRAME] * 6)) == 6
        mon.inspect()
    verdicts = mon.verdicts()
    assert not _failed(mon), verdicts
    assert {"PACKED-DRV-01", "PACKED-DRV-02", "PACKED-DRV-03", "PACKED-DRV-04", "PACKED-DRV-07", "PACKED-DRV-10",
            "PACKED-DRV-11", "PACKED-DRV-17"} <= set(verdicts), sorted(verdicts)
    assert set(verdicts) <= set(PACKED_DRV_MONITORED)
    assert not split.findings, split.findings[:3]


def _plant(name: str, drv: GuestNetDriver) -> None:
    """Break one rule on the driver's packed transmit ring (or receive ring) and ring a doorbell."""
    tx: PackedDriverRing = drv.packed[drv.TX]
    rx: PackedDriverRing = drv.packed[drv.RX]
    t = drv.transport
    buf = tx.alloc_buffer(bytes(drv.hdr_len) + FRAME)
    n = drv.hdr_len + len(FRAME)
    if name == "tail not available":
        tx.expose_raw([_desc(tx, 0, buf, 8, NEXT), PackedDescriptor(buf + 8, n - 8, 0, 0)], 0)
    elif name == "list longer than the queue":
        tx.expose_raw([_desc(tx, k, buf, 8, NEXT) for k in range(tx.size)], 0)
    elif name == "readable after writable":
        tx.expose_raw([_desc(tx, 0, buf, 8, NEXT | WRITE), _desc(tx, 1, buf + 8, n - 8, 0, 3)], 3)
    elif name == "INDIRECT in a NEXT list":
        table = tx.write_indirect([PackedDescriptor(buf, n, 0, 0)])
        tx.expose_raw([_desc(tx, 0, buf, 8, NEXT), _desc(tx, 1, table, DESC_SIZE, INDIRECT, 3)], 3)
    elif name == "indirect inside indirect":
        inner = tx.write_indirect([PackedDescriptor(buf, n, 0, 0)])
        outer = tx.write_indirect([PackedDescriptor(inner, DESC_SIZE, 0, INDIRECT)])
        tx.expose_raw([_desc(tx, 0, outer, DESC_SIZE, INDIRECT, 3)], 3)
    elif name == "indirect table length 24":
        table = tx.alloc_buffer(pack_ring([PackedDescriptor(buf, n, 0, 0)] * 2))
        tx.expose_raw([_desc(tx, 0, table, 24, INDIRECT, 3)], 3)
    elif name == "INDIRECT not negotiated":
        table = tx.write_indirect([PackedDescriptor(buf, n, 0, 0)])
        tx.expose_raw([_desc(tx, 0, table, DESC_SIZE, INDIRECT, 3)], 3)
    elif name == "in-flight descriptor rewritten":
        # A transmit list the device holds (the receive queue's doorbell rung: transmit is not served), then its
        # descriptor pointed elsewhere.
        slot = tx.next_avail
        tx.expose_raw([_desc(tx, 0, buf, n, 0, 3)], 3)
        t.notify(drv.RX, avail_idx=rx.published, location=t.notify_location(drv.RX))
        old = tx.read_desc(slot)
        tx.write_desc(slot, PackedDescriptor(old.addr + 64, old.len - 64, old.id, old.flags))
        t.notify(drv.RX, avail_idx=rx.published, location=t.notify_location(drv.RX))
        return
    elif name == "no room for the list":
        # Hold a list of 9 in the ring of 13 (exposed, the receive queue's doorbell rung: transmit is not served)
        # and expose another of 9 over it.
        tx.expose_raw([_desc(tx, k, buf, 8, NEXT if k < 8 else 0, 5) for k in range(9)], 5)
        t.notify(drv.RX, avail_idx=rx.published, location=t.notify_location(drv.RX))
        tx.expose_raw([_desc(tx, k, buf, 8, NEXT if k < 8 else 0, 6) for k in range(9)], 6)
        t.notify(drv.RX, avail_idx=rx.published, location=t.notify_location(drv.RX))
        return
    elif name == "notification data behind":
        tx.expose_raw([_desc(tx, 0, buf, n, 0, 3)], 3)
        t.notify(drv.TX, avail_idx=(tx.published - 1) & 0x7FFF | tx.published & 0x8000,
                 location=t.notify_location(drv.TX))
        return
    elif name == "lost kick":
        tx.expose_raw([_desc(tx, 0, buf, n, 0, 3)], 3)  # made available, the device asks to be told: no doorbell
        return
    else:
        raise ValueError(name)
    t.notify(drv.TX, avail_idx=tx.published, location=t.notify_location(drv.TX))


@pytest.mark.parametrize(("name", "expected"), [
    ("tail not available", "PACKED-DRV-11"),
    ("list longer than the queue", "PACKED-DRV-07"),
    ("readable after writable", "PACKED-DRV-08"),
    ("INDIRECT in a NEXT list", "PACKED-DRV-15"),
    ("indirect inside indirect", "PACKED-DRV-13"),
    ("indirect table length 24", "PACKED-DRV-14"),
    ("INDIRECT not negotiated", "PACKED-DRV-12"),
    ("in-flight descriptor rewritten", "PACKED-DRV-03"),
    ("no room for the list", "PACKED-DRV-10"),
    ("notification data behind", "PACKED-DRV-04"),
    ("lost kick", "PACKED-DRV-17"),
])
def test_packed_monitor_names_the_broken_rule(name: str, expected: str) -> None:
    features = PACKED & ~bits(F.INDIRECT_DESC) if name == "INDIRECT not negotiated" else PACKED
    with packed_driver(features) as (drv, mon, _):
        drv.send([FRAME] * 15)  # a lap and more first: the planted list sits past the wrap
        assert drv.wait_tx_done(timeout=5.0)
        mon.inspect()
        assert not _failed(mon), _failed(mon)
        _plant(name, drv)
        failed = _failed(mon)
    assert expected in failed, (name, mon.verdicts())
    if expected == "PACKED-DRV-03":
        assert "PACKED-DRV-02" in failed


def test_packed_rings_must_be_aligned() -> None:
    """A driver that programs a packed queue at addresses off their 16/4/4 alignment (PACKED-DRV-01)."""
    dev = default_registry().open(SPEC)
    try:
        with GuestMemory.single(1 << 20) as mem:
            base = mem.regions[0].gpa
            trace = TracingPciDevice(dev)
            mon = PackedRingMonitor.attach(trace, mem.read)
            t = VirtioPciModern(trace)
            t.enable_device()
            t.reset()
            t.set_status(DeviceStatus.ACKNOWLEDGE)
            t.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)
            t.write_driver_features(t.device_features() & bits(F.VERSION_1, F.ACCESS_PLATFORM, F.RING_PACKED))
            t.add_status(DeviceStatus.FEATURES_OK)
            t.set_queue_size(0, 10)
            t.set_queue_addresses(0, base + 0x10008, base + 0x20002, base + 0x30000)
            t.enable_queue(0)
    finally:
        dev.close()
    assert "PACKED-DRV-01" in _failed(mon), mon.verdicts()


# --- without a DMA observer (a device in another process): only what the looks at the doorbells show ---------------


@contextlib.contextmanager
def doorbells_past_the_trace(drv: GuestNetDriver) -> Iterator[None]:
    """The driver's doorbells reach the device without crossing the register trace (as an ioeventfd's do), so the
    device uses what the driver exposes while the monitor takes no look."""
    trace = drv.transport.pci
    assert isinstance(trace, TracingPciDevice)
    drv.transport.pci = trace.inner
    try:
        yield
    finally:
        drv.transport.pci = trace


@pytest.mark.parametrize("used_again", [False, True], ids=["reused", "reused-and-used-again"])
def test_no_observer_a_slot_reused_between_looks_is_not_failed(used_again: bool) -> None:
    """The look at a doorbell takes a full ring of lists; the device then uses them all and the driver takes them
    and makes a new list available in the first slot (and, ``used_again``, the device uses it too) before the next
    look. A careful driver: without the device's DMA the order is unknown, so the queue is given up, not failed."""
    with packed_driver(observe=False) as (drv, mon, _):
        ring: PackedDriverRing = drv.packed[drv.TX]
        drv.send([FRAME] * ring.size)  # one doorbell, the look before the device: every slot in flight
        assert drv.wait_tx_done(timeout=5.0)
        assert ring.in_flight == 0 and (ring.next_avail, ring.avail_wrap) == (0, 0)
        if used_again:
            with doorbells_past_the_trace(drv):
                drv.send([FRAME] * 3)
                assert drv.wait_tx_done(timeout=5.0)
        drv.send([FRAME])  # the next look: slot 0 no longer holds the list the monitor saw there
        assert drv.wait_tx_done(timeout=5.0)
        mon.inspect()
        failed = _failed(mon)
        given_up = list(mon.given_up)
    assert not failed, failed
    assert any(line.startswith(f"queue {drv.TX}: ") and "PACKED-DRV-02/03/10" in line for line in given_up), given_up


@pytest.mark.parametrize(("name", "expected"), [
    ("in-flight descriptor rewritten", "PACKED-DRV-03"),
    ("readable after writable", "PACKED-DRV-08"),
    ("tail not available", "PACKED-DRV-11"),
])
def test_no_observer_still_names_a_provable_break(name: str, expected: str) -> None:
    """Without the device's DMA, a look between every batch keeps the monitor's order of events; a list the device
    has not used (its slot still reads as made available) whose address the driver changes is the driver's doing,
    as are the rules one look proves. The planted list stays in the first lap: a tail whose flags read as used for
    its wrap counter could be a used descriptor the device wrote there, so past the wrap (flags 0) it is given up."""
    with packed_driver(observe=False) as (drv, mon, _):
        for _ in range(2):  # looking after every batch (the look at the next doorbell sees it used)
            drv.send([FRAME] * 5)
            assert drv.wait_tx_done(timeout=5.0)
            mon.inspect()
        assert not _failed(mon) and not mon.given_up, (_failed(mon), mon.given_up)
        _plant(name, drv)
        failed = _failed(mon)
    assert expected in failed, (name, mon.verdicts(), mon.given_up)
    if expected == "PACKED-DRV-03":
        assert "PACKED-DRV-02" in failed


def test_no_observer_an_overwritten_list_is_given_up_not_failed() -> None:
    """A list exposed over one in flight: with the device's DMA seen it is a PACKED-DRV-10 break (above); without,
    the device may have used the first list and the driver taken it, so the queue is given up."""
    with packed_driver(observe=False) as (drv, mon, _):
        drv.send([FRAME] * 5)
        assert drv.wait_tx_done(timeout=5.0)
        mon.inspect()
        _plant("no room for the list", drv)
        failed = _failed(mon)
    assert not {"PACKED-DRV-02", "PACKED-DRV-03", "PACKED-DRV-10"} & set(failed), failed
    assert mon.given_up
