"""``vdpa-bench serve`` as a child process: ready line, traffic through it, logged session events,
clean exit on SIGTERM/SIGINT, and fast failure on a device spec it cannot serve."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from pathlib import Path

import pytest

from backend.vhost_user import messages as m
from sim.memory import GuestMemory
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.serve import ServeProcess

SPEC = "sim:virtio-net,queues=1,mac=02:00:00:00:00:0a,wire=loopback"
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0
#: ``2024-05-01 12:00:00.123 INFO    logger: message``
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [A-Z]+ +\S+: ")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_loopback_traffic_then_clean_exit(signum: signal.Signals, tmp_path: Path, sock: str,
                                                mem: GuestMemory, started: contextlib.ExitStack) -> None:
    path = sock
    child = started.enter_context(ServeProcess(path, SPEC, log=tmp_path / "serve.out",
                                               stderr_log=tmp_path / "serve.log"))
    assert child.wait_listening(READY_TIMEOUT) == f"listening on {path}"

    fe = VhostUserFrontend.connect(path, mem)
    try:
        fe.start(queues=(0, 1), size=256)
        sent = [test_frame(i, 60 + (i * 13) % 1400) for i in range(100)]
        got = fe.exchange(sent, timeout=10.0)
        assert len(got) == len(sent), f"sent 100 frames, {len(got)} came back"
        bad = [i for i, (a, b) in enumerate(zip(sent, got, strict=True)) if a != b]
        assert not bad, f"frames {bad[:10]} came back altered"
        bases = fe.stop()
        assert bases[1] == 100, f"TX ring base {bases[1]} after 100 frames"
    finally:
        fe.close()

    # A second frontend breaks the protocol: only its session is dropped, with the reason logged.
    with GuestMemory.single(1 << 20) as small:
        bad_fe = VhostUserFrontend.connect(path, small)
        try:
            bad_fe.send_raw(b"\xff" * m.HEADER_SIZE)
            assert bad_fe.closed_by_peer(timeout=EXIT_TIMEOUT), "serve kept a connection that sent garbage"
        finally:
            bad_fe.close()

    child.proc.send_signal(signum)
    code = child.proc.wait_exit(EXIT_TIMEOUT)
    log = child.log()
    assert code == 0, f"exit status {code} after {signum.name}; log:\n{log}"
    assert not os.path.exists(path), "socket file left behind"
    lines = log.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), f"untimestamped log lines:\n{log}"
    for needle in (f"listening on {path}", "vhost-user#1: frontend connected", "vhost-user#1: DRIVER_OK",
                   "vhost-user#1: frontend disconnected", "vhost-user#2: frontend connected",
                   "vhost-user#2: session dropped: malformed message", "signal received: shutting down",
                   "stopped"):
        assert needle in log, f"{needle!r} not in the log:\n{log}"


@pytest.mark.parametrize(("device", "message"), [
    ("rtl:virtio-net,sim=bogus", "sim='bogus' (known: verilator, icarus)"),
    ("vfio:eth0", "vfio:eth0: not a PCI address"),
    ("bogus:virtio-net", "unknown target scheme 'bogus'"),
    ("sim:virtio-net,queues=many", "queues='many' is not an integer"),
])
def test_serve_rejects_unusable_device(device: str, message: str, tmp_path: Path, sock: str,
                                      started: contextlib.ExitStack) -> None:
    path = Path(sock)
    child = started.enter_context(ServeProcess(sock, device, log=tmp_path / "serve.out",
                                               stderr_log=tmp_path / "serve.log"))
    code = child.proc.wait_exit(EXIT_TIMEOUT)
    log = child.log()
    assert code == 2, f"exit status {code} for --device {device}; stderr:\n{log}"
    assert message in log, f"{message!r} not in stderr:\n{log}"
    assert not path.exists(), "socket created for a device that cannot be served"


def test_serve_client_mode_ends_with_its_connection(tmp_path: Path, sock: str, mem: GuestMemory,
                                                    started: contextlib.ExitStack) -> None:
    """``--client``: serve connects to a listening frontend and exits 0 when that frontend hangs up."""
    path = sock
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(READY_TIMEOUT)
        child = started.enter_context(ServeProcess(path, SPEC, client=True, log=tmp_path / "serve.out",
                                                   stderr_log=tmp_path / "serve.log"))
        conn, _ = listener.accept()
    fe = VhostUserFrontend(conn, mem)
    try:
        assert child.wait_connected(READY_TIMEOUT) == f"connected to {path}"
        fe.start(queues=(0, 1), size=256)
        sent = [test_frame(i, 64) for i in range(20)]
        assert fe.exchange(sent, timeout=10.0) == sent
        fe.stop()
    finally:
        fe.close()
    code = child.proc.wait_exit(EXIT_TIMEOUT)
    log = child.log()
    assert code == 0, f"exit status {code} after the frontend hung up; log:\n{log}"
    assert os.path.exists(path), "client mode removed the frontend's socket"
    for needle in ("vhost-user#1: DRIVER_OK", "vhost-user#1: frontend disconnected",
                   "frontend connection ended: shutting down"):
        assert needle in log, f"{needle!r} not in the log:\n{log}"
