"""Fixtures of the checks: ``bench`` (:class:`~testbenches.conformance.harness.Bench`) over ``open_target``,
with the wire probes of the session (a target whose wire is unknown is probed once)."""

from __future__ import annotations

import pytest

from testbenches.conformance.harness import Bench, OpenTarget, WireProbes


@pytest.fixture(scope="session")
def wire_probes() -> WireProbes:
    return WireProbes()


@pytest.fixture
def bench(open_target: OpenTarget, target_spec: str, wire_probes: WireProbes) -> Bench:
    return Bench(open_target, target_spec, wire_probes)
