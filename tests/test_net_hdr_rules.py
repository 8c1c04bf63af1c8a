"""The virtio-net driver rules of testbenches/monitor/net_hdr_rules.py: a good buffer breaks no row, and each bad
one is flagged with exactly its row id (NET-DRV-50 with NET-DRV-49, which forbids DATA_VALID in any transmit
header; NET-DRV-15 with NET-DRV-56, the two rows on the one header size). Then through the ring monitor: a guest
driver sending a bad header is caught where the monitors run."""

from __future__ import annotations

from dataclasses import replace

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet
from scapy.utils import checksum

from backend.targets import default_registry
from backend.virtio.features import DeviceStatus, F, NetF, bits
from backend.virtio.net_hdr import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    F_UDP_TUNNEL_CSUM,
    GSO_ECN,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    GSO_UDP_TUNNEL_IPV4,
    GSO_UDP_TUNNEL_IPV6,
    NetHdr,
    hdr_size,
)
from sim.memory import GuestMemory
from testbenches.driver.virtio_net import GuestNetDriver
from testbenches.frames import test_frame
from testbenches.monitor import SplitRingMonitor, TracingPciDevice
from testbenches.monitor.net_hdr_rules import (
    NET_DRV_BUFFER_ROWS,
    NET_DRV_REGISTER_ROWS,
    NetConfig,
    RxBuffer,
    TxBuffer,
    judge_negotiation,
    judge_rx,
    judge_tx,
    net_drv_01,
)
from testbenches.monitor.net_offload_rules import NET_DRV_OFFLOAD_ROWS, net_drv_48, transport
from testbenches.monitor.virtio_pci_rules import Event, Finding

MAC = bytes.fromhex("020000000001")
CONFIG = NetConfig(mtu=1500, mac=MAC)
BASE = bits(F.VERSION_1, NetF.MAC, NetF.MTU)
CSUM = BASE | bits(NetF.CSUM)
TSO4 = CSUM | bits(NetF.HOST_TSO4)
TUNNEL = CSUM | bits(NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_USO, NetF.HOST_UFO, NetF.HOST_UDP_TUNNEL_GSO)
FRAME = test_frame(0, 60, src=MAC)
_L2 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
#: Frames with complete checksums: TCP and UDP over IPv4 and IPv6 (scapy computes them).
CHECKSUMMED = [bytes(_L2 / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / (b"x" * 40)),
               bytes(_L2 / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (b"y" * 41)),
               bytes(_L2 / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / (b"z" * 33)),
               bytes(_L2 / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2) / (b"w" * 20))]


def _spoiled(frame: bytes, at: int) -> bytes:
    """``frame`` with the checksum at byte ``at`` made wrong."""
    return frame[:at] + bytes([frame[at] ^ 0x5A]) + frame[at + 1:]


def _tx(hdr: NetHdr, features: int, frame: bytes = FRAME, size: int | None = None) -> TxBuffer:
    """A transmit buffer; a header with hdr_len 0 gets the frame's header length (NET-DRV-42)."""
    t = transport(frame)
    if hdr.hdr_len == 0 and t is not None:
        hdr = replace(hdr, hdr_len=t.hlen)
    data = hdr.pack().ljust(hdr_size(features) if size is None else size, b"\0") + frame
    return TxBuffer(data, len(data), features, CONFIG, "test buffer")


def _failed(findings: list[Finding]) -> set[str]:
    return {f.req_id for f in findings if not f.ok}


GSO = F_NEEDS_CSUM  # a GSO header sets NEEDS_CSUM (NET-DRV-39)
ECN = TSO4 | bits(NetF.HOST_ECN)
HDRLEN = TSO4 | bits(NetF.GUEST_HDRLEN)
ALL_GSO = CSUM | bits(NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_ECN, NetF.HOST_UFO, NetF.HOST_USO, NetF.GUEST_HDRLEN)
_V4 = IP(src="10.0.0.1", dst="10.0.0.2")
_V6 = IPv6(src="fd00::1", dst="fd00::2")


