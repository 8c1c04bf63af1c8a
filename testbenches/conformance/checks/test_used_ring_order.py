"""SPLIT-DEV-15 (2.7.8.2): the device writes a used element's len before the used idx write that exposes it.

Watched as the order of the device's DMA writes (the IOMMU observer on sim, the AXI write order on rtl):
every kind of chain on both data queues, returned one or several per used idx write, over several laps of an
8-entry ring, so every used slot is written again after the driver consumed it.
"""

from __future__ import annotations

import pytest

from backend.virtio.features import DeviceStatus, F, has
from testbenches.conformance.chains import Posted, add_chain, judge_exposures, split_at
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, Rig, make_frame
from testbenches.conformance.plugin import Verdict

#: Chain kinds the ordering check returns through the used ring: (kind, TX cuts of header+frame or RX
#: writable lengths as a share of the received bytes, direct descriptors before an indirect table or None).
TX_KINDS: list[tuple[str, list[int], int | None]] = [
    ("device-readable, one descriptor", [], None),
    ("device-readable, header and frame apart", [12], None),
    ("device-readable, indirect", [12, 40], 0),
    ("device-readable, direct then indirect", [6, 12, 40], 2),
]
RX_KINDS: list[tuple[str, list[int], int | None]] = [
    ("device-writable, one buffer", [], None),
    ("device-writable, header and frame apart", [12], None),
    ("device-writable, indirect", [12, 100], 0),
    ("device-writable, direct then indirect", [5, 12, 100], 1),
]
#: Rounds of the ordering check on an 8-entry ring: every used slot is written in several laps.
ORDER_ROUNDS = 6


def _alive(rig: Rig, verdict: Verdict, what: str) -> None:
    st = rig.status()
    verdict.check("SPLIT-DEV-15", not st & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED),
                  f"{what}: device_status {st:#x} (DEVICE_NEEDS_RESET) after valid chains; "
                  f"device says: {rig.device_errors() or 'nothing'}")


@pytest.mark.req("SPLIT-DEV-15")
def test_used_element_written_before_used_idx(bench: Bench, verdict: Verdict) -> None:
    """Watches the order of the device's DMA writes: every used entry's len lands before the used idx write
    that exposes it, for each kind of chain on both queues, over several laps of an 8-entry ring."""
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(indirect=True) or rig.features_for(indirect=False)
        assert feats is not None
        rig.bring_up(feats, 8)
        if not rig.looped(verdict, "SPLIT-DEV-15"):
            return
        indirect_ok = has(rig.features, F.INDIRECT_DESC)
        tx_kinds = [k for k in TX_KINDS if k[2] is None or indirect_ok]
        rx_kinds = [k for k in RX_KINDS if k[2] is None or indirect_ok]
        hdr = rig.tx_header()
        kinds: dict[int, list[str]] = {rig.RX: [], rig.TX: []}
        consumed: dict[int, list[tuple[int, int]]] = {rig.RX: [], rig.TX: []}
        with rig.dma_watch({rig.RX: rig.rx, rig.TX: rig.tx}) as watch:
            if not watch.available:
                verdict.not_applicable("SPLIT-DEV-15", f"the order of device writes cannot be watched: {watch.why}")
                return
            for rnd in range(ORDER_ROUNDS):
                batch = 1 + rnd % 3  # one chain per used idx write, or several
                rx_pending: dict[int, Posted] = {}
                tx_pending: dict[int, Posted] = {}
                for k in range(batch):
                    n = rnd * 3 + k
                    frame = make_frame(n, 100 + 37 * n)
                    total = rig.hdr_len + len(frame)
                    rx_name, rx_cuts, rx_direct = rx_kinds[n % len(rx_kinds)]
                    lens = [len(piece) for piece in split_at(bytes(total + 20), rx_cuts)]
                    r = add_chain(rig.rx, [], lens, direct=rx_direct, token=rx_name)
                    rx_pending[r.head] = r
                    tx_name, tx_cuts, tx_direct = tx_kinds[n % len(tx_kinds)]
                    t = add_chain(rig.tx, split_at(hdr + frame, tx_cuts), [], direct=tx_direct, token=tx_name)
                    tx_pending[t.head] = t
                rig.publish(rig.RX)
                rig.publish(rig.TX)
                for q, pending in ((rig.RX, rx_pending), (rig.TX, tx_pending)):
                    for p, n in rig.complete(q, pending, batch):
                        kinds[q].append(str(p.token))
                        consumed[q].append((p.head, n))
                        rig.release(p)
                    for p in pending.values():  # never returned: freed with the ring at the next bring-up
                        kinds[q].append(str(p.token))
        for q in (rig.RX, rig.TX):
            names = kinds[q]

            def kind_of(entry: int, names: list[str] = names) -> str:
                return names[entry] if entry < len(names) else "past the chains posted"

            exposed = judge_exposures(verdict, "SPLIT-DEV-15", watch, q, kind_of, consumed[q])
            verdict.check("SPLIT-DEV-15", exposed == len(consumed[q]) and len(consumed[q]) == len(names),
                          f"queue {q}: {len(names)} chains posted, {len(consumed[q])} used entries read by the driver, "
                          f"{exposed} exposed by the used idx writes the watch saw")
        _alive(rig, verdict, "ordering check")


