"""Driver-side discovery and configuration-space robustness (4.1.2.2, 4.1.4, 4.1.5.1.2, 2.5.1).

The bench's drivers (the guest ``GuestNetDriver`` and the backend's
``VirtioPciVdpaDevice``, both discovering through ``VirtioPciModern``) are
run against the target seen through a :class:`ConfigSpaceEditor`, which
presents the real function with other ids, a rearranged or enlarged
capability list, other structure lengths or another MSI-X Table Size. The
driver must still bind, negotiate and pass frames over the loopback wire, or
refuse exactly where the specification says so.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from backend.device import VdpaError
from backend.drivers.transport import VirtioPciModern
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import wait_eventfd
from backend.pci.device import PciDevice, PciError, RegionIndex
from backend.virtio.features import DeviceStatus, F, NetF, bits, has
from backend.virtio.net_hdr import NetHdr
from backend.virtio.pci_regs import (
    COMMON_CFG_WIDTH,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    PCI_CFG_DATA,
    CapType,
    CommonCfg,
    MsixCap,
    NetCfg,
    PciCfg,
    VirtioPciCap,
    walk_capabilities,
)
from sim.memory import GuestMemory
from testbenches.conformance.deadlines import NOMINAL, Deadlines
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench, need
from testbenches.conformance.plugin import Verdict
from testbenches.driver.vdpa_frontend import VdpaFrontend
from testbenches.driver.virtio_net import DEFAULT_FEATURES, DriverInitError, GuestNetDriver
from testbenches.monitor import Access, TracingPciDevice, VirtioPciDriverMonitor
from testbenches.monitor.config_proxy import (
    CapEntry,
    ConfigSpaceEditor,
    TargetCap,
    msix_table_size_patch,
    target_caps,
)

MEM = 8 << 20
FRAMES = [bytes.fromhex("020000000001020000000002") + b"\x08\x00" + bytes([i]) * 46 for i in range(4)]
BAR_STRUCTS = (CapType.COMMON_CFG, CapType.NOTIFY_CFG, CapType.ISR_CFG, CapType.DEVICE_CFG)
CAP_LEN, CAP_BAR, CAP_OFFSET, CAP_LENGTH = 2, 4, 8, 12  # byte offsets inside struct virtio_pci_cap


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


# --- running the drivers ---------------------------------------------------------------------------


@dataclass
class Run:
    """What one driver did on a presented device; ``delivered`` counts frames looped back, or without a
    loopback wire frames the device completed on transmitq1."""

    bound: bool
    initialised: bool
    delivered: int
    note: str
    transport: VirtioPciModern | None = None
    looped: bool = True

    @property
    def ok(self) -> bool:
        return self.bound and self.initialised and self.delivered == len(FRAMES)

    def __str__(self) -> str:
        what = "frames looped back" if self.looped else "frames transmitted (no loopback wire)"
        return (f"bound={self.bound} initialised={self.initialised} {what} "
                f"{self.delivered}/{len(FRAMES)}{'; ' + self.note if self.note else ''}")


Runner = Callable[[PciDevice, GuestMemory, bool, Deadlines], Run]


def run_guest(dev: PciDevice, mem: GuestMemory, looped: bool, deadlines: Deadlines = NOMINAL) -> Run:
    """GuestNetDriver: discovery, full bring-up, frames out (and back over a loopback wire), within ``deadlines``."""
    try:
        drv = GuestNetDriver(dev, mem, queue_size=64)
    except (PciError, ValueError) as exc:  # the transport found nothing it can drive
        return Run(False, False, 0, f"discovery raised {type(exc).__name__}: {exc}", looped=looped)
    try:
        drv.init()
        sent = drv.send(FRAMES, timeout=deadlines.wait(5.0))
        if looped:
            delivered = sum(r.frame in FRAMES for r in drv.receive_raw(sent, timeout=deadlines.wait(2.0)))
        else:
            delivered = sent if drv.wait_tx_done(timeout=deadlines.wait(2.0)) else 0
        note = "" if delivered == len(FRAMES) else f"waited {deadlines.explain(2.0)}"
        return Run(True, bool(drv.status() & DeviceStatus.DRIVER_OK), delivered, note, drv.transport, looped)
    except (DriverInitError, OSError, ValueError) as exc:
        return Run(True, False, 0, f"bring-up raised {type(exc).__name__}: {exc}", drv.transport, looped)
    finally:
        drv.close()


def _transmit(front: VdpaFrontend, frames: list[bytes], timeout: float, tx: int = 1) -> int:
    """Transmit ``frames`` on ``tx``; how many the device completed within ``timeout``."""
    ring = front.rings[tx]
    for f in frames:
        ring.add([NetHdr().pack() + f], [])
    front.kick(tx)
    deadline = time.monotonic() + timeout
    done = len(ring.used())
    while done < len(frames) and wait_eventfd(front.calls[tx], deadline - time.monotonic()):
        done += len(ring.used())
    return done


def run_vdpa(dev: PciDevice, mem: GuestMemory, looped: bool, deadlines: Deadlines = NOMINAL) -> Run:
    """VirtioPciVdpaDevice probe, then a vhost-style bring-up of one queue pair and an exchange (or, without
    a loopback wire, a transmission), within ``deadlines``."""
    try:
        vdpa = VirtioPciVdpaDevice(dev, owns_pci=False)
    except VdpaError as exc:
        return Run(False, False, 0, f"probe refused: {exc}", looped=looped)
    front = VdpaFrontend(vdpa, mem)
    try:
        front.bring_up(vdpa.get_device_features() & ~bits(F.RING_PACKED, F.IN_ORDER), queues=(0, 1), size=64)
        if looped:
            delivered = sum(f in FRAMES for f in front.exchange(FRAMES, timeout=deadlines.wait(2.0)))
        else:
            delivered = _transmit(front, FRAMES, deadlines.wait(2.0))
        note = "" if delivered == len(FRAMES) else f"waited {deadlines.explain(2.0)}"
        return Run(True, bool(vdpa.get_status() & DeviceStatus.DRIVER_OK), delivered, note, vdpa.transport, looped)
    except (VdpaError, OSError) as exc:
        return Run(True, False, 0, f"bring-up raised {type(exc).__name__}: {exc}", vdpa.transport, looped)
    finally:
        vdpa.close()
        front.close()


def bar_accesses(trace: TracingPciDevice) -> list[Access]:
    return [a for a in trace.accesses if a.region != RegionIndex.CONFIG]


# --- PCI ids (4.1.2.2) -----------------------------------------------------------------------------

ID_VARIANTS: dict[str, tuple[dict[int, bytes], str]] = {
    # name: (header overrides, requirement)
    "modern-0x1041": ({}, "PCI-DRV-01"),
    "transitional-0x1000": ({PciCfg.DEVICE_ID: struct.pack("<H", 0x1000), PciCfg.REVISION_ID: b"\0",
                             PciCfg.SUBSYSTEM_ID: struct.pack("<H", 1)}, "PCI-DRV-02"),
    "revision-0x00": ({PciCfg.REVISION_ID: b"\x00"}, "PCI-DRV-03"),
    "revision-0x7f": ({PciCfg.REVISION_ID: b"\x7f"}, "PCI-DRV-03"),
    "revision-0xff": ({PciCfg.REVISION_ID: b"\xff"}, "PCI-DRV-03"),
}


def _ids(header: dict[int, bytes], dev: PciDevice) -> str:
    def word(off: int, width: int) -> int:
        raw = header.get(off)
        return int.from_bytes(raw if raw is not None else dev.region_read(RegionIndex.CONFIG, off, width), "little")

    return (f"{word(PciCfg.VENDOR_ID, 2):04x}:{word(PciCfg.DEVICE_ID, 2):04x} rev {word(PciCfg.REVISION_ID, 1):#04x} "
            f"subsystem {word(PciCfg.SUBSYSTEM_ID, 2):#06x}")


@pytest.mark.parametrize("variant", [pytest.param(v, id=v, marks=pytest.mark.req(ID_VARIANTS[v][1]))
                                     for v in sorted(ID_VARIANTS)])
def test_drivers_bind_to_virtio_net_ids(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                        variant: str) -> None:
    looped = bench.wire().looped
    header, rid = ID_VARIANTS[variant]
    for name, runner in (("vDPA driver", run_vdpa), ("guest driver", run_guest)):
        real = bench.open()
        edited = ConfigSpaceEditor(real, [c.entry() for c in target_caps(real)], header=header)
        run = runner(TracingPciDevice(edited), mem, looped, bench.deadlines)
        verdict.check(rid, run.ok, f"{name} on a function presenting {_ids(header, real)}: {run}")
        real.close()  # a real function has one owner at a time (a VFIO group opens once)


FOREIGN_IDS: dict[str, dict[int, bytes]] = {
    "vendor-0x8086": {PciCfg.VENDOR_ID: struct.pack("<H", 0x8086)},
    "device-0x1080": {PciCfg.DEVICE_ID: struct.pack("<H", 0x1080)},
    "device-0x0fff": {PciCfg.DEVICE_ID: struct.pack("<H", 0x0FFF)},
}


#: Ids at the ends of both virtio ranges, and a transitional id with another vendor's subsystem ids (the quirk
#: table keys on all four ids: a function that is not the one a record names is driven as plain virtio-pci).
VDPA_ID_VARIANTS: dict[str, tuple[dict[int, bytes], str]] = {
    "modern-0x1040": ({PciCfg.DEVICE_ID: struct.pack("<H", 0x1040)}, "PCI-DRV-01"),
    "modern-0x107f": ({PciCfg.DEVICE_ID: struct.pack("<H", 0x107F)}, "PCI-DRV-01"),
    "transitional-0x103f": ({PciCfg.DEVICE_ID: struct.pack("<H", 0x103F), PciCfg.REVISION_ID: b"\0"}, "PCI-DRV-02"),
    "transitional-0x1000-subsystem-8086-001a": ({PciCfg.DEVICE_ID: struct.pack("<H", 0x1000), PciCfg.REVISION_ID: b"\0",
                                                 PciCfg.SUBSYSTEM_VENDOR_ID: struct.pack("<H", 0x8086),
                                                 PciCfg.SUBSYSTEM_ID: struct.pack("<H", 0x001A)}, "PCI-DRV-02"),
}


@pytest.mark.parametrize("variant", [pytest.param(v, id=v, marks=pytest.mark.req(VDPA_ID_VARIANTS[v][1]))
                                     for v in sorted(VDPA_ID_VARIANTS)])
def test_vdpa_driver_binds_every_virtio_id(bench: Bench, verdict: Verdict, mem: GuestMemory, variant: str) -> None:
    """The vDPA driver is a driver for every virtio device type: it binds the whole modern range
    (0x1040..0x107f) and the whole transitional range (0x1000..0x103f) and drives the function."""
    looped = bench.wire().looped
    header, rid = VDPA_ID_VARIANTS[variant]
    real = bench.open()
    run = run_vdpa(TracingPciDevice(ConfigSpaceEditor(real, [c.entry() for c in target_caps(real)], header=header)),
                   mem, looped, bench.deadlines)
    verdict.check(rid, run.ok, f"vDPA driver on a function presenting {_ids(header, real)}: {run}")
    real.close()


@pytest.mark.req("PCI-DRV-01")
@pytest.mark.parametrize("variant", sorted(FOREIGN_IDS))
def test_vdpa_driver_does_not_bind_foreign_ids(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                               variant: str) -> None:
    looped = bench.wire().looped
    real = bench.open()
    header = FOREIGN_IDS[variant]
    trace = TracingPciDevice(ConfigSpaceEditor(real, [c.entry() for c in target_caps(real)], header=header))
    run = run_vdpa(trace, mem, looped, bench.deadlines)
    writes = [a for a in trace.accesses if a.op == "w"]
    verdict.check("PCI-DRV-01", not run.bound and not writes,
                  f"function presenting {_ids(header, real)} (not a virtio id): vDPA driver {run}; "
                  f"{len(writes)} register writes issued (expected no bind and no write)")


# --- capability list variants (4.1.4) --------------------------------------------------------------


def virtio_cap(cfg_type: int, bar: int, offset: int, length: int, extra: bytes = b"") -> bytes:
    return VirtioPciCap(PCI_CAP_ID_VNDR, 0, VirtioPciCap.SIZE + len(extra), cfg_type, bar, 0, offset,
                        length).pack() + extra


def _struct_caps(caps: list[TargetCap]) -> dict[int, TargetCap]:
    out: dict[int, TargetCap] = {}
    for c in caps:
        if c.cfg_type in BAR_STRUCTS and c.cfg_type not in out:
            out[c.cfg_type] = c
    return out


def _fields(c: TargetCap) -> VirtioPciCap:
    return VirtioPciCap.unpack(c.data)


@dataclass
class Presented:
    """A capability list to present, what it is, and how to judge the driver on it; ``looped``: the last
    entry's next pointer leads back to the first."""

    entries: list[CapEntry]
    what: str
    alias_bar: int | None = None
    looped: bool = False


