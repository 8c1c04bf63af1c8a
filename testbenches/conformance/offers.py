"""The feature-dependency rows judged on an offer a check ran with (5.1.3.1, 5.1.4.1).

A check that asks a configurable target for features beyond its default offer (``features=`` on ``sim:``) runs on
the device that offer builds, so the offer itself is evidence for the rows that say which features a device may
offer only together: the 5.1.3.1 table (NETFEAT-DEV-01..12, :data:`~backend.virtio.features.NET_DEPENDENCIES`) and
the two device-configuration rows of the same kind, HASH_REPORT and CTRL_RX_EXTRA only with CTRL_VQ (NET-DEV-13/14).
A row is judged where the offer has a feature it constrains, and reads *not offered* otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.virtio.features import NEEDS_CTRL_VQ, NET_DEPENDENCIES, NetF, has
from testbenches.conformance.plugin import Verdict


def judge_offer(verdict: Verdict, offered: int, rids: Sequence[str]) -> None:
    """Each of ``rids`` (5.1.3.1 rows or :data:`NEEDS_CTRL_VQ` rows) on the offer ``offered``."""
    for rid in rids:
        if rid in NEEDS_CTRL_VQ:
            feature = NEEDS_CTRL_VQ[rid]
            if not has(offered, feature):
                verdict.not_offered(rid, f"VIRTIO_NET_F_{feature.name} not offered (device features {offered:#x})")
            else:
                verdict.check(rid, has(offered, NetF.CTRL_VQ),
                              f"{feature.name} offered without CTRL_VQ (device features {offered:#x})")
            continue
        rows = [r for r in NET_DEPENDENCIES if r.req_id == rid]
        present = [NetF(r.feature).name for r in rows if has(offered, r.feature)]
        if not present:
            verdict.not_offered(rid, "none of " + ", ".join(NetF(r.feature).name for r in rows)
                                + f" offered (device features {offered:#x})")
            continue
        bad = [NetF(r.feature).name for r in rows if r.violated_by(offered)]
        verdict.check(rid, not bad, f"device features {offered:#x}: {', '.join(present)} offered; without their "
                                    f"prerequisites: {', '.join(bad) or 'none'}")


__all__ = ["judge_offer"]
