"""Shared helpers for the checks: open a target as a register-level virtio-pci transport."""

from __future__ import annotations

from collections.abc import Callable

from backend.drivers.transport import VirtioPciModern
from backend.pci.device import PciDevice
from backend.virtio.features import DeviceStatus, F
from testbenches.driver.virtio_net import choose_features

OpenTarget = Callable[..., PciDevice]

#: Where the checks' guest memory starts (IOVA = guest-physical address). Not 0: QEMU's virtio device
#: takes a descriptor area at address 0 for "no queue" and ignores it (quirk ``qemu-virtio-net`` in
#: backend/drivers/quirks.py); starting at 1 MiB keeps that one deviation from failing every data-path check.
GUEST_MEMORY_BASE = 0x100000


def transport(open_target: OpenTarget) -> VirtioPciModern:
    """A fresh device, reset, with memory decoding and bus mastering on."""
    t = VirtioPciModern(open_target())
    t.enable_device()
    t.reset()
    return t


def acknowledge(t: VirtioPciModern) -> None:
    t.set_status(DeviceStatus.ACKNOWLEDGE)
    t.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)


def negotiate(t: VirtioPciModern, features: int) -> bool:
    """Reset, ACK, DRIVER, write ``features``, set FEATURES_OK; True if it stuck."""
    t.reset()
    acknowledge(t)
    t.write_driver_features(features)
    t.add_status(DeviceStatus.FEATURES_OK)
    return bool(t.status() & DeviceStatus.FEATURES_OK)


def usable_features(offered: int) -> int:
    """The offered set minus what the bench's driver side does not implement (packed ring)."""
    return offered & ~(1 << F.RING_PACKED)


def valid_subset(offered: int, chosen: int) -> int:
    """``chosen`` restricted to ``offered``, with VERSION_1 and (when offered) ACCESS_PLATFORM, closed under
    the dependency table. ACCESS_PLATFORM is kept because the bench always reaches the device through an
    IOMMU, and a device MAY refuse to operate when it is not accepted (6.1): a set without it is not one the
    device has to accept."""
    return choose_features(offered, chosen | 1 << F.VERSION_1 | 1 << F.ACCESS_PLATFORM)
