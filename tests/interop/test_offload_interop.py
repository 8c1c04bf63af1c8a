"""Interop with the checksum and segmentation offloads on, through ``vdpa-bench serve`` to the model offering
VIRTIO_NET_F_CSUM, GUEST_CSUM and HOST/GUEST_TSO4/6, with two real drivers.

DPDK testpmd (``net_virtio_user``) runs its ``csum`` forwarding engine between two ports: a ``net_pcap`` port
(port 1) that receives TCP and UDP frames the test wrote, and the virtio port (port 0) configured with TCP/UDP
checksum offload, TSO with a segment size of 800 and receive checksum offload. testpmd hands each large TCP frame
to the device with a gso_type and NEEDS_CSUM; the model segments it and completes the checksums on its loopback
wire (captured to a pcap), the segments come back on port 0 and leave through port 1 into a second pcap. scapy
checks the wire: every segment at most 800 bytes of payload, IPv4 and TCP/UDP checksums valid, the byte stream of
each TCP connection the one the test sent. The negotiated features (serve's DRIVER_OK line) must hold CSUM and
HOST_TSO4 and the forward statistics no checksum error. (testpmd's ``--enable-rx-cksum`` asks for IPv4 receive
checksum offload too, which virtio cannot offer: ``port config 0 rx_offload tcp_cksum on`` asks for what it can.)

A QEMU guest's Linux virtio_net (virtio-net-pci over vhost-user with csum/gso/tso properties on) negotiates the same
offloads, toggles TSO with ethtool and sends itself a TCP transfer over the loopback wire: intact in the guest (md5)
and on the wire (scapy), segmented by the model and coalesced for the guest's receive side.
"""

from __future__ import annotations

import contextlib
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
from testbenches.guest.kernel import Kernel
from testbenches.guest.qemu import Guest, vhost_user_net_args
from testbenches.peers.process import require_program
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import INSTALL_HINT, PortStats, Testpmd, forward_errors, pcap_vdev, virtio_user_vdev
from tests.interop.test_qemu_vhost_user import EXIT_TIMEOUT, READY_TIMEOUT, SETUP, read_env

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


def all_back(virtio: PortStats, sink: PortStats) -> bool:
    """Every byte sent came back on the virtio port, however the device split or coalesced it (every frame has the
    injected frames' header: the bytes tell how much payload arrived), and the sink port sent it all on."""
    tcp_header, udp_header = len(Ether() / IP() / TCP()), len(Ether() / IP() / UDP())
    complete = sum(TCP_PAYLOADS) + UDP_PAYLOAD + udp_header + tcp_header * (virtio.rx_packets - 1)
    return virtio.rx_bytes == complete and sink.tx_packets == virtio.rx_packets


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


def check_frames(path: Path, *, segmented: bool, count: range) -> None:
    """The frames in ``path`` (their number in ``count``): each TCP connection's byte stream is the injected one; on
    the wire (``segmented``) every TCP frame carries at most TSO_SEGSZ bytes and every checksum is valid."""
    frames = [Ether(bytes(f)) for f in rdpcap(str(path))]
    assert len(frames) in count, f"{path.name}: {len(frames)} frames, expected {count}"
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


@pytest.mark.parametrize("lro", [False, True], ids=["lro-off", "lro-on"])
def test_testpmd_csum_tso_through_serve(tmp_path: Path, sock: str, lro: bool) -> None:
    """``lro-on`` also asks for TCP LRO on the virtio port (GUEST_TSO4/6): the model hands the segments coming back
    coalesced, so port 0 receives fewer packets than the wire carried and the sink holds larger frames."""
    require_program("dpdk-testpmd", INSTALL_HINT)
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
            for line in CONFIGURE[:-1] + (("port config 0 rx_offload tcp_lro on",) if lro else ()) + CONFIGURE[-1:]:
                tp.command(line, 60.0)
            offloads = tp.command("show port 0 tx_offload configuration")
            assert "TCP_TSO" in offloads and "TCP_CKSUM" in offloads, offloads
            assert "TCP_CKSUM" in tp.command("show port 0 rx_offload configuration")
            tp.command("set fwd csum")
            tp.command("start")
            deadline = time.monotonic() + TRAFFIC_TIMEOUT
            while not all_back(back := tp.port_stats(0), tp.port_stats(1)):
                assert time.monotonic() < deadline, f"not everything came back in {TRAFFIC_TIMEOUT} s: {back}"
            errors = forward_errors(tp.command("stop"))
            virtio = tp.port_stats(0)
            assert tp.quit() == 0
        serve.proc.wait_for("frontend disconnected", 10.0)
        log = serve.proc.output()
        assert serve.stop() == 0
    assert "session dropped" not in log and "Traceback" not in log, log[-3000:]
    assert errors and not any(errors.values()), errors
    assert virtio.rx_errors == 0 and virtio.tx_errors == 0 and virtio.rx_nombuf == 0, virtio
    # coalesced: at least one packet per connection (and the datagram), fewer than the segments
    received = range(len(TCP_PAYLOADS) + 1, segments_expected()) if lro else range(segments_expected(),
                                                                                   segments_expected() + 1)
    assert virtio.tx_packets == len(TCP_PAYLOADS) + 1 and virtio.rx_packets in received, virtio
    features = int(DRIVER_OK_LINE.findall(log)[-1], 16)
    for bit in (NetF.CSUM, NetF.HOST_TSO4, NetF.GUEST_CSUM, *((NetF.GUEST_TSO4,) if lro else ())):
        assert features >> bit & 1, f"{bit.name} not negotiated: driver features {features:#x}"
    check_frames(wire, segmented=True, count=range(segments_expected(), segments_expected() + 1))
    check_frames(sink, segmented=False, count=received)


