"""The Linux VFIO layer without a device: ioctl numbers and struct layouts against ``<linux/vfio.h>``,
capability chain parsing, the kernel log's DMA fault lines, target specs, and the errors given when the
system is not set up for VFIO (a fake sysfs)."""

from __future__ import annotations

import ctypes
import os
import re
import struct
from pathlib import Path

import pytest

from backend.pci import vfio as v
from backend.pci import vfio_uapi as uapi
from backend.pci.device import DmaFault, DmaPerm
from backend.targets import default_registry
from testbenches.peers.process import peer_missing

HEADER = Path("/usr/include/linux/vfio.h")

# --- ioctl numbers and layouts ----------------------------------------------------------------


def test_ioctl_numbers_are_vfio_base_plus_n() -> None:
    assert v.VFIO_TYPE == 0x3B and v.VFIO_BASE == 100
    expected = {
        "VFIO_GET_API_VERSION": 0x3B64, "VFIO_CHECK_EXTENSION": 0x3B65, "VFIO_SET_IOMMU": 0x3B66,
        "VFIO_GROUP_GET_STATUS": 0x3B67, "VFIO_GROUP_SET_CONTAINER": 0x3B68, "VFIO_GROUP_UNSET_CONTAINER": 0x3B69,
        "VFIO_GROUP_GET_DEVICE_FD": 0x3B6A, "VFIO_DEVICE_GET_INFO": 0x3B6B, "VFIO_DEVICE_GET_REGION_INFO": 0x3B6C,
        "VFIO_DEVICE_GET_IRQ_INFO": 0x3B6D, "VFIO_DEVICE_SET_IRQS": 0x3B6E, "VFIO_DEVICE_RESET": 0x3B6F,
        "VFIO_IOMMU_GET_INFO": 0x3B70, "VFIO_IOMMU_MAP_DMA": 0x3B71, "VFIO_IOMMU_UNMAP_DMA": 0x3B72,
        "VFIO_DEVICE_IOEVENTFD": 0x3B74,
    }
    assert {f"VFIO_{r.name}": int(r) for r in v.Ioctl} == expected


#: sizeof and field offsets on x86-64, from the uapi header.
LAYOUTS: dict[type[ctypes.Structure], tuple[int, dict[str, int]]] = {
    v.GroupStatus: (8, {"argsz": 0, "flags": 4}),
    v.DeviceInfo: (20, {"num_regions": 8, "num_irqs": 12, "cap_offset": 16}),
    v.RegionInfoStruct: (32, {"index": 8, "cap_offset": 12, "size": 16, "offset": 24}),
    v.InfoCapHeader: (8, {"id": 0, "version": 2, "next": 4}),
    v.SparseMmapCap: (16, {"nr_areas": 8, "reserved": 12}),
    v.SparseMmapArea: (16, {"offset": 0, "size": 8}),
    v.IrqInfo: (16, {"index": 8, "count": 12}),
    v.IrqSet: (20, {"index": 8, "start": 12, "count": 16}),
    v.IommuType1Info: (24, {"iova_pgsizes": 8, "cap_offset": 16}),
    v.IovaRangeCap: (16, {"nr_iovas": 8}),
    v.IovaRange: (16, {"start": 0, "end": 8}),
    v.DmaMap: (32, {"vaddr": 8, "iova": 16, "size": 24}),
    v.DmaUnmap: (24, {"iova": 8, "size": 16}),
    v.IoeventfdStruct: (32, {"offset": 8, "data": 16, "fd": 24}),
}


@pytest.mark.parametrize("cls", list(LAYOUTS), ids=lambda c: c.__name__)
def test_struct_layouts(cls: type[ctypes.Structure]) -> None:
    size, offsets = LAYOUTS[cls]
    assert ctypes.sizeof(cls) == size
    assert {name: getattr(cls, name).offset for name in offsets} == offsets


def _header() -> str:
    if not HEADER.exists():
        peer_missing(f"{HEADER} not found: apt-get install linux-libc-dev")
    return HEADER.read_text()


def test_ioctl_numbers_match_the_installed_header() -> None:
    text = _header()
    pattern = r"#define\s+(VFIO_\w+)\s+_IO\(VFIO_TYPE,\s*VFIO_BASE\s*\+\s*(\d+)\)"
    defined = {m[1]: int(m[2]) for m in re.finditer(pattern, text)}
    ours = {f"VFIO_{r.name}": int(r) for r in v.Ioctl}
    missing = sorted(ours.keys() - defined.keys())
    assert len(ours) >= 15 and not missing, f"not in the header: {missing}"
    assert ours == {name: 0x3B00 + 100 + defined[name] for name in ours}


_CTYPES = {"__u8": ctypes.c_uint8, "__u16": ctypes.c_uint16, "__u32": ctypes.c_uint32, "__u64": ctypes.c_uint64,
           "__s32": ctypes.c_int32}
