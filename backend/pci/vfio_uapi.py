"""``<linux/vfio.h>`` structures, declared once.

:mod:`backend.pci.vfio` hands them to the kernel as ctypes structures (:meth:`backend.wire.Layout.ctype`);
vfio-user (:mod:`backend.pci.vfio_user_msg`) sends the same structs on its socket, as its specification
mirrors this header. Every ioctl argument begins with ``argsz`` (the size the caller offers, so a
later kernel can tell an old caller) and ``flags``; the flags of each struct are an ``IntFlag`` here.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Final

from backend.wire import INT32, UINT16, UINT32, UINT64, Layout

ARGSZ: Final = Layout(argsz=UINT32, flags=UINT32)
GROUP_STATUS: Final = ARGSZ
DEVICE_INFO: Final = ARGSZ.extend(num_regions=UINT32, num_irqs=UINT32, cap_offset=UINT32)
REGION_INFO: Final = ARGSZ.extend(index=UINT32, cap_offset=UINT32, size=UINT64, offset=UINT64)
INFO_CAP_HEADER: Final = Layout(id=UINT16, version=UINT16, next=UINT32)
#: ``vfio_region_info_cap_sparse_mmap`` without its trailing ``areas[]``.
SPARSE_MMAP_CAP: Final = INFO_CAP_HEADER.extend(nr_areas=UINT32, reserved=UINT32)
SPARSE_MMAP_AREA: Final = Layout(offset=UINT64, size=UINT64)
IRQ_INFO: Final = ARGSZ.extend(index=UINT32, count=UINT32)
#: ``vfio_irq_set`` without its trailing ``data[]``.
IRQ_SET: Final = ARGSZ.extend(index=UINT32, start=UINT32, count=UINT32)
IOMMU_TYPE1_INFO: Final = ARGSZ.extend(iova_pgsizes=UINT64, cap_offset=UINT32)
#: ``vfio_iommu_type1_info_cap_iova_range`` without its trailing ranges.
IOVA_RANGE_CAP: Final = INFO_CAP_HEADER.extend(nr_iovas=UINT32, reserved=UINT32)
IOVA_RANGE: Final = Layout(start=UINT64, end=UINT64)
DMA_MAP: Final = ARGSZ.extend(vaddr=UINT64, iova=UINT64, size=UINT64)
DMA_UNMAP: Final = ARGSZ.extend(iova=UINT64, size=UINT64)
DEVICE_IOEVENTFD: Final = ARGSZ.extend(offset=UINT64, data=UINT64, fd=INT32)


class GroupFlag(IntFlag):
    VIABLE = 1 << 0  # every device of the group is bound to vfio (or to no driver)
    CONTAINER_SET = 1 << 1


class DeviceFlag(IntFlag):
    NONE = 0
    RESET = 1
    PCI = 2


class DmaFlag(IntFlag):
    READ = 1  # the device may read the mapping
    WRITE = 2  # the device may write it


class RegionFlag(IntFlag):
    NONE = 0
    READ = 1
    WRITE = 2
    MMAP = 4
    CAPS = 8


class RegionCapId(IntEnum):
    SPARSE_MMAP = 1
    TYPE = 2
    MSIX_MAPPABLE = 3  # the MSI-X table may be mmapped with the rest of its BAR


class IrqInfoFlag(IntFlag):
    NONE = 0
    EVENTFD = 1
    MASKABLE = 2
    AUTOMASKED = 4
    NORESIZE = 8


class IrqSetFlag(IntFlag):
    DATA_NONE = 1 << 0
    DATA_BOOL = 1 << 1
    DATA_EVENTFD = 1 << 2
    ACTION_MASK = 1 << 3
    ACTION_UNMASK = 1 << 4
    ACTION_TRIGGER = 1 << 5


IRQ_DATA_MASK: Final = IrqSetFlag.DATA_NONE | IrqSetFlag.DATA_BOOL | IrqSetFlag.DATA_EVENTFD
IRQ_ACTION_MASK: Final = IrqSetFlag.ACTION_MASK | IrqSetFlag.ACTION_UNMASK | IrqSetFlag.ACTION_TRIGGER


class IommuInfoFlag(IntFlag):
    PGSIZES = 1 << 0
    CAPS = 1 << 1


#: ``vfio_iommu_type1_info`` capability id of the usable IOVA ranges.
IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: Final = 1
