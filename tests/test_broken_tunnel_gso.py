"""The host UDP-tunnel GSO check finds bugs: each seeded bug of tests/broken_tunnel_gso.py fails exactly the ids of
the rule it breaks when ``test_net_tunnel_gso.py`` runs on it, and the stock model passes every id the module
judges."""

from __future__ import annotations

import pytest

from tests.suite_runner import CHECKS, seeded_bug_proof

MODULE = CHECKS / "test_net_tunnel_gso.py"
#: variant class in tests/broken_tunnel_gso.py -> the ids its bug breaks: the module must fail exactly these
EXPECTED: dict[str, set[str]] = {
    "OuterUdpLengthNotFixed": {"NET-DEV-21"},
    "BothTunnelBitsAccepted": {"NET-DEV-22"},
    "TunnelCsumIgnored": {"NET-DEV-21"},
}
#: The ids the module judges on the stock model; all pass.
JUDGED = {"NET-DEV-21", "NET-DEV-22", "NET-DEV-23", "NET-DEV-24", "NET-DEV-25", "NETFEAT-DEV-07", "NETFEAT-DEV-08",
          "NET-DRV-27", "NET-DRV-28", "NET-DRV-29", "NET-DRV-30", "NET-DRV-44", "NET-DRV-46", "NET-DRV-47"}

pytestmark = pytest.mark.timeout(300)


seeded_runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids = seeded_bug_proof(
    MODULE, "tests.broken_tunnel_gso", EXPECTED, JUDGED)
