"""The virtio-net model driven through SimPciDevice with raw register accesses and hand-built rings."""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.utils import rdpcap

from backend.pci.device import DmaPerm, IrqIndex, RegionIndex, config_read, config_write, read_int, write_int
from backend.targets import default_registry
from backend.virtio.features import DeviceStatus, F, NetF, bit, has
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.pci_regs import (
    COMMON_CFG_WIDTH,
    ISR_CONFIG,
    ISR_QUEUE,
    NO_VECTOR,
    NOTIFY_OFF_MULTIPLIER,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_CFG_DATA,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_STATUS_INTERRUPT,
    VENDOR_DATA_CAP_VENDOR_ID,
    VIRTIO_NET_S_LINK_UP,
    CapType,
    CommonCfg,
    MsixCap,
    NetCfg,
    PciCfg,
    VirtioPciCap,
)
from backend.virtio.split_ring import DESC, U16, USED_ELEM, DescFlags, SplitLayout
from models.targets import SimNetDevice, open_virtio_net
from models.virtio_net import Collector, PairWire, VirtioNetDevice
from sim.memory import GuestMemory
from testbenches.frames import test_frame

MEM = 1 << 20
FRAME = test_frame(0, 64)
ACK_DRV = int(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)


class Ring:
    """Driver side of one split ring in guest memory, built by hand."""

    def __init__(self, g: Guest, index: int, size: int, base: int) -> None:
        self.g, self.index, self.size = g, index, size
        self.lay = SplitLayout(size)
        self.desc = base
        self.avail = base + 0x1000
        self.used = base + 0x2000
        self.avail_idx = 0
        self.free = 0

    def put_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int | None = None) -> None:
        self.g.mem.write((self.desc if table is None else table) + 16 * i, DESC.pack(addr, length, flags, nxt))

    def add(self, heads: list[int]) -> None:
        for h in heads:
            self.g.mem.write(self.avail + self.lay.avail_ring_entry(self.avail_idx), U16.pack(h))
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.g.mem.write(self.avail + 2, U16.pack(self.avail_idx))

    def add_chain(self, bufs: list[tuple[int, int, bool]]) -> int:
        head = self.free
        for k, (addr, length, writable) in enumerate(bufs):
            i = (head + k) % self.size
            last = k == len(bufs) - 1
            self.put_desc(i, addr, length, (DescFlags.WRITE if writable else 0) | (0 if last else DescFlags.NEXT),
                          (i + 1) % self.size)
        self.free = (head + len(bufs)) % self.size
        self.add([head])
        return head

    def used_idx(self) -> int:
        return int(U16.unpack(self.g.mem.read(self.used + 2, 2))[0])

    def used_elem(self, slot: int) -> tuple[int, int]:
        return USED_ELEM.unpack(self.g.mem.read(self.used + self.lay.used_ring_entry(slot), 8))  # type: ignore[return-value]

    def kick(self) -> None:
        self.g.notify(self.index)


