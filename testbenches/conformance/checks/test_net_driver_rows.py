"""virtio-net driver rows judged on the guest driver (``testbenches.driver.virtio_net.GuestNetDriver``) by the
monitors of :mod:`testbenches.monitor.driver_rows`, beside the generic ones of ``test_driver_rows``.

- speed and duplex (NET-DRV-11/12): values shown through a proxy, refreshed on configuration change interrupts.
- Received headers (NET-DRV-58/61/63/64): the bench plays the device on the receive queue, writing frames behind
  headers with unknown flag bits, stray csum fields, wrong hdr_len, bad checksums; the frames the driver delivers
  must be intact and their checksum state what the flags allow.
- Receive queues with VIRTIO_NET_F_MQ (NET-DRV-57): each one in use after VQ_PAIRS_SET holds buffers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import str2mac

from backend.drivers.transport import VirtioPciModern
from backend.pci.abilities import Lacking
from backend.pci.device import PciDevice
from backend.virtio.features import F, NetF, bits, has
from backend.virtio.net_hdr import F_DATA_VALID, F_RSC_INFO, HDR_SIZE, NetHdr
from backend.virtio.pci_regs import CommonCfg, NetCfg
from backend.virtio.split_ring import U16, USED_ELEM
from sim.memory import GuestMemory
from testbenches.conformance.checks.test_driver_rows import _events, _judge, _ring_parts
from testbenches.conformance.checks.test_net_driver_rules import ShownOffer
from testbenches.conformance.checks.test_net_rss import variant_spec
from testbenches.conformance.checks.test_split_driver_rules import HeldDoorbells
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import layout_features
from testbenches.driver.net_ctrl import ACK_TIMEOUT
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.monitor import TracingPciDevice
from testbenches.monitor.driver_rows import (
    RxCase,
    refresh_findings,
    rx_findings,
    speed_duplex_findings,
    stocked_findings,
)
from testbenches.monitor.virtio_pci_rules import Layout

MEM = 4 << 20
QSIZE = 64
LINK_WAIT = 2.0  # nominal: the session's deadlines scale it


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


# --- speed and duplex ---------------------------------------------------------------------------------


class SpeedShown(ShownOffer):
    """The target with speed and duplex in its device configuration replaced by :attr:`speed` / :attr:`duplex`, and
    VIRTIO_NET_F_SPEED_DUPLEX shown in the offer where the target lacks it (if its device configuration structure
    is long enough to hold the two fields)."""

    def __init__(self, inner: PciDevice) -> None:
        super().__init__(inner)
        device = Layout.discover(self).device
        assert device is not None, "no device configuration structure"
        self.bar, self.base = device.bar, device.offset
        if device.length > NetCfg.DUPLEX:
            self.add = bits(NetF.SPEED_DUPLEX) & ~VirtioPciModern(inner).device_features()
        self.speed, self.duplex = 1000, 1

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        first, end = self.base + NetCfg.SPEED, self.base + NetCfg.DUPLEX + 1
        if index != self.bar or offset + size <= first or offset >= end:
            return super().region_read(index, offset, size)
        data = bytearray(self.inner.region_read(index, offset, size))
        shown = self.speed.to_bytes(4, "little") + bytes([self.duplex])
        for i in range(size):
            if first <= offset + i < end:
                data[i] = shown[offset + i - first]
        self._record("r", index, offset, bytes(data))
        return bytes(data)


#: (speed, duplex) shown for NET-DRV-11: known values, then speeds above 0x7fffffff and duplex values not 0/1.
SHOWN_SPEEDS = ((1000, 1), (0x7FFFFFFF, 0), (0x80000000, 1), (0xFFFFFFFF, 0x02), (10, 0xFF), (0xFFFFFFFF, 0xFF))
#: (speed, duplex) in force at each configuration change interrupt for NET-DRV-12.
REFRESHED = ((100, 0), (25000, 1))


@pytest.mark.req("NET-DRV-11", "NET-DRV-12")
def test_guest_driver_speed_and_duplex(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    """VIRTIO_NET_F_SPEED_DUPLEX negotiated (shown where the target lacks it), speed and duplex shown through a
    proxy: out-of-range values read as unknown; each configuration change interrupt (the link pulled and plugged)
    makes the driver read both again."""
    name = "guest driver (split rings)"
    trace = SpeedShown(bench.open())
    port = trace.inner.abilities().port
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE,
                         features=layout_features(DEFAULT_FEATURES | bits(NetF.SPEED_DUPLEX), "split"))
    shown: list[tuple[int, int, tuple[int | None, int | None]]] = []
    interrupts: list[tuple[int, int, tuple[int | None, int | None], bool, bool]] = []
    try:
        drv.init()
        if not has(drv.features, NetF.SPEED_DUPLEX):
            for rid in ("NET-DRV-11", "NET-DRV-12"):
                verdict.not_offered(rid, f"{name}: VIRTIO_NET_F_SPEED_DUPLEX not offered ({drv.offered:#x}) and the "
                                         "device configuration too short to show it")
            return
        for trace.speed, trace.duplex in SHOWN_SPEEDS:
            shown.append((trace.speed, trace.duplex, drv.speed_duplex()))
        if not isinstance(port, Lacking) and has(drv.features, NetF.STATUS):
            for up, (trace.speed, trace.duplex) in zip((False, True), REFRESHED, strict=True):
                mark = len(trace.accesses)
                port.set_link(up)
                if not drv.config_changed(bench.deadlines.wait(LINK_WAIT)):
                    continue
                offsets = {a.offset - trace.base for a in trace.accesses[mark:] if a.op == "r" and a.region ==
                           trace.bar}
                interrupts.append((trace.speed, trace.duplex, (drv.speed, drv.duplex), NetCfg.SPEED in offsets,
                                   NetCfg.DUPLEX in offsets))
    finally:
        if not isinstance(port, Lacking):
            port.set_link(True)
        drv.close()
    _judge(verdict, speed_duplex_findings(shown), ("NET-DRV-11",), name, f"{len(shown)} values shown")
    why = port.why if isinstance(port, Lacking) else \
        f"no configuration change interrupt came within {bench.deadlines.explain(LINK_WAIT)}"
    for rid in _judge(verdict, refresh_findings(interrupts), ("NET-DRV-12",), name,
                      f"{len(interrupts)} configuration change interrupts"):
        verdict.not_applicable(rid, f"{name}: {why}")


# --- received headers ------------------------------------------------------------------------------------


def _rx_cases(mac: bytes) -> list[RxCase]:
    l2 = Ether(src="02:00:00:00:00:02", dst=str2mac(mac)) / IP(src="10.0.0.2", dst="10.0.0.1")
    tcp = bytes(l2 / TCP(sport=9, dport=49152, flags="PA") / bytes(range(64)))
    udp = bytes(l2 / UDP(sport=9, dport=49152) / bytes(range(100)))
    bad_tcp = bytes(l2 / TCP(sport=9, dport=49152, flags="PA", chksum=0x1234) / bytes(range(64)))
    bad_udp = bytes(l2 / UDP(sport=9, dport=49152, chksum=0x4321) / bytes(range(100)))
    tcp_csum = 14 + 20  # csum_start of the TCP header, the checksum 16 bytes in
    checked, bad = frozenset({"checked"}), frozenset({"bad"})
    return [
        RxCase("NET-DRV-58", "flag bits 0xf0 (undefined) on a good TCP segment", NetHdr(flags=0xF0), tcp, checked),
        RxCase("NET-DRV-58", "flag bits 0xf0 with DATA_VALID", NetHdr(flags=0xF0 | F_DATA_VALID), udp,
               frozenset({"valid"})),
        RxCase("NET-DRV-61", "no NEEDS_CSUM, csum_start/csum_offset at the TCP checksum of a bad segment",
               NetHdr(csum_start=tcp_csum, csum_offset=16), bad_tcp, bad),
        RxCase("NET-DRV-61", "RSC_INFO with segment counts in the csum fields",
               NetHdr(flags=F_RSC_INFO, csum_start=3, csum_offset=1), tcp, checked),
        RxCase("NET-DRV-63", "hdr_len 0xffff", NetHdr(hdr_len=0xFFFF), tcp, checked),
        RxCase("NET-DRV-63", "hdr_len 1", NetHdr(hdr_len=1), udp, checked),
        RxCase("NET-DRV-64", "bad TCP checksum, no flags", NetHdr(), bad_tcp, bad),
        RxCase("NET-DRV-64", "bad UDP checksum, no flags", NetHdr(), bad_udp, bad),
        RxCase("NET-DRV-64", "good TCP checksum, no flags", NetHdr(), tcp, checked),
    ]


RX_IDS = ("NET-DRV-58", "NET-DRV-61", "NET-DRV-63", "NET-DRV-64")


@pytest.mark.ring_layout("split")
@pytest.mark.req(*RX_IDS)
def test_guest_driver_processes_received_headers(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    """The bench plays the device on the receive queue (doorbells held back, so the device leaves it alone): it
    writes frames behind headers with undefined flag bits, csum fields without NEEDS_CSUM, RSC_INFO, a wrong hdr_len
    and bad checksums, returns the buffers and signals the receive interrupt. Each frame must come out intact, its
    checksum taken on trust only with NEEDS_CSUM or DATA_VALID and checked by the driver otherwise."""
    name = "guest driver (split rings)"
    trace = HeldDoorbells(bench.open())
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES, "split"),
                         rx_buffers=16)
    try:
        drv.init()
        if drv.features & bits(NetF.MRG_RXBUF, NetF.HASH_REPORT):
            pytest.fail(f"{name}: the driver took a feature that changes the header ({drv.features:#x})")
        cases = _rx_cases(drv.mac())
        ring = drv.queues[drv.RX]
        for i, case in enumerate(cases):
            head = U16.unpack(mem.read(ring.avail_addr + ring.layout.avail_ring_entry(i), 2))[0]
            desc = ring.read_desc(head)
            written = NetHdr(case.hdr.flags, case.hdr.gso_type, case.hdr.hdr_len, case.hdr.gso_size,
                             case.hdr.csum_start, case.hdr.csum_offset, 1).pack() + case.frame
            assert len(written) <= desc.len, "receive buffer smaller than a frame"
            mem.write(desc.addr, written)
            mem.write(ring.used_addr + ring.layout.used_ring_entry(i), USED_ELEM.pack(head, len(written)))
        mem.write(ring.used_addr + 2, U16.pack(len(cases)))
        os.eventfd_write(drv.irq_fds["rx"], 1)
        got = drv.receive_raw(len(cases), timeout=bench.deadlines.wait(1.0))
    finally:
        drv.close()
    delivered = [(f.frame, f.checksum) for f in got] + [None] * (len(cases) - len(got))
    _judge(verdict, rx_findings(cases, delivered[:len(cases)]), RX_IDS, name,
           f"{len(cases)} frames written behind {HDR_SIZE}-byte headers, {len(got)} delivered")


# --- receive queues with VIRTIO_NET_F_MQ ------------------------------------------------------------------

#: Offered besides the target's own offer where it is configurable, with this many queue pairs.
MQ_EXTRA = bits(NetF.CTRL_VQ, NetF.MQ)
MQ_PAIRS = 3


@pytest.mark.ring_layout("split")
@pytest.mark.req("NET-DRV-57")
def test_guest_driver_stocks_every_receive_queue(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    """VIRTIO_NET_F_MQ negotiated: after VQ_PAIRS_SET of every pair the device has, each receive queue it may use
    holds buffers available, read from the rings the driver programmed (avail idx against used idx)."""
    name = "guest driver with MQ (split rings)"
    dev = bench.open(variant_spec(bench, MQ_EXTRA, MQ_PAIRS))
    trace = TracingPciDevice(dev)
    wanted = layout_features(DEFAULT_FEATURES & ~bits(F.EVENT_IDX) | MQ_EXTRA, "split")
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=wanted)
    try:
        drv.init()
        if not has(drv.features, NetF.MQ) or drv.control is None:
            verdict.not_offered("NET-DRV-57", f"{name}: VIRTIO_NET_F_MQ with CTRL_VQ not offered ({drv.offered:#x})")
            return
        ctl = drv.control
        ctl.ack_timeout = bench.deadlines.wait(ACK_TIMEOUT)
        ack = ctl.vq_pairs_set(ctl.max_virtqueue_pairs)
        pairs = ctl.virtqueue_pairs
        parts = _ring_parts(_events(trace))
        outstanding = {}
        for q in range(0, 2 * pairs, 2):
            avail, used = parts[(q, CommonCfg.QUEUE_DRIVER)], parts[(q, CommonCfg.QUEUE_DEVICE)]
            outstanding[q] = (U16.unpack(mem.read(avail + 2, 2))[0] - U16.unpack(mem.read(used + 2, 2))[0]) & 0xFFFF
    finally:
        drv.close()
    _judge(verdict, stocked_findings(outstanding, pairs), ("NET-DRV-57",), name,
           f"VQ_PAIRS_SET {ctl.max_virtqueue_pairs} acked {ack}, {pairs} pairs in use: {outstanding}")
