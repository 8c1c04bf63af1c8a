"""virtio-net guest GSO on receive (5.1.6.4, 5.1.9.4 / 5.1.9.4.1): with VIRTIO_NET_F_GUEST_TSO4/TSO6 or GUEST_USO4/USO6
negotiated a device may deliver coalesced (large) packets; what their receive headers must say is judged here, on
both ring layouts (``ring_layout``).

Bursts of TCP segments of one connection (and UDP datagrams of one flow) of random sizes are built with scapy and
sent through transmitq1 as one publish, so they reach the wire, and come back to the device from it, as one burst:
what a device coalesces is what arrives together. Receive buffers hold 65609 bytes each (MRG_RXBUF not negotiated,
NET-DRV-53). The frames delivered must hold exactly the byte stream sent, in order; each packet covers whole
segments; a packet with gso_type set has NEEDS_CSUM (NET-DEV-56), gso_size the MSS: the first covered segment's
data length, every covered segment but the last that long and the last no longer (NET-DEV-57), hdr_len through the
transport header (NET-DEV-60); a packet delivered with NEEDS_CSUM is judged by NET-DEV-47..49 (also judged, on
packets a device chooses to deliver so, in test_net_csum.py). Each burst has a segment with CWR: without GUEST_ECN no
coalesced packet covers one (NET-DEV-42), with it a coalesced packet covering one has GSO_ECN (NET-DEV-43), and one
covering none has no GSO_ECN (which says the packet is ECN-marked: NET-DEV-43 with GUEST_ECN, NET-DEV-42 without it;
on a GSO_UDP_L4 packet, which has no CWR to mark, the gso_type is then no UDP one, NET-DEV-57).

A coalesced TCP packet is judged as the driver's stack segments it again at gso_size: sequence numbers advancing by
the data from the packet's, PSH (the packet's) on the last segment only. That must give back the segments covered:
their sequence numbers following on from the packet's, none but the last with PSH, the last with PSH exactly when the
packet has it (NET-DEV-57, gso_size giving no MSS of what was sent otherwise). Directed bursts (GUEST_ECN negotiated)
put PSH in the middle of in-order runs, and a hole in the sequence right after a PSH segment, with and without CWR
at the start of a run.

RSC_EXT (NET-DEV-58) needs HOST_TSO4/6 and so CSUM negotiated: a TCP packet is sent with a TSO header, the device
puts its segments on the wire, and what comes back coalesced must have RSC_INFO with csum_start the number of MSS
segments it holds and csum_offset 0 (every segment carries data: no duplicate ACK).

On a configurable target (``sim:``) the device is built offering GUEST_CSUM, the guest GSO features, GUEST_ECN and
RSC_EXT with HOST_TSO4/6 and CSUM (the default offer has none); elsewhere the rows read *not offered* when the target
lacks them. The offer is judged
against the 5.1.3.1 dependency table (NETFEAT-DEV-01/02/10). Rows read *not applicable* when the device coalesced
nothing (it may deliver every segment as it came).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from backend.virtio.features import NetF, bits, has
from backend.virtio.net_hdr import F_NEEDS_CSUM, F_RSC_INFO, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, NetHdr
from testbenches.conformance.chains import Posted, written_bytes
from testbenches.conformance.checks.test_net_csum import judge_receive_partial
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, Rig
from testbenches.conformance.offers import judge_offer
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout

TSO = bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6)
USO = bits(NetF.GUEST_CSUM, NetF.GUEST_USO4, NetF.GUEST_USO6)
ECN = bits(NetF.GUEST_ECN)
#: What a configurable target is asked to offer besides its own offer.
WANTED = TSO | USO | ECN
#: RSC_EXT, with what it depends on (HOST_TSO4/6, which depend on CSUM).
RSC = bits(NetF.RSC_EXT, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.CSUM)
RSC_IDS = ("NET-DEV-58", "NET-DEV-56", "NET-DEV-57", "NET-DEV-60")
#: Receive offloads a check negotiates only when it means to.
GUEST_OFFLOADS = WANTED | bits(NetF.GUEST_UFO, NetF.GUEST_UDP_TUNNEL_GSO, NetF.GUEST_UDP_TUNNEL_GSO_CSUM,
                               NetF.RSC_EXT)
#: Kept off: MRG_RXBUF (one 65609-byte buffer per packet), CSUM (transmitted frames go out complete), HASH_REPORT.
DROP = bits(NetF.MRG_RXBUF, NetF.CSUM, NetF.HASH_REPORT, NetF.MTU)
#: A receive buffer for the largest packet without MRG_RXBUF (NET-DRV-53: 65601, 65609 with HASH_REPORT).
RX_BUF = 65609
DEV_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
#: MSS values: each keeps an IPv6/TCP frame within 1514 bytes.
MSS = (536, 1000, 1440)
TCP_CWR, TCP_PSH = 0x80, 0x08
PARTIAL_IDS = ("NET-DEV-47", "NET-DEV-48", "NET-DEV-49")
GSO_IDS = ("NET-DEV-56", "NET-DEV-57", "NET-DEV-60", *PARTIAL_IDS)
OFFER_IDS = ("NETFEAT-DEV-01", "NETFEAT-DEV-02", "NETFEAT-DEV-10")
QUEUE_SIZE = 128
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
#: One segment of a burst: full (MSS bytes of data) or not, its length if not, CWR?, PSH?
SEGMENT = st.tuples(st.integers(0, 4), st.integers(1, max(MSS)), st.integers(0, 11), st.integers(0, 9))


@dataclass(frozen=True)
class Sent:
    frame: bytes
    payload: bytes
    flags: int  # TCP flags (0 for UDP)
    seq: int | None = None  # TCP sequence number (None for UDP)


@dataclass(frozen=True)
class Delivered:
    hdr: NetHdr
    frame: bytes
    headers: int  # Ethernet, IP and transport header bytes as parsed
    payload: bytes
    flags: int  # TCP flags of the packet (0 for UDP)
    udp: bool
    seq: int = 0  # TCP sequence number of the packet (0 for UDP)


def make_burst(v6: bool, tcp: bool, mss: int, specs: Sequence[tuple[int, int, int, int]], cwr_at: int,
               rng: random.Random, holes: Mapping[int, int] | None = None) -> list[Sent]:
    """Segments of one connection (or datagrams of one flow): consecutive sequence numbers, ACK set, CWR at
    ``cwr_at`` (and where a spec asks), PSH where a spec asks; ``holes`` maps a segment's index to the bytes missing
    from the sequence before it (a lost segment)."""
    seq = rng.randrange(1 << 32)
    out: list[Sent] = []
    for k, (full, size, cwr, psh) in enumerate(specs):
        seq = (seq + (holes or {}).get(k, 0)) & 0xFFFFFFFF
        n = mss if full else min(size, mss)
        payload = rng.randbytes(n)
        l3: Packet = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2", id=k)
        flags = 0
        if tcp:
            flags = 0x10 | (TCP_CWR if cwr == 0 or k == cwr_at else 0) | (TCP_PSH if psh == 0 else 0)
            l4: Packet = TCP(sport=4000, dport=80, seq=seq, ack=77, flags=flags, window=512)
        else:
            l4 = UDP(sport=4000, dport=4001)
        out.append(Sent(bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / l3 / l4 / payload), payload, flags,
                        seq if tcp else None))
        seq = (seq + n) & 0xFFFFFFFF
    return out


def parse(hdr: NetHdr, frame: bytes) -> Delivered | None:
    """The packet's data and header length, by its own IP and transport headers; None if it is no TCP/UDP packet."""
    pkt = Ether(frame)
    l3 = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    if l3 is None or l4 is None:
        return None
    if isinstance(l3, IP):
        l4_at, end = 14 + 4 * int(l3.ihl), 14 + int(l3.len)
    else:
        l4_at, end = 54, 54 + int(l3.plen)
    udp = isinstance(l4, UDP)
    headers = l4_at + (8 if udp else 4 * int(l4.dataofs))
    return Delivered(hdr, frame, headers, frame[headers:end], 0 if udp else int(l4.flags), udp,
                     0 if udp else int(l4.seq))




