"""The project's vfio-user client (:class:`~backend.pci.vfio_user.VfioUserPciDevice`) against an independent
server: libvfio-user's sample ``gpio-pci-idio-16`` (nutanix/libvfio-user, C), built from source by
:mod:`sim.vfio_user.libvfio_user_peer` into ``build/peers``.

The sample is a conventional PCI function 494f:0dc8 with one 0x100-byte BAR2 (GPIO registers: a write of a
mask to 0x0/0x4 toggles output pins 0-7/8-15, 0x1/0x5 read back which pins were toggled a multiple of three
times), INTx, DMA and migration callbacks. Each test starts its own server (``-v``: it logs what it did, which
the tests read) and stops it by PID at the end, also on failure. Without libvfio-user's source or its build
tools the tests skip with the install line (they fail when ``CI=true``).
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.pci import vfio_user_msg as m
from backend.pci.device import DmaPerm, IrqIndex, RegionFlags, RegionIndex
from backend.pci.vfio_user import VfioUserError, VfioUserPciDevice
from sim.child_process import ChildError, ChildProcess
from sim.memory import GuestMemory
from sim.vfio_user.libvfio_user_peer import LibvfioUserBuild
from tests.conftest import GPA, MEM_SIZE

SAMPLE = "gpio-pci-idio-16"
#: Bound on the server's start (a few milliseconds in practice) and on a line it logs after a request.
READY_TIMEOUT = 10.0
LOG_TIMEOUT = 5.0
#: Longest wait between two connection attempts while the server is not listening yet.
RETRY = 0.02
VENDOR, DEVICE = 0x494F, 0x0DC8
BAR2_SIZE = 0x100


@dataclass
class Gpio:
    server: ChildProcess
    dev: VfioUserPciDevice

    def logged(self, pattern: str, since: int = 0) -> re.Match[str]:
        """The server's log line matching ``pattern`` (after output offset ``since``), awaited under a bound."""
        return self.server.wait_for(pattern, LOG_TIMEOUT, since=since)


def connect_when_listening(server: ChildProcess, path: str, timeout: float = READY_TIMEOUT) -> VfioUserPciDevice:
    """The client, connected once ``server`` listens on ``path``.

    The sample prints nothing when it listens, and a probe connection would not do: it takes the first
    connection as its client and exits when that hangs up before VERSION. So the client itself retries while
    the socket is absent or not listening yet (bind comes before listen), waiting between attempts on the
    server's exit (an early exit is reported with its output), under one deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return VfioUserPciDevice(path, name=f"libvfio-user {SAMPLE}")
        except VfioUserError as exc:
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            raise ChildError(f"{server.name}: not listening on {path} within {timeout} s:\n{server.tail()}")
        try:
            code = server.proc.wait(min(RETRY, left))
        except subprocess.TimeoutExpired:
            continue
        raise ChildError(f"{server.name} exited ({code}) before listening on {path}:\n{server.tail()}")


@pytest.fixture
def gpio(libvfio_user: LibvfioUserBuild, sock: str, tmp_path: Path, started: ExitStack) -> Iterator[Gpio]:
    server = started.enter_context(ChildProcess([str(libvfio_user.sample(SAMPLE)), "-v", sock],
                                                log=tmp_path / f"{SAMPLE}.log", name=SAMPLE))
    dev = connect_when_listening(server, sock)
    try:
        yield Gpio(server, dev)
    finally:
        dev.close()


def config_u16(dev: VfioUserPciDevice, offset: int) -> int:
    return int.from_bytes(dev.region_read(RegionIndex.CONFIG, offset, 2), "little")


def test_version_and_device_info(gpio: Gpio) -> None:
    """libvfio-user speaks 0.2 and answers the minor version asked (0.1 here) with its limits; it names no
    vdpa_bench capability, so the client's extensions stay off and say so instead of failing later."""
    dev = gpio.dev
    assert (dev.server_version.major, dev.server_version.minor) == (m.VERSION_MAJOR, m.VERSION_MINOR) == (0, 1)
    caps = dev.server_caps
    assert (caps.max_msg_fds, caps.max_data_xfer_size) == (8, 1 << 20)
    assert caps.bench is None and dev.bench == m.BenchCaps() and dev.model is None
    assert dev.max_send_fds == 8 and dev.xfer == 1 << 20
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        assert dev.ioeventfd(RegionIndex.BAR2, 0, 1, None, efd) is False
    finally:
        os.close(efd)
    with pytest.raises(VfioUserError, match="no DMA faults") as refused:
        dev.dma_faults()
    assert refused.value.errno == errno.ENOTSUP

    info = dev.device_info
    assert info.flags == m.DeviceFlag.PCI | m.DeviceFlag.RESET
    assert (info.num_regions, info.num_irqs) == (m.PCI_NUM_REGIONS, m.PCI_NUM_IRQS) == (9, 5)
    gpio.logged(r"devinfo flags 0x3, num_regions 9, num_irqs 5")