_HEADER_STRUCTS = {
    "vfio_group_status": v.GroupStatus, "vfio_region_info": v.RegionInfoStruct, "vfio_irq_info": v.IrqInfo,
    "vfio_irq_set": v.IrqSet, "vfio_iommu_type1_dma_map": v.DmaMap, "vfio_iommu_type1_dma_unmap": v.DmaUnmap,
    "vfio_device_ioeventfd": v.IoeventfdStruct, "vfio_info_cap_header": v.InfoCapHeader,
    "vfio_region_sparse_mmap_area": v.SparseMmapArea, "vfio_iova_range": v.IovaRange,
}


@pytest.mark.parametrize("name", sorted(_HEADER_STRUCTS))
def test_struct_fields_match_the_installed_header(name: str) -> None:
    """Each scalar field the header declares sits at the same offset here (trailing ``data[]`` arrays
    and fields newer kernels appended after ours are not part of what we send)."""
    body = re.search(rf"struct {name} \{{(.*?)\n\}};", _header(), re.S)
    assert body is not None, f"struct {name} not in {HEADER}"
    fields = [(m[2], _CTYPES[m[1]]) for m in re.finditer(r"^\s*(__[us]\d+)\s+(\w+)\s*;", body[1], re.M)]
    reference = type(name, (ctypes.Structure,), {"_fields_": fields})
    ours = _HEADER_STRUCTS[name]
    for field, _ in fields:
        if hasattr(ours, field):
            assert getattr(ours, field).offset == getattr(reference, field).offset, field


def test_irq_set_carries_eventfds_after_the_header() -> None:
    flags = uapi.IrqSetFlag.DATA_EVENTFD | uapi.IrqSetFlag.ACTION_TRIGGER
    raw = v.irq_set(2, 1, flags, [7, -1])
    assert struct.unpack("<5I2i", raw) == (28, flags, 2, 1, 2, 7, -1)
    unmask = v.irq_set(0, 0, uapi.IrqSetFlag.DATA_NONE | uapi.IrqSetFlag.ACTION_UNMASK, count=1)
    assert struct.unpack("<5I", unmask) == (20, 0x11, 0, 0, 1)


def test_sized_sets_argsz() -> None:
    info = v.sized(v.RegionInfoStruct, index=7)
    assert (info.argsz, info.index) == (32, 7)


# --- capability chains ------------------------------------------------------------------------


def _cap(cap_id: int, nxt: int, payload: bytes = b"") -> bytes:
    return struct.pack("<HHI", cap_id, 1, nxt) + payload


def test_region_caps_sparse_areas_and_msix_mappable() -> None:
    head = bytes(32)
    sparse = _cap(uapi.RegionCapId.SPARSE_MMAP, 32 + 48, struct.pack("<II", 2, 0)
                  + struct.pack("<QQ", 0, 0x1000) + struct.pack("<QQ", 0x3000, 0x1000))
    msix = _cap(uapi.RegionCapId.MSIX_MAPPABLE, 0)
    assert v.region_caps(head + sparse + msix, 32) == (((0, 0x1000), (0x3000, 0x1000)), True)
    assert v.region_caps(head + msix, 32) == (None, True)
    assert v.region_caps(head, 0) == (None, False)
    looped = head + _cap(uapi.RegionCapId.TYPE, 32)  # a chain pointing at itself ends
    assert v.region_caps(looped, 32) == (None, False)


def test_iova_ranges_from_the_iommu_info() -> None:
    cap = _cap(uapi.IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, 0, struct.pack("<II", 2, 0)
               + struct.pack("<QQ", 0, 0xFEDFFFFF) + struct.pack("<QQ", 0xFEF00000, 0x7FFFFFFFFF))
    assert v.iova_ranges(bytes(24) + cap, 24) == ((0, 0xFEDFFFFF), (0xFEF00000, 0x7FFFFFFFFF))
    assert v.iova_ranges(bytes(24), 0) == ()


def test_region_mappable_only_as_a_whole() -> None:
    flags = uapi.RegionFlag.READ | uapi.RegionFlag.WRITE | uapi.RegionFlag.MMAP
    assert v.VfioRegion(4, flags, 0x4000, 0).mappable
    assert not v.VfioRegion(1, flags, 0x1000, 0, sparse=((0x800, 0x800),)).mappable  # MSI-X table carved out
    assert v.VfioRegion(1, flags, 0x1000, 0, sparse=((0x800, 0x800),), msix_mappable=True).mappable
    assert not v.VfioRegion(7, flags & ~uapi.RegionFlag.MMAP, 0x100, 0).mappable


# --- names and faults -----------------------------------------------------------------------


def test_bdf_parse() -> None:
    assert str(v.Bdf.parse("0000:01:00.0")) == "0000:01:00.0"
    assert v.Bdf.parse("02:1f.7") == v.Bdf(0, 2, 0x1F, 7)
    for bad in ("0000:01:00", "01:00.8", "vfio:0000:01:00.0", ""):
        with pytest.raises(ValueError, match="not a PCI address"):
            v.Bdf.parse(bad)


BDF = v.Bdf(0, 2, 0, 0)


