"""virtio-net checksum offload (5.1.6.2 VIRTIO_NET_F_CSUM, 5.1.6.4 VIRTIO_NET_F_GUEST_CSUM; rows of 5.1.9.2.2 and
5.1.9.4.1), on both ring layouts (``ring_layout``).

Frames are built and their checksums judged with scapy (IPv4/IPv6, TCP/UDP, random payloads) and sent over the
target's loopback wire. On a configurable target (``sim:``) the device is built offering CSUM and GUEST_CSUM (the
default offer has neither); elsewhere the rows read *not offered* when the target lacks them.

Transmit rules are judged differentially where the spec says "handled as if ...": a frame sent with unknown flag
bits (NET-DEV-15) or a wrong hdr_len (NET-DEV-21) must leave the device exactly as the same frame sent with a clean
header does, whatever that is; whether the checksum it filled is right is NET-DEV-35's question (the loopback
delivers it without GUEST_CSUM: it must arrive complete and correct).

The receive header rows about guest GSO, tunnels and RSC (NET-DEV-36..41, 59, 63) are judged where the rule is
"without feature X the device never sets Y": the checks negotiate none of those features and look at every
receive header. Rows about what the device does when it *does* offer them are left to checks of those features.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import checksum

from backend.virtio.features import NetF, bits
from backend.virtio.net_hdr import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    F_RSC_INFO,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    NetHdr,
)
from testbenches.conformance.chains import Posted, poison, written_bytes
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, Rig
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout

CSUM = bits(NetF.CSUM)
GUEST_CSUM = bits(NetF.GUEST_CSUM)
#: Receive-side offloads a check negotiates only when it means to (guest GSO, ECN, tunnels, RSC: none here).
GUEST_OFFLOADS = bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_UFO, NetF.GUEST_USO4,
                      NetF.GUEST_USO6, NetF.GUEST_ECN, NetF.GUEST_UDP_TUNNEL_GSO, NetF.GUEST_UDP_TUNNEL_GSO_CSUM,
                      NetF.RSC_EXT)
#: Transmit header flag bits no feature of this spec version defines (NEEDS_CSUM, DATA_VALID, RSC_INFO and
#: UDP_TUNNEL_CSUM are bits 0..3).
UNKNOWN_TX_FLAGS = 0xC0
#: VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM and the gso_type tunnel bits (5.1.6).
F_UDP_TUNNEL_CSUM = 8
GSO_UDP_TUNNEL_IPV4 = 0x20
GSO_UDP_TUNNEL_IPV6 = 0x40
DEV_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
#: Largest payload that keeps the biggest header stack (IPv6 + TCP) within a 1500-byte MTU.
MAX_PAYLOAD = 1500 - 40 - 20
#: Frames in flight at once (rings of 64: each TX chain takes two descriptors).
BURST = 16
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
TX_IDS = ("NET-DEV-15", "NET-DEV-21", "NET-DEV-34", "NET-DEV-35")
#: Receive header rows observable on every header when no guest GSO/tunnel/RSC feature is negotiated.
RX_HDR_IDS = ("NET-DEV-36", "NET-DEV-37", "NET-DEV-38", "NET-DEV-39", "NET-DEV-40", "NET-DEV-41", "NET-DEV-55",
              "NET-DEV-59")
RX_IDS = ("NET-DEV-16", "NET-DEV-26", "NET-DEV-62", "NET-DEV-63")
#: What a packet received with NEEDS_CSUM must be (a device may deliver such packets, NET-DEV-46).
RX_PARTIAL_IDS = ("NET-DEV-47", "NET-DEV-48", "NET-DEV-49")


@dataclass(frozen=True)
class Frame:
    """A test packet: complete (scapy's checksums), and as a driver offloading its transport checksum hands it
    over (the pseudo-header sum in the checksum field, NET-DRV-36) with the csum_start/csum_offset to finish it."""

    full: bytes
    partial: bytes
    csum_start: int
    csum_offset: int
    headers: int  # Ethernet, IP and transport header bytes: the hdr_len a driver would write (NET-DRV-42)
    what: str

    @property
    def field(self) -> int:
        return self.csum_start + self.csum_offset


def make_packet(v6: bool, tcp: bool, payload: bytes) -> Frame:
    l3: Packet = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    l4: Packet = TCP(sport=4000, dport=80, seq=7, flags="PA") if tcp else UDP(sport=4000, dport=4001)
    full = bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / l3 / l4 / payload)
    start = 14 + (40 if v6 else 20)
    offset = 16 if tcp else 6
    seg_len = len(full) - start
    proto = 6 if tcp else 17
    if v6:
        pseudo = full[22:54] + seg_len.to_bytes(4, "big") + bytes((0, 0, 0, proto))
    else:
        pseudo = full[26:34] + bytes((0, proto)) + seg_len.to_bytes(2, "big")
    partial = bytearray(full)
    partial[start + offset:start + offset + 2] = (~checksum(pseudo) & 0xFFFF).to_bytes(2, "big")
    what = f"{'IPv6' if v6 else 'IPv4'}/{'TCP' if tcp else 'UDP'} with {len(payload)} bytes of payload"
    return Frame(full, bytes(partial), start, offset, start + (20 if tcp else 8), what)


def transport_checksum_ok(frame: bytes) -> bool:
    """scapy's verdict: the frame's TCP/UDP checksum is complete and correct (0 and 0xffff being one value, except
    that a UDP checksum of 0 means none was computed)."""
    pkt = Ether(frame)
    l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    if l4 is None:
        return False
    got = int(l4.chksum)
    again = pkt.copy()
    del again[type(l4)].chksum
    want = int(Ether(bytes(again))[type(l4)].chksum)
    if isinstance(l4, UDP) and got == 0:
        return False
    return got == want or {got, want} == {0, 0xFFFF}


def judge_receive_partial(verdict: Verdict, h: NetHdr, frame: bytes, where: str) -> None:
    """A packet delivered with NEEDS_CSUM: earlier checksums valid (NET-DEV-47), the pseudo-header sum in the field
    (NET-DEV-48), and folding from csum_start to the end into csum_start + csum_offset completes it (NET-DEV-49)."""
    start, at = h.csum_start, h.csum_start + h.csum_offset
    pkt = Ether(frame)
    l3 = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
    inside = start < len(frame) and at + 2 <= len(frame) and l3 is not None and l4 is not None
    where = f"{where}: received with NEEDS_CSUM at {start}+{h.csum_offset}"
    if not inside or l3 is None or l4 is None:
        for rid in RX_PARTIAL_IDS:
            verdict.check(rid, False, f"{where}: not a TCP/UDP checksum inside the {len(frame)}-byte frame")
        return
    folded = checksum(frame[start:])
    finished = frame[:at] + (folded or 0xFFFF).to_bytes(2, "big") + frame[at + 2:]
    verdict.check("NET-DEV-49", transport_checksum_ok(finished), f"{where}: completing it does not give a valid packet")
    nh = 18 if frame[12:14] in (b"\x81\x00", b"\x88\xa8") else 14  # past one VLAN tag, if any
    if isinstance(l3, IP):
        verdict.check("NET-DEV-47", checksum(frame[nh:nh + 4 * int(l3.ihl)]) == 0,
                      f"{where}: the IPv4 header checksum before it is wrong")
        seg = int(l3.len) - 4 * int(l3.ihl)
        pseudo = frame[nh + 12:nh + 20] + bytes((0, int(l3.proto))) + seg.to_bytes(2, "big")
    else:
        verdict.check("NET-DEV-47", True)  # no checksum before the transport one in an IPv6 packet
        pseudo = frame[nh + 8:nh + 40] + int(l3.plen).to_bytes(4, "big") + bytes((0, 0, 0, int(l3.nh)))
    want = ~checksum(pseudo) & 0xFFFF
    got = int.from_bytes(frame[at:at + 2], "big")
    verdict.check("NET-DEV-48", got == want or {got, want} == {0, 0xFFFF},
                  f"{where}: field {got:#06x}, pseudo-header sum {want:#06x}")


def zero_udp_checksum(f: Frame) -> Frame:
    """The UDP packet ``f`` with its checksum field 0."""
    full = f.full[:f.field] + b"\0\0" + f.full[f.field + 2:]
    rule = "invalid over IPv6, RFC 8200" if f.what.startswith("IPv6") else "none computed over IPv4, RFC 768"
    return Frame(full, full, f.csum_start, f.csum_offset, f.headers, f"{f.what}, UDP checksum 0 ({rule})")


def corrupted(frame: bytes, at: int) -> bytes:
    """``frame`` with one bit flipped at byte ``at`` of its transport segment or checksum (the checksum now wrong)."""
    out = bytearray(frame)
    out[at] ^= 0x10
    return bytes(out)




def _bring_up(rig: Rig, verdict: Verdict, layout: Layout, ids: Sequence[str], *, want: int, drop: int) -> bool:
    """Up with ``want`` negotiated and ``drop`` not, frames coming back; else ``ids`` say why not."""
    if not rig.offers(layout, verdict, *ids):
        return False
    feats = rig.features_for(extra=want, drop=drop, layout=layout)
    if feats is None or feats & want != want:
        for rid in ids:
            verdict.not_offered(rid, f"the device's offer {rig.offered:#x} lacks bits {want:#x} on {layout} rings")
        return False
    rig.bring_up(feats, 64)
    return rig.looped(verdict, *ids)


def _send(rig: Rig, items: Sequence[tuple[NetHdr, bytes]]) -> list[tuple[NetHdr, bytes] | None]:
    """Each (header, frame) through transmitq1, looped back: what receiveq1 got for each, in order (None for what
    never came back). Frames are told apart by a tag in the last two bytes of the source MAC address (no checksum
    covers it), put back as sent before the frame is handed on."""
    out: list[tuple[NetHdr, bytes] | None] = []
    for lo in range(0, len(items), BURST):
        burst = [(h, f[:10] + k.to_bytes(2, "big") + f[12:]) for k, (h, f) in enumerate(items[lo:lo + BURST])]
        pending: dict[int, Posted] = {}
        order: list[Posted] = []
        for _ in burst:
            r = rig.add_chain(rig.RX, [], [rig.rx_buf_size])
            poison(rig.mem, r)
            pending[r.head] = r
            order.append(r)
        rig.publish(rig.RX)
        sent: dict[int, Posted] = {}
        for hdr, frame in burst:
            t = rig.add_chain(rig.TX, [hdr.pack().ljust(rig.hdr_len, b"\0"), frame], [])
            sent[t.head] = t
        rig.publish(rig.TX)
        got = rig.complete(rig.RX, pending, len(burst))
        for t, _ in rig.complete(rig.TX, sent, len(burst)):
            rig.release(t)
        back: list[tuple[NetHdr, bytes] | None] = [None] * len(burst)
        for p, n in got:
            data = written_bytes(rig.mem, p, n)
            frame = data[rig.hdr_len:]
            k = int.from_bytes(frame[10:12], "big")
            if k < len(burst) and back[k] is None:
                orig = items[lo + k][1]
                back[k] = (NetHdr.unpack(data.ljust(12, b"\0")), frame[:10] + orig[10:12] + frame[12:])
        out += back
        for p in order:
            rig.release(p)
        # Whatever did not come back leaves its receive buffer posted: take the next burst on a clean ring.
        if len(got) < len(burst):
            rig.bring_up(rig.features, 64)
    return out


def _judge_rx_header(verdict: Verdict, h: NetHdr, where: str) -> None:
    """The receive header rows that hold for every packet when no guest GSO, tunnel or RSC feature is negotiated."""
    gso = h.gso_type & ~(GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6 | GSO_ECN)  # the type without its modifier bits
    for rid, value, feature in (("NET-DEV-36", GSO_TCPV4, "GUEST_TSO4"), ("NET-DEV-37", GSO_UDP, "GUEST_UFO"),
                                ("NET-DEV-38", GSO_TCPV6, "GUEST_TSO6"),
                                ("NET-DEV-39", GSO_UDP_L4, "GUEST_USO4/6")):
        verdict.check(rid, gso != value, f"{where}: gso_type {h.gso_type:#x} without {feature}")
    verdict.check("NET-DEV-40", not h.gso_type & (GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6),
                  f"{where}: gso_type {h.gso_type:#x} has a UDP-tunnel bit without GUEST_UDP_TUNNEL_GSO")
    verdict.check("NET-DEV-41", not h.flags & F_UDP_TUNNEL_CSUM,
                  f"{where}: flags {h.flags:#x} has UDP_TUNNEL_CSUM without GUEST_UDP_TUNNEL_GSO_CSUM")
    verdict.check("NET-DEV-55", h.gso_type == GSO_NONE, f"{where}: gso_type {h.gso_type:#x} without guest GSO")
    verdict.check("NET-DEV-59", not h.flags & F_RSC_INFO, f"{where}: flags {h.flags:#x} has RSC_INFO without RSC_EXT")


#: Complete packets the header rows are judged on where no offload is asked for: (IPv6?, TCP?, payload length).
PLAIN_PACKETS = [(v6, tcp, size) for size in (0, 1, 333, MAX_PAYLOAD) for v6 in (False, True) for tcp in (False, True)]


@pytest.mark.req("NET-DEV-35", *RX_HDR_IDS)
def test_receive_header_without_offloads(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """On the target as it is, no receive offload negotiated: complete IPv4/IPv6 TCP/UDP packets sent without
    NEEDS_CSUM arrive with their checksums complete and correct (NET-DEV-35) and a receive header with no guest
    GSO type, tunnel bit or RSC_INFO (NET-DEV-36..41, 55, 59): a target without CSUM is judged on these too."""
    ids = ("NET-DEV-35", *RX_HDR_IDS)
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        if not _bring_up(rig, verdict, ring_layout, ids, want=0, drop=GUEST_OFFLOADS):
            return
        rng = random.Random(35)
        frames = [make_packet(v6, tcp, rng.randbytes(size)) for v6, tcp, size in PLAIN_PACKETS]
        for f, back in zip(frames, _send(rig, [(NetHdr(), f.full) for f in frames]), strict=True):
            where = f"{f.what}, NEEDS_CSUM clear"
            verdict.check("NET-DEV-35", back is not None and back[1] == f.full and transport_checksum_ok(back[1]),
                          f"{where}: {'not received' if back is None else 'received'}"
                          f"{'' if back is None or back[1] == f.full else ' changed'}")
            if back is not None:
                _judge_rx_header(verdict, back[0], where)


#: One transmitted packet of the property: IPv6?, TCP?, payload length, hdr_len the driver writes, unknown flag bits?
TX_CASE = st.tuples(st.booleans(), st.booleans(), st.integers(0, MAX_PAYLOAD), st.integers(0, 0xFFFF), st.booleans())


@pytest.mark.req(*TX_IDS, *RX_HDR_IDS)
def test_transmit_checksum_completed(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """With CSUM negotiated (GUEST_CSUM not), packets with NEEDS_CSUM and the pseudo-header sum arrive through the
    loopback complete and correct (NET-DEV-35) with receive flags 0 (NET-DEV-34); the same packet with unknown flag
    bits or a wrong hdr_len leaves the device exactly as with a clean header (NET-DEV-15/21)."""
    ids = (*TX_IDS, *RX_HDR_IDS)
    spec = bench.offering(verdict, CSUM, ids)
    if spec is None:
        return
    with bench.rig(spec, mem_size=RING_MEM_SIZE) as rig:
        if not _bring_up(rig, verdict, ring_layout, ids, want=CSUM, drop=GUEST_OFFLOADS):
            return

        @settings(max_examples=8, **SETTINGS)  # type: ignore[arg-type]
        @given(cases=st.lists(TX_CASE, min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
        def run(cases: list[tuple[bool, bool, int, int, bool]], seed: int) -> None:
            rng = random.Random(seed)
            items: list[tuple[NetHdr, bytes]] = []
            meta: list[tuple[Frame, str, bool]] = []
            for k, (v6, tcp, size, hdr_len, unknown_bits) in enumerate(cases):
                unknown = unknown_bits or k == 0  # each example has one at least
                f = make_packet(v6, tcp, rng.randbytes(size))
                clean = NetHdr(flags=F_NEEDS_CSUM, hdr_len=f.headers, csum_start=f.csum_start,
                               csum_offset=f.csum_offset)
                odd = NetHdr(flags=F_NEEDS_CSUM | (UNKNOWN_TX_FLAGS if unknown else 0), hdr_len=hdr_len,
                             csum_start=f.csum_start, csum_offset=f.csum_offset)
                items += [(clean, f.partial), (odd, f.partial)]
                meta.append((f, f"flags {odd.flags:#x}, hdr_len {hdr_len}", unknown))
            got = _send(rig, items)
            for k, (f, odd_what, unknown) in enumerate(meta):
                a, b = got[2 * k], got[2 * k + 1]
                for back, where in ((a, f"{f.what}, clean header"), (b, f"{f.what}, {odd_what}")):
                    ok = back is not None and transport_checksum_ok(back[1]) and \
                        back[1][:f.field] == f.full[:f.field] and back[1][f.field + 2:] == f.full[f.field + 2:]
                    csum = back[1][f.field:f.field + 2].hex() if back is not None else "-"
                    verdict.check("NET-DEV-35", ok,
                                  f"{where}: sent with NEEDS_CSUM at {f.csum_start}+{f.csum_offset}, "
                                  f"{'received' if back else 'not received'} with checksum {csum} "
                                  f"(complete: {f.full[f.field:f.field + 2].hex()})")
                    if back is not None:
                        verdict.check("NET-DEV-34", back[0].flags == 0,
                                      f"{where}: receive flags {back[0].flags:#x} without GUEST_CSUM")
                        _judge_rx_header(verdict, back[0], where)
                same = (a is None) == (b is None) and (a is None or b is None or a[1] == b[1])
                # hdr_len is always a random one: NET-DEV-21's case; with unknown flag bits NET-DEV-15's as well
                for rid in ("NET-DEV-15", "NET-DEV-21") if unknown else ("NET-DEV-21",):
                    verdict.check(rid, same, f"{f.what}: sent with {odd_what} it left the device "
                                             f"{'otherwise than' if not same else 'as'} with a clean header")

        run()


#: One received packet of the property: IPv6?, TCP?, payload length, where its transport segment is corrupted
#: (a fraction of its length: 0 is the checksum field's first byte).
RX_CASE = st.tuples(st.booleans(), st.booleans(), st.integers(0, MAX_PAYLOAD), st.floats(0, 1))


@pytest.mark.req(*RX_IDS, *RX_PARTIAL_IDS)
def test_receive_checksum_validated(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """With CSUM and GUEST_CSUM negotiated: a header without NEEDS_CSUM leaves the packet as it is, whatever
    csum_start/csum_offset say (NET-DEV-16), so packets with corrupted checksums reach the receive side; none comes
    back with DATA_VALID (NET-DEV-26 for what was sent without NEEDS_CSUM, NET-DEV-62 for every DATA_VALID), nor
    does an IPv6/UDP packet with checksum field 0 (invalid there; over IPv4 0 means none, not judged), and
    DATA_VALID never comes with a UDP-tunnel gso_type bit (NET-DEV-63). A packet received with NEEDS_CSUM (the device
    may, NET-DEV-46) is judged by NET-DEV-47..49; a device that never does leaves them not applicable."""
    ids = (*RX_IDS, *RX_PARTIAL_IDS)
    spec = bench.offering(verdict, CSUM | GUEST_CSUM, ids)
    if spec is None:
        return
    with bench.rig(spec, mem_size=RING_MEM_SIZE) as rig:
        if not _bring_up(rig, verdict, ring_layout, ids, want=CSUM | GUEST_CSUM,
                         drop=GUEST_OFFLOADS & ~GUEST_CSUM):
            return
        received = [0, 0]  # packets received, of which with NEEDS_CSUM

        def judge(sent: bytes, back: tuple[NetHdr, bytes] | None, where: str, *, unchanged: bool,
                  no_checksum: bool = False) -> None:
            if back is None:
                if unchanged:
                    verdict.check("NET-DEV-16", False, f"{where}: not received")
                return
            h, frame = back
            received[0] += 1
            if h.flags & F_NEEDS_CSUM:
                received[1] += 1
                judge_receive_partial(verdict, h, frame, where)
            if unchanged:
                verdict.check("NET-DEV-16", frame == sent, f"{where}: the frame left the device changed")
            valid = bool(h.flags & F_DATA_VALID)
            if valid:
                # An IPv4/UDP datagram sent with checksum 0 carries none (RFC 768): nothing wrong to vouch for.
                good = transport_checksum_ok(frame) or (no_checksum and frame == sent)
                verdict.check("NET-DEV-62", good, f"{where}: DATA_VALID on a packet whose checksum is wrong")
                if unchanged:
                    verdict.check("NET-DEV-26", good, f"{where}: sent without NEEDS_CSUM with a wrong checksum, "
                                                      f"received with DATA_VALID (flags {h.flags:#x})")
                verdict.check("NET-DEV-63", not h.gso_type & (GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6),
                              f"{where}: DATA_VALID with gso_type {h.gso_type:#x}")
            else:  # nothing vouched for: the rules hold for this packet
                verdict.check("NET-DEV-62", True)
                verdict.check("NET-DEV-63", True)
                if unchanged:
                    verdict.check("NET-DEV-26", True)

        # Fixed cases: NEEDS_CSUM clear with csum_start/offset at the checksum field, out of range, or with unknown
        # flag bits; the packet's checksum wrong each time.
        f = make_packet(False, False, b"payload-" * 20)
        bad = corrupted(f.full, f.field)
        cases = [(NetHdr(csum_start=f.csum_start, csum_offset=f.csum_offset), "csum_start/offset at the UDP checksum"),
                 (NetHdr(csum_start=0xFFF0, csum_offset=0xFFFF), "csum_start/offset out of range"),
                 (NetHdr(flags=UNKNOWN_TX_FLAGS, csum_start=f.csum_start, csum_offset=f.csum_offset),
                  f"flags {UNKNOWN_TX_FLAGS:#x}")]
        for (_, what), back in zip(cases, _send(rig, [(h, bad) for h, _ in cases]), strict=True):
            judge(bad, back, f"IPv4/UDP, wrong checksum, NEEDS_CSUM clear, {what}", unchanged=True)
        # UDP checksum field 0, NEEDS_CSUM clear: over IPv6 an invalid checksum (RFC 8200 8.1), so no DATA_VALID
        # (NET-DEV-62/26); over IPv4 "no checksum computed" (RFC 768), which the rows neither oblige nor forbid a
        # device to pass with DATA_VALID: that packet is judged on the other rows only.
        zeros = [(v6, zero_udp_checksum(make_packet(v6, False, bytes(range(40)) * n))) for v6 in (True, False)
                 for n in (0, 1, 7)]
        sent_zeros = [(NetHdr(csum_start=z.csum_start, csum_offset=z.csum_offset), z.full) for _, z in zeros]
        for (v6, z), back in zip(zeros, _send(rig, sent_zeros), strict=True):
            judge(z.full, back, f"{z.what}, NEEDS_CSUM clear", unchanged=True, no_checksum=not v6)

        @settings(max_examples=8, **SETTINGS)  # type: ignore[arg-type]
        @given(cases=st.lists(RX_CASE, min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
        def run(cases: list[tuple[bool, bool, int, float]], seed: int) -> None:
            rng = random.Random(seed)
            items: list[tuple[NetHdr, bytes]] = []
            whats: list[tuple[bytes, str, bool]] = []
            for v6, tcp, size, where in cases:
                p = make_packet(v6, tcp, rng.randbytes(size))
                at = p.field + int(where * (len(p.full) - p.field - 1))
                broken = corrupted(p.full, at)
                # The broken packet as it is, with csum_start/offset pointing at its checksum; and the sound one as
                # a driver offloading its checksum sends it (DATA_VALID may come back on that one).
                items += [(NetHdr(csum_start=p.csum_start, csum_offset=p.csum_offset), broken),
                          (NetHdr(flags=F_NEEDS_CSUM, csum_start=p.csum_start, csum_offset=p.csum_offset), p.partial)]
                whats += [(broken, f"{p.what}, bit flipped at byte {at}, NEEDS_CSUM clear", True),
                          (p.full, f"{p.what}, NEEDS_CSUM", False)]
            for (sent, what, unchanged), back in zip(whats, _send(rig, items), strict=True):
                judge(sent, back, what, unchanged=unchanged)

        run()
        if not received[1]:
            for rid in RX_PARTIAL_IDS:
                verdict.not_applicable(rid, f"the device set NEEDS_CSUM on none of the {received[0]} packets it "
                                            "delivered (it may, NET-DEV-46): no partial checksum to judge")
