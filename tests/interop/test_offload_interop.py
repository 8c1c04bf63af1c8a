"""Interop with the checksum and segmentation offloads on: DPDK testpmd's ``net_virtio_user`` through
``vdpa-bench serve`` to the model offering VIRTIO_NET_F_CSUM, GUEST_CSUM and HOST/GUEST_TSO4/6.

testpmd runs its ``csum`` forwarding engine between two ports: a ``net_pcap`` port (port 1) that receives
TCP and UDP frames the test wrote, and the virtio port (port 0) configured with TCP/UDP checksum offload,
TSO with a segment size of 800 and receive checksum offload. testpmd hands each large TCP frame to the device
with a gso_type and NEEDS_CSUM; the model segments it and completes the checksums on its loopback wire
(captured to a pcap), the segments come back on port 0 and leave through port 1 into a second pcap. scapy then
checks the wire: every segment at most 800 bytes of payload, IPv4 and TCP/UDP checksums valid, the byte
stream of each TCP connection the one the test sent. The negotiated features (serve's DRIVER_OK line) must
hold CSUM and HOST_TSO4 and the forward statistics no checksum error.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import rdpcap, wrpcap

from backend.virtio.features import NetF, bits
from models.virtio_net.device import DEFAULT_FEATURES
from testbenches.peers.process import require_program
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import INSTALL_HINT, Testpmd, forward_errors, pcap_vdev, virtio_user_vdev

#: The offer: the default plus the checksum and TCP segmentation offloads both ways.
OFFLOADS = bits(NetF.CSUM, NetF.GUEST_CSUM, NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.GUEST_TSO4, NetF.GUEST_TSO6)
#: testpmd's TSO segment size (``tso set 800 0``): the gso_size of each packet it sends.
TSO_SEGSZ = 800
#: TCP payload length of each injected frame (one TCP connection per frame, told apart by source port).
TCP_PAYLOADS = (3000, 801, 300, 5000)
UDP_PAYLOAD = 1000
TRAFFIC_TIMEOUT = 30.0
DRIVER_OK_LINE = re.compile(r"DRIVER_OK: device running \(driver features (0x[0-9a-f]+)")
#: The virtio port's offloads, set as testpmd requires: port stopped, per-port config, port started.
CONFIGURE = ("port stop 0", "port config 0 rx_offload tcp_cksum on", "port config 0 rx_offload udp_cksum on",
             "csum set ip sw 0", "csum set tcp hw 0", "csum set udp hw 0", f"tso set {TSO_SEGSZ} 0", "port start 0")


@pytest.fixture(autouse=True)
def _testpmd_installed() -> None:
    require_program("dpdk-testpmd", INSTALL_HINT)


def payload(length: int, seed: int) -> bytes:
    return bytes((j * 7 + seed * 13) & 0xFF for j in range(length))


def injected() -> list[Packet]:
    """Large TCP frames (sport 1000 + i) and one UDP datagram, checksums complete as a host would send them."""
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    frames: list[Packet] = [
        eth / IP(src="10.0.0.1", dst="10.0.0.2", id=100 + i) / TCP(sport=1000 + i, dport=2000, seq=7000 * i,
                                                                    flags="PA") / Raw(payload(n, i))
        for i, n in enumerate(TCP_PAYLOADS)]
    frames.append(eth / IP(src="10.0.0.1", dst="10.0.0.2", id=99) / UDP(sport=3000, dport=4000)
                  / Raw(payload(UDP_PAYLOAD, 9)))
    return frames


def segments_expected() -> int:
    return sum(-(-n // TSO_SEGSZ) for n in TCP_PAYLOADS) + 1


def checksums_valid(pkt: Packet) -> str | None:
    """None when the IPv4 header checksum and the TCP/UDP checksum are right, else what is wrong."""
    ip = pkt[IP]
    fresh = IP(bytes(ip))
    sums = {"ipv4": fresh.chksum}
    del fresh.chksum
    layer = TCP if TCP in fresh else UDP
    sums["l4"] = fresh[layer].chksum
    del fresh[layer].chksum
    rebuilt = IP(bytes(fresh))
    if rebuilt.chksum != sums["ipv4"]:
        return f"IPv4 header checksum {sums['ipv4']:#06x}, expected {rebuilt.chksum:#06x}"
    want = rebuilt[layer].chksum
    if sums["l4"] != want and not (want == 0 and sums["l4"] == 0xFFFF) and not (want == 0xFFFF and sums["l4"] == 0):
        return f"{layer.__name__} checksum {sums['l4']:#06x}, expected {want:#06x}"
    return None


def check_frames(path: Path, *, segmented: bool) -> None:
    """The frames in ``path``: each TCP connection's byte stream is the injected one; on the wire (``segmented``)
    every TCP frame carries at most TSO_SEGSZ bytes and every checksum is valid."""
    frames = [Ether(bytes(f)) for f in rdpcap(str(path))]
    assert len(frames) == segments_expected(), f"{path.name}: {len(frames)} frames, expected {segments_expected()}"
    streams: dict[int, dict[int, bytes]] = {}
    udp = []
    for i, eth in enumerate(frames):
        assert IP in eth, f"{path.name} frame {i} is not IPv4: {eth.summary()}"
        if segmented:
            problem = checksums_valid(eth)
            assert problem is None, f"{path.name} frame {i} ({eth.summary()}): {problem}"
        ip = bytes(eth[IP])[:eth[IP].len]  # (Ethernet padding cut off)
        l4 = eth[IP].ihl * 4
        body = ip[l4 + (eth[TCP].dataofs * 4 if TCP in eth else 8):]
        if UDP in eth:
            udp.append(body)
            continue
        assert TCP in eth, f"{path.name} frame {i}: {eth.summary()}"
        if segmented:
            assert len(body) <= TSO_SEGSZ, f"{path.name} frame {i}: {len(body)} bytes of TCP payload"
        streams.setdefault(eth[TCP].sport, {})[eth[TCP].seq] = body
    assert udp == [payload(UDP_PAYLOAD, 9)], f"{path.name}: UDP datagram changed"
    for i, n in enumerate(TCP_PAYLOADS):
        pieces = streams.get(1000 + i, {})
        data = b"".join(pieces[s] for s in sorted(pieces))
        assert data == payload(n, i), f"{path.name}: TCP connection {i} carried {len(data)} bytes, not the {n} sent"
        assert min(pieces) == 7000 * i, f"{path.name}: TCP connection {i} starts at seq {min(pieces)}"


def test_testpmd_csum_tso_through_serve(tmp_path: Path, sock: str) -> None:
    source, sink, wire = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "wire.pcap"
    wrpcap(str(source), injected())
    device = f"sim:virtio-net,features={DEFAULT_FEATURES | OFFLOADS:#x},wire=loopback,pcap={wire}"
    with ServeProcess(sock, device, log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        # --no-flush-rx: testpmd would otherwise drain the pcap port's frames before forwarding starts
        with Testpmd(virtio_user_vdev(sock), log=tmp_path / "testpmd.log", cpu=1, mbufs=4096,
                     extra_eal=("--vdev", pcap_vdev(source, sink)),
                     extra_app=("--mbuf-size=10240", "--no-flush-rx")) as tp:
            tp.wait_ready()
            for line in CONFIGURE:
                tp.command(line, 60.0)
            offloads = tp.command("show port 0 tx_offload configuration")
            assert "TCP_TSO" in offloads and "TCP_CKSUM" in offloads, offloads
            assert "TCP_CKSUM" in tp.command("show port 0 rx_offload configuration")
            tp.command("set fwd csum")
            tp.command("start")
            deadline = time.monotonic() + TRAFFIC_TIMEOUT
            while (sent_back := tp.port_stats(1).tx_packets) < segments_expected():
                assert time.monotonic() < deadline, f"{sent_back} of {segments_expected()} segments came back"
            errors = forward_errors(tp.command("stop"))
            virtio = tp.port_stats(0)
            assert tp.quit() == 0
        serve.proc.wait_for("frontend disconnected", 10.0)
        log = serve.proc.output()
        assert serve.stop() == 0
    assert "session dropped" not in log and "Traceback" not in log, log[-3000:]
    assert errors and not any(errors.values()), errors
    assert virtio.rx_errors == 0 and virtio.tx_errors == 0 and virtio.rx_nombuf == 0, virtio
    assert (virtio.tx_packets, virtio.rx_packets) == (len(TCP_PAYLOADS) + 1, segments_expected()), virtio
    features = int(DRIVER_OK_LINE.findall(log)[-1], 16)
    for bit in (NetF.CSUM, NetF.HOST_TSO4, NetF.GUEST_CSUM):
        assert features >> bit & 1, f"{bit.name} not negotiated: driver features {features:#x}"
    check_frames(wire, segmented=True)
    check_frames(sink, segmented=False)