def bring_up(rig: Rig, verdict: Verdict, layout: Layout, ids: Sequence[str], want: int) -> bool:
    if not rig.offers(layout, verdict, *ids):
        return False
    feats = rig.features_for(extra=want, drop=(DROP | GUEST_OFFLOADS) & ~want, layout=layout)
    if feats is None or feats & want != want:
        for rid in ids:
            verdict.not_offered(rid, f"the device's offer {rig.offered:#x} lacks bits {want:#x} on {layout} rings")
        return False
    rig.bring_up(feats, QUEUE_SIZE)
    return rig.looped(verdict, *ids)


@contextlib.contextmanager
def offered_rig(bench: Bench, verdict: Verdict, layout: Layout, ids: Sequence[str], want: int,
                also: int) -> Iterator[Rig | None]:
    """The rig of the device variant offering ``want`` (and ``also``) with the driver up on ``layout`` rings
    (:func:`bring_up`); None, with ``ids`` reported, where it is not offered or frames do not come back."""
    spec = bench.offering(verdict, want, ids, also=also)
    if spec is None:
        yield None
        return
    with bench.rig(spec, mem_size=RING_MEM_SIZE) as rig:
        yield rig if bring_up(rig, verdict, layout, ids, want) else None


T = TypeVar("T")


def loop_burst(rig: Rig, sent: Sequence[bytes], receive: int, want: int,
               parse_one: Callable[[bytes, int], tuple[T | None, int]]) -> list[T | None]:
    """``receive`` receive buffers posted, the transmit buffers ``sent`` (header and frame each) in one publish, and
    what receiveq1 got back, in used order, each read by ``parse_one(bytes written, used len)`` into (what it is,
    data bytes it holds), until ``want`` data bytes came back or the wait ran out."""
    pending: dict[int, Posted] = {}
    order: list[Posted] = []
    for _ in range(receive):
        r = rig.add_chain(rig.RX, [], [RX_BUF])
        pending[r.head] = r
        order.append(r)
    rig.publish(rig.RX)
    tx: dict[int, Posted] = {}
    for buf in sent:
        t = rig.add_chain(rig.TX, [buf], [])
        tx[t.head] = t
    rig.publish(rig.TX)
    for t, _ in rig.complete(rig.TX, tx, len(tx)):
        rig.release(t)
    have = 0
    out: list[T | None] = []
    while have < want and pending:
        got = rig.complete(rig.RX, pending, 1)
        if not got:
            break
        for p, n in got:
            item, size = parse_one(written_bytes(rig.mem, p, n), n)
            out.append(item)
            have += size
    for p in order:
        rig.release(p)
    if pending:  # buffers left posted: the next burst starts on clean rings
        rig.bring_up(rig.features, QUEUE_SIZE)
    return out


