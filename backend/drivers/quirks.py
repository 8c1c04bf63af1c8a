"""Quirk table: per-device deviations from plain virtio-pci, keyed by PCI ids.

The generic driver looks its function up here once (vendor, device,
subsystem vendor, subsystem device; ``None`` matches anything) and honours
what the matching record says. Every record carries a ``why``.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.pci.device import PciDevice, config_read
from backend.virtio.pci_regs import PciCfg


@dataclass(frozen=True)
class PciIds:
    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int

    @classmethod
    def read(cls, pci: PciDevice) -> PciIds:
        return cls(config_read(pci, PciCfg.VENDOR_ID, 2), config_read(pci, PciCfg.DEVICE_ID, 2),
                   config_read(pci, PciCfg.SUBSYSTEM_VENDOR_ID, 2), config_read(pci, PciCfg.SUBSYSTEM_ID, 2))

    def __str__(self) -> str:
        return (f"{self.vendor:04x}:{self.device:04x} "
                f"(subsystem {self.subsystem_vendor:04x}:{self.subsystem_device:04x})")


@dataclass(frozen=True)
class IdMatch:
    """A key of the table; ``None`` in any position is a wildcard."""

    vendor: int | None = None
    device: int | None = None
    subsystem_vendor: int | None = None
    subsystem_device: int | None = None

    def matches(self, ids: PciIds) -> bool:
        return all(want is None or want == got for want, got in (
            (self.vendor, ids.vendor), (self.device, ids.device),
            (self.subsystem_vendor, ids.subsystem_vendor), (self.subsystem_device, ids.subsystem_device)))

    @property
    def specificity(self) -> int:
        return sum(x is not None for x in (self.vendor, self.device, self.subsystem_vendor, self.subsystem_device))


@dataclass(frozen=True)
class VqStateBlock:
    """A vendor register block that holds each queue's last_avail_idx (split rings).

    Queue ``q``'s field sits at ``offset + q * stride`` in BAR ``bar`` and is
    ``width`` bytes wide; the device loads it when the queue is enabled and
    keeps it current while the queue runs.
    """

    bar: int
    offset: int
    stride: int
    width: int = 2

    def field_offset(self, queue: int) -> int:
        return self.offset + queue * self.stride


@dataclass(frozen=True)
class Quirk:
    """What the driver does differently for one device. The default record changes nothing."""

    name: str = "none"
    why: str = ""
    vq_state: VqStateBlock | None = None
    #: Feature bits the driver must not offer upward although the device lists them.
    hide_features: int = 0


NO_QUIRK = Quirk()


@dataclass(frozen=True)
class QuirkTable:
    """Immutable; :meth:`extended` returns a new table with one more entry."""

    entries: tuple[tuple[IdMatch, Quirk], ...] = ()

    def extended(self, match: IdMatch, quirk: Quirk) -> QuirkTable:
        return QuirkTable((*self.entries, (match, quirk)))

    def lookup(self, ids: PciIds) -> Quirk:
        """The most specific matching record (first one on a tie), or :data:`NO_QUIRK`."""
        best: tuple[int, Quirk] | None = None
        for match, quirk in self.entries:
            if match.matches(ids) and (best is None or match.specificity > best[0]):
                best = (match.specificity, quirk)
        return best[1] if best is not None else NO_QUIRK


INTEL_VENDOR_ID = 0x8086
IFCVF_SUBSYSTEM_DEVICE_ID = 0x001A

#: Intel IFC VF (FPGA N3000 virtio-net VF, driven by Linux's ``ifcvf`` vDPA driver).
IFCVF = Quirk(
    name="intel-ifcvf",
    why=("Intel IFC VF keeps each queue's last_avail_idx in its live-migration register block "
         "(BAR4, ring state region at 0x20, one 32-bit slot per queue whose low 16 bits are "
         "last_avail_idx); plain virtio-pci has no such register, so vq state is read and "
         "restored there."),
    vq_state=VqStateBlock(bar=4, offset=0x20, stride=4, width=2),
)


def default_quirks() -> QuirkTable:
    """The table of every known entry (callers extend it with their own)."""
    return QuirkTable((
        (IdMatch(0x1AF4, 0x1041, INTEL_VENDOR_ID, IFCVF_SUBSYSTEM_DEVICE_ID), IFCVF),
    ))


DEFAULT_QUIRKS = default_quirks()
