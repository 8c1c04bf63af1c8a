"""virtio-pci modern transport (4.1) over any ``PciDevice``, and the generic vDPA driver on top of it.

:class:`VirtioPciModern` is the register-level transport: capability discovery,
every common-config field at its natural width, features, status, queues,
notifications, ISR, device config (with the config_generation retry) and the
PCI_CFG access window. :class:`VirtioPciVdpaDevice` implements
:class:`backend.device.VdpaDevice` with it, consulting the quirk table.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.device import NotSupported, VdpaError, VqState
from backend.drivers.quirks import PciIds, Quirk, QuirkTable, default_quirks
from backend.eventloop import EventLoop, consume_eventfd
from backend.pci.device import (
    DmaPerm,
    IrqIndex,
    PciDevice,
    PciError,
    RegionIndex,
    config_read,
    config_write,
    read_int,
    write_int,
)
from backend.virtio.features import DeviceStatus, F, has
from backend.virtio.pci_regs import (
    COMMON_CFG_WIDTH,
    MSIX_CONTROL_TABLE_SIZE_MASK,
    NO_VECTOR,
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
from backend.virtio.split_ring import AVAIL_ALIGN, DESC_ALIGN, USED_ALIGN, is_valid_split_size


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

    def has_common(self, fld: CommonCfg) -> bool:
        """Whether the device's common structure is long enough to hold ``fld``."""
        return fld + COMMON_CFG_WIDTH[fld] <= self.common.length

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

    def device_features(self) -> int:
        features = 0
        for sel in range(self.feature_windows):
            self.write_common(CommonCfg.DEVICE_FEATURE_SELECT, sel)
            features |= self.read_common(CommonCfg.DEVICE_FEATURE) << (32 * sel)
        return features

    def write_driver_features(self, features: int) -> None:
        if features >> (32 * self.feature_windows):
            raise VirtioPciError(f"features {features:#x} do not fit {self.feature_windows} windows")
        for sel in range(self.feature_windows):
            self.write_common(CommonCfg.DRIVER_FEATURE_SELECT, sel)
            self.write_common(CommonCfg.DRIVER_FEATURE, features >> (32 * sel) & 0xFFFFFFFF)
        self.negotiated = features

    def driver_features(self) -> int:
        features = 0
        for sel in range(self.feature_windows):
            self.write_common(CommonCfg.DRIVER_FEATURE_SELECT, sel)
            features |= self.read_common(CommonCfg.DRIVER_FEATURE) << (32 * sel)
        return features

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

    def wait_status(self, predicate: Callable[[int], bool], timeout: float | None = None) -> int:
        """Poll device_status until ``predicate`` holds; the spec's mechanism, bounded by a deadline."""
        deadline = time.monotonic() + (self.reset_timeout if timeout is None else timeout)
        spins = 0
        while True:
            value = self.status()
            if predicate(value):
                return value
            now = time.monotonic()
            if now >= deadline:
                raise VirtioPciError(f"{self.pci.name}: device_status stuck at {value:#x}")
            spins += 1
            if spins > 64:  # a slow device: back off instead of hammering the register
                time.sleep(min(0.001 * (spins - 64), 0.01, deadline - now))

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

    def queue_size(self, queue: int) -> int:
        self.select_queue(queue)
        return self.read_common(CommonCfg.QUEUE_SIZE)

    def set_queue_size(self, queue: int, size: int) -> None:
        self.select_queue(queue)
        self.write_common(CommonCfg.QUEUE_SIZE, size)

    def queue_enabled(self, queue: int) -> bool:
        self.select_queue(queue)
        return bool(self.read_common(CommonCfg.QUEUE_ENABLE))

    def enable_queue(self, queue: int) -> None:
        """Write 1 to queue_enable; 0 is never written (PCI-DRV-20)."""
        self.select_queue(queue)
        self.write_common(CommonCfg.QUEUE_ENABLE, 1)

    def set_queue_addresses(self, queue: int, desc: int, driver: int, device: int) -> None:
        self.select_queue(queue)
        self.write_common(CommonCfg.QUEUE_DESC, desc)
        self.write_common(CommonCfg.QUEUE_DRIVER, driver)
        self.write_common(CommonCfg.QUEUE_DEVICE, device)

    def queue_addresses(self, queue: int) -> tuple[int, int, int]:
        self.select_queue(queue)
        return (self.read_common(CommonCfg.QUEUE_DESC), self.read_common(CommonCfg.QUEUE_DRIVER),
                self.read_common(CommonCfg.QUEUE_DEVICE))

    def queue_msix_vector(self, queue: int) -> int:
        self.select_queue(queue)
        return self.read_common(CommonCfg.QUEUE_MSIX_VECTOR)

    def set_queue_msix_vector(self, queue: int, vector: int) -> int:
        """Map the queue's interrupt to ``vector`` and return what reads back (PCI-DRV-35)."""
        self.select_queue(queue)
        self.write_common(CommonCfg.QUEUE_MSIX_VECTOR, vector)
        return self.read_common(CommonCfg.QUEUE_MSIX_VECTOR)

    def queue_notify_off(self, queue: int) -> int:
        self.select_queue(queue)
        return self.read_common(CommonCfg.QUEUE_NOTIFY_OFF)

    def queue_notif_config_data(self, queue: int) -> int:
        self.select_queue(queue)
        return self.read_common(CommonCfg.QUEUE_NOTIF_CONFIG_DATA)

    def reset_queue(self, queue: int, timeout: float | None = None) -> None:
        """VIRTIO_F_RING_RESET: write 1 to queue_reset, done only once it reads 0 (PCI-DRV-21)."""
        self.select_queue(queue)
        self.write_common(CommonCfg.QUEUE_RESET, 1)
        deadline = time.monotonic() + (self.reset_timeout if timeout is None else timeout)
        while True:
            self.select_queue(queue)
            if self.read_common(CommonCfg.QUEUE_RESET) == 0:
                return
            now = time.monotonic()
            if now >= deadline:
                raise VirtioPciError(f"{self.pci.name}: queue {queue} reset did not complete")
            time.sleep(min(0.001, deadline - now))

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