# --- QEMU guest: Linux virtio_net with checksum offload and TSO on, over vhost-user ---------------------------------

QEMU_PROPERTIES = ("csum=on", "guest_csum=on", "gso=on", "host_tso4=on", "host_tso6=on", "guest_tso4=on",
                   "guest_tso6=on")
GUEST_MAC = "52:54:00:0b:e7:08"
TCP_PORT = 5001
#: Bytes the guest sends itself over TCP through the device (seconds of traffic under TCG).
TRANSFER_BYTES = 256 * 1024
GUEST_TIMEOUT = 150.0
#: In the guest after eth0 is up (tests/interop/test_qemu_vhost_user.py's SETUP): the offloads seen and toggled with
#: the host's ethtool (``chroot /host``), then one TCP transfer from 10.0.0.1 to 10.0.0.2 that crosses the device (and
#: its loopback wire) both ways, received by busybox nc into a file whose md5 is compared with the sent one's.
TRANSFER_JOB = r"""
et() { chroot /host @ETHTOOL@ "$@"; }
feature() { et -k eth0 | grep "^$1:" | cut -d' ' -f2; }
say tso_initial "$(feature tcp-segmentation-offload)"
say tx_csum_initial "$(feature tx-checksumming)"
say rx_csum_initial "$(feature rx-checksumming)"
et -K eth0 tso off; say tso_off_code $?
say tso_after_off "$(feature tcp-segmentation-offload)"
et -K eth0 tso on; say tso_on_code $?
say tso_after_on "$(feature tcp-segmentation-offload)"
cp /job/data /tmp/data
printf '#!/bin/sh\ncat /tmp/data\n' > /tmp/source.sh
printf '#!/bin/sh\ncat > /tmp/received\ntouch /tmp/received.done\n' > /tmp/sink.sh
chmod +x /tmp/source.sh /tmp/sink.sh
tcp() { grep '^Tcp:' /proc/net/snmp | tr '\n' ';'; }
say before_tcp "$(tcp)"
say before_tx "$(cat $net/statistics/tx_packets)"
say before_rx "$(cat $net/statistics/rx_packets)"
# 10.0.0.2 sends the data (cat writes it to the socket in large writes: TCP builds GSO packets), 10.0.0.1 receives
nc -l -p @PORT@ -e /tmp/source.sh &
# the listener is up when a connection succeeds: retry with a deadline (10 s)
i=0
until nc 10.0.0.2 @PORT@ -e /tmp/sink.sh; do
    [ $i -lt 200 ] || exit 20
    i=$((i + 1)); sleep 0.05
done
i=0
while [ ! -e /tmp/received.done ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done
[ -e /tmp/received.done ] || exit 21
say after_tx "$(cat $net/statistics/tx_packets)"
say after_rx "$(cat $net/statistics/rx_packets)"
say after_tcp "$(tcp)"
say sent_md5 "$(md5sum < /job/data | cut -d' ' -f1)"
say received_md5 "$(md5sum < /tmp/received | cut -d' ' -f1)"
say received_bytes "$(wc -c < /tmp/received)"
exit 0
""".replace("@PORT@", str(TCP_PORT))


def tcp_counters(line: str) -> dict[str, int]:
    """``Tcp: RtoAlgorithm ...;Tcp: 1 ...;`` from /proc/net/snmp into names and values."""
    names, values = (row.split()[1:] for row in line.strip(";").split(";"))
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def check_tcp_wire(path: Path, data: bytes, mtu: int = 1500) -> int:
    """The transfer's frames on the wire (both ways): checksums valid, each within the mtu, and the byte stream of
    the data frames (from TCP_PORT; retransmissions counted once) equal to ``data``. Returns how many frames."""
    pieces: dict[int, bytes] = {}
    frames = 0
    for i, raw in enumerate(rdpcap(str(path))):
        eth = Ether(bytes(raw))
        if TCP not in eth or TCP_PORT not in (eth[TCP].sport, eth[TCP].dport):
            continue
        frames += 1
        problem = checksums_valid(eth)
        assert problem is None, f"wire frame {i} ({eth.summary()}): {problem}"
        assert eth[IP].len <= mtu, f"wire frame {i}: IP length {eth[IP].len} over the mtu {mtu}"
        ip = bytes(eth[IP])[:eth[IP].len]
        body = ip[eth[IP].ihl * 4 + eth[TCP].dataofs * 4:]
        if body:
            assert eth[TCP].sport == TCP_PORT, f"wire frame {i}: data towards the sender: {eth.summary()}"
            pieces[eth[TCP].seq] = body
    assert pieces, "no data frame of the transfer on the wire"
    start = min(pieces)
    stream = bytearray()
    for seq in sorted(pieces):
        offset = (seq - start) % (1 << 32)
        assert offset <= len(stream), f"a hole in the stream on the wire before offset {offset}"
        stream[offset:offset + len(pieces[seq])] = pieces[seq]
    assert bytes(stream) == data, f"the wire carried {len(stream)} bytes that differ from the {len(data)} sent"
    return frames


