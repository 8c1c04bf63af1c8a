"""Peer faults around a running ``vdpa-bench serve``: the device process killed mid-traffic, and the frontend's
memory truncated under a device process.

``vdpa-bench device`` (the behavioral model, or the RTL under Verilator, over vfio-user) <- ``serve --device
vfio-user:PATH`` <- a Python frontend. SIGKILL to the device process while frames are in flight: serve notices at
once (it watches the device connection, not only the frontend), logs the cause in one line and no traceback,
closes the frontend's connection, and gives back everything the session held; the next session, on a device
process started again, moves frames intact, and serve's fd count is back to what it was idle. A memfd the frontend
shrinks under the device process: the device's SIGBUS guard turns the access into a DMA fault that the device
logs, the device raises DEVICE_NEEDS_RESET, and serve ends that session naming the truncated region.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import time
from pathlib import Path

import pytest

from backend.vhost_user import messages as m
from backend.vhost_user.server import MESSAGE_TIMEOUT, VhostUserServer
from sim.memory import GuestMemory
from testbenches.conformance.harness import settled
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import FrontendError, VhostUserFrontend
from testbenches.peers.serve import DeviceProcess, ServeProcess
from tests.rtl_build import require_rtl_build
from tests.vhost_user_rig import Devices

MODEL = "virtio-net,mac=02:00:00:00:00:0b,wire=loopback"
#: The device processes a fault test runs: the behavioral model, and the RTL under Verilator (its default MAC: the
#: MAC is a parameter of the design, and the default build is the one the other RTL tests share).
DEVICE_MODELS = {"sim": MODEL, "rtl": "rtl:virtio-net,wire=loopback"}
MAC = b"\x02\x00\x00\x00\x00\x0b"
READY = 30.0
NOTICE = 5.0  # bound on serve noticing the dead device and closing the frontend's connection
MEM = 4 << 20
GPA = 0x1_0000_0000
R = m.FrontendRequest
FLOOD = 100  # hostile connections per round
RSS_SLACK_KIB = 8 << 10  # serve's RSS may grow this much over a second flood (allocator noise), not per message
#: A device process's start: the RTL's loads its Verilator build (built before, see :func:`device_model`).
#: How often /proc is sampled while a count settles.
PROC_POLL = 0.05
DEVICE_READY = {"sim": READY, "rtl": 120.0}


def frames(first: int, n: int) -> list[bytes]:
    return [test_frame(i, 128, dst=MAC) for i in range(first, first + n)]


def truncate_memory_mid_session(sock: str) -> None:
    """A frontend on ``sock`` moves 32 frames, truncates its memory file to 0 and kicks every ring straight
    through the eventfds (publishing would touch the rings): serve must end the session within NOTICE s."""
    with GuestMemory.single(MEM, gpa=GPA) as mem:
        fe = VhostUserFrontend.connect(sock, mem)
        try:
            fe.start()
            assert fe.exchange(frames(0, 32)) == frames(0, 32)
            os.ftruncate(mem.regions[0].fd, 0)  # from here on this process must not touch the memory either
            for kick in fe.kicks.values():
                os.eventfd_write(kick, 1)
            assert fe.closed_by_peer(NOTICE), f"serve did not end the session within {NOTICE} s"
        finally:
            fe.close()


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def settled_thread_count(pid: int, want: int, timeout: float = NOTICE) -> int:
    """serve's thread count, settled (a session's thread logs the disconnect before it has returned)."""
    return settled(lambda: thread_count(pid), want, timeout, poll=PROC_POLL)


def settled_fd_count(pid: int, want: int, timeout: float = NOTICE) -> int:
    """serve's fd count, settled (a session's end is logged after its release, but the last close may trail
    the log line by a moment)."""
    return settled(lambda: fd_count(pid), want, timeout, poll=PROC_POLL)


def start_device(started: contextlib.ExitStack, sock_dir: Path, device_model: str, log: Path) -> DeviceProcess:
    """A device process of ``device_model`` listening on sock_dir/dev.sock."""
    dev = started.enter_context(DeviceProcess(str(sock_dir / "dev.sock"), DEVICE_MODELS[device_model], log=log))
    dev.wait_listening(DEVICE_READY[device_model])
    return dev


def start_serve(started: contextlib.ExitStack, tmp_path: Path, sock_dir: Path) -> tuple[ServeProcess, str]:
    """serve on sock_dir/vu.sock over the device process at sock_dir/dev.sock, and that vhost-user socket."""
    vu_sock = str(sock_dir / "vu.sock")
    serve = started.enter_context(ServeProcess(vu_sock, f"vfio-user:{sock_dir / 'dev.sock'}",
                                               log=tmp_path / "serve.log"))
    serve.wait_listening(READY)
    return serve, vu_sock


def second_session_moves_frames(started: contextlib.ExitStack, serve: ServeProcess, vu_sock: str, mem: GuestMemory,
                                idle_fds: int) -> None:
    """After a fault ended the first session, the next one (fresh rings in ``mem``) moves frames intact and leaves
    serve's fd count where it was idle."""
    fe2 = VhostUserFrontend.connect(vu_sock, mem)
    started.callback(fe2.close)
    fe2.start()
    assert fe2.exchange(frames(200, 64)) == frames(200, 64)
    fe2.stop()
    fe2.close()
    serve.proc.wait_for(r"vhost-user#2: frontend disconnected", NOTICE)
    assert settled_fd_count(serve.pid, idle_fds) == idle_fds, os.listdir(f"/proc/{serve.pid}/fd")


