"""virtio-net host UDP-tunnel GSO: transmit segmentation of encapsulated flows (5.1.6.2 HOST_UDP_TUNNEL_GSO and
HOST_UDP_TUNNEL_GSO_CSUM; rows of 5.1.9.2.2 and the dependency table of 5.1.3.1).

VXLAN and GENEVE packets over UDP over IPv4/IPv6 around an inner TCP or UDP flow over IPv4/IPv6 are built with scapy
and handed to the device as a driver offloading their segmentation does (5.1.9.2.1: NEEDS_CSUM with the inner
pseudo-header sum in the inner transport checksum, gso_type the inner kind plus the tunnel bit of the inner network
protocol, outer_th_offset / inner_nh_offset, with VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM the outer pseudo-header sum in the
outer UDP checksum, else 0). What the loopback brings back is judged with scapy:

- NET-DEV-21 (the device does not depend on hdr_len): every packet also sent with a random hdr_len; both sends must
  come back as correct segments (inner: as plain GSO, :mod:`checks.test_net_gso`; outer: IP lengths and header
  checksum, UDP length, the outer UDP checksum complete and correct with UDP_TUNNEL_CSUM, 0 or correct without it,
  the tunnel header and addresses as sent) and the same;
- NET-DEV-22 / 24 / 25: a packet with both tunnel bits, a tunnel bit with NEEDS_CSUM clear, with DATA_VALID, with no
  inner gso_type, UDP_TUNNEL_CSUM without a tunnel bit: none may appear on the wire. Each is followed by a plain
  frame on the same queue: that frame coming back, and nothing before it, is the evidence;
- NET-DEV-23: without a tunnel bit, garbage outer_th_offset / inner_nh_offset change nothing on the wire (a plain
  TSO packet, a checksum-offloaded one and one without offload, each sent with zero and with random offsets).

NETFEAT-DEV-07/08 are judged on the offer the check runs with (a configurable target is asked for the tunnel GSO
features). Guest offloads, GUEST_HDRLEN and MRG_RXBUF stay off, so each segment comes back as one packet, as sent.
The device rows run on both ring layouts (``ring_layout``).

The driver rows NET-DRV-27/28/29/30/44/46/47 are judged on the bench's guest driver sending such packets (with and
without HOST_UDP_TUNNEL_GSO_CSUM) by the ring monitors (:mod:`testbenches.monitor.net_offload_rules`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet
from scapy.utils import checksum

import testbenches.conformance.checks.test_net_gso as plain
from backend.virtio.features import NetF, bits, has
from backend.virtio.net_hdr import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    TUNNEL_FIELDS,
    TUNNEL_FIELDS_AT,
    NetHdr,
)
from sim.memory import GuestMemory
from testbenches.conformance.chains import written_bytes
from testbenches.conformance.harness import GUEST_MEMORY_BASE, RING_MEM_SIZE, Bench, Rig
from testbenches.conformance.offers import judge_offer
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.monitor import SplitRingMonitor, TracingPciDevice
from testbenches.monitor.net_offload_rules import NET_DRV_TUNNEL_ROWS

TUNNEL_GSO = bits(NetF.CSUM, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_USO, NetF.HOST_UDP_TUNNEL_GSO,
                  NetF.HOST_UDP_TUNNEL_GSO_CSUM)
FEATURE_IDS = ("NETFEAT-DEV-07", "NETFEAT-DEV-08")
REJECT_IDS = ("NET-DEV-22", "NET-DEV-24", "NET-DEV-25")
TX_IDS = ("NET-DEV-21", *REJECT_IDS, "NET-DEV-23")
IDS = (*TX_IDS, *FEATURE_IDS)
DEV_MAC, PEER_MAC = plain.DEV_MAC, plain.PEER_MAC
VXLAN_PORT, GENEVE_PORT = 4789, 6081
#: outer IP, outer UDP, tunnel header (VXLAN and GENEVE without options: 8 bytes), inner Ethernet
TUNNEL_HLEN = 8


@dataclass(frozen=True)
class Case:
    """One tunnel packet: outer / inner IPv6, inner TCP (else UDP_L4), GENEVE (else VXLAN), payload length,
    gso_size, UDP_TUNNEL_CSUM, the odd hdr_len."""

    outer_v6: bool
    inner_v6: bool
    tcp: bool
    geneve: bool
    size: int
    mss: int
    csum: bool
    odd_hdr_len: int = 0

    @property
    def what(self) -> str:
        return (f"{'GENEVE' if self.geneve else 'VXLAN'} over {'IPv6' if self.outer_v6 else 'IPv4'} around "
                f"{'TCP' if self.tcp else 'UDP'}/{'IPv6' if self.inner_v6 else 'IPv4'}, {self.size} bytes of "
                f"payload, gso_size {self.mss}{', UDP_TUNNEL_CSUM' if self.csum else ''}")


@dataclass(frozen=True)
class Sent:
    pkt: Packet  # complete, outer UDP checksum as scapy computes it
    partial: bytes  # as the driver hands it
    hdr: NetHdr
    offsets: tuple[int, int]  # outer_th_offset, inner_nh_offset
    inner: Packet  # the inner frame, complete


def header(hdr: NetHdr, hdr_len: int, offsets: tuple[int, int]) -> bytes:
    """The virtio_net_hdr bytes of ``hdr`` with outer_th_offset / inner_nh_offset (the header holds them)."""
    raw = bytearray(hdr.pack().ljust(hdr_len, b"\0"))
    TUNNEL_FIELDS.pack_into(raw, TUNNEL_FIELDS_AT, *offsets)
    return bytes(raw)


def _pseudo_sum(full: bytes, v6: bool, nh: int, proto: int, length: int) -> int:
    """The (not inverted) ones-complement sum of the pseudo-header of the IP header at ``nh``."""
    pseudo = full[nh + 8:nh + 40] + length.to_bytes(4, "big") + bytes((0, 0, 0, proto)) if v6 else \
        full[nh + 12:nh + 20] + bytes((0, proto)) + length.to_bytes(2, "big")
    return ~checksum(pseudo) & 0xFFFF


def build(case: Case, rng: random.Random) -> Sent:
    il3: Packet = IPv6(src="fd01::1", dst="fd01::2") if case.inner_v6 else IP(src="10.1.0.1", dst="10.1.0.2",
                                                                              id=rng.randrange(0x10000))
    il4: Packet = TCP(sport=5000, dport=80, seq=rng.randrange(2**32), ack=7, flags="PA") if case.tcp else \
        UDP(sport=5000, dport=5001)
    inner = Ether(bytes(Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02") / il3 / il4 / rng.randbytes(case.size)))
    ol3: Packet = IPv6(src="fd00::1", dst="fd00::2") if case.outer_v6 else IP(src="10.0.0.1", dst="10.0.0.2",
                                                                              id=rng.randrange(0x10000))
    tun: Packet = GENEVE(vni=7, proto=0x6558) if case.geneve else VXLAN(vni=7)
    port = GENEVE_PORT if case.geneve else VXLAN_PORT
    pkt = Ether(bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / ol3 / UDP(sport=rng.randrange(49152, 65536), dport=port) /
                      tun / inner))
    full = bytearray(bytes(pkt))
    outer_th = 14 + (40 if case.outer_v6 else 20)
    inner_nh = outer_th + 8 + TUNNEL_HLEN + 14
    csum_start = inner_nh + (40 if case.inner_v6 else 20)
    csum_offset = 16 if case.tcp else 6
    proto = 6 if case.tcp else 17
    inner_sum = _pseudo_sum(bytes(full), case.inner_v6, inner_nh, proto, len(full) - csum_start)
    full[csum_start + csum_offset:csum_start + csum_offset + 2] = inner_sum.to_bytes(2, "big")
    outer_sum = _pseudo_sum(bytes(full), case.outer_v6, 14, 17, len(full) - outer_th) if case.csum else 0
    full[outer_th + 6:outer_th + 8] = outer_sum.to_bytes(2, "big")
    inner_gso = (GSO_TCPV6 if case.inner_v6 else GSO_TCPV4) if case.tcp else GSO_UDP_L4
    tunnel = GSO_UDP_TUNNEL_IPV6 if case.inner_v6 else GSO_UDP_TUNNEL_IPV4
    hdr_len = csum_start + (int(inner[TCP].dataofs) * 4 if case.tcp else 8)
    hdr = NetHdr(F_NEEDS_CSUM | (F_UDP_TUNNEL_CSUM if case.csum else 0), inner_gso | tunnel, hdr_len, case.mss,
                 csum_start, csum_offset)
    return Sent(pkt, bytes(full), hdr, (outer_th, inner_nh), inner)


def outer_problems(sent: Sent, n: int, raw: bytes) -> list[str]:
    """What is wrong with segment ``n``'s outer headers (empty: nothing)."""
    pkt = Ether(raw)
    outer_th, inner_nh = sent.offsets
    if not pkt.haslayer(UDP) or len(raw) < inner_nh:
        return [f"segment {n}: no outer UDP header"]
    wrong = []
    again = pkt.copy()
    for layer, name in ((IP, "len"), (IP, "chksum"), (IPv6, "plen"), (UDP, "len")):
        if again.haslayer(layer):
            delattr(again.getlayer(layer), name)  # the outer layer: getlayer finds the first
    fresh = bytes(Ether(bytes(again)))
    if fresh[:outer_th + 6] != raw[:outer_th + 6]:
        wrong.append(f"segment {n}: outer IP lengths, header checksum or UDP length not the segment's")
    udp_csum = int.from_bytes(raw[outer_th + 6:outer_th + 8], "big")
    correct = outer_checksum(raw, outer_th)
    if sent.hdr.flags & F_UDP_TUNNEL_CSUM:
        if udp_csum != correct:
            wrong.append(f"segment {n}: outer UDP checksum {udp_csum:#06x}, {correct:#06x} complete "
                         "(UDP_TUNNEL_CSUM)")
    elif udp_csum not in (0, correct):
        wrong.append(f"segment {n}: outer UDP checksum {udp_csum:#06x}, neither 0 nor the correct {correct:#06x}")
    if raw[outer_th + 8:inner_nh] != sent.partial[outer_th + 8:inner_nh] or \
            raw[outer_th:outer_th + 4] != sent.partial[outer_th:outer_th + 4]:
        wrong.append(f"segment {n}: outer ports or tunnel header changed")
    addresses = slice(22, 54) if outer_th == 54 else slice(26, 34)
    if raw[:12] != sent.partial[:12] or raw[addresses] != sent.partial[addresses]:
        wrong.append(f"segment {n}: outer MAC or IP addresses changed")
    return wrong