def test_region_info(gpio: Gpio) -> None:
    """All nine regions are asked for: BAR2 and config space have a size (read/write, trapped: no mmap), the
    others (BAR0/1/3/4/5, ROM, VGA) none."""
    sized: dict[int, int] = {RegionIndex.BAR2: BAR2_SIZE, RegionIndex.CONFIG: 0x100}  # conventional PCI: 256 of config
    for index in range(m.PCI_NUM_REGIONS):
        info = gpio.dev.region_info(index)
        assert info.index == index
        if index in sized:
            assert (info.size, info.flags) == (sized[index], RegionFlags.READ | RegionFlags.WRITE), info
        else:
            assert (info.size, info.flags) == (0, RegionFlags(0)), info
        assert gpio.dev.region_mmap(index) is None
        gpio.logged(rf"region_info\[{index}\] offset 0 flags {'0x3' if index in sized else '0'} "
                    rf"size {sized.get(index, 0)} argsz 32")


def test_config_space(gpio: Gpio) -> None:
    dev = gpio.dev
    assert (config_u16(dev, 0x00), config_u16(dev, 0x02)) == (VENDOR, DEVICE)
    assert dev.region_read(RegionIndex.CONFIG, 0, 4) == bytes.fromhex("4f49c80d")
    assert dev.region_read(RegionIndex.CONFIG, 0x0E, 1) == b"\x00"  # header type 0, single function
    gpio.logged(r"region7: read 0xdc8494f from \(0:4\)")


def test_bar2_read_write(gpio: Gpio) -> None:
    """Output pins toggled by writes show on the input registers when toggled a multiple of three times."""
    dev = gpio.dev
    bar2 = RegionIndex.BAR2
    assert dev.region_read(bar2, 0x1, 1) == b"\xff" and dev.region_read(bar2, 0x5, 1) == b"\xff"  # all at 0
    dev.region_write(bar2, 0x0, b"\xff")  # pins 0-7 once
    dev.region_write(bar2, 0x4, b"\x0f")  # pins 8-11 once
    gpio.logged(r"region2: wrote 0xff to \(0:1\)")
    assert dev.region_read(bar2, 0x1, 1) == b"\x00"
    assert dev.region_read(bar2, 0x5, 1) == b"\xf0"
    for _ in range(2):
        dev.region_write(bar2, 0x0, b"\x03")  # pins 0 and 1 reach three
    assert dev.region_read(bar2, 0x1, 1) == b"\x03"
    # Registers without a role read as the buffer the library passed: the whole BAR is accessible.
    assert len(dev.region_read(bar2, BAR2_SIZE - 4, 4)) == 4


def _maps_of(pid: int, name: str) -> list[str]:
    return [line for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if name in line]