#: Config-space reads a driver gets before a looped list counts as walked for ever (discovery takes ~100).
WALK_READ_LIMIT = 20000


class LoopedCapabilityList(ConfigSpaceEditor):
    """The presented list with the last next pointer back to the first entry; config reads are counted and
    fail past :data:`WALK_READ_LIMIT`, so a walk that never ends fails instead of hanging."""

    def __init__(self, inner: PciDevice, caps: list[CapEntry]) -> None:
        super().__init__(inner, caps)
        self.image[self.placed[-1] + 1] = self.placed[0]
        self.config_reads = 0

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index == RegionIndex.CONFIG:
            self.config_reads += 1
            if self.config_reads > WALK_READ_LIMIT:
                raise PciError(f"{self.name}: {WALK_READ_LIMIT} config reads: the capability walk does not end")
        return super().region_read(index, offset, size)


Layout = Callable[[PciDevice, list[TargetCap]], Presented]


def reserved_cfg_types_first(dev: PciDevice, caps: list[TargetCap]) -> Presented:
    common = _fields(_struct_caps(caps)[CapType.COMMON_CFG])
    fakes = [CapEntry.synthetic(virtio_cap(t, common.bar, common.offset, common.length)) for t in (6, 7, 10, 0xFF)]
    return Presented([*fakes, *(c.entry() for c in caps)],
                     "vendor caps with reserved cfg_type 6, 7, 10, 0xff (each describing the common "
                     "structure) placed first")


