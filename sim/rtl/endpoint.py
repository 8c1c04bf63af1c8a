"""The PCI side of a described design: configuration space, BARs, virtio capabilities, MSI-X.

Built in Python with the endpoint framework, from the description alone (:class:`~sim.rtl.description.
Variant`): the identity of ``[pci]``; each ``[[bar]]``; each ``[[slave]]`` window mounted as an
:class:`~sim.rtl.device.AxiLiteBlock` on its slave port; the virtio vendor capabilities pointing at
the structures of ``[[pci.capability]]``; the PCI configuration access capability; a vendor data
capability when ``vendor_data`` is given; MSI-X either served by the platform (a design that requests
vectors) or held by the design (:mod:`sim.rtl.msix`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from backend.virtio.pci_regs import (
    NOTIFY_CAP_LEN,
    PCI_CAP_ID_VNDR,
    PCI_CFG_CAP_LEN,
    PCI_CFG_DATA,
    VENDOR_DATA_CAP_HDR_LEN,
    CapType,
    VirtioPciCap,
)
from sim.iommu import Iommu
from sim.pci.endpoint import Bar, Capability, ConfigSpace, Msix
from sim.rtl.description import Variant
from sim.rtl.device import AxiLiteBlock, RtlEndpoint
from sim.rtl.msix import DesignMsix, MsixTableShim
from sim.rtl.runner import Runner

CAP_TYPES = {"common": CapType.COMMON_CFG, "notify": CapType.NOTIFY_CFG, "isr": CapType.ISR_CFG,
             "device": CapType.DEVICE_CFG}


def virtio_cap(config: ConfigSpace, cfg_type: int, bar: int, offset: int, length: int, extra: bytes = b"",
               cap_len: int = VirtioPciCap.SIZE) -> Capability:
    raw = VirtioPciCap(PCI_CAP_ID_VNDR, 0, cap_len, cfg_type, bar, 0, offset, length).pack() + extra
    cap = Capability(PCI_CAP_ID_VNDR, bytearray(raw[2:]))
    config.add_capability(cap)
    return cap


def pci_cfg_window(config: ConfigSpace, bars: dict[int, Bar]) -> None:
    """The PCI configuration access capability (4.1.4.9): bar/offset/length and pci_cfg_data written by
    the driver; accesses through pci_cfg_data go to the BAR (PCI-DEV-51/52)."""
    cap = virtio_cap(config, CapType.PCI_CFG, 0, 0, 0, bytes(4), PCI_CFG_CAP_LEN)
    w = bytearray(len(cap.body))
    for i in [4 - 2, *range(8 - 2, 16 - 2), *range(PCI_CFG_DATA - 2, PCI_CFG_DATA + 2)]:
        w[i] = 0xFF
    cap.writable = w
    data_lo = PCI_CFG_DATA - 2

    def target() -> tuple[Bar | None, int, int]:
        bar = cap.body[4 - 2]
        offset, length = struct.unpack_from("<II", cap.body, 8 - 2)
        b = bars.get(bar)
        ok = b is not None and length in (1, 2, 4) and offset + length <= b.size
        return (b if ok else None), offset, length

    def written(lo: int, size: int) -> None:
        if lo + size <= data_lo:
            return
        b, offset, length = target()
        if b is not None:
            b.write(offset, bytes(cap.body[data_lo:data_lo + length]))

    def read(lo: int, size: int) -> None:
        if lo + size <= data_lo:
            return
        b, offset, length = target()
        if b is not None:
            cap.body[data_lo:data_lo + length] = b.read(offset, length)

    cap.on_write = written
    cap.on_read = read


@dataclass(frozen=True)
class Window:
    """A BAR range the design decodes: ``size`` bytes at ``offset`` of BAR ``bar``, served by slave port
    ``slave`` from ``base`` of its address space; ``msix_table``: the in-design MSI-X table's window."""

    slave: int
    bar: int
    offset: int
    size: int
    base: int
    msix_table: bool = False


