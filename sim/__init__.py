"""The virtual platform: guest memory, IOMMU, PCI endpoint framework, in-process ``PciDevice``."""
