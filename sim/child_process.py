"""A child process the project starts itself (a peer, a daemon under test, a simulator's device
process): output captured, readiness awaited under a deadline, stopped by PID, also on failure.

Here rather than in ``backend/``: the backend ships alone and starts no processes; the simulator's
Icarus device process is the lowest layer that does, and ``models``, ``testbenches``, ``tests`` and
``bench`` sit above ``sim``.

The child runs in a process group of its own (what it forks is stopped with it). Its output
(stdout, and stderr unless ``stderr_log`` sends it elsewhere) is read by a thread into a buffer
and a log file, so waiting for a line is a condition wait with a timeout, never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["STOP_TIMEOUT", "ChildError", "ChildProcess"]

#: Bound on each stage of stopping: the asked-for exit, then SIGKILL.
STOP_TIMEOUT = 10.0
READ_CHUNK = 65536


class ChildError(RuntimeError):
    """The child did not come up, exited early, or did not say what was awaited; carries its output tail."""


class ChildProcess:
    """``argv`` started in its own process group, its output captured into ``log`` and a buffer.

    ``ready``: a pattern awaited (``ready_timeout``) before the constructor returns; when it does
    not come, the child is stopped and :class:`ChildError` raised, so a failed start leaves no process.
    ``interactive``: stdin is a pipe (:meth:`send`), else /dev/null. ``stderr_log``: stderr goes
    to that file instead of the captured output (to judge the two streams apart). ``pass_fds``:
    more fds the child inherits. ``output_fd_env``: the child also gets, under that environment
    variable, the number of an fd that writes into the captured output (for a child that reports
    readiness on an fd of its own and closes it afterwards).
    """

    def __init__(self, argv: Sequence[str], *, log: Path, name: str | None = None,
                 ready: str | re.Pattern[str] | None = None, ready_timeout: float = 30.0,
                 interactive: bool = False, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 stderr_log: Path | None = None, pass_fds: Sequence[int] = (),
                 output_fd_env: str | None = None) -> None:
        if not argv:
            raise ValueError("a child process needs a program to run (empty argv)")
        self.argv = list(argv)
        self.name = name or Path(self.argv[0]).name
        self.log_path = log
        self.stderr_log_path = stderr_log
        self._cond = threading.Condition()
        self._out = bytearray()
        self._eof = False
        child_env = dict(os.environ if env is None else env)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        fds = list(pass_fds)
        if output_fd_env is not None:
            child_env[output_fd_env] = str(write_fd)
            fds.append(write_fd)
        self._log = log.open("wb")
        try:
            with contextlib.ExitStack() as files:
                err: int | IO[bytes] = write_fd
                if stderr_log is not None:
                    err = files.enter_context(stderr_log.open("wb"))
                self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                                             stdout=write_fd, stderr=err, start_new_session=True, env=child_env,
                                             cwd=cwd, pass_fds=fds)
        except BaseException:
            os.close(read_fd)
            self._log.close()
            raise
        finally:
            os.close(write_fd)  # the child holds it now: end of file when the child (group) is gone
        self._read_fd = read_fd
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
        self._reader.start()
        if ready is not None:
            try:
                self.wait_for(ready, ready_timeout)
            except BaseException:
                self.stop()
                raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while the child runs."""
        return self.proc.poll()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._read_fd, READ_CHUNK)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._out += chunk
                if not self._log.closed:  # stopped while a grandchild still writes: keep the buffer only
                    self._log.write(chunk)
                    self._log.flush()
                self._cond.notify_all()

    def output(self) -> str:
        """Everything captured so far."""
        with self._cond:
            return self._out.decode(errors="replace")

    def stderr(self) -> str:
        """What the child wrote to ``stderr_log`` (when it was given one)."""
        if self.stderr_log_path is None:
            raise ChildError(f"{self.name}: stderr is in the captured output, not in a file of its own")
        return self.stderr_log_path.read_text(errors="replace")

    def mark(self) -> int:
        """Current output length: pass it to :meth:`wait_for` to match only what comes after."""
        with self._cond:
            return len(self._out)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, *, since: int = 0) -> re.Match[str]:
        """First match of ``pattern`` in the output after offset ``since``; :class:`ChildError` on timeout
        or when the output ended (the child exited) without it."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = rx.search(self._out[since:].decode(errors="replace"))
                if found:
                    return found
                if self._eof:
                    try:
                        code: int | str = self.proc.wait(STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        code = "output closed, still running"
                    raise ChildError(f"{self.name} exited ({code}) before {rx.pattern!r}:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChildError(f"{self.name}: no {rx.pattern!r} within {timeout} s:\n{self.tail()}")
                self._cond.wait(left)

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the captured output (and of ``stderr_log``), for error messages."""
        with self._cond:
            out = self._out.decode(errors="replace").splitlines()[-lines:]
        if self.stderr_log_path is not None:
            with contextlib.suppress(OSError):
                out += ["--- stderr:", *self.stderr().splitlines()[-lines:]]
        return "\n".join(out)

    def send(self, text: str) -> None:
        """Write ``text`` to the child's stdin (interactive children only)."""
        if self.proc.stdin is None:
            raise ChildError(f"{self.name} was not started interactive")
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def send_signal(self, signum: signal.Signals) -> None:
        """``signum`` to the child itself (not its group), as a user's ``kill`` would."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        """The exit status; :class:`ChildError` if the child still runs after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ChildError(f"{self.name} still running after {timeout} s:\n{self.tail()}") from None

    def stop(self, timeout: float = STOP_TIMEOUT, *, signum: signal.Signals | None = signal.SIGTERM) -> int:
        """``signum`` to the process group (None: the child was already asked to exit some other way),
        SIGKILL to the group after ``timeout``; returns the exit status. Idempotent."""
        if self.proc.poll() is None:
            if signum is not None:
                self._signal_group(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout)
        self._reader.join(timeout)
        if not self._reader.is_alive():  # else a grandchild holds the output pipe: the reader owns the fd
            with contextlib.suppress(OSError):
                os.close(self._read_fd)
            self._read_fd = -1
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with self._cond:
            self._log.close()
        return self.proc.returncode

    def _signal_group(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