def exchange(rig: Rig, burst: Sequence[Sent], tso: tuple[NetHdr, bytes] | None = None) -> list[Delivered | None]:
    """The burst through transmitq1 in one publish (header and frame in one buffer each), or the one ``tso`` packet
    the device segments into it, and what receiveq1 got back, in used order, until all the data sent came back or the
    wait ran out (None: not a TCP/UDP packet)."""
    def one(data: bytes, _n: int) -> tuple[Delivered | None, int]:
        d = parse(NetHdr.unpack(data.ljust(12, b"\0")), data[rig.hdr_len:])
        return d, len(d.payload) if d is not None else 0

    frames = [tso] if tso is not None else [(NetHdr(), s.frame) for s in burst]
    return loop_burst(rig, [rig.tx_header(hdr) + frame for hdr, frame in frames], len(burst),
                      sum(len(s.payload) for s in burst), one)


class Judge:
    """Judges what came back for bursts; counts the opportunities each row had."""

    def __init__(self, verdict: Verdict, ecn: bool | None, rsc: bool) -> None:
        self.verdict = verdict
        self.ecn = ecn  # GUEST_ECN negotiated (None: a UDP run, no CWR)
        self.rsc = rsc
        self.coalesced = 0
        self.partial = 0
        self.cwr_coalesced = 0

    def burst(self, burst: Sequence[Sent], back: Sequence[Delivered | None], what: str) -> None:
        v = self.verdict
        stream = b"".join(s.payload for s in burst)
        got = b"".join(d.payload for d in back if d is not None)
        # The data must come back whole and in order, packet boundaries at segment boundaries (gso_size only
        # means something for packets made of whole segments).
        ends = {0}
        pos = 0
        for s in burst:
            pos += len(s.payload)
            ends.add(pos)
        cursor = 0
        for k, d in enumerate(back):
            where = f"{what}, packet {k + 1} of {len(back)}"
            if d is None:
                self.wrong(f"{where}: not a TCP/UDP packet")
                continue
            covered = [i for i, s in enumerate(burst)
                       if cursor <= sum(len(x.payload) for x in burst[:i]) < cursor + len(d.payload)]
            whole = cursor in ends and cursor + len(d.payload) in ends
            cursor += len(d.payload)
            if d.hdr.gso_type == GSO_NONE:
                if len(covered) > 1 or not whole:
                    self.wrong(f"{where}: gso_type NONE on a packet of {len(d.payload)} bytes covering segments "
                               f"{covered}")
                if d.hdr.flags & F_NEEDS_CSUM:
                    self.partial += 1
                    judge_receive_partial(v, d.hdr, d.frame, where)
                continue
            self.coalesced += 1
            self.gso_packet(d, [burst[i] for i in covered], whole, where)
        if got != stream:
            self.wrong(f"{what}: {len(got)} bytes of data came back for {len(stream)} sent"
                       f"{', in another order or changed' if len(got) == len(stream) else ''}")

    def wrong(self, evidence: str) -> None:
        """What came back is not the segments sent, whole (a packet made of parts of segments, several segments
        without a gso_type, data lost or changed): NET-DEV-57 fails, gso_size giving no MSS of what was sent. A
        sound stream is no evidence for the row by itself: it passes on packets with a gso_type only."""
        self.verdict.check("NET-DEV-57", False, evidence)

    def gso_packet(self, d: Delivered, segs: list[Sent], whole: bool, where: str) -> None:
        v, h = self.verdict, d.hdr
        where = f"{where}: gso_type {h.gso_type:#x} gso_size {h.gso_size} hdr_len {h.hdr_len} flags {h.flags:#x}"
        want_type = GSO_UDP_L4 if d.udp else GSO_TCPV6 if d.frame[12:14] == b"\x86\xdd" else GSO_TCPV4
        v.check("NET-DEV-56", bool(h.flags & F_NEEDS_CSUM), f"{where}: NEEDS_CSUM not set")
        sizes = [len(s.payload) for s in segs]
        # GSO_ECN marks a TCP packet's CWR: a UDP packet with it has no UDP gso_type.
        base_type = h.gso_type if d.udp else h.gso_type & ~GSO_ECN
        v.check("NET-DEV-57", whole and bool(sizes) and base_type == want_type and h.gso_size == sizes[0]
                and all(n == h.gso_size for n in sizes[:-1]) and sizes[-1] <= h.gso_size,
                f"{where}: covers segments of {sizes} bytes{'' if whole else ' (not whole segments)'}")
        v.check("NET-DEV-60", h.hdr_len >= d.headers, f"{where}: headers through the transport one are {d.headers}")
        cwr = any(s.flags & TCP_CWR for s in segs) or bool(d.flags & TCP_CWR)
        if not d.udp and self.ecn is False:
            v.check("NET-DEV-42", not cwr, f"{where}: coalesced from segments with CWR without GUEST_ECN")
            if h.gso_type & GSO_ECN:  # the header marks the packet ECN (CWR) without GUEST_ECN
                v.check("NET-DEV-42", False, f"{where}: GSO_ECN set without GUEST_ECN, on segments with flags "
                        f"{[hex(s.flags) for s in segs]}")
        if not d.udp and self.ecn and cwr:
            self.cwr_coalesced += 1
            v.check("NET-DEV-43", bool(h.gso_type & GSO_ECN), f"{where}: covers a CWR segment, GSO_ECN not set")
        if not d.udp and self.ecn and not cwr and h.gso_type & GSO_ECN:
            v.check("NET-DEV-43", False, f"{where}: GSO_ECN set, but no segment covered (flags "
                    f"{[hex(s.flags) for s in segs]}) nor the packet (flags {d.flags:#x}) has CWR")
        if not d.udp and segs:
            self.resegmented(d, segs, where)
        if self.rsc and not d.udp:
            v.check("NET-DEV-58", bool(h.flags & F_RSC_INFO) and h.csum_start == len(segs) and h.csum_offset == 0,
                    f"{where}: csum_start {h.csum_start} csum_offset {h.csum_offset} for {len(segs)} segments, "
                    "no duplicate ACK")
        elif h.flags & F_NEEDS_CSUM:
            self.partial += 1
            judge_receive_partial(v, h, d.frame, where)

    def resegmented(self, d: Delivered, segs: Sequence[Sent], where: str) -> None:
        """The TCP packet segmented again at gso_size, as the driver's stack does it (sequence numbers advancing by
        the data from the packet's, the packet's PSH on the last segment only), gives back the segments covered:
        their sequence numbers, and PSH on none but the last, which has it exactly when the packet has it
        (NET-DEV-57: else gso_size is no MSS of what was sent, the packet no run of those segments)."""
        psh = [bool(s.flags & TCP_PSH) for s in segs]
        want_psh = [False] * (len(segs) - 1) + [bool(d.flags & TCP_PSH)]
        seqs = [s.seq for s in segs]
        want_seqs: list[int | None] = []
        at = d.seq
        for s in segs:
            want_seqs.append(at if s.seq is not None else None)
            at = (at + len(s.payload)) & 0xFFFFFFFF
        self.verdict.check("NET-DEV-57", psh == want_psh and seqs == want_seqs,
                           f"{where}: covers segments with sequence numbers {seqs} and PSH {psh}; segmented at "
                           f"gso_size from the packet's sequence number {d.seq} (flags {d.flags:#x}) it gives "
                           f"{want_seqs} and PSH {want_psh}")

    def finish(self, ids: Sequence[str]) -> None:
        for rid in ids:
            if self.verdict.recorded(rid):
                continue
            if rid in PARTIAL_IDS:
                why = "no packet came back with NEEDS_CSUM"
            elif rid == "NET-DEV-43":
                why = "no coalesced packet covered a CWR segment"
            else:
                why = "the device coalesced nothing (it may deliver each segment as it came)"
            self.verdict.not_applicable(rid, why)