def test_vtd_fault_lines() -> None:
    # Linux 6.1 as logged in the guest (tests/interop/test_vfio_guest.py), and the 5.x wording.
    new = "DMAR: [DMA Read NO_PASID] Request device [02:00.0] fault addr 0x40001000 [fault reason 0x06] " \
          "PTE Read access is not set"
    assert v.parse_fault(new, BDF) == DmaFault(0x40001000, 4096, DmaPerm.READ,
                                               "IOMMU (VT-d) fault reason 0x06: PTE Read access is not set")
    old = "DMAR: [DMA Write] Request device [02:00.0] PASID ffffffff fault addr 7f0000000000 [fault reason 05] " \
          "PTE Write access is not set"
    fault = v.parse_fault(old, BDF)
    assert fault is not None and (fault.iova, fault.access) == (0x7F0000000000, DmaPerm.WRITE)
    assert v.parse_fault(new.replace("[02:00.0]", "[01:00.0]"), BDF) is None
    assert v.parse_fault("DMAR: [INTR-REMAP] Request device [02:00.0] fault index 0x5 [fault reason 0x25] "
                         "Blocked a compatibility format interrupt request", BDF) is None
    assert v.parse_fault("DMAR: DRHD: handling fault status reg 2", BDF) is None


def test_amd_vi_fault_lines() -> None:
    line = "vfio-pci 0000:02:00.0: AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x000e address=0x7f0000000000 " \
           "flags=0x0020]"
    fault = v.parse_fault(line, BDF)
    assert fault is not None and (fault.iova, fault.access) == (0x7F0000000000, DmaPerm.WRITE)
    assert v.parse_fault(line.replace("0000:02:00.0", "0000:03:00.0"), BDF) is None


def test_kmsg_record_text() -> None:
    record = b"3,1042,39411500,-;DMAR: [DMA Read NO_PASID] Request device [02:00.0] fault addr 0x20000\n" \
             b" SUBSYSTEM=pci\n"
    assert v.kmsg_message(record) == "DMAR: [DMA Read NO_PASID] Request device [02:00.0] fault addr 0x20000"


# --- target specs and set-up errors ---------------------------------------------------------------


def test_vfio_scheme_is_registered() -> None:
    assert default_registry()["vfio"] is v.open_vfio


def test_target_options_are_checked_before_the_device() -> None:
    with pytest.raises(ValueError, match="wire='bogus'"):
        v.open_vfio("0000:01:00.0,wire=bogus")
    with pytest.raises(ValueError, match="unknown option 'mtu'"):
        v.open_vfio("0000:01:00.0,mtu=9000")
    with pytest.raises(ValueError, match="not a PCI address"):
        v.open_vfio("eth0")


def _fake_function(sysfs: Path, bdf: str, driver: str | None, group: int | None) -> Path:
    dev = sysfs / "bus" / "pci" / "devices" / bdf
    dev.mkdir(parents=True)
    if driver is not None:
        (sysfs / "bus" / "pci" / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        os.symlink(f"../../../bus/pci/drivers/{driver}", dev / "driver")
    if group is not None:
        (sysfs / "kernel" / "iommu_groups" / str(group)).mkdir(parents=True)
        os.symlink(f"../../../kernel/iommu_groups/{group}", dev / "iommu_group")
    return dev


def test_errors_say_what_is_missing(tmp_path: Path) -> None:
    sysfs, devdir = tmp_path / "sys", tmp_path / "vfio"
    with pytest.raises(v.VfioError, match=r"does not exist: VFIO is not available \(modprobe vfio-pci"):
        v.VfioPciDevice("0000:01:00.0", sysfs=sysfs, devdir=devdir)
    devdir.mkdir()
    with pytest.raises(v.VfioError, match=r"no PCI function 0000:01:00\.0"):
        v.VfioPciDevice("0000:01:00.0", sysfs=sysfs, devdir=devdir)
    _fake_function(sysfs, "0000:01:00.0", "virtio-pci", 5)
    with pytest.raises(v.VfioError, match=r"bound to virtio-pci, not vfio-pci.*driver_override.*drivers_probe"):
        v.VfioPciDevice("0000:01:00.0", sysfs=sysfs, devdir=devdir)
    _fake_function(sysfs, "0000:02:00.0", None, None)
    with pytest.raises(v.VfioError, match="bound to no driver"):
        v.VfioPciDevice("0000:02:00.0", sysfs=sysfs, devdir=devdir)
    _fake_function(sysfs, "0000:03:00.0", "vfio-pci", None)
    with pytest.raises(v.VfioError, match="no IOMMU group"):
        v.VfioPciDevice("0000:03:00.0", sysfs=sysfs, devdir=devdir)


def test_a_file_that_is_no_vfio_container_fails_on_its_first_ioctl(tmp_path: Path) -> None:
    sysfs, devdir = tmp_path / "sys", tmp_path / "vfio"
    devdir.mkdir()
    (devdir / "vfio").write_bytes(b"")
    _fake_function(sysfs, "0000:01:00.0", "vfio-pci", 7)
    with pytest.raises(v.VfioError, match="VFIO_GET_API_VERSION: Inappropriate ioctl") as info:
        v.VfioPciDevice("0000:01:00.0", sysfs=sysfs, devdir=devdir)
    assert info.value.errno == 25  # ENOTTY

