"""virtio-pci modern transport wire format (4.1): PCI config header, capabilities, register layouts.

Shared by the device models (which serve these registers) and by every driver
(the backend's vendor driver and the test bench's guest driver).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

VIRTIO_PCI_VENDOR_ID = 0x1AF4
VIRTIO_PCI_DEVICE_ID_BASE = 0x1040
VIRTIO_ID_NET = 1
VIRTIO_NET_TRANSITIONAL_DEVICE_ID = 0x1000
NO_VECTOR = 0xFFFF
PCI_CLASS_NETWORK_ETHERNET = 0x020000


class PciCfg(IntEnum):
    """Offsets in the type-0 PCI configuration header."""

    VENDOR_ID = 0x00
    DEVICE_ID = 0x02
    COMMAND = 0x04
    STATUS = 0x06
    REVISION_ID = 0x08
    CLASS_PROG = 0x09
    HEADER_TYPE = 0x0E
    BAR0 = 0x10
    SUBSYSTEM_VENDOR_ID = 0x2C
    SUBSYSTEM_ID = 0x2E
    CAPABILITIES_POINTER = 0x34
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D


PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_STATUS_INTERRUPT = 0x8
PCI_STATUS_CAP_LIST = 0x10
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_MSIX = 0x11
PCI_CONFIG_SPACE_SIZE = 256
PCI_BAR_MEM_TYPE_64 = 0x4


class CapType(IntEnum):
    """cfg_type of a virtio vendor-specific capability (4.1.4)."""

    COMMON_CFG = 1
    NOTIFY_CFG = 2
    ISR_CFG = 3
    DEVICE_CFG = 4
    PCI_CFG = 5
    SHARED_MEMORY_CFG = 8
    VENDOR_CFG = 9


@dataclass(frozen=True)
class VirtioPciCap:
    """struct virtio_pci_cap (16 bytes) plus the extra fields some types append."""

    cap_vndr: int
    cap_next: int
    cap_len: int
    cfg_type: int
    bar: int
    id: int
    offset: int
    length: int

    FORMAT = struct.Struct("<BBBBBB2xII")
    SIZE = 16

    @classmethod
    def unpack(cls, raw: bytes) -> VirtioPciCap:
        return cls(*cls.FORMAT.unpack_from(raw))

    def pack(self) -> bytes:
        return self.FORMAT.pack(self.cap_vndr, self.cap_next, self.cap_len, self.cfg_type,
                                self.bar, self.id, self.offset, self.length)


# Offsets inside the extra data of particular capability types.
NOTIFY_OFF_MULTIPLIER = 16  # u32 after the 16-byte header (struct virtio_pci_notify_cap)
NOTIFY_CAP_LEN = 20
PCI_CFG_DATA = 16  # u8[4] pci_cfg_data after the header (struct virtio_pci_cfg_cap)
PCI_CFG_CAP_LEN = 20
# struct virtio_pci_vndr_data is cap_vndr, cap_next, cap_len, cfg_type, then le16 vendor_id at byte 4
# (it does not carry bar/offset/length; the vendor-defined data follows, padded to 4 bytes).
VENDOR_DATA_CAP_VENDOR_ID = 4
VENDOR_DATA_CAP_HDR_LEN = 6


class CommonCfg(IntEnum):
    """struct virtio_pci_common_cfg offsets (4.1.4.3)."""

    DEVICE_FEATURE_SELECT = 0x00
    DEVICE_FEATURE = 0x04
    DRIVER_FEATURE_SELECT = 0x08
    DRIVER_FEATURE = 0x0C
    CONFIG_MSIX_VECTOR = 0x10
    NUM_QUEUES = 0x12
    DEVICE_STATUS = 0x14
    CONFIG_GENERATION = 0x15
    QUEUE_SELECT = 0x16
    QUEUE_SIZE = 0x18
    QUEUE_MSIX_VECTOR = 0x1A
    QUEUE_ENABLE = 0x1C
    QUEUE_NOTIFY_OFF = 0x1E
    QUEUE_DESC = 0x20
    QUEUE_DRIVER = 0x28
    QUEUE_DEVICE = 0x30
    QUEUE_NOTIF_CONFIG_DATA = 0x38
    QUEUE_RESET = 0x3A
    ADMIN_QUEUE_INDEX = 0x3C
    ADMIN_QUEUE_NUM = 0x3E


#: Natural width of each common configuration field, in bytes.
COMMON_CFG_WIDTH: dict[CommonCfg, int] = {
    CommonCfg.DEVICE_FEATURE_SELECT: 4, CommonCfg.DEVICE_FEATURE: 4,
    CommonCfg.DRIVER_FEATURE_SELECT: 4, CommonCfg.DRIVER_FEATURE: 4,
    CommonCfg.CONFIG_MSIX_VECTOR: 2, CommonCfg.NUM_QUEUES: 2, CommonCfg.DEVICE_STATUS: 1,
    CommonCfg.CONFIG_GENERATION: 1, CommonCfg.QUEUE_SELECT: 2, CommonCfg.QUEUE_SIZE: 2,
    CommonCfg.QUEUE_MSIX_VECTOR: 2, CommonCfg.QUEUE_ENABLE: 2, CommonCfg.QUEUE_NOTIFY_OFF: 2,
    CommonCfg.QUEUE_DESC: 8, CommonCfg.QUEUE_DRIVER: 8, CommonCfg.QUEUE_DEVICE: 8,
    CommonCfg.QUEUE_NOTIF_CONFIG_DATA: 2, CommonCfg.QUEUE_RESET: 2,
    CommonCfg.ADMIN_QUEUE_INDEX: 2, CommonCfg.ADMIN_QUEUE_NUM: 2,
}
COMMON_CFG_SIZE = 0x40

ISR_QUEUE = 0x1
ISR_CONFIG = 0x2


class NetCfg(IntEnum):
    """struct virtio_net_config offsets (5.1.4)."""

    MAC = 0x00  # u8[6]
    STATUS = 0x06  # le16
    MAX_VIRTQUEUE_PAIRS = 0x08  # le16
    MTU = 0x0A  # le16
    SPEED = 0x0C  # le32
    DUPLEX = 0x10  # u8
    RSS_MAX_KEY_SIZE = 0x11  # u8
    RSS_MAX_INDIRECTION_TABLE_LENGTH = 0x12  # le16
    SUPPORTED_HASH_TYPES = 0x14  # le32
    SUPPORTED_TUNNEL_TYPES = 0x18  # le32, with VIRTIO_NET_F_HASH_TUNNEL


NET_CFG_SIZE = 0x1C
VIRTIO_NET_S_LINK_UP = 1
VIRTIO_NET_S_ANNOUNCE = 2


class MsixCap(IntEnum):
    """MSI-X capability layout in PCI config space."""

    MESSAGE_CONTROL = 2  # le16: table size - 1 (bits 10:0), function mask (14), enable (15)
    TABLE = 4  # le32: BIR (2:0) | offset
    PBA = 8  # le32: BIR (2:0) | offset


MSIX_CAP_LEN = 12
MSIX_CONTROL_TABLE_SIZE_MASK = 0x7FF
MSIX_CONTROL_FUNCTION_MASK = 1 << 14
MSIX_CONTROL_ENABLE = 1 << 15
MSIX_ENTRY_SIZE = 16  # addr lo, addr hi, data, vector control
MSIX_ENTRY_VECTOR_CTRL = 12
MSIX_ENTRY_CTRL_MASKED = 1


def notify_address(notify_cap_offset: int, queue_notify_off: int, notify_off_multiplier: int) -> int:
    """BAR offset of a queue's doorbell (4.1.4.4)."""
    return notify_cap_offset + queue_notify_off * notify_off_multiplier


