"""The SIGBUS guard (backend/sigbus_guard.py): guest memory whose file is truncated under a mapping faults instead of
killing the process; a SIGBUS anywhere else still kills it.

The serve-level fault (a frontend truncating its memfd mid-session) is tests/interop/test_peer_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from backend.pci.device import DmaFaultError, DmaPerm
from backend.sigbus_guard import MAX_RANGES, process_guard
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
