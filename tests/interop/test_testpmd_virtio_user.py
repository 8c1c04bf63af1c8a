"""DPDK testpmd ``net_virtio_user`` (the frontend DPDK users run) → ``vdpa-bench serve`` → model
with a loopback wire: traffic started with ``start tx_first`` comes back to testpmd intact.

Variants cover the devargs that change the data path (mrg_rxbuf, in_order), the backend as a
client of a listening frontend (``server=1``), and a frontend that quits and comes back three
times. Frames are checked on the wire (a pcap tap in the model) and in testpmd's counters.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from backend.virtio.features import F, NetF
from models.virtio_net.device import DEFAULT_FEATURES
from testbenches.peers.process import require_program
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import INSTALL_HINT, PortStats, Testpmd, virtio_user_vdev

#: testpmd's txonly frames: 64 bytes (no FCS on a virtio port).
FRAME_LEN = 64
BURSTS = 32  # start tx_first 32: 32 bursts of 32 frames seed the loop
TRAFFIC_TARGET = 2048  # frames testpmd must receive back per session
TRAFFIC_TIMEOUT = 60.0
RECONNECTS = 3
DRIVER_OK_LINE = re.compile(r"(vhost-user#\d+): DRIVER_OK: device running \(driver features (0x[0-9a-f]+)")


@pytest.fixture(autouse=True)
def _testpmd_installed() -> None:
    require_program("dpdk-testpmd", INSTALL_HINT)


def run_traffic(tp: Testpmd) -> PortStats:
    """io forwarding seeded by tx_first: every frame received is sent again, the loop keeps going.
    Returns the counters once testpmd got :data:`TRAFFIC_TARGET` frames back (bounded wait)."""
    assert tp.link_up(), "virtio_user port link is down"
    tp.command("set fwd io")
    tp.command(f"start tx_first {BURSTS}")
    deadline = time.monotonic() + TRAFFIC_TIMEOUT
    stats = tp.port_stats()
    while stats.rx_packets < TRAFFIC_TARGET:  # each poll is one prompt round trip
        if time.monotonic() > deadline:
            pytest.fail(f"only {stats.rx_packets} of {TRAFFIC_TARGET} frames came back in {TRAFFIC_TIMEOUT} s: "
                        f"{stats}")
        stats = tp.port_stats()
    tp.command("stop")
    stats = tp.port_stats()
    assert stats.rx_errors == 0 and stats.tx_errors == 0, stats
    assert stats.rx_bytes == FRAME_LEN * stats.rx_packets, f"frames came back with another length: {stats}"
    assert stats.tx_bytes == FRAME_LEN * stats.tx_packets, stats
    return stats


def negotiated(serve: ServeProcess) -> list[int]:
    """Driver features of every session that reached DRIVER_OK, from the serve log."""
    return [int(f, 16) for _, f in DRIVER_OK_LINE.findall(serve.proc.output())]


def assert_clean_log(serve: ServeProcess, sessions: int) -> None:
    out = serve.proc.output()
    assert "session dropped" not in out and "refused" not in out and "Traceback" not in out, out[-3000:]
    assert out.count("frontend disconnected") == sessions, out[-3000:]


def check_pcap(path: Path, at_least: int) -> None:
    """Every frame on the wire is testpmd's txonly frame, intact: 64 bytes, IPv4 header checksum valid, UDP."""
    frames = rdpcap(str(path))
    assert len(frames) >= at_least, f"{len(frames)} frames on the wire, expected >= {at_least}"
    first = bytes(frames[0])
    for i, pkt in enumerate(frames):
        raw = bytes(pkt)
        assert len(raw) == FRAME_LEN, f"frame {i}: {len(raw)} bytes"
        eth = Ether(raw)
        assert IP in eth and UDP in eth, f"frame {i} is not IPv4/UDP: {eth.summary()}"
        sent_sum = eth[IP].chksum
        del eth[IP].chksum
        assert IP(bytes(eth[IP]))[IP].chksum == sent_sum, f"frame {i}: IPv4 header checksum broken"
        assert raw == first, f"frame {i} differs from the first frame: {raw.hex()} vs {first.hex()}"


