"""The vhost-user memory table: validation, fd ownership, translation, lazy mapping, device programming."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import resource
import socket
from collections.abc import Iterator
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.pci.device import DmaPerm
from backend.targets import default_registry
from backend.vhost_user.memory import (
    AddressSpace,
    MemoryRegion,
    MemoryTable,
    MemoryTableError,
)
from models.targets import SimNetDevice

PAGE = mmap.PAGESIZE
MB = 1 << 20


def memfd(size: int, name: str = "vu-mem") -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def region(gpa: int, size: int, uva: int, offset: int = 0, *, file_size: int | None = None) -> MemoryRegion:
    return MemoryRegion(gpa, size, uva, offset, memfd(offset + size if file_size is None else file_size))


@pytest.fixture
def sim() -> Iterator[SimNetDevice]:
    dev = cast(SimNetDevice, default_registry().open("sim:virtio-net,wire=none"))
    try:
        yield dev
    finally:
        dev.close()


def mappings(dev: SimNetDevice) -> list[tuple[int, int, DmaPerm]]:
    return dev.endpoint.iommu.mappings()


# --- translation ----------------------------------------------------------------------------


def test_translation_round_trip_qemu_style_layout() -> None:
    low = region(0, 2 * MB, 0x7F00_0000_0000)
    # The high region starts 1 MB into its file, as a second slice of one memory backend would.
    high = region(0x1_0000_0000, 4 * MB, 0x7F10_0000_0000, offset=MB)
    with MemoryTable.build([high, low]) as table:
        assert table.regions == (low, high)  # guest-physical order
        assert table.uva_to_gpa(0x7F00_0000_1234) == 0x1234
        assert table.uva_to_gpa(0x7F10_0000_0000 + 5, 16) == 0x1_0000_0005
        assert table.gpa_to_uva(0x1_0000_0000 + 4 * MB - 8, 8) == 0x7F10_0000_0000 + 4 * MB - 8
        for gpa in (0, 0x1000, 2 * MB - 1, 0x1_0000_0000, 0x1_0000_0000 + 3 * MB):
            assert table.uva_to_gpa(table.gpa_to_uva(gpa)) == gpa
        assert table.find(0x7F10_0000_0010, 4, AddressSpace.UVA) == high

        # Views reach the file at mmap_offset + (gpa - guest_phys_addr), and are shared both ways.
        view = table.gpa_view(0x1_0000_0000 + 0x20, 5)
        view[:] = b"hello"
        assert os.pread(high.fd, 5, MB + 0x20) == b"hello"
        os.pwrite(low.fd, b"ring", 0x3000)
        assert table.uva_view(0x7F00_0000_3000, 4).tobytes() == b"ring"
        view.release()


def test_ranges_must_lie_inside_one_region() -> None:
    # Two regions adjacent in both spaces: a range straddling the boundary is still refused.
    a = region(0, 4 * PAGE, 0x10_0000)
    b = region(4 * PAGE, 4 * PAGE, 0x10_0000 + 4 * PAGE)
    with MemoryTable.build([a, b]) as table:
        assert table.gpa_view(4 * PAGE - 8, 8).nbytes == 8
        with pytest.raises(MemoryTableError, match="not inside one region"):
            table.gpa_view(4 * PAGE - 8, 16)
        with pytest.raises(MemoryTableError, match="not inside one region"):
            table.uva_to_gpa(0x10_0000 - 1)
        with pytest.raises(MemoryTableError, match="not inside one region"):
            table.gpa_to_uva(8 * PAGE)
        with pytest.raises(MemoryTableError, match="not inside one region"):
            table.uva_to_gpa(0x10_0000 + 8 * PAGE - 4, 8)
        with pytest.raises(MemoryTableError, match="bad gpa range"):
            table.gpa_view(0, -1)

        rings = [(0x10_0000, 16 * 256), (0x10_0000 + 4 * PAGE, 6 + 2 * 256)]
        assert table.covers(rings)
        assert table.covers([(0, 64), (5 * PAGE, 64)], AddressSpace.GPA)
        outside = (0x20_0000, 64)
        assert not table.covers([*rings, outside])
        assert table.uncovered([*rings, outside]) == [outside]
    with pytest.raises(MemoryTableError, match="closed"):
        table.uva_to_gpa(0x10_0000)


def test_from_wire_pairs_regions_with_fds() -> None:
    fd = memfd(MB)
    wire = MemoryRegion(0, MB, 0x4000_0000, 0, -1)  # a decoded region: its fd travels separately
    with MemoryTable.from_wire([wire], [fd]) as table:
        assert table.regions[0].fd == fd
        assert table.uva_to_gpa(0x4000_0010) == 0x10
    assert not is_open(fd)

    extra = memfd(PAGE)
    with pytest.raises(MemoryTableError, match="1 regions but 2 fds"):
        MemoryTable.from_wire([MemoryRegion(0, PAGE, 0, 0, -1)], [memfd(PAGE), extra])
    assert not is_open(extra)


# --- validation -----------------------------------------------------------------------------


def check_rejected(regions: list[MemoryRegion], match: str, **kwargs: int) -> None:
    with pytest.raises(MemoryTableError, match=match):
        MemoryTable.build(regions, **kwargs)
    for r in regions:
        assert not is_open(r.fd), f"fd {r.fd} of a rejected table was left open"


def test_rejects_gpa_overlap() -> None:
    check_rejected([region(0, 2 * PAGE, 0), region(PAGE, 2 * PAGE, 16 * PAGE)],
                   r"region 1 \(gpa \[0x1000, 0x3000\).*overlaps region 0 .* in gpa space"
                   if PAGE == 0x1000 else "overlaps region 0 .* in gpa space")


def test_rejects_uva_overlap() -> None:
    check_rejected([region(0, 2 * PAGE, 8 * PAGE), region(4 * PAGE, 2 * PAGE, 9 * PAGE)],
                   "region 1 .* overlaps region 0 .* in uva space")


def test_rejects_too_many_regions() -> None:
    regions = [region(i * PAGE, PAGE, i * PAGE) for i in range(9)]
    check_rejected(regions, "9 regions, at most 8")
    check_rejected([region(i * PAGE, PAGE, i * PAGE) for i in range(3)], "3 regions, at most 2", max_regions=2)


def test_accepts_the_maximum() -> None:
    with MemoryTable.build([region(i * 4 * PAGE, PAGE, i * 4 * PAGE) for i in range(8)]) as table:
        assert len(table) == 8


def test_rejects_zero_size() -> None:
    check_rejected([region(0, PAGE, 0), MemoryRegion(PAGE, 0, PAGE, 0, memfd(PAGE))],
                   "region 1 .*: size must be non-zero")


def test_rejects_64_bit_wrap() -> None:
    check_rejected([region((1 << 64) - PAGE, 2 * PAGE, 0)], "region 0 .*guest_phys_addr \\+ size wraps")
    check_rejected([region(0, 2 * PAGE, (1 << 64) - PAGE)], "region 0 .*userspace_addr \\+ size wraps")


def test_rejects_offset_beyond_file_size() -> None:
    check_rejected([region(0, 4 * PAGE, 0, offset=PAGE, file_size=4 * PAGE)],
                   "region 0 .*offset \\+ size 0x[0-9a-f]+ is beyond the end of the file")


@pytest.mark.parametrize("bad", ["missing", "closed"])
def test_rejects_bad_fd_and_closes_the_others(bad: str) -> None:
    if bad == "missing":
        fd = -1  # a region whose descriptor never arrived
    else:
        # A number surely not open (a just-closed one could be reused by the table's own mmap dup).
        fd = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1
        assert not is_open(fd)
    good = region(0, PAGE, 0)
    check_rejected([good, MemoryRegion(PAGE, PAGE, PAGE, 0, fd)], "region 1 .*fd is not usable")


def wrong_kind_fd(kind: str) -> int:
    """An fd that is not a memory file: what a confused or hostile frontend could send as a region."""
    if kind == "socket":
        a, b = socket.socketpair()
        b.close()
        return a.detach()
    if kind == "directory":
        return os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    if kind == "character device":
        return os.open("/dev/zero", os.O_RDWR)
    assert kind == "anonymous inode"
    return os.eventfd(0)


@pytest.mark.parametrize("kind", ["socket", "directory", "pipe", "character device", "anonymous inode"])
def test_rejects_fd_that_is_not_a_memory_file(kind: str) -> None:
    check_rejected([MemoryRegion(0, PAGE, 0, 0, wrong_kind_fd(kind))],
                   f"region 0 .*fd is an? {kind}.*not a memory file")


def test_fds_closed_on_close_and_only_once() -> None:
    fd = memfd(2 * PAGE)
    # One file can back two regions through one descriptor; it is closed exactly once.
    table = MemoryTable.build([MemoryRegion(0, PAGE, 0, 0, fd), MemoryRegion(PAGE, PAGE, PAGE, PAGE, fd)])
    assert is_open(fd)
    table.close()
    assert table.closed and not is_open(fd)
    table.close()  # idempotent


# --- lazy mapping ---------------------------------------------------------------------------


def resident_pages() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])


def resident_in(view: memoryview) -> int:
    """Pages of ``view`` present in memory, by mincore(2)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    pages = (view.nbytes + PAGE - 1) // PAGE
    vec = (ctypes.c_ubyte * pages)()
    anchor = ctypes.c_char.from_buffer(view)
    try:
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(view.nbytes), vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
    finally:
        del anchor
    return sum(b & 1 for b in vec)


