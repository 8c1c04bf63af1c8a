"""The ``PciDevice`` seam and its real-device implementations (vfio-user, Linux VFIO)."""

from backend.pci.device import (
    DmaFault,
    DmaPerm,
    IrqIndex,
    PciDevice,
    PciError,
    RegionFlags,
    RegionIndex,
    RegionInfo,
)

__all__ = ["DmaFault", "DmaPerm", "IrqIndex", "PciDevice", "PciError", "RegionFlags", "RegionIndex",
           "RegionInfo"]