def test_qemu_guest_tcp_with_offloads(kernel: Kernel, tmp_path: Path, started: contextlib.ExitStack) -> None:
    """The guest's virtio_net negotiates CSUM/GUEST_CSUM/HOST_TSO4/GUEST_TSO4 with the model through serve, ethtool
    turns TSO off and on again, and a TCP transfer the guest sends itself arrives intact: on the wire as the model
    segmented it (more segments than the guest transmitted packets), in the guest by md5, no checksum error."""
    ethtool = require_program("ethtool", "apt-get install ethtool (the guest runs the host's, in the shared root)")
    sock, wire = tmp_path / "vu.sock", tmp_path / "wire.pcap"
    device = f"sim:virtio-net,features={DEFAULT_FEATURES | OFFLOADS:#x},wire=loopback,pcap={wire}"
    serve = started.enter_context(ServeProcess(str(sock), device, log=tmp_path / "serve.log"))
    serve.wait_listening(READY_TIMEOUT)
    guest = started.enter_context(Guest(tmp_path / "guest", kernel=kernel, shared_memory=True, share_root=Path("/"),
                                        extra_args=vhost_user_net_args(sock, mac=GUEST_MAC,
                                                                       properties=QEMU_PROPERTIES)))
    data = payload(TRANSFER_BYTES, 5)
    guest.job_dir.mkdir(parents=True, exist_ok=True)
    (guest.job_dir / "data").write_bytes(data)
    guest.boot(SETUP + TRANSFER_JOB.replace("@ETHTOOL@", ethtool))
    result = guest.wait_job(GUEST_TIMEOUT, boot=1)
    assert result.exit_code == 0, f"guest job exit {result.exit_code}:\n{guest.console()[-3000:]}"
    env = read_env(guest.job_dir / "result-1.env")
    assert guest.wait_exit(EXIT_TIMEOUT) == 0, f"QEMU exit status:\n{guest.console()[-3000:]}"
    serve.proc.wait_for(r"vhost-user#1: frontend disconnected", EXIT_TIMEOUT)
    assert serve.stop() == 0, f"serve exit status; log:\n{serve.proc.tail()}"
    log = serve.log()
    for bad in ("refused", "session dropped", "Traceback"):
        assert bad not in log, f"{bad!r} in the backend log:\n{log[-3000:]}"

    features = int(DRIVER_OK_LINE.findall(log)[0], 16)
    for bit in (NetF.CSUM, NetF.GUEST_CSUM, NetF.HOST_TSO4, NetF.GUEST_TSO4):
        assert features >> bit & 1, f"{bit.name} not negotiated by the guest: driver features {features:#x}"
    assert (env["tso_initial"], env["tx_csum_initial"], env["rx_csum_initial"]) == ("on", "on", "on"), env
    assert (env["tso_off_code"], env["tso_after_off"]) == ("0", "off"), env
    assert (env["tso_on_code"], env["tso_after_on"]) == ("0", "on"), env
    assert env["received_md5"] == env["sent_md5"] and env["received_bytes"] == str(TRANSFER_BYTES), env
    before, after = tcp_counters(env["before_tcp"]), tcp_counters(env["after_tcp"])
    assert after["InErrs"] == before["InErrs"] and after["InCsumErrors"] == before["InCsumErrors"], (before, after)
    # Every TCP segment the guest sent (OutSegs counts a GSO packet's segments) is one frame on the wire; the driver
    # handed the device fewer packets than that: the device cut the GSO packets up.
    segments = after["OutSegs"] - before["OutSegs"]
    frames = check_tcp_wire(wire, data)
    assert frames == segments, f"the wire carried {frames} frames of the connection, the guest sent {segments} segments"
    transmitted = int(env["after_tx"]) - int(env["before_tx"])
    assert segments > transmitted, \
        f"{segments} TCP segments in {transmitted} packets the guest transmitted: no GSO packet reached the device"
    # With GUEST_TSO4 the device hands the guest received segments coalesced: fewer packets than frames came back.
    received = int(env["after_rx"]) - int(env["before_rx"])
    assert received < frames, f"the guest received {received} packets for {frames} frames: nothing was coalesced"