@pytest.fixture(params=sorted(DEVICE_MODELS))
def device_model(request: pytest.FixtureRequest) -> str:
    """``--model`` of the device process: the model, or the RTL (its Verilator build made first, so the device
    process starts within its bound; a missing toolchain skips, or fails under CI=true)."""
    kind: str = request.param
    if kind == "rtl":
        require_rtl_build(DEVICE_MODELS[kind])
    return kind


def test_device_process_killed_mid_traffic(tmp_path: Path, sock_dir: Path, started: contextlib.ExitStack,
                                           device_model: str) -> None:
    dev = start_device(started, sock_dir, device_model, tmp_path / "device1.log")
    serve, vu_sock = start_serve(started, tmp_path, sock_dir)
    idle = fd_count(serve.pid)
    idle_threads = thread_count(serve.pid)

    mem = started.enter_context(GuestMemory.single(MEM, gpa=GPA))
    fe = VhostUserFrontend.connect(vu_sock, mem)
    started.callback(fe.close)
    fe.start()
    assert fe.exchange(frames(0, 32)) == frames(0, 32)
    tx = fe.rings[1]
    for f in frames(100, 64):  # in flight when the device dies
        tx.add([bytes(12) + f], [])
    fe.kick(1)
    since = serve.proc.mark()
    killed = time.monotonic()
    dev.proc.stop(signum=signal.SIGKILL)

    assert fe.closed_by_peer(NOTICE), f"serve did not close the frontend's connection within {NOTICE} s"
    print(f"frontend's connection closed {time.monotonic() - killed:.3f} s after SIGKILL to the device")
    serve.proc.wait_for(r"vhost-user#1: session dropped: device lost", NOTICE, since=since)
    fe.close()
    log = serve.proc.output()[since:]
    assert "Traceback" not in log and "failed" not in log, log
    assert log.count("vhost-user#1") == 1, log  # the cause, in one line
    assert settled_fd_count(serve.pid, idle) == idle, os.listdir(f"/proc/{serve.pid}/fd")
    # the session's thread (and its device's relay) ended
    assert settled_thread_count(serve.pid, idle_threads) == idle_threads

    # The next session, on a device process started again at the same path, moves frames intact.
    start_device(started, sock_dir, device_model, tmp_path / "device2.log")
    second_session_moves_frames(started, serve, vu_sock, mem, idle)
    assert "Traceback" not in serve.proc.output()
    assert serve.stop() == 0


def test_memory_truncated_under_a_device_process(tmp_path: Path, sock_dir: Path, started: contextlib.ExitStack,
                                                 device_model: str) -> None:
    """The frontend shrinks its memfd while a device process runs on it, then kicks. The device's access to the
    file happens in the device process, whose SIGBUS guard makes it a DMA fault (the RTL's bridge maps the memory
    itself, under the same guard: the beat is answered SLVERR): the device logs it and raises
    DEVICE_NEEDS_RESET; serve, on that configuration interrupt, finds the region's file short and ends the session
    naming it, in one line. Device process and serve go on: the next session moves frames intact."""
    dev = start_device(started, sock_dir, device_model, tmp_path / "device.log")
    serve, vu_sock = start_serve(started, tmp_path, sock_dir)
    idle = fd_count(serve.pid)
    since, dev_since = serve.proc.mark(), dev.proc.mark()

    truncate_memory_mid_session(vu_sock)
    dev.proc.wait_for(r"vfio-user#\d+: DMA fault at IOVA 0x[0-9a-f]+ \(\+0x[0-9a-f]+\): memory behind IOVA "
                      r"0x[0-9a-f]+ is gone: its file was truncated", NOTICE, since=dev_since)
    serve.proc.wait_for(r"vhost-user#1: session dropped", NOTICE, since=since)
    # The device's DEVICE_NEEDS_RESET is logged as such (and sent to a frontend with a back-end channel); the cause
    # is the one line ending the session.
    lines = [line for line in serve.proc.output()[since:].splitlines() if "vhost-user#1:" in line
             and not any(h in line for h in ("frontend connected", "DRIVER_OK", "queue pair", "DEVICE_NEEDS_RESET"))]
    assert len(lines) == 1 and ("session dropped: memory truncated under the device: region 0 "
                                "(gpa [0x100000000, 0x100400000)") in lines[0], lines
    assert "its file was truncated to 0x0 bytes" in lines[0], lines
    assert dev.proc.proc.poll() is None and serve.proc.proc.poll() is None, "a process died"
    assert "Traceback" not in serve.proc.output() and "Traceback" not in dev.proc.output()
    assert settled_fd_count(serve.pid, idle) == idle, os.listdir(f"/proc/{serve.pid}/fd")

    # The same device process (reset when its client left) and serve: the next session moves frames intact.
    second_session_moves_frames(started, serve, vu_sock, started.enter_context(GuestMemory.single(MEM, gpa=GPA)), idle)
    assert serve.stop() == 0 and dev.stop() == 0


