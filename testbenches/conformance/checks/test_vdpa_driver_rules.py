"""The backend's vDPA driver (``backend.drivers.vdpa.VirtioPciVdpaDevice``) held to the whole rule of each path,
on any target (2.2, 2.4, 4.1.2.2, 4.1.4.3, 4.1.5.1, 6.1).

Each check drives the driver the way a vhost-vDPA frontend does and judges what reaches the function: every
register access is seen through :class:`~testbenches.monitor.TracingPciDevice`, and where the rule is about what
the device shows (a smaller queue, a vector that does not stick, an extended capability list, a vendor ring-state
register), the views of :mod:`testbenches.conformance.checks.register_view` edit that one thing and keep the rest
of the target live. The expected values are computed here from the spec's text, not with the driver's own helpers.
The register layer beneath the driver is judged in test_register_layer_rules.py.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

import pytest

from backend.device import VqState
from backend.drivers.quirks import IdMatch, Quirk, QuirkTable, VqStateBlock
from backend.drivers.transport import VirtioPciModern, extended_capabilities
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import consume_eventfd, wait_eventfd
from backend.pci.device import DmaPerm, IrqIndex, PciDevice, PciError, RegionIndex
from backend.virtio.features import DeviceStatus, F, bits, has
from backend.virtio.pci_regs import NO_VECTOR, PCI_CONFIG_SPACE_SIZE, CommonCfg, PciCfg
from sim.memory import GuestMemory
from testbenches.conformance.checks.pcie_ext import PCI_EXT_CAP_ID_SRIOV, SriovConfigSpace
from testbenches.conformance.checks.register_view import (
    UP,
    NoIoeventfd,
    RegisterView,
    RingStateRegisters,
    SlowReset,
    common_accesses,
    refusal,
    wait_for_access,
)
from testbenches.conformance.checks.test_driver_discovery import FRAMES, _msix_variant, _transmit
from testbenches.conformance.checks.test_driver_side import FaultInjector
from testbenches.conformance.checks.test_vdpa_paths import NOT_IMPLEMENTED, CommonCfgEditor
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.driver.vdpa_frontend import VdpaFrontend
from testbenches.monitor import TracingPciDevice
from testbenches.monitor.config_proxy import ConfigSpaceEditor, target_caps

MEM = 8 << 20


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


def _ids_quirk(dev: PciDevice, quirk: Quirk) -> QuirkTable:
    """A table whose one entry matches this function exactly (ids read here from the config header, 7.5.1)."""
    header = dev.region_read(RegionIndex.CONFIG, 0, PciCfg.SUBSYSTEM_ID + 2)
    vendor, device = struct.unpack_from("<HH", header, PciCfg.VENDOR_ID)
    sub_vendor, sub_device = struct.unpack_from("<HH", header, PciCfg.SUBSYSTEM_VENDOR_ID)
    return QuirkTable().extended(IdMatch(vendor, device, sub_vendor, sub_device), quirk)


# --- feature offering: what the vDPA driver passes upward (2.2.1, 6.1) ---------------------------------------

#: Extended capability lists presented at 0x100..0xfff as (offset, id, version, next) headers; ``None`` keeps the
#: target's own config space. Next pointers with their reserved low bits set are masked by a driver (PCIe 7.6.3).
EXT_LISTS: dict[str, list[tuple[int, int, int, int]] | None] = {
    "conventional_256": None,
    "empty": [],
    "sriov_alone": [(0x100, PCI_EXT_CAP_ID_SRIOV, 1, 0)],
    "sriov_third": [(0x100, 0x0001, 2, 0x148), (0x148, 0x000D, 1, 0x2C3), (0x2C0, PCI_EXT_CAP_ID_SRIOV, 1, 0)],
    "sriov_last_far": [(0x100, 0x000B, 1, 0x180), (0x180, 0x0003, 1, 0xFF8), (0xFF8, PCI_EXT_CAP_ID_SRIOV, 1, 0)],
    "no_sriov": [(0x100, 0x0001, 2, 0x140), (0x140, 0x000E, 1, 0x3F0), (0x3F0, 0x0019, 1, 0)],
    "loop_without_sriov": [(0x100, 0x0001, 1, 0x200), (0x200, 0x000D, 1, 0x100)],
    "sriov_after_all_ones": [(0x100, 0x0001, 1, 0x140), (0x140, 0xFFFF, 0xF, 0xFFF),
                             (0x180, PCI_EXT_CAP_ID_SRIOV, 1, 0)],
    "sriov_after_zero_header": [(0x100, 0, 0, 0), (0x140, PCI_EXT_CAP_ID_SRIOV, 1, 0)],
    "unreadable": [(0x100, PCI_EXT_CAP_ID_SRIOV, 1, 0)],  # a 4 KiB region whose extended space fails to read
}


class UnreadableExtendedSpace(SriovConfigSpace):
    """A 4 KiB config region whose extended space cannot be read (the access layer reports an error there)."""

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index == RegionIndex.CONFIG and offset >= PCI_CONFIG_SPACE_SIZE:
            raise PciError(f"{self.name}: extended config read at {offset:#x} failed")
        return super().region_read(index, offset, size)


def _header(cap_id: int, version: int, nxt: int) -> int:
    return cap_id | version << 16 | nxt << 20


def _present_ext_list(base: PciDevice, entries: list[tuple[int, int, int, int]]) -> SriovConfigSpace:
    space = SriovConfigSpace(base, sriov=False)
    for off, cap_id, version, nxt in entries:
        rel = off - PCI_CONFIG_SPACE_SIZE
        space.extended[rel:rel + 4] = struct.pack("<I", _header(cap_id, version, nxt))
    return space


def _expected_walk(entries: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
    """(offset, id) in list order, by PCIe 7.6.3: from 0x100 follow the next pointer (bits 31:20, low two bits
    reserved) until it is 0, a header reads 0 or all ones, or an entry comes round again."""
    headers = {off: _header(cap_id, version, nxt) for off, cap_id, version, nxt in entries}
    out: list[tuple[int, int]] = []
    off, seen = 0x100, set()
    while off and off not in seen and 0x100 <= off <= 0xFFC:
        seen.add(off)
        header = headers.get(off, 0)
        if header in (0, 0xFFFFFFFF):
            break
        out.append((off, header & 0xFFFF))
        off = header >> 20 & ~3
    return out


@pytest.mark.req("FEAT-DRV-17", "FEAT-DRV-01")
@pytest.mark.parametrize("ext", list(EXT_LISTS))
def test_vdpa_driver_offers_upward_only_what_the_function_carries(bench: Bench, verdict: Verdict, ext: str) -> None:
    """The function lists VIRTIO_F_SR_IOV and VIRTIO_F_NOTIFICATION_DATA among its features (shown by the
    checks' proxy) and presents an extended capability list. The driver offers the frontend exactly the device's
    features less NOTIFICATION_DATA (a kick eventfd cannot carry next_off/next_wrap), less what the quirk record
    hides, and less SR_IOV unless an SR-IOV capability is reached by walking the list (next pointers masked,
    loop-safe). A frontend asking for any of the withheld bits is refused with nothing written to driver_feature.
    """
    base = bench.open()
    entries = EXT_LISTS[ext]
    space: PciDevice = base if entries is None else _present_ext_list(base, entries)
    if ext == "unreadable":
        space = UnreadableExtendedSpace(base, sriov=True)
    shown = FaultInjector(space, add=bits(F.SR_IOV, F.NOTIFICATION_DATA))
    device = VirtioPciModern(shown).device_features()
    quirk_hidden = device & ~bits(F.VERSION_1, F.ACCESS_PLATFORM, F.SR_IOV, F.NOTIFICATION_DATA)
    quirk_hidden &= -quirk_hidden  # the lowest offered feature the frontend could otherwise take
    table = _ids_quirk(base, Quirk(name="hide-one", why="conformance check: a record hiding one feature",
                                   hide_features=quirk_hidden))
    try:
        walked: tuple[tuple[int, int], ...] | str = extended_capabilities(shown).found
    except PciError as exc:
        walked = f"unreadable ({exc})"
    want_walk = [] if entries is None else _expected_walk(entries)
    if ext == "unreadable":  # nothing can be found where nothing can be read: SR_IOV is not offered
        want_walk = []
    has_sriov = any(cap_id == PCI_EXT_CAP_ID_SRIOV for _o, cap_id in want_walk)
    vdpa = VirtioPciVdpaDevice(shown, quirks=table, owns_pci=False)
    try:
        offered = vdpa.get_device_features()
        expected = device & ~bits(F.NOTIFICATION_DATA) & ~quirk_hidden & ~(0 if has_sriov else bits(F.SR_IOV))
        withheld = [b for b in range(128) if has(device, b) and not has(expected, b)]
        first = len(shown.accesses)
        refusals = {b: refusal(lambda b=b: vdpa.set_driver_features((offered | bits(b)) & ~NOT_IMPLEMENTED))
                    for b in withheld}
        drv_feature_writes = [a for a in shown.accesses[first:] if a.op == "w" and a.region == vdpa.transport.common.bar
                              and a.offset == vdpa.transport.common.offset + CommonCfg.DRIVER_FEATURE]
    finally:
        vdpa.close()
    shown_walk = walked if isinstance(walked, str) else [(hex(o), hex(i)) for o, i in walked]
    head = (f"extended list {ext}: walked {shown_walk} (expected "
            f"{[(hex(o), hex(i)) for o, i in want_walk]}); device {device:#x}, offered upward {offered:#x} "
            f"(expected {expected:#x}); requests for withheld bits: {refusals}; driver_feature writes by them: "
            f"{len(drv_feature_writes)}")
    refused_all = all(r.startswith("refused") for r in refusals.values()) and not drv_feature_writes
    walk_ok = isinstance(walked, str) if ext == "unreadable" else list(walked) == want_walk
    verdict.check("FEAT-DRV-17", walk_ok and has(offered, F.SR_IOV) == has_sriov
                  and refused_all, head)
    verdict.check("FEAT-DRV-01", offered == expected and refused_all and all("FEAT-DRV-01" in r for r in
                                                                             refusals.values()), head)


# --- queue sizes and ring addresses a frontend asks for (4.1.4.3.2, 2.7) -------------------------------------

SIZES = (0, 1, 2, 3, 16, 31, 32, 48, 64, 255, 256, 257, 1024, 32768, 32769, 65535)


def _split_size_ok(n: int, limit: int) -> bool:
    return 0 < n <= limit and n & (n - 1) == 0


@pytest.mark.parametrize("limit", [0, 1, 2, 48, 256])
@pytest.mark.parametrize("ring", [pytest.param("split", marks=pytest.mark.req("PCI-DRV-17")),
                                  pytest.param("packed", marks=pytest.mark.req("PCI-DRV-16"))])
def test_vdpa_driver_takes_the_queue_sizes_the_device_allows(bench: Bench, verdict: Verdict, limit: int,
                                                             ring: str) -> None:
    """queue_size of both queues reads ``limit`` (the device's maximum; 0: not available). Every SET_VRING_NUM
    from 0 to 65535 is taken exactly when it is no larger than the maximum and not 0, and for a split ring a
    power of two (for a packed one any size: the frontend negotiated VIRTIO_F_RING_PACKED, shown offered);
    nothing reaches queue_size before the queue goes live; a queue index the device does not have is refused."""
    packed = ring == "packed"
    view = RegisterView(bench.open(), queue_size_max={0: limit, 1: limit})
    shown = FaultInjector(view, add=bits(F.RING_PACKED)) if packed else view
    vdpa = VirtioPciVdpaDevice(shown, owns_pci=False)
    rid = "PCI-DRV-16" if packed else "PCI-DRV-17"
    wrong: list[str] = []
    unavailable: list[str] = []  # with a maximum of 0 every refusal says the queue is not available
    try:
        count = vdpa.get_vq_count()
        if packed:  # negotiated as far as the ring layout matters: driver_feature written, no FEATURES_OK
            vdpa.set_status(DeviceStatus.ACKNOWLEDGE)
            vdpa.set_status(UP)
            vdpa.set_driver_features(bits(F.VERSION_1, F.RING_PACKED))
        start = len(view.accesses)
        maxima = [vdpa.get_vq_num_max(q) for q in (0, 1)]
        for q in (0, 1):
            for n in SIZES:
                outcome = refusal(lambda q=q, n=n: vdpa.set_vq_num(q, n))
                if (outcome == "accepted") != (0 < n <= limit if packed else _split_size_ok(n, limit)):
                    wrong.append(f"q{q} size {n}: {outcome}")
                if limit == 0:
                    unavailable.append(outcome)
                if outcome.startswith("refused") and not outcome.startswith("refused: VdpaError"):
                    wrong.append(f"q{q} size {n}: {outcome} (not a VdpaError)")
        absent = {q: refusal(lambda q=q: vdpa.set_vq_num(q, 1)) for q in (-1, count, count + 7)}
        size_writes = [a for a in common_accesses(view, view.common.bar, view.common.offset, start)
                       if a.op == "w" and a.rel == CommonCfg.QUEUE_SIZE]
    finally:
        vdpa.close()
    verdict.check(rid, not wrong and maxima == [limit, limit] and not size_writes
                  and all(o.startswith("refused: VdpaError") for o in absent.values())
                  and all("not available" in m for m in unavailable),
                  f"{ring} ring, device maximum {limit} (driver read {maxima}); sizes taken wrongly: {wrong[:6]}; "
                  f"queue_size "
                  f"writes before going live: {len(size_writes)}; queues the device lacks: {absent}")


@pytest.mark.req("SPLIT-DRV-01")
def test_vdpa_driver_refuses_misaligned_split_rings(bench: Bench, verdict: Verdict) -> None:
    """SET_VRING_ADDR of a split ring: each part at its alignment (descriptor table 16, driver area 2, device area
    4) is taken, and any part off its alignment is refused, for every queue."""
    vdpa = VirtioPciVdpaDevice(bench.open(), owns_pci=False)
    wrong: list[str] = []
    try:
        base = GUEST_MEMORY_BASE
        for q in range(vdpa.get_vq_count()):
            good = (base + 0x1000, base + 0x2002, base + 0x3004)
            cases = [(good, True), ((base, base, base), True)]
            for part, align in enumerate((16, 2, 4)):
                for off in range(1, align):
                    bad = list(good)
                    bad[part] += off
                    cases.append(((bad[0], bad[1], bad[2]), False))
            for (desc, drv, dev), ok in cases:
                outcome = refusal(lambda q=q, a=desc, b=drv, c=dev: vdpa.set_vq_address(q, a, b, c))
                if (outcome == "accepted") != ok:
                    wrong.append(f"q{q} desc {desc:#x} driver {drv:#x} device {dev:#x}: {outcome}")
    finally:
        vdpa.close()
    verdict.check("SPLIT-DRV-01", not wrong, f"ring addresses taken or refused wrongly: {wrong[:6]}")


# --- programming queues, and the vendor ring-state register (4.1.5.1.3, vhost-user SET/GET_VRING_BASE) ------


def _free_bar(dev: PciDevice) -> int | None:
    return next((i for i in range(RegionIndex.BAR5, RegionIndex.BAR0 - 1, -1) if dev.region_info(i).size == 0), None)


#: Intel IFC VF (subsystem 8086:001a): last_avail_idx in the low half of one 32-bit slot per queue at 0x20 of its
#: live-migration BAR4 (Linux drivers/vdpa/ifcvf: IFCVF_LM_BAR, IFCVF_LM_RING_STATE_OFFSET).
IFC_VF_SUBSYSTEM = (0x8086, 0x001A)
IFC_VF_BAR, IFC_VF_RING_STATE, IFC_VF_SLOT = 4, 0x20, 4


@pytest.mark.req("PCI-DRV-18", "SPLIT-DRV-11", "NOTIF-DRV-01", "NOTIF-DRV-03")
@pytest.mark.parametrize("layout", ["u16_slots", "u32_slots", "ifc_vf_builtin"])
def test_vdpa_driver_programs_each_queue_as_the_frontend_set_it(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                                                layout: str) -> None:
    """A function with a vendor ring-state register (one slot per queue): one named by a quirk record of the
    check's own, or the Intel IFC VF's, found by the driver's built-in table from the function's subsystem ids.
    Before going live SET/GET_VRING_BASE go to the queue's slot (the low 16 bits are last_avail_idx); at
    DRIVER_OK each queue gets exactly the frontend's size, ring addresses (64-bit, low half first) and a vector
    inside the table, its state written to its slot, and only then queue_enable 1; its kick eventfd becomes a
    16-bit doorbell carrying the queue index. While it runs, GET_VRING_BASE reads the slot."""
    base = bench.open()
    bar = IFC_VF_BAR if layout == "ifc_vf_builtin" else _free_bar(base)
    if bar is None or base.region_info(bar).size:
        for rid in ("PCI-DRV-18", "SPLIT-DRV-11", "NOTIF-DRV-01", "NOTIF-DRV-03"):
            verdict.not_applicable(rid, f"BAR{bar} of the function is implemented: no room for a vendor block")
        return
    table: QuirkTable | None
    if layout == "ifc_vf_builtin":
        ifc = ConfigSpaceEditor(base, [c.entry() for c in target_caps(base)], header={
            PciCfg.SUBSYSTEM_VENDOR_ID: IFC_VF_SUBSYSTEM[0].to_bytes(2, "little"),
            PciCfg.SUBSYSTEM_ID: IFC_VF_SUBSYSTEM[1].to_bytes(2, "little")})
        regs = RingStateRegisters(ifc, bar)
        block, table = VqStateBlock(bar=bar, offset=IFC_VF_RING_STATE, stride=IFC_VF_SLOT, width=2), None
    else:
        regs = RingStateRegisters(base, bar)
        block = VqStateBlock(bar=bar, offset=0x40, stride=4 if layout == "u16_slots" else 8,
                             width=2 if layout == "u16_slots" else 4)
        table = _ids_quirk(base, Quirk(name="ring-state", why="conformance check: a vendor ring-state block",
                                       vq_state=block))
    width = block.width
    vdpa = VirtioPciVdpaDevice(regs, quirks=table, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    problems: list[str] = []
    try:
        count = vdpa.get_vq_count()
        high = 0xA5A5 << 16 if width == 4 else 0
        # before going live: each queue's state set and read back through its own slot
        for q in range(count):
            struct.pack_into("<I", regs.block, block.field_offset(q), 0xDEAD0000 | q)
        for q, state in zip(range(count), (0x1234, 0xFFFF, 7, 0x8000), strict=False):
            start = len(regs.accesses)
            vdpa.set_vq_state(q, VqState(avail_idx=state))
            wrote = [(a.offset, a.size, a.value) for a in regs.accesses[start:] if a.region == bar]
            if wrote != [(block.field_offset(q), width, state)]:
                problems.append(f"SET_VRING_BASE q{q}={state:#x} wrote {wrote}")
            if width == 4:  # the slot's high half holds something else (a used idx): not part of the state
                struct.pack_into("<H", regs.block, block.field_offset(q) + 2, high >> 16)
            got = vdpa.get_vq_state(q).avail_idx
            if got != state:
                problems.append(f"GET_VRING_BASE q{q} read {got:#x} after {state:#x}")
        vdpa.reset()
        for q in range(count):  # poison: the state written at go-live must be seen replacing it
            struct.pack_into("<I", regs.block, block.field_offset(q), 0xBEEFBEEF)
        live_from = len(regs.accesses)
        front.bring_up(vdpa.get_device_features() & ~NOT_IMPLEMENTED, queues=(0, 1), size=64, state=0)
        sent = _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        table_size = vdpa.transport.msix_table_size()
        struct.pack_into("<I", regs.block, block.field_offset(1), high | 0x0102)
        running = vdpa.get_vq_state(1).avail_idx
        rings = {q: (r.desc_addr, r.avail_addr, r.used_addr) for q, r in front.rings.items()}
        doorbells = list(regs.ioeventfds)
        notify_cap = vdpa.transport.notify_cap
        notify_offs = {q: vdpa.transport.queue_notify_off(q) for q in (0, 1)}
        idents = _notify_idents(vdpa, (0, 1))
    finally:
        vdpa.close()
        front.close()
    accesses = common_accesses(regs, regs.common.bar, regs.common.offset, live_from)
    slot_writes = [(a.seq, a.offset, a.size, a.value) for a in regs.accesses[live_from:] if a.region == bar
                   and a.op == "w"]
    for q in (0, 1):
        enable = next((a.seq for a in accesses if a.op == "w" and a.rel == CommonCfg.QUEUE_ENABLE and a.queue == q
                       and a.value == 1), None)
        if enable is None:
            problems.append(f"q{q} never enabled")
            continue
        before = [a for a in accesses if a.op == "w" and a.queue == q and a.seq < enable]
        fields = {(a.rel, a.size): a.value for a in before}
        desc, drv, dev = rings[q]
        want = {(CommonCfg.QUEUE_SIZE, 2): 64,
                (CommonCfg.QUEUE_DESC, 4): desc & 0xFFFFFFFF, (CommonCfg.QUEUE_DESC + 4, 4): desc >> 32,
                (CommonCfg.QUEUE_DRIVER, 4): drv & 0xFFFFFFFF, (CommonCfg.QUEUE_DRIVER + 4, 4): drv >> 32,
                (CommonCfg.QUEUE_DEVICE, 4): dev & 0xFFFFFFFF, (CommonCfg.QUEUE_DEVICE + 4, 4): dev >> 32}
        wrong = {hex(r): (fields.get((r, w)), v) for (r, w), v in want.items() if fields.get((r, w)) != v}
        if wrong:
            problems.append(f"q{q} programmed {wrong} (written, asked)")
        for lo in (CommonCfg.QUEUE_DESC, CommonCfg.QUEUE_DRIVER, CommonCfg.QUEUE_DEVICE):
            order = [a.rel for a in before if a.rel in (lo, lo + 4)]
            if order[-2:] != [lo, lo + 4]:
                problems.append(f"q{q} {CommonCfg(lo).name} halves written in order {order}")
        vector = fields.get((CommonCfg.QUEUE_MSIX_VECTOR, 2))
        if vector is None or not (vector < table_size or vector == NO_VECTOR):
            problems.append(f"q{q} vector {vector} (table of {table_size})")
        slot = [w for w in slot_writes if w[1] == block.field_offset(q)]
        if [(s[2], s[3]) for s in slot] != [(width, 0)] or slot[0][0] > enable:
            problems.append(f"q{q} ring state writes {slot} (expected one {width}-byte 0 before enable #{enable})")
    stray = [w for w in slot_writes if w[1] not in (block.field_offset(0), block.field_offset(1))]
    if stray:
        problems.append(f"writes to other slots: {stray}")
    want_bells = sorted((notify_cap.bar, notify_cap.offset + notify_offs[q] * notify_cap.notify_off_multiplier, 2,
                         idents[q]) for q in (0, 1))
    bells_ok = sorted(doorbells) == want_bells
    head = (f"vendor block in BAR{bar} ({width}-byte state, slots {block.stride} apart): {problems[:5] or 'as asked'}; "
            f"GET_VRING_BASE of running q1 read {running:#x} (slot low half 0x102); {sent}/{len(FRAMES)} frames")
    verdict.check("PCI-DRV-18", not problems and sent == len(FRAMES), head)
    verdict.check("SPLIT-DRV-11", not problems and running == 0x0102 and sent == len(FRAMES), head)
    verdict.check("NOTIF-DRV-01", bells_ok, f"doorbells registered {doorbells}, expected {want_bells}")
    verdict.check("NOTIF-DRV-03", bells_ok, f"doorbells registered {doorbells}, expected {want_bells}")


# --- MSI-X vectors that do not stick, and the config eventfd (4.1.5.1.2) ------------------------------------


@pytest.mark.req("PCI-DRV-35")
@pytest.mark.parametrize("refused", ["config", "q0", "q1"])
def test_vdpa_driver_refuses_to_go_live_on_a_vector_that_did_not_stick(bench: Bench, verdict: Verdict,
                                                                        mem: GuestMemory, refused: str) -> None:
    """The ``refused`` event's MSI-X vector reads back NO_VECTOR after the driver maps it (the device could not
    allocate it). The driver reads it back, refuses DRIVER_OK naming the event and the rule, never enables that
    queue nor writes DRIVER_OK; after a reset a device that takes every vector goes live."""
    view = RegisterView(bench.open(), vector_refused=frozenset({refused}))
    vdpa = VirtioPciVdpaDevice(view, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    try:
        if vdpa.transport.msix_table_size() == 0:
            verdict.not_applicable("PCI-DRV-35", "the function has no MSI-X vectors to map")
            return
        outcome = refusal(lambda: front.bring_up(vdpa.get_device_features() & ~NOT_IMPLEMENTED, queues=(0, 1),
                                                  size=64))
        status = vdpa.get_status()
        refused_until = len(view.accesses)
        vdpa.reset()
        front.close()
        view.vector_refused = frozenset()
        front = VdpaFrontend(vdpa, mem)  # the memory stays mapped across the reset, as the frontend's table does
        front.negotiate(vdpa.get_device_features() & ~NOT_IMPLEMENTED)
        vdpa.set_config_call(front.config_call)
        for q in (0, 1):
            front.add_queue(q, 64)
        vdpa.set_status(vdpa.get_status() | DeviceStatus.DRIVER_OK)
        live = bool(vdpa.get_status() & DeviceStatus.DRIVER_OK) \
            and _transmit(front, FRAMES, bench.deadlines.wait(2.0)) == len(FRAMES)
    finally:
        vdpa.close()
        front.close()
    failed = [a for a in common_accesses(view, view.common.bar, view.common.offset) if a.seq < refused_until]
    read_back = any(a.op == "r" and a.rel == (CommonCfg.CONFIG_MSIX_VECTOR if refused == "config"
                                               else CommonCfg.QUEUE_MSIX_VECTOR) for a in failed)
    enabled = sorted({a.queue for a in failed if a.op == "w" and a.rel == CommonCfg.QUEUE_ENABLE})
    driver_ok = any(a.op == "w" and a.rel == CommonCfg.DEVICE_STATUS and a.value & DeviceStatus.DRIVER_OK
                    for a in failed)
    name = "config" if refused == "config" else f"virtqueue {refused[1:]}"
    queue = None if refused == "config" else int(refused[1:])
    verdict.check("PCI-DRV-35", outcome.startswith("refused: VdpaError") and "PCI-DRV-35" in outcome
                  and name in outcome and read_back and not driver_ok and queue not in enabled
                  and not status & DeviceStatus.DRIVER_OK and live,
                  f"{refused} vector reads back {NO_VECTOR:#x}: bring-up {outcome}; vector read back {read_back}; "
                  f"queues enabled {enabled}; DRIVER_OK written {driver_ok}; after a reset on a device taking "
                  f"every vector: live {live}")


@pytest.mark.req("PCI-DRV-34")
def test_vdpa_driver_binds_the_config_vector_to_the_frontends_latest_eventfd(bench: Bench, verdict: Verdict,
                                                                             mem: GuestMemory) -> None:
    """SET_CONFIG_CALL before DRIVER_OK binds nothing and programs nothing (the device is not live yet); at
    DRIVER_OK the vector mapped to config changes (read back from config_msix_vector, inside the table) is bound
    to the frontend's config eventfd; a new eventfd after DRIVER_OK replaces it at once, and none unbinds it."""
    view = RegisterView(bench.open())
    vdpa = VirtioPciVdpaDevice(view, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    other = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    steps: dict[str, str] = {}
    try:
        table = vdpa.transport.msix_table_size()
        if table == 0:
            verdict.not_applicable("PCI-DRV-34", "the function has no MSI-X vectors")
            return
        front.map_memory()
        front.negotiate(vdpa.get_device_features() & ~NOT_IMPLEMENTED)
        vdpa.set_config_call(front.config_call)
        for q in (0, 1):
            front.add_queue(q, 64)
        early_binds = list(view.irq_bindings)
        early_enables = [a for a in common_accesses(view, view.common.bar, view.common.offset)
                         if a.op == "w" and a.rel in (CommonCfg.QUEUE_ENABLE, CommonCfg.QUEUE_SIZE)]
        vdpa.set_status(vdpa.get_status() | DeviceStatus.DRIVER_OK)
        vector = vdpa.transport.config_msix_vector()

        def bound() -> int | None:
            fds = view.irq_bindings[-1][2] if view.irq_bindings else []
            return fds[vector] if vector < len(fds) else None

        steps["at DRIVER_OK"] = "frontend's" if bound() == front.config_call else f"fd {bound()}"
        vdpa.set_config_call(other)
        steps["replaced"] = "new" if bound() == other else f"fd {bound()}"
        vdpa.set_config_call(None)
        steps["dropped"] = "unbound" if bound() is None else f"fd {bound()}"
        vdpa.set_config_call(front.config_call)
        steps["handed back"] = "frontend's" if bound() == front.config_call else f"fd {bound()}"
        sent = _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        vdpa.reset()  # every vector unbound and MSI-X disabled: the seam's empty binding
        steps["after reset"] = "all unbound" if view.irq_bindings[-1] == (IrqIndex.MSIX, 0, []) \
            else f"{view.irq_bindings[-1]}"
    finally:
        vdpa.close()
        front.close()
        os.close(other)
    verdict.check("PCI-DRV-34", not early_binds and not early_enables and vector < table
                  and steps == {"at DRIVER_OK": "frontend's", "replaced": "new", "dropped": "unbound",
                                "handed back": "frontend's", "after reset": "all unbound"} and sent == len(FRAMES),
                  f"before DRIVER_OK: {len(early_binds)} vector bindings, {len(early_enables)} queue writes; config "
                  f"vector {vector} of {table}; config eventfd {steps}; {sent}/{len(FRAMES)} frames")


# --- taking the function over: ids, capabilities, reset (4.1.2.2, 4.1.4.1, 2.4) ----------------------------


@pytest.mark.req("PCI-DRV-01", "RESET-DRV-01")
def test_vdpa_driver_refuses_a_function_it_cannot_drive(bench: Bench, verdict: Verdict) -> None:
    """The vDPA driver takes a function over only when it is a virtio function it can drive, and says why not:
    another vendor or a device id outside 0x1040..0x107f and 0x1000..0x103f is refused, a function whose common
    configuration capability is missing is refused naming it, and one whose reset never reads back 0 is refused
    after the bounded wait naming the stuck status; none of them gets a status write after the refusal."""
    outcomes: dict[str, str] = {}
    accesses: dict[str, int] = {}
    headers: tuple[tuple[str, dict[int, bytes]], ...] = (
        ("vendor 0x8086", {PciCfg.VENDOR_ID: (0x8086).to_bytes(2, "little")}),
        ("device 0x1080", {PciCfg.DEVICE_ID: (0x1080).to_bytes(2, "little")}),
        ("device 0x0fff", {PciCfg.DEVICE_ID: (0x0FFF).to_bytes(2, "little")}),
        ("transitional 0x1000", {PciCfg.DEVICE_ID: (0x1000).to_bytes(2, "little")}),
        ("modern 0x1041", {}))
    for name, header in headers:
        base = bench.open()
        trace = TracingPciDevice(ConfigSpaceEditor(base, [c.entry() for c in target_caps(base)], header=header))
        outcomes[name] = refusal(lambda trace=trace: VirtioPciVdpaDevice(trace, owns_pci=False).close())
        accesses[name] = sum(1 for a in trace.accesses if a.region != RegionIndex.CONFIG and a.op == "w")
        base.close()
    base = bench.open()
    caps = [c for c in target_caps(base) if c.cfg_type != 1]  # no COMMON_CFG
    trace = TracingPciDevice(ConfigSpaceEditor(base, [c.entry() for c in caps]))
    outcomes["no common cfg"] = refusal(lambda: VirtioPciVdpaDevice(trace, owns_pci=False).close())
    accesses["no common cfg"] = sum(1 for a in trace.accesses if a.region != RegionIndex.CONFIG)
    base.close()
    stuck = CommonCfgEditor(bench.open(), status_lag=1 << 30)
    VirtioPciModern(stuck).set_status(DeviceStatus.ACKNOWLEDGE)  # a previous owner left it initialising
    trace = TracingPciDevice(stuck)
    outcomes["reset never completes"] = refusal(
        lambda: VirtioPciVdpaDevice(trace, reset_timeout=0.2, owns_pci=False).close())
    common = VirtioPciModern(stuck.inner).common
    status_writes = [a.value for a in common_accesses(trace, common.bar, common.offset)
                     if a.op == "w" and a.rel == CommonCfg.DEVICE_STATUS]
    wrong_ids = [n for n in ("vendor 0x8086", "device 0x1080", "device 0x0fff")
                 if not outcomes[n].startswith("refused: VdpaError") or "not a virtio" not in outcomes[n]
                 or accesses[n]]
    right_ids = [n for n in ("transitional 0x1000", "modern 0x1041") if outcomes[n] != "accepted"]
    no_common = outcomes["no common cfg"].startswith("refused: VdpaError") and "COMMON_CFG" in \
        outcomes["no common cfg"] and not accesses["no common cfg"]
    verdict.check("PCI-DRV-01", not wrong_ids and not right_ids and no_common,
                  f"{outcomes}; BAR writes {accesses}")
    slow = SlowReset(bench.open(), lag=1.5)
    VirtioPciModern(slow).set_status(DeviceStatus.ACKNOWLEDGE)
    outcomes["reset taking 1.5 s, bound 3 s"] = refusal(
        lambda: VirtioPciVdpaDevice(slow, reset_timeout=3.0, owns_pci=False).close())
    verdict.check("RESET-DRV-01", outcomes["reset never completes"].startswith("refused: VdpaError")
                  and "stuck" in outcomes["reset never completes"] and status_writes == [0]
                  and outcomes["reset taking 1.5 s, bound 3 s"] == "accepted" and slow.stale_reads > 0,
                  f"reset never completes: {outcomes['reset never completes']}; status writes {status_writes}; "
                  f"a reset taking 1.5 s under the driver's 3 s bound: {outcomes['reset taking 1.5 s, bound 3 s']} "
                  f"({slow.stale_reads} reads showed the old status)")


# --- a quirk record applies to its own function only ----------------------------------------------------------


@pytest.mark.req("SPLIT-DRV-11")
@pytest.mark.parametrize("ids", [
    pytest.param((0x1041, 0x8086, 0x001A), id="ifc_vf"),
    pytest.param((0x1041, 0x8087, 0x001A), id="other_subsystem_vendor"),
    pytest.param((0x1041, 0x8086, 0x001B), id="other_subsystem_device"),
    pytest.param((0x1000, 0x8086, 0x001A), id="other_device_id")])
def test_vdpa_driver_uses_a_ring_state_register_only_on_the_card_that_has_it(bench: Bench, verdict: Verdict,
                                                                            ids: tuple[int, int, int]) -> None:
    """The function presents the IFC VF's ids, or ids that differ from them in one place. Only the IFC VF's
    own get their ring state through its live-migration register (BAR4 0x20 + 4q); for any other function the
    driver has no such register, so SET_VRING_BASE of a non-zero index is refused and BAR4 is never touched."""
    base = bench.open()
    if base.region_info(IFC_VF_BAR).size:
        verdict.not_applicable("SPLIT-DRV-11", f"BAR{IFC_VF_BAR} of the function is implemented")
        return
    device, sub_vendor, sub_device = ids
    edited = ConfigSpaceEditor(base, [c.entry() for c in target_caps(base)], header={
        PciCfg.DEVICE_ID: device.to_bytes(2, "little"), PciCfg.SUBSYSTEM_VENDOR_ID: sub_vendor.to_bytes(2, "little"),
        PciCfg.SUBSYSTEM_ID: sub_device.to_bytes(2, "little")})
    regs = RingStateRegisters(edited, IFC_VF_BAR)
    vdpa = VirtioPciVdpaDevice(regs, owns_pci=False)
    try:
        outcome = refusal(lambda: vdpa.set_vq_state(1, VqState(avail_idx=5)))
        read = refusal(lambda: vdpa.get_vq_state(1))
    finally:
        vdpa.close()
    touched = [(a.op, hex(a.offset), a.value) for a in regs.accesses if a.region == IFC_VF_BAR]
    is_ifc = ids == (0x1041, *IFC_VF_SUBSYSTEM)
    want = [("w", hex(IFC_VF_RING_STATE + IFC_VF_SLOT), 5), ("r", hex(IFC_VF_RING_STATE + IFC_VF_SLOT), 5)]
    ok = (outcome == "accepted" and read == "accepted" and touched == want) if is_ifc else \
        (outcome.startswith("refused: NotSupported") and not touched)
    verdict.check("SPLIT-DRV-11", ok, f"ids 1af4:{device:04x} subsystem {sub_vendor:04x}:{sub_device:04x}: "
                                      f"SET_VRING_BASE 5 {outcome}, GET_VRING_BASE {read}; BAR{IFC_VF_BAR} accesses "
                                      f"{touched}")


# --- a function without usable MSI-X vectors (4.1.5.1.2) ------------------------------------------------------


@pytest.mark.req("PCI-DRV-34")
@pytest.mark.parametrize("msix", ["capability_unbindable", "no_capability"])
def test_vdpa_driver_maps_no_event_where_no_vector_can_be_bound(bench: Bench, verdict: Verdict,
                                                                mem: GuestMemory, msix: str) -> None:
    """The access layer binds no MSI-X vector. Queues then get NO_VECTOR (no event is mapped to a vector the
    driver cannot bind), config_msix_vector is left alone, and the queues run, the frontend polling; a frontend
    that hands over a call eventfd is told the driver cannot signal it, before DRIVER_OK is written."""
    base = bench.open()
    edited = _msix_variant(base, 0) if msix == "no_capability" else \
        ConfigSpaceEditor(base, [c.entry() for c in target_caps(base)], msix_vectors=0)
    view = RegisterView(edited)
    vdpa = VirtioPciVdpaDevice(view, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    try:
        front.map_memory()
        wanted = vdpa.get_device_features() & ~NOT_IMPLEMENTED
        front.negotiate(wanted)
        for q in (0, 1):
            front.add_queue(q, 64)
        with_call = refusal(lambda: vdpa.set_status(vdpa.get_status() | DeviceStatus.DRIVER_OK))
        refused_at = len(view.accesses)
        vdpa.reset()
        front.negotiate(wanted)
        for q in (0, 1):
            front.add_queue(q, 64)
            vdpa.set_vq_call(q, None)  # the frontend polls its used rings
        vdpa.set_status(vdpa.get_status() | DeviceStatus.DRIVER_OK)
        ring = front.rings[1]
        for f in FRAMES:
            ring.add([bytes(12) + f], [])
        front.kick(1)
        done, deadline = 0, time.monotonic() + bench.deadlines.wait(5.0)
        while done < len(FRAMES) and time.monotonic() < deadline:  # no interrupt can come: poll, bounded
            done += len(ring.used())
            os.sched_yield()
    finally:
        vdpa.close()
        front.close()
    writes = [a for a in common_accesses(view, view.common.bar, view.common.offset) if a.op == "w"]
    vectors = sorted({a.value for a in writes if a.rel == CommonCfg.QUEUE_MSIX_VECTOR and a.seq > refused_at})
    config_vector = [a.value for a in writes if a.rel == CommonCfg.CONFIG_MSIX_VECTOR]
    driver_ok_refused = [a for a in writes if a.seq < refused_at and a.rel == CommonCfg.DEVICE_STATUS
                         and a.value & DeviceStatus.DRIVER_OK]
    verdict.check("PCI-DRV-34", with_call.startswith("refused: NotSupported") and not driver_ok_refused
                  and vectors == [NO_VECTOR] and not config_vector and done >= len(FRAMES),
                  f"no bindable vector: DRIVER_OK with call eventfds {with_call}; queue vectors written {vectors}; "
                  f"config vector writes {config_vector}; {done}/{len(FRAMES)} frames completed, polled")


# --- kicks a function cannot take as ioeventfds, interrupts shared by queues --------------------------------


def _notify_idents(vdpa: VirtioPciVdpaDevice, queues: tuple[int, ...]) -> dict[int, int]:
    """What a notification must carry for each queue (4.1.5.2): the queue's index, or its
    queue_notif_config_data (read from the common configuration) once VIRTIO_F_NOTIF_CONFIG_DATA is negotiated."""
    t = vdpa.transport
    if not has(t.negotiated, F.NOTIF_CONFIG_DATA):
        return {q: q for q in queues}
    return {q: t.read_queue(q, CommonCfg.QUEUE_NOTIF_CONFIG_DATA) for q in queues}


@pytest.mark.req("NOTIF-DRV-01", "NOTIF-DRV-03")
def test_vdpa_driver_relays_kicks_as_doorbell_writes(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    """Where the function cannot take a kick eventfd as its doorbell, every kick the frontend signals becomes
    a 16-bit write of the queue index at that queue's doorbell, and the queue runs; after a reset a kick on the
    old eventfd writes nothing."""
    view = NoIoeventfd(bench.open())
    vdpa = VirtioPciVdpaDevice(view, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    n = vdpa.transport.notify_cap
    try:
        front.bring_up(vdpa.get_device_features() & ~NOT_IMPLEMENTED, queues=(0, 1), size=64)
        relayed = vdpa.kicks_relayed()
        start = len(view.accesses)
        sent = _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        offs = {q: vdpa.transport.queue_notify_off(q) for q in (0, 1)}
        idents = _notify_idents(vdpa, (1,))
        bells = [(a.offset - n.offset, a.size, a.value) for a in view.accesses[start:]
                 if a.op == "w" and a.region == n.bar and n.offset <= a.offset < n.offset + n.length]
        vdpa.reset()
        after_reset = vdpa.kicks_relayed()
        start = len(view.accesses)
        os.eventfd_write(front.kicks[1], 1)
        stray_after_reset = wait_for_access(view, start, bench.deadlines.silence(0.2))
    finally:
        vdpa.close()
        front.close()
    tx_bell = (offs[1] * n.notify_off_multiplier, 2, idents[1])
    ok = relayed and sent == len(FRAMES) and bool(bells) and all(b == tx_bell for b in bells) \
        and not after_reset and not stray_after_reset
    evidence = (f"ioeventfd refused: kicks relayed {relayed}; {sent}/{len(FRAMES)} frames; doorbell writes "
                f"{bells[:4]} (expected {tx_bell}); relayed after reset {after_reset}; a kick after reset wrote "
                f"{stray_after_reset}")
    verdict.check("NOTIF-DRV-01", ok, evidence)
    verdict.check("NOTIF-DRV-03", ok, evidence)


@pytest.mark.req("PCI-DRV-34")
def test_vdpa_driver_signals_every_sharer_of_a_vector(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    """Two MSI-X vectors: config on 0, both queues on 1. A transmit completion on vector 1 signals both queues'
    call eventfds (a spurious one is allowed, a missed one is not); once receiveq1 drops its eventfd transmitq1's
    alone is signalled, and when it is handed back both are again."""
    real = bench.open()
    if VirtioPciModern(real).msix_table_size() < 2:
        verdict.not_applicable("PCI-DRV-34", "the function has fewer than 2 MSI-X vectors")
        return
    view = RegisterView(_msix_variant(real, 2))
    vdpa = VirtioPciVdpaDevice(view, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    heard: dict[str, tuple[bool, bool]] = {}
    try:
        front.bring_up(vdpa.get_device_features() & ~NOT_IMPLEMENTED, queues=(0, 1), size=64)

        def round_of(name: str) -> None:
            for fd in front.calls.values():
                consume_eventfd(fd)
            ring = front.rings[1]
            for f in FRAMES[:2]:
                ring.add([bytes(12) + f], [])
            front.kick(1)
            tx = wait_eventfd(front.calls[1], 2.0)
            rx = wait_eventfd(front.calls[0], 0.5)
            ring.used()
            heard[name] = (tx, rx)

        round_of("shared")
        vdpa.set_vq_call(0, None)
        round_of("alone")
        vdpa.set_vq_call(0, front.calls[0])
        round_of("shared again")
    finally:
        vdpa.close()
        front.close()
    verdict.check("PCI-DRV-34", heard.get("shared") == (True, True) and heard.get("alone", (False,))[0]
                  and heard.get("alone", (True, True))[1] is False and heard.get("shared again") == (True, True),
                  f"call eventfds signalled (transmitq1, receiveq1) by transmit completions: {heard}")


# --- device configuration of a type the driver has no layout for, and empty requests (2.5) -------------------


@pytest.mark.req("CFG-DRV-02")
def test_vdpa_driver_reads_config_of_an_unknown_device_type_bytewise(bench: Bench, verdict: Verdict) -> None:
    """The function presents a virtio device id the driver has no field layout for. GET_CONFIG of any span is
    answered with the device's bytes, read one byte at a time inside a config_generation bracket; SET_CONFIG
    writes each byte as given; an empty GET_CONFIG is answered with nothing, for that type and for virtio-net."""
    base = bench.open()
    ref = VirtioPciModern(base)
    size = ref.device_config_size()
    image = b"".join(ref.read_device_config(o, 1, 1) for o in range(size))
    trace = TracingPciDevice(ConfigSpaceEditor(base, [c.entry() for c in target_caps(base)],
                                               header={PciCfg.DEVICE_ID: (0x107E).to_bytes(2, "little")}))
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    wrong: list[str] = []
    try:
        dev = vdpa.transport.device_cap
        assert dev is not None
        for off, n in ((0, size), (1, 3), (size - 2, 2), (5, 4)):
            start = len(trace.accesses)
            got = vdpa.get_config(off, n)
            reads = [(a.offset - dev.offset, a.size) for a in trace.accesses[start:] if a.region == dev.bar
                     and dev.offset <= a.offset < dev.offset + size]
            if got != image[off:off + n] or reads != [(off + i, 1) for i in range(n)]:
                wrong.append(f"GET_CONFIG {off:#x}+{n}: {got.hex()} (device {image[off:off + n].hex()}), reads {reads}")
        empty = vdpa.get_config(0, 0), vdpa.get_config(size, 0)
        start = len(trace.accesses)
        vdpa.set_config(0, image[:6])
        wrote = [(a.offset - dev.offset, a.size, a.data) for a in trace.accesses[start:] if a.op == "w"
                 and a.region == dev.bar and dev.offset <= a.offset < dev.offset + size]
        if wrote != [(i, 1, image[i:i + 1]) for i in range(6)]:
            wrong.append(f"SET_CONFIG 0+6 wrote {wrote}")
    finally:
        vdpa.close()
    net = VirtioPciVdpaDevice(base, owns_pci=False)
    try:
        net_empty = net.get_config(0, 0), net.get_config(size, 0)
    finally:
        net.close()
    verdict.check("CFG-DRV-02", not wrong and empty == (b"", b"") and net_empty == (b"", b""),
                  f"device id 0x107e, {size}-byte config: {wrong[:4] or 'answered bytewise'}; empty requests "
                  f"answered {empty} (virtio-net {net_empty})")


# --- guest memory a frontend maps (2.2.1: VIRTIO_F_ACCESS_PLATFORM) -----------------------------------------


@pytest.mark.req("FEAT-DRV-11")
def test_vdpa_driver_maps_exactly_the_memory_the_frontend_names(bench: Bench, verdict: Verdict,
                                                                 mem: GuestMemory) -> None:
    """Each SET_MEM_TABLE region reaches the function's IOMMU as one map of that IOVA, size and permission; a
    map overlapping one in place and an unmap that would split a mapping are refused (the access layer's
    error, passed on); after the whole unmap the range is free again and the queues run on the frontend's own
    table."""
    trace = TracingPciDevice(bench.open())
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    region = mem.regions[0]
    outcomes: dict[str, str] = {}
    try:
        half = region.size // 2
        outcomes["map first half"] = refusal(lambda: vdpa.dma_map(region.gpa, half, region.fd, 0, DmaPerm.READ))
        outcomes["overlapping map"] = refusal(
            lambda: vdpa.dma_map(region.gpa + half - 4096, 8192, region.fd, half - 4096, DmaPerm.RW))
        outcomes["unmap splitting it"] = refusal(lambda: vdpa.dma_unmap(region.gpa, 4096))
        outcomes["unmap"] = refusal(lambda: vdpa.dma_unmap(region.gpa, half))
        maps = list(trace.dma_maps)
        front.bring_up(vdpa.get_device_features() & ~NOT_IMPLEMENTED, queues=(0, 1), size=64)
        sent = _transmit(front, FRAMES, bench.deadlines.wait(2.0))
        after = trace.dma_maps[len(maps):]
    finally:
        vdpa.close()
        front.close()
    want = {"map first half": "accepted", "unmap": "accepted"}
    ok = all(outcomes[k] == v for k, v in want.items()) \
        and all(outcomes[k].startswith("refused: VdpaError") for k in ("overlapping map", "unmap splitting it")) \
        and maps[0] == (region.gpa, half, DmaPerm.READ) \
        and after == [(r.gpa, r.size, DmaPerm.RW) for r in mem.regions] and sent == len(FRAMES)
    verdict.check("FEAT-DRV-11", ok, f"{outcomes}; IOMMU maps {maps}, then the frontend's table {after}; "
                                     f"{sent}/{len(FRAMES)} frames")
