"""Unit tests of the virtual platform: guest memory, IOMMU, PCI endpoint framework, MSI-X."""

from __future__ import annotations

import os
import select
import struct
import tempfile
import threading

import pytest

from backend.pci.device import (
    DmaFaultError,
    DmaPerm,
    IrqIndex,
    PciError,
    RegionIndex,
    config_read,
    config_write,
)
from backend.virtio.pci_regs import (
    MSIX_CONTROL_FUNCTION_MASK,
    PCI_COMMAND_MASTER,
    PCI_STATUS_CAP_LIST,
    PciCfg,
    walk_capabilities,
)
from sim.iommu import Iommu
from sim.memory import Allocator, GuestMemory
from sim.pci import Bar, ConfigSpace, Msix, PciEndpoint, Register, RegisterBlock
from sim.pci_device import SimPciDevice


def test_guest_memory_regions_share_through_fd() -> None:
    with GuestMemory() as mem:
        mem.add_region(0, 1 << 20, "low")
        mem.add_region(1 << 30, 1 << 20, "high")
        with pytest.raises(ValueError, match="overlaps"):
            mem.add_region(0x80000, 1 << 20)
        mem.write((1 << 30) + 8, b"abc")
        fd, off = mem.fd_offset((1 << 30) + 8)
        assert os.pread(fd, 3, off) == b"abc"


def test_allocator_alignment_and_reuse() -> None:
    a = Allocator(0x1000, 0x1000)
    x = a.alloc(10, align=16)
    y = a.alloc(100, align=64)
    assert x % 16 == 0 and y % 64 == 0 and y >= x + 10
    a.free(x)
    a.free(y)
    assert a.alloc(0x1000, align=0x1000) == 0x1000


def test_iommu_faults_are_recorded_never_silent() -> None:
    with GuestMemory.single(1 << 16) as mem:
        io = Iommu()
        io.map(0x10000, 1 << 16, mem.regions[0].fd, 0, DmaPerm.READ)
        assert io.read(0x10000, 4) == b"\0\0\0\0"
        with pytest.raises(DmaFaultError) as w:
            io.write(0x10000, b"x")  # read-only mapping
        assert w.value.fault.access == DmaPerm.WRITE
        with pytest.raises(DmaFaultError, match="no mapping"):
            io.read(0x1FFFE, 4)  # straddles the end of the mapping
        faults = io.drain_faults()
        assert [f.iova for f in faults] == [0x10000, 0x1FFFE]
        assert io.drain_faults() == [] and len(io.fault_log) == 2
        with pytest.raises(ValueError, match="overlaps"):
            io.map(0x18000, 1 << 16, mem.regions[0].fd, 0, DmaPerm.RW)
        with pytest.raises(ValueError, match="splits"):
            io.unmap(0x10000, 0x1000)
        io.unmap(0x10000, 1 << 16)
        assert io.mappings() == []


def test_iommu_access_spanning_two_mappings() -> None:
    with GuestMemory.single(1 << 16) as mem:
        io = Iommu()
        fd = mem.regions[0].fd
        io.map(0, 0x8000, fd, 0, DmaPerm.RW)
        io.map(0x8000, 0x8000, fd, 0x8000, DmaPerm.RW)
        io.write(0x7FFE, b"wxyz")
        assert mem.read(0x7FFE, 4) == b"wxyz" and io.read(0x7FFE, 4) == b"wxyz"


def _endpoint(written: threading.Event | None = None) -> tuple[PciEndpoint, dict[str, int]]:
    state = {"reg": 0, "q": 0}

    def write_reg(value: int) -> None:
        state["reg"] = value
        if written is not None:
            written.set()

    block = RegisterBlock("regs", 0x20, [
        Register("reg", 0x0, 4, lambda: state["reg"], write_reg),
        Register("addr", 0x8, 8, lambda: state["q"], lambda v: state.__setitem__("q", v)),
        Register("ro", 0x10, 2, lambda: 0xBEEF),
    ])
    bar0 = Bar(0, 0x4000)
    bar0.mount(0, block)
    msix = Msix(4, 0, 0x1000, 0x2000)
    bar0.mount(0x1000, msix.table_block)
    bar0.mount(0x2000, msix.pba_block)
    cfg = ConfigSpace(vendor_id=0x1AF4, device_id=0x1041, revision=1, class_code=0x020000,
                      subsystem_vendor_id=0x1AF4, subsystem_id=0x40, bars=[bar0])
    return PciEndpoint(cfg, [bar0], msix), state