def slave_windows(variant: Variant) -> list[Window]:
    """Every slave window of ``variant``; with in-design MSI-X, the table's range cut out as a window of its own."""
    d = variant.description
    msix = d.raw["msix"]
    table_len = 16 * variant.msix_vectors
    out: list[Window] = []
    for index, s in enumerate(d.slaves):
        cuts = [(s.offset, s.offset + s.size)]
        tbar, toff = msix["table"]["bar"], msix["table"]["offset"]
        if d.msix_in_design and tbar == s.bar and s.offset <= toff < s.offset + s.size:
            if toff + table_len > s.offset + s.size:
                raise ValueError(f"{d.path}: msix.table: {variant.msix_vectors} vectors run past slave {s.name!r}")
            out.append(Window(index, s.bar, toff, table_len, toff - s.offset, msix_table=True))
            cuts = [(s.offset, toff), (toff + table_len, s.offset + s.size)]
        out += [Window(index, s.bar, lo, hi - lo, lo - s.offset) for lo, hi in cuts if hi > lo]
    return out


def _mount_slaves(variant: Variant, runner: Runner, bars: dict[int, Bar]) -> MsixTableShim | None:
    """Every slave window into its BAR; with in-design MSI-X, the table window through its shim."""
    shim: MsixTableShim | None = None
    for w in slave_windows(variant):
        if w.msix_table:
            shim = MsixTableShim(AxiLiteBlock(runner, w.size, w.slave, w.base), variant.msix_vectors)
            bars[w.bar].mount(w.offset, shim)
        else:
            bars[w.bar].mount(w.offset, AxiLiteBlock(runner, w.size, w.slave, w.base))
    return shim


def config_space(variant: Variant, bars: dict[int, Bar],
                 interrupt_status: Callable[[], bool] = lambda: False) -> ConfigSpace:
    """The configuration space of ``variant`` without its MSI-X capability (the endpoint adds that last):
    identity of ``[pci]``, the virtio capabilities, the PCI configuration access window onto ``bars``, the
    vendor data capability. Needs no runner: the native export (:mod:`sim.rtl.vfu_export`) renders it too."""
    pci = variant.description.raw["pci"]
    config = ConfigSpace(vendor_id=pci["vendor_id"], device_id=pci["device_id"], revision=pci.get("revision", 0),
                         class_code=pci["class_code"], subsystem_vendor_id=pci.get("subsystem_vendor_id", 0),
                         subsystem_id=pci.get("subsystem_id", 0), bars=list(bars.values()),
                         interrupt_status=interrupt_status)
    for cap in variant.caps:
        if cap.cfg_type == "notify":
            virtio_cap(config, CAP_TYPES[cap.cfg_type], cap.bar, cap.offset, cap.length,
                       struct.pack("<I", cap.notify_off_multiplier), NOTIFY_CAP_LEN)
        else:
            virtio_cap(config, CAP_TYPES[cap.cfg_type], cap.bar, cap.offset, cap.length)
    pci_cfg_window(config, bars)
    vendor = pci.get("vendor_data")
    if vendor is not None:
        text = vendor["text"].encode() + b"\0"
        total = (VENDOR_DATA_CAP_HDR_LEN + len(text) + 3) // 4 * 4
        body = bytearray(total - 2)
        struct.pack_into("<BBH", body, 0, total, CapType.VENDOR_CFG, vendor["vendor_id"])
        body[VENDOR_DATA_CAP_HDR_LEN - 2:VENDOR_DATA_CAP_HDR_LEN - 2 + len(text)] = text
        config.add_capability(Capability(PCI_CAP_ID_VNDR, body))
    return config


def build_endpoint(variant: Variant, runner: Runner, iommu: Iommu) -> RtlEndpoint:
    d = variant.description
    bars = {i: Bar(i, size, is64=is64) for i, (size, is64) in sorted(d.bars.items())}
    shim = _mount_slaves(variant, runner, bars)
    table, pba = d.raw["msix"]["table"], d.raw["msix"]["pba"]
    msix: Msix
    if shim is not None:
        msix = DesignMsix(variant.msix_vectors, table["bar"], table["offset"], pba["offset"], shim)
    else:
        msix = Msix(variant.msix_vectors, bar=table["bar"], table_offset=table["offset"], pba_offset=pba["offset"])
        bars[table["bar"]].mount(table["offset"], msix.table_block)
        bars[pba["bar"]].mount(pba["offset"], msix.pba_block)
    config = config_space(variant, bars, runner.intx)
    return RtlEndpoint(config, list(bars.values()), msix, runner, iommu)
