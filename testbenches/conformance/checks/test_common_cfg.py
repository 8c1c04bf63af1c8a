"""Common configuration structure (4.1.4.3): feature windows, status, reset, queues, vectors, PCI_CFG window."""

from __future__ import annotations

import pytest

from backend.pci.device import RegionIndex
from backend.virtio.features import DEFINED_NET_PCI, DeviceStatus, F, has
from backend.virtio.pci_regs import NO_VECTOR, PCI_CFG_DATA, CommonCfg
from testbenches.conformance.harness import Bench, acknowledge, negotiate
from testbenches.conformance.plugin import Verdict


@pytest.mark.req("PCI-DEV-08")
def test_64bit_fields_take_independent_halves(bench: Bench, verdict: Verdict) -> None:
    """Each 64-bit queue address field, for every queue: halves written in either order and one half alone,
    each half read back alone (32-bit accesses at +0 and +4)."""
    t = bench.transport()
    acknowledge(t)
    common = t.common

    def half(fld: CommonCfg, upper: bool) -> int:
        return int.from_bytes(t.pci.region_read(common.bar, common.offset + fld + 4 * upper, 4), "little")

    def write(fld: CommonCfg, upper: bool, value: int) -> None:
        t.pci.region_write(common.bar, common.offset + fld + 4 * upper, value.to_bytes(4, "little"))

    for q in range(t.num_queues()):
        t.select_queue(q)
        for fld in (CommonCfg.QUEUE_DESC, CommonCfg.QUEUE_DRIVER, CommonCfg.QUEUE_DEVICE):
            seen: list[tuple[str, int, int, int, int]] = []  # step, low, high read, low, high expected
            for first_upper in (True, False):
                lo, hi = (0x9ABC_DEF0, 0x1234_5678) if first_upper else (0x1357_9BD0, 0x0246_8ACE)
                write(fld, first_upper, hi if first_upper else lo)
                write(fld, not first_upper, lo if first_upper else hi)
                seen.append((f"{'high' if first_upper else 'low'} half first", half(fld, False), half(fld, True),
                             lo, hi))
            write(fld, True, 0x1)  # only the high half again: the low half stays
            seen.append(("high half alone", half(fld, False), half(fld, True), 0x1357_9BD0, 0x1))
            write(fld, False, 0xFFFF_FFF0)  # only the low half again: the high half stays
            seen.append(("low half alone", half(fld, False), half(fld, True), 0xFFFF_FFF0, 0x1))
            whole = t.read_common(fld)
            bad = [s for s in seen if s[1:3] != s[3:5]]
            verdict.check("PCI-DEV-08", not bad and whole == 0x1_FFFF_FFF0,
                          f"queue {q} {fld.name}: " + "; ".join(
                              f"{step}: read {lo_r:#x}/{hi_r:#x}, wrote {lo_w:#x}/{hi_w:#x}"
                              for step, lo_r, hi_r, lo_w, hi_w in bad) + f"; 64-bit value {whole:#x}")