def reserved_bar_duplicates_first(dev: PciDevice, caps: list[TargetCap]) -> Presented:
    common = _struct_caps(caps)[CapType.COMMON_CFG]
    fakes = [CapEntry.synthetic(common.data[:CAP_BAR] + bytes([bar]) + common.data[CAP_BAR + 1:VirtioPciCap.SIZE])
             for bar in (6, 7, 0x80, 0xFF)]
    return Presented([*fakes, *(c.entry() for c in caps)],
                     "COMMON_CFG duplicates with reserved bar 6, 7, 0x80, 0xff placed before the real one")


def aliased_duplicates_first(dev: PciDevice, caps: list[TargetCap]) -> Presented:
    structs = _struct_caps(caps)
    bar = _fields(structs[CapType.COMMON_CFG]).bar
    size = dev.region_info(bar).size
    firsts: list[CapEntry] = []
    for t in BAR_STRUCTS:
        c = structs.get(t)
        if c is None or _fields(c).bar != bar:
            continue
        f = _fields(c)
        raw = bytearray(c.data)
        struct.pack_into("<I", raw, CAP_OFFSET, f.offset + size)
        firsts.append(CapEntry.synthetic(bytes(raw)))
    return Presented([*firsts, *(c.entry() for c in caps)],
                     f"a first instance of each structure in an alias of BAR{bar} at +{size:#x}, then the "
                     "target's own", alias_bar=bar)


