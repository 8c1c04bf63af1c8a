"""``VdpaDevice``: what the vhost-user server asks of an accelerator (the vDPA config ops).

The vendor drivers in :mod:`backend.drivers` implement it over a ``PciDevice``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from backend.pci.device import DmaPerm


class VdpaError(Exception):
    """The device refused an operation (the message says which and why)."""


class NotSupported(VdpaError):
    """The device cannot do this at all (for example suspend without VIRTIO_F_SUSPEND)."""


@dataclass(frozen=True)
class VqState:
    """Ring progress; for split rings only ``avail_idx`` (= last_avail_idx) is meaningful."""

    avail_idx: int = 0
    avail_wrap: int = 1
    used_idx: int = 0
    used_wrap: int = 1


@runtime_checkable
class VdpaDevice(Protocol):
    def get_device_features(self) -> int: ...

    def set_driver_features(self, features: int) -> None: ...

    def get_driver_features(self) -> int: ...

    def get_status(self) -> int: ...

    def set_status(self, status: int) -> None:
        """Write device status; FEATURES_OK that does not stick raises ``VdpaError``; 0 resets."""
        ...

    def get_config_size(self) -> int: ...

    def get_config(self, offset: int, size: int) -> bytes: ...

    def set_config(self, offset: int, data: bytes) -> None: ...

    def get_config_generation(self) -> int: ...

    def get_vq_count(self) -> int: ...

    def get_vq_num_max(self, index: int) -> int: ...

    def set_vq_num(self, index: int, num: int) -> None: ...

    def set_vq_address(self, index: int, desc: int, driver: int, device: int) -> None: ...

    def set_vq_ready(self, index: int, ready: bool) -> None: ...

    def get_vq_ready(self, index: int) -> bool: ...

    def set_vq_state(self, index: int, state: VqState) -> None: ...

    def get_vq_state(self, index: int) -> VqState: ...

    def set_vq_kick(self, index: int, fd: int | None) -> None:
        """The frontend's kick eventfd becomes the queue's doorbell."""
        ...

    def set_vq_call(self, index: int, fd: int | None) -> None:
        """The queue's interrupt signals this eventfd."""
        ...

    def set_config_call(self, fd: int | None) -> None: ...

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None: ...

    def dma_unmap(self, iova: int, size: int) -> None: ...

    def suspend(self) -> None: ...

    def resume(self) -> None: ...

    def reset(self) -> None: ...

    def kicks_relayed(self) -> bool:
        """True where the driver had to relay kicks in software (the report says so)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class DeviceDirtyLog(VdpaDevice, Protocol):
    """A device that logs its own DMA writes (a vendor block, named by the driver's quirk record), so dirty
    logging for live migration needs no used-ring relay in the backend.

    The log is a *bytemap* the caller owns and maps into the device: byte ``p`` set to nonzero means the device
    wrote IOVA page ``p`` (4 KiB). :meth:`log_stop` returns once no log write is in flight.
    """

    def logs_dma_writes(self) -> bool:
        """Whether this device has such a block (else the caller relays)."""
        ...

    def log_start(self, iova: int, pages: int) -> None:
        """Log into the bytemap of ``pages`` bytes at ``iova`` (already mapped by the caller)."""
        ...

    def log_stop(self) -> None: ...

    def log_running(self) -> bool:
        """False once a device reset (or anything else) turned logging off."""
        ...

    def log_trouble(self) -> str | None:
        """What the device reported since the last call (a write beyond the bytemap, a refused log write)."""
        ...