def offloaded(pkt: Packet, start: int | None = None, field: int | None = None) -> tuple[bytes, int, int]:
    """``pkt`` as a driver offloading its transport checksum hands it over: (frame, csum_start, csum_offset), the
    field holding the pseudo-header sum over the bytes from ``start`` (the transport header) on, at ``field``."""
    frame = bytes(pkt)
    t = transport(frame)
    assert t is not None
    at = t.l4 + (16 if t.proto == 6 else 6) if field is None else field
    start = t.l4 if start is None else start
    if t.v6:
        pseudo = frame[t.nh + 8:t.nh + 40] + (t.end - t.l4).to_bytes(4, "big") + bytes((0, 0, 0, t.proto))
    else:
        pseudo = frame[t.nh + 12:t.nh + 20] + bytes((0, t.proto)) + (t.end - t.l4).to_bytes(2, "big")
    covered = pseudo[32:] if t.v6 and start == t.nh + 8 else pseudo  # the addresses are then in the fold already
    partial = frame[:at] + (~checksum(covered) & 0xFFFF).to_bytes(2, "big") + frame[at + 2:]
    return partial, start, at - start


def _gso(pkt: Packet, gso: int, features: int, gso_size: int = 1400, **kw: int) -> TxBuffer:
    frame, start, offset = offloaded(pkt)
    return _tx(NetHdr(GSO, gso, kw.get("hdr_len", 0), gso_size, start, offset), features, frame)


def _csum(pkt: Packet, start: int | None = None, field: int | None = None, offset_delta: int = 0) -> TxBuffer:
    frame, csum_start, offset = offloaded(pkt, start, field)
    return _tx(NetHdr(F_NEEDS_CSUM, csum_start=csum_start, csum_offset=offset + offset_delta), CSUM, frame)


ARP_FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
#: FRAME (Ethernet/IPv4/UDP) with its checksum left to the device, at 34 + 6.
PARTIAL = offloaded(Ether(FRAME))[0]
TCP_CWR = _L2 / _V4 / TCP(sport=1, dport=2, flags="CA") / bytes(3000)
TCP_BIG = _L2 / _V4 / TCP(sport=1, dport=2, flags="A") / bytes(3000)
#: Good GSO buffers of every kind (and NEEDS_CSUM without GSO), under every host GSO feature and GUEST_HDRLEN.
GOOD_OFFLOADS = [_gso(TCP_CWR, GSO_TCPV4 | GSO_ECN, ALL_GSO),
                 _gso(_L2 / _V6 / TCP(sport=1, dport=2) / bytes(5000), GSO_TCPV6, ALL_GSO, 1000),
                 _gso(_L2 / _V4 / UDP(sport=1, dport=2) / bytes(4000), GSO_UDP, ALL_GSO, 1480),
                 _gso(_L2 / _V6 / UDP(sport=1, dport=2) / bytes(4000), GSO_UDP_L4, ALL_GSO, 1452),
                 _csum(_L2 / _V4 / UDP(sport=1, dport=2) / bytes(100)), _csum(_L2 / _V6 / TCP() / bytes(7))]
