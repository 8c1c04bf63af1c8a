"""``vdpa-bench serve`` as a child process (the backend under test, as a user runs it)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType

from testbenches.peers.process import PeerProcess, find_program

READY_TIMEOUT = 30.0


class ServeProcess:
    """``python -m testbenches.cli serve --socket PATH --device SPEC [extra]``; output in ``log``."""

    def __init__(self, socket_path: str, device: str, *, log: Path, client: bool = False, reconnect: bool = False,
                 verbose: bool = False, extra: tuple[str, ...] = (), cpu: int | None = None) -> None:
        pin = [find_program("taskset", "apt-get install util-linux"), "-c", str(cpu)] if cpu is not None else []
        argv = [*pin, sys.executable, "-m", "testbenches.cli", "serve", "--socket", socket_path, "--device", device]
        if client:
            argv.append("--client")
        if reconnect:
            argv.append("--reconnect")
        if verbose:
            argv.append("-v")
        self.proc = PeerProcess([*argv, *extra], log=log, name="vdpa-bench-serve")

    def wait_listening(self, timeout: float = READY_TIMEOUT) -> None:
        self.proc.wait_for(r"^listening on |\nlistening on ", timeout)

    def wait_connected(self, timeout: float = READY_TIMEOUT, *, since: int = 0) -> None:
        self.proc.wait_for(r"connected to ", timeout, since=since)

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the server: same PID

    def stop(self) -> int:
        return self.proc.stop()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.proc.stop()
