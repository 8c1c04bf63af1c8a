"""The guest GSO checks find coalescing bugs: each variant of tests/broken_coalesce.py, run through
testbenches/conformance/checks/test_net_guest_gso.py, fails exactly the ids its bug breaks; the stock model fails
none."""

from __future__ import annotations

from tests import broken_coalesce
from tests.suite_runner import CHECKS, assert_one_override_each, seeded_bug_proof

#: variant class in tests/broken_coalesce.py -> the ids its bug breaks, which the checks must report failed (and no
#: other)
EXPECTED: dict[str, set[str]] = {
    "GsoSizeWrong": {"NET-DEV-57"},
    "NeedsCsumMissing": {"NET-DEV-56"},
    "CwrCoalescedWithoutEcn": {"NET-DEV-42"},
    "HdrLenShort": {"NET-DEV-60"},
    "RscSegmentsMiscounted": {"NET-DEV-58"},
}
MODULE = CHECKS / "test_net_guest_gso.py"


seeded_runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids = seeded_bug_proof(
    MODULE, "tests.broken_coalesce", EXPECTED, None)


def test_every_variant_is_filed_and_seeds_one_bug() -> None:
    """Each variant in tests/broken_coalesce.py has its expected ids here and replaces exactly one coalescer method."""
    assert_one_override_each(broken_coalesce, EXPECTED, "coalescer_class")