TX_CASES = {
    "NET-DRV-03": (_tx(NetHdr(), BASE, test_frame(0, 60, src=bytes.fromhex("02aabbccddee"))), {"NET-DRV-03"}),
    "NET-DRV-04": (_tx(NetHdr(), BASE & ~bits(NetF.MAC), test_frame(0, 60, src=bytes.fromhex("001122334455"))),
                   {"NET-DRV-04"}),
    "NET-DRV-09": (_tx(NetHdr(), BASE, test_frame(0, 1515, src=MAC)), {"NET-DRV-09"}),
    "NET-DRV-15": (_tx(NetHdr(), BASE, size=20), {"NET-DRV-15", "NET-DRV-56"}),
    "NET-DRV-16": (_tx(NetHdr(num_buffers=1), BASE), {"NET-DRV-16"}),
    # an ARP frame: no checksum the NEEDS_CSUM rows (NET-DRV-18/35..37) would also look at
    "NET-DRV-17": (_tx(NetHdr(flags=F_NEEDS_CSUM, csum_start=34, csum_offset=6), BASE, ARP_FRAME), {"NET-DRV-17"}),
    "NET-DRV-18": (_tx(NetHdr(), BASE, _spoiled(FRAME, 24)), {"NET-DRV-18"}),  # the IPv4 header checksum
    "NET-DRV-18/tcp": (_tx(NetHdr(), BASE, _spoiled(CHECKSUMMED[0], 50)), {"NET-DRV-18"}),
    "NET-DRV-18/udp": (_tx(NetHdr(), BASE, _spoiled(CHECKSUMMED[1], 40)), {"NET-DRV-18"}),
    "NET-DRV-18/ipv6": (_tx(NetHdr(), BASE, _spoiled(CHECKSUMMED[2], 60)), {"NET-DRV-18"}),
    "NET-DRV-20": (_tx(NetHdr(GSO, GSO_TCPV4, 0, 1400, 34, 6), CSUM | bits(NetF.HOST_TSO6), PARTIAL), {"NET-DRV-20"}),
    "NET-DRV-21": (_tx(NetHdr(GSO, GSO_TCPV6, 0, 1400, 34, 6), TSO4, PARTIAL), {"NET-DRV-21"}),
    "NET-DRV-22": (_tx(NetHdr(GSO, GSO_UDP, 0, 1400, 34, 6), TSO4, PARTIAL), {"NET-DRV-22"}),
    "NET-DRV-23": (_tx(NetHdr(GSO, GSO_UDP_L4, 0, 1400, 34, 6), TSO4, PARTIAL), {"NET-DRV-23"}),
    "NET-DRV-26": (_tx(NetHdr(GSO, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4, gso_size=1400), TSO4), {"NET-DRV-26"}),
    "NET-DRV-31": (_tx(NetHdr(GSO, GSO_UDP | GSO_UDP_TUNNEL_IPV4, gso_size=1400), TUNNEL), {"NET-DRV-31"}),
    "NET-DRV-32": (_tx(NetHdr(GSO, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6, gso_size=1400), TUNNEL),
                   {"NET-DRV-32"}),
    "NET-DRV-33": (_tx(NetHdr(F_NEEDS_CSUM | F_UDP_TUNNEL_CSUM, csum_start=34, csum_offset=6), CSUM, PARTIAL),
                   {"NET-DRV-33"}),
    "NET-DRV-38": (_tx(NetHdr(gso_type=GSO_ECN), BASE), {"NET-DRV-38"}),
    "NET-DRV-39": (_tx(NetHdr(0, GSO_TCPV4, gso_size=1400), TSO4), {"NET-DRV-39"}),
    "NET-DRV-49": (_tx(NetHdr(flags=F_DATA_VALID), CSUM), {"NET-DRV-49"}),
    "NET-DRV-24": (_gso(TCP_CWR, GSO_TCPV4, TSO4), {"NET-DRV-24"}),
    "NET-DRV-25": (_gso(TCP_CWR, GSO_TCPV4, ECN), {"NET-DRV-25"}),
    "NET-DRV-35": (_csum(_L2 / IP(src="10.0.0.1", dst="10.0.0.2", chksum=0x1234) / TCP() / b"x"), {"NET-DRV-35"}),
    # the fold starts at the IPv6 addresses: complete, but the field lacks them (not the pseudo-header sum)
    "NET-DRV-36": (_csum(_L2 / _V6 / TCP() / b"abc", start=14 + 8), {"NET-DRV-36"}),
    "NET-DRV-37": (_csum(_L2 / _V4 / TCP() / b"abc", offset_delta=-10), {"NET-DRV-37"}),
    "NET-DRV-40": (_gso(TCP_BIG, GSO_TCPV4, TSO4, gso_size=1461), {"NET-DRV-40"}),
    "NET-DRV-41": (_gso(TCP_BIG, GSO_TCPV4, HDRLEN, hdr_len=60), {"NET-DRV-41"}),
    "NET-DRV-42": (_tx(NetHdr(hdr_len=41), BASE), {"NET-DRV-42"}),
    "NET-DRV-50": (_tx(NetHdr(GSO | F_DATA_VALID, GSO_TCPV4 | GSO_UDP_TUNNEL_IPV4, gso_size=1400), TUNNEL),
                   {"NET-DRV-49", "NET-DRV-50"}),
}
RX_CASES = {
    "NET-DRV-08": (RxBuffer(2000, BASE, NetConfig(mtu=9000), "rx"), {"NET-DRV-08"}),
    "NET-DRV-53": (RxBuffer(2048, BASE | bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4), CONFIG, "rx"), {"NET-DRV-53"}),
    "NET-DRV-54": (RxBuffer(1000, BASE & ~bits(NetF.MTU), CONFIG, "rx"), {"NET-DRV-54"}),
    "NET-DRV-55": (RxBuffer(8, BASE | bits(NetF.MRG_RXBUF), CONFIG, "rx"), {"NET-DRV-55"}),
}
NEGOTIATION_CASES = {  # (offered, acked)
    "NET-DRV-02": (BASE, BASE & ~bits(NetF.MAC)),
    "NET-DRV-07": (BASE, BASE & ~bits(NetF.MTU)),
    "NET-DRV-10": (BASE | bits(NetF.STANDBY), BASE),
    "NET-DRV-13": (BASE | bits(NetF.HASH_REPORT), BASE | bits(NetF.HASH_REPORT)),
    "NET-DRV-14": (BASE | bits(NetF.CTRL_RX_EXTRA), BASE | bits(NetF.CTRL_RX_EXTRA)),
}