@pytest.mark.req("PCI-DEV-14", "FEAT-DEV-04")
def test_device_feature_windows(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    windows = []
    for sel in range(8):
        t.write_common(CommonCfg.DEVICE_FEATURE_SELECT, sel)
        windows.append(t.read_common(CommonCfg.DEVICE_FEATURE))
        again = t.read_common(CommonCfg.DEVICE_FEATURE)
        verdict.check("PCI-DEV-14", again == windows[-1], f"window {sel} read {windows[-1]:#x} then {again:#x}")
    offered = sum(w << (32 * i) for i, w in enumerate(windows))
    for sel in range(3, 8):  # no feature bit beyond 95 is defined in this spec version
        verdict.check("PCI-DEV-14", windows[sel] == 0, f"device_feature_select={sel} reads {windows[sel]:#x}")
    t.write_common(CommonCfg.DEVICE_FEATURE_SELECT, 0xFFFFFFFF)
    verdict.check("PCI-DEV-14", t.read_common(CommonCfg.DEVICE_FEATURE) == 0, "select 0xffffffff reads non-zero")
    verdict.check("FEAT-DEV-04", offered & ~DEFINED_NET_PCI == 0,
                  f"offers undefined or reserved bits {offered & ~DEFINED_NET_PCI:#x}")


@pytest.mark.req("PCI-DEV-15")
def test_driver_feature_reads_back(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    acknowledge(t)
    offered = t.device_features()
    t.write_driver_features(offered)
    back = t.driver_features()
    verdict.check("PCI-DEV-15", back & offered == offered, f"wrote {offered:#x}, read back {back:#x}")
    t.write_driver_features(1 << F.VERSION_1)
    back = t.driver_features()
    verdict.check("PCI-DEV-15", back & offered == 1 << F.VERSION_1, f"wrote VERSION_1 only, read back {back:#x}")


@pytest.mark.req("PCI-DEV-18", "RESET-DEV-01", "PCI-DEV-19", "PCI-DEV-59")
def test_reset_returns_everything_to_defaults(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    offered = t.device_features()
    assert negotiate(t, offered & ~(1 << F.RING_PACKED)), "FEATURES_OK did not stick for the offered set"
    nq = t.num_queues()
    table = t.msix_table_size()
    if table:
        t.set_config_msix_vector(0)
    for q in range(nq):
        t.set_queue_addresses(q, 0x10000, 0x20000, 0x30000)
        if table:
            t.set_queue_msix_vector(q, min(q + 1, table - 1))
        t.enable_queue(q)
    t.add_status(DeviceStatus.DRIVER_OK)
    t.set_status(0)
    status = t.wait_status(lambda s: s == 0)
    verdict.check("PCI-DEV-18", status == 0, f"device_status reads {status:#x} after writing 0")
    verdict.check("RESET-DEV-01", status == 0, f"device_status reads {status:#x} after a reset request")
    for q in range(nq):
        verdict.check("PCI-DEV-19", not t.queue_enabled(q), f"queue {q} still enabled after reset")
        if table:
            vec = t.queue_msix_vector(q)
            verdict.check("PCI-DEV-59", vec == NO_VECTOR, f"queue {q} still mapped to vector {vec} after reset")
    if table:
        vec = t.config_msix_vector()
        verdict.check("PCI-DEV-59", vec == NO_VECTOR, f"config still mapped to vector {vec} after reset")
    else:
        verdict.not_applicable("PCI-DEV-59", "no MSI-X")


@pytest.mark.req("PCI-DEV-25", "PCI-DEV-26")
def test_queue_size(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    # The rule holds while RING_PACKED is not negotiated: offered or not, the sizes are read after FEATURES_OK
    # without it (a device offering packed rings still owes split rings a power of two).
    assert negotiate(t, t.device_features() & ~(1 << F.RING_PACKED)), "FEATURES_OK did not stick without packed"
    nq = t.num_queues()
    for q in range(nq):
        size = t.queue_size(q)
        verdict.check("PCI-DEV-26", size == 0 or size & (size - 1) == 0,
                      f"queue {q}: queue_size {size} is not a power of two (RING_PACKED not negotiated)")
    for q in (nq, nq + 1, nq + 17, 0x7FFF, 0xFFFF):
        size = t.queue_size(q)
        verdict.check("PCI-DEV-25", size == 0, f"queue_select={q} (num_queues={nq}) reads queue_size {size}")


@pytest.mark.req("PCI-DEV-27")
def test_admin_queue_fields(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    if not has(t.device_features(), F.ADMIN_VQ):
        verdict.not_offered("PCI-DEV-27", "VIRTIO_F_ADMIN_VQ not offered")
        return
    index = t.read_common(CommonCfg.ADMIN_QUEUE_INDEX)
    num = t.read_common(CommonCfg.ADMIN_QUEUE_NUM)
    verdict.check("PCI-DEV-27", index >= t.num_queues() and num <= 0x10000 - index,
                  f"admin_queue_index {index}, admin_queue_num {num}, num_queues {t.num_queues()}")


@pytest.mark.req("PCI-DEV-51", "PCI-DEV-52")
def test_pci_cfg_access_window(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    if t.pci_cfg_cap is None:
        pytest.fail("no PCI_CFG capability (PCI-DEV-50 reports it)")
    common = t.common
    direct = t.num_queues()
    via = t.pci_cfg_read(common.bar, common.offset + CommonCfg.NUM_QUEUES, 2)
    verdict.check("PCI-DEV-52", via == direct, f"num_queues via pci_cfg_data {via}, direct {direct}")
    t.pci_cfg_write(common.bar, common.offset + CommonCfg.QUEUE_SELECT, 2, 1)
    sel = t.read_common(CommonCfg.QUEUE_SELECT)
    verdict.check("PCI-DEV-51", sel == 1, f"queue_select written through the window reads {sel}")
    t.pci_cfg_write(common.bar, common.offset + CommonCfg.DEVICE_FEATURE_SELECT, 4, 0)
    feat = t.pci_cfg_read(common.bar, common.offset + CommonCfg.DEVICE_FEATURE, 4)
    t.write_common(CommonCfg.DEVICE_FEATURE_SELECT, 0)
    verdict.check("PCI-DEV-52", feat == t.read_common(CommonCfg.DEVICE_FEATURE),
                  "32-bit device_feature read through the window differs")
    status = t.pci_cfg_read(common.bar, common.offset + CommonCfg.DEVICE_STATUS, 1)
    verdict.check("PCI-DEV-52", status == t.status(), "8-bit device_status read through the window differs")
    # Only a write of pci_cfg_data is forwarded: moving the window (bar, offset, length) and reading through it
    # write nothing, though pci_cfg_data still holds what was last written.
    t.pci_cfg_write(common.bar, common.offset + CommonCfg.QUEUE_SELECT, 2, 1)
    t.write_common(CommonCfg.QUEUE_SELECT, 0)
    before = t.pci.region_read(common.bar, common.offset, common.length)
    for field, width in ((CommonCfg.DEVICE_STATUS, 1), (CommonCfg.NUM_QUEUES, 2), (CommonCfg.QUEUE_SELECT, 2),
                         (CommonCfg.DEVICE_FEATURE_SELECT, 4)):
        t.pci_cfg_read(common.bar, common.offset + field, width)
    after = t.pci.region_read(common.bar, common.offset, common.length)
    moved = [hex(o) for o in range(common.length) if before[o] != after[o]]
    verdict.check("PCI-DEV-51", not moved, f"moving the window and reading through it changed common config bytes "
                                           f"{moved} (only a write of pci_cfg_data goes to the BAR)")
    # A read of pci_cfg_data is one whatever access covers it: here the whole capability, from its start and from
    # cap_len on, each after queue_select changed behind the window's back.
    cap = t.pci_cfg_cap
    t.pci_cfg_read(common.bar, common.offset + CommonCfg.QUEUE_SELECT, 2)
    for start in (cap.cap_offset, cap.cap_offset + 2):
        want = 1 if start == cap.cap_offset else 0
        t.write_common(CommonCfg.QUEUE_SELECT, want)
        raw = t.pci.region_read(RegionIndex.CONFIG, start, cap.cap_offset + PCI_CFG_DATA + 2 - start)
        got = int.from_bytes(raw[-2:], "little")
        verdict.check("PCI-DEV-52", got == want,
                      f"a {len(raw)}-byte config read from {start:#x} covering pci_cfg_data returned queue_select "
                      f"{got} (it reads {want})")


@pytest.mark.req("PCI-DEV-56", "PCI-DEV-57", "PCI-DEV-58", "PCI-DEV-60", "PCI-DEV-61")
def test_msix_vector_mapping(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    table = t.msix_table_size()
    if not table:
        for rid in ("PCI-DEV-56", "PCI-DEV-57", "PCI-DEV-58", "PCI-DEV-60", "PCI-DEV-61"):
            verdict.not_applicable(rid, "no MSI-X capability")
        return
    assert negotiate(t, t.device_features() & ~(1 << F.RING_PACKED))
    verdict.check("PCI-DEV-58", t.config_msix_vector() == NO_VECTOR, "config vector mapped before any mapping")
    for vector in range(table):
        got = t.set_config_msix_vector(vector)
        verdict.check("PCI-DEV-56", got == vector, f"config event mapped to {vector} reads {got}")
        verdict.check("PCI-DEV-60", got == vector, f"in-range vector {vector} refused for config")
        for q in range(t.num_queues()):
            got = t.set_queue_msix_vector(q, vector)
            verdict.check("PCI-DEV-56", got == vector, f"queue {q} mapped to {vector} reads {got}")
            verdict.check("PCI-DEV-58", t.queue_msix_vector(q) == vector, f"queue {q} vector not returned")
    got = t.set_config_msix_vector(NO_VECTOR)
    verdict.check("PCI-DEV-57", got == NO_VECTOR, f"unmapping config reads {got}")
    for q in range(t.num_queues()):
        got = t.set_queue_msix_vector(q, NO_VECTOR)
        verdict.check("PCI-DEV-57", got == NO_VECTOR, f"unmapping queue {q} reads {got}")
        verdict.check("PCI-DEV-58", t.queue_msix_vector(q) == NO_VECTOR, f"queue {q}: NO_VECTOR not returned")
    for bad in (table, table + 7, 0x7FF):
        if bad >= table:
            got = t.set_config_msix_vector(bad)
            verdict.check("PCI-DEV-61", got == NO_VECTOR, f"config mapped to out-of-range {bad} reads {got}")
            got = t.set_queue_msix_vector(0, bad)
            verdict.check("PCI-DEV-61", got == NO_VECTOR, f"queue 0 mapped to out-of-range {bad} reads {got}")