class Guest:
    """A minimal hand-rolled driver: enough to reach every register and ring of the model."""

    def __init__(self, spec: str = "virtio-net,wire=none") -> None:
        self.dev: SimNetDevice = open_virtio_net(spec)
        self.model: VirtioNetDevice = self.dev.model
        self.mem = GuestMemory.single(MEM)
        fd, off = self.mem.fd_offset(0)
        self.dev.dma_map(0, MEM, fd, off, DmaPerm.RW)
        config_write(self.dev, PciCfg.COMMAND, 2, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
        self.caps: dict[int, tuple[int, VirtioPciCap]] = {}
        self.msix_cap = 0
        self.vendor_caps: list[int] = []
        ptr = config_read(self.dev, PciCfg.CAPABILITIES_POINTER, 1)
        while ptr:
            raw = self.dev.region_read(RegionIndex.CONFIG, ptr, 16)
            if raw[0] == PCI_CAP_ID_VNDR:
                cap = VirtioPciCap.unpack(raw)
                if cap.cfg_type == CapType.VENDOR_CFG:
                    self.vendor_caps.append(ptr)
                else:
                    self.caps.setdefault(cap.cfg_type, (ptr, cap))
            elif raw[0] == PCI_CAP_ID_MSIX:
                self.msix_cap = ptr
            ptr = raw[1]
        self.common = self.caps[CapType.COMMON_CFG][1].offset
        notify_ptr, notify = self.caps[CapType.NOTIFY_CFG]
        self.notify_base = notify.offset
        self.notify_mult = config_read(self.dev, notify_ptr + NOTIFY_OFF_MULTIPLIER, 4)
        self.calls: list[int] = []

    def close(self) -> None:
        self.dev.close()
        for fd in self.calls:
            os.close(fd)
        self.mem.close()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def collect(self) -> Collector:
        """The model's port attached to a collector of what it transmits."""
        col = Collector()
        self.model.attach(col)
        return col

    # registers
    def cr(self, field: CommonCfg) -> int:
        return read_int(self.dev, 0, self.common + field, COMMON_CFG_WIDTH[field])

    def cw(self, field: CommonCfg, value: int) -> None:
        write_int(self.dev, 0, self.common + field, COMMON_CFG_WIDTH[field], value)

    def status(self) -> int:
        return self.cr(CommonCfg.DEVICE_STATUS)

    def isr(self) -> int:
        return read_int(self.dev, 0, self.caps[CapType.ISR_CFG][1].offset, 1)

    def devcfg(self, off: int, width: int) -> int:
        return read_int(self.dev, 0, self.caps[CapType.DEVICE_CFG][1].offset + off, width)

    def offered(self) -> int:
        value = 0
        for sel in range(4):
            self.cw(CommonCfg.DEVICE_FEATURE_SELECT, sel)
            value |= self.cr(CommonCfg.DEVICE_FEATURE) << (32 * sel)
        return value

    def write_features(self, features: int) -> None:
        for sel in range(4):
            self.cw(CommonCfg.DRIVER_FEATURE_SELECT, sel)
            self.cw(CommonCfg.DRIVER_FEATURE, features >> (32 * sel) & 0xFFFFFFFF)

    def negotiate(self, features: int | None = None) -> bool:
        self.cw(CommonCfg.DEVICE_STATUS, 0)
        self.cw(CommonCfg.DEVICE_STATUS, ACK_DRV)
        # By default every offered bit but RING_PACKED: this guest sets up split rings (packed tests pass their set).
        self.write_features(self.offered() & ~bit(F.RING_PACKED) if features is None else features)
        self.cw(CommonCfg.DEVICE_STATUS, ACK_DRV | DeviceStatus.FEATURES_OK)
        return bool(self.status() & DeviceStatus.FEATURES_OK)

    def msix(self, nvec: int = 3) -> list[int]:
        fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(nvec)]
        self.calls += fds
        self.dev.set_irqs(IrqIndex.MSIX, 0, fds)
        return fds

    def program_queue(self, index: int, size: int, vector: int, areas: tuple[int, int, int]) -> None:
        """Queue ``index``'s size, MSI-X vector and (descriptor, driver, device) areas, then queue_enable."""
        self.cw(CommonCfg.QUEUE_SELECT, index)
        self.cw(CommonCfg.QUEUE_SIZE, size)
        self.cw(CommonCfg.QUEUE_MSIX_VECTOR, vector)
        for reg, addr in zip((CommonCfg.QUEUE_DESC, CommonCfg.QUEUE_DRIVER, CommonCfg.QUEUE_DEVICE), areas,
                             strict=True):
            self.cw(reg, addr)
        self.cw(CommonCfg.QUEUE_ENABLE, 1)

    def setup_queue(self, index: int, size: int = 16, vector: int = NO_VECTOR) -> Ring:
        ring = Ring(self, index, size, 0x10000 + index * 0x4000)
        self.program_queue(index, size, vector, (ring.desc, ring.avail, ring.used))
        return ring

    def driver_ok(self) -> None:
        self.cw(CommonCfg.DEVICE_STATUS, ACK_DRV | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK)

    def notify(self, index: int) -> None:
        self.cw(CommonCfg.QUEUE_SELECT, index)
        off = self.cr(CommonCfg.QUEUE_NOTIFY_OFF)
        write_int(self.dev, 0, self.notify_base + off * self.notify_mult, 2, index)

    def bring_up(self, features: int | None = None, vectors: bool = True) -> tuple[Ring, Ring]:
        assert self.negotiate(features)
        if vectors:
            self.msix(3)
            self.cw(CommonCfg.CONFIG_MSIX_VECTOR, 2)
        rx = self.setup_queue(0, vector=0 if vectors else NO_VECTOR)
        tx = self.setup_queue(1, vector=1 if vectors else NO_VECTOR)
        self.driver_ok()
        return rx, tx