def run_bursts(bench: Bench, verdict: Verdict, layout: Layout, ids: Sequence[str], want: int, *, tcp: bool,
               ecn: bool | None) -> None:
    with offered_rig(bench, verdict, layout, ids, want, also=WANTED | RSC) as rig:
        if rig is None:
            return
        judge = Judge(verdict, ecn, rsc=has(rig.features, NetF.RSC_EXT))

        @settings(max_examples=8, **SETTINGS)  # type: ignore[arg-type]
        @given(v6=st.booleans(), mss=st.sampled_from(MSS), specs=st.lists(SEGMENT, min_size=2, max_size=40),
               cwr_at=st.integers(0, 39), seed=st.integers(0, 2**32 - 1))
        def run(v6: bool, mss: int, specs: list[tuple[int, int, int, int]], cwr_at: int, seed: int) -> None:
            burst = make_burst(v6, tcp, mss, specs, cwr_at % len(specs), random.Random(seed))
            what = (f"{'IPv6' if v6 else 'IPv4'}/{'TCP' if tcp else 'UDP'} burst of {len(burst)} segments, MSS {mss}"
                    f"{', GUEST_ECN' if ecn else ''}")
            judge.burst(burst, exchange(rig, burst), what)

        run()
        judge.finish(ids)


@pytest.mark.req(*OFFER_IDS)
def test_guest_gso_offer_dependencies(bench: Bench, verdict: Verdict) -> None:
    """The offer of a device with guest GSO (the target, or on ``sim:`` a variant asked to offer it) against the
    5.1.3.1 dependency table: guest GSO features with GUEST_CSUM (NETFEAT-DEV-01), GUEST_ECN with GUEST_TSO4/6
    (NETFEAT-DEV-02), RSC_EXT with HOST_TSO4/6 (NETFEAT-DEV-10)."""
    # The target as it is when it offers guest GSO (or cannot be asked to), else a variant offering it.
    spec = bench.offering(verdict, bits(NetF.GUEST_TSO4), (), also=WANTED | RSC) or bench.spec
    with bench.rig(spec) as rig:
        judge_offer(verdict, rig.offered, OFFER_IDS)