def outer_checksum(raw: bytes, outer_th: int) -> int:
    """The complete outer UDP checksum of ``raw`` (whatever its field holds now)."""
    udp = raw[outer_th:outer_th + 6] + b"\0\0" + raw[outer_th + 8:]
    pseudo = _pseudo_sum(raw, outer_th == 54, 14, 17, len(udp))
    return checksum(pseudo.to_bytes(2, "big") + udp) or 0xFFFF


def segment_problems(sent: Sent, mss: int, got: Sequence[bytes]) -> list[str]:
    """What is wrong with ``got`` as the segments of ``sent``: outer headers here, inner ones as plain GSO."""
    if not got:
        return ["nothing came back"]
    wrong: list[str] = []
    inner_got = []
    for n, raw in enumerate(got):
        wrong += outer_problems(sent, n, raw)
        inner_got.append(raw[sent.offsets[1] - 14:])
    kind = GSO_TCPV4 if sent.inner.haslayer(TCP) else GSO_UDP_L4
    inner_sent = plain.Sent(sent.inner, b"", NetHdr(gso_type=kind), "")
    return wrong + [f"inner: {w}" for w in plain.segment_problems(inner_sent, mss, inner_got)]


class Loop:
    """transmitq1 to receiveq1 through the loopback: receive buffers kept posted, what a run of chains became."""

    def __init__(self, rig: Rig) -> None:
        self.inner = plain.Loop(rig)
        self.rig = rig

    def send(self, chains: Sequence[tuple[bytes, bytes]], expect: int) -> list[bytes]:
        """Each (header bytes, frame) chain in turn: the frames received, up to ``expect`` and any just after."""
        rig, loop = self.rig, self.inner
        loop.post()
        sent = {}
        for head, frame in chains:
            t = rig.add_chain(rig.TX, [head, frame], [])
            sent[t.head] = t
        rig.publish(rig.TX)
        for done, _ in rig.complete(rig.TX, sent, len(sent)):
            rig.release(done)
        got = rig.complete(rig.RX, loop.pending, expect, timeout=0.5, expected=False)
        got += rig.complete(rig.RX, loop.pending, 1, timeout=plain.EXTRA_WAIT, expected=False)
        out = []
        for p, n in got:
            out.append(written_bytes(rig.mem, p, n)[rig.hdr_len:])
            rig.release(p)
        return out


