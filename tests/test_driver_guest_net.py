"""GuestNetDriver end to end on the behavioral model with a loopback wire."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from backend.targets import default_registry
from backend.virtio.features import DeviceStatus, F, NetF, bits, has
from backend.virtio.pci_regs import NO_VECTOR
from models.targets import SimNetDevice, loopback_device
from models.virtio_net.device import VirtioNetDevice
from sim.memory import GuestMemory
from testbenches.driver.virtio_net import DriverInitError, GuestNetDriver, choose_features
from testbenches.frames import MIN_LEN, test_frame

MEM = 8 << 20


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM) as m:
        yield m


@contextlib.contextmanager
def driven(mem: GuestMemory, target: str | SimNetDevice = "sim:virtio-net,wire=loopback"
           ) -> Iterator[tuple[SimNetDevice, GuestNetDriver]]:
    """The device (a ``sim:`` spec, or one built) and a GuestNetDriver on it, both closed at the end."""
    dev = default_registry().open(target) if isinstance(target, str) else target
    assert isinstance(dev, SimNetDevice)
    try:
        drv = GuestNetDriver(dev, mem)
        try:
            yield dev, drv
        finally:
            drv.close()
    finally:
        dev.close()


def frames(n: int) -> list[bytes]:
    return [test_frame(i, MIN_LEN + i % 200) for i in range(n)]


@pytest.mark.parametrize("spec", ["sim:virtio-net,wire=loopback",
                                  "sim:virtio-net,wire=loopback,qsize=32",
                                  "sim:virtio-net,wire=loopback,features=0x100030028"])
def test_100_frames_loop_back_intact(mem: GuestMemory, spec: str) -> None:
    with driven(mem, spec) as (dev, drv):
        drv.init()
        assert drv.status() == DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK \
            | DeviceStatus.DRIVER_OK
        assert has(drv.features, F.VERSION_1)
        sent = frames(100)
        # the wire is synchronous: never have more in flight than the receive ring can hold
        batch = min(100, drv.queues[drv.RX].size)
        got = []
        for i in range(0, 100, batch):
            assert drv.send(sent[i:i + batch]) == len(sent[i:i + batch])
            got += drv.receive(len(sent[i:i + batch]), timeout=5.0)
        assert [bytes(p) for p in got] == [bytes(p) for p in sent]
        assert drv.wait_tx_done(timeout=5.0)
        assert dev.model.errors == [] and dev.model.stats.rx_no_buffer == 0
        assert dev.dma_faults() == []


def test_config_link_and_mac(mem: GuestMemory) -> None:
    with driven(mem, "sim:virtio-net,wire=loopback,mac=02:11:22:33:44:55,mtu=9000") as (dev, drv):
        drv.init()
        assert drv.mac() == bytes.fromhex("021122334455")
        assert drv.mtu() == 9000 and drv.rx_buf_size >= 9000 + 14 + 12  # NET-DRV-08
        assert drv.link_up()
        dev.model.set_link(False)
        assert drv.config_changed(timeout=2.0)
        assert not drv.link_up()
        assert not drv.config_changed(timeout=0.05)  # bounded wait, nothing pending


def test_features_refused_sets_failed(mem: GuestMemory) -> None:
    with driven(mem) as (_, drv):
        drv.transport.enable_device()
        drv.reset()
        drv.acknowledge()
        drv.negotiate(features=bits(NetF.MAC))  # misbehave on purpose: no VERSION_1
        with pytest.raises(DriverInitError):
            drv.features_ok()
        assert drv.status() & DeviceStatus.FAILED and not drv.status() & DeviceStatus.DRIVER_OK
        # recovery starts with a reset (STATUS-DRV-03)
        drv.init()
        assert drv.status() & DeviceStatus.DRIVER_OK


def test_no_version_1_offered_fails(mem: GuestMemory) -> None:
    with driven(mem, "sim:virtio-net,wire=loopback,features=0x20") as (_, drv):
        with pytest.raises(DriverInitError, match="VERSION_1"):
            drv.init()
        assert drv.status() & DeviceStatus.FAILED


def test_single_msix_vector_shared(mem: GuestMemory) -> None:
    model = VirtioNetDevice(msix_vectors=1)
    with driven(mem, loopback_device(model, "sim:one-vector")) as (_, drv):
        drv.init()
        assert model.config_msix_vector == 0 and model.queues[0].msix_vector == model.queues[1].msix_vector == 0
        assert model.queues[0].msix_vector != NO_VECTOR
        sent = frames(20)
        assert drv.exchange(sent) == sent


def test_choose_features_drops_broken_dependencies() -> None:
    offered = bits(F.VERSION_1, NetF.GUEST_TSO4, NetF.MQ, NetF.MAC, 45)
    chosen = choose_features(offered, offered)
    assert chosen == bits(F.VERSION_1, NetF.MAC)  # TSO4 needs GUEST_CSUM, MQ needs CTRL_VQ, 45 is reserved