# --- the generic vDPA driver -------------------------------------------------------------------


def is_virtio_pci_id(vendor: int, device: int) -> bool:
    """Modern (0x1040..0x107f) or transitional (0x1000..0x103f) virtio ids (PCI-DRV-01/02)."""
    return vendor == VIRTIO_PCI_VENDOR_ID and (
        VIRTIO_PCI_DEVICE_ID_BASE <= device <= 0x107F or VIRTIO_NET_TRANSITIONAL_DEVICE_ID <= device <= 0x103F)


#: Natural widths of virtio_net_config fields (5.1.4); mac is an array of bytes.
NET_CONFIG_WIDTHS: tuple[tuple[int, int], ...] = (
    *((NetCfg.MAC + i, 1) for i in range(6)), (NetCfg.STATUS, 2), (NetCfg.MAX_VIRTQUEUE_PAIRS, 2),
    (NetCfg.MTU, 2), (NetCfg.SPEED, 4), (NetCfg.DUPLEX, 1), (NetCfg.RSS_MAX_KEY_SIZE, 1),
    (NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 2), (NetCfg.SUPPORTED_HASH_TYPES, 4),
)
_CONFIG_WIDTHS = {VIRTIO_PCI_DEVICE_ID_BASE + VIRTIO_ID_NET: NET_CONFIG_WIDTHS,
                  VIRTIO_NET_TRANSITIONAL_DEVICE_ID: NET_CONFIG_WIDTHS}


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


@dataclass
class _Vq:
    num: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    ready: bool = False
    state: VqState = field(default_factory=VqState)
    kick_fd: int | None = None
    call_fd: int | None = None
    live: bool = False  # programmed into the device and enabled
    kick: tuple[int, int, int] | None = None  # (bar, offset, fd) of a registered ioeventfd
    relayed: bool = False


