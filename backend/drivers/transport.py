"""virtio-pci modern transport (4.1) over any ``PciDevice``: the register layer.

:class:`VirtioPciModern` is what a driver of the function needs and nothing
more: capability discovery, every common-config field at its natural width,
features, status, queues, notifications, ISR, device config (with the
config_generation retry) and the PCI_CFG access window. The guest driver of
the test bench and the checks use it directly; the vDPA vendor driver
(:mod:`backend.drivers.vdpa`) is built on it, the way DPDK keeps ``ifcvf.c``
apart from ``ifcvf_vdpa.c``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from backend.pci.device import (
    IrqIndex,
    PciDevice,
    PciError,
    RegionIndex,
    config_read,
    config_write,
    read_int,
    write_int,
)
from backend.virtio.features import F, NetF, has
from backend.virtio.pci_regs import (
    COMMON_CFG_WIDTH,
    MSIX_CONTROL_TABLE_SIZE_MASK,
    NOTIFY_CAP_LEN,
    NOTIFY_OFF_MULTIPLIER,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_CFG_CAP_LEN,
    PCI_CFG_DATA,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_CONFIG_SPACE_SIZE,
    PCI_STATUS_CAP_LIST,
    VENDOR_DATA_CAP_HDR_LEN,
    VENDOR_DATA_CAP_VENDOR_ID,
    VIRTIO_ID_NET,
    VIRTIO_NET_TRANSITIONAL_DEVICE_ID,
    VIRTIO_PCI_DEVICE_ID_BASE,
    VIRTIO_PCI_VENDOR_ID,
    CapType,
    CommonCfg,
    MsixCap,
    NetCfg,
    PciCfg,
    VirtioPciCap,
    notification_data,
    notify_address,
)


class VirtioPciError(PciError):
    """The transport found the device unusable or a register access failed its check."""


# --- capability discovery --------------------------------------------------------------------

#: Bound on the capability walk: a 256-byte space holds at most 48 four-byte-aligned entries.
_MAX_CAPS = (PCI_CONFIG_SPACE_SIZE - 0x40) // 4


def walk_capabilities(pci: PciDevice) -> list[tuple[int, int]]:
    """(cap id, config offset) of each entry of the PCI capability list, loop-safe."""
    if not config_read(pci, PciCfg.STATUS, 2) & PCI_STATUS_CAP_LIST:
        return []
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    ptr = config_read(pci, PciCfg.CAPABILITIES_POINTER, 1) & 0xFC
    while ptr and ptr not in seen and len(out) < _MAX_CAPS:
        if ptr < 0x40 or ptr + 2 > PCI_CONFIG_SPACE_SIZE:
            break
        seen.add(ptr)
        out.append((config_read(pci, ptr, 1), ptr))
        ptr = config_read(pci, ptr + 1, 1) & 0xFC
    return out


#: PCIe extended capabilities (config space 0x100-0xfff): the SR-IOV one gates VIRTIO_F_SR_IOV (FEAT-DRV-17).
PCI_EXT_CAP_ID_SRIOV = 0x10
#: PCIe extended configuration space ends here (4 KiB per function).
PCIE_CONFIG_SPACE_SIZE = 0x1000
#: Bound on the walk: at most this many 4-byte-aligned headers fit in extended space.
_MAX_EXT_CAPS = (PCIE_CONFIG_SPACE_SIZE - PCI_CONFIG_SPACE_SIZE) // 4


@dataclass(frozen=True)
class ExtendedCaps:
    """Extended capabilities found: (offset, id) in list order; ``config_size`` of the function."""

    config_size: int
    found: tuple[tuple[int, int], ...]

    @property
    def ids(self) -> set[int]:
        return {cap_id for _, cap_id in self.found}

    def describe(self) -> str:
        if self.config_size <= PCI_CONFIG_SPACE_SIZE:
            return f"config space is {self.config_size} bytes (no extended capabilities)"
        caps = ", ".join(f"{cap_id:#06x}@{off:#x}" for off, cap_id in self.found) or "none"
        return f"extended capabilities: {caps}"


def extended_capabilities(dev: PciDevice) -> ExtendedCaps:
    """Walk the extended capability list from 0x100 (header: id 16 bits, version 4, next 12)."""
    size = dev.region_info(RegionIndex.CONFIG).size
    found: list[tuple[int, int]] = []
    if size <= PCI_CONFIG_SPACE_SIZE:
        return ExtendedCaps(size, ())
    off = PCI_CONFIG_SPACE_SIZE
    seen: set[int] = set()
    while off and off not in seen and PCI_CONFIG_SPACE_SIZE <= off <= min(size, PCIE_CONFIG_SPACE_SIZE) - 4 \
            and len(found) < _MAX_EXT_CAPS:
        seen.add(off)
        (header,) = struct.unpack("<I", dev.region_read(RegionIndex.CONFIG, off, 4))
        if header in (0, 0xFFFFFFFF):  # an empty list reads 0 at 0x100
            break
        found.append((off, header & 0xFFFF))
        off = header >> 20 & 0xFFC
    return ExtendedCaps(size, tuple(found))


@dataclass(frozen=True)
class VirtioCap:
    """One virtio vendor capability as found in config space."""

    cap_offset: int  # where the capability sits in config space
    cfg_type: int
    bar: int
    id: int
    offset: int
    length: int
    cap_len: int
    notify_off_multiplier: int = 0  # NOTIFY_CFG only
    vendor_id: int | None = None  # VENDOR_CFG only


@dataclass(frozen=True)
class MsixInfo:
    cap_offset: int
    table_size: int
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int


_KNOWN_CAP_TYPES = frozenset(int(t) for t in CapType)
_BAR_STRUCTURES = frozenset({CapType.COMMON_CFG, CapType.NOTIFY_CFG, CapType.ISR_CFG, CapType.DEVICE_CFG})


# --- the transport --------------------------------------------------------------------------


class VirtioPciModern:
    """Register-level virtio-pci modern transport.

    Common-config fields are accessed at their natural width; 64-bit fields
    as two aligned 32-bit halves, low first (PCI-DRV-05/06).
    """

    def __init__(self, pci: PciDevice, *, reset_timeout: float = 1.0, feature_windows: int = 4,
                 generation_retries: int = 64) -> None:
        self.pci = pci
        self.reset_timeout = reset_timeout
        self.feature_windows = feature_windows
        self.generation_retries = generation_retries
        #: Features last written with :meth:`write_driver_features` (decides notification format).
        self.negotiated = 0
        self.vendor_caps: list[VirtioCap] = []  # every virtio capability, in list order
        self.skipped_caps: list[tuple[int, str]] = []  # (config offset, reason)
        self.msix: MsixInfo | None = None
        self._discover()
        self.common = self._require(CapType.COMMON_CFG)
        self.notify_cap = self._require(CapType.NOTIFY_CFG)

    # discovery ---------------------------------------------------------------------------------

    def _discover(self) -> None:
        for cap_id, off in walk_capabilities(self.pci):
            if cap_id == PCI_CAP_ID_MSIX and self.msix is None:
                ctrl = config_read(self.pci, off + MsixCap.MESSAGE_CONTROL, 2)
                table = config_read(self.pci, off + MsixCap.TABLE, 4)
                pba = config_read(self.pci, off + MsixCap.PBA, 4)
                self.msix = MsixInfo(off, (ctrl & MSIX_CONTROL_TABLE_SIZE_MASK) + 1,
                                     table & 7, table & ~7, pba & 7, pba & ~7)
            elif cap_id == PCI_CAP_ID_VNDR:
                cap = self._parse_vendor_cap(off)
                if cap is not None:
                    self.vendor_caps.append(cap)

    def _parse_vendor_cap(self, off: int) -> VirtioCap | None:
        cap_len = config_read(self.pci, off + 2, 1)
        cfg_type = config_read(self.pci, off + 3, 1)
        if cfg_type == CapType.VENDOR_CFG:
            # virtio_pci_vndr_data: no bar/offset/length, only vendor_id then the vendor's bytes;
            # the vendor_id is what a driver checks before interpreting anything (PCI-DRV-28).
            if cap_len < VENDOR_DATA_CAP_HDR_LEN:
                self.skipped_caps.append((off, f"vendor data cap_len {cap_len} too short"))
                return None
            vendor = config_read(self.pci, off + VENDOR_DATA_CAP_VENDOR_ID, 2)
            return VirtioCap(off, cfg_type, 0, 0, 0, 0, cap_len, vendor_id=vendor)
        if cap_len < VirtioPciCap.SIZE or off + VirtioPciCap.SIZE > PCI_CONFIG_SPACE_SIZE:
            self.skipped_caps.append((off, f"cap_len {cap_len} shorter than a virtio_pci_cap"))
            return None
        c = VirtioPciCap.unpack(self.pci.region_read(RegionIndex.CONFIG, off, VirtioPciCap.SIZE))
        if c.cfg_type not in _KNOWN_CAP_TYPES:  # PCI-DRV-07
            self.skipped_caps.append((off, f"reserved cfg_type {c.cfg_type}"))
            return None
        if c.cfg_type != CapType.PCI_CFG and c.bar > 5:  # PCI-DRV-10
            self.skipped_caps.append((off, f"reserved bar {c.bar}"))
            return None
        mult = 0
        if c.cfg_type == CapType.NOTIFY_CFG:
            if cap_len < NOTIFY_CAP_LEN:
                self.skipped_caps.append((off, "notify capability without notify_off_multiplier"))
                return None
            mult = config_read(self.pci, off + NOTIFY_OFF_MULTIPLIER, 4)
        elif c.cfg_type == CapType.PCI_CFG and cap_len < PCI_CFG_CAP_LEN:
            self.skipped_caps.append((off, "pci_cfg capability without pci_cfg_data"))
            return None
        if c.cfg_type in _BAR_STRUCTURES and self.pci.region_info(c.bar).size < c.offset + c.length:
            self.skipped_caps.append((off, f"structure beyond the end of BAR{c.bar}"))
            return None
        return VirtioCap(off, c.cfg_type, c.bar, c.id, c.offset, c.length, cap_len, mult)

    def cap(self, cfg_type: int) -> VirtioCap | None:
        """The first usable capability of a type (PCI-DRV-08)."""
        for c in self.vendor_caps:
            if c.cfg_type == cfg_type:
                return c
        return None

    def caps(self, cfg_type: int) -> list[VirtioCap]:
        return [c for c in self.vendor_caps if c.cfg_type == cfg_type]

    def _require(self, cfg_type: CapType) -> VirtioCap:
        c = self.cap(cfg_type)
        if c is None:
            raise VirtioPciError(f"{self.pci.name}: no usable {cfg_type.name} capability")
        return c

    @property
    def isr_cap(self) -> VirtioCap | None:
        return self.cap(CapType.ISR_CFG)

    @property
    def device_cap(self) -> VirtioCap | None:
        return self.cap(CapType.DEVICE_CFG)

    @property
    def pci_cfg_cap(self) -> VirtioCap | None:
        return self.cap(CapType.PCI_CFG)

    # PCI command register --------------------------------------------------------------------

    def enable_device(self) -> None:
        """Memory space and bus mastering on: the device may decode its BARs and DMA."""
        cmd = config_read(self.pci, PciCfg.COMMAND, 2)
        want = cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
        if want != cmd:
            config_write(self.pci, PciCfg.COMMAND, 2, want)

    def msix_table_size(self) -> int:
        """Vectors the function offers: the MSI-X capability, capped by what the access layer binds."""
        if self.msix is None:
            return 0
        return min(self.msix.table_size, self.pci.irq_count(IrqIndex.MSIX))

    # structure accesses ----------------------------------------------------------------------

    def _struct_read(self, cap: VirtioCap, off: int, width: int) -> int:
        if off < 0 or off + width > cap.length:
            raise VirtioPciError(f"{CapType(cap.cfg_type).name} read at {off:#x}+{width} beyond length {cap.length:#x}")
        return read_int(self.pci, cap.bar, cap.offset + off, width)

    def _struct_write(self, cap: VirtioCap, off: int, width: int, value: int) -> None:
        if off < 0 or off + width > cap.length:
            raise VirtioPciError(f"{CapType(cap.cfg_type).name} write at {off:#x}+{width} beyond length "
                                 f"{cap.length:#x}")
        write_int(self.pci, cap.bar, cap.offset + off, width, value)

    def read_common(self, fld: CommonCfg) -> int:
        width = COMMON_CFG_WIDTH[fld]
        if width == 8:
            lo = self._struct_read(self.common, fld, 4)
            return lo | self._struct_read(self.common, fld + 4, 4) << 32
        return self._struct_read(self.common, fld, width)

    def write_common(self, fld: CommonCfg, value: int) -> None:
        width = COMMON_CFG_WIDTH[fld]
        if width == 8:
            self._struct_write(self.common, fld, 4, value & 0xFFFFFFFF)
            self._struct_write(self.common, fld + 4, 4, value >> 32 & 0xFFFFFFFF)
            return
        self._struct_write(self.common, fld, width, value)

    # features --------------------------------------------------------------------------------

    def _read_features(self, select: CommonCfg, window: CommonCfg) -> int:
        """A feature word read 32 bits at a time, each window chosen through ``select``."""
        features = 0
        for sel in range(self.feature_windows):
            self.write_common(select, sel)
            features |= self.read_common(window) << (32 * sel)
        return features

    def device_features(self) -> int:
        return self._read_features(CommonCfg.DEVICE_FEATURE_SELECT, CommonCfg.DEVICE_FEATURE)

    def write_driver_features(self, features: int) -> None:
        if features >> (32 * self.feature_windows):
            raise VirtioPciError(f"features {features:#x} do not fit {self.feature_windows} windows")
        for sel in range(self.feature_windows):
            self.write_common(CommonCfg.DRIVER_FEATURE_SELECT, sel)
            self.write_common(CommonCfg.DRIVER_FEATURE, features >> (32 * sel) & 0xFFFFFFFF)
        self.negotiated = features

    def driver_features(self) -> int:
        return self._read_features(CommonCfg.DRIVER_FEATURE_SELECT, CommonCfg.DRIVER_FEATURE)

    # status ----------------------------------------------------------------------------------

    def status(self) -> int:
        return self.read_common(CommonCfg.DEVICE_STATUS)

    def set_status(self, status: int) -> None:
        self.write_common(CommonCfg.DEVICE_STATUS, status)

    def add_status(self, bits: int) -> int:
        """Set ``bits`` keeping every bit already set (STATUS-DRV-02); returns the value written."""
        value = self.status() | bits
        self.set_status(value)
        return value

    def poll(self, read: Callable[[], int], done: Callable[[int], bool], stuck: Callable[[int], str],
             timeout: float | None = None) -> int:
        """Read a register until ``done`` holds for its value (returned); past the deadline raise with ``stuck``'s
        text for the last value. The spec's mechanism for status, queue reset and vendor busy bits: a device
        answers at once or soon, so the first reads are back to back, then the poll backs off (up to 10 ms)."""
        deadline = time.monotonic() + (self.reset_timeout if timeout is None else timeout)
        spins = 0
        while True:
            value = read()
            if done(value):
                return value
            now = time.monotonic()
            if now >= deadline:
                raise VirtioPciError(f"{self.pci.name}: {stuck(value)}")
            spins += 1
            if spins > 64:  # a slow device: back off instead of hammering the register
                time.sleep(min(0.001 * (spins - 64), 0.01, deadline - now))

    def wait_status(self, predicate: Callable[[int], bool], timeout: float | None = None) -> int:
        """Poll device_status until ``predicate`` holds, bounded by a deadline."""
        return self.poll(self.status, predicate, lambda v: f"device_status stuck at {v:#x}", timeout)

    def reset(self, timeout: float | None = None) -> None:
        """Write 0 to device_status and poll until it reads 0 (PCI-DRV-19)."""
        self.set_status(0)
        self.wait_status(lambda s: s == 0, timeout)
        self.negotiated = 0

    # config vector, queues ---------------------------------------------------------------------

    def num_queues(self) -> int:
        return self.read_common(CommonCfg.NUM_QUEUES)

    def config_generation(self) -> int:
        return self.read_common(CommonCfg.CONFIG_GENERATION)

    def config_msix_vector(self) -> int:
        return self.read_common(CommonCfg.CONFIG_MSIX_VECTOR)

    def set_config_msix_vector(self, vector: int) -> int:
        """Map config changes to ``vector`` and return what reads back (PCI-DRV-35)."""
        self.write_common(CommonCfg.CONFIG_MSIX_VECTOR, vector)
        return self.read_common(CommonCfg.CONFIG_MSIX_VECTOR)

    def select_queue(self, queue: int) -> None:
        self.write_common(CommonCfg.QUEUE_SELECT, queue)

    def read_queue(self, queue: int, fld: CommonCfg) -> int:
        """A per-queue field of ``queue`` (selected first)."""
        self.select_queue(queue)
        return self.read_common(fld)

    def write_queue(self, queue: int, fld: CommonCfg, value: int) -> None:
        """Write a per-queue field of ``queue`` (selected first); it stays selected."""
        self.select_queue(queue)
        self.write_common(fld, value)

    def queue_size(self, queue: int) -> int:
        return self.read_queue(queue, CommonCfg.QUEUE_SIZE)

    def set_queue_size(self, queue: int, size: int) -> None:
        self.write_queue(queue, CommonCfg.QUEUE_SIZE, size)

    def queue_enabled(self, queue: int) -> bool:
        return bool(self.read_queue(queue, CommonCfg.QUEUE_ENABLE))

    def enable_queue(self, queue: int) -> None:
        """Write 1 to queue_enable; 0 is never written (PCI-DRV-20)."""
        self.write_queue(queue, CommonCfg.QUEUE_ENABLE, 1)

    def set_queue_addresses(self, queue: int, desc: int, driver: int, device: int) -> None:
        self.select_queue(queue)
        self.write_common(CommonCfg.QUEUE_DESC, desc)
        self.write_common(CommonCfg.QUEUE_DRIVER, driver)
        self.write_common(CommonCfg.QUEUE_DEVICE, device)

    def queue_msix_vector(self, queue: int) -> int:
        return self.read_queue(queue, CommonCfg.QUEUE_MSIX_VECTOR)

    def set_queue_msix_vector(self, queue: int, vector: int) -> int:
        """Map the queue's interrupt to ``vector`` and return what reads back (PCI-DRV-35)."""
        self.write_queue(queue, CommonCfg.QUEUE_MSIX_VECTOR, vector)
        return self.read_common(CommonCfg.QUEUE_MSIX_VECTOR)

    def queue_notify_off(self, queue: int) -> int:
        return self.read_queue(queue, CommonCfg.QUEUE_NOTIFY_OFF)

    def queue_notif_config_data(self, queue: int) -> int:
        return self.read_queue(queue, CommonCfg.QUEUE_NOTIF_CONFIG_DATA)

    def reset_queue(self, queue: int, timeout: float | None = None) -> None:
        """VIRTIO_F_RING_RESET: write 1 to queue_reset, done only once it reads 0 (PCI-DRV-21)."""
        self.write_queue(queue, CommonCfg.QUEUE_RESET, 1)
        self.poll(lambda: self.read_queue(queue, CommonCfg.QUEUE_RESET), lambda v: v == 0,
                  lambda _: f"queue {queue} reset did not complete", timeout)

    # notifications -----------------------------------------------------------------------------

    def notify_location(self, queue: int) -> tuple[int, int, int]:
        """(BAR, offset, width) of the queue's doorbell (4.1.4.4)."""
        width = 4 if has(self.negotiated, F.NOTIFICATION_DATA) else 2
        off = notify_address(0, self.queue_notify_off(queue), self.notify_cap.notify_off_multiplier)
        if off + width > self.notify_cap.length:
            raise VirtioPciError(f"queue {queue} notify address {off:#x} beyond the notification structure")
        return self.notify_cap.bar, self.notify_cap.offset + off, width

    def notify_value(self, queue: int, avail_idx: int = 0) -> int:
        """The value a notification carries under the negotiated features (NOTIF-DRV-03..06, B01)."""
        ident = (self.queue_notif_config_data(queue) if has(self.negotiated, F.NOTIF_CONFIG_DATA)
                 else queue)
        if has(self.negotiated, F.NOTIFICATION_DATA):
            return notification_data(ident, avail_idx & 0x7FFF, avail_idx >> 15 & 1)
        return ident & 0xFFFF

    def notify(self, queue: int, value: int | None = None, *, avail_idx: int = 0,
               location: tuple[int, int, int] | None = None) -> None:
        """Write the doorbell: 16-bit, or 32-bit with VIRTIO_F_NOTIFICATION_DATA (NOTIF-DRV-01/02)."""
        bar, off, width = location if location is not None else self.notify_location(queue)
        write_int(self.pci, bar, off, width, self.notify_value(queue, avail_idx) if value is None else value)

    # ISR -------------------------------------------------------------------------------------

    def read_isr(self) -> int:
        """Read (and so clear) the ISR status byte."""
        cap = self.isr_cap
        if cap is None:
            raise VirtioPciError(f"{self.pci.name}: no ISR capability")
        return self._struct_read(cap, 0, 1)

    # device configuration --------------------------------------------------------------------

    def _device(self) -> VirtioCap:
        cap = self.device_cap
        if cap is None:
            raise VirtioPciError(f"{self.pci.name}: no device configuration capability")
        return cap

    def device_config_size(self) -> int:
        cap = self.device_cap
        return cap.length if cap is not None else 0

    def read_config_fields(self, fields: list[tuple[int, int]]) -> list[int]:
        """Read (offset, width) fields as one consistent group (CFG-DRV-02).

        Each field is read at its natural width (8-byte fields as two 32-bit
        halves); the group repeats until config_generation is the same before
        and after it.
        """
        cap = self._device()
        for _ in range(self.generation_retries):
            before = self.config_generation()
            values = []
            for off, width in fields:
                if width == 8:
                    values.append(self._struct_read(cap, off, 4) | self._struct_read(cap, off + 4, 4) << 32)
                else:
                    values.append(self._struct_read(cap, off, width))
            if self.config_generation() == before:
                return values
        raise VirtioPciError(f"{self.pci.name}: config_generation kept changing over "
                             f"{self.generation_retries} attempts")

    def read_device_config(self, offset: int, size: int, width: int = 1) -> bytes:
        """``size`` bytes of device config read as ``width``-byte accesses, generation-checked."""
        if size % width or offset % width:
            raise ValueError("device config reads must be whole, aligned accesses")
        values = self.read_config_fields([(offset + i, width) for i in range(0, size, width)])
        return b"".join(v.to_bytes(width, "little") for v in values)

    def write_device_config(self, offset: int, data: bytes, width: int = 1) -> None:
        if len(data) % width or offset % width:
            raise ValueError("device config writes must be whole, aligned accesses")
        cap = self._device()
        for i in range(0, len(data), width):
            self._struct_write(cap, offset + i, width, int.from_bytes(data[i:i + width], "little"))

    # PCI configuration access capability (4.1.4.9) ---------------------------------------------

    def _pci_cfg_select(self, bar: int, offset: int, width: int) -> VirtioCap:
        cap = self.pci_cfg_cap
        if cap is None:
            raise VirtioPciError(f"{self.pci.name}: no PCI_CFG capability")
        if width not in (1, 2, 4) or offset % width:
            raise ValueError("PCI_CFG window accesses are 1, 2 or 4 bytes, aligned to their length")
        # Only bytes inside a BAR range another virtio structure describes (PCI-DRV-30).
        if not any(c.cfg_type in _BAR_STRUCTURES and c.bar == bar and c.offset <= offset
                   and offset + width <= c.offset + c.length for c in self.vendor_caps):
            raise ValueError(f"BAR{bar}+{offset:#x}/{width} is outside every range a virtio capability describes")
        base = cap.cap_offset
        config_write(self.pci, base + 4, 1, bar)  # cap.bar
        config_write(self.pci, base + 8, 4, offset)  # cap.offset
        config_write(self.pci, base + 12, 4, width)  # cap.length
        return cap

    def pci_cfg_read(self, bar: int, offset: int, width: int) -> int:
        cap = self._pci_cfg_select(bar, offset, width)
        return config_read(self.pci, cap.cap_offset + PCI_CFG_DATA, width)

    def pci_cfg_write(self, bar: int, offset: int, width: int, value: int) -> None:
        cap = self._pci_cfg_select(bar, offset, width)
        config_write(self.pci, cap.cap_offset + PCI_CFG_DATA, width, value)


