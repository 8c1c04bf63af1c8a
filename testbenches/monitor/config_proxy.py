"""A ``PciDevice`` proxy that presents the real function with an edited configuration space.

The drivers' discovery code is exercised against layouts a device may
legally have but the target happens not to: other ids or revision, extra or
duplicated virtio capabilities, longer ``cap_len`` or structure ``length``,
another MSI-X Table Size. The presented 256-byte space is rebuilt from a
header (the target's, with overrides) and a capability list of
:class:`CapEntry`; every byte that mirrors the target stays live (reads and
writes reach the device, so the PCI_CFG window and the command register keep
working), the rest is served from a private image. Optionally BAR ``alias_bar``
is presented twice as large, its upper half aliasing the lower one, so that a
second instance of a structure can point at addresses the device really
serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from backend.pci.device import IrqIndex, PciDevice, RegionIndex, RegionInfo
from backend.pci.proxy import PciDeviceProxy
from backend.virtio.pci_regs import (
    MSIX_CAP_LEN,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_CONFIG_SPACE_SIZE,
    PCI_STATUS_CAP_LIST,
    MsixCap,
    PciCfg,
    walk_capabilities,
)

_CAPS_START = 0x40


@dataclass(frozen=True)
class CapEntry:
    """One entry of the presented list: a live copy of a target capability or a synthetic one.

    ``source`` is the target's config offset of the mirrored capability (None
    for a synthetic entry); its first ``live_len`` bytes are live except the
    next pointer and the offsets in ``patch`` (relative offset -> value).
    ``image`` holds the bytes of the entry (the patch, padding and synthetic
    bytes are taken from it); its length is the room the entry takes.
    """

    image: bytes
    source: int | None = None
    live_len: int = 0
    patch: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def synthetic(cls, raw: bytes) -> CapEntry:
        return cls(bytes(raw))

    def patched(self, rel: int, data: bytes) -> CapEntry:
        """The same entry with ``data`` served at ``rel`` instead of the device's bytes."""
        img = bytearray(self.image.ljust(rel + len(data), b"\0"))
        img[rel:rel + len(data)] = data
        return CapEntry(bytes(img), self.source, self.live_len, self.patch | set(range(rel, rel + len(data))))

    def padded(self, extra: int) -> CapEntry:
        """``extra`` zero bytes of room after the entry (for an enlarged cap_len)."""
        return CapEntry(self.image + bytes(extra), self.source, self.live_len, self.patch)


@dataclass(frozen=True)
class TargetCap:
    offset: int
    cap_id: int
    data: bytes

    @property
    def cfg_type(self) -> int | None:
        return self.data[3] if self.cap_id == PCI_CAP_ID_VNDR and len(self.data) > 3 else None

    def entry(self) -> CapEntry:
        return CapEntry(self.data, self.offset, len(self.data))


def target_caps(dev: PciDevice) -> list[TargetCap]:
    """The target's vendor-specific and MSI-X capabilities, in list order (the others are not presented)."""
    def cfg(off: int, size: int) -> bytes:
        return dev.region_read(RegionIndex.CONFIG, off, size)

    out: list[TargetCap] = []
    for cap in walk_capabilities(cfg):
        if cap.cap_id == PCI_CAP_ID_VNDR:
            out.append(TargetCap(cap.offset, cap.cap_id, cap.data))
        elif cap.cap_id == PCI_CAP_ID_MSIX:
            out.append(TargetCap(cap.offset, cap.cap_id, cap.data[:MSIX_CAP_LEN]))
    return out


