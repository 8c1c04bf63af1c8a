"""The inner header hash, RSS context and automatic steering checks find bugs: each seeded bug of
tests/broken_rss_context.py fails exactly the ids of the rule it breaks when ``test_net_rss_context.py`` runs on it,
and the stock model passes every id the module judges."""

from __future__ import annotations

import pytest

from tests.suite_runner import CHECKS, seeded_bug_proof

MODULE = CHECKS / "test_net_rss_context.py"
#: variant class in tests/broken_rss_context.py -> the ids its bug breaks: the module must fail exactly these
EXPECTED: dict[str, set[str]] = {
    "InnerHashIgnoresEnabledTypes": {"NETCTRL-DEV-01"},
    "InnerHashKeptAfterReset": {"NETCTRL-DEV-03"},
    "UnsupportedTunnelTypesTaken": {"NETCTRL-DEV-02"},
    "ContextsKeptAfterReset": {"NETCTRL-DEV-33"},
    "SteeringIgnoresTransmitQueue": {"NETCTRL-DEV-B02"},
    "QueueInResetStillChosen": {"NETCTRL-DEV-27"},
}
#: The ids the module judges on the stock model; all pass.
JUDGED = {"NETCTRL-DEV-01", "NETCTRL-DEV-02", "NETCTRL-DEV-03", "NETCTRL-DEV-27", "NETCTRL-DEV-28", "NETCTRL-DEV-32",
          "NETCTRL-DEV-33", "NETCTRL-DEV-B02", "NETFEAT-DEV-11", "NETFEAT-DEV-12"}

pytestmark = pytest.mark.timeout(300)


seeded_runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids = seeded_bug_proof(
    MODULE, "tests.broken_rss_context", EXPECTED, JUDGED)
