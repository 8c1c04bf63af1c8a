"""The SIGBUS guard (backend/sigbus_guard.py): guest memory whose file is truncated under a mapping faults instead of
killing the process; a SIGBUS anywhere else still kills it.

The serve-level fault (a frontend truncating its memfd mid-session) is tests/interop/test_peer_faults.py.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from backend.pci.device import DmaFaultError, DmaPerm
from backend.sigbus_guard import MAX_RANGES, address_of, process_guard
from backend.vhost_user.memory import MemoryRegion, MemoryTable
from sim.iommu import Iommu

SIZE = 16 << 12
IOVA = 0x1_0000_0000
NOTICE = 5.0


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)  # no MFD_ALLOW_SEALING: like DPDK's, it cannot be sealed
    os.ftruncate(fd, SIZE)
    os.pwrite(fd, b"ring", 0)
    yield fd
    os.close(fd)


def live_slots() -> int:
    return int((process_guard()._table[:, 0] != 0).sum())


def test_truncated_dma_mapping_faults_instead_of_killing(memfd: int) -> None:
    iommu = Iommu()
    before = live_slots()
    iommu.map(IOVA, SIZE, memfd, 0, DmaPerm.RW)
    assert live_slots() == before + 1
    assert iommu.read_quick(IOVA, 4) == b"ring"
    os.ftruncate(memfd, 4096)
    assert iommu.read_quick(IOVA, 4) == b"ring"  # the first page is still there
    # The access past the end completes on a zero page (it would have been a SIGBUS) ...
    assert iommu.read_quick(IOVA + 8192, 4) == bytes(4)
    deadline = time.monotonic() + NOTICE
    while not any("truncated" in f.reason for f in iommu.fault_log):  # ... reported by the guard's thread
        assert time.monotonic() < deadline, "the guard did not report the fault"
        time.sleep(0.01)  # polling a fault log the guard's thread fills; the bound is the deadline
    fault = next(f for f in iommu.fault_log if "truncated" in f.reason)
    assert fault.iova == IOVA + 8192
    # ... and from then on every access to the mapping faults, on the quick paths too.
    with pytest.raises(DmaFaultError, match="its file was truncated"):
        iommu.read_quick(IOVA, 4)
    with pytest.raises(DmaFaultError, match="its file was truncated"):
        iommu.write_u16(IOVA + 2, 1)
    iommu.unmap_all()
    assert live_slots() == before


def test_memory_table_names_the_truncated_region(memfd: int) -> None:
    table = MemoryTable.build([MemoryRegion(IOVA, SIZE, 0x7000_0000, 0, os.dup(memfd))])
    try:
        assert table.truncated() == []
        os.ftruncate(memfd, 0)
        view = table.gpa_view(IOVA + 4096, 8)
        assert bytes(view) == bytes(8)  # guarded: zeros, not a SIGBUS
        view.release()
        [lost] = table.truncated()
        assert "region 0" in lost and "truncated to 0x0 bytes, short of offset + size 0x10000" in lost
    finally:
        table.close()


def test_a_dropped_iommu_gives_its_ranges_back(memfd: int) -> None:
    before = live_slots()
    for _ in range(MAX_RANGES + 10):  # more than the table holds: each dropped Iommu must release its range
        iommu = Iommu()
        iommu.map(IOVA, SIZE, memfd, 0, DmaPerm.RW)
        del iommu
    assert live_slots() <= before + 1


UNGUARDED = """
import mmap, os
from backend.sigbus_guard import process_guard
process_guard()
fd = os.memfd_create("not-guest-memory")
os.ftruncate(fd, 8192)
mm = mmap.mmap(fd, 8192)
os.ftruncate(fd, 0)
print("read", mm[4096], flush=True)
"""


def test_a_sigbus_outside_guest_memory_still_kills() -> None:
    """The guard hides nothing else: a SIGBUS on a mapping it does not guard ends the process as before."""
    proc = subprocess.run([sys.executable, "-c", UNGUARDED], capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stdout, proc.stderr)
    assert "read" not in proc.stdout


def test_the_guard_takes_its_handler_back(memfd: int) -> None:
    """faulthandler.enable() (a pytest session run in process does it) replaces the SIGBUS handler; the next
    guarded mapping installs the guard's own again, so truncated memory still faults instead of killing."""
    import faulthandler

    process_guard()
    was_enabled = faulthandler.is_enabled()
    faulthandler.enable()
    try:
        iommu = Iommu()
        iommu.map(IOVA, SIZE, memfd, 0, DmaPerm.RW)
        os.ftruncate(memfd, 4096)
        assert iommu.read_quick(IOVA + 8192, 4) == bytes(4)  # a zero page, not a SIGBUS
        iommu.unmap_all()
    finally:
        if not was_enabled:
            faulthandler.disable()