def test_256mb_table_is_mapped_without_populating() -> None:
    size = 256 * MB
    fd = memfd(size, "virtio_user-like")
    before = resident_pages()
    with MemoryTable.build([MemoryRegion(0, size, 0x1_0000_0000, 0, fd)]) as table:
        grown = resident_pages() - before
        assert grown * PAGE < 16 * MB, f"resident memory grew by {grown * PAGE} bytes while mapping 256 MB"
        assert os.fstat(fd).st_blocks == 0, "the memfd got pages allocated"
        view = table.gpa_view(0, size)
        try:
            assert resident_in(view) == 0
            view[3 * PAGE] = 1  # touching one page makes exactly that page resident: the probe works
            assert resident_in(view) == 1
        finally:
            view.release()


# --- device programming ---------------------------------------------------------------------


def test_program_maps_every_region_at_its_gpa(sim: SimNetDevice) -> None:
    vdpa = VirtioPciVdpaDevice(sim, owns_pci=False)
    try:
        a = region(0, 2 * MB, 0x7000_0000)
        b = region(0x4000_0000, MB, 0x7100_0000, offset=PAGE)
        table = MemoryTable.build([a, b])
        table.program(vdpa)
        assert table.programmed
        assert mappings(sim) == [(0, 2 * MB, DmaPerm.RW), (0x4000_0000, MB, DmaPerm.RW)]
        # The device sees the same bytes as the table's own view, at iova = gpa.
        os.pwrite(b.fd, b"dma", PAGE + 0x40)
        assert sim.endpoint.iommu.read(0x4000_0040, 3) == b"dma"
        with pytest.raises(MemoryTableError, match="already programmed"):
            table.program(vdpa)
        table.close()
        assert mappings(sim) == []
        assert not is_open(a.fd) and not is_open(b.fd)
    finally:
        vdpa.close()