def notification_data(vq_index: int, next_off: int, next_wrap: int) -> int:
    """32-bit value written with VIRTIO_F_NOTIFICATION_DATA (split: next_off = avail idx low 15 bits)."""
    return (vq_index & 0xFFFF) | (next_off & 0x7FFF) << 16 | (next_wrap & 1) << 31


@dataclass(frozen=True)
class RawCapability:
    """One entry of the PCI capability list as found in config space."""

    offset: int
    cap_id: int
    data: bytes  # from cap_id through cap_len (vendor caps) or a fixed 16-byte window otherwise

    @property
    def cfg_type(self) -> int | None:
        """virtio cfg_type of a vendor-specific capability, None for other capabilities."""
        if self.cap_id != PCI_CAP_ID_VNDR or len(self.data) < 4:
            return None
        return self.data[3]

    @property
    def virtio(self) -> VirtioPciCap | None:
        """The bar/offset/length header; None for non-virtio caps and for vendor data caps (no such fields)."""
        if self.cfg_type in (None, CapType.VENDOR_CFG) or len(self.data) < VirtioPciCap.SIZE:
            return None
        return VirtioPciCap.unpack(self.data)


def walk_capabilities(read_config: Callable[[int, int], bytes], limit: int = 48) -> list[RawCapability]:
    """Follow the capability list from 0x34; stops on loops, bad pointers or after ``limit`` entries."""
    caps: list[RawCapability] = []
    seen: set[int] = set()
    status = int.from_bytes(read_config(PciCfg.STATUS, 2), "little")
    if not status & PCI_STATUS_CAP_LIST:
        return caps
    ptr = read_config(PciCfg.CAPABILITIES_POINTER, 1)[0] & 0xFC
    while ptr and ptr not in seen and 0x40 <= ptr <= PCI_CONFIG_SPACE_SIZE - 2 and len(caps) < limit:
        seen.add(ptr)
        head = read_config(ptr, 3)
        cap_id, nxt = head[0], head[1]
        length = max(head[2], 2) if cap_id == PCI_CAP_ID_VNDR else 16
        length = min(length, PCI_CONFIG_SPACE_SIZE - ptr)
        caps.append(RawCapability(ptr, cap_id, read_config(ptr, length)))
        ptr = nxt & 0xFC
    return caps
