"""What vdpa-bench's generic vDPA driver must do differently on the Acme VNet."""

from __future__ import annotations

from acme_vnet.model import ACME_VENDOR_ID, ACME_VNET_SUBSYSTEM_ID
from backend.drivers.quirks import IdMatch, Quirk
from backend.virtio.features import F
from backend.virtio.pci_regs import VIRTIO_ID_NET, VIRTIO_PCI_DEVICE_ID_BASE, VIRTIO_PCI_VENDOR_ID

ACME_VNET = Quirk(
    name="acme-vnet",
    why=("Example: Acme's vDPA firmware does not support resetting one queue from a vhost-user frontend, so "
         "VIRTIO_F_RING_RESET is not passed upward although the function offers it."),
    hide_features=1 << F.RING_RESET,
)

#: The entries of entry point ``vdpa_bench.quirks: acme-vnet``.
QUIRKS = (
    (IdMatch(VIRTIO_PCI_VENDOR_ID, VIRTIO_PCI_DEVICE_ID_BASE + VIRTIO_ID_NET, ACME_VENDOR_ID, ACME_VNET_SUBSYSTEM_ID),
     ACME_VNET),
)
