"""The vhost-user backend daemon, and the small API to embed it in a VMM or a vendor's own daemon.

Embedding::

    from backend.daemon import VdpaBackend

    backend = VdpaBackend("vfio-user:/run/nic0.sock")  # opens the target once: a bad spec fails here
    with backend.listen("/run/vhost-net0.sock"):         # a fresh device per frontend connection
        stop.wait()                                      # until the embedding program wants to stop
    # leaving the block closes every session and its device

``VdpaBackend.connect(path)`` serves one connection to a frontend that listens at ``path`` instead
(DPDK virtio_user ``server=1``). ``backend.open_device()`` gives a single :class:`VdpaDevice` (the
generic virtio-pci vendor driver over the target, with the installed quirks) for a program that runs
its own vhost-user sessions.

Command line (console script ``vdpa-backend``; ``vdpa-bench serve`` is the same)::

    vdpa-backend serve --socket PATH [--client [--reconnect]] [--device SPEC] [--close-timeout S] [-v]

It prints ``listening on PATH`` (or ``connected to PATH``) on stdout once ready and logs session events
on stderr; SIGINT/SIGTERM stop it (exit 0); a setup error is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Callable, Sequence

from backend.device import VdpaDevice, VdpaError
from backend.drivers.quirks import QuirkTable, default_quirks
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import consume_eventfd
from backend.lifecycle import SetupError, listen_until_signal, run_until_signal, set_eventfd_when, wait_readable
from backend.pci.device import PciDevice, PciError
from backend.providers import ProviderError
from backend.targets import TargetRegistry, TargetSpecError, default_registry
from backend.vhost_user.server import VhostUserServer
from backend.virtio.features import DeviceStatus

#: Logger of the daemon's session events (the server and sessions log under ``backend.vhost_user``).
LOG = logging.getLogger("vdpa_backend.serve")
#: Name given to the server; its session threads are ``<name>-<id>``, logged as ``<name>#<id>``.
SERVER_NAME = "vhost-user"
#: Seconds between connection attempts of ``--client --reconnect`` while no frontend listens.
RECONNECT_INTERVAL = 0.2
#: The target served when none is given (the bench's behavioral model; needs the bench extra).
DEFAULT_DEVICE = "sim:virtio-net"
#: Short target names and what they stand for.
DEVICE_ALIASES = {"sim": DEFAULT_DEVICE}
#: What a bad or unreachable target raises when opened.
OPEN_ERRORS: tuple[type[Exception], ...] = (ValueError, VdpaError, PciError, OSError, ProviderError)


class ServeError(SetupError):
    """A ``serve`` setup problem, reported as one line (bad ``--device``, socket in use...)."""


class SessionDevice(VirtioPciVdpaDevice):
    """The generic virtio-pci vendor driver, logging when its session's frontend starts the device."""

    def __init__(self, pci: PciDevice, label: str, quirks: QuirkTable | None = None) -> None:
        self.label = label
        self.sizes: dict[int, int] = {}  # ring sizes the frontend set, for the DRIVER_OK line
        super().__init__(pci, quirks=quirks)

    def set_vq_num(self, index: int, num: int) -> None:
        super().set_vq_num(index, num)
        self.sizes[index] = num

    def set_status(self, status: int) -> None:
        before = self.get_status()
        super().set_status(status)
        if status & DeviceStatus.DRIVER_OK and not before & DeviceStatus.DRIVER_OK:
            ready = [i for i in range(self.get_vq_count()) if self.get_vq_ready(i)]
            LOG.info("%s: DRIVER_OK: device running (driver features %#x, rings %s ready, sizes %s)",
                     self.label, self.get_driver_features(), ready, [self.sizes.get(i, 0) for i in ready])


def session_label() -> str:
    """``vhost-user#N`` inside the server's session thread N (the label the server logs with)."""
    name = threading.current_thread().name
    prefix, _, number = name.rpartition("-")
    return f"{prefix}#{number}" if prefix == SERVER_NAME and number.isdigit() else name