@pytest.mark.req("NET-DEV-42", *GSO_IDS)
def test_tcp_coalesced_without_guest_ecn(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """GUEST_TSO4/TSO6 without GUEST_ECN: no coalesced packet holds a CWR segment (NET-DEV-42); header rows."""
    run_bursts(bench, verdict, ring_layout, ("NET-DEV-42", *GSO_IDS), TSO, tcp=True, ecn=False)


@pytest.mark.req("NET-DEV-43", *GSO_IDS)
def test_tcp_coalesced_with_guest_ecn(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """GUEST_TSO4/TSO6 with GUEST_ECN: a coalesced packet holding a CWR segment has GSO_ECN (NET-DEV-43)."""
    run_bursts(bench, verdict, ring_layout, ("NET-DEV-43", *GSO_IDS), TSO | ECN, tcp=True, ecn=True)


#: Segments of the directed bursts, as :data:`SEGMENT` draws them (0 sets CWR / PSH): full; full with PSH; full with
#: CWR; short (100 bytes) without a flag; short with PSH.
_F, _P, _C, _S, _SP = (1, 1, 1, 1), (1, 1, 1, 0), (1, 1, 0, 1), (0, 100, 1, 1), (0, 100, 1, 0)
#: Directed TCP bursts: what, segments, holes (a segment's index: the bytes missing from the sequence before it).
PSH_BURSTS: tuple[tuple[str, tuple[tuple[int, int, int, int], ...], dict[int, int]], ...] = (
    ("PSH on the 3rd of 8 in order", (_F, _F, _P, _F, _F, _F, _F, _S), {}),
    ("PSH on the 1st and 4th of 8, CWR on the 5th", (_P, _F, _F, _P, _C, _F, _F, _SP), {}),
    ("CWR on the 1st, PSH on the 2nd and 5th of 7", (_C, _P, _F, _F, _P, _F, _S), {}),
    ("PSH on the 2nd of 6, 1000 bytes missing from the sequence after it", (_F, _P, _F, _F, _F, _S), {2: 1000}),
)


@pytest.mark.req("NET-DEV-43", *GSO_IDS)
def test_tcp_runs_end_at_psh(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """GUEST_TSO4/TSO6 with GUEST_ECN, directed bursts of one connection with PSH on segments in the middle of in-order
    runs (and a hole in the sequence after one): segmenting a coalesced packet at gso_size puts PSH on its last
    segment only, so none covers a PSH segment but as its last, and its sequence numbers are those of the segments
    (NET-DEV-57); a packet whose first segment has CWR has GSO_ECN, one without has not (NET-DEV-43)."""
    ids = ("NET-DEV-43", *GSO_IDS)
    with offered_rig(bench, verdict, ring_layout, ids, TSO | ECN, also=WANTED | RSC) as rig:
        if rig is None:
            return
        judge = Judge(verdict, True, rsc=has(rig.features, NetF.RSC_EXT))
        rng = random.Random(57)
        for v6 in (False, True):
            for mss in (MSS[0], MSS[-1]):
                for what, specs, holes in PSH_BURSTS:
                    burst = make_burst(v6, True, mss, specs, len(specs), rng, holes)
                    judge.burst(burst, exchange(rig, burst),
                                f"{'IPv6' if v6 else 'IPv4'}/TCP burst, MSS {mss}, GUEST_ECN: {what}")
        judge.finish(ids)


@pytest.mark.req(*GSO_IDS)
def test_udp_coalesced(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """GUEST_USO4/USO6: datagrams of one flow delivered as GSO_UDP_L4 packets; header rows."""
    run_bursts(bench, verdict, ring_layout, GSO_IDS, USO, tcp=False, ecn=None)


@pytest.mark.req(*RSC_IDS)
def test_rsc_ext(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """RSC_EXT (with HOST_TSO4/6 and CSUM, which it needs, and GUEST_TSO4/6): a TCP packet sent with a TSO header
    leaves the device as MSS-sized segments, together; what comes back coalesced has RSC_INFO, csum_start the number
    of segments it holds and csum_offset 0 (all of them carry data: no duplicate ACK) (NET-DEV-58), with the header
    rows of any coalesced packet (NET-DEV-56/57/60)."""
    with offered_rig(bench, verdict, ring_layout, RSC_IDS, TSO | RSC, also=WANTED | RSC) as rig:
        if rig is None:
            return
        judge = Judge(verdict, None, rsc=True)

        @settings(max_examples=6, **SETTINGS)  # type: ignore[arg-type]
        @given(v6=st.booleans(), mss=st.sampled_from(MSS), size=st.integers(1, 24000), seed=st.integers(0, 2**32 - 1))
        def run(v6: bool, mss: int, size: int, seed: int) -> None:
            rng = random.Random(seed)
            payload = rng.randbytes(size)
            l3: Packet = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
            frame = bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / l3 / TCP(sport=4000, dport=80, seq=rng.randrange(1 << 32),
                                                                       ack=77, flags="A") / payload)
            start = 54 if v6 else 34
            seq0 = int(Ether(frame)[TCP].seq)
            hdr = NetHdr(flags=F_NEEDS_CSUM, gso_type=GSO_TCPV6 if v6 else GSO_TCPV4, hdr_len=start + 20,
                         gso_size=mss, csum_start=start, csum_offset=16)
            # What the wire carries: the data in MSS pieces, each a segment (5.1.6.2).
            segs = [Sent(b"", payload[k:k + mss], 0x10, (seq0 + k) & 0xFFFFFFFF) for k in range(0, size, mss)]
            what = f"{'IPv6' if v6 else 'IPv4'}/TCP packet of {size} bytes sent with TSO, MSS {mss}, RSC_EXT"
            judge.burst(segs, exchange(rig, segs, (hdr, frame)), what)

        run()
        judge.finish(RSC_IDS)