def enlarged_cap_len(dev: PciDevice, caps: list[TargetCap]) -> Presented:
    out: list[CapEntry] = []
    for c in caps:
        e = c.entry()
        if c.cfg_type is not None and c.cfg_type != CapType.VENDOR_CFG:
            e = e.padded(8).patched(CAP_LEN, bytes([c.data[CAP_LEN] + 8]))
        out.append(e)
    return Presented(out, "cap_len of every virtio capability 8 bytes beyond its defined size")


def _room(dev: PciDevice, caps: list[TargetCap], cap: TargetCap) -> int:
    """Bytes from the structure's start to the next thing in its BAR (structure, MSI-X table/PBA) or BAR end."""
    f = _fields(cap)
    starts = [dev.region_info(f.bar).size]
    for c in caps:
        if c.cfg_type in BAR_STRUCTS and _fields(c).bar == f.bar:
            starts.append(_fields(c).offset)
        elif c.cap_id == PCI_CAP_ID_MSIX:
            for off in (MsixCap.TABLE, MsixCap.PBA):
                bir = int.from_bytes(c.data[off:off + 4], "little")
                if bir & 7 == f.bar:
                    starts.append(bir & ~7)
    return min(s for s in starts if s > f.offset) - f.offset


def enlarged_structures(dev: PciDevice, caps: list[TargetCap]) -> Presented:
    out: list[CapEntry] = []
    lengths: list[str] = []
    for c in caps:
        e = c.entry()
        if c.cfg_type in BAR_STRUCTS:
            room = _room(dev, caps, c)
            e = e.patched(CAP_LENGTH, struct.pack("<I", room))
            lengths.append(f"{CapType(c.cfg_type).name} {_fields(c).length:#x}->{room:#x}")
        out.append(e)
    return Presented(out, "structure lengths grown up to the next structure: " + ", ".join(lengths))


def _needed_device_cfg(offered: int) -> int:
    """End of the last net config field the guest driver uses under its default request."""
    ends = {NetF.MAC: NetCfg.MAC + 6, NetF.STATUS: NetCfg.STATUS + 2, NetF.MTU: NetCfg.MTU + 2}
    return max((end for feat, end in ends.items() if has(offered & DEFAULT_FEATURES, feat)), default=0)


def device_cfg_length(delta: int) -> Layout:
    def layout(dev: PciDevice, caps: list[TargetCap]) -> Presented:
        need = _needed_device_cfg(VirtioPciModern(dev).device_features())
        out = [c.entry().patched(CAP_LENGTH, struct.pack("<I", need + delta)) if c.cfg_type == CapType.DEVICE_CFG
               else c.entry() for c in caps]
        return Presented(out, f"device config length {need + delta} (the driver's fields end at {need})")
    return layout


def looped_list(dev: PciDevice, caps: list[TargetCap]) -> Presented:
    return Presented([c.entry() for c in caps], "the target's capabilities with the last next pointer leading back "
                     "to the first", looped=True)