# --- hostile frontends: wrong kinds of memory fds, a flood of bad messages --------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.parametrize("kind", ["socket", "directory", "short memfd"])
def test_mem_table_with_wrong_kind_of_fd_is_refused_with_the_reason(sock: str, started: contextlib.ExitStack,
                                                                      caplog: pytest.LogCaptureFixture,
                                                                      kind: str) -> None:
    started.enter_context(VhostUserServer(sock, Devices("sim:virtio-net,wire=loopback")))
    mem = started.enter_context(GuestMemory.single(MEM, gpa=GPA))
    fe = VhostUserFrontend.connect(sock, mem)
    started.callback(fe.close)
    fe.start()  # running: a bad new table must leave the current one in place
    if kind == "socket":
        a, b = socket.socketpair()
        started.callback(a.close)
        started.callback(b.close)
        fd, reason = a.fileno(), "fd is a socket, not a memory file"
    elif kind == "directory":
        fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        started.callback(os.close, fd)
        reason = "fd is a directory, not a memory file"
    else:
        fd = os.memfd_create("short", os.MFD_CLOEXEC)
        started.callback(os.close, fd)
        os.ftruncate(fd, MEM // 2)
        reason = "is beyond the end of the file"
    with caplog.at_level(logging.WARNING, logger="backend.vhost_user"), pytest.raises(FrontendError, match="ack 1"):
        fe.request(R.SET_MEM_TABLE, fe.memory_table(), [fd], need_reply=True)
    assert any(reason in r.getMessage() for r in caplog.records), caplog.text
    assert fe.exchange(frames(0, 8)) == frames(0, 8)
    fe.set_mem_table()  # the right fd is still taken


def test_flood_of_oversized_and_partial_messages_keeps_serve_bounded(tmp_path: Path, sock: str,
                                                                     started: contextlib.ExitStack) -> None:
    serve = started.enter_context(ServeProcess(sock, "sim:virtio-net,wire=loopback", log=tmp_path / "serve.log"))
    serve.wait_listening(READY)
    idle_fds = fd_count(serve.pid)

    def hostile(i: int) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(NOTICE)
            s.connect(sock)
            if i % 2:  # a header announcing 2 GiB of payload
                s.sendall(struct.pack("<III", R.SET_MEM_TABLE, 1, 1 << 31) + bytes(1000))
            else:  # half a message, then the connection closes
                s.sendall(struct.pack("<III", R.SET_FEATURES, 1, 8) + b"\x01\x02\x03")
                s.shutdown(socket.SHUT_WR)
            try:  # serve closes it (a reset: it left the 1000 bytes unread)
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass

    for round_ in range(2):
        for i in range(FLOOD):
            hostile(i)
        if round_ == 0:
            baseline = rss_kib(serve.pid)  # after one flood: the allocator's pools are warm
    grew = rss_kib(serve.pid) - baseline
    print(f"serve RSS {baseline} KiB after {FLOOD} hostile connections, {grew:+d} KiB after {FLOOD} more")
    assert grew < RSS_SLACK_KIB, f"serve RSS grew {grew} KiB over the second flood of {FLOOD} connections"

    # A frontend that stalls mid-message holds its session only for the bounded wait.
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    started.callback(stalled.close)
    stalled.connect(sock)
    stalled.sendall(struct.pack("<III", R.SET_FEATURES, 1, 8) + b"\x01")
    serve.proc.wait_for(r"session dropped: partial message: the rest did not arrive within", MESSAGE_TIMEOUT + NOTICE)
    stalled.close()

    mem = started.enter_context(GuestMemory.single(MEM, gpa=GPA))
    fe = VhostUserFrontend.connect(sock, mem)
    started.callback(fe.close)
    fe.start()
    assert fe.exchange(frames(0, 32)) == frames(0, 32)
    fe.close()
    serve.proc.wait_for(rf"vhost-user#{2 * FLOOD + 2}: frontend disconnected", NOTICE)
    assert settled_fd_count(serve.pid, idle_fds) == idle_fds
    assert "Traceback" not in serve.proc.output()
    assert serve.stop() == 0
