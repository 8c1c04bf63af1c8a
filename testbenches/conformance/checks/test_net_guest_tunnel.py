"""virtio-net UDP-tunnel GSO on receive (VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO, _CSUM; 5.1.6, 5.1.9.4.1 / 5.1.9.4.2).

Device rows: bursts of VXLAN (UDP port 4789) or GENEVE (6081) frames around one inner TCP connection or UDP flow,
outer and inner IPv4 or IPv6, built with scapy, go out through transmitq1 in one publish and come back from the
looped wire together, as in test_net_guest_gso.py; each burst is sent once with outer UDP checksums 0 and once with
them computed. Receive buffers hold 65609 bytes (MRG_RXBUF not negotiated). What comes back is parsed with scapy:
the inner data must come back whole and in order; a packet with a UDP-tunnel bit must carry the bit of its inner
network protocol (NET-DEV-51), outer_th_offset and inner_nh_offset where its outer UDP and inner network headers
are (NET-DEV-52), an outer UDP checksum 0 or complete and correct unless UDP_TUNNEL_CSUM is set (NET-DEV-53, 66;
complete over the packet as delivered or with its inner checksum completed), the outer pseudo-header sum where it
is set (NET-DEV-65), and no UDP_TUNNEL_CSUM without GUEST_UDP_TUNNEL_GSO_CSUM (NET-DEV-54). Without
GUEST_UDP_TUNNEL_GSO (GUEST_TSO4/6 and USO4/6 negotiated) no delivered packet holds more than one tunnel frame
sent (NET-DEV-50). The frame begins right after the header the features size (24 bytes): no outer_nh_offset is
written without OUT_NET_HEADER (NET-DEV-45). The offer is judged against the dependency table (NETFEAT-DEV-03/04).

Driver rows (NET-DRV-60, 65..68): the bench plays the device to the guest driver on its receive queue (doorbells
held back), as test_net_driver_rows.py does for NET-DRV-58/61/63/64, with GUEST_UDP_TUNNEL_GSO(_CSUM) and IPSEC
shown to the driver (IPSEC gives the 32-byte header, whose outer_nh_offset the driver must not use without
OUT_NET_HEADER): malformed tunnel headers must not reach the stack; packets with garbage offsets must come out
intact.

On ``sim:`` a variant offers the guest GSO and tunnel features; elsewhere the rows read *not offered* when the target
lacks them, and *not applicable* when the device coalesced no tunnel frame.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator, Sequence
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
from scapy.utils import str2mac

from backend.virtio.features import NetF, bits, has
from backend.virtio.net_hdr import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_NONE,
    GSO_TCPV4,
    GSO_UDP_TUNNEL,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    NetHdr,
    hdr_size,
)
from backend.virtio.split_ring import U16, USED_ELEM
from models.virtio_net import offload
from sim.memory import GuestMemory
from testbenches.conformance.checks.test_net_driver_rules import ShownOffer
from testbenches.conformance.checks.test_net_guest_gso import SETTINGS, USO, loop_burst, offered_rig
from testbenches.conformance.checks.test_split_driver_rules import HeldDoorbells
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench, Rig
from testbenches.conformance.offers import judge_offer
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout, layout_features
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.monitor.driver_rows import RxCase, rx_findings
from testbenches.monitor.virtio_pci_rules import Finding, verdicts_of

GSO = bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6) | USO
TUNNEL = GSO | bits(NetF.GUEST_UDP_TUNNEL_GSO)
TUNNEL_CSUM = TUNNEL | bits(NetF.GUEST_UDP_TUNNEL_GSO_CSUM)
DEV_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
OFFER_IDS = ("NETFEAT-DEV-03", "NETFEAT-DEV-04")
TUNNEL_IDS = ("NET-DEV-45", "NET-DEV-51", "NET-DEV-52", "NET-DEV-53")
CSUM_IDS = ("NET-DEV-65", "NET-DEV-66")
PLAIN_IDS = ("NET-DEV-45", "NET-DEV-50")
QUEUE_SIZE = 64
MSS = (400, 1000, 1300)
#: outer_nh_offset in the 32-byte header (after outer_th_offset and inner_nh_offset).
OUTER_NH_AT = 24


@dataclass(frozen=True)
class Shape:
    outer_v6: bool
    inner_v6: bool
    tcp: bool
    geneve: bool

    def __str__(self) -> str:
        return (f"{'GENEVE' if self.geneve else 'VXLAN'} over {'IPv6' if self.outer_v6 else 'IPv4'} around "
                f"{'IPv6' if self.inner_v6 else 'IPv4'}/{'TCP' if self.tcp else 'UDP'}")


def tunnel_frame(shape: Shape, k: int, payload: bytes, seq: int, outer_csum: bool,
                 options: Sequence[tuple[str, object]] = ()) -> bytes:
    outer: Packet = IPv6(src="fd00::1", dst="fd00::2") if shape.outer_v6 else \
        IP(src="10.0.0.1", dst="10.0.0.2", id=100 + k)
    udp = UDP(sport=49152, dport=6081 if shape.geneve else 4789, chksum=None if outer_csum else 0)
    tun: Packet = GENEVE(vni=0x42, proto=0x6558) if shape.geneve else VXLAN(vni=0x42)
    inner: Packet = IPv6(src="fd01::1", dst="fd01::2") if shape.inner_v6 else IP(src="10.1.0.1", dst="10.1.0.2", id=k)
    l4: Packet = TCP(sport=4000, dport=80, seq=seq, ack=77, flags="A", options=list(options)) if shape.tcp else \
        UDP(sport=4000, dport=4001)
    return bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / outer / udp / tun / Ether(src="02:00:00:00:01:02",
                                                                            dst="02:00:00:00:01:01")
                 / inner / l4 / payload)


def make_burst(shape: Shape, mss: int, sizes: Sequence[int], outer_csum: bool,
               rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """Frames of one inner flow (every one but the last carries ``mss`` bytes) and their inner payloads."""
    seq = rng.randrange(1 << 32)
    frames, payloads = [], []
    for k, n in enumerate(sizes):
        payload = rng.randbytes(mss if k < len(sizes) - 1 else min(n, mss))
        frames.append(tunnel_frame(shape, k, payload, seq, outer_csum))
        payloads.append(payload)
        seq = (seq + len(payload)) & 0xFFFFFFFF
    return frames, payloads


@dataclass(frozen=True)
class Got:
    """A delivered packet parsed: its header (and the bytes of it), where its headers are."""

    hdr: NetHdr
    raw_hdr: bytes
    frame: bytes
    outer_v6: bool
    outer_th: int
    inner_nh: int
    inner_v6: bool
    inner_payload: bytes
    used_len: int


def parse(raw_hdr: bytes, frame: bytes, used_len: int) -> Got | None:
    pkt = Ether(frame)
    outer = pkt.payload
    udp = outer.payload
    inner_eth = pkt.getlayer(Ether, 2)
    if not isinstance(outer, IP | IPv6) or not isinstance(udp, UDP) or inner_eth is None:
        return None
    inner = inner_eth.getlayer(IP) or inner_eth.getlayer(IPv6)
    l4 = inner_eth.getlayer(TCP) or inner_eth.getlayer(UDP) if inner is not None else None
    if inner is None or l4 is None:
        return None
    outer_th = len(frame) - len(bytes(udp))
    inner_nh = len(frame) - len(bytes(inner))
    payload = bytes(l4.payload)
    return Got(NetHdr.unpack(raw_hdr), raw_hdr, frame, isinstance(outer, IPv6), outer_th, inner_nh,
               isinstance(inner, IPv6), payload, used_len)


def exchange(rig: Rig, frames: Sequence[bytes], want: int) -> list[Got | None]:
    """The frames through transmitq1 in one publish, and what receiveq1 got back until ``want`` inner data bytes came
    back or the wait ran out."""
    def one(data: bytes, n: int) -> tuple[Got | None, int]:
        d = parse(data[:rig.hdr_len].ljust(rig.hdr_len, b"\0"), data[rig.hdr_len:], n)
        return d, len(d.inner_payload) if d is not None else 0

    return loop_burst(rig, [rig.tx_header() + frame for frame in frames], len(frames), want, one)


def _outer_sum(frame: bytes, outer_v6: bool, th: int) -> int:
    """The outer UDP checksum's ones'-complement sum over the pseudo header and the datagram as it is."""
    length = len(frame) - th
    pseudo = frame[22:54] + length.to_bytes(4, "big") + b"\0\0\0\x11" if outer_v6 else \
        frame[26:34] + b"\0\x11" + length.to_bytes(2, "big")
    return offload.ones_sum(pseudo + frame[th:])


def outer_complete(d: Got) -> bool:
    """The outer UDP checksum is 0 or correct over the packet as delivered or with its inner checksum completed."""
    if d.frame[d.outer_th + 6:d.outer_th + 8] == b"\0\0":
        return True
    done = offload.complete_checksum(d.hdr.flags, d.hdr.csum_start, d.hdr.csum_offset, d.frame)
    return any(f is not None and _outer_sum(f, d.outer_v6, d.outer_th) == 0xFFFF for f in (d.frame, done))


class Judge:
    def __init__(self, verdict: Verdict, negotiated: int, hdr_len: int) -> None:
        self.verdict = verdict
        self.negotiated = negotiated
        self.hdr_len = hdr_len
        self.tunnel_gso = 0

    def burst(self, frames: Sequence[bytes], payloads: Sequence[bytes], back: Sequence[Got | None],
              what: str) -> None:
        v = self.verdict
        tunnel = has(self.negotiated, NetF.GUEST_UDP_TUNNEL_GSO)
        csum = has(self.negotiated, NetF.GUEST_UDP_TUNNEL_GSO_CSUM)
        got = b"".join(d.inner_payload for d in back if d is not None)
        whole = got == b"".join(payloads)
        for k, d in enumerate(back):
            where = f"{what}, packet {k + 1} of {len(back)}"
            if d is None:
                v.check("NET-DEV-52", False, f"{where}: not a tunnel packet")
                continue
            h = d.hdr
            where += f": gso_type {h.gso_type:#x} flags {h.flags:#x} gso_size {h.gso_size}"
            v.check("NET-DEV-45", d.used_len == self.hdr_len + len(d.frame) and whole,
                    f"{where}: {d.used_len} bytes written, a {self.hdr_len}-byte header and a {len(d.frame)}-byte "
                    f"frame{'' if whole else ', the data not as sent'}")
            covers = len(d.inner_payload) > max(len(p) for p in payloads)
            if not tunnel:
                v.check("NET-DEV-50", not covers and not h.gso_type & GSO_UDP_TUNNEL,
                        f"{where}: {len(d.inner_payload)} bytes of inner data without GUEST_UDP_TUNNEL_GSO")
                continue
            if not h.gso_type & GSO_UDP_TUNNEL:
                continue
            self.tunnel_gso += 1
            bit = GSO_UDP_TUNNEL_IPV6 if d.inner_v6 else GSO_UDP_TUNNEL_IPV4
            v.check("NET-DEV-51", h.gso_type & GSO_UDP_TUNNEL == bit,
                    f"{where}: inner {'IPv6' if d.inner_v6 else 'IPv4'} wants tunnel bit {bit:#x}")
            outer_th, inner_nh = struct.unpack_from("<HH", d.raw_hdr, 20)
            v.check("NET-DEV-52", (outer_th, inner_nh) == (d.outer_th, d.inner_nh),
                    f"{where}: outer_th_offset {outer_th} inner_nh_offset {inner_nh}, headers at {d.outer_th} and "
                    f"{d.inner_nh}")
            field = int.from_bytes(d.frame[d.outer_th + 6:d.outer_th + 8], "big")
            if h.flags & F_UDP_TUNNEL_CSUM:
                length = len(d.frame) - d.outer_th
                pseudo = d.frame[22:54] + length.to_bytes(4, "big") + b"\0\0\0\x11" if d.outer_v6 else \
                    d.frame[26:34] + b"\0\x11" + length.to_bytes(2, "big")
                if not csum:
                    v.check("NET-DEV-54", False, f"{where}: UDP_TUNNEL_CSUM without GUEST_UDP_TUNNEL_GSO_CSUM")
                else:
                    v.check("NET-DEV-65", field == offload.ones_sum(pseudo), f"{where}: outer UDP checksum "
                            f"{field:#06x}, pseudo-header sum {offload.ones_sum(pseudo):#06x}")
                continue
            ok = outer_complete(d)
            v.check("NET-DEV-53", ok, f"{where}: outer UDP checksum {field:#06x} is neither 0 nor complete")
            v.check("NET-DEV-66" if csum else "NET-DEV-54", ok,
                    f"{where}: outer UDP checksum {field:#06x}, UDP_TUNNEL_CSUM clear")

    def finish(self, ids: Sequence[str]) -> None:
        for rid in ids:
            if not self.verdict.recorded(rid):
                self.verdict.not_applicable(rid, "no delivered packet gave it an opportunity (the device coalesced "
                                                 f"{self.tunnel_gso} tunnel packets)")




def run_bursts(bench: Bench, verdict: Verdict, layout: Layout, ids: Sequence[str], want: int) -> None:
    with offered_rig(bench, verdict, layout, ids, want, also=TUNNEL_CSUM) as rig:
        if rig is None:
            return
        judge = Judge(verdict, rig.features, rig.hdr_len)

        @settings(max_examples=5, **SETTINGS)  # type: ignore[arg-type]
        @given(shape=st.builds(Shape, st.booleans(), st.booleans(), st.booleans(), st.booleans()),
               mss=st.sampled_from(MSS), sizes=st.lists(st.integers(1, max(MSS)), min_size=2, max_size=10),
               seed=st.integers(0, 2**32 - 1))
        def run(shape: Shape, mss: int, sizes: list[int], seed: int) -> None:
            for outer_csum in (False, True):
                frames, payloads = make_burst(shape, mss, sizes, outer_csum, random.Random(seed))
                what = f"{shape}, {len(frames)} frames, MSS {mss}, outer UDP checksum {'set' if outer_csum else 0}"
                judge.burst(frames, payloads, exchange(rig, frames, sum(map(len, payloads))), what)

        run()
        judge.finish(ids)


@pytest.mark.req(*OFFER_IDS)
def test_guest_tunnel_offer_dependencies(bench: Bench, verdict: Verdict) -> None:
    """The offer of a device with GUEST_UDP_TUNNEL_GSO (the target, or on ``sim:`` a variant asked for it and
    _CSUM) against the dependency table: GUEST_TSO4/6 and USO4/6 with it (NETFEAT-DEV-03), it with _CSUM
    (NETFEAT-DEV-04)."""
    spec = bench.offering(verdict, bits(NetF.GUEST_UDP_TUNNEL_GSO), (), also=TUNNEL_CSUM) or bench.spec
    with bench.rig(spec) as rig:
        judge_offer(verdict, rig.offered, OFFER_IDS)


@pytest.mark.req(*TUNNEL_IDS, "NET-DEV-54")
def test_tunnel_coalesced(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """GUEST_UDP_TUNNEL_GSO without _CSUM: tunnel GSO packets' tunnel bit, offsets and outer checksum."""
    run_bursts(bench, verdict, ring_layout, (*TUNNEL_IDS, "NET-DEV-54"), TUNNEL)