def test_program_is_all_or_nothing(sim: SimNetDevice) -> None:
    # Something else already owns the IOVA range of the second region: nothing stays mapped.
    squatter = memfd(PAGE)
    sim.dma_map(0x10_0000, PAGE, squatter, 0, DmaPerm.READ)
    with MemoryTable.build([region(0, PAGE, 0), region(0x10_0000, PAGE, 0x10_0000)]) as table:
        with pytest.raises(MemoryTableError, match=r"device refused to map region 1 .*nothing left changed"):
            table.program(sim)
        assert not table.programmed
        assert mappings(sim) == [(0x10_0000, PAGE, DmaPerm.READ)]
    os.close(squatter)


def test_program_refuses_unaligned_region(sim: SimNetDevice) -> None:
    with MemoryTable.build([region(0, PAGE + 512, 0)]) as table:
        assert table.gpa_view(PAGE, 512).nbytes == 512  # fine for the backend's own reads
        with pytest.raises(MemoryTableError, match=r"region 0 .*multiples of the page size"):
            table.program(sim)
    assert mappings(sim) == []


class RecordingDevice:
    """Passes DMA calls to the sim device and records them."""

    def __init__(self, dev: SimNetDevice) -> None:
        self.dev = dev
        self.maps: list[tuple[int, int]] = []
        self.unmaps: list[tuple[int, int]] = []

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        self.maps.append((iova, size))
        self.dev.dma_map(iova, size, fd, offset, perm)

    def dma_unmap(self, iova: int, size: int) -> None:
        self.unmaps.append((iova, size))
        self.dev.dma_unmap(iova, size)


