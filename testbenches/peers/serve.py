"""The project's own daemons as child processes, as a user runs them: ``vdpa-bench serve`` (the
vhost-user backend) and ``vdpa-bench device`` (a model exported over vfio-user).

Both print one line on stdout when ready (``listening on PATH``, or ``connected to PATH`` for a
client-mode serve) and log timestamped lines on stderr; by default the two are captured together,
``stderr_log`` keeps the log apart.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType

from sim.child_process import ChildProcess
from testbenches.peers.process import find_program

READY_TIMEOUT = 30.0
#: The ready lines, alone on their line (a log line that mentions them has a timestamp in front).
LISTENING = r"(?m)^listening on .*$"
CONNECTED = r"(?m)^connected to .*$"


def cli_argv(command: str, *args: str) -> list[str]:
    """``python -m testbenches.cli COMMAND ARGS``: the command line under test, with this interpreter."""
    return [sys.executable, "-m", "testbenches.cli", command, *args]


class _Daemon:
    """What serve and device share: the ready lines, stop by PID, context manager."""

    proc: ChildProcess

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the program: same PID

    def wait_listening(self, timeout: float = READY_TIMEOUT) -> str:
        """The ``listening on PATH`` line (:class:`~testbenches.peers.process.ChildError` if it does not come)."""
        return self.proc.wait_for(LISTENING, timeout).group(0)

    def wait_connected(self, timeout: float = READY_TIMEOUT, *, since: int = 0) -> str:
        """The ``connected to PATH`` line of a client-mode server, after output offset ``since``."""
        return self.proc.wait_for(CONNECTED, timeout, since=since).group(0)

    def log(self) -> str:
        """The timestamped log: ``stderr_log`` when given, else all the captured output."""
        return self.proc.stderr() if self.proc.stderr_log_path is not None else self.proc.output()

    def stop(self) -> int:
        """SIGTERM (SIGKILL if it does not exit in time); the exit status."""
        return self.proc.stop()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.proc.stop()


class ServeProcess(_Daemon):
    """``vdpa-bench serve --socket PATH --device SPEC [extra]``; output in ``log``."""

    def __init__(self, socket_path: str, device: str, *, log: Path, client: bool = False, reconnect: bool = False,
                 verbose: bool = False, extra: tuple[str, ...] = (), cpu: int | None = None,
                 stderr_log: Path | None = None) -> None:
        pin = [find_program("taskset", "apt-get install util-linux"), "-c", str(cpu)] if cpu is not None else []
        argv = [*pin, *cli_argv("serve", "--socket", socket_path, "--device", device)]
        if client:
            argv.append("--client")
        if reconnect:
            argv.append("--reconnect")
        if verbose:
            argv.append("-v")
        self.proc = ChildProcess([*argv, *extra], log=log, stderr_log=stderr_log, name="vdpa-bench-serve")

    def __enter__(self) -> ServeProcess:
        return self


class DeviceProcess(_Daemon):
    """``vdpa-bench device --model MODEL --vfio-user PATH``: ``model`` (a ``sim:`` model spec such as
    ``virtio-net,queues=2``, or ``rtl:...``) served to vfio-user clients; output in ``log``."""

    def __init__(self, socket_path: str, model: str, *, log: Path, stderr_log: Path | None = None) -> None:
        self.socket_path = socket_path
        self.proc = ChildProcess(cli_argv("device", "--model", model, "--vfio-user", socket_path), log=log,
                                stderr_log=stderr_log, name="vdpa-bench-device")

    def __enter__(self) -> DeviceProcess:
        return self
