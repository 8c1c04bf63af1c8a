"""The checksum offload checks find checksum bugs: each variant of tests/broken_csum.py, run through
testbenches/conformance/checks/test_net_csum.py, fails exactly the ids its bug breaks; the stock model fails none."""

from __future__ import annotations

from tests import broken_csum
from tests.suite_runner import CHECKS, assert_one_override_each, seeded_bug_proof

#: variant class in tests/broken_csum.py -> the ids its bug breaks, which the checks must report failed (and no other)
EXPECTED: dict[str, set[str]] = {
    "CsumStoredPastField": {"NET-DEV-35"},  # the delivered checksum is wrong (and the two bytes after it changed)
    # DATA_VALID vouches for corrupted checksums, also for packets sent without NEEDS_CSUM
    "DataValidUnverified": {"NET-DEV-62", "NET-DEV-26"},
    "CsumWithoutNeedsCsum": {"NET-DEV-16"},  # csum_start/csum_offset used with NEEDS_CSUM clear: the packet changes
    "DataValidWithoutGuestCsum": {"NET-DEV-34"},  # receive flags not 0 without GUEST_CSUM
}
MODULE = CHECKS / "test_net_csum.py"


seeded_runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids = seeded_bug_proof(
    MODULE, "tests.broken_csum", EXPECTED, None)


def test_every_variant_is_filed_and_seeds_one_bug() -> None:
    """Each variant in tests/broken_csum.py has its expected ids here and overrides exactly one hook."""
    assert_one_override_each(broken_csum, EXPECTED)
