"""virtio-net driver rows (NET-DRV, 5.1.4.2, 5.1.9.2.1, 5.1.9.3.1) judged on the bench's drivers by the monitors.

The drivers under test are the guest driver (``testbenches.driver.virtio_net.GuestNetDriver``, on both ring layouts)
and the vDPA path (the backend's ``VirtioPciVdpaDevice`` under the bench's frontend, ``VdpaFrontend``, which makes
the buffers as a vhost-user frontend would). Each runs on the target through the register trace; the ring monitors
hand every buffer made available to the virtio-net rules (:mod:`testbenches.monitor.net_hdr_rules`): the header of
each transmit buffer, the frame after it, the size of each receive buffer. The register trace gives the feature
choices and the device-config accesses.

The feature-choice rows need offers the target may not make (VIRTIO_NET_F_STANDBY, HASH_REPORT, CTRL_RX_EXTRA): the
offer is shown to the driver through a proxy (:class:`ShownOffer`), on every target alike, and the driver's
driver_feature write reaches the device without the bits only shown. VIRTIO_NET_F_MAC and VIRTIO_NET_F_STATUS are
withheld the same way for the rows about their absence. A row a run gave no opportunity is not claimed: the evidence
of every judged row says how many buffers were looked at.

The transmit offload rows (:mod:`testbenches.monitor.net_offload_rules`: NEEDS_CSUM, host GSO, ECN, hdr_len) are
judged where the guest driver offloads (:func:`test_guest_driver_gso_headers`, host GSO asked of a configurable
target): the other runs send complete frames behind the default header, whose hdr_len 0 (as Linux writes for a
packet without GSO) NET-DRV-42's SHOULD would judge against the bench's traffic helpers rather than a driver.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import checksum, str2mac

from backend.drivers.transport import VirtioPciModern
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.pci.abilities import Lacking
from backend.pci.device import PciDevice
from backend.virtio.features import F, NetF, bits, has
from backend.virtio.net_hdr import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    HDR_SIZE,
    NetHdr,
)
from backend.virtio.pci_regs import CommonCfg, NetCfg
from sim.memory import GuestMemory
from testbenches.conformance.deadlines import Deadlines
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout as RingLayout
from testbenches.driver.layout import layout_features
from testbenches.driver.vdpa_frontend import VdpaFrontend, exchange_frames
from testbenches.driver.virtio_net import DEFAULT_FEATURES, ETH_DATA_LEN, ETH_HLEN, GuestNetDriver
from testbenches.frames import test_frame
from testbenches.monitor import Access, PackedRingMonitor, SplitRingMonitor, TracingPciDevice, VirtioPciDriverMonitor
from testbenches.monitor.net_hdr_rules import (
    NET_DRV_BUFFER_ROWS,
    NET_DRV_REGISTER_ROWS,
    NetBufferMonitor,
    register_findings,
)
from testbenches.monitor.net_offload_rules import NET_DRV_OFFLOAD_ROWS, net_drv_48
from testbenches.monitor.virtio_pci_rules import Layout, verdicts_of

MEM = 8 << 20
QSIZE = 64
#: Offered to the driver (shown where the target lacks them) for the feature-choice rows: STANDBY to be taken
#: (NET-DRV-10), HASH_REPORT and CTRL_RX_EXTRA not to be taken without CTRL_VQ (NET-DRV-13/14).
SHOWN = bits(NetF.STANDBY, NetF.HASH_REPORT, NetF.CTRL_RX_EXTRA)
#: Receive buffers with VIRTIO_NET_F_MRG_RXBUF: smaller than a frame, so frames arrive in several.
MERGED_RX_SIZE = 256
#: Rows judged on the driver's own address: with MAC the mac field, without it a locally administered one.
MAC_ROWS = ("NET-DRV-03", "NET-DRV-04")
LINK_ROWS = ("NET-DRV-05", "NET-DRV-06")
BUFFER_ROWS = tuple(r for r in NET_DRV_BUFFER_ROWS if r not in MAC_ROWS)
#: Features that widen struct virtio_net_hdr past 12 bytes (5.1.6.1).
HEADER_WIDENING = (NetF.HASH_REPORT, NetF.HOST_UDP_TUNNEL_GSO, NetF.GUEST_UDP_TUNNEL_GSO, NetF.OUT_NET_HEADER,
                   NetF.IPSEC)
#: Host GSO offered to the guest driver for the offload rows (a configurable target is asked for them; with ECN and
#: GUEST_HDRLEN in one run, without in the other: NET-DRV-24 / 25, 41 / 42).
HOST_GSO = bits(NetF.CSUM, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_UFO, NetF.HOST_USO)
ECN_HDRLEN = bits(NetF.HOST_ECN, NetF.GUEST_HDRLEN)
#: NET-DRV-39 (NEEDS_CSUM with every GSO request) has its first opportunity here; NET-DRV-48 is judged on this
#: driver because it writes exact header lengths.
GSO_ROWS = (*NET_DRV_OFFLOAD_ROWS, "NET-DRV-39", "NET-DRV-48")
#: Config interrupt wait after a link change (the target raises it at once; a slow one within this; nominal).
LINK_WAIT = 2.0


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


class ShownOffer(TracingPciDevice):
    """The target with its offer edited as the driver reads it (``add`` shown, ``hide`` withheld), the trace
    recording what the driver saw and wrote. Its driver_feature writes reach the device without the bits that were
    only shown, so the device is never asked for a feature it does not have and the run goes on to DRIVER_OK and
    traffic."""

    def __init__(self, inner: PciDevice, *, hide: int = 0, add: int = 0) -> None:
        super().__init__(inner)
        self.common = Layout.discover(self).common
        self.hide, self.add = hide, add
        self._select = {CommonCfg.DEVICE_FEATURE_SELECT: 0, CommonCfg.DRIVER_FEATURE_SELECT: 0}

    def _field(self, index: int, offset: int) -> int | None:
        return offset - self.common.offset if index == self.common.bar and self.common.contains(
            Access(0, "r", index, offset, 1, b"")) else None

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        rel = self._field(index, offset)
        if rel in self._select:
            self._select[CommonCfg(rel)] = int.from_bytes(data, "little")
        if rel == CommonCfg.DRIVER_FEATURE and len(data) == 4:
            self._record("w", index, offset, bytes(data))
            shift = 32 * self._select[CommonCfg.DRIVER_FEATURE_SELECT]
            window = int.from_bytes(data, "little") & ~(self.add >> shift) & 0xFFFFFFFF
            self.inner.region_write(index, offset, window.to_bytes(4, "little"))
            return
        super().region_write(index, offset, data)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if self._field(index, offset) != CommonCfg.DEVICE_FEATURE or size != 4:
            return super().region_read(index, offset, size)
        shift = 32 * self._select[CommonCfg.DEVICE_FEATURE_SELECT]
        window = (int.from_bytes(self.inner.region_read(index, offset, size), "little") | self.add >> shift) \
            & ~(self.hide >> shift) & 0xFFFFFFFF
        data = window.to_bytes(4, "little")
        self._record("r", index, offset, data)
        return data


def _shown(bench: Bench, *, hide: int = 0, show: int = 0) -> ShownOffer:
    """A fresh target behind :class:`ShownOffer`: ``show`` added where the device does not offer it already."""
    dev = bench.open()
    offer = VirtioPciModern(dev).device_features()
    return ShownOffer(dev, hide=hide, add=show & ~offer)


def _judge(verdict: Verdict, verdicts: dict[str, tuple[bool, list[str]]], ids: Sequence[str], name: str,
           seen: str) -> list[str]:
    """Record every id the run judged (evidence: what was looked at, the failures); returns the ids judged."""
    judged = []
    for rid in ids:
        if rid in verdicts:
            ok, evidence = verdicts[rid]
            verdict.check(rid, ok, f"{name}: {seen}; " + "; ".join(evidence[:5]))
            judged.append(rid)
    return judged


def _frames(src: bytes, mtu: int | None) -> list[bytes]:
    """Frames from the driver's address: the shortest, a middling one, the longest the mtu allows (UDP without a
    checksum), and TCP and UDP segments with theirs (NET-DRV-18 without VIRTIO_NET_F_CSUM)."""
    longest = (mtu if mtu is not None else ETH_DATA_LEN) + ETH_HLEN
    l3 = Ether(src=str2mac(src), dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
    return [*(test_frame(seq, length, src=src) for seq, length in enumerate((60, 342, longest, 60))),
            bytes(l3 / TCP(sport=49152, dport=9, flags="PA") / bytes(range(64))),
            bytes(l3 / UDP(sport=49152, dport=9) / bytes(range(100)))]


def _traffic(drv: GuestNetDriver, looped: bool, frames: Sequence[bytes], deadlines: Deadlines) -> str:
    """Send ``frames`` (and take them back where the wire loops): what happened, for the evidence."""
    wait = deadlines.wait(5.0)
    if looped:
        got = drv.exchange(frames, timeout=wait)
        drv.wait_tx_done(timeout=wait)
        return f"{len(frames)} frames sent, {len(got)} received back (within {deadlines.explain(5.0)})"
    drv.send(frames, timeout=wait)
    drv.wait_tx_done(timeout=wait)
    return f"{len(frames)} frames sent (the wire does not loop: receive buffers posted, none filled)"


def _ring_monitor(trace: TracingPciDevice, mem: GuestMemory,
                  layout: RingLayout) -> SplitRingMonitor | PackedRingMonitor:
    return SplitRingMonitor.attach(trace, mem.read) if layout == "split" else PackedRingMonitor.attach(trace, mem.read)


def _net(rings: SplitRingMonitor | PackedRingMonitor) -> NetBufferMonitor:
    assert rings.net is not None, "the ring monitor feeds no virtio-net monitor"
    return rings.net


@pytest.mark.req(*BUFFER_ROWS, *NET_DRV_REGISTER_ROWS, "NET-DRV-03")
@pytest.mark.parametrize("merged", [pytest.param(False, id="whole_rx_buffers"),
                                    pytest.param(True, id="mrg_rxbuf")])
def test_guest_driver_headers_and_buffers(bench: Bench, verdict: Verdict, mem: GuestMemory, merged: bool,
                                          ring_layout: RingLayout) -> None:
    """The guest driver brought up with VIRTIO_NET_F_STANDBY, HASH_REPORT and CTRL_RX_EXTRA offered (shown where the
    target lacks them), with or without MRG_RXBUF; frames from its own address up to the mtu, both ways where the
    wire loops, and a second bring-up after a reset: every transmit header, frame and receive buffer judged."""
    name = f"guest driver ({ring_layout} rings, {'MRG_RXBUF' if merged else 'no MRG_RXBUF'})"
    ids = (*BUFFER_ROWS, *NET_DRV_REGISTER_ROWS, "NET-DRV-03")
    looped = bench.wire().looped
    trace = _shown(bench, show=SHOWN)
    rings = _ring_monitor(trace, mem, ring_layout)
    wanted = DEFAULT_FEATURES | (bits(NetF.MRG_RXBUF) if merged else 0)
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(wanted, ring_layout),
                         merged_rx_size=MERGED_RX_SIZE if merged else None)
    try:
        drv.init()
        offered, negotiated = drv.offered, drv.features
        if has(negotiated, F.RING_PACKED) != (ring_layout == "packed"):
            for rid in ids:
                verdict.not_offered(rid, f"{name}: the target offers {offered:#x}, without RING_PACKED")
            return
        if has(negotiated, NetF.MRG_RXBUF) != merged:  # the run is about MRG_RXBUF's buffers: the rest is the other's
            verdict.not_offered("NET-DRV-55", f"{name}: VIRTIO_NET_F_MRG_RXBUF not offered ({offered:#x})")
            return
        did = [_traffic(drv, looped, _frames(drv.mac(), drv.mtu()), bench.deadlines)]
        drv.reset()  # a second bring-up: the feature choice and the buffers again
        drv.init()
        did.append(_traffic(drv, looped, _frames(drv.mac(), drv.mtu()), bench.deadlines))
        rings.inspect()
    finally:
        drv.close()
    net = _net(rings)
    seen = f"{net.seen()} ({'; '.join(did)}); negotiated {negotiated:#x}"
    _judge(verdict, net.verdicts(), ids, name, seen)
    _judge(verdict, verdicts_of(register_findings(VirtioPciDriverMonitor(trace))), NET_DRV_REGISTER_ROWS, name,
           f"2 bring-ups, offer as read {offered:#x}")
    if not has(negotiated, NetF.MAC):
        verdict.not_offered("NET-DRV-03", f"{name}: VIRTIO_NET_F_MAC not offered ({offered:#x})")


@pytest.mark.req("NET-DRV-04", "NET-DRV-16", "NET-DRV-56")
def test_guest_driver_without_mac_uses_a_local_address(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                                       ring_layout: RingLayout) -> None:
    """VIRTIO_NET_F_MAC withheld: the frames the guest driver sends from its own address carry a locally
    administered unicast source MAC."""
    name = f"guest driver without VIRTIO_NET_F_MAC ({ring_layout} rings)"
    looped = bench.wire().looped
    trace = _shown(bench, hide=bits(NetF.MAC))
    rings = _ring_monitor(trace, mem, ring_layout)
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES, ring_layout))
    try:
        drv.init()
        if has(drv.features, F.RING_PACKED) != (ring_layout == "packed"):
            for rid in ("NET-DRV-04", "NET-DRV-16", "NET-DRV-56"):
                verdict.not_offered(rid, f"{name}: the target offers {drv.offered:#x}")
            return
        did = _traffic(drv, looped, _frames(drv.mac(), drv.mtu())[:3], bench.deadlines)
    finally:
        drv.close()
    net = _net(rings)
    _judge(verdict, net.verdicts(), ("NET-DRV-04", "NET-DRV-16", "NET-DRV-56"), name, f"{net.seen()} ({did})")


@pytest.mark.req(*LINK_ROWS)
@pytest.mark.parametrize("status", [pytest.param(True, id="status", marks=pytest.mark.req("NET-DRV-06")),
                                    pytest.param(False, id="no_status", marks=pytest.mark.req("NET-DRV-05"))])
def test_guest_driver_link_state(bench: Bench, verdict: Verdict, mem: GuestMemory, status: bool) -> None:
    """The link pulled and plugged at the target's port: with VIRTIO_NET_F_STATUS the guest driver's link state
    follows bit 0 of status after each configuration change interrupt; with STATUS withheld it stays up."""
    rid = "NET-DRV-06" if status else "NET-DRV-05"
    dev = bench.open()
    port = dev.abilities().port
    if isinstance(port, Lacking):
        verdict.not_applicable(rid, f"the link cannot be changed from the bench: {port.why}")
        return
    trace = ShownOffer(dev, hide=0 if status else bits(NetF.STATUS))
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES, "split"))
    states: list[tuple[str, bool, bool]] = []
    try:
        drv.init()
        if status and not has(drv.features, NetF.STATUS):
            verdict.not_offered(rid, f"VIRTIO_NET_F_STATUS not offered ({drv.offered:#x})")
            return
        states.append(("up", True, drv.link_up()))
        for up in (False, True):
            port.set_link(up)
            interrupted = drv.config_changed(bench.deadlines.wait(LINK_WAIT))
            states.append((f"{'plugged' if up else 'pulled'} (config interrupt: "
                           f"{interrupted or f'none within {bench.deadlines.explain(LINK_WAIT)}'})",
                           up if status else True, drv.link_up()))
    finally:
        port.set_link(True)
        drv.close()
    wrong = [f"{what}: driver says {'up' if got else 'down'}" for what, want, got in states if want != got]
    with_status = "from status bit 0" if status else "as up without VIRTIO_NET_F_STATUS"
    verdict.check(rid, not wrong, f"link state {with_status} over {len(states)} samples: {wrong}")


@pytest.mark.req(*BUFFER_ROWS, "NET-DRV-01", "NET-DRV-03")
@pytest.mark.parametrize("merged", [pytest.param(False, id="whole_rx_buffers"),
                                    pytest.param(True, id="mrg_rxbuf")])
def test_vdpa_frontend_headers_and_buffers(bench: Bench, verdict: Verdict, mem: GuestMemory, merged: bool) -> None:
    """The vDPA path: the backend's driver brought up under the bench's frontend (the whole device config read as a
    frontend's GET_CONFIG asks it), frames from the mac field both ways; the monitor looks at the rings after each
    publish, before the kick (which travels by ioeventfd, past the trace). NET-DRV-01 is the vDPA driver's (no
    device-config write); the buffers are the frontend's."""
    name = f"vDPA driver under the bench's frontend ({'MRG_RXBUF' if merged else 'no MRG_RXBUF'})"
    ids = (*BUFFER_ROWS, "NET-DRV-03")
    looped = bench.wire().looped
    trace = TracingPciDevice(bench.open())
    rings = SplitRingMonitor.attach(trace, mem.read)
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    front = VdpaFrontend(vdpa, mem)
    try:
        offered = vdpa.get_device_features()
        if merged and not has(offered, NetF.MRG_RXBUF):
            verdict.not_offered("NET-DRV-55", f"{name}: VIRTIO_NET_F_MRG_RXBUF not offered ({offered:#x})")
            return
        # The bench's frontend: split rings, no IN_ORDER batching, the 12-byte header (no feature that widens it).
        wanted = offered & ~bits(F.RING_PACKED, F.IN_ORDER, *HEADER_WIDENING, *(() if merged else (NetF.MRG_RXBUF,)))
        front.bring_up(wanted, queues=(0, 1), size=QSIZE)
        negotiated = front.features
        config = vdpa.get_config(0, vdpa.get_config_size())
        mac = config[NetCfg.MAC:NetCfg.MAC + 6] if has(negotiated, NetF.MAC) else bytes.fromhex("020000000001")
        mtu = int.from_bytes(config[NetCfg.MTU:NetCfg.MTU + 2], "little") if has(negotiated, NetF.MTU) else None
        frames = _frames(mac, mtu)

        def kick(q: int) -> None:
            if front.rings[q].publish():
                rings.inspect()
                os.eventfd_write(front.kicks[q], 1)
            else:
                rings.inspect()

        buf = max(2048, (mtu or ETH_DATA_LEN) + ETH_HLEN + HDR_SIZE)  # a whole frame per buffer either way
        got = exchange_frames(front.rings[0], front.rings[1], front.calls[0], front.calls[1],
                              lambda: kick(0), lambda: kick(1), frames, 5.0 if looped else 0.2, buf)
        vdpa.reset()
    finally:
        vdpa.close()
        front.close()
    net = _net(rings)
    moved = f"{len(frames)} frames sent, {len(got)} received" if looped else f"{len(frames)} frames sent"
    _judge(verdict, net.verdicts(), ids, name, f"{net.seen()} ({moved}); negotiated {negotiated:#x}")
    _judge(verdict, verdicts_of(register_findings(VirtioPciDriverMonitor(trace))), ("NET-DRV-01",), name,
           "1 bring-up with the whole device config read")


