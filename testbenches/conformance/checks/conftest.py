"""Fixtures of the checks: ``bench`` (:class:`~testbenches.conformance.harness.Bench`) over ``open_target``,
with the wire probes of the session (a target whose wire is unknown is probed once), and ``ring_layout``, the ring
layout a layout-independent check runs on (each verdict is recorded with it, see the plugin)."""

from __future__ import annotations

import pytest

from testbenches.conformance.harness import Bench, OpenTarget, WireProbes
from testbenches.driver.layout import LAYOUTS, Layout


@pytest.fixture(scope="session")
def wire_probes() -> WireProbes:
    return WireProbes()


@pytest.fixture
def bench(open_target: OpenTarget, target_spec: str, wire_probes: WireProbes) -> Bench:
    return Bench(open_target, target_spec, wire_probes)


@pytest.fixture(params=LAYOUTS)
def ring_layout(request: pytest.FixtureRequest) -> Layout:
    """"split" then "packed": the check runs once per ring layout (packed reads *not offered* where the target
    lacks VIRTIO_F_RING_PACKED: :meth:`~testbenches.conformance.harness.Rig.offers`)."""
    value: Layout = request.param
    return value
