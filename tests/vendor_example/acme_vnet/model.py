"""The Acme VNet function: vdpa-bench's behavioral virtio-net model with Acme's ids and defaults."""

from __future__ import annotations

import struct
from typing import Any

from backend.virtio.pci_regs import PciCfg
from models.virtio_net.device import VirtioNetDevice

#: Acme's PCI vendor id (an example value) as subsystem vendor and vendor data owner.
ACME_VENDOR_ID = 0xACE5
#: The VNet's subsystem device id (>= 0x40: a non-transitional virtio device, PCI-DEV-07).
ACME_VNET_SUBSYSTEM_ID = 0x4E01
#: Acme's locally administered MAC range.
ACME_MAC = "02:ac:e5:00:00:01"
#: 25 Gbit/s, reported in the device configuration (NET-DEV speed field).
ACME_SPEED = 25000


class AcmeVnet(VirtioNetDevice):
    """virtio-net as vdpa-bench models it, presenting Acme's subsystem ids, vendor data capability,
    MAC range and link speed: what a vendor's own driver quirks and tools key on."""

    SUBSYSTEM_ID = ACME_VNET_SUBSYSTEM_ID
    VENDOR_DATA_ID = ACME_VENDOR_ID
    VENDOR_DATA = b"ACME-VNET\0"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("mac", ACME_MAC)
        kwargs.setdefault("speed", ACME_SPEED)
        super().__init__(**kwargs)
        # The generic model presents virtio's own subsystem vendor; Acme's function carries Acme's.
        struct.pack_into("<H", self.config.data, PciCfg.SUBSYSTEM_VENDOR_ID, ACME_VENDOR_ID)