def fired(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@pytest.fixture
def g() -> Iterator[Guest]:
    with Guest() as guest:
        yield guest


def test_pci_identity_and_capabilities(g: Guest) -> None:
    assert config_read(g.dev, PciCfg.VENDOR_ID, 2) == 0x1AF4
    assert config_read(g.dev, PciCfg.DEVICE_ID, 2) == 0x1041
    assert config_read(g.dev, PciCfg.REVISION_ID, 1) >= 1
    assert config_read(g.dev, PciCfg.SUBSYSTEM_ID, 2) >= 0x40
    assert config_read(g.dev, PciCfg.CLASS_PROG, 4) >> 8 == 0x020000 >> 8
    for t in (CapType.COMMON_CFG, CapType.NOTIFY_CFG, CapType.ISR_CFG, CapType.DEVICE_CFG, CapType.PCI_CFG):
        assert t in g.caps
    assert g.notify_mult == 4
    [vptr] = g.vendor_caps
    vlen = config_read(g.dev, vptr + 2, 1)
    assert vlen % 4 == 0 and config_read(g.dev, vptr + VENDOR_DATA_CAP_VENDOR_ID, 2) not in (0, 0x1AF4)
    table_size = (config_read(g.dev, g.msix_cap + MsixCap.MESSAGE_CONTROL, 2) & 0x7FF) + 1
    assert table_size >= 3 and g.cr(CommonCfg.NUM_QUEUES) == 2


def test_feature_windows_and_negotiation(g: Guest) -> None:
    offered = g.offered()
    for b in (F.VERSION_1, F.ACCESS_PLATFORM, F.INDIRECT_DESC, F.EVENT_IDX, F.IN_ORDER, F.RING_RESET,
              NetF.MAC, NetF.MTU, NetF.STATUS, NetF.SPEED_DUPLEX):
        assert has(offered, b)
    g.cw(CommonCfg.DEVICE_FEATURE_SELECT, 7)
    assert g.cr(CommonCfg.DEVICE_FEATURE) == 0
    g.write_features(bit(F.VERSION_1) | bit(NetF.MAC))
    g.cw(CommonCfg.DRIVER_FEATURE_SELECT, 1)
    assert g.cr(CommonCfg.DRIVER_FEATURE) == 1
    # FEAT-DEV-03: unoffered bit, missing VERSION_1, broken dependency -> FEATURES_OK does not stick
    assert not g.negotiate(offered | bit(NetF.CTRL_VQ))
    assert not g.negotiate(offered & ~bit(F.VERSION_1))
    assert not g.negotiate(bit(F.VERSION_1) | bit(NetF.GUEST_TSO4))
    assert g.negotiate(offered)
    assert g.model.negotiated == offered


def test_reset_and_vectors(g: Guest) -> None:
    g.bring_up()
    assert g.cr(CommonCfg.CONFIG_MSIX_VECTOR) == 2
    g.cw(CommonCfg.CONFIG_MSIX_VECTOR, 99)  # beyond the table: refused (PCI-DEV-61)
    assert g.cr(CommonCfg.CONFIG_MSIX_VECTOR) == NO_VECTOR
    g.cw(CommonCfg.DEVICE_STATUS, 0)
    assert g.status() == 0
    for q in (0, 1):
        g.cw(CommonCfg.QUEUE_SELECT, q)
        assert g.cr(CommonCfg.QUEUE_ENABLE) == 0 and g.cr(CommonCfg.QUEUE_MSIX_VECTOR) == NO_VECTOR
        assert g.cr(CommonCfg.QUEUE_SIZE) == 32768  # the default device's maximum, restored by reset
    g.cw(CommonCfg.QUEUE_SELECT, 5)
    assert g.cr(CommonCfg.QUEUE_SIZE) == 0


def test_queue_fields_64bit_halves_and_bad_size(g: Guest) -> None:
    assert g.negotiate()
    g.cw(CommonCfg.QUEUE_SELECT, 0)
    write_int(g.dev, 0, g.common + CommonCfg.QUEUE_DESC + 4, 4, 0x1)
    write_int(g.dev, 0, g.common + CommonCfg.QUEUE_DESC, 4, 0x2000)
    assert g.cr(CommonCfg.QUEUE_DESC) == 0x1_0000_2000
    g.cw(CommonCfg.QUEUE_SIZE, 24)
    g.cw(CommonCfg.QUEUE_ENABLE, 1)
    assert g.cr(CommonCfg.QUEUE_ENABLE) == 0
    assert g.status() & DeviceStatus.DEVICE_NEEDS_RESET
    assert g.model.errors[-1].req_id == "PCI-DRV-17"


def test_tx_frame_reaches_collector_with_split_header() -> None:
    with Guest() as g:
        col = g.collect()
        calls = g.msix(3)
        assert g.negotiate()
        g.cw(CommonCfg.CONFIG_MSIX_VECTOR, 2)
        g.setup_queue(0, vector=0)
        tx = g.setup_queue(1, vector=1)
        g.driver_ok()
        g.mem.write(0x40000, NetHdr().pack() + FRAME[:5])
        g.mem.write(0x41000, FRAME[5:])
        head = tx.add_chain([(0x40000, 8, False), (0x40008, 4 + 5, False), (0x41000, len(FRAME) - 5, False)])
        tx.kick()
        assert col.take() == [FRAME]
        assert tx.used_idx() == 1 and tx.used_elem(0) == (head, 0)
        assert fired(calls[1]) == 1 and fired(calls[0]) == 0
        tx.kick()  # spurious: nothing new, nothing breaks (SPLIT-DEV-22)
        assert tx.used_idx() == 1 and not g.status() & DeviceStatus.DEVICE_NEEDS_RESET


def test_loopback_rx_delivery() -> None:
    with Guest("virtio-net,wire=loopback") as g:
        rx, tx = g.bring_up()
        rx.add_chain([(0x50000, 2048, True)])
        g.mem.write(0x40000, NetHdr().pack() + FRAME)
        tx.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)])
        tx.kick()
        assert rx.used_idx() == 1
        assert rx.used_elem(0) == (0, HDR_SIZE + len(FRAME))
        hdr = NetHdr.unpack(g.mem.read(0x50000, HDR_SIZE))
        assert hdr.num_buffers == 1 and hdr.flags == 0 and hdr.gso_type == 0
        assert g.mem.read(0x50000 + HDR_SIZE, len(FRAME)) == FRAME
        assert fired(g.calls[0]) == 1
        # no RX buffer left: the next frame is dropped and counted
        tx.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)])
        tx.kick()
        assert g.model.stats.rx_no_buffer == 1 and rx.used_idx() == 1


