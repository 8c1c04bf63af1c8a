"""The test infrastructure itself: the one test frame, the child-process helper, and the missing-peer rule."""

from __future__ import annotations

import os
import select
import signal
import sys
from pathlib import Path

import pytest
from _pytest.outcomes import Failed, Skipped
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from sim.child_process import ChildError, ChildProcess
from testbenches.frames import MAX_LEN, MIN_LEN, SEQ_MAX, seq_of, test_frame
from testbenches.peers.process import MissingPeer, peer_missing, require_peer, require_program

PY = sys.executable
WAIT = 10.0

# --- frames -------------------------------------------------------------------------------------


@given(seq=st.integers(0, SEQ_MAX), length=st.integers(MIN_LEN, 2000))
def test_frame_is_a_well_formed_udp_frame_carrying_its_seq(seq: int, length: int) -> None:
    frame = test_frame(seq, length)
    assert len(frame) == length and frame == test_frame(seq, length)
    pkt = Ether(frame)
    assert pkt[IP].len == length - 14 and pkt[UDP].len == length - 34
    assert IP(bytes(pkt[IP])).chksum == pkt[IP].chksum  # scapy recomputes: the header checksum is right
    assert seq_of(frame) == seq


def test_frames_differ_by_seq_and_addresses() -> None:
    assert len({test_frame(i) for i in range(1000)}) == 1000
    other = test_frame(1, dst=b"\x02\x00\x00\x00\x00\x0b")
    assert other[:6] == b"\x02\x00\x00\x00\x00\x0b" and seq_of(other) == 1
    assert len(test_frame(0, MAX_LEN)) == MAX_LEN


@pytest.mark.parametrize(("args", "message"), [
    ((0, MIN_LEN - 1), "is 46 to 65549 bytes"),
    ((0, MAX_LEN + 1), "is 46 to 65549 bytes"),
    ((-1, 60), "sequence number -1"),
    ((SEQ_MAX + 1, 60), "sequence number"),
])
def test_impossible_frames_are_refused(args: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        test_frame(*args)
    with pytest.raises(ValueError, match="6 bytes"):
        test_frame(0, 60, src=b"\x02")


def test_seq_of_refuses_other_frames() -> None:
    with pytest.raises(ValueError, match="not a test frame"):
        seq_of(bytes(60))
    with pytest.raises(ValueError, match="not a test frame"):
        seq_of(test_frame(3, 100)[:80])  # truncated: the IP length no longer matches
    with pytest.raises(ValueError, match="a test frame is"):
        seq_of(b"\x02" * 20)


# --- child processes ----------------------------------------------------------------------------


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (an orphan waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_ready_line_output_and_clean_stop(tmp_path: Path) -> None:
    code = "import sys, time; print('hello'); print('ready at 7', flush=True); sys.stdin.readline()"
    with ChildProcess([PY, "-c", code], log=tmp_path / "c.log", ready=r"(?m)^ready at (\d+)$",
                      interactive=True) as child:
        since = child.mark()
        assert child.wait_for(r"ready at (\d+)", WAIT).group(1) == "7"
        assert "hello" in child.output() and child.returncode is None
        child.send("bye\n")
        assert child.wait_exit(WAIT) == 0
        with pytest.raises(ChildError, match="exited"):
            child.wait_for("never", WAIT, since=since)
    assert (tmp_path / "c.log").read_text() == "hello\nready at 7\n"


def test_no_ready_line_in_time_stops_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with pytest.raises(ChildError, match=r"no 'ready' within 0.5 s"):
        ChildProcess([PY, "-c", code], log=tmp_path / "c.log", ready="ready", ready_timeout=0.5)
    assert not running(int(pid_file.read_text()))


def test_exit_before_ready_is_reported_with_the_output(tmp_path: Path) -> None:
    with pytest.raises(ChildError, match=r"exited \(3\) before 'ready':\nbad spec"):
        ChildProcess([PY, "-c", "import sys; print('bad spec'); sys.exit(3)"], log=tmp_path / "c.log",
                     ready="ready")


def test_stop_escalates_to_sigkill_for_the_whole_group(tmp_path: Path) -> None:
    # The child ignores SIGTERM and forks a grandchild that does too: both must go.
    code = ("import os, signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "if os.fork() == 0:\n"
            "    os.write(1, b'grandchild %d\\n' % os.getpid()); time.sleep(60); os._exit(0)\n"
            "os.write(1, b'ready\\n'); time.sleep(60)\n")
    child = ChildProcess([PY, "-c", code], log=tmp_path / "c.log", ready="(?m)^ready$")
    grandchild = os.pidfd_open(int(child.wait_for(r"grandchild (\d+)", WAIT).group(1)))
    try:
        assert child.stop(timeout=0.5) == -signal.SIGKILL
        assert select.select([grandchild], [], [], WAIT)[0], "the grandchild outlived the stop"  # it exited
    finally:
        os.close(grandchild)
    assert child.stop() == -signal.SIGKILL  # idempotent


def test_stderr_apart_and_an_output_fd_for_readiness(tmp_path: Path) -> None:
    code = ("import os, sys; print('log line', file=sys.stderr, flush=True); "
            "fd = int(os.environ['READY_FD']); os.write(fd, b'listening on x\\n'); os.close(fd); "
            "print('still on stdout', flush=True)")
    with ChildProcess([PY, "-c", code], log=tmp_path / "out", stderr_log=tmp_path / "err",
                      output_fd_env="READY_FD", ready="(?m)^listening on x$") as child:
        assert child.wait_exit(WAIT) == 0
        child.wait_for("still on stdout", WAIT)
    assert child.stderr() == "log line\n"
    assert "log line" not in child.output()


def test_empty_argv_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty argv"):
        ChildProcess([], log=tmp_path / "c.log")


# --- a missing peer -----------------------------------------------------------------------------


@pytest.mark.parametrize(("ci", "outcome"), [("", Skipped), ("true", Failed), ("TRUE", Failed)])
def test_missing_peer_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str,
                                                   outcome: type[BaseException]) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install nothing"):
        require_program("vdpa-bench-no-such-program", "apt-get install nothing")
    with pytest.raises(outcome, match="tool gone: pip install it"), require_peer(OSError):
        raise OSError("tool gone: pip install it")
    with pytest.raises(outcome, match="x not found: y"), require_peer():
        raise MissingPeer("x", "y")
    with pytest.raises(outcome, match="reason"):
        peer_missing("reason")
    with pytest.raises(ValueError), require_peer(OSError):
        raise ValueError("not a missing peer")