def _offloaded(l3: Packet, l4: Packet, payload: bytes, src: bytes, gso_type: int,
               gso_size: int) -> tuple[NetHdr, bytes]:
    """A packet as a driver leaving its transport checksum (and, with ``gso_type``, its segmentation) to the device
    hands it over: the pseudo-header sum in the checksum field (NET-DRV-36), csum_start/csum_offset at it, hdr_len
    the exact header length (NET-DRV-41/42), NEEDS_CSUM (NET-DRV-39)."""
    pkt = Ether(bytes(Ether(src=str2mac(src), dst="02:00:00:00:00:02") / l3 / l4 / payload))
    frame = bytes(pkt)
    v6 = pkt.haslayer(IPv6)
    start = ETH_HLEN + (40 if v6 else 4 * int(pkt[IP].ihl))
    tcp = pkt.haslayer(TCP)
    offset, proto = (16, 6) if tcp else (6, 17)
    length = len(frame) - start
    pseudo = frame[22:54] + length.to_bytes(4, "big") + bytes((0, 0, 0, proto)) if v6 else \
        frame[26:34] + bytes((0, proto)) + length.to_bytes(2, "big")
    at = start + offset
    frame = frame[:at] + (~checksum(pseudo) & 0xFFFF).to_bytes(2, "big") + frame[at + 2:]
    hlen = start + (4 * int(pkt[TCP].dataofs) if tcp else 8)
    return NetHdr(F_NEEDS_CSUM, gso_type, hlen, gso_size, start, offset), frame