def test_descriptor_loop_sets_needs_reset_and_config_interrupt(g: Guest) -> None:
    _rx, tx = g.bring_up()
    tx.put_desc(0, 0x40000, 20, DescFlags.NEXT, 1)
    tx.put_desc(1, 0x40000, 20, DescFlags.NEXT, 0)
    tx.add([0])
    tx.kick()
    assert g.status() & DeviceStatus.DEVICE_NEEDS_RESET
    assert g.model.errors[-1].req_id == "SPLIT-DRV-04"
    assert fired(g.calls[2]) == 1 and g.isr() & ISR_CONFIG  # STATUS-DEV-03
    # stopped until reset: a good chain is not processed
    tx.put_desc(2, 0x40000, 20)
    tx.add([2])
    tx.kick()
    assert tx.used_idx() == 0
    g.cw(CommonCfg.DEVICE_STATUS, 0)
    assert g.status() == 0


def test_unmapped_buffer_is_a_recorded_dma_fault(g: Guest) -> None:
    _rx, tx = g.bring_up()
    g.dev.dma_faults()
    tx.add_chain([(MEM + 0x10000, 100, False)])
    tx.kick()
    faults = g.dev.dma_faults()
    assert faults and faults[0].iova == MEM + 0x10000 + HDR_SIZE
    assert g.status() & DeviceStatus.DEVICE_NEEDS_RESET
    assert g.model.errors[-1].req_id == "FEAT-DRV-11"
    assert g.model.endpoint.iommu.fault_log


