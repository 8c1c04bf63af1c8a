"""Each rule of testbenches/monitor/driver_rows.py (and SPLIT-DRV-03/27 of split_ring_rules.py) fails on a hostile
driver's trace and holds on a well-behaved one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from backend.virtio.features import F, bits
from backend.virtio.net_hdr import F_DATA_VALID, NetHdr
from backend.virtio.split_ring import DESC, U16, USED_ELEM, DescFlags, Descriptor, SplitLayout
from sim.memory import Allocator
from testbenches.driver.split_ring import DriverSplitQueue
from testbenches.driver.virtio_net import rx_checksum
from testbenches.monitor.driver_rows import (
    RxCase,
    SplitRingPlace,
    StoreWatch,
    avail_idx_order_findings,
    feature_ack_findings,
    physical_address_findings,
    refresh_findings,
    rx_findings,
    speed_duplex_findings,
    stocked_findings,
    vendor_data_findings,
)
from testbenches.monitor.pci_trace import Access
from testbenches.monitor.ring_follow import ReadMem
from testbenches.monitor.split_ring_rules import (
    Publication,
    SplitRingMonitor,
    _Queue,
    chain_length_finding,
    lost_kick_finding,
)
from testbenches.monitor.virtio_pci_rules import Finding, Layout

BASE = 0x100000
SIZE = 8
RING = SplitRingPlace(0, SIZE, BASE, BASE + 0x1000, BASE + 0x2000)
LAY = SplitLayout(SIZE)


def _oks(findings: list[Finding], rid: str) -> list[bool]:
    return [f.ok for f in findings if f.req_id == rid]


def test_feature_acks() -> None:
    offer = bits(F.RING_PACKED, F.ORDER_PLATFORM, F.NOTIF_CONFIG_DATA)
    assert all(f.ok for f in feature_ack_findings([(offer, offer)]))
    bad = feature_ack_findings([(offer, bits(F.RING_PACKED))])
    assert _oks(bad, "FEAT-DRV-14") == [False] and _oks(bad, "FEAT-DRV-20") == [False]
    assert _oks(bad, "FEAT-DRV-13") == [True]
    assert feature_ack_findings([(0, 0)]) == []  # nothing offered: no opportunity


def test_physical_addresses() -> None:
    ram = [(BASE, 0x10000)]
    assert all(f.ok for f in physical_address_findings([("desc", BASE, 16)], ram, 0))
    assert _oks(physical_address_findings([("iova", 0xFEE00000, 64)], ram, 0), "FEAT-DRV-12") == [False]
    assert _oks(physical_address_findings([("straddles", BASE + 0xFFF0, 64)], ram, 0), "FEAT-DRV-12") == [False]
    assert physical_address_findings([("iova", 0xFEE00000, 64)], ram, bits(F.ACCESS_PLATFORM)) == []


def _desc(slot: int, addr: int = BASE + 0x4000, length: int = 64) -> tuple[int, bytes]:
    return RING.desc + 16 * slot, DESC.pack(addr, length, 0, 0)


def _entry(slot: int, head: int) -> tuple[int, bytes]:
    return RING.avail + LAY.avail_ring_entry(slot), U16.pack(head)


def _idx(value: int) -> tuple[int, bytes]:
    return RING.avail + 2, U16.pack(value)


def test_avail_idx_order() -> None:
    zero = [(RING.avail, bytes(LAY.avail_bytes)), (RING.desc, bytes(16 * SIZE))]  # the ring's zeroing
    good = avail_idx_order_findings([*zero, _desc(0), _entry(0, 0), _idx(1), _desc(1), _entry(1, 1), _idx(2)], RING)
    assert _oks(good, "SPLIT-DRV-26") == [True, True]
    early = avail_idx_order_findings([*zero, _desc(0), _idx(1), _entry(0, 0)], RING)
    assert _oks(early, "SPLIT-DRV-26") == [False]
    desc_late = avail_idx_order_findings([*zero, _entry(0, 3), _idx(1), _desc(3)], RING)
    assert _oks(desc_late, "SPLIT-DRV-26") == [False]
    together = (RING.avail + 2, U16.pack(1) + U16.pack(0))  # idx and ring[0] in one store
    assert False in _oks(avail_idx_order_findings([*zero, _desc(0), together], RING), "SPLIT-DRV-26")


@pytest.fixture
def watch() -> Iterator[StoreWatch]:
    m = StoreWatch()
    try:
        m.add_region(BASE, 0x10000, "ram")
        m.status_register(4, 0x14)
        yield m
    finally:
        m.close()


def _store(m: StoreWatch, at: tuple[int, bytes]) -> None:
    m.write(*at)


def _publish(m: StoreWatch, head: int, slot: int) -> None:
    for s in (_desc(head), _entry(slot, head), _idx(slot + 1)):
        _store(m, s)


def _use(m: StoreWatch, n: int, head: int) -> None:
    """The device's side: used ring entry ``n`` returns ``head`` (written past the watch, as a device does)."""
    GuestMemoryWrite = super(StoreWatch, m).write
    GuestMemoryWrite(RING.used + LAY.used_ring_entry(n), USED_ELEM.pack(head, 0))
    GuestMemoryWrite(RING.used + 2, U16.pack(n + 1))


