"""Bring your own design: a vendor-style function (``models/rtl/acme``) runs the unchanged suite through its
description file alone (``rtl:acme-vnet`` = ``rtl:models/rtl/acme/acme_vnet.toml``).

It differs from the project's design in everything the bridge is told by the description (two BARs, an AXI4
slave for the virtio structures, 128-bit DMA with ID width 6, MSI-X table inside the design with message
writes on a second AXI4 master, active-low ``aresetn``, an idle output, queue maximum 1024, one stream lane
per queue pair instead of one tdest port) and carries the
project's ring engine inside, so it offers the same features: it passes exactly the project design's ids,
0 failed, and its quirk entry (``acme-vnet``: vq state and dirty log in its BAR0 vendor block) is the one the
run applies. A bug seeded into its own shell is caught with its ids.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from backend.targets import default_registry
from backend.virtio.net_ctrl import VIRTIO_NET_OK
from models.rtl.targets import DESIGNS, RtlOptions
from sim.rtl.generate import read_ports
from testbenches.conformance.checks.test_net_ctrl_mq import CTRL_FEATURES, MqRig
from testbenches.conformance.harness import Bench, WireProbes, make_frame
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


def test_the_lanes_are_one_per_queue_pair() -> None:
    """``[stream] lanes = "per-pair"``: every stream signal of the elaborated design packs one lane per pair."""
    require_rtl_build(ACME)
    for pairs in (1, 4):
        ports = read_ports(RtlOptions(f"acme-vnet,queues={pairs}").variant)
        assert "rx_axis_tdest" not in ports and "tx_axis_tdest" not in ports
        for prefix in ("rx_axis_", "tx_axis_"):
            widths = {sig: ports[prefix + sig].width for sig in ("tdata", "tkeep", "tvalid", "tready", "tlast")}
            assert widths == {"tdata": 128 * pairs, "tkeep": 16 * pairs, "tvalid": pairs, "tready": pairs,
                              "tlast": pairs}, widths


@pytest.mark.parametrize("pairs", [2, 4])
def test_every_queue_pair_has_its_own_lane(pairs: int) -> None:
    """With VQ_PAIRS_SET enabling every pair: a frame pushed for pair i (its receive lane) lands in receiveq i
    only, and a frame sent on transmitq i leaves on transmit lane i (reported with dest i). The receive
    frames of all pairs are pushed at once, so the lanes run concurrently through the vendor's arbiter."""
    spec = f"{ACME},queues={pairs},wire=none"
    require_rtl_build(spec)
    opened: list[Any] = []

    def open_target(which: str | None = None) -> Any:
        dev = default_registry().open(which or spec)
        opened.append(dev)
        return dev

    try:
        with Bench(open_target, spec, WireProbes()).rig() as rig:
            feats = rig.features_for(event_idx=False, extra=CTRL_FEATURES, layout="split")
            assert feats is not None
            m = MqRig(rig, feats)
            assert m.max_pairs == pairs
            assert m.vq_pairs_set(pairs).ack == VIRTIO_NET_OK
            dev = opened[-1]
            left: list[tuple[bytes, int]] = []
            inner = dev._frame_sink

            def tap(frames: Sequence[tuple[bytes, int]]) -> None:
                left.extend((bytes(f), d) for f, d in frames)
                if inner is not None:
                    inner(frames)

            dev._frame_sink = tap
            # receive: several frames per pair, all queued before the clock takes them
            sent = {p: [make_frame(1000 * (p + 1) + k, 60 + 200 * k) for k in range(3)] for p in range(pairs)}
            dev.runner.push_frames([(f, p) for k in range(3) for p, frames in sent.items() for f in frames[k:k + 1]])
            got: dict[int, list[bytes]] = {2 * p: [] for p in range(pairs)}
            deadline = time.monotonic() + rig.event_wait
            while sum(map(len, got.values())) < 3 * pairs and time.monotonic() < deadline:
                for q in got:
                    got[q] += [u.data[rig.hdr_len:] for u in m.ring(q).used()]
                m.wait_irqs(0.05)
            assert {q // 2: v for q, v in got.items()} == sent, got
            # transmit: one frame per pair, each on its own transmitq
            hdr = rig.tx_header()
            out = {p: make_frame(5000 + p, 90 + p) for p in range(pairs)}
            for p, f in out.items():
                m.ring(2 * p + 1).add([hdr + f], [])
                m.ring(2 * p + 1).publish()
                rig.doorbell(2 * p + 1)
            deadline = time.monotonic() + rig.event_wait
            while len(left) < pairs and time.monotonic() < deadline:
                m.wait_irqs(0.05)
            assert sorted(left, key=lambda fd: fd[1]) == [(out[p], p) for p in range(pairs)], left
    finally:
        for dev in opened:
            dev.close()
