"""PCI endpoint framework: declare config space, capabilities, BARs with register maps and MSI-X.

Like libvfio-user's device side: a model declares regions and callbacks; the
framework owns config-space semantics (BAR sizing, capability list, command
and status registers, MSI-X table/PBA and interrupt delivery).
"""

from sim.pci.endpoint import (
    Bar,
    Block,
    Capability,
    ConfigSpace,
    Msix,
    PciEndpoint,
    Register,
    RegisterBlock,
)

__all__ = ["Bar", "Block", "Capability", "ConfigSpace", "Msix", "PciEndpoint", "Register", "RegisterBlock"]
