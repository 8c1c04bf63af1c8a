"""Feature bits (2.2, 6, 5.1.3): what is offered, and how negotiation is accepted or refused.

Acceptance and refusal run for both ring layouts (``ring_layout``): the sets negotiated hold VIRTIO_F_RING_PACKED
exactly on the packed run (which reads *not offered* where the device lacks it).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.drivers.transport import VirtioPciModern
from backend.virtio.features import NET_DEPENDENCIES, F, NetF, dependency_violations, has
from backend.virtio.pci_regs import NetCfg
from testbenches.conformance.checks.pcie_ext import PCI_EXT_CAP_ID_SRIOV, extended_capabilities
from testbenches.conformance.harness import Bench, acknowledge, negotiate, usable_features
from testbenches.conformance.offers import judge_offer
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout
from testbenches.strategies import feature_sets

NETFEAT_IDS = sorted({r.req_id for r in NET_DEPENDENCIES})


def _layout_offered(offered: int, layout: Layout, verdict: Verdict, rid: str) -> bool:
    """True unless packed rings are asked for and not offered (then ``rid`` reads not offered, once)."""
    if layout == "split" or has(offered, F.RING_PACKED):
        return True
    if not verdict.recorded(rid):
        verdict.not_offered(rid, f"packed ring layout: VIRTIO_F_RING_PACKED not offered ({offered:#x})")
    return False


#: The IPsec rows (5.1.9.2, 5.1.9.4: the SECURITY header flags and the SA resource objects they name). The bench has no
#: checks that create SA objects: on a device offering VIRTIO_NET_F_IPSEC they stay not covered.
IPSEC_IDS = ("NET-DEV-67", "NET-DEV-68", "NET-DEV-69", "NET-DRV-51", "NET-DRV-52")


@pytest.mark.req(*IPSEC_IDS)
def test_ipsec_rows_need_the_feature(bench: Bench, verdict: Verdict) -> None:
    """The IPsec rows bind only a device offering VIRTIO_NET_F_IPSEC (and a driver that negotiated it)."""
    offered = bench.transport().device_features()
    if not has(offered, NetF.IPSEC):
        for rid in IPSEC_IDS:
            verdict.not_offered(rid, f"VIRTIO_NET_F_IPSEC not offered (device features {offered:#x})")


@pytest.mark.req("FEAT-DEV-01", "FEAT-DEV-06", "FEAT-DEV-08", "FEAT-DEV-13", "FEAT-DEV-14", "FEAT-DEV-15",
                 "NETFEAT-DEV-13", *NETFEAT_IDS)
def test_offered_features(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    offered = t.device_features()
    broken = dependency_violations(offered)
    verdict.check("FEAT-DEV-01", not broken,
                  "offers features without their prerequisites: " + ", ".join(
                      f"{NetF(r.feature).name} ({r.req_id})" for r in broken))
    # A row speaks of the features that depend on others: judged only where the device offers one.
    judge_offer(verdict, offered, NETFEAT_IDS)
    verdict.check("FEAT-DEV-06", has(offered, F.VERSION_1), f"VERSION_1 not offered ({offered:#x})")
    # Every device of this bench reaches memory through an IOMMU (the platform's translation).
    verdict.check("FEAT-DEV-08", has(offered, F.ACCESS_PLATFORM), "ACCESS_PLATFORM not offered")
    verdict.check("FEAT-DEV-13", has(offered, F.ACCESS_PLATFORM) and has(offered, F.ORDER_PLATFORM),
                  f"ACCESS_PLATFORM={has(offered, F.ACCESS_PLATFORM)} ORDER_PLATFORM={has(offered, F.ORDER_PLATFORM)}")
    # SR-IOV is a PCIe extended capability: read the function's own extended list (none without
    # extended config space) and compare with what it offers.
    ext = extended_capabilities(t.pci)
    sriov = PCI_EXT_CAP_ID_SRIOV in ext.ids
    if sriov:
        verdict.check("FEAT-DEV-14", has(offered, F.SR_IOV), f"SR-IOV capability ({ext.describe()}) without "
                                                             "VIRTIO_F_SR_IOV")
    else:
        verdict.not_applicable("FEAT-DEV-14", f"no SR-IOV capability: {ext.describe()}")
    verdict.check("FEAT-DEV-15", not has(offered, F.SR_IOV) or sriov,
                  f"VIRTIO_F_SR_IOV offered without an SR-IOV capability: {ext.describe()}")
    if has(offered, NetF.IPSEC):
        verdict.check("NETFEAT-DEV-13", has(offered, NetF.OUT_NET_HEADER), "IPSEC without OUT_NET_HEADER")
    else:
        verdict.not_offered("NETFEAT-DEV-13", "VIRTIO_NET_F_IPSEC not offered")


@pytest.mark.req("FEAT-DEV-02")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_valid_subset_is_accepted(bench: Bench, verdict: Verdict, data: st.DataObject,
                                        ring_layout: Layout) -> None:
    t = _cached_transport(bench, verdict)
    if not _layout_offered(t.device_features(), ring_layout, verdict, "FEAT-DEV-02"):
        return
    offered = usable_features(t.device_features(), ring_layout)
    # VERSION_1 and (when offered) ACCESS_PLATFORM stay in: the bench always reaches the device through an
    # IOMMU, and a device MAY refuse to operate when ACCESS_PLATFORM is not accepted (6.1). RING_PACKED is the
    # layout's choice, in every set of the packed run.
    required = (1 << F.VERSION_1 | 1 << F.ACCESS_PLATFORM | 1 << F.RING_PACKED) & offered
    subset = data.draw(feature_sets(offered, required=required), label="features")
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
def test_unsupported_subset_is_refused(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """Every bit the device does not offer, in each of the four 32-bit driver_feature windows, added alone to
    an accepted set: the device cannot work with a feature it does not have, so FEATURES_OK must stay clear."""
    t = bench.transport()
    offered = t.device_features()
    if not _layout_offered(offered, ring_layout, verdict, "FEAT-DEV-03"):
        return
    base = usable_features(offered, ring_layout)
    assert negotiate(t, base), f"FEATURES_OK refused for the offered set {base:#x} (FEAT-DEV-02 reports it)"
    stuck = [b for b in range(128) if not has(offered, b) and negotiate(t, base | 1 << b)]
    unoffered = sum(1 for b in range(128) if not has(offered, b))
    verdict.check("FEAT-DEV-03", not stuck,
                  f"FEATURES_OK stuck with unoffered bit(s) {stuck} ({unoffered} unoffered bits tried)")


@pytest.mark.req("FEAT-DEV-05")
def test_same_set_accepted_again_after_reset(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    t = bench.transport()
    if not _layout_offered(t.device_features(), ring_layout, verdict, "FEAT-DEV-05"):
        return
    features = usable_features(t.device_features(), ring_layout)
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
