"""``rtl:virtio-net,sim=icarus``: the design under cocotb on Icarus in a device process, reached over vfio-user.

The guest driver runs against it as against any target: frames out through the design and back on
its loopback wire, the bench port's link and wire, a DMA fault answered SLVERR and reported, and the
Verilator-only options refused with a reason. (The conformance suite runs on it with
``--target rtl:virtio-net --sim icarus``; it is not run here, it takes minutes.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.eventloop import wait_eventfd
from backend.pci.device import DmaPerm
from backend.targets import default_registry
from backend.virtio.features import DeviceStatus
from backend.virtio.split_ring import Descriptor
from sim.memory import GuestMemory
from sim.rtl.icarus import IcarusDevice
from testbenches.driver.virtio_net import GuestNetDriver
from testbenches.frames import test_frame
from tests.rtl.simulate import icarus_check

SPEC = "rtl:virtio-net,sim=icarus,mac=02:00:00:00:00:0b"
VENDOR_SPEC = "rtl:acme-vnet,sim=icarus"
WAIT = 20.0  # Icarus: ~50 k cycles/s
MEM = 4 << 20  # the shared ``mem`` fixture's size and address (tests/conftest.py)
GPA = 0x1_0000_0000

pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def opened(spec: str) -> Iterator[IcarusDevice]:
    """The device process of ``spec``, closed afterwards; it must have exited cleanly."""
    icarus_check()
    device = default_registry().open(spec)
    assert isinstance(device, IcarusDevice)
    try:
        yield device
    finally:
        device.close()
        assert device.proc is not None and device.proc.returncode == 0, device.log_tail()


@pytest.fixture
def dev() -> Iterator[IcarusDevice]:
    with opened(SPEC) as device:
        yield device


def test_frames_through_the_design_and_back(dev: IcarusDevice, mem: GuestMemory) -> None:
    """Transmit chains read by the design's AXI4 master from the client's memory, sent on m_axis, looped back
    to s_axis, written into receive buffers; MSI-X from the device process to the driver's eventfds."""
    drv = GuestNetDriver(dev, mem, queue_size=64)
    try:
        drv.init()
        assert drv.mac() == bytes.fromhex("02000000000b")
        sent = [test_frame(i, 60 + 97 * i) for i in range(12)]
        assert drv.exchange(sent, WAIT) == sent
        assert drv.wait_tx_done(timeout=WAIT)
    finally:
        drv.close()


def test_bench_port_link_and_wire(dev: IcarusDevice, mem: GuestMemory) -> None:
    """The link input pulled and plugged (a configuration interrupt each time); a frame from the wire."""
    port = dev.model
    assert port is not None and port.link_up and port.mac == bytes.fromhex("02000000000b")
    drv = GuestNetDriver(dev, mem, queue_size=64)
    try:
        drv.init()
        port.set_link(False)
        assert drv.config_changed(WAIT) and not drv.link_up() and not port.link_up
        port.set_link(True)
        assert drv.config_changed(WAIT) and drv.link_up()
        port.receive(test_frame(8))
        assert [f.frame for f in drv.receive_raw(1, timeout=WAIT)] == [test_frame(8)]
    finally:
        drv.close()


def test_dma_outside_the_maps_is_a_reported_fault(dev: IcarusDevice, mem: GuestMemory) -> None:
    """A descriptor outside every mapping: the beat is answered SLVERR, the fault comes back over the socket,
    the design sets DEVICE_NEEDS_RESET and the port names the driver rule."""
    drv = GuestNetDriver(dev, mem, queue_size=64, rx_buffers=0)
    try:
        drv.init()
        assert dev.dma_faults() == []
        outside = GPA + 2 * MEM
        drv.queues[GuestNetDriver.TX].add_raw({0: Descriptor(outside, 64, 0, 0)}, 0)
        drv.notify(GuestNetDriver.TX)
        assert dev.model is not None
        assert drv.config_changed(WAIT), "no configuration change notification"
        faults = dev.dma_faults()
        assert faults and all(f.access == DmaPerm.READ for f in faults), faults
        assert all(outside <= f.iova < outside + 64 for f in faults), faults
        assert "SLVERR" in faults[0].reason or "no mapping" in faults[0].reason, faults[0].reason
        assert drv.status() & DeviceStatus.DEVICE_NEEDS_RESET
        assert any(e.startswith("FEAT-DRV-11") for e in dev.model.errors), dev.model.errors
    finally:
        drv.close()


def test_message_write_interrupts_reach_the_driver(mem: GuestMemory) -> None:
    """The vendor design keeps its MSI-X table and sends each interrupt as a message write on its own AXI4
    master: on Icarus every message the design writes into the platform's window reaches the eventfd of its
    vector, the configuration vector on each link change and the receive queue's on a frame, none before."""
    with opened(VENDOR_SPEC) as device:
        drv = GuestNetDriver(device, mem, queue_size=64)
        try:
            drv.init()
            port = device.model
            assert port is not None
            assert not wait_eventfd(drv.irq_fds["rx"], 0.0), "a receive interrupt before any frame"
            for up in (False, True, False, True):
                port.set_link(up)
                assert drv.config_changed(WAIT), f"no configuration interrupt, link {'up' if up else 'down'}"
            port.receive(test_frame(5))
            assert drv.wait_irq("rx", WAIT), "no receive queue interrupt for a frame written into a buffer"
            assert [f.frame for f in drv.receive_raw(1, timeout=WAIT)] == [test_frame(5)]
        finally:
            drv.close()


@pytest.mark.parametrize("option", ["waves=/tmp/x.fst", "pcap=/tmp/x.pcap", "define=VNET_BUG_MISSED_IRQ"])
def test_verilator_only_options_are_refused(option: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sim=verilator"):
        default_registry().open(f"rtl:virtio-net,sim=icarus,{option}")
