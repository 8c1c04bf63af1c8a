"""The RSS checks find bugs: each seeded bug of tests/broken_rss.py fails exactly the ids of the rule it breaks when
``test_net_rss.py`` runs on it, and the stock model passes every id the module judges."""

from __future__ import annotations

import pytest

from tests.suite_runner import CHECKS, seeded_bug_proof

MODULE = CHECKS / "test_net_rss.py"
#: variant class in tests/broken_rss.py -> the ids its bug breaks: the module must fail exactly these
EXPECTED: dict[str, set[str]] = {
    "IndirectionIgnored": {"NETCTRL-DEV-29"},
    "UnclassifiedIgnored": {"NETCTRL-DEV-30"},
    "UdpReportedAsTcp": {"NETCTRL-DEV-B03"},
    "HashReportMissing": {"NETCTRL-DEV-B03"},
}
#: The ids the module judges on the stock model; all pass.
JUDGED = {"NET-DEV-07", "NET-DEV-08", "NET-DEV-13", "NET-DEV-B01", "NET-DEV-B02", "NET-DEV-B03", "NETCTRL-DEV-29",
          "NETCTRL-DEV-30", "NETCTRL-DEV-31", "NETCTRL-DEV-B03"}

pytestmark = pytest.mark.timeout(300)


seeded_runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids = seeded_bug_proof(
    MODULE, "tests.broken_rss", EXPECTED, JUDGED)
