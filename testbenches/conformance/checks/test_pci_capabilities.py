"""PCI discovery and capability layout (4.1.1-4.1.4): properties of config space and the virtio caps."""

from __future__ import annotations

import pytest

from backend.pci.device import PciDevice, RegionIndex, config_read, read_int, write_int
from backend.virtio.features import F, has
from backend.virtio.pci_regs import (
    MSIX_CONTROL_TABLE_SIZE_MASK,
    NOTIFY_OFF_MULTIPLIER,
    PCI_CAP_ID_MSIX,
    PCI_CAP_ID_VNDR,
    VENDOR_DATA_CAP_HDR_LEN,
    VENDOR_DATA_CAP_VENDOR_ID,
    VIRTIO_PCI_DEVICE_ID_BASE,
    VIRTIO_PCI_VENDOR_ID,
    CapType,
    CommonCfg,
    PciCfg,
    RawCapability,
    VirtioPciCap,
    walk_capabilities,
)
from testbenches.conformance.harness import Bench
from testbenches.conformance.plugin import Verdict

#: Defined sizes of each capability structure (struct virtio_pci_cap + extra fields).
CAP_MIN_LEN = {CapType.COMMON_CFG: 16, CapType.NOTIFY_CFG: 20, CapType.ISR_CFG: 16, CapType.DEVICE_CFG: 16,
               CapType.PCI_CFG: 20, CapType.SHARED_MEMORY_CFG: 24, CapType.VENDOR_CFG: VENDOR_DATA_CAP_HDR_LEN}


def _caps(dev: PciDevice) -> list[RawCapability]:
    return walk_capabilities(lambda off, n: dev.region_read(RegionIndex.CONFIG, off, n))


def _virtio_caps(dev: PciDevice) -> list[tuple[RawCapability, VirtioPciCap]]:
    out = []
    for c in _caps(dev):
        v = c.virtio
        if v is not None:
            out.append((c, v))
    return out


def _first(dev: PciDevice, cfg_type: int) -> tuple[RawCapability, VirtioPciCap] | None:
    return next(((c, v) for c, v in _virtio_caps(dev) if v.cfg_type == cfg_type), None)


def _offered_features(dev: PciDevice) -> int:
    found = _first(dev, CapType.COMMON_CFG)
    assert found is not None, "no common configuration capability"
    _, common = found
    features = 0
    for sel in range(4):
        write_int(dev, common.bar, common.offset + CommonCfg.DEVICE_FEATURE_SELECT, 4, sel)
        features |= read_int(dev, common.bar, common.offset + CommonCfg.DEVICE_FEATURE, 4) << (32 * sel)
    return features


@pytest.mark.req("PCI-DEV-02", "PCI-DEV-03", "PCI-DEV-05", "PCI-DEV-06", "PCI-DEV-07")
def test_pci_identity(bench: Bench, verdict: Verdict) -> None:
    dev = bench.open()
    vendor = config_read(dev, PciCfg.VENDOR_ID, 2)
    device = config_read(dev, PciCfg.DEVICE_ID, 2)
    revision = config_read(dev, PciCfg.REVISION_ID, 1)
    subsys = config_read(dev, PciCfg.SUBSYSTEM_ID, 2)
    verdict.check("PCI-DEV-02", vendor == VIRTIO_PCI_VENDOR_ID, f"vendor id {vendor:#06x}")
    verdict.check("PCI-DEV-03", device in (VIRTIO_PCI_DEVICE_ID_BASE + 1, 0x1000),
            f"device id {device:#06x} is neither 0x1041 nor transitional 0x1000")
    transitional = device == 0x1000
    if transitional:
        verdict.not_applicable("PCI-DEV-05", "transitional device")
        verdict.not_applicable("PCI-DEV-06", "transitional device")
        verdict.not_applicable("PCI-DEV-07", "transitional device")
        return
    verdict.check("PCI-DEV-05", 0x1040 <= device <= 0x107F, f"device id {device:#06x}")
    verdict.check("PCI-DEV-06", revision >= 1, f"revision id {revision}")
    verdict.check("PCI-DEV-07", subsys >= 0x40, f"subsystem id {subsys:#06x}")


@pytest.mark.req("PCI-DEV-09", "PCI-DEV-12", "PCI-DEV-13", "PCI-DEV-28", "PCI-DEV-37", "PCI-DEV-B01", "PCI-DEV-42",
                 "PCI-DEV-50")
