"""The virtio-net checks find the seeded bugs of tests/broken_net.py: each fails exactly the ids of the rule it breaks
when the check module that judges that rule runs on it, and the stock model passes every id the module judges."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.suite_runner import CHECKS, assert_fails_exactly, ids_with, module_on_variants

#: variant class in tests/broken_net.py -> (the check module judging its rule, the ids its bug breaks)
EXPECTED: dict[str, tuple[str, set[str]]] = {
    "MtuNotEnforced": ("test_net_datapath.py", {"NET-DEV-05"}),
    # num_buffers one short (NET-DEV-28/31); the check finds each packet's buffers by it, so the spans it reads end a
    # buffer early: a full one judged last (32) and the rest counted into the next packet's used entries (33)
    "NumBuffersShortMerged": ("test_net_datapath.py", {"NET-DEV-28", "NET-DEV-31", "NET-DEV-32", "NET-DEV-33"}),
    # no config_generation change (PCI-DEV-17) and no configuration change notification: no ISR bit 1 (PCI-DEV-38)
    # to read and clear (41), nothing on the config vector (56)
    "LinkChangeUnannounced": ("test_interrupts.py", {"PCI-DEV-17", "PCI-DEV-38", "PCI-DEV-41", "PCI-DEV-56"}),
}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per variant: (its module on the stock model, its module on the variant)."""
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for variant, (module, _ids) in EXPECTED.items():
        runs = module_on_variants(CHECKS / module, "tests.broken_net", [variant],
                                  Path(tmp_path_factory.mktemp(variant)), timeout=240)
        out[variant] = (runs[""], runs[variant])
    return out


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_seeded_bug_fails_exactly_its_ids(variant: str, results: dict[str, tuple[dict[str, Any], dict[str, Any]]]
                                          ) -> None:
    stock, data = results[variant]
    assert stock["_exit"] == 0, stock["_stdout"][-3000:]
    assert EXPECTED[variant][1] <= ids_with(stock, "passed"), "the stock model must pass the ids the bug breaks"
    assert_fails_exactly(data, EXPECTED[variant][1], variant)
