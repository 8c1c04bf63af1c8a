"""``VfioPciDevice``: a real PCI function bound to Linux ``vfio-pci``, as a :class:`~backend.pci.device.PciDevice`.

Only ``fcntl.ioctl``, ``mmap`` and ``ctypes`` (the uapi of ``<linux/vfio.h>``):

* a container (``/dev/vfio/vfio``, type1v2 IOMMU, type1 where v2 is missing) holding the
  function's IOMMU group (``/dev/vfio/N``), and the device fd from ``VFIO_GROUP_GET_DEVICE_FD``;
  the kernels this runs on (Debian 12: 6.1) have no iommufd, so the legacy container is the one
  interface used;
* regions: ``VFIO_DEVICE_GET_REGION_INFO`` (with its capability chain: sparse mmap areas,
  MSI-X mappable), reads and writes as ``pread``/``pwrite`` on the device fd at the region's
  offset (vfio-pci turns an aligned 1/2/4/8-byte access into one access of that width), BAR
  mmap where the region allows the whole of it;
* DMA: the fd handed to :meth:`dma_map` is mapped into this process and that mapping is given to
  ``VFIO_IOMMU_MAP_DMA`` at the IOVA (the kernel pins it), unmapped again by :meth:`dma_unmap`;
* interrupts: ``VFIO_DEVICE_SET_IRQS`` binds INTx, MSI, MSI-X, ERR and REQ to eventfds. INTx is
  level triggered and vfio masks it when it fires; as QEMU's vfio does, any later BAR access is
  taken as the end of the interrupt and unmasks it (the kernel signals again if the line is still
  asserted);
* doorbells: ``VFIO_DEVICE_IOEVENTFD`` makes the kernel perform the write when the eventfd is
  signalled (vfio-pci: BARs outside the MSI-X table); where it refuses, :meth:`ioeventfd` returns
  False and the vendor driver relays;
* DMA faults: the IOMMU drivers report them only in the kernel log, so :meth:`dma_faults` reads
  ``/dev/kmsg`` (from the moment the device was opened) for this function's Intel VT-d
  (``DMAR: [DMA Read ...] Request device [BB:DD.F] fault addr ...``) and AMD-Vi
  (``IO_PAGE_FAULT``) records. The kernel rate-limits those lines (VT-d: 10 per 5 s), so a burst
  is reported incompletely, never invented; without access to ``/dev/kmsg`` it raises;
* :meth:`reset`: ``VFIO_DEVICE_RESET`` (FLR, PM or bus reset, as the kernel finds one).

Target spec: ``vfio:BDF[,wire=loopback|none]``, e.g. ``vfio:0000:00:03.0`` (the domain may be left
out). ``wire`` tells the bench what the function's port is connected to: ``loopback`` (a cable or a switch
port sending every frame back) or ``none`` (nothing comes back; checks that must see transmitted
frames again say "not applicable"). Without it the conformance suite sends frames at bring-up and
looks whether they come back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import re
import select
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Final, TypeVar

from backend.pci import vfio_uapi as uapi
from backend.pci.abilities import Abilities, Lacking, WireKind
from backend.pci.device import (
    DmaFault,
    DmaPerm,
    IrqIndex,
    PciError,
    RegionFlags,
    RegionIndex,
    RegionInfo,
)
from backend.targets import parse_spec

# --- uapi: <linux/vfio.h> ---------------------------------------------------------------------

VFIO_TYPE: Final = ord(";")  # 0x3B
VFIO_BASE: Final = 100


def _io(nr: int) -> int:
    """``_IO(VFIO_TYPE, VFIO_BASE + nr)``: vfio encodes no size or direction in its numbers."""
    return VFIO_TYPE << 8 | (VFIO_BASE + nr)


VFIO_API_VERSION: Final = 0


class Ioctl(IntEnum):
    """The vfio ioctls, named as in the uapi without ``VFIO_``."""

    GET_API_VERSION = _io(0)
    CHECK_EXTENSION = _io(1)
    SET_IOMMU = _io(2)
    GROUP_GET_STATUS = _io(3)
    GROUP_SET_CONTAINER = _io(4)
    GROUP_UNSET_CONTAINER = _io(5)
    GROUP_GET_DEVICE_FD = _io(6)
    DEVICE_GET_INFO = _io(7)
    DEVICE_GET_REGION_INFO = _io(8)
    DEVICE_GET_IRQ_INFO = _io(9)
    DEVICE_SET_IRQS = _io(10)
    DEVICE_RESET = _io(11)
    IOMMU_GET_INFO = _io(12)  # on the container fd (the same number is a device ioctl too)
    IOMMU_MAP_DMA = _io(13)
    IOMMU_UNMAP_DMA = _io(14)
    DEVICE_IOEVENTFD = _io(16)


# VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU
VFIO_TYPE1_IOMMU: Final = 1
VFIO_TYPE1v2_IOMMU: Final = 3
VFIO_NOIOMMU_IOMMU: Final = 8

VFIO_DEVICE_IOEVENTFD_SIZE: Final = {1: 1 << 0, 2: 1 << 1, 4: 1 << 2, 8: 1 << 3}

#: vfio-pci's fixed region indexes (BAR0..5, ROM, CONFIG, VGA); device specific ones follow.
VFIO_PCI_NUM_REGIONS: Final = 9


# The structs are declared once in vfio_uapi (vfio-user sends the same ones); these are their ctypes
# forms, which the kernel writes results into.
GroupStatus: Final = uapi.GROUP_STATUS.ctype("GroupStatus")
DeviceInfo: Final = uapi.DEVICE_INFO.ctype("DeviceInfo")
RegionInfoStruct: Final = uapi.REGION_INFO.ctype("RegionInfoStruct")
InfoCapHeader: Final = uapi.INFO_CAP_HEADER.ctype("InfoCapHeader")
SparseMmapArea: Final = uapi.SPARSE_MMAP_AREA.ctype("SparseMmapArea")
SparseMmapCap: Final = uapi.SPARSE_MMAP_CAP.ctype("SparseMmapCap")
IrqInfo: Final = uapi.IRQ_INFO.ctype("IrqInfo")
IrqSet: Final = uapi.IRQ_SET.ctype("IrqSet")
IommuType1Info: Final = uapi.IOMMU_TYPE1_INFO.ctype("IommuType1Info")
IovaRangeCap: Final = uapi.IOVA_RANGE_CAP.ctype("IovaRangeCap")
IovaRange: Final = uapi.IOVA_RANGE.ctype("IovaRange")
DmaMap: Final = uapi.DMA_MAP.ctype("DmaMap")
DmaUnmap: Final = uapi.DMA_UNMAP.ctype("DmaUnmap")
IoeventfdStruct: Final = uapi.DEVICE_IOEVENTFD.ctype("IoeventfdStruct")


S = TypeVar("S", bound=ctypes.Structure)


def sized(cls: type[S], **values: int) -> S:
    """A uapi struct with ``argsz`` set to its size and the given fields."""
    return cls(argsz=ctypes.sizeof(cls), **values)


def irq_set(index: int, start: int, flags: int, fds: Sequence[int] = (), count: int | None = None) -> bytearray:
    """The bytes of a ``vfio_irq_set`` carrying ``fds`` (s32 each) as its data."""
    n = len(fds) if count is None else count
    data = (ctypes.c_int32 * len(fds))(*fds)
    head = IrqSet(argsz=ctypes.sizeof(IrqSet) + ctypes.sizeof(data), flags=flags, index=index, start=start,
                  count=n)
    return bytearray(bytes(head) + bytes(data))


# --- errors and names -----------------------------------------------------------------------


class VfioError(PciError):
    """VFIO is unavailable, the device is not set up for it, or an ioctl failed (``errno`` set)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