def _gso_traffic(src: bytes, mtu: int | None, negotiated: int) -> list[tuple[NetHdr, bytes]]:
    """A GSO packet of each kind negotiated (TCP with CWR and GSO_ECN where HOST_ECN is), gso_size the MSS the mtu
    gives, and two packets with only the checksum left to the device."""
    mtu = mtu or ETH_DATA_LEN
    v4, v6 = IP(src="10.0.0.1", dst="10.0.0.2"), IPv6(src="fd00::1", dst="fd00::2")
    ecn = has(negotiated, NetF.HOST_ECN)
    tcp = TCP(sport=49152, dport=9, seq=1, flags="CPA" if ecn else "PA")
    kinds = [(NetF.HOST_TSO4, v4, tcp, GSO_TCPV4 | (GSO_ECN if ecn else 0), mtu - 40),
             (NetF.HOST_TSO6, v6, tcp, GSO_TCPV6 | (GSO_ECN if ecn else 0), mtu - 60),
             (NetF.HOST_UFO, v4, UDP(sport=49152, dport=9), GSO_UDP, (mtu - 20) & ~7),
             (NetF.HOST_USO, v6, UDP(sport=49152, dport=9), GSO_UDP_L4, mtu - 48)]
    out = [_offloaded(l3, l4, bytes(range(256)) * 16, src, gso, size) for f, l3, l4, gso, size in kinds
           if has(negotiated, f)]
    return [*out, _offloaded(v4, UDP(sport=49152, dport=9), bytes(200), src, GSO_NONE, 0),
            _offloaded(v6, TCP(sport=49152, dport=9, flags="PA"), bytes(100), src, GSO_NONE, 0)]