def test_the_range_flag_is_set_before_the_access_returns(memfd: int) -> None:
    """Native code that maps guest memory itself (the RTL bridge) reads the range's flag right after an access: the
    handler sets it on the faulting thread, before the access completes; a new range starts clear."""
    guard = process_guard()
    mm = mmap.mmap(memfd, SIZE)
    slot = guard.protect(address_of(mm), SIZE)
    try:
        flag = ctypes.c_uint64.from_address(guard.fault_flag(slot))
        assert mm[4100] == 0 and flag.value == 0
        os.ftruncate(memfd, 4096)
        assert mm[8192] == 0  # a zero page, not a SIGBUS ...
        assert flag.value == 1  # ... and flagged already, with no wait for the dispatcher
    finally:
        guard.release(slot)
    again = guard.protect(address_of(mm), SIZE)
    try:
        assert ctypes.c_uint64.from_address(guard.fault_flag(again)).value == 0
    finally:
        guard.release(again)
        mm.close()


def test_rtl_dma_into_truncated_memory_is_a_reported_fault() -> None:
    """The RTL bridge maps guest memory itself; a transmit buffer in a page the frontend truncated away: the
    burst is answered SLVERR and reported as the truncation (never zeros read as data, never a SIGBUS), the
    function sets DEVICE_NEEDS_RESET, and this process (the device's, as in ``serve --device rtl:``) goes on."""
    from backend.targets import default_registry
    from backend.virtio.split_ring import DescFlags, Descriptor
    from testbenches.conformance.harness import NEEDS_RESET, TX, Bench, WireProbes, wait_fd
    from tests.rtl_build import require_rtl_build

    spec = "rtl:virtio-net,wire=none"
    require_rtl_build(spec)
    registry = default_registry()
    opened: list[Any] = []

    def open_target(name: str | None = None) -> Any:
        dev = registry.open(name or spec)
        opened.append(dev)
        return dev

    before = live_slots()
    try:
        with Bench(open_target, spec, WireProbes()).rig() as r:
            d = r.up(queue_size=8, rx_buffers=0)
            region = r.mem.regions[0]
            tail = region.gpa + region.size - 4096  # far above the rings and the header the allocator placed
            ring = d.queues[TX]
            hdr = ring.alloc_buffer(bytes(d.hdr_len))
            ring.add_raw({0: Descriptor(hdr, d.hdr_len, DescFlags.NEXT, 1), 1: Descriptor(tail, 64, 0, 0)}, 0)
            ring.publish()
            r.pci.dma_faults()
            os.ftruncate(region.fd, region.size // 2)  # the rings' half stays
            r.doorbell(TX)
            assert wait_fd(d.irq_fds["config"], NOTICE), "no configuration change notification"
            faults = r.pci.dma_faults()
            gone = [f for f in faults if "its file was truncated" in f.reason]
            assert gone and all(f.access == DmaPerm.READ and "SLVERR" in f.reason for f in gone), faults
            assert tail <= gone[0].iova < tail + 64, faults
            assert d.transport.status() & NEEDS_RESET
            assert live_slots() > before  # the bridge's mapping is guarded while mapped ...
    finally:
        for dev in opened:
            dev.close()
    assert live_slots() == before  # ... and released with it
