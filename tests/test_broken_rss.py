"""The RSS checks find bugs: each seeded bug of tests/broken_rss.py fails exactly the ids of the rule it breaks when
``test_net_rss.py`` runs on it, and the stock model passes every id the module judges."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.suite_runner import CHECKS, ids_with, run_suite

MODULE = CHECKS / "test_net_rss.py"
#: variant class in tests/broken_rss.py -> the ids its bug breaks: the module must fail exactly these
EXPECTED: dict[str, set[str]] = {
    "IndirectionIgnored": {"NETCTRL-DEV-29"},
    "UnclassifiedIgnored": {"NETCTRL-DEV-30"},
    "UdpReportedAsTcp": {"NETCTRL-DEV-B03"},
}
#: The ids the module judges on the stock model; all pass.
JUDGED = {"NET-DEV-07", "NET-DEV-08", "NET-DEV-13", "NET-DEV-B01", "NET-DEV-B02", "NET-DEV-B03", "NETCTRL-DEV-29",
          "NETCTRL-DEV-30", "NETCTRL-DEV-31", "NETCTRL-DEV-B03"}

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The module on the stock model and on each variant, two child processes at a time."""
    variants = ["", *EXPECTED]
    outs = {v: tmp_path_factory.mktemp(v or "stock") for v in variants}  # here: mktemp is not for threads

    def one(variant: str) -> tuple[str, dict[str, Any]]:
        spec = "sim:virtio-net" + (f",model=tests.broken_rss:{variant}" if variant else "")
        return variant, run_suite(spec, outs[variant], modules=[MODULE], timeout=240)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, variants))


def test_stock_model_passes_every_judged_id(results: dict[str, dict[str, Any]]) -> None:
    data = results[""]
    assert data["_exit"] == 0, data["_stdout"][-3000:]
    assert ids_with(data, "passed") == JUDGED, {i: data["ids"][i] for i in JUDGED - ids_with(data, "passed")}


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_seeded_bug_fails_exactly_its_ids(variant: str, results: dict[str, dict[str, Any]]) -> None:
    data = results[variant]
    failed = ids_with(data, "failed")
    assert failed == EXPECTED[variant], (variant, {i: data["ids"][i]["evidence"] for i in sorted(failed)})
    assert data["_exit"] != 0
    assert ids_with(data, "passed") == JUDGED - EXPECTED[variant]
