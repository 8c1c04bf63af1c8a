"""The PCILEG device rows judged on configuration headers (testbenches/conformance/checks/test_pci_legacy.py): a
modern id makes them not applicable, a transitional one is judged on Revision ID, Subsystem ID and BAR0's type, an
id of neither kind fails."""

from __future__ import annotations

import pytest

from testbenches.conformance.checks.test_pci_legacy import TRANSITIONAL_DEVICE_ROWS, judge_legacy_device_rows
from testbenches.conformance.plugin import Verdict

ROWS = (*TRANSITIONAL_DEVICE_ROWS, "PCILEG-DEV-05")
GOOD_TRANSITIONAL = {"device_id": 0x1000, "revision": 0, "subsystem_id": 1, "bar0": 0xC001}


def _outcomes(header: dict[str, int]) -> dict[str, list[str]]:
    verdict = Verdict("t::legacy", list(ROWS))
    judge_legacy_device_rows(verdict, header)
    return {rid: [r.outcome.value for r in recs] for rid, recs in verdict.records().items()}


def test_a_modern_function_makes_every_device_row_not_applicable() -> None:
    got = _outcomes({"device_id": 0x1041, "revision": 1, "subsystem_id": 0x1100, "bar0": 0xFE000004})
    assert got == {rid: ["not applicable"] for rid in ROWS}


@pytest.mark.parametrize(("change", "fails"), [
    ({}, set()),
    ({"revision": 1}, {"PCILEG-DEV-01"}),
    ({"subsystem_id": 0x1100}, {"PCILEG-DEV-01"}),
    ({"device_id": 0x1006}, {"PCILEG-DEV-01"}),  # in the transitional range, but no device type
    ({"bar0": 0xFE000004}, {"PCILEG-DEV-06"}),
])
def test_a_transitional_function_is_judged_on_its_header(change: dict[str, int], fails: set[str]) -> None:
    got = _outcomes({**GOOD_TRANSITIONAL, **change})
    assert {rid for rid, o in got.items() if o == ["failed"]} == fails
    assert {rid for rid, o in got.items() if o == ["passed"]} == {"PCILEG-DEV-01", "PCILEG-DEV-06"} - fails
    assert got["PCILEG-DEV-05"] == ["not applicable"]
    # the legacy register block is not exercised: those rows are left unjudged, never passed unseen
    assert not {"PCILEG-DEV-02", "PCILEG-DEV-03", "PCILEG-DEV-04"} & set(got)


def test_an_id_of_neither_kind_fails_every_row() -> None:
    got = _outcomes({"device_id": 0x2000, "revision": 1, "subsystem_id": 1, "bar0": 0})
    assert got == {rid: ["failed"] for rid in ROWS}
