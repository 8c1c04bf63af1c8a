"""Frontend faults against a running ``vdpa-bench serve``: DPDK testpmd (``net_virtio_user``) killed with SIGKILL
mid-traffic, and a frontend that closes its socket halfway through a message.

After each fault serve logs the cause in one line (no traceback), ends that session and gives back what it
held (its fd count is back to the idle value), and the next session, a new testpmd, moves frames intact (on
the wire: a pcap tap in the model; in testpmd's counters).
"""

from __future__ import annotations

import signal
import socket
import struct
import time
from pathlib import Path

import pytest

from backend.vhost_user import messages as m
from sim.memory import GuestMemory
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.process import require_program
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import INSTALL_HINT, Testpmd, virtio_user_vdev
from tests.interop.test_testpmd_virtio_user import BURSTS, TRAFFIC_TIMEOUT, check_pcap, run_traffic
from tests.soak import fd_count
from tests.test_peer_faults import GPA, MEM, NOTICE, frames, settled_fd_count, truncate_memory_mid_session

R = m.FrontendRequest
#: Frames testpmd must have received before it is killed (the loop is running at full speed then).
BEFORE_KILL = 512


@pytest.fixture(autouse=True)
def _testpmd_installed() -> None:
    require_program("dpdk-testpmd", INSTALL_HINT)


def next_session_moves_frames(serve: ServeProcess, sock: str, tmp_path: Path, number: int, pcap: Path) -> None:
    """A new testpmd on the same serve: traffic comes back intact, and its session ends cleanly."""
    with Testpmd(virtio_user_vdev(sock), log=tmp_path / f"testpmd{number}.log", cpu=1) as tp:
        tp.wait_ready()
        stats = run_traffic(tp)
        assert tp.quit() == 0
    serve.proc.wait_for(rf"vhost-user#{number}: frontend disconnected", NOTICE)
    check_pcap(pcap, stats.rx_packets)


def session_lines(serve: ServeProcess, since: int, number: int) -> list[str]:
    """The serve log lines about session ``number`` after output offset ``since``, less the progress lines a
    healthy session logs (connected, DRIVER_OK, queue pairs)."""
    tag = f"vhost-user#{number}:"
    healthy = ("frontend connected", "DRIVER_OK", "queue pair")
    return [line for line in serve.proc.output()[since:].splitlines()
            if tag in line and not any(h in line for h in healthy)]