def test_dma_map_and_unmap(gpio: Gpio, mem: GuestMemory) -> None:
    """Guest memory passed as its memfd (SCM_RIGHTS): the server maps it (its own mapping of the memfd, seen in
    /proc/PID/maps, made before it replies) and unmaps it on DMA_UNMAP."""
    region = mem.regions[0]
    pid = gpio.server.pid
    assert not _maps_of(pid, f"memfd:{region.name}")
    gpio.dev.dma_map(GPA, MEM_SIZE, region.fd, 0, DmaPerm.RW)
    gpio.logged(rf"adding DMA region \[{GPA:#x}, {GPA + MEM_SIZE:#x}\) offset=0 flags=0x3")
    gpio.logged(rf"mapped DMA region iova=\[{GPA:#x}, {GPA + MEM_SIZE:#x}\)")
    assert _maps_of(pid, f"memfd:{region.name}"), "the server did not map the memfd it was passed"
    gpio.dev.dma_unmap(GPA, MEM_SIZE)
    gpio.logged(rf"removing DMA region \[{GPA:#x}, {GPA + MEM_SIZE:#x}\)")
    assert not _maps_of(pid, f"memfd:{region.name}")


def test_irq_info_and_set_irqs(gpio: Gpio) -> None:
    """INTx has one interrupt (and ERR/REQ one each, as libvfio-user always offers), MSI and MSI-X none; an
    eventfd bound to INTx reaches the server (logged with the server's fd number), then is unbound."""
    dev = gpio.dev
    counts = {i: dev.irq_count(i) for i in IrqIndex}
    assert counts == {IrqIndex.INTX: 1, IrqIndex.MSI: 0, IrqIndex.MSIX: 0, IrqIndex.ERR: 1, IrqIndex.REQ: 1}
    efd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        dev.set_irqs(IrqIndex.INTX, 0, [efd])
        gpio.logged(r"setting IRQ INTx flags=0x24 range \[0, 1\)")  # DATA_EVENTFD | ACTION_TRIGGER
        gpio.logged(r"event fd\[0\]=\d+")
        mark = gpio.server.mark()
        dev.set_irqs(IrqIndex.INTX, 0, [])  # DATA_NONE, count 0: the index disabled
        gpio.logged(r"disabling IRQ type INTx range \[0, 1\)", mark)
    finally:
        os.close(efd)
    with pytest.raises(VfioUserError, match="DEVICE_SET_IRQS refused") as refused:
        dev.set_irqs(IrqIndex.MSIX, 0, [None])  # MSI-X has no vectors here
    assert refused.value.errno == errno.EINVAL


def test_device_reset(gpio: Gpio) -> None:
    dev = gpio.dev
    dev.reset()
    gpio.logged(r"device reset by client")
    assert config_u16(dev, 0) == VENDOR


def test_bogus_region_index(gpio: Gpio) -> None:
    """Region 9 (past VGA) and 100 do not exist: the server answers EINVAL, the client raises an error naming
    the access, and the connection keeps working (the server is still serving this client)."""
    dev = gpio.dev
    for index in (m.PCI_NUM_REGIONS, 100):
        with pytest.raises(VfioUserError, match=rf"REGION_READ of region {index} \[0x0, \+0x4\) refused: "
                                                rf"Invalid argument \(errno 22\)") as refused:
            dev.region_read(index, 0, 4)
        assert refused.value.errno == errno.EINVAL
        gpio.logged(rf"bad region index {index}")
    with pytest.raises(VfioUserError, match=r"REGION_WRITE of region 100 .* refused") as refused:
        dev.region_write(100, 0, b"\x01")
    assert refused.value.errno == errno.EINVAL
    assert config_u16(dev, 0) == VENDOR
    dev.region_write(RegionIndex.BAR2, 0x0, b"\x01")
    assert dev.region_read(RegionIndex.BAR2, 0x1, 1) == b"\xfe"
    assert gpio.server.returncode is None
