"""PCIe extended configuration space (offsets 0x100-0xfff) for the SR-IOV rows (FEAT-DEV-14/15, FEAT-DRV-17).

:func:`extended_capabilities` reads a function's own extended capability list (a function whose config
region is the conventional 256 bytes has none). :class:`SriovConfigSpace` is the config-editing proxy
(:class:`~testbenches.monitor.config_proxy.ConfigSpaceEditor`, the target's capabilities kept live) with
a 4 KiB config region whose extended space presents an SR-IOV capability, or presents an empty extended
list, so that a driver can be shown a function with or without SR-IOV whatever the target has.
"""

from __future__ import annotations

import struct

from backend.drivers.transport import (  # the walk is the driver's too (it hides SR_IOV without the capability)
    PCI_EXT_CAP_ID_SRIOV,
    PCIE_CONFIG_SPACE_SIZE,
    ExtendedCaps,
    extended_capabilities,
)
from backend.pci.device import PciDevice, RegionIndex, RegionInfo
from backend.virtio.pci_regs import PCI_CONFIG_SPACE_SIZE
from testbenches.monitor.config_proxy import ConfigSpaceEditor, target_caps

#: The SR-IOV extended capability structure is 0x40 bytes (PCIe base spec 9.3.3).
SRIOV_CAP_LEN = 0x40
SRIOV_CONTROL = 0x08
SRIOV_CONTROL_VF_ENABLE = 0x1

__all__ = ["PCI_EXT_CAP_ID_SRIOV", "ExtendedCaps", "SriovConfigSpace", "extended_capabilities", "sriov_capability"]


def sriov_capability(total_vfs: int = 4) -> bytes:
    """An SR-IOV extended capability (version 1, last in the list) offering ``total_vfs`` VFs, VFs disabled."""
    cap = bytearray(SRIOV_CAP_LEN)
    struct.pack_into("<I", cap, 0, PCI_EXT_CAP_ID_SRIOV | 1 << 16)
    struct.pack_into("<HH", cap, 0x0C, total_vfs, total_vfs)  # InitialVFs, TotalVFs
    struct.pack_into("<HH", cap, 0x14, 1, 1)  # First VF Offset, VF Stride
    struct.pack_into("<I", cap, 0x1C, 0x553)  # supported page sizes: 4K, 8K, 64K, 256K, 1M, 4M
    struct.pack_into("<I", cap, 0x20, 1)  # system page size 4K
    return bytes(cap)


class SriovConfigSpace(ConfigSpaceEditor):
    """The target with its virtio and MSI-X capabilities live and a 4 KiB config region whose extended
    space holds an SR-IOV capability (``sriov``) or an empty list. Writes there land in the image and are
    kept in :attr:`extended_writes` (a driver enabling VFs shows up as a write of VF Enable)."""

    def __init__(self, inner: PciDevice, *, sriov: bool) -> None:
        super().__init__(inner, [c.entry() for c in target_caps(inner)])
        self.sriov = sriov
        self.extended = bytearray(PCIE_CONFIG_SPACE_SIZE - PCI_CONFIG_SPACE_SIZE)
        if sriov:
            self.extended[:SRIOV_CAP_LEN] = sriov_capability()
        self.extended_writes: list[tuple[int, bytes]] = []

    def region_info(self, index: int) -> RegionInfo:
        info = super().region_info(index)
        if index == RegionIndex.CONFIG:
            return RegionInfo(info.index, PCIE_CONFIG_SPACE_SIZE, info.flags)
        return info

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index != RegionIndex.CONFIG or offset + size <= PCI_CONFIG_SPACE_SIZE:
            return super().region_read(index, offset, size)
        if offset < PCI_CONFIG_SPACE_SIZE or offset + size > PCIE_CONFIG_SPACE_SIZE:
            raise ValueError(f"config access [{offset:#x}, +{size}) straddles or leaves extended config space")
        rel = offset - PCI_CONFIG_SPACE_SIZE
        return bytes(self.extended[rel:rel + size])

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index != RegionIndex.CONFIG or offset + len(data) <= PCI_CONFIG_SPACE_SIZE:
            super().region_write(index, offset, data)
            return
        if offset < PCI_CONFIG_SPACE_SIZE or offset + len(data) > PCIE_CONFIG_SPACE_SIZE:
            raise ValueError(f"config access [{offset:#x}, +{len(data)}) straddles or leaves extended config space")
        self.extended_writes.append((offset, bytes(data)))
        if self.sriov and PCI_CONFIG_SPACE_SIZE + SRIOV_CONTROL <= offset < PCI_CONFIG_SPACE_SIZE + SRIOV_CAP_LEN:
            rel = offset - PCI_CONFIG_SPACE_SIZE
            self.extended[rel:rel + len(data)] = data  # only the SR-IOV control fields are writable here

    def vf_enable_written(self) -> bool:
        """True once a driver wrote VF Enable into the SR-IOV control register."""
        at = PCI_CONFIG_SPACE_SIZE + SRIOV_CONTROL
        return any(off <= at < off + len(d) and d[at - off] & SRIOV_CONTROL_VF_ENABLE
                   for off, d in self.extended_writes)
