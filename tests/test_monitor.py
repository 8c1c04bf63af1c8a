"""The passive driver monitor catches a misbehaving driver, naming the rows it broke."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from backend.drivers.transport import VirtioPciModern
from backend.targets import default_registry
from backend.virtio.features import DeviceStatus, F, bits
from backend.virtio.pci_regs import CommonCfg
from backend.virtio.split_ring import DescFlags, Descriptor
from sim.memory import GuestMemory
from testbenches.driver.virtio_net import GuestNetDriver
from testbenches.monitor import SplitRingMonitor, TracingPciDevice, VirtioPciDriverMonitor


@contextlib.contextmanager
def traced(spec: str = "sim:virtio-net,wire=none") -> Iterator[TracingPciDevice]:
    """A ``sim:`` device behind the register trace the monitors read; the device closed at the end."""
    dev = default_registry().open(spec)
    try:
        yield TracingPciDevice(dev)
    finally:
        dev.close()


def _failed(trace: TracingPciDevice) -> set[str]:
    return {rid for rid, (ok, _) in VirtioPciDriverMonitor(trace).verdicts().items() if not ok}


def test_a_sloppy_driver_is_caught() -> None:
    with traced() as trace:
        t = VirtioPciModern(trace)
        t.enable_device()
        t.set_status(DeviceStatus.ACKNOWLEDGE)  # no reset first (INIT-DRV-01)
        t.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)
        t.device_features()
        t.write_driver_features(bits(F.VERSION_1, 44))  # reserved bit 44, not offered (FEAT-DRV-01/04)
        t.notify(0, 0)  # doorbell before DRIVER_OK (INIT-DRV-13)
        t.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK)
        t.write_driver_features(bits(F.VERSION_1))  # after FEATURES_OK (INIT-DRV-07)
        t.write_common(CommonCfg.NUM_QUEUES, 7)  # read-only field (PCI-DRV-15)
        t.set_queue_size(0, 100)  # not a power of two (PCI-DRV-17)
        t.select_queue(0)
        t.write_common(CommonCfg.QUEUE_ENABLE, 0)  # PCI-DRV-20
        t.write_common(CommonCfg.QUEUE_ENABLE, 1)  # before addresses (PCI-DRV-18)
        t.set_status(DeviceStatus.DRIVER)  # drops ACKNOWLEDGE (STATUS-DRV-02)
        t.set_status(0)
        t.set_status(DeviceStatus.ACKNOWLEDGE)  # re-init without polling for 0 (PCI-DRV-19)
    failed = _failed(trace)
    assert {"INIT-DRV-01", "FEAT-DRV-01", "FEAT-DRV-04", "INIT-DRV-13", "INIT-DRV-07", "PCI-DRV-15",
            "PCI-DRV-17", "PCI-DRV-20", "PCI-DRV-18", "STATUS-DRV-02", "PCI-DRV-19", "RESET-DRV-01"} <= failed


def test_a_careful_driver_passes() -> None:
    with traced() as trace:
        t = VirtioPciModern(trace)
        t.enable_device()
        t.reset()
        t.set_status(DeviceStatus.ACKNOWLEDGE)
        t.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)
        offered = t.device_features()
        t.write_driver_features(offered & bits(F.VERSION_1, F.ACCESS_PLATFORM))
        t.add_status(DeviceStatus.FEATURES_OK)
        t.set_queue_size(0, 64)
        t.set_queue_addresses(0, 0x10000, 0x20000, 0x30000)
        t.enable_queue(0)
        t.add_status(DeviceStatus.DRIVER_OK)
        t.notify(0)
    verdicts = VirtioPciDriverMonitor(trace).verdicts()
    assert not _failed(trace), verdicts
    assert {"INIT-DRV-01", "INIT-DRV-02", "INIT-DRV-03", "PCI-DRV-18", "NOTIF-DRV-01", "NOTIF-DRV-03"} <= set(verdicts)


@pytest.mark.parametrize(("name", "expected"), [
    ("loop", "SPLIT-DRV-04"),
    ("readable_after_writable", "SPLIT-DRV-02"),
    ("indirect_and_next", "SPLIT-DRV-09"),
    ("nested_indirect", "SPLIT-DRV-07"),
    ("avail_flags", "SPLIT-DRV-14"),
])
def test_ring_monitor_names_the_broken_rule(name: str, expected: str) -> None:
    with traced("sim:virtio-net,wire=loopback") as trace, GuestMemory.single(4 << 20) as mem:
        rings = SplitRingMonitor.attach(trace, mem.read)
        drv = GuestNetDriver(trace, mem, queue_size=16)
        try:
            drv.init()
            tx = drv.queues[drv.TX]
            buf = tx.alloc_buffer(64)
            nd = DescFlags.NEXT
            if name == "loop":
                tx.add_raw({3: Descriptor(buf, 64, nd, 4), 4: Descriptor(buf, 64, nd, 3)}, 3)
            elif name == "readable_after_writable":
                tx.add_raw({3: Descriptor(buf, 64, nd | DescFlags.WRITE, 4), 4: Descriptor(buf, 64, 0, 0)}, 3)
            elif name == "indirect_and_next":
                table = tx.write_indirect([Descriptor(buf, 64, 0, 0)])
                tx.add_raw({3: Descriptor(table, 16, DescFlags.INDIRECT | nd, 4), 4: Descriptor(buf, 8, 0, 0)}, 3)
            elif name == "nested_indirect":
                inner = tx.write_indirect([Descriptor(buf, 64, 0, 0)])
                outer = tx.write_indirect([Descriptor(inner, 16, DescFlags.INDIRECT, 0)])
                tx.add_raw({3: Descriptor(outer, 16, DescFlags.INDIRECT, 0)}, 3)
            else:
                tx.write_avail_flags(1)  # EVENT_IDX is negotiated: avail.flags must stay 0
                tx.add_raw({3: Descriptor(buf, 64, 0, 0)}, 3)
            tx.write_avail_idx(tx.avail_idx)
            drv.transport.notify(drv.TX)
        finally:
            drv.close()
    verdicts = rings.verdicts()
    assert expected in verdicts and not verdicts[expected][0], verdicts