def run_case(loop: Loop, verdict: Verdict, case: Case, rng: random.Random) -> None:
    sent = build(case, rng)
    expect = max(1, -(-case.size // case.mss))
    hdr_len = loop.rig.hdr_len
    clean = loop.send([(header(sent.hdr, hdr_len, sent.offsets), sent.partial)], expect)
    odd_hdr = NetHdr(sent.hdr.flags, sent.hdr.gso_type, case.odd_hdr_len, sent.hdr.gso_size, sent.hdr.csum_start,
                     sent.hdr.csum_offset)
    odd = loop.send([(header(odd_hdr, hdr_len, sent.offsets), sent.partial)], expect)
    wrong = [f"exact hdr_len {sent.hdr.hdr_len}: {w}" for w in segment_problems(sent, case.mss, clean)] + \
        [f"hdr_len {case.odd_hdr_len}: {w}" for w in segment_problems(sent, case.mss, odd)]
    same = clean == odd
    verdict.check("NET-DEV-21", not wrong and same,
                  f"{case.what}: {len(clean)} and {len(odd)} packets came back (exact hdr_len, hdr_len "
                  f"{case.odd_hdr_len}), {'the same' if same else 'not the same'}; "
                  f"{'; '.join(wrong[:4]) or 'each correct'}")


def marker(rng: random.Random) -> bytes:
    """A plain UDP frame sent after a packet the device must reject: it coming back first shows the other did not."""
    return bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / IP(src="10.9.0.1", dst="10.9.0.2") / UDP(sport=9, dport=9) /
                 rng.randbytes(32))


def judge_rejections(loop: Loop, verdict: Verdict, rng: random.Random) -> None:
    """NET-DEV-22/24/25: each invalid header on a tunnel packet (or, for 25, a plain GSO packet and a plain
    checksum-offloaded one), then a marker frame: only the marker may come back."""
    base = build(Case(False, False, True, False, 3000, 1000, True), rng)
    h = base.hdr
    plain_sent = plain.build(plain.Case(plain.KINDS[0], 3000, 1000), rng)
    ph = plain_sent.hdr
    bad: list[tuple[str, str, NetHdr, bytes, tuple[int, int]]] = [
        ("NET-DEV-22", "both tunnel bits", NetHdr(h.flags, h.gso_type | GSO_UDP_TUNNEL_IPV6, h.hdr_len, h.gso_size,
                                                  h.csum_start, h.csum_offset), base.partial, base.offsets),
        ("NET-DEV-24", "tunnel bit, NEEDS_CSUM clear", NetHdr(h.flags & ~F_NEEDS_CSUM, h.gso_type, h.hdr_len,
                                                                h.gso_size), base.partial, base.offsets),
        ("NET-DEV-24", "tunnel bit and DATA_VALID", NetHdr(h.flags | F_DATA_VALID, h.gso_type, h.hdr_len, h.gso_size,
                                                           h.csum_start, h.csum_offset), base.partial, base.offsets),
        ("NET-DEV-24", "tunnel bit, inner gso_type NONE", NetHdr(h.flags, GSO_NONE | GSO_UDP_TUNNEL_IPV4, h.hdr_len,
                                                                 h.gso_size, h.csum_start, h.csum_offset),
         base.partial, base.offsets),
        ("NET-DEV-25", "UDP_TUNNEL_CSUM on a plain TSO packet", NetHdr(ph.flags | F_UDP_TUNNEL_CSUM, ph.gso_type,
                                                                       ph.hdr_len, ph.gso_size, ph.csum_start,
                                                                       ph.csum_offset), plain_sent.partial, (0, 0)),
        ("NET-DEV-25", "UDP_TUNNEL_CSUM on a checksum-offloaded packet without GSO",
         NetHdr(F_NEEDS_CSUM | F_UDP_TUNNEL_CSUM, GSO_NONE, 0, 0, ph.csum_start, ph.csum_offset),
         bytes(plain.build(plain.Case(plain.KINDS[0], 200, 1000), rng).partial), (0, 0)),
    ]
    for rid, what, hdr, frame, offsets in bad:
        mark = marker(rng)
        got = loop.send([(header(hdr, loop.rig.hdr_len, offsets), frame), (header(NetHdr(), loop.rig.hdr_len, (0, 0)),
                                                                          mark)], 1)
        verdict.check(rid, got == [mark], f"{what} (flags {hdr.flags:#x}, gso_type {hdr.gso_type:#x}), then a plain "
                      f"frame: {len(got)} frame(s) came back, "
                      f"{'only the plain one' if got == [mark] else 'not just the plain one'}")


def judge_ignored_offsets(loop: Loop, verdict: Verdict, rng: random.Random) -> None:
    """NET-DEV-23: no tunnel bit, outer_th_offset / inner_nh_offset zero then random: the same on the wire."""
    tso = plain.build(plain.Case(plain.KINDS[0], 3000, 1000), rng)
    small = plain.build(plain.Case(plain.KINDS[1], 300, 1000), rng)
    cases = [("a TSO packet", tso.hdr, tso.partial, 3),
             ("a checksum-offloaded packet", NetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, small.hdr.csum_start,
                                                    small.hdr.csum_offset), small.partial, 1),
             ("a packet without offload", NetHdr(), bytes(small.pkt), 1)]
    for what, hdr, frame, count in cases:
        garbage = (rng.randrange(1, 0x10000), rng.randrange(1, 0x10000))
        zero = loop.send([(header(hdr, loop.rig.hdr_len, (0, 0)), frame)], count)
        odd = loop.send([(header(hdr, loop.rig.hdr_len, garbage), frame)], count)
        verdict.check("NET-DEV-23", bool(zero) and zero == odd,
                      f"{what} with outer_th_offset/inner_nh_offset 0 and {garbage}: {len(zero)} and {len(odd)} "
                      f"frames came back, {'the same' if zero == odd else 'not the same'}")






