"""Inputs kept from fuzzing, replayed through their target in process (no atheris needed).

``tests/fuzz/regressions/<target>/`` holds inputs that crashed a target (from reports/fuzz/artifacts, with
the fix in the code they crashed) and hostile inputs written by hand for a defect class the fuzzer should
never find again. Each must now be a handled outcome: ``one_input`` returns.

* split-ring (unbounded memory, found by ``make fuzz``: the run's RSS grew 250 -> 309 MB in 27,000 inputs):
  the model kept every driver error with its traceback, about 20 KB each, for the device's life, so a
  driver (or a vfio-user client of a pooled device) repeating a malformed ring grew it without bound.
  The errors are now kept without traceback and at most ``MAX_RECORDED_ERRORS`` of them.
* split-ring (unbounded memory, found by ``make fuzz``: the run's RSS grew 217 -> 266 MB in 100,000 inputs):
  the IOMMU model kept every DMA fault for the device's life (``fault_log``), and the pending ones until
  someone drained them, which a frontend of ``serve`` never does; a driver faulting again and again grew
  both without bound. Both now keep the newest ``MAX_RECORDED_FAULTS``.
* split-ring/rx-buffer-over-avail-ring (a false defect of the target, found by ``make fuzz``): the driver's
  receive buffer covers its own avail ring, the device writes the frame there as told, and avail idx
  then reads 0 under a used idx of 1. The ring checks now take avail idx as the driver wrote it and are
  left out when a device-writable buffer reaches a ring.
* vfio-user-client/region-mmap-beyond-file: the server offers region 0 (32 KiB) for mmap with a 4 KiB
  memfd; touching the mapping beyond the file's end would kill the process with SIGBUS, so the client
  must refuse the mapping (it keeps the region trapped) and the script then reads the region's views.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.pci.device import DmaPerm
from models.virtio_net.split_engine import RingError
from models.virtio_net.transport import MAX_RECORDED_ERRORS
from sim.iommu import MAX_RECORDED_FAULTS
from tests.fuzz.ring import RingTarget
from tests.fuzz.targets import CORPUS, TARGETS

REGRESSIONS = Path(__file__).resolve().parent / "fuzz" / "regressions"
CASES = sorted((d.name, f) for d in REGRESSIONS.iterdir() if d.is_dir() for f in sorted(d.iterdir()))

pytestmark = pytest.mark.timeout(120)


def test_every_case_names_a_target() -> None:
    assert CASES, "no regression inputs committed"
    assert {name for name, _ in CASES} <= set(TARGETS)


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_regression_input_is_handled(name: str, path: Path) -> None:
    target = TARGETS[name]()
    try:
        target.one_input(path.read_bytes())
    finally:
        target.close()


def test_driver_errors_are_kept_bounded_and_without_frames() -> None:
    target = RingTarget("sim:virtio-net,wire=none")
    try:
        model = target.dev.model  # type: ignore[attr-defined]
        loop = next((CORPUS / "split-ring").glob("loop-*")).read_bytes()  # a descriptor loop: SPLIT-DRV-04
        for _ in range(20):
            target.one_input(loop)
        assert len(model.errors) == 20
        assert all(e.req_id == "SPLIT-DRV-04" and e.__traceback__ is None for e in model.errors)
        for i in range(MAX_RECORDED_ERRORS):
            model.fail(RingError("SPLIT-DRV-11", f"error {i}"))
        assert len(model.errors) == MAX_RECORDED_ERRORS
        assert model.errors[-1].message == f"error {MAX_RECORDED_ERRORS - 1}"  # the newest are kept
    finally:
        target.close()


def test_dma_faults_are_kept_bounded() -> None:
    target = RingTarget("sim:virtio-net,wire=none")
    try:
        iommu = target.dev.endpoint.iommu  # type: ignore[attr-defined]
        outside = next((CORPUS / "split-ring").glob("outside-mapping-*")).read_bytes()
        target.one_input(outside)
        assert iommu.fault_log, "the seed's buffer outside the mapping faults"
        extra = 10
        for i in range(MAX_RECORDED_FAULTS + extra):
            iommu.fault(0x10_0000 + i, 4, DmaPerm.READ, "outside every mapping")
        assert len(iommu.fault_log) == MAX_RECORDED_FAULTS
        pending = target.dev.dma_faults()
        assert len(pending) == MAX_RECORDED_FAULTS and not target.dev.dma_faults()
        newest = 0x10_0000 + MAX_RECORDED_FAULTS + extra - 1
        assert pending[-1].iova == iommu.fault_log[-1].iova == newest  # the newest are kept
    finally:
        target.close()