def test_indirect_tx_and_indirect_with_next_is_refused() -> None:
    with Guest() as g:
        col = g.collect()
        _rx, tx = g.bring_up()
        g.mem.write(0x40000, NetHdr().pack() + FRAME)
        tx.put_desc(0, 0x40000, HDR_SIZE, DescFlags.NEXT, 1, table=0x48000)
        tx.put_desc(1, 0x40000 + HDR_SIZE, len(FRAME), 0, 0, table=0x48000)
        tx.put_desc(0, 0x48000, 32, DescFlags.INDIRECT)
        tx.add([0])
        tx.kick()
        assert col.take() == [FRAME]
        tx.put_desc(1, 0x48000, 32, DescFlags.INDIRECT | DescFlags.NEXT, 2)
        tx.add([1])
        tx.kick()
        assert g.model.errors[-1].req_id == "SPLIT-DRV-09" and not col.take()


def test_event_idx_and_in_order_batching(g: Guest) -> None:
    _rx, tx = g.bring_up()
    g.mem.write(0x40000, NetHdr().pack() + FRAME)
    # used_event = 2: the batch of 3 crosses it, so one interrupt; used ring holds one element (IN_ORDER)
    g.mem.write(tx.avail + tx.lay.used_event, U16.pack(2))
    heads = [tx.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)]) for _ in range(3)]
    tx.kick()
    assert tx.used_idx() == 3 and tx.used_elem(2) == (heads[2], 0)
    assert fired(g.calls[1]) == 1
    assert U16.unpack(g.mem.read(tx.used + tx.lay.avail_event, 2))[0] == 3
    tx.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)])
    tx.kick()  # used_event 2 not crossed by 3 -> 4: no interrupt (SPLIT-DEV-14)
    assert tx.used_idx() == 4 and fired(g.calls[1]) == 0


def test_nothing_before_driver_ok(g: Guest) -> None:
    assert g.negotiate()
    tx = g.setup_queue(1)
    tx.add_chain([(0x40000, 100, False)])
    reads: list[int] = []
    g.model.endpoint.iommu.observers.append(lambda acc, iova, n: reads.append(iova))
    tx.kick()
    assert not reads and g.model.ignored_kicks == 1


def test_queue_reset_with_ring_reset(g: Guest) -> None:
    _rx, tx = g.bring_up()
    g.mem.write(0x40000, NetHdr().pack() + FRAME)
    tx.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)])
    tx.kick()
    g.cw(CommonCfg.QUEUE_SELECT, 1)
    g.cw(CommonCfg.QUEUE_RESET, 1)
    assert g.cr(CommonCfg.QUEUE_RESET) == 0 and g.cr(CommonCfg.QUEUE_ENABLE) == 0
    q = g.model.queues[1]
    assert q.last_avail_idx == 0 and q.used_idx == 0
    tx2 = g.setup_queue(1, size=8, vector=1)  # RESET-DEV-05: the new, smaller size is used
    g.mem.write(0x40000, NetHdr().pack() + FRAME)
    tx2.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)])
    tx2.kick()
    assert tx2.used_idx() == 1 and g.model.queues[1].size == 8


def test_isr_and_intx_without_msix() -> None:
    with Guest("virtio-net,wire=loopback") as g:
        intx = os.eventfd(0, os.EFD_NONBLOCK)
        g.calls.append(intx)
        g.dev.set_irqs(IrqIndex.INTX, 0, [intx])
        rx, tx = g.bring_up(vectors=False)
        rx.add_chain([(0x50000, 2048, True)])
        g.mem.write(0x40000, NetHdr().pack() + FRAME)
        tx.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)])
        tx.kick()
        assert fired(intx) == 1
        assert config_read(g.dev, PciCfg.STATUS, 2) & PCI_STATUS_INTERRUPT
        assert g.isr() == ISR_QUEUE and g.isr() == 0  # PCI-DEV-41
        assert not config_read(g.dev, PciCfg.STATUS, 2) & PCI_STATUS_INTERRUPT