class VdpaBackend:
    """A vDPA backend for one target ``spec``: every vhost-user connection gets a fresh device.

    ``registry`` (default: every installed target scheme) and ``quirks`` (default: the built-in table
    plus every installed provider's) are resolved once here. With ``check`` the target is opened and
    closed once, so that a bad spec raises :class:`ServeError` now rather than at the first connection.
    """

    def __init__(self, spec: str, *, registry: TargetRegistry | None = None, quirks: QuirkTable | None = None,
                 check: bool = True) -> None:
        self.spec = DEVICE_ALIASES.get(spec.strip(), spec.strip())
        try:
            self.registry = registry if registry is not None else default_registry()
            self.quirks = quirks if quirks is not None else default_quirks()
        except ProviderError as exc:
            raise ServeError(str(exc)) from None
        if check:
            try:
                self.open_device("probe").close()
            except TargetSpecError as exc:  # it names the spec already
                raise ServeError(f"--device {exc}") from None
            except OPEN_ERRORS as exc:
                raise ServeError(f"--device {self.spec!r}: {exc}") from None

    def open_device(self, label: str | None = None) -> VirtioPciVdpaDevice:
        """The target opened and driven by the generic virtio-pci vendor driver (``label`` names it in logs)."""
        pci = self.registry.open(self.spec)
        try:
            return SessionDevice(pci, label if label is not None else pci.name, self.quirks)
        except BaseException:
            pci.close()
            raise

    def device_factory(self) -> Callable[[], VdpaDevice]:
        """What :class:`VhostUserServer` calls in each new session's thread."""

        def factory() -> VdpaDevice:
            label = session_label()
            LOG.info("%s: frontend connected, opening %s", label, self.spec)
            return self.open_device(label)

        return factory

    def listen(self, path: str) -> VhostUserServer:
        """Listen on the unix socket ``path`` (a socket a dead server left there is removed first); stop
        with ``close()`` or by leaving its ``with`` block."""
        try:
            return VhostUserServer(path, self.device_factory(), name=SERVER_NAME)
        except FileExistsError as exc:  # something else is there, or a live server (claim_socket says which)
            raise ServeError(f"--socket {path}: {exc}") from None
        except OSError as exc:
            raise ServeError(f"--socket {path}: cannot listen on it: {exc.strerror or exc}") from None

    def connect(self, path: str, *, first_id: int = 1) -> VhostUserServer:
        """Serve the one connection made to a frontend listening at ``path`` (raises OSError when none
        listens there); ``first_id`` numbers its session."""
        return VhostUserServer(path, self.device_factory(), connect=True, name=SERVER_NAME, first_id=first_id)


# --- the daemon ------------------------------------------------------------------------------------


def _connect(backend: VdpaBackend, path: str, stop_fd: int, *, first_id: int,
             retry: float | None) -> VhostUserServer | None:
    """A client-mode server connected to the frontend at ``path``.

    With ``retry`` (``--reconnect``) a frontend that is not listening yet is tried again every ``retry``
    seconds, the wait being on ``stop_fd`` so a signal ends it at once; returns None when stopped.
    """
    waiting = False
    while True:
        try:
            return backend.connect(path, first_id=first_id)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if retry is None:
                raise ServeError(f"--socket {path}: cannot connect to a frontend at it: {exc.strerror}") from None
            if not waiting:
                LOG.info("waiting for a frontend to listen on %s (%s)", path, exc.strerror)
                waiting = True
        except OSError as exc:
            raise ServeError(f"--socket {path}: cannot connect to a frontend at it: {exc.strerror or exc}") from None
        if wait_readable([stop_fd], retry):
            return None


