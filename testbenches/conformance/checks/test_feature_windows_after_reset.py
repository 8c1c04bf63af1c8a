"""Feature windows of the common configuration across a reset (4.1.4.3): what device_feature and driver_feature
show when the driver reads them before writing anything, after a reset that followed other selections."""

from __future__ import annotations

import pytest

from backend.virtio.pci_regs import CommonCfg
from testbenches.conformance.harness import Bench, acknowledge, usable_features
from testbenches.conformance.plugin import Verdict

#: Feature select windows read: the four that can hold feature bits and four beyond them.
WINDOWS = 8


@pytest.mark.req("PCI-DEV-14", "PCI-DEV-15")
def test_feature_windows_read_before_any_write_after_reset(bench: Bench, verdict: Verdict) -> None:
    """Negotiate with high select windows left selected, reset, then read without writing a select first:
    device_feature shows the offer's window the select register names (PCI-DEV-14), and driver_feature
    holds no bit the driver wrote since the reset, in any window (PCI-DEV-15: only written bits read back)."""
    t = bench.transport()
    offered = t.device_features()
    windows = [(offered >> (32 * s)) & 0xFFFF_FFFF if s < 4 else 0 for s in range(WINDOWS)]
    acknowledge(t)
    t.write_driver_features(usable_features(offered))
    t.write_common(CommonCfg.DEVICE_FEATURE_SELECT, 1)
    t.write_common(CommonCfg.DRIVER_FEATURE_SELECT, 1)
    t.reset()
    sel = t.read_common(CommonCfg.DEVICE_FEATURE_SELECT)
    shown = t.read_common(CommonCfg.DEVICE_FEATURE)
    want = windows[sel] if sel < WINDOWS else 0
    verdict.check("PCI-DEV-14", shown == want,
                  f"after a reset device_feature_select reads {sel} and device_feature {shown:#x}; the offer's "
                  f"window {sel} is {want:#x}")
    acknowledge(t)
    stale: list[str] = []
    for s in range(WINDOWS):
        t.write_common(CommonCfg.DRIVER_FEATURE_SELECT, s)
        got = t.read_common(CommonCfg.DRIVER_FEATURE)
        if got:
            stale.append(f"window {s}: {got:#x}")
    verdict.check("PCI-DEV-15", not stale,
                  "after a reset, before the driver wrote any feature bit, driver_feature reads "
                  + (", ".join(stale) or "0 in every window"))