def short_pci_cfg_first(dev: PciDevice, caps: list[TargetCap]) -> Presented:
    short = CapEntry.synthetic(virtio_cap(CapType.PCI_CFG, 0, 0, 0))  # cap_len 16: no pci_cfg_data
    return Presented([short, *(c.entry() for c in caps)],
                     "a PCI_CFG capability too short to hold pci_cfg_data placed before the target's own")


CAP_VARIANTS: dict[str, tuple[Layout, tuple[str, ...]]] = {
    "reserved-cfg-type-first": (reserved_cfg_types_first, ("PCI-DRV-07",)),
    "reserved-bar-first": (reserved_bar_duplicates_first, ("PCI-DRV-10",)),
    "two-instances": (aliased_duplicates_first, ("PCI-DRV-08",)),
    "looped-list": (looped_list, ("PCI-DRV-08",)),
    "short-pci-cfg-first": (short_pci_cfg_first, ("PCI-DRV-08",)),
    "long-cap-len": (enlarged_cap_len, ("PCI-DRV-09",)),
    "long-structures": (enlarged_structures, ("PCI-DRV-12", "CFG-DRV-04")),
    "minimal-device-cfg": (device_cfg_length(0), ("CFG-DRV-05",)),
}


def _judge_layout(verdict: Verdict, variant: str, presented: Presented, edited: ConfigSpaceEditor,
                  trace: TracingPciDevice, name: str, run: Run) -> None:
    t = run.transport
    ids = CAP_VARIANTS[variant][1]
    head = f"{name} on {presented.what}: {run}"
    if t is None:
        for rid in ids:
            verdict.check(rid, False, head)
        return
    # the instance of each structure the transport uses (its accessors take it from cap())
    used = {name: c.cap_offset for name, c in (("COMMON_CFG", t.common), ("NOTIFY_CFG", t.notify_cap),
                                               ("ISR_CFG", t.isr_cap), ("DEVICE_CFG", t.device_cap))
            if c is not None}
    placed = edited.placed
    if variant == "reserved-cfg-type-first":
        fakes = set(placed[:4])
        kept = [c for c in t.vendor_caps if c.cap_offset in fakes]
        verdict.check("PCI-DRV-07", run.ok and not kept,
                      f"{head}; reserved-type caps at {sorted(hex(p) for p in fakes)} kept as "
                      f"{[(hex(c.cap_offset), c.cfg_type) for c in kept]} (expected none); skipped {t.skipped_caps}")
    elif variant == "reserved-bar-first":
        fakes = set(placed[:4])
        high = sorted({a.region for a in bar_accesses(trace) if a.region > 5})
        verdict.check("PCI-DRV-10", run.ok and t.common.cap_offset not in fakes and not high,
                      f"{head}; common structure taken from cap at {t.common.cap_offset:#x} (reserved-bar "
                      f"duplicates at {sorted(hex(p) for p in fakes)}); regions >5 accessed: {high}")
    elif variant == "two-instances":
        firsts = set(placed[:len(placed) - len(target_caps(edited.inner))])
        alias = edited.region_info(presented.alias_bar or 0).size // 2
        stray = [a for a in bar_accesses(trace) if a.region == presented.alias_bar and a.offset < alias]
        kicks = [k for k in trace.ioeventfds if k[0] == presented.alias_bar and k[1] < alias]
        verdict.check("PCI-DRV-08", run.ok and set(used.values()) <= firsts and not stray and not kicks,
                      f"{head}; structures used from caps {used} (first instances at "
                      f"{sorted(hex(p) for p in firsts)}); {len(stray)} accesses and {len(kicks)} doorbell "
                      f"eventfds on the second instances below {alias:#x}"
                      + (f", first {stray[0].op} at {stray[0].offset:#x}" if stray else ""))
    elif variant == "looped-list":
        found = sorted(hex(c.cap_offset) for c in t.vendor_caps)
        virtio = sorted(hex(p) for p, e in zip(placed, presented.entries, strict=True) if e.image[0] == PCI_CAP_ID_VNDR)
        verdict.check("PCI-DRV-08", run.ok and found == virtio,
                      f"{head}; virtio capabilities found {found} (each presented once: {virtio})")
    elif variant == "short-pci-cfg-first":
        skipped = {off for off, _why in t.skipped_caps}
        window = t.pci_cfg_cap
        through = None
        if window is not None:
            through = t.pci_cfg_read(t.common.bar, t.common.offset + CommonCfg.NUM_QUEUES, 2)
        direct = t.num_queues()
        verdict.check("PCI-DRV-08", run.ok and placed[0] in skipped and (window is None or (
                      window.cap_offset != placed[0] and through == direct)),
                      f"{head}; short capability at {placed[0]:#x} skipped: {t.skipped_caps}; window used at "
                      f"{window.cap_offset if window else None}; num_queues through it {through}, direct {direct}")
    elif variant == "long-cap-len":
        verdict.check("PCI-DRV-09", run.ok and len(used) == len(_struct_caps(target_caps(edited.inner))),
                      f"{head}; structures found {sorted(used)}; skipped {t.skipped_caps}")
    elif variant == "long-structures":
        lengths = {CapType(c.cfg_type).name: c.length for c in t.vendor_caps if c.cfg_type in BAR_STRUCTS}
        verdict.check("PCI-DRV-12", run.ok and not t.skipped_caps,
                      f"{head}; lengths taken {lengths}; skipped {t.skipped_caps}")
        verdict.check("CFG-DRV-04", run.ok and t.device_cap is not None,
                      f"{head}; device config length taken {t.device_config_size():#x}")
    elif variant == "minimal-device-cfg":
        dev_cap = t.device_cap
        verdict.check("CFG-DRV-05", run.ok and dev_cap is not None,
                      f"{head}; device config length seen {t.device_config_size()}")


