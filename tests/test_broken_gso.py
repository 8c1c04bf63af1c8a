"""The host GSO check finds bugs: each seeded bug of tests/broken_gso.py fails exactly the ids of the rule it breaks
when ``test_net_gso.py`` runs on it, and the stock model passes every id the module judges."""

from __future__ import annotations

from typing import Any

import pytest

from tests.suite_runner import CHECKS, seeded_bug_proof

MODULE = CHECKS / "test_net_gso.py"
#: variant class in tests/broken_gso.py -> the ids its bug breaks: the module must fail exactly these. Segmentation
#: has no row of its own: it is judged as NET-DEV-21's "segmentation/checksum results must still be correct".
EXPECTED: dict[str, set[str]] = {
    "TsoSequenceNotAdvanced": {"NET-DEV-21"},
    "ChecksumNotPerSegment": {"NET-DEV-21"},
    "SegmentsOverGsoSize": {"NET-DEV-21"},
}
#: The ids the module judges on the stock model; all pass.
JUDGED = {"NET-DEV-15", "NET-DEV-21", "NETFEAT-DEV-05", "NETFEAT-DEV-06"}

pytestmark = pytest.mark.timeout(300)


seeded_runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids = seeded_bug_proof(
    MODULE, "tests.broken_gso", EXPECTED, JUDGED)


@pytest.mark.parametrize("variant", sorted(EXPECTED))
def test_evidence_names_the_fault(variant: str, seeded_runs: dict[str, dict[str, Any]]) -> None:
    evidence = " ".join(str(e) for e in seeded_runs[variant]["ids"]["NET-DEV-21"]["evidence"])
    assert WHAT[variant] in evidence, evidence[:2000]


#: What the evidence of each seeded bug says (the check names the fault, not only that something differs).
WHAT = {"TsoSequenceNotAdvanced": "seq ", "ChecksumNotPerSegment": "checksums not complete",
        "SegmentsOverGsoSize": "bytes of payload, gso_size"}
