"""virtio-net host GSO: transmit segmentation (5.1.6.2 HOST_TSO4, HOST_TSO6, HOST_ECN, HOST_UFO, HOST_USO; rows of
5.1.9.2.2 and the dependency table of 5.1.3.1), on both ring layouts (``ring_layout``).

Large TCP and UDP packets over IPv4 and IPv6 are built with scapy (random payloads and MSS, hypothesis) and handed
to the device as a driver offloading their segmentation does (5.1.9.2.1: NEEDS_CSUM with the pseudo-header sum in
the transport checksum, gso_type, gso_size, csum_start/csum_offset); what the loopback brings back is judged with
scapy against the packet sent:

- TCPv4/TCPv6: every segment carries at most gso_size bytes of payload, the payloads in order are the packet's,
  sequence numbers advance by the bytes before each segment, FIN and PSH are on the last segment only, CWR (sent
  with VIRTIO_NET_HDR_GSO_ECN) on the first only, IPv4 ids differ (DF is clear), lengths and checksums complete;
- UDP (UFO): IP fragments of at most gso_size bytes of IP payload, offsets contiguous, MF on all but the last, one
  id, reassembling to the datagram with its checksum complete;
- UDP_L4 (USO): UDP datagrams of at most gso_size bytes of payload, each with its length and checksum.

No row says "the device segments correctly" by itself: the rows judged are NET-DEV-21 (without GUEST_HDRLEN the
device does not depend on hdr_len: every packet is also sent with a random hdr_len and must come out correct and
the same as with the exact one) and NET-DEV-15 (unknown flag bits: handled as if clear). NETFEAT-DEV-05/06 are
judged on the offer the check runs with (a configurable target is asked for the host GSO features; another target
is judged as it is, on the kinds it offers). Guest offloads, GUEST_HDRLEN and MRG_RXBUF stay off so each segment
comes back as one packet, as sent.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import checksum

from backend.virtio.features import NetF, bits, has
from backend.virtio.net_hdr import F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4, NetHdr
from testbenches.conformance.chains import Posted, poison, written_bytes
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, Rig
from testbenches.conformance.offers import judge_offer
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout

HOST_GSO = bits(NetF.CSUM, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_ECN, NetF.HOST_UFO, NetF.HOST_USO)
#: Off in every run: receive offloads (segments come back as sent, one per buffer), GUEST_HDRLEN (NET-DEV-21's
#: case is "without it"), MRG_RXBUF.
DROP = bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_UFO, NetF.GUEST_USO4, NetF.GUEST_USO6,
            NetF.GUEST_ECN, NetF.GUEST_UDP_TUNNEL_GSO, NetF.GUEST_UDP_TUNNEL_GSO_CSUM, NetF.RSC_EXT,
            NetF.GUEST_HDRLEN, NetF.MRG_RXBUF, NetF.HASH_REPORT, NetF.RSS)
UNKNOWN_TX_FLAGS = 0xC0  # no feature of this spec version defines flag bits 6 and 7
DEV_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
FEATURE_IDS = ("NETFEAT-DEV-05", "NETFEAT-DEV-06")
TX_IDS = ("NET-DEV-15", "NET-DEV-21")
IDS = (*TX_IDS, *FEATURE_IDS)
#: Receive buffers kept posted: more than the most segments one packet here becomes (9000 / 536 + 1).
RX_POSTED = 24
#: How long to look for segments beyond those expected (a device cutting too small) once the expected came.
EXTRA_WAIT = 0.02
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@dataclass(frozen=True)
class Kind:
    name: str
    gso_type: int
    feature: NetF
    v6: bool
    tcp: bool

    @property
    def ufo(self) -> bool:
        return self.gso_type == GSO_UDP


KINDS = (Kind("TCPv4", GSO_TCPV4, NetF.HOST_TSO4, False, True), Kind("TCPv6", GSO_TCPV6, NetF.HOST_TSO6, True, True),
         Kind("UFOv4", GSO_UDP, NetF.HOST_UFO, False, False), Kind("UFOv6", GSO_UDP, NetF.HOST_UFO, True, False),
         Kind("USOv4", GSO_UDP_L4, NetF.HOST_USO, False, False), Kind("USOv6", GSO_UDP_L4, NetF.HOST_USO, True, False))


@dataclass(frozen=True)
class Case:
    """One packet to segment: its kind, payload length, gso_size, the TCP flags it has, the odd hdr_len and whether
    the odd header also has unknown flag bits."""

    kind: Kind
    size: int
    mss: int
    flags: str = "A"
    odd_hdr_len: int = 0
    unknown: bool = False


@dataclass(frozen=True)
class Sent:
    pkt: Packet  # the packet complete (scapy's lengths and checksums)
    partial: bytes  # as the driver hands it: the pseudo-header sum in the transport checksum
    hdr: NetHdr  # with the exact hdr_len
    what: str


def build(case: Case, rng: random.Random) -> Sent:
    k = case.kind
    l3: Packet = IPv6(src="fd00::1", dst="fd00::2") if k.v6 else IP(src="10.0.0.1", dst="10.0.0.2",
                                                                      id=rng.randrange(0x10000))
    l4: Packet = TCP(sport=4000, dport=80, seq=rng.randrange(2**32), ack=12345, window=999, flags=case.flags) \
        if k.tcp else UDP(sport=4000, dport=4001)
    pkt = Ether(bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / l3 / l4 / rng.randbytes(case.size)))
    full = bytes(pkt)
    start = 14 + (40 if k.v6 else 20)
    offset = 16 if k.tcp else 6
    seg_len = len(full) - start
    proto = 6 if k.tcp else 17
    pseudo = full[22:54] + seg_len.to_bytes(4, "big") + bytes((0, 0, 0, proto)) if k.v6 else \
        full[26:34] + bytes((0, proto)) + seg_len.to_bytes(2, "big")
    partial = full[:start + offset] + (~checksum(pseudo) & 0xFFFF).to_bytes(2, "big") + full[start + offset + 2:]
    gso = k.gso_type | (GSO_ECN if k.tcp and "C" in case.flags else 0)
    hdr = NetHdr(F_NEEDS_CSUM, gso, start + (int(pkt[TCP].dataofs) * 4 if k.tcp else 8), case.mss, start, offset)
    flags = f" flags {case.flags}" if k.tcp else ""
    return Sent(pkt, partial, hdr, f"{k.name} with {case.size} bytes of payload, gso_size {case.mss}{flags}")


def _fresh(pkt: Packet, transport: bool) -> bytes:
    """``pkt`` with the lengths and checksums scapy computes (the IP ones only, not ``transport``)."""
    again = pkt.copy()
    fields = [(IP, "len"), (IP, "chksum"), (IPv6, "plen")]
    if transport:
        fields += [(TCP, "chksum"), (UDP, "len"), (UDP, "chksum")]
    for layer, name in fields:
        if again.haslayer(layer):
            delattr(again[layer], name)
    return bytes(Ether(bytes(again)))


def complete(pkt: Packet, raw: bytes) -> bool:
    """Whether every length and checksum of ``raw`` (parsed as ``pkt``) is what scapy computes: a TCP checksum of
    0xffff stands for 0 (the same ones-complement value)."""
    if _fresh(pkt, True) == raw:
        return True
    if pkt.haslayer(TCP) and int(pkt[TCP].chksum) == 0xFFFF:
        zeroed = pkt.copy()
        zeroed[TCP].chksum = 0
        return _fresh(pkt, True) == bytes(zeroed)
    return False


def segment_problems(sent: Sent, mss: int, got: Sequence[bytes]) -> list[str]:
    """What is wrong with ``got`` as the packets TSO or USO makes of ``sent`` (empty: nothing)."""
    if not got:
        return ["nothing came back"]
    hdr, orig = sent.hdr, sent.pkt
    l4t: type[Packet] = TCP if hdr.gso_type & ~GSO_ECN in (GSO_TCPV4, GSO_TCPV6) else UDP
    flags = int(orig[TCP].flags) if l4t is TCP else 0
    wrong: list[str] = []
    data, ids = b"", set()
    for n, raw in enumerate(got):
        pkt = Ether(raw)
        if not pkt.haslayer(l4t) or pkt.haslayer(IPv6ExtHdrFragment):
            wrong.append(f"segment {n}: not a {l4t.__name__} packet")
            continue
        if not complete(pkt, raw):
            wrong.append(f"segment {n}: lengths or checksums not complete and correct")
        payload = bytes(pkt[l4t].payload)
        if len(payload) > mss:
            wrong.append(f"segment {n}: {len(payload)} bytes of payload, gso_size {mss}")
        if (pkt[l4t].sport, pkt[l4t].dport) != (orig[l4t].sport, orig[l4t].dport):
            wrong.append(f"segment {n}: ports {pkt[l4t].sport}/{pkt[l4t].dport}")
        if pkt.haslayer(IP):
            ids.add(int(pkt[IP].id))
        if l4t is TCP:
            seq = (int(orig[TCP].seq) + len(data)) % 2**32
            if int(pkt[TCP].seq) != seq:
                wrong.append(f"segment {n}: seq {int(pkt[TCP].seq)}, {seq} after {len(data)} bytes")
            last = n == len(got) - 1
            want = flags & ~((0 if last else 0x09) | (0 if n == 0 else 0x80))  # FIN/PSH last, CWR first
            if int(pkt[TCP].flags) != want:
                wrong.append(f"segment {n}: TCP flags {pkt[TCP].flags} ({int(pkt[TCP].flags):#x}), {want:#x} "
                             "expected")
            if (pkt[TCP].ack, pkt[TCP].window) != (orig[TCP].ack, orig[TCP].window):
                wrong.append(f"segment {n}: ack/window changed")
        data += payload
    if data != bytes(orig[l4t].payload):
        wrong.append(f"the payloads of {len(got)} segments are not the packet's {len(bytes(orig[l4t].payload))} "
                     f"bytes ({len(data)} bytes)")
    if orig.haslayer(IP) and len(ids) != len(got):
        wrong.append(f"IPv4 ids {sorted(ids)} repeat over {len(got)} segments (DF clear)")
    return wrong


def fragment_problems(sent: Sent, mss: int, got: Sequence[bytes]) -> list[str]:
    """What is wrong with ``got`` as the fragments UFO makes of ``sent`` (one whole datagram if it fits)."""
    orig = sent.pkt
    datagram = bytes(orig[UDP])
    if len(got) == 1 and len(datagram) <= mss:
        return [] if got[0] == bytes(orig) else ["the datagram came back changed (it needed no fragment)"]
    if not got:
        return ["nothing came back"]
    wrong: list[str] = []
    data, ids = b"", set()
    for n, raw in enumerate(got):
        pkt = Ether(raw)
        last = n == len(got) - 1
        if orig.haslayer(IPv6):
            frag = pkt.getlayer(IPv6ExtHdrFragment)
            if frag is None:
                wrong.append(f"fragment {n}: no IPv6 fragment header")
                continue
            piece, offset, more, ident = bytes(frag.payload), int(frag.offset), int(frag.m), int(frag.id)
            if _fresh(pkt, False) != raw:
                wrong.append(f"fragment {n}: payload length wrong")
        else:
            if not pkt.haslayer(IP):
                wrong.append(f"fragment {n}: not IPv4")
                continue
            piece, offset, more, ident = bytes(pkt[IP].payload), int(pkt[IP].frag), int(pkt[IP].flags.MF), \
                int(pkt[IP].id)
            if _fresh(pkt, False) != raw:
                wrong.append(f"fragment {n}: IPv4 total length or header checksum wrong")
        ids.add(ident)
        if len(piece) > mss:
            wrong.append(f"fragment {n}: {len(piece)} bytes of IP payload, gso_size {mss}")
        if offset * 8 != len(data) or more != (not last):
            wrong.append(f"fragment {n}: offset {offset * 8}, MF {more} after {len(data)} bytes")
        data += piece
    if len(ids) > 1:
        wrong.append(f"fragments of one datagram with ids {sorted(ids)}")
    if data != datagram:
        wrong.append(f"the fragments do not reassemble to the datagram with its checksum complete ({len(data)} of "
                     f"{len(datagram)} bytes)")
    return wrong


class Loop:
    """transmitq1 to receiveq1 through the loopback: receive buffers kept posted, what one packet became."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.pending: dict[int, Posted] = {}

    def post(self) -> None:
        rig = self.rig
        while len(self.pending) < RX_POSTED:
            r = rig.add_chain(rig.RX, [], [rig.rx_buf_size])
            poison(rig.mem, r)
            self.pending[r.head] = r
        rig.publish(rig.RX)

    def send(self, hdr: NetHdr, frame: bytes, expect: int) -> list[bytes]:
        """``frame`` behind ``hdr``: the frames received, up to ``expect`` and any that come just after."""
        rig = self.rig
        self.post()
        t = rig.add_chain(rig.TX, [hdr.pack().ljust(rig.hdr_len, b"\0"), frame], [])
        rig.publish(rig.TX)
        for done, _ in rig.complete(rig.TX, {t.head: t}, 1):
            rig.release(done)
        got = rig.complete(rig.RX, self.pending, expect, timeout=0.5, expected=False)
        got += rig.complete(rig.RX, self.pending, 1, timeout=EXTRA_WAIT, expected=False)
        out = []
        for p, n in got:
            out.append(written_bytes(rig.mem, p, n)[rig.hdr_len:])
            rig.release(p)
        return out


