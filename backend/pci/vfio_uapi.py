"""``<linux/vfio.h>`` structures, declared once.

:mod:`backend.pci.vfio` hands them to the kernel as ctypes structures (:meth:`backend.wire.Layout.ctype`);
vfio-user (:mod:`backend.pci.vfio_user_msg`) sends the same structs on its socket, as its specification
mirrors this header. Every ioctl argument begins with ``argsz`` (the size the caller offers, so a
later kernel can tell an old caller) and ``flags``.
"""

from __future__ import annotations

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
