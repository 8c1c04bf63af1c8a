"""A driver adding transmit buffers while the device is taking them (2.7.10 notification suppression).

The DMA observer lets the check act at the device's own pace: each time the device reads transmitq1's avail
idx while it shows that no kick is needed, and each time it writes used.flags or avail_event (where a device
switches kicks back on and must look again; the avail idx read after such a write finds that chain and adds
none), the check publishes one more chain, as a driver on another CPU would, and rings the doorbell only
when the suppression state it reads right then asks for one (SPLIT-DRV-21/22, SPLIT-DRV-24/25). Every chain
must come back: a device that advised "no notification needed" owes the driver a look at what came
meanwhile. Judged with the rule of the suppression field in use: SPLIT-DEV-18 without VIRTIO_F_EVENT_IDX
(used.flags only ever 0 or 1, and what it advised kept), SPLIT-DEV-20 with it (used.flags stays 0).
"""

from __future__ import annotations

import select
import time

import pytest

from backend.pci.abilities import Lacking
from backend.pci.device import DmaPerm
from backend.virtio.features import F, has
from backend.virtio.split_ring import VRING_USED_F_NO_NOTIFY, SplitLayout, vring_need_event
from testbenches.conformance.harness import RING_MEM_SIZE, TIMEOUT, Bench, make_frame
from testbenches.conformance.plugin import Verdict

#: Chains the observer adds while the device works (the ring holds them all at once).
PRODUCED = 160
QSIZE = 256


@pytest.mark.parametrize("event_idx", [False, True], ids=["used-flags", "event-idx"])
@pytest.mark.req("SPLIT-DEV-18", "SPLIT-DEV-20")
def test_buffers_added_while_the_device_works_are_all_used(bench: Bench, verdict: Verdict, event_idx: bool) -> None:
    rid = "SPLIT-DEV-20" if event_idx else "SPLIT-DEV-18"
    other = "SPLIT-DEV-18" if event_idx else "SPLIT-DEV-20"
    verdict.not_applicable(other, f"this run {'negotiates' if event_idx else 'does not negotiate'} "
                                  "VIRTIO_F_EVENT_IDX")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(event_idx=event_idx, indirect=False)
        if feats is None:
            verdict.not_offered(rid, "VIRTIO_F_EVENT_IDX not offered")
            return
        observer = rig.abilities.dma_observer
        if isinstance(observer, Lacking):
            verdict.not_applicable(rid, f"the device's accesses cannot be followed: {observer.why}")
            return
        rig.bring_up(feats, QSIZE)
        assert has(rig.features, F.EVENT_IDX) == event_idx
        tx = rig.tx
        tx.auto_used_event = True
        hdr = rig.tx_header()
        avail_idx = tx.avail_addr + SplitLayout.AVAIL_IDX
        flags_at = tx.used_addr + SplitLayout.USED_FLAGS
        event_at = tx.used_addr + tx.layout.avail_event
        produced = 0
        owed = False
        flags_seen: set[int] = set()
        recheck = False  # a chain was added in the window of a suppression write: the next avail read adds none

        def add_one() -> None:
            nonlocal produced, owed
            tx.add([hdr + make_frame(900 + produced, 60 + produced % 200)], [])
            produced += 1
            owed |= tx.publish()  # the suppression state as the driver reads it now (before the device's write)

        def wants_kick() -> bool:
            """Would a chain published now need a doorbell (the suppression state the device shows right now)?"""
            if event_idx:
                return vring_need_event(tx.avail_event(), (tx.published + 1) & 0xFFFF, tx.published)
            return not tx.used_flags() & VRING_USED_F_NO_NOTIFY

        def observe(perm: DmaPerm, iova: int, size: int) -> None:
            flags_seen.add(tx.used_flags())  # the previous write has landed by now
            if produced >= PRODUCED:
                return
            nonlocal recheck
            write = bool(perm & DmaPerm.WRITE)
            hit = [at for at in ((flags_at, event_at) if write else (avail_idx,)) if iova <= at < iova + size]
            if not hit:
                return
            if not write and recheck:
                recheck = False  # the device's look after switching kicks on must find the chain added then
                return
            if wants_kick() if not write else (hit == [flags_at] and not tx.used_flags() & VRING_USED_F_NO_NOTIFY):
                # between bursts, or a write switching kicks off: a chain added now comes with a kick
                return
            add_one()
            recheck = write

        observer.add_observer(observe)
        try:
            add_one()
            owed = False
            rig.kick(rig.TX)
            deadline = time.monotonic() + rig.stretched(TIMEOUT + PRODUCED * 0.01)
            while tx.used_idx() != tx.published and time.monotonic() < deadline:
                if owed:
                    owed = False
                    rig.kick(rig.TX)
                    continue
                select.select([rig.irq_fd(rig.TX)], [], [], 0.005)
        finally:
            observer.remove_observer(observe)
        flags_seen.add(tx.used_flags())
        used = tx.used_idx()
        done = used == tx.published
        rig.drain_irqs()
        what = (f"{produced} chains added while the device worked (one at each avail idx read and each used.flags "
                f"or avail_event write), kicking only when the suppression state asked: used idx {used} of "
                f"{tx.published} published; used.flags values seen {sorted(flags_seen)}")
        if event_idx:
            verdict.check(rid, done and flags_seen == {0}, what + " (with EVENT_IDX used.flags stays 0)")
        else:
            verdict.check(rid, done and flags_seen <= {0, 1}, what + " (used.flags only 0 or 1, and a device that "
                                                                     "said no kick was needed takes what came)")
        tx.used()