@pytest.mark.req(*TUNNEL_IDS, *CSUM_IDS)
def test_tunnel_coalesced_with_csum(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """GUEST_UDP_TUNNEL_GSO_CSUM: the outer checksum partial with UDP_TUNNEL_CSUM, else 0 or complete."""
    run_bursts(bench, verdict, ring_layout, (*TUNNEL_IDS, *CSUM_IDS), TUNNEL_CSUM)


@pytest.mark.req(*PLAIN_IDS)
def test_no_tunnel_gso_without_the_feature(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """GUEST_TSO4/6 and USO4/6 without GUEST_UDP_TUNNEL_GSO: no tunnel frames delivered merged (NET-DEV-50)."""
    run_bursts(bench, verdict, ring_layout, PLAIN_IDS, GSO)


#: Inner TCP options of the directed bursts: none (data offset 5), timestamps (8), timestamps and a SACK block (11).
TCP_OPTIONS: tuple[tuple[tuple[str, object], ...], ...] = (
    (), (("NOP", None), ("NOP", None), ("Timestamp", (1, 2))),
    (("NOP", None), ("NOP", None), ("Timestamp", (1, 2)), ("NOP", None), ("NOP", None), ("SAck", (5000, 6000))))
#: Bytes missing from the inner sequence before the 4th of 6 segments: none, and a small segment lost.
HOLES = (0, 4, 16)
SEGMENT_IDS = ("NET-DEV-57", "NET-DEV-60")
DIRECT_IDS = (*TUNNEL_IDS, "NET-DEV-54", *SEGMENT_IDS)


def _inner_tcp(frame: bytes) -> tuple[int, int, int] | None:
    """(inner TCP header offset, its length by its data offset, sequence number) of a tunnel frame, by scapy."""
    inner_eth = Ether(frame).getlayer(Ether, 2)
    tcp = inner_eth.getlayer(TCP) if inner_eth is not None else None
    if tcp is None:
        return None
    at = len(frame) - len(bytes(tcp))
    return at, 4 * int(tcp.dataofs), int(tcp.seq)


def judge_segments(verdict: Verdict, frames: Sequence[bytes], payloads: Sequence[bytes], back: Sequence[Got | None],
                   what: str) -> int:
    """Each delivered packet against the segments it covers, byte for byte: one delivered as it came is that frame; a
    tunnel GSO packet has the first segment's inner TCP header (options included; the checksum, which holds the
    pseudo-header sum, aside), the segments' data in order, gso_size the first one's data length and every one but
    the last that long, the last no longer, their sequence numbers following on from the packet's (NET-DEV-57), and
    hdr_len through its inner TCP header (NET-DEV-60). Returns the tunnel GSO packets judged."""
    starts = [sum(map(len, payloads[:i])) for i in range(len(payloads) + 1)]
    cursor, merged = 0, 0
    for k, d in enumerate(back):
        if d is None:
            continue
        where = f"{what}, packet {k + 1} of {len(back)}: gso_type {d.hdr.gso_type:#x} gso_size {d.hdr.gso_size} " \
                f"hdr_len {d.hdr.hdr_len}"
        end = cursor + len(d.inner_payload)
        covered = [i for i in range(len(payloads)) if cursor <= starts[i] < end]
        whole = cursor in starts and end in starts
        cursor = end
        if not d.hdr.gso_type & GSO_UDP_TUNNEL:
            verdict.check("NET-DEV-57", whole and len(covered) == 1 and d.frame == frames[covered[0]],
                          f"{where}: gso_type NONE on a packet of {len(d.inner_payload)} bytes of data covering "
                          f"segments {covered}{'' if whole else ' (not whole)'}, not one of the frames sent as it was")
            continue
        merged += 1
        got, first = _inner_tcp(d.frame), _inner_tcp(frames[covered[0]]) if covered else None
        if got is None or first is None:
            verdict.check("NET-DEV-57", False, f"{where}: no inner TCP header, or no segment covered")
            continue
        at, doff, seq = got
        fat, fdoff, _ = first
        mine = d.frame[at:at + 16] + d.frame[at + 18:at + doff]
        theirs = frames[covered[0]][fat:fat + 16] + frames[covered[0]][fat + 18:fat + fdoff]
        sizes = [len(payloads[i]) for i in covered]
        seqs = [t[2] for t in map(_inner_tcp, (frames[i] for i in covered)) if t is not None]
        want_seqs = [(seq + starts[i] - starts[covered[0]]) & 0xFFFFFFFF for i in covered]
        data = b"".join(payloads[i] for i in covered)
        verdict.check("NET-DEV-57", whole and mine == theirs and d.inner_payload == data
                      and d.hdr.gso_size == sizes[0] and all(n == sizes[0] for n in sizes[:-1])
                      and sizes[-1] <= sizes[0] and seqs == want_seqs,
                      f"{where}: covers segments {covered} of {sizes} bytes{'' if whole else ' (not whole)'} with "
                      f"sequence numbers {seqs} (from the packet's: {want_seqs}); inner TCP header "
                      f"{mine.hex()}, the first segment's {theirs.hex()} (checksums aside)")
        verdict.check("NET-DEV-60", d.hdr.hdr_len >= at + doff,
                      f"{where}: the inner TCP header ends at {at + doff}")
    return merged


@pytest.mark.req(*DIRECT_IDS)
def test_tunnel_tcp_options_and_holes(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """GUEST_UDP_TUNNEL_GSO, directed bursts of VXLAN and GENEVE frames (outer IPv4 and IPv6) around one inner IPv4
    or IPv6 TCP connection with TCP options (data offsets 5, 8 and 11), in order or with a small segment (4 or 16
    bytes) lost before the 4th of 6: each delivered packet is judged byte for byte against the segments it covers
    (NET-DEV-57, hdr_len NET-DEV-60), with the tunnel rows of :class:`Judge`."""
    with offered_rig(bench, verdict, ring_layout, DIRECT_IDS, TUNNEL, also=TUNNEL_CSUM) as rig:
        if rig is None:
            return
        judge = Judge(verdict, rig.features, rig.hdr_len)
        rng = random.Random(52)
        merged = 0
        for outer_v6 in (False, True):
            for inner_v6 in (False, True):
                for geneve in (False, True):
                    shape = Shape(outer_v6, inner_v6, True, geneve)
                    for options in TCP_OPTIONS:
                        for hole in HOLES:
                            seq = rng.randrange(1 << 32)
                            frames, payloads = [], []
                            for k in range(6):
                                seq = (seq + (hole if k == 3 else 0)) & 0xFFFFFFFF
                                payloads.append(rng.randbytes(1000 if k < 5 else 300))
                                frames.append(tunnel_frame(shape, k, payloads[-1], seq, geneve,
                                                           options))
                                seq = (seq + len(payloads[-1])) & 0xFFFFFFFF
                            what = (f"{shape}, TCP options {[o[0] for o in options]}, "
                                    f"{f'{hole} bytes missing before the 4th of 6' if hole else '6 segments in order'}")
                            back = exchange(rig, frames, sum(map(len, payloads)))
                            judge.burst(frames, payloads, back, what)
                            merged += judge_segments(verdict, frames, payloads, back, what)
        for rid in SEGMENT_IDS:
            if not verdict.recorded(rid):
                verdict.not_applicable(rid, f"no packet came back to judge ({merged} tunnel GSO packets)")
        judge.finish(DIRECT_IDS)


# --- the guest driver's processing of received tunnel headers --------------------------------------------------

DRV_IDS = ("NET-DRV-60", "NET-DRV-65", "NET-DRV-66", "NET-DRV-67", "NET-DRV-68")
#: Shown to the guest driver: the tunnel features, and IPSEC for the 32-byte header with outer_nh_offset.
DRV_SHOWN = TUNNEL_CSUM | bits(NetF.IPSEC)
DRV_MEM = 8 << 20


@dataclass(frozen=True)
class DropCase:
    rid: str
    what: str
    hdr: NetHdr
    frame: bytes


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(DRV_MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


def _tunnel_packet(mac: bytes, k: int) -> tuple[NetHdr, bytes, int, int]:
    """A VXLAN packet around an inner TCP segment (inner checksum the pseudo-header sum), the header that offers it
    as tunnel GSO, outer_th_offset and inner_nh_offset."""
    inner = IP(src="10.1.0.1", dst="10.1.0.2") / TCP(sport=4000, dport=80, flags="A") / (bytes([k]) * 3000)
    frame = bytes(Ether(src=PEER_MAC, dst=str2mac(mac)) / IP(src="10.0.0.2", dst="10.0.0.1") /
                  UDP(sport=49152, dport=4789, chksum=0) / VXLAN(vni=1) /
                  Ether(src="02:00:00:00:01:02", dst="02:00:00:00:01:01") / inner)
    outer_th, inner_nh = 34, 34 + 8 + 8 + 14
    l4 = inner_nh + 20
    pseudo = frame[inner_nh + 12:inner_nh + 20] + b"\0\x06" + (len(frame) - l4).to_bytes(2, "big")
    frame = frame[:l4 + 16] + offload.ones_sum(pseudo).to_bytes(2, "big") + frame[l4 + 18:]
    hdr = NetHdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4, l4 + 20, 1000, l4, 16)
    return hdr, frame, outer_th, inner_nh


def drop_findings(cases: Sequence[DropCase], delivered: Sequence[bytes]) -> list[Finding]:
    """Each case's frame is not among those the driver delivered."""
    return [Finding(c.rid, c.frame not in delivered, f"{c.what}: {'delivered' if c.frame in delivered else 'dropped'}")
            for c in cases]


@pytest.mark.ring_layout("split")
@pytest.mark.req(*DRV_IDS)
def test_guest_driver_tunnel_rx_headers(bench: Bench, verdict: Verdict, mem: GuestMemory) -> None:
    """The bench plays the device on the guest driver's receive queue (GUEST_UDP_TUNNEL_GSO, _CSUM and IPSEC shown
    to it, so its header is 32 bytes): tunnel packets behind malformed headers must not be delivered; packets behind
    garbage outer_nh_offset (no OUT_NET_HEADER) or garbage tunnel offsets without a tunnel bit must come out intact,
    as must a well-formed tunnel GSO packet."""
    name = "guest driver (split rings, GUEST_UDP_TUNNEL_GSO and IPSEC shown)"
    trace = HeldDoorbells(ShownOffer(bench.open(), add=DRV_SHOWN))
    drv = GuestNetDriver(trace, mem, queue_size=16, rx_buffers=16,
                         features=layout_features(DEFAULT_FEATURES | DRV_SHOWN, "split"))
    try:
        drv.init()
        size = hdr_size(drv.features)
        if drv.features & DRV_SHOWN != DRV_SHOWN or has(drv.features, NetF.MRG_RXBUF):
            for rid in DRV_IDS:
                verdict.not_offered(rid, f"{name}: the driver took {drv.features:#x}")
            return
        mac = drv.mac()
        l2 = Ether(src=PEER_MAC, dst=str2mac(mac)) / IP(src="10.0.0.2", dst="10.0.0.1")
        tcp = [bytes(l2 / TCP(sport=9, dport=49152, flags="PA") / (bytes([k]) * 64)) for k in range(4)]
        good, good_frame, good_th, good_nh = _tunnel_packet(mac, 0)
        packets = [_tunnel_packet(mac, k) for k in range(1, 7)]
        deliver = [
            (RxCase("NET-DRV-60", "outer_nh_offset 0xbeef without OUT_NET_HEADER", NetHdr(), tcp[0],
                    frozenset({"checked"})), (0, 0, 0xBEEF)),
            (RxCase("NET-DRV-60", "outer_nh_offset 3 with DATA_VALID", NetHdr(flags=F_DATA_VALID), tcp[1],
                    frozenset({"valid"})), (0, 0, 3)),
            (RxCase("NET-DRV-66", "no tunnel bit, outer_th_offset 0xffff inner_nh_offset 7", NetHdr(), tcp[2],
                    frozenset({"checked"})), (0xFFFF, 7, 0)),
            (RxCase("NET-DRV-66", "no tunnel bit, offsets 1 and 0x8000, DATA_VALID", NetHdr(flags=F_DATA_VALID),
                    tcp[3], frozenset({"valid"})), (1, 0x8000, 0)),
        ]
        h = packets[0][0]
        drops = [
            DropCase("NET-DRV-65", "both UDP-tunnel bits", NetHdr(h.flags, h.gso_type | GSO_UDP_TUNNEL, h.hdr_len,
                                                                   h.gso_size, h.csum_start, h.csum_offset),
                     packets[0][1]),
            DropCase("NET-DRV-67", "tunnel bit, NEEDS_CSUM clear", NetHdr(0, h.gso_type, h.hdr_len, h.gso_size),
                     packets[1][1]),
            DropCase("NET-DRV-67", "tunnel bit with DATA_VALID", NetHdr(h.flags | F_DATA_VALID, h.gso_type, h.hdr_len,
                                                                        h.gso_size, h.csum_start, h.csum_offset),
                     packets[2][1]),
            DropCase("NET-DRV-67", "tunnel bit on gso_type NONE", NetHdr(h.flags, GSO_NONE | GSO_UDP_TUNNEL_IPV4,
                                                                         h.hdr_len, h.gso_size, h.csum_start,
                                                                         h.csum_offset), packets[3][1]),
            DropCase("NET-DRV-68", "UDP_TUNNEL_CSUM and NEEDS_CSUM, no tunnel bit",
                     NetHdr(F_NEEDS_CSUM | F_UDP_TUNNEL_CSUM, GSO_NONE, 0, 0, h.csum_start, h.csum_offset),
                     packets[4][1]),
        ]
        writes = [(c.hdr, c.frame, tail) for c, tail in deliver]
        writes += [(c.hdr, c.frame, (packets[0][2], packets[0][3], 0)) for c in drops]
        writes.append((good, good_frame, (good_th, good_nh, 0)))  # last: all before it were seen
        ring = drv.queues[drv.RX]
        for i, (hdr, frame, (outer_th, inner_nh, outer_nh)) in enumerate(writes):
            head = U16.unpack(mem.read(ring.avail_addr + ring.layout.avail_ring_entry(i), 2))[0]
            desc = ring.read_desc(head)
            raw = NetHdr(hdr.flags, hdr.gso_type, hdr.hdr_len, hdr.gso_size, hdr.csum_start, hdr.csum_offset,
                         1).pack().ljust(20, b"\0") + struct.pack("<HHH", outer_th, inner_nh, outer_nh)
            written = raw.ljust(size, b"\0") + frame
            assert len(written) <= desc.len, "receive buffer smaller than a packet"
            mem.write(desc.addr, written)
            mem.write(ring.used_addr + ring.layout.used_ring_entry(i), USED_ELEM.pack(head, len(written)))
        mem.write(ring.used_addr + 2, U16.pack(len(writes)))
        os.eventfd_write(drv.irq_fds["rx"], 1)
        got = drv.receive_raw(len(deliver) + 1, timeout=bench.deadlines.wait(1.0))
        got += drv.receive_raw(len(writes), timeout=bench.deadlines.silence(0.2))  # anything more it would hand over
    finally:
        drv.close()
    frames = [f.frame for f in got]
    by_frame = {f.frame: (f.frame, f.checksum) for f in got}
    findings = rx_findings([c for c, _ in deliver], [by_frame.get(c.frame) for c, _ in deliver])
    findings += drop_findings(drops, frames)
    seen = (f"{len(writes)} packets written behind {size}-byte headers, {len(got)} delivered; the well-formed tunnel "
            f"GSO packet {'delivered' if good_frame in frames else 'dropped too'}")
    verdicts = verdicts_of(findings)
    for rid in DRV_IDS:
        ok, evidence = verdicts[rid]
        verdict.check(rid, ok, f"{name}: {seen}; " + "; ".join(evidence[:5]))
