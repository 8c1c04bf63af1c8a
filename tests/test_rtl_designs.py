"""Bring your own design: a vendor-style function (``models/rtl/acme``) runs the unchanged suite through its
description file alone (``rtl:acme-vnet`` = ``rtl:models/rtl/acme/acme_vnet.toml``).

It differs from the project's design in everything the bridge is told by the description (two BARs, an AXI4
slave for the virtio structures, 128-bit DMA with ID width 6, MSI-X table inside the design with message
writes on a second AXI4 master, active-low ``aresetn``, an idle output, queue maximum 1024) and carries the
project's ring engine inside, so it offers the same features: it passes exactly the project design's ids,
0 failed, and its quirk entry (``acme-vnet``: vq state and dirty log in its BAR0 vendor block) is the one the
run applies. A bug seeded into its own shell is caught with its ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.rtl.targets import DESIGNS, RtlOptions
from tests.expected_ids import difference, expected_path, read_expected
from tests.rtl_build import require_rtl_build
from tests.suite_runner import ids_with, run_suite

ACME = "rtl:acme-vnet"

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def acme_suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_rtl_build(ACME)
    return run_suite(ACME, tmp_path_factory.mktemp("acme"), "-k", "not thousand_workloads")


def test_the_short_name_is_the_file() -> None:
    by_name, by_path = RtlOptions("acme-vnet,queues=2"), RtlOptions(f"{DESIGNS['acme-vnet']},queues=2")
    assert by_name.variant.parameters == by_path.variant.parameters
    assert by_name.num_queues == 5 and by_name.variant.msix_vectors == 6
    assert by_name.description.msix_in_design and by_name.description.reset_active_low


def test_vendor_design_passes_every_offered_id(acme_suite: dict[str, Any]) -> None:
    data = acme_suite
    failed = ids_with(data, "failed")
    assert not failed, {i: data["ids"][i]["evidence"] for i in sorted(failed)}
    # the same engine offers the same features: the project design's ids, exactly
    diff = difference(read_expected("rtl"), ids_with(data, "passed"), ACME, expected_path("rtl"))
    assert not diff, diff
    assert data["quirk"].startswith("acme-vnet (matched by PCI ids 1af4:1041 (subsystem 1db5:0a01))"), data["quirk"]
    for rid in ("SPLIT-DEV-07", "FEAT-DEV-10"):  # INDIRECT, IN_ORDER: not implemented, so not offered
        assert rid in ids_with(data, "not offered"), rid


def test_a_bug_in_the_vendor_shell_is_caught(tmp_path: Path) -> None:
    """ACME_BUG_ENTRY_MASK_IGNORED: the design's MSI-X unit sends a masked entry's message."""
    target = f"{ACME},define=ACME_BUG_ENTRY_MASK_IGNORED"
    require_rtl_build(target)
    data = run_suite(target, tmp_path, "-k", "msix")
    # PCI-DEV-01 (the MSI-X table's rules): a masked vector's message must be held in the PBA, not sent
    assert ids_with(data, "failed") == {"PCI-DEV-01"}, {i: data["ids"][i]["status"] for i in ids_with(data, "failed")}
    assert any("pending bits [] (expected" in e for e in data["ids"]["PCI-DEV-01"]["evidence"])