_BDF = re.compile(r"^(?:(?P<domain>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<slot>[0-9a-fA-F]{1,2})"
                  r"\.(?P<func>[0-7])$")


@dataclass(frozen=True)
class Bdf:
    """A PCI address; ``str()`` is sysfs's ``DDDD:BB:DD.F``."""

    domain: int
    bus: int
    slot: int
    func: int

    @classmethod
    def parse(cls, text: str) -> Bdf:
        found = _BDF.match(text.strip())
        if found is None:
            raise ValueError(f"vfio:{text}: not a PCI address (expected DDDD:BB:DD.F, e.g. 0000:00:03.0)")
        domain = found["domain"]
        return cls(int(domain, 16) if domain else 0, int(found["bus"], 16), int(found["slot"], 16),
                   int(found["func"]))

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.func}"


IoctlArg = int | bytearray | ctypes.Structure | ctypes.c_int32 | ctypes.Array[ctypes.c_char]


def _ioctl(fd: int, request: Ioctl, arg: IoctlArg, detail: str = "") -> int:
    """``ioctl`` with a mutable argument (the kernel writes results back into it); OSError -> VfioError
    naming the request and ``detail``."""
    what = f"VFIO_{request.name} {detail}".rstrip()
    try:
        if isinstance(arg, int):
            return int(fcntl.ioctl(fd, request, arg))
        return int(fcntl.ioctl(fd, request, arg, True))
    except OSError as exc:
        code = exc.errno or 0
        raise VfioError(f"{what}: {os.strerror(code) if code else exc}", code) from None


# --- the kernel log: DMA faults ---------------------------------------------------------------

#: Intel VT-d (drivers/iommu/intel/dmar.c), 5.x and 6.x wordings:
#: ``DMAR: [DMA Read NO_PASID] Request device [00:05.0] fault addr 0x7f0000000000 [fault reason 0x06] ...``
#: ``DMAR: [DMA Write] Request device [00:05.0] PASID ffffffff fault addr 7f0000000000 [fault reason 05] ...``
_VTD_FAULT: Final = re.compile(
    r"DMAR: \[DMA (?P<kind>Read|Write)[^\]]*\] Request device \[(?P<bus>[0-9a-f]{2}):(?P<slot>[0-9a-f]{2})"
    r"\.(?P<func>[0-7])\][^\[]*?fault addr (?:0x)?(?P<addr>[0-9a-f]+) \[fault reason (?:0x)?(?P<code>[0-9a-f]+)\]"
    r" ?(?P<reason>.*)$")