def test_exposed_entries_left_alone(watch: StoreWatch) -> None:
    watch.watch(RING)
    _publish(watch, 0, 0)
    _store(watch, _desc(1))  # another slot: allowed
    assert watch.findings == [] and watch.checked > 0
    _store(watch, _desc(0, addr=BASE + 0x8000))  # the exposed buffer's descriptor rewritten
    assert _oks(watch.findings, "RESET-DRV-05") == [False]
    assert _oks(watch.findings, "RESET-DRV-06") == [False]


def test_used_buffers_may_be_reused(watch: StoreWatch) -> None:
    watch.watch(RING)
    _publish(watch, 0, 0)
    _use(watch, 0, 0)
    _store(watch, _desc(0, addr=BASE + 0x8000))
    assert watch.findings == []


def test_reclaim_only_after_the_reset_completed(watch: StoreWatch) -> None:
    watch.watch(RING)
    _publish(watch, 0, 0)
    watch.on_access(Access(0, "w", 4, 0x14, 1, b"\0"))
    assert watch.reclaimed_at_reset == 1
    _store(watch, _desc(0, addr=BASE + 0x8000))  # before device_status reads back 0
    assert _oks(watch.findings, "RESET-DRV-06") == [False]
    watch.findings.clear()
    watch.on_access(Access(1, "r", 4, 0x14, 1, b"\0"))
    _store(watch, _desc(0, addr=BASE + 0x9000))
    assert watch.findings == [] and watch.reused_after_reset == 1


def test_vendor_data() -> None:
    writes = [("w", 4, 0, b"\1")]
    ok = vendor_data_findings(range(0xB4, 0xC4), [(0x04, b"\6\0")], writes, list(writes))
    assert all(f.ok for f in ok)
    written = vendor_data_findings(range(0xB4, 0xC4), [(0xBA, b"\xff")], writes, list(writes))
    assert _oks(written, "PCI-DRV-28") == [False]
    differs = vendor_data_findings(range(0xB4, 0xC4), [], [*writes, ("w", 4, 8, b"\2")], writes)
    assert _oks(differs, "PCI-DRV-27") == [False]


def test_speed_duplex() -> None:
    assert all(f.ok for f in speed_duplex_findings([(1000, 1, (1000, 1)), (0x80000000, 2, (None, None))]))
    assert _oks(speed_duplex_findings([(0x80000000, 1, (0x80000000, 1))]), "NET-DRV-11") == [False]
    assert _oks(speed_duplex_findings([(100, 0xFF, (100, 0xFF))]), "NET-DRV-11") == [False]
    assert _oks(refresh_findings([(100, 0, (100, 0), True, True)]), "NET-DRV-12") == [True]
    assert _oks(refresh_findings([(100, 0, (1000, 1), False, False)]), "NET-DRV-12") == [False]


def _tcp(chksum: int | None = None) -> bytes:
    return bytes(Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(chksum=chksum) / b"payload")


def test_rx_processing() -> None:
    case = RxCase("NET-DRV-64", "bad checksum, no flags", NetHdr(), _tcp(0x1234), frozenset({"bad"}))
    assert [f.ok for f in rx_findings([case], [(case.frame, "bad")])] == [True]
    assert [f.ok for f in rx_findings([case], [(case.frame, "valid")])] == [False]  # trusted without a flag
    patched = _tcp()  # the checksum "completed" from stray csum fields
    assert [f.ok for f in rx_findings([case], [(patched, "bad")])] == [False]
    assert [f.ok for f in rx_findings([case], [None])] == [False]


