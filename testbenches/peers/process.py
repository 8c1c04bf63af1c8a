"""A child process the bench starts itself: output captured, readiness awaited under a deadline,
stopped by PID (its whole process group) also when the test fails.

Output (stdout and stderr merged) is read by a thread into a buffer and a log file, so waiting
for a line is a condition wait with a timeout, never a sleep.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

STOP_TIMEOUT = 10.0


class PeerError(RuntimeError):
    """The peer did not come up, exited early or did not say what was awaited; carries its output tail."""


class MissingPeer(RuntimeError):
    """A program the check needs is not installed; ``hint`` says how to install it."""

    def __init__(self, program: str, hint: str) -> None:
        super().__init__(f"{program} not found: {hint}")
        self.program = program
        self.hint = hint


def find_program(program: str, hint: str) -> str:
    """Absolute path of ``program`` on PATH, or :class:`MissingPeer` with the install ``hint``."""
    path = shutil.which(program)
    if path is None:
        raise MissingPeer(program, hint)
    return path


class PeerProcess:
    """``argv`` in its own process group; ``stdin`` is a pipe when ``interactive``."""

    def __init__(self, argv: Sequence[str], *, log: Path, interactive: bool = False,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None, name: str | None = None) -> None:
        self.name = name or Path(argv[0]).name
        self.argv = list(argv)
        self.log_path = log
        self._cond = threading.Condition()
        self._out = bytearray()
        self._eof = False
        self._log = log.open("wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=None if env is None else dict(env), cwd=cwd)
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._out += chunk
                self._log.write(chunk)
                self._log.flush()
                self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return self._out.decode(errors="replace")

    def mark(self) -> int:
        """Current output length: pass it to :meth:`wait_for` to match only what comes after."""
        with self._cond:
            return len(self._out)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, *, since: int = 0) -> re.Match[str]:
        """First match of ``pattern`` in the output after offset ``since``; :class:`PeerError` on timeout or exit."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = rx.search(self._out[since:].decode(errors="replace"))
                if found:
                    return found
                if self._eof:
                    code = self.proc.wait(STOP_TIMEOUT)
                    raise PeerError(f"{self.name} exited ({code}) before {rx.pattern!r}:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(f"{self.name}: no {rx.pattern!r} within {timeout} s:\n{self.tail()}")
                self._cond.wait(left)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self._out.decode(errors="replace").splitlines()[-lines:])

    def send(self, text: str) -> None:
        """Write ``text`` to the peer's stdin (interactive peers only)."""
        if self.proc.stdin is None:
            raise PeerError(f"{self.name} was not started interactive")
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(f"{self.name} still running after {timeout} s:\n{self.tail()}") from None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the process group, SIGKILL it after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout)
        self._reader.join(timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._log.close()
        return self.proc.returncode

    def _signal(self, signum: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
