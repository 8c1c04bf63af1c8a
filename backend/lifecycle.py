"""A socket daemon's life, shared by the vhost-user backend (:mod:`backend.daemon`) and the
simulator's vfio-user device daemon (``sim.vfio_user.daemon``).

:func:`run_until_signal` runs a body with timestamped log lines on stderr and SIGINT/SIGTERM turned
into writes to an eventfd (the body waits on it with ``select``, no polling), and turns a setup error
into one line on stderr and exit status 2. :func:`listen_until_signal` is a listening server's life
after setup: the ready line on stdout, the wait, close, socket file removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
#: Exit status of a setup error (bad option, device that cannot be opened, socket in use).
SETUP_ERROR_STATUS = 2


class SetupError(Exception):
    """A daemon cannot start: reported as one line and exit status 2 (bad device spec, socket in use...)."""


@contextlib.contextmanager
def log_to_stderr(level: int) -> Iterator[None]:
    """Timestamped log lines on stderr while inside (the root logger's handlers and level restored after)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@contextlib.contextmanager
def signals_to_eventfd(fd: int, signums: Sequence[signal.Signals]) -> Iterator[None]:
    """While inside, each of ``signums`` only writes ``fd`` (the main thread waits on it)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        os.eventfd_write(fd, 1)

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def set_eventfd_when(event: threading.Event, fd: int) -> None:
    """Block until ``event`` is set, then write ``fd`` (bridges a thread event into a select loop)."""
    event.wait()
    os.eventfd_write(fd, 1)


def wait_readable(fds: Sequence[int], timeout: float | None = None) -> list[int]:
    """The fds of ``fds`` that are readable, waiting up to ``timeout`` (None: until one is); a signal
    handler that ran meanwhile does not end the wait early."""
    ready, _, _ = select.select(list(fds), [], [], timeout)
    while not ready and timeout is None:
        ready, _, _ = select.select(list(fds), [], [])
    return ready


def listen_until_signal(logger: logging.Logger, path: str, what: str, close: Callable[[float], None],
                        close_timeout: float, stop_fd: int) -> int:
    """A listening server's life after setup: the ready line (``listening on PATH`` on stdout), the wait
    for ``stop_fd``, ``close(close_timeout)``, the socket file removed. Returns exit status 0."""
    try:
        logger.info("listening on %s, %s", path, what)
        print(f"listening on {path}", flush=True)
        wait_readable([stop_fd])
        logger.info("signal received: shutting down")
    finally:
        close(close_timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    logger.info("stopped")
    return 0


def run_until_signal(prog: str, body: Callable[[int], int], *, verbose: bool = False,
                     setup_errors: tuple[type[Exception], ...] = (SetupError,)) -> int:
    """Run ``body(stop_fd)`` with log lines on stderr and SIGINT/SIGTERM written to ``stop_fd``; one of
    ``setup_errors`` is one line ``PROG: error: ...`` on stderr and exit status 2."""
    stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        with log_to_stderr(logging.DEBUG if verbose else logging.INFO), \
                signals_to_eventfd(stop_fd, (signal.SIGINT, signal.SIGTERM)):
            return body(stop_fd)
    except setup_errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return SETUP_ERROR_STATUS
    finally:
        os.close(stop_fd)