def test_replace_keeps_unchanged_regions_mapped(sim: SimNetDevice) -> None:
    rec = RecordingDevice(sim)
    ring_file = memfd(2 * MB, "rings")
    heap_file = memfd(4 * MB, "heap")
    old = MemoryTable.build([
        MemoryRegion(0, 2 * MB, 0x7000_0000, 0, os.dup(ring_file)),
        MemoryRegion(0x100_0000, 2 * MB, 0x7100_0000, 0, os.dup(heap_file)),
    ])
    old.program(rec)
    ring_mapping = sim.endpoint.iommu.view(0x1000, 16, DmaPerm.READ).obj  # the device's own mmap

    # The heap grew: the frontend re-sends the table with fresh fds for every region.
    new = MemoryTable.build([
        MemoryRegion(0, 2 * MB, 0x7000_0000, 0, os.dup(ring_file)),
        MemoryRegion(0x100_0000, 4 * MB, 0x7100_0000, 0, os.dup(heap_file)),
        MemoryRegion(0x200_0000 + 4 * MB, 2 * MB, 0x7300_0000, 0, memfd(2 * MB)),
    ])
    rings = [(0x7000_0000 + 0x1000, 4096), (0x7000_0000 + 0x2000, 518), (0x7000_0000 + 0x3000, 2054)]
    assert new.covers(rings)

    with pytest.raises(MemoryTableError, match="different device"):
        old.replace(new, sim)  # the very object the table was programmed through is required
    rec.maps.clear()
    change = old.replace(new, rec)
    assert old.closed and not new.closed and new.programmed
    assert [r.guest_phys_addr for r in change.kept] == [0]
    assert [(r.guest_phys_addr, r.memory_size) for r in change.unmapped] == [(0x100_0000, 2 * MB)]
    assert [(r.guest_phys_addr, r.memory_size) for r in change.mapped] == [(0x100_0000, 4 * MB),
                                                                        (0x200_0000 + 4 * MB, 2 * MB)]
    assert change.changed
    assert rec.unmaps == [(0x100_0000, 2 * MB)]  # the ring region was never unmapped
    assert rec.maps == [(0x100_0000, 4 * MB), (0x200_0000 + 4 * MB, 2 * MB)]
    assert mappings(sim) == [(0, 2 * MB, DmaPerm.RW), (0x100_0000, 4 * MB, DmaPerm.RW),
                             (0x200_0000 + 4 * MB, 2 * MB, DmaPerm.RW)]
    # Still the very same device mapping as before, though the old table closed its fds.
    assert sim.endpoint.iommu.view(0x1000, 16, DmaPerm.READ).obj is ring_mapping
    os.pwrite(ring_file, b"avail", 0x2000)
    assert sim.endpoint.iommu.read(0x2000, 5) == b"avail"

    # Re-sending an identical table (fresh fds again) changes nothing on the device.
    rec.maps.clear()
    rec.unmaps.clear()
    same = MemoryTable.build([MemoryRegion(r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset,
                                           os.dup(r.fd)) for r in new.regions])
    change = new.replace(same, rec)
    assert not change.changed and len(change.kept) == 3
    assert rec.maps == [] and rec.unmaps == []
    same.close()
    assert mappings(sim) == []
    os.close(ring_file)
    os.close(heap_file)


def test_replace_moving_a_region_to_another_file_remaps_it(sim: SimNetDevice) -> None:
    old = MemoryTable.build([region(0, MB, 0)])
    old.program(sim)
    new = MemoryTable.build([region(0, MB, 0)])  # same layout, different memory: must be remapped
    os.pwrite(new.regions[0].fd, b"new", 0)
    change = old.replace(new, sim)
    assert len(change.unmapped) == 1 and len(change.mapped) == 1 and change.kept == ()
    assert sim.endpoint.iommu.read(0, 3) == b"new"
    new.close()


def test_replace_rolls_back_when_the_device_refuses(sim: SimNetDevice) -> None:
    old = MemoryTable.build([region(0, MB, 0), region(0x40_0000, MB, 0x40_0000)])
    old.program(sim)
    squatter = memfd(PAGE)
    sim.dma_map(0x80_0000, PAGE, squatter, 0, DmaPerm.READ)
    # The second region moves to where the squatter sits: unmapped first, then the map fails.
    new = MemoryTable.build([region(0, MB, 0), region(0x80_0000, MB, 0x80_0000)])
    before = mappings(sim)
    with pytest.raises(MemoryTableError, match=r"device refused to map region 1 .*nothing left changed"):
        old.replace(new, sim)
    assert mappings(sim) == before
    assert old.programmed and not old.closed and not new.programmed
    new.close()
    old.close()
    assert mappings(sim) == [(0x80_0000, PAGE, DmaPerm.READ)]
    os.close(squatter)


