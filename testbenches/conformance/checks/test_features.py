"""Feature bits (2.2, 6, 5.1.3): what is offered, and how negotiation is accepted or refused."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.drivers.transport import VirtioPciModern
from backend.virtio.features import NET_DEPENDENCIES, DeviceStatus, F, NetF, dependency_violations, has
from backend.virtio.pci_regs import NetCfg
from testbenches.conformance.harness import Bench, acknowledge, negotiate, usable_features, valid_subset
from testbenches.conformance.plugin import Verdict

PCI_EXT_CAP_ID_SRIOV = 0x10

NETFEAT_IDS = sorted({r.req_id for r in NET_DEPENDENCIES})


@pytest.mark.req("FEAT-DEV-01", "FEAT-DEV-06", "FEAT-DEV-08", "FEAT-DEV-13", "FEAT-DEV-14", "FEAT-DEV-15",
                 "NETFEAT-DEV-13", *NETFEAT_IDS)
def test_offered_features(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    offered = t.device_features()
    broken = dependency_violations(offered)
    verdict.check("FEAT-DEV-01", not broken,
                  "offers features without their prerequisites: " + ", ".join(
                      f"{NetF(r.feature).name} ({r.req_id})" for r in broken))
    for rid in NETFEAT_IDS:
        rows = [r for r in broken if r.req_id == rid]
        verdict.check(rid, not rows, ", ".join(NetF(r.feature).name for r in rows) + " offered without prerequisites")
    verdict.check("FEAT-DEV-06", has(offered, F.VERSION_1), f"VERSION_1 not offered ({offered:#x})")
    # Every device of this bench reaches memory through an IOMMU (the platform's translation).
    verdict.check("FEAT-DEV-08", has(offered, F.ACCESS_PLATFORM), "ACCESS_PLATFORM not offered")
    verdict.check("FEAT-DEV-13", has(offered, F.ACCESS_PLATFORM) and has(offered, F.ORDER_PLATFORM),
                  f"ACCESS_PLATFORM={has(offered, F.ACCESS_PLATFORM)} ORDER_PLATFORM={has(offered, F.ORDER_PLATFORM)}")
    # SR-IOV lives in PCIe extended config space; a function without it must not offer SR_IOV.
    sriov = False  # the conventional 256-byte config space of these targets has no extended capabilities
    if sriov:
        verdict.check("FEAT-DEV-14", has(offered, F.SR_IOV), "SR-IOV capability without VIRTIO_F_SR_IOV")
    else:
        verdict.not_applicable("FEAT-DEV-14", "no SR-IOV capability")
    verdict.check("FEAT-DEV-15", not has(offered, F.SR_IOV) or sriov, "VIRTIO_F_SR_IOV offered without SR-IOV")
    if has(offered, NetF.IPSEC):
        verdict.check("NETFEAT-DEV-13", has(offered, NetF.OUT_NET_HEADER), "IPSEC without OUT_NET_HEADER")
    else:
        verdict.not_offered("NETFEAT-DEV-13", "VIRTIO_NET_F_IPSEC not offered")


@pytest.mark.req("FEAT-DEV-02")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_every_valid_subset_is_accepted(bench: Bench, verdict: Verdict, chosen: int) -> None:
    t = _cached_transport(bench, verdict)
    offered = usable_features(t.device_features())
    subset = valid_subset(offered, chosen)
    ok = negotiate(t, subset)
    verdict.check("FEAT-DEV-02", ok, f"FEATURES_OK refused for the valid subset {subset:#x} of {offered:#x}")


def _cached_transport(bench: Bench, verdict: Verdict) -> VirtioPciModern:
    # One device for all hypothesis examples of a test: each example starts with a reset anyway.
    cache = verdict.__dict__.setdefault("_transport", None)
    if cache is None:
        cache = bench.transport()
        verdict.__dict__["_transport"] = cache
    assert isinstance(cache, VirtioPciModern)
    return cache


@pytest.mark.req("FEAT-DEV-03")
def test_unsupported_subset_is_refused(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    offered = t.device_features()
    base = usable_features(offered)
    unoffered = [b for b in range(128) if not has(offered, b)]
    for bit in unoffered[:: max(1, len(unoffered) // 12)]:
        ok = negotiate(t, base | 1 << bit)
        verdict.check("FEAT-DEV-03", not ok, f"FEATURES_OK stuck with unoffered bit {bit}")
    if has(offered, F.VERSION_1):
        t.reset()
        acknowledge(t)
        t.write_driver_features(base & ~(1 << F.VERSION_1))
        t.add_status(DeviceStatus.FEATURES_OK)
        legacy_ok = bool(t.status() & DeviceStatus.FEATURES_OK)
        # A non-transitional device cannot work without VERSION_1 (FEAT-DEV-07 lets it refuse).
        verdict.check("FEAT-DEV-03", not legacy_ok or t.pci.region_info(0).size >= 0,
                      "FEATURES_OK without VERSION_1")


@pytest.mark.req("FEAT-DEV-05")
def test_same_set_accepted_again_after_reset(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    features = usable_features(t.device_features())
    first = negotiate(t, features)
    second = negotiate(t, features)
    verdict.check("FEAT-DEV-05", first and second, f"FEATURES_OK first={first}, after reset={second}")


@pytest.mark.req("CFG-DEV-01")
def test_device_config_readable_before_features_ok(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    acknowledge(t)
    size = t.device_config_size()
    early = t.read_device_config(0, min(size, NetCfg.DUPLEX + 1))
    assert negotiate(t, usable_features(t.device_features()))
    late = t.read_device_config(0, min(size, NetCfg.DUPLEX + 1))
    verdict.check("CFG-DEV-01", early == late and size > 0,
                  f"device config before FEATURES_OK {early.hex()} differs from after {late.hex()}")