def serve_client(backend: VdpaBackend, path: str, stop_fd: int, *, reconnect: bool, close_timeout: float) -> int:
    """Client mode: one connection at a time; with ``reconnect`` a new one after each ends. Returns the
    exit status: 0 on a signal or a clean disconnect, 1 when the session was dropped or did not end."""
    retry = RECONNECT_INTERVAL if reconnect else None
    next_id = 1
    ended_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        while True:
            server = _connect(backend, path, stop_fd, first_id=next_id, retry=retry)
            if server is None:
                LOG.info("signal received: shutting down")
                return 0
            next_id += 1
            record = server.sessions[0]
            watcher = threading.Thread(target=set_eventfd_when, args=(record.ended, ended_fd),
                                       name="serve-client-watch", daemon=True)
            watcher.start()
            LOG.info("connected to %s (client mode), device %s", path, backend.spec)
            print(f"connected to {path}", flush=True)
            signalled = stop_fd in wait_readable([stop_fd, ended_fd])
            server.close(timeout=close_timeout)
            watcher.join(close_timeout)
            if watcher.is_alive():  # a stuck session: leave the fd to the watcher
                ended_fd = -1
                return 1
            consume_eventfd(ended_fd)
            if signalled:
                LOG.info("signal received: shutting down")
                return 0
            if not reconnect:
                LOG.info("frontend connection ended: shutting down")
                return 1 if record.reason is not None else 0
            LOG.info("frontend connection ended: reconnecting")
    finally:
        if ended_fd >= 0:
            os.close(ended_fd)
        LOG.info("stopped")


def serve(args: argparse.Namespace, stop_fd: int) -> int:
    """The ``serve`` command's body (options of :func:`add_serve_arguments`) until ``stop_fd`` is written."""
    backend = VdpaBackend(args.device)
    if args.client:
        return serve_client(backend, args.socket, stop_fd, reconnect=args.reconnect, close_timeout=args.close_timeout)
    server = backend.listen(args.socket)
    return listen_until_signal(LOG, args.socket, f"a fresh {backend.spec} per connection", server.close,
                               args.close_timeout, stop_fd)


def run_serve(args: argparse.Namespace, prog: str = "vdpa-backend serve") -> int:
    """Serve until SIGINT/SIGTERM (exit 0) or, with ``--client``, until the connection ends (exit 0 on a
    clean disconnect, 1 when the session was dropped). Setup errors exit 2 with one line on stderr."""
    return run_until_signal(prog, lambda stop_fd: serve(args, stop_fd), verbose=args.verbose)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


SERVE_DESCRIPTION = ("Serve vhost-user on a unix socket until SIGINT/SIGTERM. Prints 'listening on PATH' (or "
                     "'connected to PATH') on stdout once ready; session events are logged on stderr.")


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (shared by ``vdpa-backend serve`` and ``vdpa-bench serve``)."""
    p.add_argument("--socket", required=True, metavar="PATH", help="unix socket to listen on (or connect to)")
    p.add_argument("--client", action="store_true",
                   help="connect to a frontend listening at PATH (DPDK virtio_user server=1) instead of "
                        "listening; serves that one connection and exits when it ends")
    p.add_argument("--reconnect", action="store_true",
                   help="with --client: wait for the frontend to listen, and connect again each time the "
                        "connection ends (until SIGINT/SIGTERM)")
    p.add_argument("--device", default=DEFAULT_DEVICE, metavar="SPEC",
                   help=f"target spec opened per connection (default {DEFAULT_DEVICE}), e.g. "
                        "vfio-user:/run/nic0.sock, vfio:0000:00:03.0, "
                        "sim:virtio-net,queues=2,mac=02:00:00:00:00:01,wire=loopback")
    p.add_argument("--close-timeout", type=positive_float, default=5.0, metavar="SECONDS",
                   help="bound on waiting for each session thread at shutdown (default 5)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdpa-backend", description="userspace vDPA (vhost-user) backend")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("serve", help="vhost-user backend: a fresh device per frontend connection",
                       description=SERVE_DESCRIPTION)
    add_serve_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``vdpa-backend``."""
    args = build_parser().parse_args(argv)
    return run_serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