@pytest.mark.req(*GSO_ROWS)
@pytest.mark.parametrize("ecn_hdrlen", [pytest.param(True, id="ecn_hdrlen"), pytest.param(False, id="plain_gso")])
def test_guest_driver_gso_headers(bench: Bench, verdict: Verdict, mem: GuestMemory, ecn_hdrlen: bool,
                                  ring_layout: RingLayout) -> None:
    """The guest driver with host GSO negotiated (a configurable target is asked for HOST_TSO4/TSO6/UFO/USO, and in
    one run HOST_ECN and GUEST_HDRLEN, which this driver takes: it writes exact header lengths): a GSO packet of each
    kind and two checksum-offloaded ones, each behind the header a driver offloading them writes; the monitors
    judge every header and frame, the register trace the GUEST_HDRLEN choice."""
    name = f"guest driver with host GSO{', HOST_ECN and GUEST_HDRLEN' if ecn_hdrlen else ''} ({ring_layout} rings)"
    extra = HOST_GSO | (ECN_HDRLEN if ecn_hdrlen else 0)
    spec = None
    if bench.configurable:
        with bench.rig() as probe:
            spec = bench.variant(replace=True, features=f"{probe.offered | extra:#x}")
    trace = TracingPciDevice(bench.open(spec))
    rings = _ring_monitor(trace, mem, ring_layout)
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=layout_features(DEFAULT_FEATURES | extra, ring_layout))
    try:
        drv.init()
        negotiated = drv.features
        if has(negotiated, F.RING_PACKED) != (ring_layout == "packed"):
            for rid in GSO_ROWS:
                verdict.not_offered(rid, f"{name}: the target offers {drv.offered:#x}, without RING_PACKED")
            return
        if not negotiated & (HOST_GSO & ~bits(NetF.CSUM)):
            for rid in GSO_ROWS:
                verdict.not_offered(rid, f"{name}: no host GSO feature offered ({drv.offered:#x})")
            return
        traffic = _gso_traffic(drv.mac(), drv.mtu(), negotiated)
        for hdr, frame in traffic:
            drv.send([frame], hdr=hdr, timeout=bench.deadlines.wait(5.0))
        done = drv.wait_tx_done(timeout=bench.deadlines.wait(5.0))
        rings.inspect()
    finally:
        drv.close()
    net = _net(rings)
    seen = (f"{net.seen()} ({len(traffic)} packets sent, all used within {bench.deadlines.explain(5.0)}: {done}); "
            f"negotiated {negotiated:#x}")
    _judge(verdict, net.verdicts(), GSO_ROWS, name, seen)
    ev = VirtioPciDriverMonitor(trace).events()
    choices = [f for offered, acked in VirtioPciDriverMonitor(trace).feature_timeline(ev)[2]
               if (f := net_drv_48(offered, acked)) is not None]
    _judge(verdict, verdicts_of(choices), ("NET-DRV-48",), name, "the feature choice at FEATURES_OK")
    for rid in GSO_ROWS:
        if not verdict.recorded(rid):
            verdict.not_applicable(rid, f"{name}: the run gave it no opportunity ({seen})")