def test_virtio_capabilities_present_and_well_formed(bench: Bench, verdict: Verdict) -> None:
    dev = bench.open()
    caps = _virtio_caps(dev)
    by_type: dict[int, list[VirtioPciCap]] = {}
    for _raw, cap in caps:
        by_type.setdefault(cap.cfg_type, []).append(cap)
    for raw in _caps(dev):
        if raw.cfg_type is None:
            continue
        known = raw.cfg_type in CapType._value2member_map_
        need = CAP_MIN_LEN.get(CapType(raw.cfg_type), 16) if known else 16
        verdict.check("PCI-DEV-09", raw.data[2] >= need,
                      f"cap at {raw.offset:#x} (cfg_type {raw.cfg_type}) has cap_len {raw.data[2]} < {need}")
    common = by_type.get(CapType.COMMON_CFG, [])
    verdict.check("PCI-DEV-13", bool(common), "no VIRTIO_PCI_CAP_COMMON_CFG capability")
    for c in common:
        verdict.check("PCI-DEV-12", c.offset % 4 == 0, f"common cfg offset {c.offset:#x} not 4-byte aligned")
    verdict.check("PCI-DEV-28", bool(by_type.get(CapType.NOTIFY_CFG)), "no VIRTIO_PCI_CAP_NOTIFY_CFG capability")
    verdict.check("PCI-DEV-37", bool(by_type.get(CapType.ISR_CFG)), "no VIRTIO_PCI_CAP_ISR_CFG capability")
    devcfg = by_type.get(CapType.DEVICE_CFG, [])
    verdict.check("PCI-DEV-B01", bool(devcfg), "no VIRTIO_PCI_CAP_DEVICE_CFG capability (net has device config)")
    for c in devcfg:
        verdict.check("PCI-DEV-42", c.offset % 4 == 0, f"device cfg offset {c.offset:#x} not 4-byte aligned")
    verdict.check("PCI-DEV-50", bool(by_type.get(CapType.PCI_CFG)), "no VIRTIO_PCI_CAP_PCI_CFG capability")


@pytest.mark.req("PCI-DEV-29", "PCI-DEV-30", "PCI-DEV-31", "PCI-DEV-32", "PCI-DEV-33", "PCI-DEV-34", "PCI-DEV-35",
                 "PCI-DEV-36")
def test_notify_capability_geometry(bench: Bench, verdict: Verdict) -> None:
    dev = bench.open()
    found = _first(dev, CapType.NOTIFY_CFG)
    assert found is not None, "no notify capability"
    raw, notify = found
    mult = int.from_bytes(raw.data[NOTIFY_OFF_MULTIPLIER:NOTIFY_OFF_MULTIPLIER + 4], "little")
    common_found = _first(dev, CapType.COMMON_CFG)
    assert common_found is not None
    _, common = common_found
    num_queues = read_int(dev, common.bar, common.offset + CommonCfg.NUM_QUEUES, 2)
    offs = []
    for q in range(num_queues):
        write_int(dev, common.bar, common.offset + CommonCfg.QUEUE_SELECT, 2, q)
        offs.append(read_int(dev, common.bar, common.offset + CommonCfg.QUEUE_NOTIFY_OFF, 2))
    data = has(_offered_features(dev), F.NOTIFICATION_DATA)
    width = 4 if data else 2
    ids = ("PCI-DEV-34", "PCI-DEV-33", "PCI-DEV-35", "PCI-DEV-36") if data else (
        "PCI-DEV-29", "PCI-DEV-30", "PCI-DEV-31", "PCI-DEV-32")
    skipped = ("PCI-DEV-29", "PCI-DEV-30", "PCI-DEV-31", "PCI-DEV-32") if data else (
        "PCI-DEV-33", "PCI-DEV-34", "PCI-DEV-35", "PCI-DEV-36")
    for rid in skipped:
        verdict.not_applicable(rid, f"VIRTIO_F_NOTIFICATION_DATA {'is' if data else 'is not'} offered")
    align_id, mult_id, len_id, per_queue_id = ids
    verdict.check(align_id, notify.offset % width == 0, f"notify cap offset {notify.offset:#x} not {width}-aligned")
    if data:
        good_mult = mult == 0 or (mult & (mult - 1) == 0 and mult % 4 == 0)
    else:
        good_mult = mult == 0 or (mult & (mult - 1) == 0 and mult % 2 == 0)
    verdict.check(mult_id, good_mult, f"notify_off_multiplier {mult}")
    verdict.check(len_id, notify.length >= width, f"notify cap length {notify.length} < {width}")
    for q, off in enumerate(offs):
        verdict.check(per_queue_id, notify.length >= off * mult + width,
                      f"queue {q}: queue_notify_off {off} * {mult} + {width} > cap.length {notify.length}")
        verdict.check(len_id, notify.length >= off * mult + width,
                      f"queue {q}'s doorbell lies outside the notification structure")
    bar_size = dev.region_info(notify.bar).size
    verdict.check(len_id, notify.offset + notify.length <= bar_size,
                  f"notify structure [{notify.offset:#x}, +{notify.length:#x}) exceeds BAR{notify.bar} ({bar_size:#x})")