def is_virtio_pci_id(vendor: int, device: int) -> bool:
    """Modern (0x1040..0x107f) or transitional (0x1000..0x103f) virtio ids (PCI-DRV-01/02)."""
    return vendor == VIRTIO_PCI_VENDOR_ID and (
        VIRTIO_PCI_DEVICE_ID_BASE <= device <= 0x107F or VIRTIO_NET_TRANSITIONAL_DEVICE_ID <= device <= 0x103F)


#: virtio_net_config fields (5.1.4): (offset, natural width, the features any one of which makes the field
#: exist). mac is an array of bytes, so it is six one-byte fields.
NET_CONFIG_FIELDS: tuple[tuple[int, int, tuple[int, ...]], ...] = (
    *((NetCfg.MAC + i, 1, (NetF.MAC,)) for i in range(6)),
    (NetCfg.STATUS, 2, (NetF.STATUS,)),
    (NetCfg.MAX_VIRTQUEUE_PAIRS, 2, (NetF.MQ, NetF.RSS)),
    (NetCfg.MTU, 2, (NetF.MTU,)),
    (NetCfg.SPEED, 4, (NetF.SPEED_DUPLEX,)),
    (NetCfg.DUPLEX, 1, (NetF.SPEED_DUPLEX,)),
    (NetCfg.RSS_MAX_KEY_SIZE, 1, (NetF.RSS, NetF.HASH_REPORT)),
    (NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 2, (NetF.RSS, NetF.HASH_REPORT)),
    (NetCfg.SUPPORTED_HASH_TYPES, 4, (NetF.RSS, NetF.HASH_REPORT)),
    (NetCfg.SUPPORTED_TUNNEL_TYPES, 4, (NetF.HASH_TUNNEL,)),
)
NET_CONFIG_WIDTHS: tuple[tuple[int, int], ...] = tuple((off, width) for off, width, _ in NET_CONFIG_FIELDS)
_CONFIG_WIDTHS = {VIRTIO_PCI_DEVICE_ID_BASE + VIRTIO_ID_NET: NET_CONFIG_WIDTHS,
                  VIRTIO_NET_TRANSITIONAL_DEVICE_ID: NET_CONFIG_WIDTHS}


_CONFIG_FEATURES = {VIRTIO_PCI_DEVICE_ID_BASE + VIRTIO_ID_NET: NET_CONFIG_FIELDS,
                    VIRTIO_NET_TRANSITIONAL_DEVICE_ID: NET_CONFIG_FIELDS}


def config_field_exists(pci_device_id: int, offset: int, offered: int) -> bool:
    """Whether the device config field at ``offset`` exists under the ``offered`` features (CFG-DRV-03).

    Fields of unknown device types, and bytes outside every known field, count as existing.
    """
    for off, width, features in _CONFIG_FEATURES.get(pci_device_id, ()):
        if off <= offset < off + width:
            return any(has(offered, f) for f in features)
    return True


def config_fields(pci_device_id: int, offset: int, size: int) -> list[tuple[int, int]]:
    """(offset, width) accesses covering [offset, offset+size): whole known fields, bytes elsewhere."""
    known = dict(_CONFIG_WIDTHS.get(pci_device_id, ()))
    out: list[tuple[int, int]] = []
    pos, end = offset, offset + size
    while pos < end:
        start = next((o for o, w in known.items() if o <= pos < o + w), pos)
        width = known.get(start, 1)
        out.append((start, width))
        pos = start + width
    return out