@contextlib.contextmanager
def loopback_session(tmp_path: Path, sock: str, device: str, vdev: str) -> Iterator[ServeProcess]:
    """serve on ``sock`` with ``device`` on a loopback wire captured to a pcap, and one testpmd session (``vdev``)
    that moves traffic and quits. Yields serve once the session ended; then serve's log must be clean and its exit
    0, and the capture must hold the frames testpmd received, intact."""
    pcap = tmp_path / "wire.pcap"
    with ServeProcess(sock, f"{device},wire=loopback,pcap={pcap}", log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        with Testpmd(vdev, log=tmp_path / "testpmd.log", cpu=1) as tp:
            tp.wait_ready()
            stats = run_traffic(tp)
            assert tp.quit() == 0
        serve.proc.wait_for("frontend disconnected", 10.0)
        yield serve
        assert_clean_log(serve, 1)
        assert serve.stop() == 0
    check_pcap(pcap, stats.rx_packets)


@pytest.mark.parametrize("mrg_rxbuf", [0, 1], ids=["mrg_rxbuf=0", "mrg_rxbuf=1"])
@pytest.mark.parametrize("in_order", [0, 1], ids=["in_order=0", "in_order=1"])
def test_traffic_comes_back(tmp_path: Path, sock: str, mrg_rxbuf: int, in_order: int) -> None:
    vdev = virtio_user_vdev(sock, mrg_rxbuf=bool(mrg_rxbuf), in_order=bool(in_order))
    with loopback_session(tmp_path, sock, "sim:virtio-net", vdev) as serve:
        [features] = negotiated(serve)
        assert bool(features & (1 << F.IN_ORDER)) == bool(in_order and DEFAULT_FEATURES & (1 << F.IN_ORDER))
        assert bool(features & (1 << NetF.MRG_RXBUF)) == bool(mrg_rxbuf and DEFAULT_FEATURES & (1 << NetF.MRG_RXBUF))


@pytest.mark.parametrize("backend_is_client", [False, True], ids=["backend-listens", "backend-connects"])
def test_frontend_restarts_three_times(tmp_path: Path, sock: str, backend_is_client: bool) -> None:
    """testpmd quits and starts again three times; every new session gets a fresh device and traffic.
    ``backend-connects``: virtio_user ``server=1`` listens and ``serve --client --reconnect`` connects
    again each time testpmd comes back."""
    with ServeProcess(sock, "sim:virtio-net,wire=loopback", log=tmp_path / "serve.log", client=backend_is_client,
                      reconnect=backend_is_client) as serve:
        if not backend_is_client:
            serve.wait_listening()
        for round_ in range(1 + RECONNECTS):
            since = serve.proc.mark()
            with Testpmd(virtio_user_vdev(sock, server=backend_is_client), log=tmp_path / f"testpmd{round_}.log",
                         cpu=1) as tp:
                tp.wait_ready()
                if backend_is_client:
                    serve.wait_connected(since=since)
                run_traffic(tp)
                assert tp.quit() == 0
            serve.proc.wait_for(rf"vhost-user#{round_ + 1}: frontend disconnected", 10.0)
        assert len(negotiated(serve)) == 1 + RECONNECTS
        assert_clean_log(serve, 1 + RECONNECTS)
        assert serve.stop() == 0


def test_two_queue_pairs(tmp_path: Path, sock: str) -> None:
    """``queues=2,cq=1``: virtio_user runs the control queue itself and enables the second pair with
    SET_VRING_ENABLE; the backend sets the device's pairs through its own control queue; both TX
    queues carry traffic and it comes back."""
    two_queue_pairs("sim:virtio-net,queues=2,wire=loopback", sock, tmp_path)


def two_queue_pairs(device: str, sock: str, tmp_path: Path) -> None:
    """testpmd with two queue pairs and its control queue on ``serve --device DEVICE``: both TX queues carry
    traffic that comes back, MQ and CTRL_VQ negotiated, the device told to use both pairs."""
    with ServeProcess(sock, device, log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        with Testpmd(virtio_user_vdev(sock, queues=2) + ",cq=1", log=tmp_path / "testpmd.log", cpu=1,
                     extra_app=("--rxq=2", "--txq=2")) as tp:
            tp.wait_ready()
            run_traffic(tp)
            xstats = dict(re.findall(r"(\w+): (\d+)", tp.command("show port xstats 0")))
            assert int(xstats["tx_q0_good_packets"]) > 0 and int(xstats["tx_q1_good_packets"]) > 0, xstats
            assert tp.quit() == 0
        serve.proc.wait_for("frontend disconnected", 10.0)
        [features] = negotiated(serve)
        assert features & (1 << NetF.MQ) and features & (1 << NetF.CTRL_VQ)  # CTRL_VQ: the backend's own
        assert "device uses 2 queue pair(s)" in serve.proc.output()
        assert_clean_log(serve, 1)
        assert serve.stop() == 0