CASE = st.builds(Case, st.booleans(), st.booleans(), st.booleans(), st.booleans(), st.integers(0, 6000),
                 st.integers(300, 1300), st.booleans(), st.integers(0, 0xFFFF))


@pytest.mark.req(*IDS)
def test_tunnel_segmentation(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """HOST_UDP_TUNNEL_GSO and _CSUM negotiated: the rejections, the ignored offsets, then tunnel packets of each
    outer/inner kind and random ones, each sent with the exact hdr_len and a random one, judged with scapy."""
    with bench.rig(bench.offering(verdict, TUNNEL_GSO, ()) or bench.spec, mem_size=RING_MEM_SIZE) as rig:
        judge_offer(verdict, rig.offered, FEATURE_IDS)
        if not rig.offers(ring_layout, verdict, *TX_IDS):
            return
        feats = rig.features_for(extra=TUNNEL_GSO, drop=plain.DROP, layout=ring_layout)
        if feats is None or not has(feats, NetF.HOST_UDP_TUNNEL_GSO):
            for rid in TX_IDS:
                verdict.not_offered(rid, f"VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO not negotiable from {rig.offered:#x} on "
                                         f"{ring_layout} rings")
            return
        rig.bring_up(feats, 64)
        if not rig.looped(verdict, *TX_IDS):
            return
        loop = Loop(rig)
        rng = random.Random(6)
        mtu = rig.drv.mtu() or 1500
        csum_ok = has(feats, NetF.HOST_UDP_TUNNEL_GSO_CSUM)
        judge_rejections(loop, verdict, rng)
        judge_ignored_offsets(loop, verdict, rng)

        def usable(case: Case) -> Case:
            room = mtu - (40 if case.outer_v6 else 20) - 8 - TUNNEL_HLEN - 14 - (40 if case.inner_v6 else 20) - \
                (20 if case.tcp else 8)
            return Case(case.outer_v6, case.inner_v6, case.tcp, case.geneve, case.size, min(case.mss, room),
                        case.csum and csum_ok, case.odd_hdr_len)

        for n in range(8):  # every outer/inner/transport combination once, both tunnels, with and without CSUM
            run_case(loop, verdict, usable(Case(bool(n & 1), bool(n & 2), bool(n & 4), bool(n & 1), 3500, 1300,
                                                bool(n & 2), 7)), rng)

        @settings(max_examples=6, **plain.SETTINGS)  # type: ignore[arg-type]
        @given(case=CASE)
        def more(case: Case) -> None:
            run_case(loop, verdict, usable(case), rng)

        more()


# --- the driver rows: the bench's guest driver sending tunnel GSO packets, judged by the ring monitors -------------

DRIVER_MEM = 8 << 20
DRIVER_CASES = [Case(outer_v6, inner_v6, tcp, geneve, 3000, 1000, True)
                for outer_v6, inner_v6, tcp, geneve in ((False, False, True, False), (True, True, True, True),
                                                        (False, True, False, True), (True, False, False, False))]


@pytest.mark.req(*NET_DRV_TUNNEL_ROWS)
@pytest.mark.parametrize("csum", [pytest.param(True, id="tunnel_csum"), pytest.param(False, id="no_tunnel_csum")])
def test_guest_driver_tunnel_headers(bench: Bench, verdict: Verdict, csum: bool) -> None:
    """The guest driver with HOST_UDP_TUNNEL_GSO (and in one run _CSUM) negotiated sends VXLAN and GENEVE packets
    over IPv4/IPv6 around inner TCP/UDP over IPv4/IPv6, each behind the header a driver offloading their
    segmentation writes (the outer UDP checksum left to the device with UDP_TUNNEL_CSUM where _CSUM is negotiated,
    0 otherwise); the ring monitors judge every header and frame."""
    name = f"guest driver with HOST_UDP_TUNNEL_GSO{' and _CSUM' if csum else ''}"
    want = DEFAULT_FEATURES | TUNNEL_GSO & ~(0 if csum else bits(NetF.HOST_UDP_TUNNEL_GSO_CSUM))
    with GuestMemory.single(DRIVER_MEM, gpa=GUEST_MEMORY_BASE) as mem:
        trace = TracingPciDevice(bench.open(bench.offering(verdict, TUNNEL_GSO, ()) or bench.spec))
        rings = SplitRingMonitor.attach(trace, mem.read)
        drv = GuestNetDriver(trace, mem, queue_size=64, features=want)
        try:
            drv.init()
            negotiated = drv.features
            if not has(negotiated, NetF.HOST_UDP_TUNNEL_GSO) or csum != has(negotiated,
                                                                             NetF.HOST_UDP_TUNNEL_GSO_CSUM):
                for rid in NET_DRV_TUNNEL_ROWS:
                    verdict.not_offered(rid, f"{name}: not negotiable from the offer {drv.offered:#x}")
                return
            rng = random.Random(7)
            for case in DRIVER_CASES:
                sent = build(Case(case.outer_v6, case.inner_v6, case.tcp, case.geneve, case.size, case.mss, csum),
                             rng)
                drv.send([sent.partial], hdr=sent.hdr, tunnel=sent.offsets, timeout=bench.deadlines.wait(5.0))
            done = drv.wait_tx_done(timeout=bench.deadlines.wait(5.0))
            rings.inspect()
        finally:
            drv.close()
    net = rings.net
    assert net is not None, "the ring monitor feeds no virtio-net monitor"
    seen = f"{net.seen()} ({len(DRIVER_CASES)} tunnel packets sent, all used: {done}); negotiated {negotiated:#x}"
    verdicts = net.verdicts()
    for rid in NET_DRV_TUNNEL_ROWS:
        if rid in verdicts:
            ok, evidence = verdicts[rid]
            verdict.check(rid, ok, f"{name}: {seen}; " + "; ".join(evidence[:5]))
        else:
            verdict.not_applicable(rid, f"{name}: the run gave it no opportunity ({seen})")


@pytest.mark.req("NET-DEV-18", "NET-DEV-27")
def test_ipsec_header_fields(bench: Bench, verdict: Verdict) -> None:
    """NET-DEV-18 (outer_nh_offset unused unless OUT_NET_HEADER) and NET-DEV-27 (resource_id / resource_type unused
    without VIRTIO_NET_HDR_F_SECURITY) speak of fields the header holds only with VIRTIO_NET_F_IPSEC (outer_nh_offset
    also with OUT_NET_HEADER, where its use is allowed): without IPSEC offered there is no header to put garbage in."""
    with bench.rig() as rig:
        offered = rig.offered
    for rid, field in (("NET-DEV-18", "outer_nh_offset"), ("NET-DEV-27", "resource_id / resource_type")):
        if has(offered, NetF.IPSEC):
            verdict.not_applicable(rid, f"VIRTIO_NET_F_IPSEC offered ({offered:#x}): this check does not build the "
                                        f"IPsec header that would hold {field}")
        else:
            verdict.not_offered(rid, f"{field} exists in the transmit header only with VIRTIO_NET_F_IPSEC (bit 70), "
                                     f"not offered ({offered:#x})")