def test_every_row_has_a_bad_case() -> None:
    assert set(NET_DRV_BUFFER_ROWS) | set(NET_DRV_OFFLOAD_ROWS) == \
        {c.split("/")[0] for c in TX_CASES} | set(RX_CASES) | {"NET-DRV-56"}
    assert set(NET_DRV_REGISTER_ROWS) == set(NEGOTIATION_CASES) | {"NET-DRV-01"}


@pytest.mark.parametrize("features", [BASE, CSUM, TSO4, TUNNEL], ids=["base", "csum", "tso4", "tunnel"])
def test_good_transmit_buffers_break_nothing(features: int) -> None:
    for frame in (FRAME, test_frame(1, 1514, src=MAC), *CHECKSUMMED):
        findings = judge_tx(_tx(NetHdr(), features, frame))
        assert not _failed(findings), findings
        assert ("NET-DRV-18" in {f.req_id for f in findings}) == (features == BASE)
    judged = {f.req_id for f in judge_tx(_tx(NetHdr(), BASE))}
    assert {"NET-DRV-03", "NET-DRV-09", "NET-DRV-15", "NET-DRV-16", "NET-DRV-17", "NET-DRV-18", "NET-DRV-38",
            "NET-DRV-49", "NET-DRV-56"} <= judged


def test_good_offload_buffers_break_nothing() -> None:
    judged: set[str] = set()
    for tx in GOOD_OFFLOADS:
        findings = judge_tx(tx)
        assert not _failed(findings), (tx.hdr, findings)
        judged |= {f.req_id for f in findings}
    assert judged >= set(NET_DRV_OFFLOAD_ROWS) - {"NET-DRV-24", "NET-DRV-42"}  # ECN and GUEST_HDRLEN negotiated
    no_ecn = judge_tx(_gso(TCP_BIG, GSO_TCPV4, TSO4))
    assert not _failed(no_ecn) and {"NET-DRV-24", "NET-DRV-42"} <= {f.req_id for f in no_ecn}


