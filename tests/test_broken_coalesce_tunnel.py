"""The guest tunnel GSO checks find tunnel coalescing bugs: each variant of tests/broken_coalesce_tunnel.py, run
through testbenches/conformance/checks/test_net_guest_tunnel.py, fails exactly the ids its bug breaks; the stock
model fails none."""

from __future__ import annotations

from models.virtio_net.device import VirtioNetDevice
from tests import broken_coalesce_tunnel
from tests.suite_runner import CHECKS, seeded_bug_proof

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
    variants = {name: cls for name, cls in vars(broken_coalesce_tunnel).items()
                if isinstance(cls, type) and issubclass(cls, VirtioNetDevice) and cls is not VirtioNetDevice}
    assert set(variants) == set(EXPECTED)
    for name, cls in variants.items():
        assert set(vars(cls)) - {"__module__", "__doc__", "__qualname__", "__firstlineno__",
                                 "__static_attributes__"} == {"coalescer_class"}, name
        own = [k for k, v in vars(cls.coalescer_class).items() if callable(v) and not k.startswith("__")]
        assert len(own) == 1, f"{name}: its coalescer overrides {own}: one seeded bug is one override"
