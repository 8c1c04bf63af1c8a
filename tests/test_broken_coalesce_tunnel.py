"""The guest tunnel GSO checks find tunnel coalescing bugs: each variant of tests/broken_coalesce_tunnel.py, run
through testbenches/conformance/checks/test_net_guest_tunnel.py, fails exactly the ids its bug breaks; the stock
model fails none."""

from __future__ import annotations

from tests import broken_coalesce_tunnel
from tests.suite_runner import CHECKS, assert_one_override_each, seeded_bug_proof

#: variant class in tests/broken_coalesce_tunnel.py -> the ids its bug breaks, which the checks must report failed
#: (and no other)
EXPECTED: dict[str, set[str]] = {
    "TunnelBitOfOuter": {"NET-DEV-51"},
    "InnerNhOffsetOff": {"NET-DEV-52"},
    "TunnelGsoWithoutFeature": {"NET-DEV-50"},
    "OuterChecksumOffloadedWithoutCsum": {"NET-DEV-54"},
    "OuterChecksumStale": {"NET-DEV-53", "NET-DEV-54"},
}
MODULE = CHECKS / "test_net_guest_tunnel.py"


seeded_runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids = seeded_bug_proof(
    MODULE, "tests.broken_coalesce_tunnel", EXPECTED, None)


def test_every_variant_is_filed_and_seeds_one_bug() -> None:
    """Each variant has its expected ids here and replaces exactly one method of the tunnel coalescer."""
    assert_one_override_each(broken_coalesce_tunnel, EXPECTED, "coalescer_class")