#: AMD-Vi (drivers/iommu/amd/iommu.c): ``vfio-pci 0000:00:05.0: AMD-Vi: Event logged [IO_PAGE_FAULT
#: domain=0x000e address=0x7f0000000000 flags=0x0020]``; flags bit 5 is a write.
_AMD_FAULT: Final = re.compile(
    r"(?P<bdf>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]):? .*AMD-Vi: Event logged \[IO_PAGE_FAULT "
    r"(?:device=\S+ )?domain=0x[0-9a-f]+ address=0x(?P<addr>[0-9a-f]+) flags=0x(?P<flags>[0-9a-f]+)\]")
_AMD_FLAG_RW: Final = 0x20
#: An IOMMU reports the page that faulted.
FAULT_PAGE: Final = 4096


def parse_fault(message: str, bdf: Bdf) -> DmaFault | None:
    """The DMA fault a kernel log message reports for ``bdf``, if it is one.

    VT-d messages name bus, slot and function but no PCI domain (segment): they match any domain.
    """
    found = _VTD_FAULT.search(message)
    if found is not None:
        if (int(found["bus"], 16), int(found["slot"], 16), int(found["func"])) != (bdf.bus, bdf.slot, bdf.func):
            return None
        access = DmaPerm.READ if found["kind"] == "Read" else DmaPerm.WRITE
        reason = f"IOMMU (VT-d) fault reason {int(found['code'], 16):#04x}: {found['reason'].strip()}"
        return DmaFault(int(found["addr"], 16), FAULT_PAGE, access, reason.rstrip(": "))
    found = _AMD_FAULT.search(message)
    if found is not None:
        if Bdf.parse(found["bdf"]) != bdf:
            return None
        flags = int(found["flags"], 16)
        access = DmaPerm.WRITE if flags & _AMD_FLAG_RW else DmaPerm.READ
        return DmaFault(int(found["addr"], 16), FAULT_PAGE, access, f"IOMMU (AMD-Vi) IO_PAGE_FAULT flags {flags:#x}")
    return None


def kmsg_message(record: bytes) -> str:
    """The text of one ``/dev/kmsg`` record (``prio,seq,usec,flags;text`` then ``KEY=value`` lines)."""
    first = record.decode(errors="replace").split("\n", 1)[0]
    return first.split(";", 1)[1] if ";" in first else first


class KernelLog:
    """Reads ``/dev/kmsg`` from the time it was opened, without blocking."""

    def __init__(self, path: str = "/dev/kmsg") -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)  # only what the kernel logs from now on

    def messages(self) -> Iterator[str]:
        """Every record logged since the last call (one ``read`` returns one record)."""
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                return
            except BrokenPipeError:
                continue  # records were overwritten before they were read: go on with the oldest kept
            if not record:
                return
            yield kmsg_message(record)

    def wait(self, timeout: float) -> bool:
        """Block until a record can be read or ``timeout`` passed (``/dev/kmsg`` polls readable)."""
        return bool(select.select([self.fd], [], [], max(0.0, timeout))[0])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- process memory for DMA -------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED: Final = ctypes.c_void_p(-1).value


def map_fd(fd: int, size: int, offset: int, writable: bool) -> int:
    """Address of a shared mapping of ``fd`` (libc ``mmap``: the address is what MAP_DMA pins)."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    addr = _libc.mmap(None, size, prot, mmap.MAP_SHARED, fd, offset)
    if addr is None or addr == _MAP_FAILED:
        code = ctypes.get_errno()
        raise VfioError(f"mmap of fd {fd} ({size:#x} bytes at {offset:#x}): {os.strerror(code)}", code)
    return int(addr)


def unmap_addr(addr: int, size: int) -> None:
    if _libc.munmap(ctypes.c_void_p(addr), size) != 0:
        code = ctypes.get_errno()
        raise VfioError(f"munmap at {addr:#x}: {os.strerror(code)}", code)


# --- the device -------------------------------------------------------------------------------


@dataclass(frozen=True)
class VfioRegion:
    """One region as ``VFIO_DEVICE_GET_REGION_INFO`` describes it."""

    index: int
    flags: int
    size: int
    offset: int  # where the region starts in the device fd
    sparse: tuple[tuple[int, int], ...] | None = None  # mmap'able (offset, size) areas, None: whole region
    msix_mappable: bool = False

    @property
    def mappable(self) -> bool:
        """The whole region can be mmapped."""
        whole = self.sparse is None or self.msix_mappable or self.sparse == ((0, self.size),)
        return bool(self.flags & uapi.RegionFlag.MMAP) and self.size > 0 and whole


@dataclass(frozen=True)
class VfioIrq:
    index: int
    flags: int
    count: int


@dataclass
class _DmaMapping:
    iova: int
    size: int
    vaddr: int


@dataclass
class _Ioeventfd:
    width: int
    data: int


@dataclass
class _Irqs:
    """What is bound per irq index: eventfds (-1: none) as the kernel was last told."""

    bound: dict[int, list[int]] = field(default_factory=dict)


def _irq_name(index: int) -> str:
    try:
        return IrqIndex(index).name
    except ValueError:
        return f"irq index {index}"


def _chain(buf: bytes | bytearray, first: int) -> Iterator[tuple[int, int]]:
    """(cap id, offset) along a ``vfio_info_cap_header`` chain starting at ``first`` (loop-safe)."""
    seen: set[int] = set()
    off = first
    while off and off not in seen and off + ctypes.sizeof(InfoCapHeader) <= len(buf):
        seen.add(off)
        head = InfoCapHeader.from_buffer_copy(buf, off)
        yield head.id, off
        off = head.next


def region_caps(buf: bytes | bytearray, first: int) -> tuple[tuple[tuple[int, int], ...] | None, bool]:
    """From a region info's capability chain: the sparse mmap areas (None without that capability) and
    whether the MSI-X table may be mapped."""
    sparse: tuple[tuple[int, int], ...] | None = None
    msix_mappable = False
    for cap_id, off in _chain(buf, first):
        if cap_id == uapi.RegionCapId.SPARSE_MMAP:
            cap = SparseMmapCap.from_buffer_copy(buf, off)
            base = off + ctypes.sizeof(SparseMmapCap)
            areas = (SparseMmapArea.from_buffer_copy(buf, base + i * ctypes.sizeof(SparseMmapArea))
                     for i in range(cap.nr_areas))
            sparse = tuple((a.offset, a.size) for a in areas)
        elif cap_id == uapi.RegionCapId.MSIX_MAPPABLE:
            msix_mappable = True
    return sparse, msix_mappable


def iova_ranges(buf: bytes | bytearray, first: int) -> tuple[tuple[int, int], ...]:
    """The usable (inclusive) IOVA ranges from a type1 IOMMU info's capability chain; () if not given."""
    for cap_id, off in _chain(buf, first):
        if cap_id == uapi.IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            cap = IovaRangeCap.from_buffer_copy(buf, off)
            base = off + ctypes.sizeof(IovaRangeCap)
            return tuple((r.start, r.end) for r in (IovaRange.from_buffer_copy(buf, base + i * ctypes.sizeof(IovaRange))
                                                    for i in range(cap.nr_iovas)))
    return ()