#: Guest GSO asked of a configurable target for NET-DRV-53 (receive buffers for the largest coalesced packet).
GUEST_GSO = bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_USO4, NetF.GUEST_USO6)
GUEST_GSO_RX_BUFFERS = 8


@pytest.mark.req("NET-DRV-53")
def test_guest_driver_gso_rx_buffers(bench: Bench, verdict: Verdict, mem: GuestMemory,
                                     ring_layout: RingLayout) -> None:
    """The guest driver with guest GSO negotiated and MRG_RXBUF not (a configurable target is asked for GUEST_CSUM,
    GUEST_TSO4/6 and GUEST_USO4/6; MRG_RXBUF is not wanted): every receive buffer it makes available holds 65601
    bytes or more (65609 with HASH_REPORT) (NET-DRV-53), judged by the ring monitors on each buffer; frames are
    exchanged where the wire loops so buffers are made available again after use."""
    name = f"guest driver with guest GSO, no MRG_RXBUF ({ring_layout} rings)"
    spec = None
    if bench.configurable:
        with bench.rig() as probe:
            spec = bench.variant(replace=True, features=f"{probe.offered | GUEST_GSO:#x}")
    trace = TracingPciDevice(bench.open(spec))
    rings = _ring_monitor(trace, mem, ring_layout)
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, rx_buffers=GUEST_GSO_RX_BUFFERS,
                         features=layout_features(DEFAULT_FEATURES | GUEST_GSO, ring_layout))
    try:
        drv.init()
        negotiated = drv.features
        if has(negotiated, F.RING_PACKED) != (ring_layout == "packed") or not negotiated & GUEST_GSO & ~bits(
                NetF.GUEST_CSUM):
            verdict.not_offered("NET-DRV-53", f"{name}: the target offers {drv.offered:#x} (guest GSO or the ring "
                                              "layout lacking)")
            return
        did = _traffic(drv, bench.wire().looped, _frames(drv.mac(), drv.mtu()), bench.deadlines)
        rings.inspect()
    finally:
        drv.close()
    net = _net(rings)
    seen = f"{net.seen()} ({did}); negotiated {negotiated:#x}"
    if not _judge(verdict, net.verdicts(), ("NET-DRV-53",), name, seen):
        verdict.not_applicable("NET-DRV-53", f"{name}: no receive buffer was made available ({seen})")
