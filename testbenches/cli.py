"""``vdpa-bench``: command line of the bench.

Subcommands:

* ``run``: run the conformance checks against one target (pytest in
  process) with a progress bar, print the per-area table and write
  ``report.html``, ``junit.xml``, ``requirements-junit.xml`` and
  ``results.json``. Exit status 0 only when no requirement id failed.
* ``report``: render several ``results.json`` side by side in one page.
* ``serve``: a vhost-user backend on a unix socket, one fresh ``--device``
  per connection (see :func:`cmd_serve`).
* ``device``: a simulated device in this process, served over vfio-user
  (see :func:`cmd_device`); other processes open it as ``vfio-user:PATH``.

Each subcommand is one ``_add_*`` function that sets ``func``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from types import FrameType

import pytest
from rich.console import Console

from backend.device import VdpaDevice, VdpaError
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import consume_eventfd
from backend.pci.device import PciDevice, PciError
from backend.targets import TargetRegistry, default_registry
from backend.unix_socket import claim_socket
from backend.vhost_user.server import VhostUserServer
from backend.virtio.features import DeviceStatus
from models.targets import open_virtio_net
from sim.rtl.device import RtlPciDevice
from sim.vfio_user import VfioUserServer
from sim.vfio_user.server import ExportedDevice
from testbenches.conformance.plugin import (
    DEFAULT_TARGET,
    ENTRY_POINT,
    ProgressPlugin,
    RichProgress,
    normalize_target,
    target_name,
)
from testbenches.conformance.report import Results, render_html, render_terminal

#: The checks package, located next to this module (works from a checkout and when installed).
CHECKS_DIR = Path(__file__).resolve().parent / "conformance" / "checks"


class _FailureLog:
    """Keeps collection errors and failed test reports to print after the progress bar."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed_calls: dict[str, str] = {}

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.lines.append(f"collection error in {report.nodeid or '.'}:\n{report.longreprtext}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and report.when != "call":
            self.lines.append(f"{report.when} error in {report.nodeid}:\n{report.longreprtext}")
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else report.longreprtext
            self.failed_calls[report.nodeid] = message.strip().splitlines()[0] if message.strip() else "failed"

    def unrelated_failures(self, results: Results) -> dict[str, str]:
        """Failed tests that carry no requirement id (they show up in no per-id evidence)."""
        covered = {check for r in results.ids.values() for check in r.checks}
        return {n: m for n, m in self.failed_calls.items() if n not in covered}


def _plugin_args() -> list[str]:
    """``-p`` for the conformance plugin unless the installed entry point already loads it."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return ["-p", "testbenches.conformance.plugin"]
    installed = any(ep.name == ENTRY_POINT for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "testbenches.conformance.plugin"]


def pytest_args(args: argparse.Namespace, out: Path) -> list[str]:
    argv = [
        str(CHECKS_DIR),
        *_plugin_args(),
        "--rootdir",
        str(CHECKS_DIR.parent),
        "--target",
        args.target,
        "--report-dir",
        str(out),
        f"--junitxml={out / 'junit.xml'}",
        "-o",
        "junit_family=xunit2",
    ]
    if args.k:
        argv += ["-k", args.k]
    if args.sim:
        argv += ["--sim", args.sim]
    if args.waves:
        argv.append("--waves")
    if args.progress:
        argv += ["-p", "no:terminal"]
    else:
        argv.append("-q")
    return argv + list(args.pytest_args)


def cmd_run(args: argparse.Namespace) -> int:
    console = Console()
    args.target = normalize_target(args.target)
    out = Path(args.out) if args.out else Path("reports") / target_name(args.target)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results_path.unlink(missing_ok=True)
    failures = _FailureLog()
    plugins: list[object] = [failures]
    if args.progress:
        plugins.append(ProgressPlugin(RichProgress(console)))
    code = pytest.main(pytest_args(args, out), plugins=plugins)
    if args.progress:
        for line in failures.lines:
            console.print(line, markup=False, highlight=False)
    if not results_path.exists():
        console.print(f"[red]no results written (pytest exit status {int(code)})[/]")
        return int(code) or 2
    results = Results.load(results_path)
    if args.progress:
        render_terminal(results, console)
        for nodeid, message in failures.unrelated_failures(results).items():
            console.print(f"failed (no requirement id): {nodeid}: {message}", markup=False, highlight=False)
    console.print(f"reports: {out}/report.html, {out}/junit.xml, {results_path}", highlight=False)
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return int(code)
    return 1 if results.failed() or code == pytest.ExitCode.TESTS_FAILED else 0


def cmd_report(args: argparse.Namespace) -> int:
    results = [Results.load(Path(p)) for p in args.results]
    out = Path(args.out)
    path = render_html(results, out / "report.html")
    console = Console()
    for res in results:
        render_terminal(res, console, max_evidence=1)
    console.print(f"report: {path}", highlight=False)
    return 0

# --- serve: vhost-user backend ----------------------------------------------------------------

#: Logger of the ``serve`` session events (the server and sessions log under ``backend.vhost_user``).
SERVE_LOG = logging.getLogger("vdpa_bench.serve")
LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
#: Name given to the server; its session threads are ``<name>-<id>``, logged as ``<name>#<id>``.
SERVER_NAME = "vhost-user"
#: Seconds between connection attempts of ``serve --client --reconnect`` while no frontend listens.
RECONNECT_INTERVAL = 0.2


class ServeError(Exception):
    """A ``serve`` setup problem, reported as one line (bad ``--device``, socket in use...)."""


class _SessionDevice(VirtioPciVdpaDevice):
    """The generic virtio-pci vendor driver, logging when its session's frontend starts the device."""

    def __init__(self, pci: PciDevice, label: str) -> None:
        self.label = label
        super().__init__(pci)

    def set_status(self, status: int) -> None:
        before = self.get_status()
        super().set_status(status)
        if status & DeviceStatus.DRIVER_OK and not before & DeviceStatus.DRIVER_OK:
            ready = [i for i in range(self.get_vq_count()) if self.get_vq_ready(i)]
            SERVE_LOG.info("%s: DRIVER_OK: device running (driver features %#x, rings %s ready)",
                           self.label, self.get_driver_features(), ready)


def _session_label() -> str:
    """``vhost-user#N`` inside the server's session thread N (the label the server logs with)."""
    name = threading.current_thread().name
    prefix, _, number = name.rpartition("-")
    return f"{prefix}#{number}" if prefix == SERVER_NAME and number.isdigit() else name


def _open_device(registry: TargetRegistry, spec: str, label: str) -> _SessionDevice:
    pci = registry.open(spec)
    try:
        return _SessionDevice(pci, label)
    except BaseException:
        pci.close()
        raise


def check_device_spec(registry: TargetRegistry, spec: str) -> None:
    """Open and close ``spec`` once so that a bad ``--device`` fails at start, not at the first connection."""
    scheme, sep, _ = spec.partition(":")
    known = ", ".join(f"{s}:" for s in sorted(registry.factories)) or "none"
    if not sep:
        raise ServeError(f"--device {spec!r}: expected SCHEME:DEVICE[,key=value...], "
                         f"e.g. {DEFAULT_TARGET},wire=loopback")
    if scheme not in registry.factories:
        raise ServeError(f"--device {spec!r}: unknown target scheme {scheme!r} (available: {known})")
    try:
        _open_device(registry, spec, "probe").close()
    except (ValueError, VdpaError, PciError, OSError) as exc:
        raise ServeError(f"--device {spec!r}: {exc}") from None


def _device_factory(registry: TargetRegistry, spec: str) -> Callable[[], VdpaDevice]:
    def factory() -> VdpaDevice:  # runs in the new session's thread
        label = _session_label()
        SERVE_LOG.info("%s: frontend connected, opening %s", label, spec)
        return _open_device(registry, spec, label)

    return factory


def _claim_socket(path: str) -> None:
    """Remove a socket left by a dead server at ``path``; refuse anything else found there."""
    try:
        claim_socket(path)
    except FileExistsError as exc:
        raise ServeError(f"--socket {path}: {exc}") from None
    except OSError as exc:
        raise ServeError(f"--socket {path}: cannot probe the existing socket: {exc}") from None


@contextlib.contextmanager
def _log_to_stderr(level: int) -> Iterator[None]:
    """Timestamped log lines on stderr for the duration of the command (handlers restored after)."""
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
def _signals_to_eventfd(fd: int, signums: Sequence[signal.Signals]) -> Iterator[None]:
    """While inside, each of ``signums`` only writes ``fd`` (the main thread waits on it)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        os.eventfd_write(fd, 1)

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def _set_eventfd_when(event: threading.Event, fd: int) -> None:
    event.wait()
    os.eventfd_write(fd, 1)


def _wait_readable(fds: Sequence[int]) -> list[int]:
    """Block until one of ``fds`` is readable (select is retried after a signal handler ran)."""
    while True:
        ready, _, _ = select.select(list(fds), [], [])
        if ready:
            return ready


def _connect(path: str, factory: Callable[[], VdpaDevice], stop_fd: int, *, first_id: int,
             retry: float | None) -> VhostUserServer | None:
    """A client-mode server connected to the frontend at ``path``.

    With ``retry`` (``--reconnect``) a frontend that is not listening yet is tried again every ``retry``
    seconds, the wait being on ``stop_fd`` so a signal ends it at once; returns None when stopped.
    """
    waiting = False
    while True:
        try:
            return VhostUserServer(path, factory, connect=True, name=SERVER_NAME, first_id=first_id)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            if retry is None:
                raise ServeError(f"--socket {path}: cannot connect to a frontend at it: {exc.strerror}") from None
            if not waiting:
                SERVE_LOG.info("waiting for a frontend to listen on %s (%s)", path, exc.strerror)
                waiting = True
        except OSError as exc:
            raise ServeError(f"--socket {path}: cannot connect to a frontend at it: {exc.strerror or exc}") from None
        if select.select([stop_fd], [], [], retry)[0]:
            return None


def _serve_client(args: argparse.Namespace, factory: Callable[[], VdpaDevice], stop_fd: int) -> int:
    """Client mode: one connection at a time; with ``--reconnect`` a new one after each ends."""
    path: str = args.socket
    retry = RECONNECT_INTERVAL if args.reconnect else None
    next_id = 1
    ended_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        while True:
            server = _connect(path, factory, stop_fd, first_id=next_id, retry=retry)
            if server is None:
                SERVE_LOG.info("signal received: shutting down")
                return 0
            next_id += 1
            record = server.sessions[0]
            watcher = threading.Thread(target=_set_eventfd_when, args=(record.ended, ended_fd),
                                       name="serve-client-watch", daemon=True)
            watcher.start()
            SERVE_LOG.info("connected to %s (client mode), device %s", path, args.device)
            print(f"connected to {path}", flush=True)
            signalled = stop_fd in _wait_readable([stop_fd, ended_fd])
            server.close(timeout=args.close_timeout)
            watcher.join(args.close_timeout)
            if watcher.is_alive():  # a stuck session: leave the fd to the watcher
                ended_fd = -1
                return 1
            consume_eventfd(ended_fd)
            if signalled:
                SERVE_LOG.info("signal received: shutting down")
                return 0
            if not args.reconnect:
                SERVE_LOG.info("frontend connection ended: shutting down")
                return 1 if record.reason is not None else 0
            SERVE_LOG.info("frontend connection ended: reconnecting")
    finally:
        if ended_fd >= 0:
            os.close(ended_fd)
        SERVE_LOG.info("stopped")


def _serve(args: argparse.Namespace, stop_fd: int) -> int:
    path: str = args.socket
    spec = normalize_target(args.device)
    args.device = spec
    registry = default_registry()
    check_device_spec(registry, spec)
    factory = _device_factory(registry, spec)
    if args.client:
        return _serve_client(args, factory, stop_fd)
    _claim_socket(path)
    try:
        server = VhostUserServer(path, factory, name=SERVER_NAME)
    except OSError as exc:
        raise ServeError(f"--socket {path}: cannot listen on it: {exc.strerror or exc}") from None
    return _listen_until_signal(SERVE_LOG, path, f"a fresh {spec} per connection", server.close, args.close_timeout,
                                stop_fd)


def _listen_until_signal(logger: logging.Logger, path: str, what: str, close: Callable[[float], None],
                         close_timeout: float, stop_fd: int) -> int:
    """A listening server's life after setup: the ready line, the wait for a signal, close, socket removed."""
    try:
        logger.info("listening on %s, %s", path, what)
        print(f"listening on {path}", flush=True)
        _wait_readable([stop_fd])
        logger.info("signal received: shutting down")
    finally:
        close(close_timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    logger.info("stopped")
    return 0


def _run_until_signal(command: str, body: Callable[[argparse.Namespace, int], int],
                      setup_error: type[Exception], args: argparse.Namespace) -> int:
    """Run ``body(args, stop_fd)`` with log lines on stderr and SIGINT/SIGTERM written to ``stop_fd``;
    a ``setup_error`` is one line on stderr and exit status 2."""
    stop_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        with _log_to_stderr(logging.DEBUG if args.verbose else logging.INFO), \
                _signals_to_eventfd(stop_fd, (signal.SIGINT, signal.SIGTERM)):
            return body(args, stop_fd)
    except setup_error as exc:
        print(f"vdpa-bench {command}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        os.close(stop_fd)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (exit 0) or, with ``--client``, until the connection ends
    (exit 0 on a clean disconnect, 1 when the session was dropped). Setup errors exit 2."""
    return _run_until_signal("serve", _serve, ServeError, args)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the conformance checks against a target")
    p.add_argument("--target", default=DEFAULT_TARGET, metavar="SPEC", help=f"default {DEFAULT_TARGET}; 'sim' is short")
    p.add_argument("--out", metavar="DIR", help="report directory (default reports/<target-name>)")
    p.add_argument("-k", metavar="EXPR", help="only checks matching the pytest -k expression")
    p.add_argument("--sim", choices=("verilator", "icarus"), help="RTL simulator (rtl: target)")
    p.add_argument("--waves", action="store_true", help="dump waveforms (rtl: target)")
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="plain pytest output instead of the progress bar",
    )
    p.add_argument("pytest_args", nargs="*", metavar="-- PYTEST_ARG", help="extra pytest arguments after --")
    p.set_defaults(func=cmd_run)


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="render results.json files side by side")
    p.add_argument("results", nargs="+", metavar="RESULTS_JSON")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_report)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="vhost-user backend: a fresh device per frontend connection",
                       description="Serve vhost-user on a unix socket until SIGINT/SIGTERM. Prints "
                                   "'listening on PATH' (or 'connected to PATH') on stdout once ready; "
                                   "session events are logged on stderr.")
    p.add_argument("--socket", required=True, metavar="PATH", help="unix socket to listen on (or connect to)")
    p.add_argument("--client", action="store_true",
                   help="connect to a frontend listening at PATH (DPDK virtio_user server=1) instead of "
                        "listening; serves that one connection and exits when it ends")
    p.add_argument("--reconnect", action="store_true",
                   help="with --client: wait for the frontend to listen, and connect again each time the "
                        "connection ends (until SIGINT/SIGTERM)")
    p.add_argument("--device", default=DEFAULT_TARGET, metavar="SPEC",
                   help=f"target spec opened per connection (default {DEFAULT_TARGET}), e.g. "
                        "sim:virtio-net,queues=2,mac=02:00:00:00:00:01,wire=loopback")
    p.add_argument("--close-timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="bound on waiting for each session thread at shutdown (default 5)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log lines")
    p.set_defaults(func=cmd_serve)


# --- device: a simulated device served over vfio-user ---------------------------------------

#: Logger of the ``device`` command (sessions log under ``sim.vfio_user``).
DEVICE_LOG = logging.getLogger("vdpa_bench.device")


class DeviceError(Exception):
    """A ``device`` setup problem, reported as one line (bad ``--model``, socket in use...)."""


def _model_factory(spec: str) -> Callable[[], ExportedDevice]:
    """``virtio-net[,key=value...]`` (the ``sim:`` options; a leading ``sim:`` is accepted), or an ``rtl:``
    target spec (the RTL under Verilator), to a factory of devices to export."""
    if spec.startswith("rtl:"):
        registry = default_registry()

        def open_rtl() -> ExportedDevice:
            dev = registry.open(spec)
            if not isinstance(dev, RtlPciDevice):
                dev.close()
                raise DeviceError(f"--model {spec!r}: not an RTL device")
            return dev

        try:
            open_rtl().close()
        except (ValueError, OSError, PciError) as exc:
            raise DeviceError(f"--model {spec!r}: {exc}") from None
        return open_rtl
    model = spec.removeprefix("sim:")
    try:
        open_virtio_net(model).close()  # a bad spec fails now, not at the first connection
    except (ValueError, OSError) as exc:
        raise DeviceError(f"--model {spec!r}: {exc}") from None
    return lambda: open_virtio_net(model)


def _run_device(args: argparse.Namespace, stop_fd: int) -> int:
    factory = _model_factory(args.model)
    path: str = args.vfio_user
    try:
        claim_socket(path)
        server = VfioUserServer(path, factory, max_devices=args.max_devices)
    except OSError as exc:
        raise DeviceError(f"--vfio-user {path}: {exc.strerror or exc}") from None
    return _listen_until_signal(DEVICE_LOG, path, f"{args.model} over vfio-user (up to {args.max_devices} devices "
                                "at once)", server.close, args.close_timeout, stop_fd)


def cmd_device(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (exit 0); setup errors exit 2."""
    return _run_until_signal("device", _run_device, DeviceError, args)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _add_device(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("device", help="serve a simulated device over vfio-user (target vfio-user:PATH)",
                       description="Run a simulated device in this process and serve it over vfio-user on a "
                                   "unix socket until SIGINT/SIGTERM. Prints 'listening on PATH' on stdout once "
                                   "ready; client events are logged on stderr. Clients come one after the other "
                                   "(the device is reset between them); a client connecting while the device is "
                                   "in use gets another instance, up to --max-devices.")
    p.add_argument("--model", default="virtio-net", metavar="SPEC",
                   help="device model and options as in sim: targets, e.g. virtio-net,queues=2,wire=loopback, "
                        "or an rtl: target spec (rtl:virtio-net)")
    p.add_argument("--vfio-user", required=True, metavar="PATH", help="unix socket to listen on")
    p.add_argument("--max-devices", type=_positive_int, default=8, metavar="N",
                   help="device instances served at the same time (default 8)")
    p.add_argument("--close-timeout", type=_positive_float, default=5.0, metavar="SECONDS",
                   help="bound on waiting for each client thread at shutdown (default 5)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log lines")
    p.set_defaults(func=cmd_device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdpa-bench", description="userspace vDPA backend and virtio-net test bench")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_report(sub)
    _add_serve(sub)
    _add_device(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