class VfioPciDevice:
    """Implements :class:`backend.pci.device.PciDevice` over Linux VFIO (``vfio-pci``)."""

    def __init__(self, bdf: str | Bdf, *, name: str | None = None, wire: WireKind = WireKind.UNKNOWN,
                 sysfs: Path = Path("/sys"), devdir: Path = Path("/dev/vfio"), kmsg: str | None = "/dev/kmsg") -> None:
        self.bdf = bdf if isinstance(bdf, Bdf) else Bdf.parse(bdf)
        self.name = name if name is not None else f"vfio:{self.bdf}"
        #: What the port is wired to, as the spec says (unknown: the conformance suite probes it).
        self.wire = wire
        self._sysfs = sysfs
        self._lock = threading.RLock()
        self._container = self._group = self._device = -1
        self._maps: dict[int, _DmaMapping] = {}
        self._ioeventfds: dict[tuple[int, int, int], _Ioeventfd] = {}
        self._irqs = _Irqs()
        self._bar_mmaps: dict[int, mmap.mmap] = {}
        self._kmsg: KernelLog | None = None
        self._kmsg_error = ""
        self._closed = False
        self.iommu_type = 0
        self.iova_ranges: tuple[tuple[int, int], ...] = ()  # inclusive (start, end), from the IOMMU
        self.iova_pgsizes = 0
        try:
            self.group_id = self._check_sysfs(sysfs, devdir)
            self._open_group(devdir)
            self._open_device()
        except BaseException:
            self.close()
            raise
        if kmsg is None:
            self._kmsg_error = "opened without a kernel log"
        else:
            try:
                self._kmsg = KernelLog(kmsg)
            except OSError as exc:
                self._kmsg_error = f"cannot read {kmsg} ({exc.strerror}): IOMMU faults are only logged there"

    # --- opening ---------------------------------------------------------------------------------

    def _check_sysfs(self, sysfs: Path, devdir: Path) -> int:
        """The function's IOMMU group number, after checking it is bound to vfio-pci."""
        dev = sysfs / "bus" / "pci" / "devices" / str(self.bdf)
        if not devdir.is_dir():
            raise VfioError(f"{self.name}: {devdir} does not exist: VFIO is not available "
                            "(modprobe vfio-pci; the IOMMU must be on: intel_iommu=on or amd_iommu=on)")
        if not dev.exists():
            raise VfioError(f"{self.name}: no PCI function {self.bdf} ({dev} does not exist)")
        driver = dev / "driver"
        bound = os.path.basename(os.readlink(driver)) if driver.is_symlink() else None
        if bound != "vfio-pci":
            unbind = f"echo {self.bdf} > {driver}/unbind; " if bound else ""
            raise VfioError(
                f"{self.name}: the function is bound to {bound or 'no driver'}, not vfio-pci; bind it with: "
                f"modprobe vfio-pci; {unbind}echo vfio-pci > {dev}/driver_override; "
                f"echo {self.bdf} > {sysfs}/bus/pci/drivers_probe")
        group = dev / "iommu_group"
        if not group.is_symlink():
            raise VfioError(f"{self.name}: the function has no IOMMU group (is the IOMMU enabled? "
                            "intel_iommu=on / amd_iommu=on on the kernel command line)")
        return int(os.path.basename(os.readlink(group)))

    def _group_members(self) -> str:
        devices = self._sysfs / "kernel" / "iommu_groups" / str(self.group_id) / "devices"
        out = []
        for d in sorted(devices.iterdir()) if devices.is_dir() else []:
            drv = d / "driver"
            out.append(f"{d.name} ({os.path.basename(os.readlink(drv)) if drv.is_symlink() else 'no driver'})")
        return ", ".join(out) or "unknown"

    def _open_group(self, devdir: Path) -> None:
        try:
            self._container = os.open(devdir / "vfio", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise VfioError(f"{self.name}: cannot open {devdir / 'vfio'}: {exc.strerror}", exc.errno or 0) from None
        version = _ioctl(self._container, Ioctl.GET_API_VERSION, 0)
        if version != VFIO_API_VERSION:
            raise VfioError(f"{self.name}: VFIO API version {version}, this code speaks {VFIO_API_VERSION}")
        path = devdir / str(self.group_id)
        try:
            self._group = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            hint = (" (the group is open already: in another process, or this function is opened twice; "
                    "a VFIO group has one owner)") if exc.errno == errno.EBUSY else ""
            raise VfioError(f"{self.name}: cannot open {path}: {exc.strerror}{hint}", exc.errno or 0) from None
        status = sized(GroupStatus)
        _ioctl(self._group, Ioctl.GROUP_GET_STATUS, status)
        if not status.flags & uapi.GroupFlag.VIABLE:
            raise VfioError(f"{self.name}: IOMMU group {self.group_id} is not viable: every function in it must "
                            f"be bound to vfio-pci or to no driver; members: {self._group_members()}")
        self.iommu_type = next((t for t in (VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU)
                                if _ioctl(self._container, Ioctl.CHECK_EXTENSION, t) > 0), 0)
        if not self.iommu_type:
            noiommu = _ioctl(self._container, Ioctl.CHECK_EXTENSION, VFIO_NOIOMMU_IOMMU) > 0
            raise VfioError(f"{self.name}: the VFIO container supports neither the type1v2 nor the type1 IOMMU"
                            + (" (only no-IOMMU mode, which gives no DMA isolation and is not used)" if noiommu
                               else " (modprobe vfio_iommu_type1)"))
        fd = ctypes.c_int32(self._container)
        _ioctl(self._group, Ioctl.GROUP_SET_CONTAINER, fd)
        try:
            _ioctl(self._container, Ioctl.SET_IOMMU, self.iommu_type)
        except VfioError as exc:
            hint = (": the IOMMU has no interrupt remapping (enable it, e.g. QEMU -device intel-iommu,intremap=on, "
                    "or load vfio_iommu_type1 with allow_unsafe_interrupts=1)") if exc.errno == errno.EPERM else ""
            raise VfioError(f"{self.name}: {exc}{hint}", exc.errno) from None
        self._iommu_info()

    def _iommu_info(self) -> None:
        info = sized(IommuType1Info)
        _ioctl(self._container, Ioctl.IOMMU_GET_INFO, info)
        self.iova_pgsizes = info.iova_pgsizes if info.flags & uapi.IommuInfoFlag.PGSIZES else 0
        if not info.flags & uapi.IommuInfoFlag.CAPS or info.argsz <= ctypes.sizeof(IommuType1Info):
            return
        buf = bytearray(info.argsz)
        ctypes.c_uint32.from_buffer(buf, 0).value = info.argsz
        _ioctl(self._container, Ioctl.IOMMU_GET_INFO, buf)
        self.iova_ranges = iova_ranges(buf, IommuType1Info.from_buffer_copy(buf).cap_offset)

    def _open_device(self) -> None:
        # GET_DEVICE_FD takes a char *: a mutable buffer, so that ioctl returns the new fd (with bytes,
        # fcntl.ioctl would return the buffer and drop the result).
        name = ctypes.create_string_buffer(str(self.bdf).encode())
        self._device = _ioctl(self._group, Ioctl.GROUP_GET_DEVICE_FD, name, str(self.bdf))
        info = sized(DeviceInfo)
        _ioctl(self._device, Ioctl.DEVICE_GET_INFO, info)
        if not info.flags & uapi.DeviceFlag.PCI:
            raise VfioError(f"{self.name}: VFIO device flags {info.flags:#x} do not say PCI")
        self.device_flags = info.flags
        self.regions = {i: self._region_info(i) for i in range(min(info.num_regions, VFIO_PCI_NUM_REGIONS))}
        self.irqs = {i: self._irq_info(i) for i in range(info.num_irqs)}

    def _region_info(self, index: int) -> VfioRegion:
        info = sized(RegionInfoStruct, index=index)
        what = str(index)
        try:
            _ioctl(self._device, Ioctl.DEVICE_GET_REGION_INFO, info, what)
        except VfioError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return VfioRegion(index, 0, 0, 0)  # e.g. the VGA region of a function that is no VGA device
        sparse: tuple[tuple[int, int], ...] | None = None
        msix_mappable = False
        if info.flags & uapi.RegionFlag.CAPS and info.argsz > ctypes.sizeof(RegionInfoStruct):
            buf = bytearray(info.argsz)
            head = RegionInfoStruct.from_buffer(buf)
            head.argsz, head.index = info.argsz, index
            del head  # release the export before ioctl takes the buffer
            _ioctl(self._device, Ioctl.DEVICE_GET_REGION_INFO, buf, what)
            sparse, msix_mappable = region_caps(buf, RegionInfoStruct.from_buffer_copy(buf).cap_offset)
        return VfioRegion(index, info.flags, info.size, info.offset, sparse, msix_mappable)

    def _irq_info(self, index: int) -> VfioIrq:
        info = sized(IrqInfo, index=index)
        try:
            _ioctl(self._device, Ioctl.DEVICE_GET_IRQ_INFO, info, str(index))
        except VfioError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return VfioIrq(index, 0, 0)  # e.g. ERR on a conventional PCI function (vfio-pci: PCIe only)
        return VfioIrq(index, info.flags, info.count)

    def _live(self) -> int:
        if self._closed or self._device < 0:
            raise VfioError(f"{self.name}: device closed")
        return self._device

    # --- regions -------------------------------------------------------------------------------

    def _region(self, index: int) -> VfioRegion:
        region = self.regions.get(index)
        if region is None or region.size == 0:
            raise VfioError(f"{self.name}: region {index} does not exist")
        return region

    def region_info(self, index: int) -> RegionInfo:
        region = self.regions.get(index)
        if region is None:
            return RegionInfo(index, 0, RegionFlags(0))
        flags = RegionFlags(0)
        if region.flags & uapi.RegionFlag.READ:
            flags |= RegionFlags.READ
        if region.flags & uapi.RegionFlag.WRITE:
            flags |= RegionFlags.WRITE
        if region.mappable:
            flags |= RegionFlags.MMAP
        return RegionInfo(index, region.size, flags)

    def _check_range(self, region: VfioRegion, offset: int, size: int, what: str) -> None:
        if offset < 0 or size <= 0 or offset + size > region.size:
            raise VfioError(f"{self.name}: {what} of {size} bytes at {offset:#x} outside region {region.index} "
                            f"({region.size:#x} bytes)")

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        region = self._region(index)
        self._check_range(region, offset, size, "read")
        try:
            data = os.pread(self._live(), size, region.offset + offset)
        except OSError as exc:
            raise VfioError(f"{self.name}: read of region {index} at {offset:#x}+{size}: {exc.strerror}",
                            exc.errno or 0) from None
        if len(data) != size:
            raise VfioError(f"{self.name}: short read of region {index} at {offset:#x}: {len(data)} of {size}")
        self._end_of_interrupt(index)
        return data

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        region = self._region(index)
        self._check_range(region, offset, len(data), "write")
        try:
            done = os.pwrite(self._live(), data, region.offset + offset)
        except OSError as exc:
            raise VfioError(f"{self.name}: write of region {index} at {offset:#x}+{len(data)}: {exc.strerror}",
                            exc.errno or 0) from None
        if done != len(data):
            raise VfioError(f"{self.name}: short write of region {index} at {offset:#x}: {done} of {len(data)}")
        self._end_of_interrupt(index)

    def region_mmap(self, index: int) -> memoryview | None:
        """The whole BAR mapped, where vfio allows it (a BAR with the MSI-X table usually is not).

        Accesses through a memoryview have no guaranteed width: registers with side effects are
        accessed with :meth:`region_read`/:meth:`region_write`.
        """
        region = self.regions.get(index)
        if region is None or index > RegionIndex.BAR5 or not region.mappable:
            return None
        with self._lock:
            m = self._bar_mmaps.get(index)
            if m is None:
                prot = mmap.PROT_READ | (mmap.PROT_WRITE if region.flags & uapi.RegionFlag.WRITE else 0)
                try:
                    m = mmap.mmap(self._live(), region.size, mmap.MAP_SHARED, prot, offset=region.offset)
                except OSError as exc:
                    raise VfioError(f"{self.name}: mmap of BAR{index}: {exc.strerror}", exc.errno or 0) from None
                self._bar_mmaps[index] = m
            return memoryview(m)

    # --- DMA -----------------------------------------------------------------------------------

    def _iova_allowed(self, iova: int, size: int) -> bool:
        return not self.iova_ranges or any(lo <= iova and iova + size - 1 <= hi for lo, hi in self.iova_ranges)

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        if size <= 0 or not perm & DmaPerm.RW:
            raise VfioError(f"{self.name}: dma_map of {size:#x} bytes with permissions {perm!r}")
        if not self._iova_allowed(iova, size):
            ranges = ", ".join(f"[{lo:#x}, {hi:#x}]" for lo, hi in self.iova_ranges)
            raise VfioError(f"{self.name}: dma_map [{iova:#x}, +{size:#x}) is outside the IOMMU's usable IOVA "
                            f"ranges {ranges}")
        with self._lock:
            vaddr = map_fd(fd, size, offset, writable=bool(perm & DmaPerm.WRITE))
            flags = (uapi.DmaFlag.READ if perm & DmaPerm.READ else 0) | \
                    (uapi.DmaFlag.WRITE if perm & DmaPerm.WRITE else 0)
            request = sized(DmaMap, flags=flags, vaddr=vaddr, iova=iova, size=size)
            try:
                _ioctl(self._container, Ioctl.IOMMU_MAP_DMA, request, f"[{iova:#x}, +{size:#x})")
            except VfioError as exc:
                unmap_addr(vaddr, size)
                raise VfioError(f"{self.name}: {exc}", exc.errno) from None
            self._maps[iova] = _DmaMapping(iova, size, vaddr)

    def dma_unmap(self, iova: int, size: int) -> None:
        with self._lock:
            inside = [m for m in self._maps.values() if iova <= m.iova and m.iova + m.size <= iova + size]
            request = sized(DmaUnmap, iova=iova, size=size)
            try:
                _ioctl(self._container, Ioctl.IOMMU_UNMAP_DMA, request, f"[{iova:#x}, +{size:#x})")
            except VfioError as exc:
                raise VfioError(f"{self.name}: {exc} (type1 unmaps whole mappings only)", exc.errno) from None
            for m in inside:
                del self._maps[m.iova]
                unmap_addr(m.vaddr, m.size)
            if request.size != sum(m.size for m in inside):
                raise VfioError(f"{self.name}: dma_unmap [{iova:#x}, +{size:#x}) unmapped {request.size:#x} bytes, "
                                f"the mappings inside it hold {sum(m.size for m in inside):#x}")

    def _kernel_log(self) -> KernelLog:
        if self._kmsg is None:
            raise VfioError(f"{self.name}: DMA faults cannot be observed: {self._kmsg_error}")
        return self._kmsg

    def dma_faults(self) -> list[DmaFault]:
        log = self._kernel_log()
        with self._lock:
            return [f for f in (parse_fault(msg, self.bdf) for msg in log.messages()) if f is not None]

    def wait_dma_faults(self, timeout: float) -> list[DmaFault]:
        """Like :meth:`dma_faults`, but waits up to ``timeout`` for the first one: the IOMMU reports a
        fault by interrupt, and the kernel logs it a little after the device's access."""
        log = self._kernel_log()
        deadline = time.monotonic() + timeout
        while True:
            faults = self.dma_faults()
            left = deadline - time.monotonic()
            if faults or left <= 0 or not log.wait(left):
                return faults

    # --- interrupts ----------------------------------------------------------------------------

    def irq_count(self, index: int) -> int:
        irq = self.irqs.get(index)
        return irq.count if irq is not None and irq.flags & uapi.IrqInfoFlag.EVENTFD else 0

    def _set_irqs(self, index: int, start: int, fds: Sequence[int], what: str) -> None:
        flags = uapi.IrqSetFlag.ACTION_TRIGGER | (uapi.IrqSetFlag.DATA_EVENTFD if fds else uapi.IrqSetFlag.DATA_NONE)
        try:
            _ioctl(self._live(), Ioctl.DEVICE_SET_IRQS, irq_set(index, start, flags, fds), what)
        except VfioError as exc:
            raise VfioError(f"{self.name}: {exc}", exc.errno) from None

    def set_irqs(self, index: int, start: int, fds: Sequence[int | None]) -> None:
        count = self.irq_count(index)
        name = _irq_name(index)
        if count == 0:
            raise VfioError(f"{self.name}: the function has no {name} interrupts")
        if start < 0 or start + len(fds) > count:
            raise VfioError(f"{self.name}: {name} vectors {start}..{start + len(fds) - 1} beyond the {count} it has")
        with self._lock:
            bound = self._irqs.bound.get(index)
            want = list(bound) if bound is not None else []
            want += [-1] * (start + len(fds) - len(want))
            want[start:start + len(fds)] = [-1 if fd is None else fd for fd in fds]
            if not fds or (index == IrqIndex.INTX and want == [-1]):
                # An empty list disables the index; so does unbinding INTx, which vfio would otherwise
                # keep enabled (and MSI/MSI-X could not be enabled after it).
                if bound is not None:
                    self._set_irqs(index, 0, [], f"{name} off")
                    del self._irqs.bound[index]
                return
            others = [i for i in (IrqIndex.INTX, IrqIndex.MSI, IrqIndex.MSIX) if i != index and i in self._irqs.bound]
            if index in (IrqIndex.INTX, IrqIndex.MSI, IrqIndex.MSIX) and others:
                raise VfioError(f"{self.name}: {name} cannot be enabled while {_irq_name(others[0])} is "
                                "(disable it first: set_irqs with no fds)")
            if index in (IrqIndex.MSI, IrqIndex.MSIX) and bound is not None and len(want) > len(bound):
                # Kernels before 6.5 fix the vector count when MSI/MSI-X is enabled: to grow it, disable
                # and enable again with every binding (the function's table is written anew).
                self._set_irqs(index, 0, [], f"{name} off (to grow)")
                del self._irqs.bound[index]
                bound = None
            if bound is None:
                self._set_irqs(index, 0, want, f"{name} 0..{len(want) - 1}")
            else:
                self._set_irqs(index, start, want[start:start + len(fds)], f"{name} {start}..")
            self._irqs.bound[index] = want

    def _end_of_interrupt(self, index: int) -> None:
        """A BAR access after INTx fired: unmask the line (the kernel re-signals if it is still asserted)."""
        if index > RegionIndex.BAR5 or IrqIndex.INTX not in self._irqs.bound:
            return
        flags = uapi.IrqSetFlag.DATA_NONE | uapi.IrqSetFlag.ACTION_UNMASK
        with contextlib.suppress(VfioError):  # a device being closed: nothing left to unmask
            _ioctl(self._live(), Ioctl.DEVICE_SET_IRQS, irq_set(IrqIndex.INTX, 0, flags, count=1), "INTx unmask")

    # --- ioeventfd -----------------------------------------------------------------------------

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        region = self._region(index)
        size_flag = VFIO_DEVICE_IOEVENTFD_SIZE.get(width)
        if index > RegionIndex.BAR5 or size_flag is None:
            return False
        self._check_range(region, offset, width, "ioeventfd")
        data = 0 if value is None else value & ((1 << (8 * width)) - 1)
        request = sized(IoeventfdStruct, flags=size_flag, offset=region.offset + offset, data=data, fd=fd)
        with self._lock:
            try:
                _ioctl(self._live(), Ioctl.DEVICE_IOEVENTFD, request)
            except VfioError:
                # Not supported by this vfio driver or kernel, the MSI-X table, or the same write already
                # bound to another eventfd: the caller relays instead.
                return False
            self._ioeventfds[(index, offset, fd)] = _Ioeventfd(width, data)
        return True

    def ioeventfd_remove(self, index: int, offset: int, fd: int) -> None:
        with self._lock:
            entry = self._ioeventfds.pop((index, offset, fd), None)
            if entry is None:
                return
            region = self._region(index)
            request = sized(IoeventfdStruct, flags=VFIO_DEVICE_IOEVENTFD_SIZE[entry.width],
                            offset=region.offset + offset, data=entry.data, fd=-1)
            try:
                _ioctl(self._live(), Ioctl.DEVICE_IOEVENTFD, request, "remove")
            except VfioError as exc:
                raise VfioError(f"{self.name}: {exc}", exc.errno) from None

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def can_reset(self) -> bool:
        return bool(self.device_flags & uapi.DeviceFlag.RESET)

    def abilities(self) -> Abilities:
        """A real function: faults from the kernel log where it can be read, the wire as the spec said;
        no bench port, no recorded driver errors, no DMA observation."""
        return Abilities(
            wire=self.wire,
            wire_why=(f"{self.name}: a real port, its cable is not known to the bench"
                      if self.wire is WireKind.UNKNOWN else f"{self.name}: wire={self.wire} given in the target"),
            port=Lacking(f"{self.name}: a real function's link and wire cannot be driven from the bench"),
            errors=Lacking(f"{self.name}: a real function reports no driver errors beyond DEVICE_NEEDS_RESET"),
            crashes=Lacking(f"{self.name}: a real function has no device thread to watch"),
            dma_observer=Lacking(f"{self.name}: a real function's DMA accesses are not seen as they happen"),
            faults=self if self._kmsg is not None else Lacking(
                f"{self.name}: DMA faults cannot be observed: {self._kmsg_error}"),
            msix_masking=Lacking(f"{self.name}: vfio-pci owns the MSI-X table (writes there are dropped, reads "
                                 "return all ones): vectors and their pending bits cannot be masked by the bench"),
            config_header=Lacking(f"{self.name}: vfio-pci emulates the BAR registers, the Command register, the "
                                  "expansion ROM BAR and the MSI/MSI-X capabilities, and resets the function its own "
                                  "way: the bench sees the kernel's registers there, not the function's"),
        )

    def reset(self) -> None:
        if not self.can_reset:
            raise VfioError(f"{self.name}: the kernel knows no reset method for this function (no FLR, PM or "
                            "bus reset); reset it through its own registers")
        with self._lock:
            try:
                _ioctl(self._live(), Ioctl.DEVICE_RESET, 0)
            except VfioError as exc:
                raise VfioError(f"{self.name}: {exc}", exc.errno) from None

    def close(self) -> None:
        """Unbind interrupts and doorbells, unmap DMA, close the device, group and container."""
        with self._lock:
            if self._closed:
                return
            errors: list[str] = []
            if self._device >= 0:
                for index, offset, fd in list(self._ioeventfds):
                    try:
                        self.ioeventfd_remove(index, offset, fd)
                    except VfioError as exc:
                        errors.append(str(exc))
                for index in list(self._irqs.bound):
                    with contextlib.suppress(VfioError):
                        self._set_irqs(index, 0, [], "off")
                self._irqs.bound.clear()
            for iova, m in list(self._maps.items()):
                try:
                    self.dma_unmap(iova, m.size)
                except VfioError as exc:
                    errors.append(str(exc))
            for bar in self._bar_mmaps.values():
                with contextlib.suppress(BufferError):  # a caller still holds a view: the mapping dies with it
                    bar.close()
            self._bar_mmaps.clear()
            self._closed = True
            for fd in (self._device, self._group, self._container):
                if fd >= 0:
                    os.close(fd)
            self._device = self._group = self._container = -1
            if self._kmsg is not None:
                self._kmsg.close()
            if errors:
                raise VfioError(f"{self.name}: close: {'; '.join(errors)}")

    def __enter__(self) -> VfioPciDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


WIRES: Final = ("loopback", "none")


def open_vfio(spec: str) -> VfioPciDevice:
    """``vfio:`` target factory: ``spec`` is ``BDF[,wire=loopback|none]`` (no ``wire``: probed by the suite)."""
    address, opts = parse_spec("vfio", spec, ("wire",))
    wire = opts.get("wire")
    if wire is not None and wire not in WIRES:
        raise ValueError(f"vfio:{spec}: wire={wire!r} (known: {', '.join(WIRES)})")
    return VfioPciDevice(Bdf.parse(address), name=f"vfio:{spec}", wire=WireKind(wire or WireKind.UNKNOWN))