class ConfigSpaceEditor(PciDeviceProxy):
    """Forwards to ``inner`` except for the configuration space it presents (see the module docstring)."""

    def __init__(self, inner: PciDevice, caps: Sequence[CapEntry], *, header: dict[int, bytes] | None = None,
                 msix_vectors: int | None = None, alias_bar: int | None = None) -> None:
        super().__init__(inner, f"edited({inner.name})")
        self.msix_vectors = msix_vectors  # irq_count(MSIX) presented (None: the target's)
        self.alias_bar = alias_bar
        self._alias_size = inner.region_info(alias_bar).size if alias_bar is not None else 0
        self.image = bytearray(PCI_CONFIG_SPACE_SIZE)
        self._real: list[int | None] = [None] * PCI_CONFIG_SPACE_SIZE  # presented byte -> target byte
        #: Config writes that landed on bytes served from the image (offset, data), for checks.
        self.image_writes: list[tuple[int, bytes]] = []
        #: Where each entry was placed in the presented space.
        self.placed: list[int] = []
        for off in range(_CAPS_START):
            self._real[off] = off
        for off, data in (header or {}).items():
            for i, b in enumerate(data):
                self._real[off + i] = None
                self.image[off + i] = b
        self._real[PciCfg.CAPABILITIES_POINTER] = None
        status = int.from_bytes(inner.region_read(RegionIndex.CONFIG, PciCfg.STATUS, 2), "little")
        if not caps or not status & PCI_STATUS_CAP_LIST:  # otherwise the status register stays live
            self._real[PciCfg.STATUS] = self._real[PciCfg.STATUS + 1] = None
            status = status | PCI_STATUS_CAP_LIST if caps else status & ~PCI_STATUS_CAP_LIST
            self.image[PciCfg.STATUS:PciCfg.STATUS + 2] = status.to_bytes(2, "little")
        pos = _CAPS_START
        for entry in caps:
            if pos + len(entry.image) > PCI_CONFIG_SPACE_SIZE:
                raise ValueError(f"capability list does not fit in {PCI_CONFIG_SPACE_SIZE} bytes")
            self.placed.append(pos)
            for rel, b in enumerate(entry.image):
                live = entry.source is not None and rel < entry.live_len and rel != 1 and rel not in entry.patch
                self._real[pos + rel] = entry.source + rel if live and entry.source is not None else None
                self.image[pos + rel] = b
            pos += (len(entry.image) + 3) & ~3
        self.image[PciCfg.CAPABILITIES_POINTER] = self.placed[0] if self.placed else 0
        for i, at in enumerate(self.placed):
            self.image[at + 1] = self.placed[i + 1] if i + 1 < len(self.placed) else 0

    # --- configuration space ---------------------------------------------------------------------

    def _runs(self, offset: int, size: int) -> list[tuple[int, int, int | None]]:
        """(presented offset, length, target offset or None) runs covering the access."""
        runs: list[tuple[int, int, int | None]] = []
        for off in range(offset, offset + size):
            real = self._real[off]
            if runs:
                start, length, rstart = runs[-1]
                if (real is None and rstart is None) or (
                        real is not None and rstart is not None and real == rstart + length):
                    runs[-1] = (start, length + 1, rstart)
                    continue
            runs.append((off, 1, real))
        return runs

    def _config_read(self, offset: int, size: int) -> bytes:
        if offset + size > PCI_CONFIG_SPACE_SIZE:
            return self.inner.region_read(RegionIndex.CONFIG, offset, size)
        out = b""
        for start, length, real in self._runs(offset, size):
            out += (self.inner.region_read(RegionIndex.CONFIG, real, length) if real is not None
                    else bytes(self.image[start:start + length]))
        return out

    def _config_write(self, offset: int, data: bytes) -> None:
        if offset + len(data) > PCI_CONFIG_SPACE_SIZE:
            self.inner.region_write(RegionIndex.CONFIG, offset, data)
            return
        for start, length, real in self._runs(offset, len(data)):
            chunk = data[start - offset:start - offset + length]
            if real is not None:
                self.inner.region_write(RegionIndex.CONFIG, real, chunk)
            else:
                self.image_writes.append((start, bytes(chunk)))

    # --- BARs (with the optional alias) -----------------------------------------------------------

    def _bar_offset(self, index: int, offset: int) -> int:
        if index == self.alias_bar and offset >= self._alias_size:
            return offset - self._alias_size
        return offset

    def region_info(self, index: int) -> RegionInfo:
        info = self.inner.region_info(index)
        if index == self.alias_bar:
            return RegionInfo(info.index, 2 * info.size, info.flags)
        return info

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index == RegionIndex.CONFIG:
            return self._config_read(offset, size)
        return self.inner.region_read(index, self._bar_offset(index, offset), size)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == RegionIndex.CONFIG:
            self._config_write(offset, bytes(data))
            return
        self.inner.region_write(index, self._bar_offset(index, offset), data)

    def region_mmap(self, index: int) -> memoryview | None:
        return None  # every access goes through the translation above

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        return self.inner.ioeventfd(index, self._bar_offset(index, offset), width, value, fd)

    def ioeventfd_remove(self, index: int, offset: int, fd: int) -> None:
        self.inner.ioeventfd_remove(index, self._bar_offset(index, offset), fd)

    # --- interrupts: the vectors the edited MSI-X table presents; the rest is the target's -----------

    def irq_count(self, index: int) -> int:
        if index == IrqIndex.MSIX and self.msix_vectors is not None:
            return min(self.msix_vectors, self.inner.irq_count(index))
        return self.inner.irq_count(index)


def msix_table_size_patch(entry: CapEntry, table_size: int) -> CapEntry:
    """An MSI-X entry presenting ``table_size`` vectors (function mask and enable read as clear)."""
    return entry.patched(MsixCap.MESSAGE_CONTROL, ((table_size - 1) & 0x7FF).to_bytes(2, "little"))