@pytest.mark.parametrize("variant", [pytest.param(v, id=v, marks=pytest.mark.req(*CAP_VARIANTS[v][1]))
                                     for v in sorted(CAP_VARIANTS)])
def test_drivers_cope_with_capability_layouts(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                              variant: str) -> None:
    looped = bench.wire().looped
    layout = CAP_VARIANTS[variant][0]
    for name, runner in (("guest driver", run_guest), ("vDPA driver", run_vdpa)):
        real = bench.open()
        presented = layout(real, target_caps(real))
        edited = (LoopedCapabilityList(real, presented.entries) if presented.looped
                  else ConfigSpaceEditor(real, presented.entries, alias_bar=presented.alias_bar))
        trace = TracingPciDevice(edited)
        _judge_layout(verdict, variant, presented, edited, trace, name, runner(trace, mem, looped, bench.deadlines))
        real.close()  # a real function has one owner at a time (a VFIO group opens once)


@pytest.mark.req("CFG-DRV-05")
def test_guest_driver_checks_device_config_is_large_enough(bench: Bench, verdict: Verdict,
                                                           mem: GuestMemory) -> None:
    looped = bench.wire().looped
    real = bench.open()
    offered = VirtioPciModern(real).device_features()
    if not has(offered, NetF.MTU):
        verdict.not_applicable("CFG-DRV-05", "the target does not offer VIRTIO_NET_F_MTU, the last field the "
                               "guest driver reads; no short layout to present")
        return
    presented = device_cfg_length(-2)(real, target_caps(real))
    trace = TracingPciDevice(ConfigSpaceEditor(real, presented.entries))
    run = run_guest(trace, mem, looped, bench.deadlines)
    t = run.transport
    dev_cap = t.device_cap if t is not None else None
    length = dev_cap.length if dev_cap is not None else 0
    beyond = [a for a in bar_accesses(trace) if dev_cap is not None and a.region == dev_cap.bar
              and dev_cap.offset + length <= a.offset < dev_cap.offset + length + 0x100]
    status_writes = [a.value for a in trace.accesses if t is not None and a.op == "w"
                     and a.region == t.common.bar and a.offset == t.common.offset + CommonCfg.DEVICE_STATUS]
    failed = any(v & DeviceStatus.FAILED for v in status_writes)
    ok = not beyond and ((not run.initialised and failed) or run.ok)
    verdict.check("CFG-DRV-05", ok,
                  f"guest driver on {presented.what} (MTU at {NetCfg.MTU:#x}+2 cut off): {run}; "
                  f"{len(beyond)} reads past the presented end; FAILED written: {failed}")


# --- PCI_CFG window (4.1.4.9) ------------------------------------------------------------------------


def _described(dev: PciDevice) -> list[tuple[int, int, int]]:
    """(bar, start, end) of every BAR range a virtio capability other than PCI_CFG describes."""
    def cfg(off: int, size: int) -> bytes:
        return dev.region_read(RegionIndex.CONFIG, off, size)

    out = []
    for cap in walk_capabilities(cfg):
        v = cap.virtio
        if v is not None and v.cfg_type in BAR_STRUCTS and v.bar <= 5:
            out.append((v.bar, v.offset, v.offset + v.length))
    return out


def _window_accesses(trace: TracingPciDevice, cap_off: int) -> list[tuple[str, int, int, int]]:
    """(op, bar, offset, length) in force at each access of pci_cfg_data, replaying the window writes."""
    state = bytearray(PCI_CFG_DATA)
    out = []
    for a in trace.accesses:
        if a.region != RegionIndex.CONFIG or not cap_off <= a.offset < cap_off + PCI_CFG_DATA + 4:
            continue
        rel = a.offset - cap_off
        if a.op == "w" and rel < PCI_CFG_DATA:
            state[rel:rel + a.size] = a.data[:PCI_CFG_DATA - rel]
        if rel + a.size > PCI_CFG_DATA:
            bar = state[CAP_BAR]
            offset, length = struct.unpack_from("<II", state, CAP_OFFSET)
            out.append((a.op, bar, offset, length))
    return out