def test_replace_of_unprogrammed_table_programs_the_new_one(sim: SimNetDevice) -> None:
    old = MemoryTable.build([region(0, MB, 0)])
    new = MemoryTable.build([region(0, 2 * MB, 0)])
    change = old.replace(new, sim)
    assert old.closed and change.mapped == new.regions and change.unmapped == ()
    assert mappings(sim) == [(0, 2 * MB, DmaPerm.RW)]
    new.close()


# --- property: any layout is accepted and translates correctly, or is rejected ---------------

_span = st.integers(min_value=0, max_value=40)  # in pages: a small space makes overlaps common


@st.composite
def layouts(draw: st.DrawFn) -> list[tuple[int, int, int, int, int]]:
    """(gpa, size, uva, offset, file_size) in bytes; sometimes zero sizes, short files, or near 2^64."""
    n = draw(st.one_of(st.integers(min_value=0, max_value=4), st.integers(min_value=0, max_value=10)))
    out = []
    for _ in range(n):
        size = draw(st.sampled_from([1, 1, 2, 3, 4, 0])) * PAGE
        gpa = draw(_span) * PAGE
        near_top = st.integers(min_value=1, max_value=6).map(lambda p: (1 << 64) - p * PAGE)
        uva = draw(st.one_of(_span.map(lambda p: (p + 1000) * PAGE), _span.map(lambda p: p * PAGE), near_top)
                   if draw(st.integers(0, 9)) == 0 else _span.map(lambda p: (p + 1000) * PAGE))
        offset = draw(st.integers(min_value=0, max_value=2)) * PAGE
        file_size = offset + size - draw(st.sampled_from([0, 0, 0, 0, 0, PAGE]))
        out.append((gpa, size, uva, offset, max(file_size, 0)))
    return out


def expected_valid(layout: list[tuple[int, int, int, int, int]]) -> bool:
    if len(layout) > 8:
        return False
    for gpa, size, uva, offset, file_size in layout:
        if size == 0 or uva + size > 1 << 64 or gpa + size > 1 << 64 or offset + size > file_size:
            return False
    for i, (g1, s1, u1, _, _) in enumerate(layout):
        for g2, s2, u2, _, _ in layout[i + 1:]:
            if max(g1, g2) < min(g1 + s1, g2 + s2) or max(u1, u2) < min(u1 + s1, u2 + s2):
                return False
    return True


@settings(max_examples=150, deadline=None)
@given(layout=layouts(), pick=st.integers(min_value=0, max_value=9), offset=st.integers(min_value=-PAGE,
                                                                                         max_value=5 * PAGE))
def test_any_layout_translates_correctly_or_is_rejected(layout: list[tuple[int, int, int, int, int]],
                                                        pick: int, offset: int) -> None:
    # Probe near a region's start (in it, just before it or past its end), else anywhere low.
    probe = max(0, (layout[pick % len(layout)][0] if layout else 0) + offset)
    regions = [MemoryRegion(g, s, u, o, memfd(f)) for g, s, u, o, f in layout]
    try:
        table = MemoryTable.build(regions)
    except MemoryTableError:
        assert not expected_valid(layout)
        assert not any(is_open(r.fd) for r in regions)
        return
    assert expected_valid(layout)
    with table:
        holders = [r for r in regions if r.guest_phys_addr <= probe < r.gpa_end]
        if not holders:
            with pytest.raises(MemoryTableError):
                table.gpa_to_uva(probe)
            return
        (r,) = holders
        uva = table.gpa_to_uva(probe)
        assert uva == r.userspace_addr + probe - r.guest_phys_addr
        assert table.uva_to_gpa(uva) == probe
        tail = r.gpa_end - probe
        view = table.gpa_view(probe, tail)
        view[-1:] = b"\xa5"
        assert os.pread(r.fd, 1, r.mmap_offset + r.memory_size - 1) == b"\xa5"
        view.release()
        with pytest.raises(MemoryTableError):
            table.gpa_view(probe, tail + 1)
    assert not any(is_open(r.fd) for r in regions)