class VirtioPciVdpaDevice:
    """:class:`backend.device.VdpaDevice` over a virtio-pci modern function.

    The vhost-user side may send queue parameters in any order; they are kept
    here and written to the device when it goes live (DRIVER_OK, or
    ``set_vq_ready`` after it), in the order 4.1.5.1.3 asks for: size,
    addresses, vector, then queue_enable. Kick eventfds become ioeventfds on
    the queue's doorbell; call eventfds are bound to MSI-X vectors.
    """

    #: Features never passed upward: a kick eventfd carries no data, so the doorbell could not
    #: carry next_off/next_wrap as VIRTIO_F_NOTIFICATION_DATA requires.
    HIDDEN_FEATURES = 1 << F.NOTIFICATION_DATA

    def __init__(self, pci: PciDevice, *, quirks: QuirkTable | None = None, reset_timeout: float = 1.0,
                 owns_pci: bool = True) -> None:
        self.pci = pci
        self.ids = PciIds.read(pci)
        if not is_virtio_pci_id(self.ids.vendor, self.ids.device):
            raise VdpaError(f"{pci.name}: {self.ids} is not a virtio PCI function")
        self.quirk: Quirk = (quirks if quirks is not None else default_quirks()).lookup(self.ids)
        try:
            self.transport = VirtioPciModern(pci, reset_timeout=reset_timeout)
        except VirtioPciError as exc:
            raise VdpaError(str(exc)) from None
        self.transport.enable_device()
        # Taking the device over starts from a reset, whatever a previous owner left (INIT-DRV-01).
        try:
            self.transport.reset()
        except VirtioPciError as exc:
            raise VdpaError(str(exc)) from None
        self._owns_pci = owns_pci
        self._lock = threading.RLock()
        self._relay: EventLoop | None = None
        self._vqs: dict[int, _Vq] = {}
        self._num_max: dict[int, int] = {}
        self._config_fd: int | None = None
        self._vectors: dict[str, int] | None = None  # "config" / "q<i>" -> vector, once planned
        self._fanout: dict[int, int] = {}  # vector -> private eventfd relayed to several call fds
        self._features = 0
        self._closed = False

    # helpers ---------------------------------------------------------------------------------

    def _vq(self, index: int) -> _Vq:
        if not 0 <= index < self.get_vq_count():
            raise VdpaError(f"virtqueue {index} does not exist (device has {self.get_vq_count()})")
        return self._vqs.setdefault(index, _Vq())

    def _relay_thread(self) -> EventLoop:
        if self._relay is None:
            self._relay = EventLoop(f"{self.pci.name}-relay")
        return self._relay

    # features --------------------------------------------------------------------------------

    def get_device_features(self) -> int:
        return self.transport.device_features() & ~(self.HIDDEN_FEATURES | self.quirk.hide_features)

    def set_driver_features(self, features: int) -> None:
        with self._lock:
            extra = features & ~self.get_device_features()
            if extra:
                raise VdpaError(f"features {extra:#x} were not offered (FEAT-DRV-01)")
            if self.get_status() & DeviceStatus.FEATURES_OK:
                raise VdpaError("features cannot change after FEATURES_OK (INIT-DRV-07)")
            self.transport.write_driver_features(features)
            self._features = features

    def get_driver_features(self) -> int:
        return self._features

    # status ----------------------------------------------------------------------------------

    def get_status(self) -> int:
        return self.transport.status()

    def set_status(self, status: int) -> None:
        with self._lock:
            if status == 0:
                self.reset()
                return
            cur = self.get_status()
            if cur & ~status & ~DeviceStatus.SUSPEND:
                raise VdpaError(f"status {status:#x} would clear bits of {cur:#x} (STATUS-DRV-02)")
            new = status & ~cur
            if new & DeviceStatus.DRIVER_OK and not new & DeviceStatus.FAILED:
                self._go_live()
            self.transport.set_status(status)
            if new & DeviceStatus.FEATURES_OK and not self.get_status() & DeviceStatus.FEATURES_OK:
                raise VdpaError(f"device refused features {self._features:#x}: FEATURES_OK did not stick "
                                "(INIT-DRV-08)")

    # config space ----------------------------------------------------------------------------

    def get_config_size(self) -> int:
        return self.transport.device_config_size()

    def get_config(self, offset: int, size: int) -> bytes:
        """Bytes of device config, each field read whole at its natural width (PCI-DRV-05) in one
        generation-checked group (CFG-DRV-02); fields of unknown device types are read bytewise."""
        fields = config_fields(self.ids.device, offset, size)
        try:
            values = self.transport.read_config_fields(fields)
        except VirtioPciError as exc:
            raise VdpaError(str(exc)) from None
        raw = b"".join(v.to_bytes(w, "little") for v, (_, w) in zip(values, fields, strict=True))
        start = offset - fields[0][0] if fields else 0
        return raw[start:start + size]

    def set_config(self, offset: int, data: bytes) -> None:
        try:
            self.transport.write_device_config(offset, data)
        except VirtioPciError as exc:
            raise VdpaError(str(exc)) from None

    def get_config_generation(self) -> int:
        return self.transport.config_generation()

    # virtqueues ------------------------------------------------------------------------------

    def get_vq_count(self) -> int:
        return self.transport.num_queues()

    def get_vq_num_max(self, index: int) -> int:
        self._vq(index)
        if index not in self._num_max:  # queue_size reads the maximum until the driver writes it
            self._num_max[index] = self.transport.queue_size(index)
        return self._num_max[index]

    def set_vq_num(self, index: int, num: int) -> None:
        vq = self._vq(index)
        limit = self.get_vq_num_max(index)
        packed = has(self._features, F.RING_PACKED)
        if limit == 0:
            raise VdpaError(f"virtqueue {index} is not available (queue_size reads 0)")
        if not 0 < num <= limit or (not packed and not is_valid_split_size(num)):
            raise VdpaError(f"virtqueue {index}: size {num} invalid (max {limit}, split rings need a power "
                            "of two: PCI-DRV-17)")
        vq.num = num

    def set_vq_address(self, index: int, desc: int, driver: int, device: int) -> None:
        vq = self._vq(index)
        if not has(self._features, F.RING_PACKED) and (
                desc % DESC_ALIGN or driver % AVAIL_ALIGN or device % USED_ALIGN):
            raise VdpaError(f"virtqueue {index}: ring parts misaligned (SPLIT-DRV-01): "
                            f"desc {desc:#x}, driver {driver:#x}, device {device:#x}")
        vq.desc, vq.driver, vq.device = desc, driver, device

    def set_vq_ready(self, index: int, ready: bool) -> None:
        with self._lock:
            vq = self._vq(index)
            if ready:
                vq.ready = True
                if self._vectors is not None and not vq.live:  # already live: bring this one up now
                    self._bind_irqs()
                    self._program_queue(index, vq)
                return
            if vq.live:
                if not has(self._features, F.RING_RESET):
                    raise NotSupported(f"virtqueue {index}: disabling a live queue needs VIRTIO_F_RING_RESET "
                                       "(queue_enable is never written 0: PCI-DRV-20)")
                self._unregister_kick(vq)
                try:
                    self.transport.reset_queue(index)
                except VirtioPciError as exc:
                    raise VdpaError(str(exc)) from None
                vq.live = False
            vq.ready = False

    def get_vq_ready(self, index: int) -> bool:
        vq = self._vq(index)
        return self.transport.queue_enabled(index) if vq.live else vq.ready

    def set_vq_state(self, index: int, state: VqState) -> None:
        vq = self._vq(index)
        block = self.quirk.vq_state
        if block is None:
            if state.avail_idx != 0:
                raise NotSupported(f"virtqueue {index}: virtio-pci has no register for last_avail_idx; only 0 "
                                   "(the state after reset) can be set")
            vq.state = state
            return
        vq.state = state
        write_int(self.pci, block.bar, block.field_offset(index), block.width, state.avail_idx)

    def get_vq_state(self, index: int) -> VqState:
        vq = self._vq(index)
        block = self.quirk.vq_state
        if block is not None:
            avail = read_int(self.pci, block.bar, block.field_offset(index), block.width)
            return VqState(avail_idx=avail & 0xFFFF)
        if vq.live:
            raise NotSupported(f"virtqueue {index}: virtio-pci cannot report last_avail_idx of a running queue")
        return vq.state

    # kicks -----------------------------------------------------------------------------------

    def set_vq_kick(self, index: int, fd: int | None) -> None:
        with self._lock:
            vq = self._vq(index)
            self._unregister_kick(vq)
            vq.kick_fd = fd
            if vq.live:
                self._register_kick(index, vq)

    def _register_kick(self, index: int, vq: _Vq) -> None:
        if vq.kick_fd is None:
            return
        bar, off, width = self.transport.notify_location(index)
        value = self.transport.notify_value(index)
        fd = vq.kick_fd
        if self.pci.ioeventfd(bar, off, width, value, fd):
            vq.kick = (bar, off, fd)
            return
        # The device cannot take the eventfd as its doorbell: relay it (the report says so).
        transport, location = self.transport, (bar, off, width)

        def relay() -> None:
            if consume_eventfd(fd):
                transport.notify(index, value, location=location)

        self._relay_thread().watch(fd, relay)
        vq.relayed = True

    def _unregister_kick(self, vq: _Vq) -> None:
        if vq.kick is not None:
            bar, off, fd = vq.kick
            self.pci.ioeventfd_remove(bar, off, fd)
            vq.kick = None
        if vq.relayed and vq.kick_fd is not None and self._relay is not None:
            self._relay.unwatch(vq.kick_fd)
        vq.relayed = False

    def kicks_relayed(self) -> bool:
        return any(vq.relayed for vq in self._vqs.values())

    def calls_relayed(self) -> bool:
        """True where vectors are shared and a relay fans one interrupt out to several call eventfds."""
        return bool(self._fanout)

    # interrupts ------------------------------------------------------------------------------

    def set_vq_call(self, index: int, fd: int | None) -> None:
        with self._lock:
            self._vq(index).call_fd = fd
            if self._vectors is not None:
                self._bind_irqs()

    def set_config_call(self, fd: int | None) -> None:
        with self._lock:
            self._config_fd = fd
            if self._vectors is not None:
                self._bind_irqs()

    def vector_plan(self) -> dict[str, int]:
        """Config on vector 0 and queue i on i+1; with a small table, queues share (PCI-DRV-34)."""
        nvec = self.transport.msix_table_size()
        nq = self.get_vq_count()
        if nvec == 0:
            return {}
        plan = {"config": 0}
        for q in range(nq):
            plan[f"q{q}"] = q + 1 if nvec >= nq + 1 else min(1, nvec - 1)
        return plan

    def _bind_irqs(self) -> None:
        """(Re)bind every planned vector to its eventfd(s); a shared vector is fanned out by the relay."""
        if self._vectors is None:
            self._vectors = self.vector_plan()
        if not self._vectors:
            if self._config_fd is not None or any(vq.call_fd is not None for vq in self._vqs.values()):
                raise NotSupported(f"{self.pci.name}: no MSI-X vectors, call eventfds cannot be signalled")
            return
        targets: dict[int, list[int]] = {v: [] for v in set(self._vectors.values())}
        if self._config_fd is not None:
            targets[self._vectors["config"]].append(self._config_fd)
        for q, vq in self._vqs.items():
            if vq.call_fd is not None:
                targets[self._vectors[f"q{q}"]].append(vq.call_fd)
        fds: list[int | None] = [None] * (max(targets) + 1)
        for vector, calls in targets.items():
            if len(calls) <= 1:
                self._drop_fanout(vector)
                fds[vector] = calls[0] if calls else None
            else:
                fds[vector] = self._fanout_fd(vector, calls)
        try:
            self.pci.set_irqs(IrqIndex.MSIX, 0, fds)
        except PciError as exc:
            raise VdpaError(f"binding MSI-X vectors: {exc}") from None

    def _fanout_fd(self, vector: int, calls: list[int]) -> int:
        src = self._fanout.get(vector)
        if src is None:
            src = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._fanout[vector] = src
        targets = tuple(calls)

        def fan_out() -> None:
            if consume_eventfd(src):
                for fd in targets:  # every sharer hears it; spurious ones are allowed (SPLIT-DRV-16)
                    os.eventfd_write(fd, 1)

        self._relay_thread().watch(src, fan_out)
        return src

    def _drop_fanout(self, vector: int) -> None:
        src = self._fanout.pop(vector, None)
        if src is not None:
            if self._relay is not None:
                self._relay.unwatch(src)
            os.close(src)

    def _check_vector(self, what: str, wrote: int, got: int) -> None:
        if got != wrote:
            raise VdpaError(f"{what}: MSI-X vector {wrote} read back as {got:#x} (PCI-DRV-35)")

    # going live ------------------------------------------------------------------------------

    def _go_live(self) -> None:
        """At DRIVER_OK: bind vectors, map config changes, program and enable every ready queue."""
        self._bind_irqs()
        assert self._vectors is not None
        if self._vectors:
            v = self._vectors["config"]
            self._check_vector("config", v, self.transport.set_config_msix_vector(v))
        for index, vq in sorted(self._vqs.items()):
            if vq.ready and not vq.live:
                self._program_queue(index, vq)

    def _program_queue(self, index: int, vq: _Vq) -> None:
        if vq.num == 0:
            raise VdpaError(f"virtqueue {index} enabled without a size")
        t = self.transport
        t.set_queue_size(index, vq.num)
        t.set_queue_addresses(index, vq.desc, vq.driver, vq.device)
        assert self._vectors is not None
        vector = self._vectors.get(f"q{index}", NO_VECTOR)
        self._check_vector(f"virtqueue {index}", vector, t.set_queue_msix_vector(index, vector))
        block = self.quirk.vq_state
        if block is not None:
            write_int(self.pci, block.bar, block.field_offset(index), block.width, vq.state.avail_idx)
        t.enable_queue(index)
        vq.live = True
        self._register_kick(index, vq)

    # suspend / resume --------------------------------------------------------------------------

    def suspend(self) -> None:
        if not has(self._features, F.SUSPEND):
            raise NotSupported("suspend needs VIRTIO_F_SUSPEND")
        with self._lock:
            self.transport.add_status(DeviceStatus.SUSPEND)
            try:
                self.transport.wait_status(lambda s: bool(s & DeviceStatus.SUSPEND))
            except VirtioPciError as exc:
                raise VdpaError(str(exc)) from None

    def resume(self) -> None:
        if not has(self._features, F.SUSPEND):
            raise NotSupported("resume needs VIRTIO_F_SUSPEND")
        with self._lock:
            self.transport.set_status(self.get_status() & ~DeviceStatus.SUSPEND)
            try:
                self.transport.wait_status(lambda s: not s & DeviceStatus.SUSPEND)
            except VirtioPciError as exc:
                raise VdpaError(str(exc)) from None

    # DMA -------------------------------------------------------------------------------------

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        try:
            self.pci.dma_map(iova, size, fd, offset, perm)
        except PciError as exc:
            raise VdpaError(str(exc)) from None

    def dma_unmap(self, iova: int, size: int) -> None:
        try:
            self.pci.dma_unmap(iova, size)
        except PciError as exc:
            raise VdpaError(str(exc)) from None

    # lifecycle -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Device reset (bounded wait for status 0); kicks, vectors and queue setup are dropped."""
        with self._lock:
            for vq in self._vqs.values():
                self._unregister_kick(vq)
            for vector in list(self._fanout):
                self._drop_fanout(vector)
            if self._vectors:
                try:
                    self.pci.set_irqs(IrqIndex.MSIX, 0, [])
                except PciError as exc:
                    raise VdpaError(f"unbinding MSI-X vectors: {exc}") from None
            self._vectors = None
            self._vqs.clear()
            self._num_max.clear()
            self._config_fd = None
            self._features = 0
            try:
                self.transport.reset()
            except VirtioPciError as exc:
                raise VdpaError(str(exc)) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.reset()
        finally:
            if self._relay is not None:
                self._relay.close()
                self._relay = None
            if self._owns_pci:
                self.pci.close()