def test_guest_hdrlen_choice() -> None:
    offered = ALL_GSO | BASE
    assert net_drv_48(offered & ~bits(NetF.GUEST_HDRLEN), BASE) is None
    found = net_drv_48(offered, offered)
    assert found is not None and found.ok
    found = net_drv_48(offered, offered & ~bits(NetF.GUEST_HDRLEN))
    assert found is not None and not found.ok


@pytest.mark.parametrize("rid", sorted(TX_CASES))
def test_bad_transmit_buffer_is_flagged_with_its_row(rid: str) -> None:
    tx, expected = TX_CASES[rid]
    assert _failed(judge_tx(tx)) == expected


def test_good_receive_buffers_break_nothing() -> None:
    for rx in (RxBuffer(1526, BASE, CONFIG, "rx"), RxBuffer(12, BASE | bits(NetF.MRG_RXBUF), CONFIG, "rx"),
               RxBuffer(65601, BASE | bits(NetF.GUEST_CSUM, NetF.GUEST_TSO4), CONFIG, "rx")):
        findings = judge_rx(rx)
        assert findings and not _failed(findings), findings


@pytest.mark.parametrize("rid", sorted(RX_CASES))
def test_bad_receive_buffer_is_flagged_with_its_row(rid: str) -> None:
    rx, expected = RX_CASES[rid]
    assert _failed(judge_rx(rx)) == expected


@pytest.mark.parametrize("rid", sorted(NEGOTIATION_CASES))
def test_feature_choice_is_flagged_with_its_row(rid: str) -> None:
    offered, acked = NEGOTIATION_CASES[rid]
    assert _failed(judge_negotiation(offered, acked)) == {rid}
    good = judge_negotiation(offered, offered | bits(NetF.CTRL_VQ))
    assert rid in {f.req_id for f in good} and not _failed(good)


def _status(seq: int, value: int) -> Event:
    return Event(seq, "status_w", None, value, 1, 0x14, -1)


def test_device_config_write_is_flagged() -> None:
    up = [_status(0, 0), _status(1, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK
                                 | DeviceStatus.DRIVER_OK)]
    assert [(f.req_id, f.ok) for f in net_drv_01(up)] == [("NET-DRV-01", True)]
    wrote = [*up, Event(2, "devcfg_w", None, 0x11, 1, 0, -1)]
    assert _failed(net_drv_01(wrote)) == {"NET-DRV-01"}
    assert net_drv_01(up[:1]) == []  # no run to DRIVER_OK: no opportunity


def test_ring_monitor_catches_a_bad_transmit_header() -> None:
    """Through the split ring monitor: a good frame from the mac field breaks nothing; then the guest driver sends a
    header with num_buffers set and a frame from another address, and NET-DRV-16 and NET-DRV-03 are flagged."""
    dev = default_registry().open("sim:virtio-net,wire=none")
    try:
        trace = TracingPciDevice(dev)
        with GuestMemory.single(4 << 20, gpa=0x100000) as mem:
            rings = SplitRingMonitor.attach(trace, mem.read)
            drv = GuestNetDriver(trace, mem, queue_size=16)
            try:
                drv.init()
                drv.send([test_frame(0, 60, src=drv.mac())], hdr=NetHdr(hdr_len=42))  # Ethernet/IPv4/UDP
                assert drv.wait_tx_done()
                net = rings.net
                assert net is not None
                assert net.tx_buffers == 1 and not _failed(net.findings), net.findings
                drv.send([test_frame(1, 60, src=bytes.fromhex("02aabbccddee"))], hdr=NetHdr(hdr_len=42, num_buffers=2))
                assert drv.wait_tx_done()
            finally:
                drv.close()
    finally:
        dev.close()
    assert net is not None and _failed(net.findings) == {"NET-DRV-16", "NET-DRV-03"}, net.findings
