"""The QEMU guest as a faulty frontend of ``vdpa-bench serve``: QEMU killed with SIGKILL while its guest's
virtio_net driver moves frames through our device.

The guest's job brings eth0 up (the set-up of :mod:`tests.interop.test_qemu_vhost_user`: two addresses,
locally generated packets routed out over the loopback wire) and sends echo requests back to back. Once the
wire (the model's pcap tap) has carried :data:`BEFORE_KILL` frames, QEMU gets SIGKILL: its connection closes
between messages, with the rings full of buffers in flight and the guest's memory still mapped by serve. serve
logs the session's end in one line and no traceback, gives back what the session held (fds and threads back
to their idle counts), and a second guest booted on the same serve gets a working device: every echo of its
job comes back intact.
"""

from __future__ import annotations

import contextlib
import signal
import struct
import time
from pathlib import Path

from testbenches.guest.kernel import Kernel
from testbenches.guest.qemu import Guest, vhost_user_net_args
from testbenches.peers.serve import ServeProcess
from tests.interop.test_qemu_vhost_user import (
    BOOT_TIMEOUT,
    EXIT_TIMEOUT,
    MAC,
    READY_TIMEOUT,
    SETUP,
    check_boot,
    check_pcap,
    guest_job,
    read_env,
)
from tests.soak import fd_count
from tests.test_peer_faults import NOTICE, settled_fd_count, settled_thread_count, thread_count

#: The first guest's job: eth0 up, then echo requests back to back (each sent when the last reply came) until
#: QEMU is killed.
TRAFFIC_JOB = SETUP + r"""
echo "vdpa-traffic: running"
exec ping -A -q -s 1000 -w 600 -I 10.0.0.1 10.0.0.2
"""
#: Frames on the wire before the kill: the guest's traffic is running then.
BEFORE_KILL = 200
#: Bound on the guest's traffic reaching :data:`BEFORE_KILL` frames once its job said it runs (TCG, loaded host).
TRAFFIC_TIMEOUT = 60.0
_PCAP_HEADER = 24
_RECORD = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len


def pcap_records(path: Path) -> int:
    """Whole records in a pcap file being written (the tap flushes per frame; a record still arriving is left out)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    count, pos = 0, _PCAP_HEADER
    while pos + _RECORD.size <= len(data):
        pos += _RECORD.size + _RECORD.unpack_from(data, pos)[2]
        if pos > len(data):
            break
        count += 1
    return count


def session_lines(serve: ServeProcess, since: int, number: int) -> list[str]:
    """serve's log lines about session ``number`` after offset ``since``, less a healthy session's progress lines."""
    tag = f"vhost-user#{number}:"
    healthy = ("frontend connected", "DRIVER_OK", "queue pair")
    return [line for line in serve.proc.output()[since:].splitlines()
            if tag in line and not any(h in line for h in healthy)]


def test_qemu_killed_mid_traffic(kernel: Kernel, tmp_path: Path, started: contextlib.ExitStack) -> None:
    sock = tmp_path / "vu.sock"
    pcap = tmp_path / "wire.pcap"
    serve = started.enter_context(ServeProcess(str(sock), f"sim:virtio-net,wire=loopback,pcap={pcap}",
                                               log=tmp_path / "serve.log"))
    serve.wait_listening(READY_TIMEOUT)
    idle, idle_threads = fd_count(serve.pid), thread_count(serve.pid)
    since = serve.proc.mark()

    guest = started.enter_context(Guest(tmp_path / "guest1", kernel=kernel, shared_memory=True, name="qemu1",
                                        extra_args=vhost_user_net_args(sock, mac=MAC)))
    guest.boot(TRAFFIC_JOB)
    guest.wait_for(r"vdpa-traffic: running\r?\n", BOOT_TIMEOUT)
    deadline = time.monotonic() + TRAFFIC_TIMEOUT
    while (moved := pcap_records(pcap)) < BEFORE_KILL:
        assert time.monotonic() < deadline, f"{moved} frames on the wire {TRAFFIC_TIMEOUT} s after the traffic began"
        time.sleep(0.05)  # sampling a file, not synchronising: the bound is the deadline
    assert guest.process is not None
    killed = time.monotonic()
    guest.process.stop(signum=signal.SIGKILL)  # echoes in flight: buffers on both rings
    serve.proc.wait_for(r"vhost-user#1: frontend disconnected", NOTICE, since=since)
    print(f"{moved} frames on the wire before SIGKILL to QEMU; serve ended the session "
          f"{time.monotonic() - killed:.3f} s after it")
    lines = session_lines(serve, since, 1)
    assert lines == [lines[0]] and "frontend disconnected" in lines[0], lines
    assert "Traceback" not in serve.proc.output()
    assert settled_fd_count(serve.pid, idle) == idle, f"serve holds {fd_count(serve.pid)} fds, {idle} idle"
    threads = settled_thread_count(serve.pid, idle_threads)
    assert threads == idle_threads, f"the session's thread did not end: {threads} threads, {idle_threads} idle"

    # A second guest on the same serve: a fresh device in a new session, every echo of its job back intact.
    second = started.enter_context(Guest(tmp_path / "guest2", kernel=kernel, shared_memory=True, name="qemu2",
                                         extra_args=vhost_user_net_args(sock, mac=MAC)))
    second.boot(guest_job(0))
    result = second.wait_job(BOOT_TIMEOUT, boot=1)
    assert result.exit_code == 0, f"second guest's job exit {result.exit_code}:\n{second.console()[-3000:]}"
    check_boot(read_env(second.job_dir / "result-1.env"), 1)
    assert second.wait_exit(EXIT_TIMEOUT) == 0, f"QEMU exit status:\n{second.console()[-3000:]}"
    serve.proc.wait_for(r"vhost-user#2: frontend disconnected", EXIT_TIMEOUT, since=since)
    second_lines = session_lines(serve, since, 2)
    assert not [line for line in second_lines if "WARNING" in line or "ERROR" in line], second_lines
    check_pcap(pcap, boots=1)  # the new session's device started a new capture
    assert settled_fd_count(serve.pid, idle) == idle, f"serve holds {fd_count(serve.pid)} fds, {idle} idle"
    assert "Traceback" not in serve.proc.output()
    assert serve.stop() == 0