@pytest.mark.req("PCI-DRV-29", "PCI-DRV-30", "PCI-DRV-14")
def test_pci_cfg_window_accesses_stay_aligned_and_inside_structures(bench: Bench,
                                                                   verdict: Verdict) -> None:
    trace = TracingPciDevice(bench.open())
    t = VirtioPciModern(trace)
    window = t.pci_cfg_cap
    if window is None:
        verdict.not_offered("PCI-DRV-29", "no PCI_CFG capability")
        verdict.not_offered("PCI-DRV-30", "no PCI_CFG capability")
        verdict.not_offered("PCI-DRV-14", "no PCI_CFG capability: no capability the driver may write")
        return
    described = _described(trace.inner)  # read past the trace: the checker's reads are not the driver's
    common = t.common
    # Every common field at its natural width (mixing 4, 2 and 1 byte windows), read then one harmless write.
    for fld, width in COMMON_CFG_WIDTH.items():
        if fld + width <= common.length:
            for part in range(0, width, 4 if width == 8 else width):
                t.pci_cfg_read(common.bar, common.offset + fld + part, min(width, 4))
    t.pci_cfg_write(common.bar, common.offset + CommonCfg.QUEUE_SELECT, 2, 0)
    if t.device_cap is not None:
        for off in range(0, min(t.device_cap.length, 8)):
            t.pci_cfg_read(t.device_cap.bar, t.device_cap.offset + off, 1)
    # Requests the window must not serve: misaligned, and outside every described range.
    size = trace.region_info(common.bar).size
    outside = next((o for o in range(0, size, 4)
                    if not any(b == common.bar and s <= o < e for b, s, e in described)), None)
    refused: list[str] = []
    for bar, off, width in ((common.bar, common.offset + CommonCfg.NUM_QUEUES + 1, 2),
                            (common.bar, common.offset + CommonCfg.DEVICE_FEATURE + 2, 4),
                            *(((common.bar, outside, 4),) if outside is not None else ())):
        try:
            t.pci_cfg_read(bar, off, width)
        except (ValueError, PciError) as exc:
            refused.append(f"BAR{bar}+{off:#x}/{width}: {type(exc).__name__}")
    seen = _window_accesses(trace, window.cap_offset)
    misaligned = [(hex(o), n) for _op, _b, o, n in seen if n not in (1, 2, 4) or o % n]
    stray = [(op, b, hex(o), n) for op, b, o, n in seen
             if not any(b == db and s <= o and o + n <= e for db, s, e in described)]
    verdict.check("PCI-DRV-29", bool(seen) and not misaligned,
                  f"{len(seen)} pci_cfg_data accesses; windows with cap.offset not a multiple of cap.length: "
                  f"{misaligned[:4]}; requests refused before touching the window: {refused}")
    # The window is the one capability whose fields a driver writes (bar, offset, length, data): the monitor
    # checks that none of the transport's config writes fell on another capability or the window's header.
    cap_writes = [a for a in trace.accesses if a.op == "w" and a.region == RegionIndex.CONFIG]
    ok, evidence = VirtioPciDriverMonitor(trace).verdicts().get("PCI-DRV-14", (True, []))
    verdict.check("PCI-DRV-14", bool(cap_writes) and ok,
                  f"{len(cap_writes)} config-space writes by the transport using the PCI_CFG window: {evidence[:4]}")
    verdict.check("PCI-DRV-30", bool(seen) and not stray,
                  f"{len(seen)} pci_cfg_data accesses; outside every range described by the other virtio "
                  f"capabilities {[(b, hex(s), hex(e)) for b, s, e in described]}: {stray[:4]}; "
                  f"refused: {refused}")


# --- MSI-X Table Size (4.1.5.1.2) and a shared interrupt (4.1.5.4) ------------------------------------


def _msix_variant(real: PciDevice, table_size: int | None) -> ConfigSpaceEditor:
    caps = target_caps(real)
    entries = [msix_table_size_patch(c.entry(), table_size) if c.cap_id == PCI_CAP_ID_MSIX and table_size
               else c.entry() for c in caps if not (c.cap_id == PCI_CAP_ID_MSIX and table_size == 0)]
    return ConfigSpaceEditor(real, entries, msix_vectors=table_size)