def test_guest_driver_checks_checksums_itself() -> None:
    assert rx_checksum(NetHdr(), _tcp()) == "checked"
    assert rx_checksum(NetHdr(), _tcp(0x1234)) == "bad"
    assert rx_checksum(NetHdr(flags=F_DATA_VALID | 0xF0), _tcp(0x1234)) == "valid"
    udp = bytes(Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(chksum=0x4321) / b"x")
    assert rx_checksum(NetHdr(csum_start=34, csum_offset=6), udp) == "bad"


def test_lost_kick_and_chain_length() -> None:
    asked = Publication(0, 3, 4, used_flags=0, avail_event=0, notified=False)
    assert _oks([f for f in [lost_kick_finding(asked, False)] if f], "SPLIT-DRV-27") == [False]
    suppressed = Publication(0, 3, 4, used_flags=1, avail_event=0, notified=False)
    assert lost_kick_finding(suppressed, False) is None
    crossed = Publication(0, 3, 4, used_flags=1, avail_event=3, notified=False)  # EVENT_IDX: used.flags ignored
    assert _oks([f for f in [lost_kick_finding(crossed, True)] if f], "SPLIT-DRV-27") == [False]
    assert chain_length_finding(19, "q0").ok and not chain_length_finding(65, "q0").ok


def test_every_receive_queue_in_use_stocked() -> None:
    assert all(f.ok for f in stocked_findings({0: 64, 2: 10, 4: 1}, 3))
    assert [f.ok for f in stocked_findings({0: 64, 2: 0, 4: 5}, 3)] == [True, False, True]
    assert [f.ok for f in stocked_findings({0: 64}, 2)] == [True, False]  # receiveq2 never stocked


def _chain_findings(table: list[Descriptor], read: ReadMem, head: int = 0) -> list[Finding]:
    """The split ring monitor's findings on one chain at ``head`` with IN_ORDER and INDIRECT_DESC negotiated."""
    mon = SplitRingMonitor(read, cast(Layout, None))
    mon._features = bits(F.IN_ORDER, F.INDIRECT_DESC, F.VERSION_1)
    mon._check_chain(0, _Queue(size=len(table)), table, head)
    return mon.findings


def test_in_order_chains_run_through_consecutive_slots(watch: StoreWatch) -> None:
    nxt, none = DescFlags.NEXT, Descriptor(0, 0, 0, 0)
    good = [Descriptor(BASE, 12, nxt, 1), Descriptor(BASE + 64, 60, 0, 0), *[none] * 6]
    assert _oks(_chain_findings(good, watch.read), "SPLIT-DRV-05") == [True]
    wrapped = [Descriptor(BASE + 64, 60, 0, 0), *[none] * 6, Descriptor(BASE, 12, nxt, 0)]
    assert _oks(_chain_findings(wrapped, watch.read, head=7), "SPLIT-DRV-05") == [True]
    skipping = [Descriptor(BASE, 12, nxt, 2), none, Descriptor(BASE + 64, 60, 0, 0), *[none] * 5]
    assert _oks(_chain_findings(skipping, watch.read), "SPLIT-DRV-05") == [False]
    # An indirect table whose entry 0 links to 2: SPLIT-DRV-10.
    watch.write(BASE + 0x3000, DESC.pack(BASE, 12, nxt, 2) + DESC.pack(0, 0, 0, 0) + DESC.pack(BASE + 64, 60, 0, 0))
    indirect = [Descriptor(BASE + 0x3000, 48, DescFlags.INDIRECT, 0), *[none] * 7]
    assert _oks(_chain_findings(indirect, watch.read), "SPLIT-DRV-10") == [False]
    watch.write(BASE + 0x3000, DESC.pack(BASE, 12, nxt, 1) + DESC.pack(BASE + 64, 60, 0, 0))
    indirect = [Descriptor(BASE + 0x3000, 32, DescFlags.INDIRECT, 0), *[none] * 7]
    assert _oks(_chain_findings(indirect, watch.read), "SPLIT-DRV-10") == [True]


def test_in_order_ring_completes_a_batch_returned_as_one_element(watch: StoreWatch) -> None:
    ring = DriverSplitQueue(watch, Allocator(BASE + 0x4000, 0x8000), SIZE, in_order=True)
    heads = [ring.add([bytes([i]) * 20], []) for i in range(3)]
    ring.publish()
    # The device returns the batch as one element in the slot of its last buffer (2.7.9); slots 0 and 1 stay 0.
    ring_used = ring.used_addr
    watch.write(ring_used + LAY.used_ring_entry(2), USED_ELEM.pack(heads[2], 0))
    watch.write(ring_used + 2, U16.pack(3))
    assert [u.head for u in ring.used()] == heads and ring.in_flight == 0 and not ring.anomalies
