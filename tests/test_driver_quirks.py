"""The quirk table, and the Intel IFC VF entry honoured on a model variant with its live-migration block."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator

import pytest

from backend.device import NotSupported, VqState
from backend.drivers.quirks import (
    IFCVF,
    NO_QUIRK,
    VDPA_BENCH_RTL,
    IdMatch,
    PciIds,
    QueueStop,
    Quirk,
    QuirkTable,
    default_quirks,
)
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.virtio.features import DeviceStatus, F, NetF, bits
from backend.virtio.pci_regs import PciCfg
from models.targets import SimNetDevice, loopback_device
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.dirty_log_block import DirtyLogNetDevice
from models.virtio_net.split_engine import RingError, SplitQueue
from models.virtio_net.vq_state_block import VqStateNetDevice
from sim.memory import GuestMemory
from sim.pci.endpoint import Bar, Register, RegisterBlock
from testbenches.driver.vdpa_frontend import VdpaFrontend
from testbenches.frames import test_frame

WANT = bits(F.VERSION_1, F.ACCESS_PLATFORM, F.EVENT_IDX, NetF.MAC)
LM_BAR = 4
LM_RING_STATE = 0x20
LM_SLOT = 4


class IfcvfLikeNet(VirtioNetDevice):
    """virtio-net with IFC VF ids (subsystem 8086:001a) and its live-migration block in BAR4.

    Queue q's 32-bit slot at 0x20 + 4q holds last_avail_idx in its low half: the
    device loads it when the queue is enabled and reports its progress there
    while the queue runs.
    """

    SUBSYSTEM_ID = 0x001A

    def __init__(self) -> None:
        super().__init__()
        struct.pack_into("<H", self.config.data, PciCfg.SUBSYSTEM_VENDOR_ID, 0x8086)
        self.lm_saved = [0] * len(self.queues)
        regs = [Register(f"vq{q}_state", LM_RING_STATE + LM_SLOT * q, 4,
                         lambda q=q: self._lm_read(q), lambda v, q=q: self._lm_write(q, v))  # type: ignore[misc]
                for q in range(len(self.queues))]
        bar = Bar(LM_BAR, 0x1000, is64=False)
        bar.mount(0, RegisterBlock("ifcvf_lm", 0x1000, regs))
        self.endpoint.bars[LM_BAR] = bar
        self.config.bars[LM_BAR] = bar

    def _lm_read(self, q: int) -> int:
        sq = self.queues[q]
        return sq.last_avail_idx | sq.used_idx << 16 if sq.enabled else self.lm_saved[q]

    def _lm_write(self, q: int, value: int) -> None:
        if not self.queues[q].enabled:
            self.lm_saved[q] = value & 0xFFFF

    def queue_config_error(self, q: SplitQueue) -> RingError | None:
        err = super().queue_config_error(q)
        if err is None:  # queue_enable: resume the ring where the saved state says
            q.last_avail_idx = q.used_idx = self.lm_saved[q.index]
        return err

    def reset_queue(self, q: SplitQueue) -> None:
        super().reset_queue(q)
        self.lm_saved[q.index] = 0


def open_dev(cls: type[VirtioNetDevice]) -> SimNetDevice:
    return loopback_device(cls(), f"sim:{cls.__name__}")


def test_table_lookup() -> None:
    table = default_quirks()
    ifc = PciIds(0x1AF4, 0x1041, 0x8086, 0x001A)
    assert table.lookup(ifc) is IFCVF and IFCVF.why
    assert table.lookup(PciIds(0x1AF4, 0x1041, 0x1AF4, 0x1100)) is NO_QUIRK
    rtl = table.lookup(PciIds(0x1AF4, 0x1041, 0x1DB5, 0x0501))
    assert rtl is VDPA_BENCH_RTL and rtl.vq_state is not None and rtl.vq_state.stop is QueueStop.QUEUE_RESET
    assert (rtl.vq_state.bar, rtl.vq_state.offset, rtl.vq_state.stride, rtl.vq_state.width) == (0, 0x3800, 4, 2)
    generic = Quirk(name="all-virtio", why="test")
    specific = Quirk(name="one", why="test")
    t2 = table.extended(IdMatch(vendor=0x1AF4), generic).extended(IdMatch(0x1AF4, 0x1041, 0x8086, 0x001A), specific)
    assert t2.lookup(PciIds(0x1AF4, 0x1042, 0, 0)) is generic
    assert t2.lookup(ifc) is IFCVF  # first of the equally specific entries wins
    assert table.entries == default_quirks().entries  # extending never changes the original


@pytest.mark.parametrize("cls, table", [(VirtioNetDevice, None), (IfcvfLikeNet, QuirkTable())])
def test_vq_state_needs_the_quirk(cls: type[VirtioNetDevice], table: QuirkTable | None) -> None:
    """A plain virtio-net, or the IFC variant with the quirk table emptied: a non-zero state is refused."""
    vdpa = VirtioPciVdpaDevice(open_dev(cls), quirks=table)
    try:
        assert vdpa.quirk is NO_QUIRK
        with pytest.raises(NotSupported):
            vdpa.set_vq_state(1, VqState(avail_idx=1000))
    finally:
        vdpa.close()


@contextlib.contextmanager
def resumed_at_1000(mem: GuestMemory, cls: type[VirtioNetDevice], quirk: Quirk,
                    features: int) -> Iterator[tuple[VirtioNetDevice, VirtioPciVdpaDevice, VdpaFrontend]]:
    """A model of ``cls`` under the vdpa driver, which must pick ``quirk``: the state set before the queue runs is
    the state read; after a reset both rings resume at 1000, as after a migration, and move 10 frames. Yields the
    model, the driver and the frontend, closed after."""
    dev = open_dev(cls)
    vdpa = VirtioPciVdpaDevice(dev)
    fe = VdpaFrontend(vdpa, mem)
    try:
        assert vdpa.quirk is quirk
        vdpa.set_vq_state(0, VqState(avail_idx=7))
        assert vdpa.get_vq_state(0).avail_idx == 7
        vdpa.reset()
        fe.bring_up(features, state=1000)
        assert vdpa.get_status() & DeviceStatus.DRIVER_OK
        frames = [test_frame(i) for i in range(10)]
        assert fe.exchange(frames) == frames
        yield dev.model, vdpa, fe
    finally:
        vdpa.close()
        fe.close()


def test_ifcvf_vq_state_round_trip(mem: GuestMemory) -> None:
    # Without the quirk the device would start at 0 and see avail idx 1000 entries ahead (SPLIT-DRV-11) and stop.
    with resumed_at_1000(mem, IfcvfLikeNet, IFCVF, WANT) as (model, vdpa, _):
        assert model.errors == []
        assert vdpa.get_vq_state(1).avail_idx == 1010  # progress read back from the vendor block
        assert vdpa.get_vq_state(0).avail_idx == 1010
        assert model.queues[1].last_avail_idx == 1010


def test_rtl_quirk_stops_the_queue_to_read_its_state(mem: GuestMemory) -> None:
    """The RTL's record on the model variant with its registers: a running queue's state is read by stopping it
    (queue reset), the block keeps the stop position, a stopped queue reports it, and resuming loads it."""
    with resumed_at_1000(mem, DirtyLogNetDevice, VDPA_BENCH_RTL, WANT | bits(F.RING_RESET)) as (model, vdpa, fe):
        assert isinstance(model, DirtyLogNetDevice)
        assert model.queues[1].enabled
        assert vdpa.get_vq_state(1).avail_idx == 1010  # stopped here
        assert not model.queues[1].enabled and model.queues[1].last_avail_idx == 0  # reset, as RESET-DEV-04 says
        assert model.held[1] == 1010 * 0x10001  # what the block reads until the queue is enabled again
        assert vdpa.get_vq_state(1).avail_idx == 1010  # a stopped queue reports where it stopped
        vdpa.set_vq_ready(1, False)
        vdpa.set_vq_state(1, VqState(avail_idx=1010))
        vdpa.set_vq_ready(1, True)  # loaded on enable
        assert model.queues[1].enabled and model.queues[1].last_avail_idx == 1010
        more = [test_frame(i) for i in range(10, 14)]
        assert fe.exchange(more) == more
        assert model.errors == []


def test_rtl_quirk_without_ring_reset_refuses_a_running_queue(mem: GuestMemory) -> None:
    vdpa = VirtioPciVdpaDevice(open_dev(VqStateNetDevice))
    fe = VdpaFrontend(vdpa, mem)
    try:
        fe.bring_up(WANT)
        with pytest.raises(NotSupported, match="VIRTIO_F_RING_RESET"):
            vdpa.get_vq_state(1)
    finally:
        vdpa.close()
        fe.close()
