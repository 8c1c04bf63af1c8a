"""VirtioPciVdpaDevice against the behavioral virtio-net model: queue programming, kicks, calls, refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.device import NotSupported, VdpaDevice, VdpaError, VqState
from backend.drivers.transport import VirtioPciModern
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import wait_eventfd
from backend.pci.device import PciDevice
from backend.pci.proxy import PciDeviceProxy
from backend.targets import default_registry
from backend.virtio.features import DeviceStatus, F, NetF, bits
from backend.virtio.pci_regs import NO_VECTOR, CapType, CommonCfg
from models.targets import SimNetDevice, loopback_device
from models.virtio_net.device import VirtioNetDevice
from sim.memory import GuestMemory
from testbenches.driver.vdpa_frontend import VdpaFrontend
from testbenches.frames import test_frame

WANT = bits(F.VERSION_1, F.ACCESS_PLATFORM, F.EVENT_IDX, NetF.MAC, NetF.STATUS)


def wait_fd(fd: int, timeout: float = 2.0) -> bool:
    return wait_eventfd(fd, timeout)


def loop_traffic(fe: VdpaFrontend, n: int = 10) -> list[bytes]:
    return fe.exchange([test_frame(i) for i in range(n)], timeout=5.0)


@pytest.fixture
def sim() -> Iterator[PciDevice]:
    dev = default_registry().open("sim:virtio-net,wire=loopback")
    yield dev
    dev.close()


def test_transport_discovery(sim: PciDevice) -> None:
    t = VirtioPciModern(sim)
    assert t.common.cfg_type == CapType.COMMON_CFG
    assert t.notify_cap.notify_off_multiplier == 4
    assert t.isr_cap is not None and t.device_cap is not None and t.pci_cfg_cap is not None
    assert t.msix is not None and t.msix_table_size() >= 3
    vendor = t.caps(CapType.VENDOR_CFG)
    assert vendor and vendor[0].vendor_id not in (None, 0x1AF4)
    assert t.device_features() >> F.VERSION_1 & 1
    assert t.read_common(CommonCfg.NUM_QUEUES) == t.num_queues() == 2
    t.reset()
    assert t.status() == 0
    # PCI_CFG window reads the same bytes as a direct BAR access
    assert t.pci_cfg_read(t.common.bar, t.common.offset + CommonCfg.NUM_QUEUES, 2) == 2


def test_queues_programmed_kick_and_call(sim: SimNetDevice, mem: GuestMemory) -> None:
    vdpa = VirtioPciVdpaDevice(sim, owns_pci=False)
    fe = VdpaFrontend(vdpa, mem)
    try:
        fe.bring_up(WANT)
        model = sim.model
        for q in (0, 1):
            mq = model.queues[q]
            ring = fe.rings[q]
            assert mq.enabled and mq.size == 64
            assert (mq.desc, mq.driver, mq.device) == (ring.desc_addr, ring.avail_addr, ring.used_addr)
            assert mq.msix_vector == q + 1
        assert model.config_msix_vector == 0
        assert isinstance(vdpa, VdpaDevice)
        assert vdpa.get_vq_ready(0) and vdpa.get_status() & DeviceStatus.DRIVER_OK
        got = loop_traffic(fe, 10)
        assert got == [test_frame(i) for i in range(10)]
        assert not vdpa.kicks_relayed() and not vdpa.calls_relayed()
        assert model.stats.tx_packets == 10 and model.errors == []
        # the config eventfd follows a link change
        model.set_link(False)
        assert wait_fd(fe.config_call)
        # without a last_avail_idx register the running state cannot be read or set
        with pytest.raises(NotSupported):
            vdpa.get_vq_state(0)
        with pytest.raises(NotSupported):
            vdpa.suspend()
        vdpa.reset()
        assert vdpa.get_status() == 0 and not model.queues[0].enabled
    finally:
        vdpa.close()
        fe.close()


class _NoIoeventfd(PciDeviceProxy):
    """A PciDevice that cannot take ioeventfds (a vfio-user server without our extension): the driver relays."""

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        return False


def test_kick_relay_when_device_has_no_ioeventfd(sim: SimNetDevice, mem: GuestMemory) -> None:
    vdpa = VirtioPciVdpaDevice(_NoIoeventfd(sim, sim.name), owns_pci=False)
    fe = VdpaFrontend(vdpa, mem)
    try:
        fe.bring_up(WANT)
        assert vdpa.kicks_relayed()
        assert loop_traffic(fe, 5) == [test_frame(i) for i in range(5)]
    finally:
        vdpa.close()
        fe.close()


def test_shared_vectors_fan_out(mem: GuestMemory) -> None:
    model = VirtioNetDevice(msix_vectors=2)
    dev = loopback_device(model, "sim:small-msix")
    vdpa = VirtioPciVdpaDevice(dev)
    fe = VdpaFrontend(vdpa, mem)
    try:
        assert vdpa.vector_plan() == {"config": 0, "q0": 1, "q1": 1}
        fe.bring_up(WANT)
        assert vdpa.calls_relayed()
        assert model.queues[0].msix_vector == model.queues[1].msix_vector == 1
        assert loop_traffic(fe, 5) == [test_frame(i) for i in range(5)]
    finally:
        vdpa.close()
        fe.close()


def test_features_ok_refused(sim: PciDevice) -> None:
    vdpa = VirtioPciVdpaDevice(sim, owns_pci=False)
    try:
        vdpa.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)
        with pytest.raises(VdpaError, match="not offered"):
            vdpa.set_driver_features(1 << 60)
        vdpa.set_driver_features(bits(NetF.MAC))  # no VERSION_1: the model refuses FEATURES_OK
        with pytest.raises(VdpaError, match="FEATURES_OK"):
            vdpa.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK)
        with pytest.raises(VdpaError, match="clear"):
            vdpa.set_status(DeviceStatus.ACKNOWLEDGE)
        with pytest.raises(NotSupported):
            vdpa.set_vq_state(0, VqState(avail_idx=5))
        vdpa.set_vq_state(0, VqState(avail_idx=0))
        with pytest.raises(VdpaError, match="power of two"):
            vdpa.set_vq_num(0, 48)
        with pytest.raises(VdpaError, match="aligned"):
            vdpa.set_vq_address(0, 0x1008, 0x2000, 0x3000)
    finally:
        vdpa.close()


def test_notification_data_is_hidden_and_unset_queue_has_no_vector(sim: SimNetDevice, mem: GuestMemory) -> None:
    vdpa = VirtioPciVdpaDevice(sim, owns_pci=False)
    fe = VdpaFrontend(vdpa, mem)
    try:
        assert not vdpa.get_device_features() >> F.NOTIFICATION_DATA & 1
        fe.bring_up(WANT, queues=(0,))
        assert sim.model.queues[0].enabled and not sim.model.queues[1].enabled
        assert sim.model.queues[1].msix_vector == NO_VECTOR
    finally:
        vdpa.close()
        fe.close()


class _GenerationBump(PciDeviceProxy):
    """Bumps config_generation during the first device-config read, as a config change racing the driver."""

    def __init__(self, inner: SimNetDevice) -> None:
        super().__init__(inner, inner.name)
        self.model = inner.model
        self.bumped = False
        self.generation_reads = 0

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        model = self.model
        if index == 0 and offset == model.common_off + CommonCfg.CONFIG_GENERATION:
            self.generation_reads += 1
        if index == 0 and model.devcfg_off <= offset < model.devcfg_off + 0x100 and not self.bumped:
            self.bumped = True
            model.config_generation += 1
        return super().region_read(index, offset, size)


def test_get_config_natural_width_and_generation_retry(sim: SimNetDevice) -> None:
    wrapped = _GenerationBump(sim)
    vdpa = VirtioPciVdpaDevice(wrapped, owns_pci=False)
    try:
        mac = sim.model.mac
        assert vdpa.get_config(0, 6) == mac
        assert wrapped.bumped and wrapped.generation_reads == 4  # one group retried once (CFG-DRV-02)
        full = vdpa.get_config(0, vdpa.get_config_size())
        assert full[:6] == mac and full[6:8] == b"\x01\x00"  # LINK_UP
        assert vdpa.get_config(7, 3) == full[7:10]  # partial fields come from whole-field reads
    finally:
        vdpa.close()