def _vectors_written(trace: TracingPciDevice, t: VirtioPciModern) -> list[int]:
    base = t.common.offset
    fields = (CommonCfg.CONFIG_MSIX_VECTOR, CommonCfg.QUEUE_MSIX_VECTOR)
    return sorted({a.value for a in trace.accesses if a.op == "w" and a.region == t.common.bar
                   and a.offset - base in fields})


@pytest.mark.req("PCI-DRV-31")
@pytest.mark.parametrize("table_size", [1, 2, None, 64])
def test_drivers_cope_with_msix_table_sizes(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                            table_size: int | None) -> None:
    looped = bench.wire().looped
    for name, runner in (("guest driver", run_guest), ("vDPA driver", run_vdpa)):
        if table_size is not None and table_size > 3:
            if not bench.configurable:
                verdict.not_applicable("PCI-DRV-31", f"a table of {table_size} vectors needs the simulator")
                return
            real = bench.open(bench.variant(replace=True, queues=table_size // 2 - 1))  # 2 per pair, ctrl, config
            edited = ConfigSpaceEditor(real, [c.entry() for c in target_caps(real)])
        else:
            real = bench.open()
            edited = _msix_variant(real, table_size)
        trace = TracingPciDevice(edited)
        presented = VirtioPciModern(edited).msix
        run = runner(trace, mem, looped, bench.deadlines)
        vectors = _vectors_written(trace, run.transport) if run.transport is not None else []
        size = presented.table_size if presented is not None else 0
        in_table = all(v < size or v == 0xFFFF for v in vectors)
        verdict.check("PCI-DRV-31", run.ok and in_table,
                      f"{name} on an MSI-X Table Size of {size} (field {size - 1:#x}): {run}; vectors "
                      f"programmed {vectors}")
        real.close()  # a real function has one owner at a time (a VFIO group opens once)


def _used_without_consuming(drv: GuestNetDriver, frames: int, wait: float) -> bool:
    """Whether, within ``wait`` s, the device marked ``frames`` receive buffers and every transmit buffer used (the
    used indexes read, nothing consumed, so the driver still finds it all after its next wake-up)."""
    rx, tx = drv.queues.get(drv.RX), drv.queues.get(drv.TX)
    if rx is None or tx is None:
        return True  # packed rings: nothing to look at without consuming
    deadline = time.monotonic() + wait
    while ((rx.used_idx() - rx.last_used) & 0xFFFF < frames
           or (tx.used_idx() - tx.last_used) & 0xFFFF < tx.in_flight):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)  # a bounded poll of guest memory the device writes
    return True


@pytest.mark.req("PCI-DRV-37")
@pytest.mark.parametrize("table_size", [1, 0])
def test_guest_driver_handles_config_and_used_on_one_interrupt(bench: Bench, verdict: Verdict,
                                                               mem: GuestMemory, table_size: int) -> None:
    wire = bench.wire()
    real = bench.open()
    port = need(real.abilities().port, verdict, "PCI-DRV-37")  # the configuration change comes from the port
    if port is None:
        return
    if not wire.looped:  # used buffers on both queues: the receive side needs the frames back
        verdict.not_applicable("PCI-DRV-37", f"transmitted frames cannot be observed: {wire.why}")
        return
    mode = "INTx" if table_size == 0 else "one MSI-X vector"
    drv = GuestNetDriver(_msix_variant(real, table_size), mem, queue_size=64)
    try:
        drv.init()
        if not has(drv.features, NetF.STATUS):
            verdict.not_applicable("PCI-DRV-37", "VIRTIO_NET_F_STATUS not negotiated: no config change to see")
            return
        while drv.wait_irq("config", 0.0):  # start from a quiet line
            pass
        # Both events before the driver looks: used buffers on both queues, then a config change.
        dl = bench.deadlines
        drv.send(FRAMES, timeout=dl.wait(5.0))
        # A device in its own thread or process marks them used a moment later: the driver is not told yet (the
        # interrupts pile up on the one line), the bench watches the used rings without consuming anything.
        settled = _used_without_consuming(drv, len(FRAMES), dl.wait(2.0))
        port.set_link(False)
        woke = drv.wait_irq("config", dl.wait(2.0))  # one wake-up for everything
        link = drv.link_up()
        got = drv.receive_raw(len(FRAMES), timeout=0.0)
        tx_done = drv.wait_tx_done(timeout=0.0)
        verdict.check("PCI-DRV-37", woke and not link and len(got) == len(FRAMES) and tx_done,
                      f"guest driver, config and queues on {mode}: woke {woke}; after that single wake-up it saw "
                      f"link {'up' if link else 'down'} (set down), {len(got)}/{len(FRAMES)} frames received and "
                      f"transmit {'complete' if tx_done else 'incomplete'} without waiting for another interrupt"
                      + ("" if settled else f" (the device had not used them all within {dl.explain(2.0)})"))
    finally:
        port.set_link(True)
        drv.close()
