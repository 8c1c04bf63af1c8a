"""The legacy PCI interface (4.1.2.3, 4.1.4.10, 4.1.4.11, 4.1.5.1.1.1): which device and driver the PCILEG rows bind,
proven from what the function presents, and the non-transitional drivers' refusal of a function without virtio
capabilities.

The rows bind *transitional* devices (Device ID 0x1000..0x103f, a legacy register block in an I/O BAR0) and
*transitional* drivers. A function with a modern Device ID (0x1040 + device type) is non-transitional: those rows
are not applicable to it, and the evidence names the ids read. A transitional function is judged on what its
configuration header must say (PCILEG-DEV-01, -06); its legacy register block itself (PCILEG-DEV-02..04) is not
exercised by this bench, so those rows stay not covered there rather than pass unseen.

The bench's drivers (the product's vDPA driver and the guest driver) are non-transitional: shown a function whose
capability list carries no virtio structure they must refuse it cleanly, without a register write
(PCILEG-DRV-03). That refusal is also what makes the transitional-driver rows (PCILEG-DRV-01, -02) not applicable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.pci.device import PciDevice, RegionIndex, config_read
from backend.virtio.pci_regs import PCI_CAP_ID_VNDR, VIRTIO_PCI_DEVICE_ID_BASE, PciCfg
from sim.memory import GuestMemory
from testbenches.conformance.checks.test_driver_discovery import Run, run_guest, run_vdpa
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.monitor import TracingPciDevice
from testbenches.monitor.config_proxy import ConfigSpaceEditor, target_caps

#: Transitional PCI Device IDs and the virtio device type each stands for (4.1.2.3).
TRANSITIONAL_IDS = {0x1000: 1, 0x1001: 2, 0x1002: 5, 0x1003: 3, 0x1004: 8, 0x1005: 4, 0x1009: 9}
TRANSITIONAL_RANGE = range(0x1000, 0x1040)
MODERN_RANGE = range(VIRTIO_PCI_DEVICE_ID_BASE, 0x1080)
PCI_BASE_ADDRESS_SPACE_IO = 0x1
TRANSITIONAL_DEVICE_ROWS = ("PCILEG-DEV-01", "PCILEG-DEV-02", "PCILEG-DEV-03", "PCILEG-DEV-04", "PCILEG-DEV-06")
TRANSITIONAL_DRIVER_ROWS = ("PCILEG-DRV-01", "PCILEG-DRV-02")
MEM = 8 << 20


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


def _header(dev: PciDevice) -> dict[str, int]:
    return {"device_id": config_read(dev, PciCfg.DEVICE_ID, 2), "revision": config_read(dev, PciCfg.REVISION_ID, 1),
            "subsystem_id": config_read(dev, PciCfg.SUBSYSTEM_ID, 2), "bar0": config_read(dev, PciCfg.BAR0, 4)}


def judge_legacy_device_rows(verdict: Verdict, h: dict[str, int]) -> None:
    """The PCILEG device rows on the configuration header ``h`` (:func:`_header`)."""
    ids = (f"Device ID {h['device_id']:#06x}, Revision ID {h['revision']:#04x}, Subsystem ID {h['subsystem_id']:#06x}, "
           f"BAR0 {h['bar0']:#010x}")
    if h["device_id"] in MODERN_RANGE:
        for rid in TRANSITIONAL_DEVICE_ROWS:
            verdict.not_applicable(rid, f"{ids}: a non-transitional (modern) virtio id; the row binds transitional "
                                        "devices (Device ID 0x1000..0x103f)")
        verdict.not_applicable("PCILEG-DEV-05", f"{ids}: no legacy driver binds a modern virtio id (legacy drivers "
                                                "know 0x1000..0x103f only), so no platform has a known legacy driver "
                                                "for these ids")
        return
    if h["device_id"] not in TRANSITIONAL_RANGE:
        for rid in (*TRANSITIONAL_DEVICE_ROWS, "PCILEG-DEV-05"):
            verdict.check(rid, False, f"{ids}: neither a transitional (0x1000..0x103f) nor a modern "
                                      "(0x1040..0x107f) virtio Device ID")
        return
    want_type = TRANSITIONAL_IDS.get(h["device_id"])
    verdict.check("PCILEG-DEV-01", h["revision"] == 0 and want_type is not None
                  and h["subsystem_id"] == want_type,
                  f"transitional function: {ids}; Revision ID must be 0 and the Subsystem ID the virtio device type "
                  f"{want_type if want_type is not None else '(none: the Device ID names no transitional device)'}")
    verdict.check("PCILEG-DEV-06", bool(h["bar0"] & PCI_BASE_ADDRESS_SPACE_IO),
                  f"transitional function: {ids}; BAR0 must be an I/O BAR (bit 0 set) for the legacy register block")
    verdict.not_applicable("PCILEG-DEV-05", f"{ids}: a transitional function; the row binds non-transitional ones")


@pytest.mark.req(*TRANSITIONAL_DEVICE_ROWS, "PCILEG-DEV-05")
def test_legacy_rows_bind_what_the_function_is(bench: Bench, verdict: Verdict) -> None:
    """PCILEG device rows: the function's Device ID decides whether they bind; a transitional one is judged on its
    header."""
    dev = bench.open()
    judge_legacy_device_rows(verdict, _header(dev))


def _without_virtio_caps(real: PciDevice) -> ConfigSpaceEditor:
    """The function with every virtio vendor capability unlinked (MSI-X kept): what a legacy-only device shows."""
    return ConfigSpaceEditor(real, [c.entry() for c in target_caps(real) if c.cap_id != PCI_CAP_ID_VNDR])


@pytest.mark.req("PCILEG-DRV-03", *TRANSITIONAL_DRIVER_ROWS)
def test_drivers_refuse_a_function_without_virtio_capabilities(bench: Bench, verdict: Verdict,
                                                               mem: GuestMemory) -> None:
    """A non-transitional driver shown a function whose capability list has no virtio structure assumes a legacy
    device and fails gracefully: it does not bind, says why, and writes no register of the function."""
    looped = bench.wire().looped
    refused_all = True
    for name, runner in (("guest driver", run_guest), ("vDPA driver", run_vdpa)):
        real = bench.open()
        try:
            trace = TracingPciDevice(_without_virtio_caps(real))
            run: Run = runner(trace, mem, looped, bench.deadlines)
            writes = [(a.region, hex(a.offset)) for a in trace.accesses
                      if a.op == "w" and a.region != RegionIndex.CONFIG]
            refused = not run.bound and not writes and "capabilit" in run.note.lower()
            refused_all = refused_all and refused
            verdict.check("PCILEG-DRV-03", refused,
                          f"{name} on the function with its virtio capabilities unlinked: {run}; BAR writes "
                          f"{writes[:4]} (expected: no bind, a reason naming the missing capabilities, no BAR write)")
        finally:
            real.close()  # a real function has one owner at a time
    for rid in TRANSITIONAL_DRIVER_ROWS:
        if refused_all:
            verdict.not_applicable(rid, "the drivers under test are non-transitional: they drive a function only "
                                        "through its virtio PCI capabilities and refuse one without (PCILEG-DRV-03)")
        else:
            verdict.check(rid, False, "a driver bound a function without virtio capabilities: as a transitional "
                                      "driver it would have to use the legacy interface, which the bench does not "
                                      "observe")