def test_testpmd_killed_mid_traffic(tmp_path: Path, sock: str) -> None:
    pcap = tmp_path / "wire.pcap"
    with ServeProcess(sock, f"sim:virtio-net,wire=loopback,pcap={pcap}", log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        idle = fd_count(serve.pid)
        since = serve.proc.mark()
        with Testpmd(virtio_user_vdev(sock), log=tmp_path / "testpmd1.log", cpu=1) as tp:
            tp.wait_ready()
            assert tp.link_up()
            tp.command("set fwd io")
            tp.command(f"start tx_first {BURSTS}")
            deadline = time.monotonic() + TRAFFIC_TIMEOUT
            while (got := tp.port_stats().rx_packets) < BEFORE_KILL:
                assert time.monotonic() < deadline, f"only {got} frames came back before the kill"
            tp.proc.stop(signum=signal.SIGKILL)  # forwarding still running: rings full of frames in flight
        serve.proc.wait_for(r"vhost-user#1: frontend disconnected", NOTICE, since=since)
        lines = session_lines(serve, since, 1)
        assert lines == [lines[0]] and "frontend disconnected" in lines[0], lines
        assert "Traceback" not in serve.proc.output()
        assert settled_fd_count(serve.pid, idle) == idle, f"serve holds {fd_count(serve.pid)} fds, {idle} idle"

        next_session_moves_frames(serve, sock, tmp_path, 2, pcap)
        assert settled_fd_count(serve.pid, idle) == idle
        assert "Traceback" not in serve.proc.output()
        assert serve.stop() == 0


#: (what the frontend sends before it closes, the reason serve logs)
HALVES = {
    "half a header": (struct.pack("<III", R.GET_FEATURES, 1, 0)[:6], "connection closed after 6 of 12 bytes"),
    "header and half a payload": (struct.pack("<IIIQ", R.SET_FEATURES, 1, 8, 1 << 32)[:16],
                                  "connection closed after 4 of 8 bytes"),
}


@pytest.mark.parametrize("live", [False, True], ids=["new-connection", "running-session"])
@pytest.mark.parametrize("half", list(HALVES))
def test_socket_closed_halfway_through_a_message(tmp_path: Path, sock: str, half: str, live: bool) -> None:
    """A raw unix socket client (``new-connection``), or a frontend whose device is running and moving frames
    (``running-session``), sends part of a message and closes."""
    data, reason = HALVES[half]
    pcap = tmp_path / "wire.pcap"
    with ServeProcess(sock, f"sim:virtio-net,wire=loopback,pcap={pcap}", log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        idle = fd_count(serve.pid)
        since = serve.proc.mark()
        if live:
            with GuestMemory.single(MEM, gpa=GPA) as mem:
                fe = VhostUserFrontend.connect(sock, mem)
                try:
                    fe.start()
                    assert fe.exchange(frames(0, 32)) == frames(0, 32)
                    fe.send_raw(data)
                finally:
                    fe.close()
        else:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                raw.settimeout(NOTICE)
                raw.connect(sock)
                raw.sendall(data)
        serve.proc.wait_for(r"vhost-user#1: session dropped", NOTICE, since=since)
        lines = session_lines(serve, since, 1)
        assert lines == [f"{lines[0].split('vhost-user#1:')[0]}vhost-user#1: session dropped: partial message: "
                         f"{reason}"], lines
        assert "Traceback" not in serve.proc.output()
        assert settled_fd_count(serve.pid, idle) == idle, f"serve holds {fd_count(serve.pid)} fds, {idle} idle"

        next_session_moves_frames(serve, sock, tmp_path, 2, pcap)
        assert settled_fd_count(serve.pid, idle) == idle
        assert serve.stop() == 0


def test_memory_truncated_under_the_device(tmp_path: Path, sock: str) -> None:
    """The frontend shrinks the memfd it passed in SET_MEM_TABLE (as DPDK's, it cannot be sealed) while the
    device runs, then kicks: the device's next access would be a SIGBUS killing serve and every session in it.
    serve's guard turns it into a fault: the session ends with the cause in one line, serve goes on."""
    pcap = tmp_path / "wire.pcap"
    with ServeProcess(sock, f"sim:virtio-net,wire=loopback,pcap={pcap}", log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        idle = fd_count(serve.pid)
        since = serve.proc.mark()
        truncate_memory_mid_session(sock)
        serve.proc.wait_for(r"vhost-user#1: session dropped", NOTICE, since=since)
        # The device may read a zero page before the guard's report ends the session, raise NEEDS_RESET and have
        # it logged (the frontend learns it from the status): the cause is the one line ending the session.
        lines = [line for line in session_lines(serve, since, 1) if "DEVICE_NEEDS_RESET" not in line]
        assert len(lines) == 1 and ("session dropped: memory truncated under the device: region 0 "
                                    "(gpa [0x100000000, 0x100400000)") in lines[0], lines
        assert "its file was truncated to 0x0 bytes" in lines[0], lines
        assert serve.proc.proc.poll() is None, "serve died"
        assert "Traceback" not in serve.proc.output()
        assert settled_fd_count(serve.pid, idle) == idle, f"serve holds {fd_count(serve.pid)} fds, {idle} idle"

        next_session_moves_frames(serve, sock, tmp_path, 2, pcap)
        assert settled_fd_count(serve.pid, idle) == idle
        assert serve.stop() == 0
