"""Peer faults around a running ``vdpa-bench serve``: the device process killed mid-traffic.

``vdpa-bench device`` (the model over vfio-user) <- ``serve --device vfio-user:PATH`` <- a Python frontend.
SIGKILL to the device process while frames are in flight: serve notices at once (it watches the device
connection, not only the frontend), logs the cause in one line and no traceback, closes the frontend's
connection, and gives back everything the session held; the next session, on a device process started
again, moves frames intact, and serve's fd count is back to what it was idle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from sim.memory import GuestMemory
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.serve import DeviceProcess, ServeProcess

MODEL = "virtio-net,mac=02:00:00:00:00:0b,wire=loopback"
MAC = b"\x02\x00\x00\x00\x00\x0b"
READY = 30.0
NOTICE = 5.0  # bound on serve noticing the dead device and closing the frontend's connection
MEM = 4 << 20
GPA = 0x1_0000_0000


def frames(first: int, n: int) -> list[bytes]:
    return [test_frame(i, 128, dst=MAC) for i in range(first, first + n)]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fd_count(pid: int, want: int, timeout: float = NOTICE) -> int:
    """serve's fd count once it equals ``want`` or ``timeout`` passed (a session's end is logged after its
    release, but the last close may trail the log line by a moment)."""
    deadline = time.monotonic() + timeout
    count = fd_count(pid)
    while count != want and time.monotonic() < deadline:
        time.sleep(0.05)  # sampling /proc, not synchronising: the bound is the deadline
        count = fd_count(pid)
    return count


def test_device_process_killed_mid_traffic(tmp_path: Path, sock_dir: Path, started: contextlib.ExitStack) -> None:
    dev_sock = str(sock_dir / "dev.sock")
    vu_sock = str(sock_dir / "vu.sock")
    dev = started.enter_context(DeviceProcess(dev_sock, MODEL, log=tmp_path / "device1.log"))
    dev.wait_listening(READY)
    serve = started.enter_context(ServeProcess(vu_sock, f"vfio-user:{dev_sock}", log=tmp_path / "serve.log"))
    serve.wait_listening(READY)
    idle = fd_count(serve.pid)

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
    dev.proc.stop(signum=signal.SIGKILL)

    assert fe.closed_by_peer(NOTICE), f"serve did not close the frontend's connection within {NOTICE} s"
    serve.proc.wait_for(r"vhost-user#1: session dropped: device lost", NOTICE, since=since)
    fe.close()
    log = serve.proc.output()[since:]
    assert "Traceback" not in log and "failed" not in log, log
    assert log.count("vhost-user#1") == 1, log  # the cause, in one line
    assert settled_fd_count(serve.pid, idle) == idle, os.listdir(f"/proc/{serve.pid}/fd")

    # The next session, on a device process started again at the same path, moves frames intact.
    dev2 = started.enter_context(DeviceProcess(dev_sock, MODEL, log=tmp_path / "device2.log"))
    dev2.wait_listening(READY)
    fe2 = VhostUserFrontend.connect(vu_sock, mem)
    started.callback(fe2.close)
    fe2.alloc = type(fe.alloc)(mem.regions[0].gpa, mem.regions[0].size)  # fresh rings in the same memory
    fe2.start()
    assert fe2.exchange(frames(200, 64)) == frames(200, 64)
    fe2.stop()
    fe2.close()
    serve.proc.wait_for(r"vhost-user#2: frontend disconnected", NOTICE)
    assert settled_fd_count(serve.pid, idle) == idle, os.listdir(f"/proc/{serve.pid}/fd")
    assert "Traceback" not in serve.proc.output()
    assert serve.stop() == 0
