"""Fixtures of the checks: ``bench`` (:class:`~testbenches.conformance.harness.Bench`) over ``open_target``,
with the wire probes of the session (a target whose wire is unknown is probed once) and its ``deadlines``
(calibrated once, on a device of its own, before the first check that waits), and ``ring_layout``, the ring
layout a layout-independent check runs on (each verdict is recorded with it, see the plugin)."""

from __future__ import annotations

import pytest

from backend.targets import TargetRegistry
from testbenches.conformance.deadlines import Deadlines
from testbenches.conformance.harness import Bench, OpenTarget, WireProbes, calibrate
from testbenches.conformance.plugin import TargetOptions, conformance_run
from testbenches.driver.layout import LAYOUTS, Layout


@pytest.fixture(scope="session")
def wire_probes() -> WireProbes:
    return WireProbes()


@pytest.fixture(scope="session")
def deadlines(target_registry: TargetRegistry, target_options: TargetOptions,
              pytestconfig: pytest.Config) -> Deadlines:
    """The session's deadlines: how slow the target is, measured on a fresh device of it (closed again before the
    checks open theirs), at least the slowdown it declares; noted in the terminal summary."""
    spec = target_options.device_spec(target_options.spec)
    pci = target_registry.open(spec)
    try:
        found = calibrate(pci, spec, float(pytestconfig.getoption("--check-budget")))
    finally:
        pci.close()
    conformance_run(pytestconfig).time_scale = found.describe()
    return found


@pytest.fixture
def bench(open_target: OpenTarget, target_spec: str, wire_probes: WireProbes, deadlines: Deadlines) -> Bench:
    return Bench(open_target, target_spec, wire_probes, deadlines)


@pytest.fixture(params=LAYOUTS)
def ring_layout(request: pytest.FixtureRequest) -> Layout:
    """"split" then "packed": the check runs once per ring layout (packed reads *not offered* where the target
    lacks VIRTIO_F_RING_PACKED: :meth:`~testbenches.conformance.harness.Rig.offers`)."""
    value: Layout = request.param
    return value