def test_register_block_partial_and_readonly_writes() -> None:
    ep, state = _endpoint()
    ep.bar_write(0, 0x8, struct.pack("<I", 0x11223344))
    ep.bar_write(0, 0xC, struct.pack("<I", 0x55667788))  # upper half separately (PCI-DEV-08)
    assert state["q"] == 0x5566778811223344
    ep.bar_write(0, 0x10, b"\0\0")
    assert ep.bar_read(0, 0x10, 2) == b"\xef\xbe"
    assert ep.bar_read(0, 0x0, 2) == b"\0\0"


def test_config_space_bar_sizing_and_caps() -> None:
    ep, _ = _endpoint()
    dev = SimPciDevice(ep)
    try:
        assert config_read(dev, PciCfg.STATUS, 2) & PCI_STATUS_CAP_LIST
        config_write(dev, PciCfg.BAR0, 4, 0xFFFFFFFF)
        mask = config_read(dev, PciCfg.BAR0, 4)
        assert (~(mask & ~0xF) + 1) & 0xFFFFFFFF == 0x4000 and mask & 0x4  # 64-bit BAR of 16 KiB
        caps = walk_capabilities(lambda o, n: dev.region_read(RegionIndex.CONFIG, o, n))
        assert [c.cap_id for c in caps] == [0x11]
    finally:
        dev.close()


def test_msix_masking_pends_and_delivers_on_unmask() -> None:
    ep, _ = _endpoint()
    dev = SimPciDevice(ep)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        config_write(dev, PciCfg.COMMAND, 2, PCI_COMMAND_MASTER)
        dev.set_irqs(IrqIndex.MSIX, 1, [efd])
        assert ep.msix is not None
        # mask the whole function through the capability, fire, nothing arrives but PBA is set
        ctrl_off = ep.msix.cap.offset + 2
        config_write(dev, ctrl_off, 2, config_read(dev, ctrl_off, 2) | MSIX_CONTROL_FUNCTION_MASK)
        assert not ep.msix.fire(1)
        assert dev.region_read(0, 0x2000, 1)[0] == 0b10
        assert select.select([efd], [], [], 0)[0] == []
        config_write(dev, ctrl_off, 2, config_read(dev, ctrl_off, 2) & ~MSIX_CONTROL_FUNCTION_MASK)
        assert select.select([efd], [], [], 1.0)[0] == [efd]
        assert os.eventfd_read(efd) == 1 and dev.region_read(0, 0x2000, 1)[0] == 0
    finally:
        dev.close()
        os.close(efd)


def test_ioeventfd_performs_the_register_write() -> None:
    written = threading.Event()
    ep, state = _endpoint(written)
    dev = SimPciDevice(ep)
    kick = os.eventfd(0)
    try:
        assert dev.ioeventfd(0, 0x0, 4, 0x1234, kick)
        os.eventfd_write(kick, 1)
        assert written.wait(5.0), "the device loop did not perform the doorbell write"
        assert state["reg"] == 0x1234
    finally:
        dev.close()
        os.close(kick)


def test_ioeventfd_on_an_unpollable_fd_is_refused_and_keeps_nothing() -> None:
    """A regular file cannot be waited on: the refusal names the fd and no registration is left behind
    (a kept one would outlive the session that made it, and fire on whatever later reuses the number)."""
    ep, _ = _endpoint(threading.Event())
    dev = SimPciDevice(ep)
    try:
        with tempfile.TemporaryFile() as f, pytest.raises(PciError, match=f"ioeventfd on fd {f.fileno()}"):
            dev.ioeventfd(0, 0x0, 4, 1, f.fileno())
        assert not dev._ioeventfds and dev.loop.watched == 0
    finally:
        dev.close()


def test_a_stuck_thread_is_named_where_it_waits() -> None:
    """The RTL runner's "delivery thread is stuck" error carries where that thread is."""
    from sim.rtl.runner import _where

    release = threading.Event()
    stuck = threading.Thread(target=release.wait, name="stuck")
    stuck.start()
    try:
        where = _where(stuck)
    finally:
        release.set()
        stuck.join()
    assert "wait" in where and "threading.py" in where
    assert _where(None) == "(not running)" == _where(stuck)
