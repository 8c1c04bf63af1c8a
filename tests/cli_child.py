"""``python -m testbenches.cli COMMAND ...`` as a child process for the CLI tests: stdout piped (the
ready line), stderr into a log file (the timestamped log lines), so the two can be judged apart."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0


class CliChild:
    def __init__(self, command: str, args: list[str], log: Path) -> None:
        self.log_path = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "testbenches.cli", command, *args], cwd=REPO,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        self.out = b""

    def wait_line(self, prefix: str, timeout: float = READY_TIMEOUT) -> str:
        """The first stdout line starting with ``prefix``, read with select under a deadline."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            for line in self.out.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {prefix!r} line within {timeout} s; stdout {self.out!r}; log:\n{self.log()}")
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait(EXIT_TIMEOUT)
                    pytest.fail(f"exited ({code}) before {prefix!r}; stdout {self.out!r}; log:\n{self.log()}")
                self.out += chunk

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        os.kill(self.proc.pid, signum)
        return self.proc.wait(EXIT_TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(EXIT_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