@pytest.mark.req("PCI-DEV-43", "PCI-DEV-44")
def test_shared_memory_capabilities(bench: Bench, verdict: Verdict) -> None:
    dev = bench.open()
    shm = [(raw, cap) for raw, cap in _virtio_caps(dev) if cap.cfg_type == CapType.SHARED_MEMORY_CFG]
    if not shm:
        verdict.not_applicable("PCI-DEV-43", "no shared memory capability")
        verdict.not_applicable("PCI-DEV-44", "no shared memory capability")
        return
    ids: list[int] = []
    for raw, cap in shm:
        hi = raw.data[16:24]
        offset = cap.offset | int.from_bytes(hi[0:4], "little") << 32
        length = cap.length | int.from_bytes(hi[4:8], "little") << 32
        size = dev.region_info(cap.bar).size
        verdict.check("PCI-DEV-43", offset + length <= size,
                      f"shm id {cap.id}: [{offset:#x}, +{length:#x}) outside BAR{cap.bar} of {size:#x}")
        ids.append(cap.id)
    verdict.check("PCI-DEV-44", len(ids) == len(set(ids)), f"shared memory ids {ids} repeat")


@pytest.mark.req("PCI-DEV-47", "PCI-DEV-48", "PCI-DEV-49")
def test_vendor_data_capabilities(bench: Bench, verdict: Verdict) -> None:
    dev = bench.open()
    vendor = [raw for raw in _caps(dev) if raw.cfg_type == CapType.VENDOR_CFG]
    if not vendor:
        for rid in ("PCI-DEV-47", "PCI-DEV-48", "PCI-DEV-49"):
            verdict.not_applicable(rid, "no vendor data capability")
        return
    status_before = config_read(dev, PciCfg.STATUS, 2)
    for raw in vendor:
        cap_len = raw.data[2]
        vid = int.from_bytes(raw.data[VENDOR_DATA_CAP_VENDOR_ID:VENDOR_DATA_CAP_VENDOR_ID + 2], "little")
        verdict.check("PCI-DEV-47", vid != VIRTIO_PCI_VENDOR_ID, f"vendor data cap at {raw.offset:#x} uses 0x1AF4")
        verdict.check("PCI-DEV-48", cap_len % 4 == 0, f"vendor data cap_len {cap_len} not a multiple of 4")
        # Reading the capability twice gives the same bytes and leaves the rest of config space alone.
        first = dev.region_read(RegionIndex.CONFIG, raw.offset, cap_len)
        second = dev.region_read(RegionIndex.CONFIG, raw.offset, cap_len)
        verdict.check("PCI-DEV-49", first == second, f"vendor data cap at {raw.offset:#x} changed when read")
    verdict.check("PCI-DEV-49", config_read(dev, PciCfg.STATUS, 2) == status_before,
                  "PCI status changed by reading the vendor data capability")


@pytest.mark.req("PCI-DEV-53", "PCI-DEV-54")
def test_msix_table_size(bench: Bench, verdict: Verdict) -> None:
    dev = bench.open()
    msix = next((c for c in _caps(dev) if c.cap_id == PCI_CAP_ID_MSIX), None)
    if msix is None:
        verdict.not_applicable("PCI-DEV-53", "no MSI-X capability")
        verdict.not_applicable("PCI-DEV-54", "no MSI-X capability")
        return
    control = int.from_bytes(msix.data[2:4], "little")
    size = (control & MSIX_CONTROL_TABLE_SIZE_MASK) + 1
    verdict.check("PCI-DEV-53", 2 <= size <= 0x800, f"MSI-X table size {size}")
    table = int.from_bytes(msix.data[4:8], "little")
    bir, offset = table & 7, table & ~7
    bar_size = dev.region_info(bir).size
    verdict.check("PCI-DEV-54", offset + 16 * size <= bar_size and dev.irq_count(2) in (0, size),
                  f"table of {size} entries at BAR{bir}+{offset:#x} vs BAR size {bar_size:#x}, "
                  f"irq count {dev.irq_count(2)}")


def test_capability_list_is_sane(bench: Bench) -> None:
    """Not a requirement row: the list terminates and every vendor cap names an existing BAR."""
    dev = bench.open()
    for raw in _caps(dev):
        if raw.cap_id == PCI_CAP_ID_VNDR and raw.virtio is not None and raw.virtio.cfg_type != CapType.PCI_CFG:
            assert dev.region_info(raw.virtio.bar).size > 0, f"cap at {raw.offset:#x} names empty BAR"