def test_link_change_bumps_generation_and_notifies(g: Guest) -> None:
    g.bring_up()
    gen = g.cr(CommonCfg.CONFIG_GENERATION)
    assert g.devcfg(NetCfg.STATUS, 2) == VIRTIO_NET_S_LINK_UP
    g.model.set_link(False)
    assert g.devcfg(NetCfg.STATUS, 2) == 0 and g.cr(CommonCfg.CONFIG_GENERATION) != gen
    assert fired(g.calls[2]) == 1 and g.isr() == ISR_CONFIG
    assert g.devcfg(NetCfg.MTU, 2) == 1500 and g.devcfg(NetCfg.MAX_VIRTQUEUE_PAIRS, 2) == 1
    assert bytes(g.devcfg(NetCfg.MAC + i, 1) for i in range(6)) == bytes.fromhex("020000000001")


def test_pci_cfg_window(g: Guest) -> None:
    ptr, _ = g.caps[CapType.PCI_CFG]
    common = g.common
    config_write(g.dev, ptr + 4, 1, 0)  # bar
    config_write(g.dev, ptr + 8, 4, common + CommonCfg.QUEUE_SELECT)  # offset
    config_write(g.dev, ptr + 12, 4, 2)  # length
    config_write(g.dev, ptr + PCI_CFG_DATA, 2, 1)  # PCI-DEV-51: write through the window
    assert g.cr(CommonCfg.QUEUE_SELECT) == 1
    config_write(g.dev, ptr + 8, 4, common + CommonCfg.NUM_QUEUES)
    assert config_read(g.dev, ptr + PCI_CFG_DATA, 2) == 2  # PCI-DEV-52


def test_kick_through_ioeventfd_in_event_loop_thread() -> None:
    with Guest() as g:
        col = g.collect()
        _rx, tx = g.bring_up()
        kick = os.eventfd(0, os.EFD_NONBLOCK)
        g.calls.append(kick)
        g.cw(CommonCfg.QUEUE_SELECT, 1)
        off = g.notify_base + g.cr(CommonCfg.QUEUE_NOTIFY_OFF) * g.notify_mult
        assert g.dev.ioeventfd(0, off, 2, 1, kick)
        g.mem.write(0x40000, NetHdr().pack() + FRAME)
        tx.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)])
        os.eventfd_write(kick, 1)
        ready, _, _ = select.select([g.calls[1]], [], [], 10)
        assert ready and fired(g.calls[1]) == 1
        assert col.take() == [FRAME] and tx.used_idx() == 1


def test_targets_registry_keys_and_model_class(tmp_path: object) -> None:
    reg = default_registry()
    dev = reg.open("sim:virtio-net,queues=2,mac=02:11:22:33:44:55,mtu=9000,qsize=1024")
    try:
        assert isinstance(dev, SimNetDevice)
        assert dev.model.pairs == 2 and dev.model.mtu == 9000 and dev.model.queues[0].max_size == 1024
        assert len(dev.model.queues) == 5  # 2 pairs + control queue (MQ needs CTRL_VQ)
    finally:
        dev.close()
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        reg.open("sim:virtio-net,bogus=1")
    with pytest.raises(ValueError, match="not a VirtioNetDevice"):
        reg.open("sim:virtio-net,model=collections:OrderedDict")
    dev = reg.open(f"sim:virtio-net,model={__name__}:NoWrapUsed,features=0x100000020")
    try:
        assert isinstance(dev, SimNetDevice) and type(dev.model) is NoWrapUsed
        assert dev.model.offered == 0x100000020
    finally:
        dev.close()


def test_pcap_tap_on_loopback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "wire.pcap")
    with Guest(f"virtio-net,pcap={path}") as g:
        _rx, tx = g.bring_up()
        g.mem.write(0x40000, NetHdr().pack() + FRAME)
        tx.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)])
        tx.kick()
    assert [bytes(p) for p in rdpcap(path)] == [FRAME]


