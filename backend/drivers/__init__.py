"""Vendor drivers: the generic virtio-pci modern driver and the quirk table it consults."""

from backend.drivers.quirks import DEFAULT_QUIRKS, IdMatch, PciIds, Quirk, QuirkTable, VqStateBlock
from backend.drivers.transport import VirtioPciError, VirtioPciModern
from backend.drivers.vdpa import VirtioPciVdpaDevice

__all__ = ["DEFAULT_QUIRKS", "IdMatch", "PciIds", "Quirk", "QuirkTable", "VirtioPciError", "VirtioPciModern",
           "VirtioPciVdpaDevice", "VqStateBlock"]