def comparable(got: Sequence[bytes]) -> list[bytes]:
    """``got`` with the identification of IPv6 fragment headers cleared: the device picks it for each datagram."""
    out = []
    for raw in got:
        pkt = Ether(raw)
        if pkt.haslayer(IPv6ExtHdrFragment):
            pkt[IPv6ExtHdrFragment].id = 0
            raw = bytes(pkt)
        out.append(raw)
    return out


def expected_count(sent: Sent, mss: int) -> int:
    if sent.hdr.gso_type == GSO_UDP:
        size = max(mss & ~7, 8)
        return max(1, -(-len(bytes(sent.pkt[UDP])) // size))
    l4t: type[Packet] = TCP if sent.pkt.haslayer(TCP) else UDP
    return max(1, -(-len(bytes(sent.pkt[l4t].payload)) // mss))


def run_case(loop: Loop, verdict: Verdict, case: Case, rng: random.Random) -> None:
    sent = build(case, rng)
    judge = fragment_problems if case.kind.ufo else segment_problems
    expect = expected_count(sent, case.mss)
    clean = loop.send(sent.hdr, sent.partial, expect)
    odd_hdr = NetHdr(sent.hdr.flags | (UNKNOWN_TX_FLAGS if case.unknown else 0), sent.hdr.gso_type,
                     case.odd_hdr_len, sent.hdr.gso_size, sent.hdr.csum_start, sent.hdr.csum_offset)
    odd = loop.send(odd_hdr, sent.partial, expect)
    odd_what = f"hdr_len {case.odd_hdr_len}" + (f", flags {odd_hdr.flags:#x}" if case.unknown else "")
    wrong = [f"exact hdr_len {sent.hdr.hdr_len}: {w}" for w in judge(sent, case.mss, clean)] + \
        [f"{odd_what}: {w}" for w in judge(sent, case.mss, odd)]
    same = comparable(clean) == comparable(odd)
    verdict.check("NET-DEV-21", not wrong and same,
                  f"{sent.what}: {len(clean)} and {len(odd)} packets came back (exact hdr_len, {odd_what}), "
                  f"{'the same' if same else 'not the same'}; {'; '.join(wrong[:4]) or 'each correct'}")
    if case.unknown:
        verdict.check("NET-DEV-15", same, f"{sent.what}: with flags {odd_hdr.flags:#x} it left the device "
                      f"{'as' if same else 'otherwise than'} with flags {sent.hdr.flags:#x}")






#: Every kind once, with the TCP flags that must be moved (CWR needs HOST_ECN: only with ECN negotiated).
BASELINE = [Case(k, 4000, 1000 if k.v6 else 1400, "CFPA" if k.tcp else "A", 3, n == 0) for n, k in enumerate(KINDS)]
CASE = st.builds(Case, st.sampled_from(KINDS), st.integers(0, 9000), st.integers(536, 1400),
                 st.sampled_from(["A", "PA", "FA", "FPA", "CA", "CFPA"]), st.integers(0, 0xFFFF), st.booleans())


@pytest.mark.req(*IDS)
def test_transmit_segmentation(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """Host GSO negotiated (what the target offers of it): a packet of every kind the device segments, then random
    ones, each sent with the exact hdr_len and with a random one (some with unknown flag bits too); every packet that
    comes back judged with scapy, the two sends compared."""
    with bench.rig(bench.offering(verdict, HOST_GSO, ()) or bench.spec, mem_size=RING_MEM_SIZE) as rig:
        judge_offer(verdict, rig.offered, FEATURE_IDS)
        if not rig.offers(ring_layout, verdict, *TX_IDS):
            return
        feats = rig.features_for(extra=HOST_GSO, drop=DROP, layout=ring_layout)
        kinds = [k for k in KINDS if feats is not None and has(feats, k.feature)]
        if feats is None or not kinds:
            for rid in TX_IDS:
                verdict.not_offered(rid, f"no host GSO feature negotiable from the offer {rig.offered:#x} on "
                                         f"{ring_layout} rings")
            return
        ecn = has(feats, NetF.HOST_ECN)
        rig.bring_up(feats, 64)
        if not rig.looped(verdict, *TX_IDS):
            return
        loop = Loop(rig)
        rng = random.Random(5)
        mtu = rig.drv.mtu() or 1500

        def usable(case: Case) -> Case:
            """The case as this target can take it: gso_size within the mtu (segments must come back whole), CWR
            only with HOST_ECN."""
            k = case.kind
            room = mtu - (40 if k.v6 else 20) - (8 if k.ufo and k.v6 else 0 if k.ufo else 20 if k.tcp else 8)
            flags = case.flags if ecn or "C" not in case.flags else "FPA"
            return Case(k, case.size, max(min(case.mss, room), 8), flags, case.odd_hdr_len, case.unknown)

        for case in BASELINE:
            if case.kind in kinds:
                run_case(loop, verdict, usable(case), rng)

        @settings(max_examples=6, **SETTINGS)  # type: ignore[arg-type]
        @given(case=CASE)
        def more(case: Case) -> None:
            if case.kind in kinds:
                run_case(loop, verdict, usable(case), rng)

        more()