class NoWrapUsed(VirtioNetDevice):
    """Seeded bug used by the target test: used idx wraps at 2^15."""

    def next_used_idx(self, used_idx: int, count: int) -> int:
        return (used_idx + count) % 0x8000


def test_mq_control_queue_vq_pairs_set() -> None:
    with Guest("virtio-net,queues=2,wire=none") as g:
        assert g.negotiate()
        ctrl = g.setup_queue(4)
        g.driver_ok()
        g.mem.write(0x60000, struct.pack("<BBH", 4, 0, 2))
        ctrl.add_chain([(0x60000, 4, False), (0x61000, 1, True)])
        ctrl.kick()
        assert ctrl.used_elem(0) == (0, 1) and g.mem.read(0x61000, 1) == b"\x00"
        assert g.model.active_pairs == 2


@given(table=st.binary(min_size=16 * 16, max_size=16 * 16), heads=st.lists(st.integers(0, 0xFFFF), max_size=20),
       jump=st.integers(0, 0xFFFF))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_hostile_rings_never_crash(g: Guest, table: bytes, heads: list[int], jump: int) -> None:
    g.model.errors.clear()
    rx, tx = g.bring_up()
    g.mem.write(tx.desc, table)
    g.mem.write(rx.desc, table)
    tx.add(heads)
    rx.add(heads)
    if jump % 7 == 0:
        g.mem.write(tx.avail + 2, U16.pack(jump))
    tx.kick()
    g.model.receive(FRAME)
    # Either processed cleanly or stopped with a named driver error; the device never raised.
    if g.status() & DeviceStatus.DEVICE_NEEDS_RESET:
        assert g.model.errors and g.model.errors[0].req_id.split("-")[1] == "DRV"
    for fault in g.dev.dma_faults():
        assert fault.iova + fault.size > MEM or fault.iova >= MEM


def test_pair_wire_between_two_devices() -> None:
    with Guest() as a, Guest() as b:
        wire = PairWire(a.model, b.model)
        a.model.attach(wire.port_a)
        b.model.attach(wire.port_b)
        _rx_a, tx_a = a.bring_up()
        rx_b, _tx_b = b.bring_up()
        rx_b.add_chain([(0x50000, 2048, True)])
        a.mem.write(0x40000, NetHdr().pack() + FRAME)
        tx_a.add_chain([(0x40000, HDR_SIZE + len(FRAME), False)])
        tx_a.kick()
        assert rx_b.used_elem(0) == (0, HDR_SIZE + len(FRAME)) and wire.frames == 1
        assert b.mem.read(0x50000 + HDR_SIZE, len(FRAME)) == FRAME


def test_control_queue_asks_for_the_next_kick_with_event_idx() -> None:
    """With VIRTIO_F_EVENT_IDX the control queue, like a TX queue, sets avail_event to the next command it wants a kick
    for: a driver deciding by avail_event (as Linux and DPDK do) would otherwise never ring for its second command."""
    with Guest("virtio-net,wire=none,queues=2") as g:
        assert g.negotiate(bit(F.VERSION_1) | bit(F.ACCESS_PLATFORM) | bit(F.EVENT_IDX) | bit(NetF.CTRL_VQ)
                           | bit(NetF.MQ))
        ctrl = g.setup_queue(4)
        g.driver_ok()
        size = ctrl.size
        for n in (1, 2):
            g.mem.write(0x40000, bytes([4, 0]) + struct.pack("<H", n))  # VIRTIO_NET_CTRL_MQ, VQ_PAIRS_SET
            g.mem.write(0x40100, b"\xff")
            ctrl.add_chain([(0x40000, 4, False), (0x40100, 1, True)])
            ctrl.kick()
            assert g.mem.read(0x40100, 1) == b"\x00"  # VIRTIO_NET_OK
            avail_event = U16.unpack(g.mem.read(ctrl.used + SplitLayout(size).avail_event, 2))[0]
            assert avail_event == n, f"after command {n} avail_event is {avail_event}"
