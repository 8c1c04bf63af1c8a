"""Live migration of a QEMU 7.2 guest between two QEMU processes, driven over QMP.

:class:`MigrationGuest` is one QEMU of a migration pair: the same kernel, initramfs, memory size and device set
in both, the job baked into the initramfs (``/etc/job.sh``: no virtio-9p job directory, which QEMU cannot
migrate), the serial console captured, and a QMP monitor. The monitor is a socket this process listens on and
QEMU connects to at its start (``-chardev socket,path=...`` in client mode), so no polling for QEMU's socket to
appear. The destination starts with ``-incoming defer`` and gets its URI with ``migrate-incoming``, which returns
once it listens; it starts paused (``-S``), so that when the migration has completed both sides' guest RAM can be
compared (:func:`differing_pages`: equal unless a page written during the migration was not in a dirty log) before
:func:`resume` lets the guest run on.

:func:`migrate` runs the migration from the source and waits for its end through QMP's ``MIGRATION`` events (the
``events`` capability), then reads ``query-migrate``: QEMU's own ``downtime`` and ``total-time`` in ms. Every wait
has a deadline; the processes are :class:`~sim.child_process.ChildProcess` (stopped by PID, also on failure).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from sim.child_process import ChildProcess
from testbenches.guest.initramfs import build_initramfs
from testbenches.guest.kernel import Kernel
from testbenches.guest.qemu import QEMU, QEMU_HINT
from testbenches.peers.process import find_program

#: QMP answers within this on an idle host (TCG on a loaded 2-core machine is slow to start).
QMP_TIMEOUT: Final = 60.0
#: Modules a migration guest loads: the NIC only (no 9p: not migratable).
MIGRATION_MODULES: Final = ("virtio_pci", "virtio_net")
#: Migration bandwidth for both runs: QEMU 7.2's default (32 MiB/s) would spend seconds on a 128 MiB guest.
MAX_BANDWIDTH: Final = 1 << 30
_END_STATES: Final = frozenset({"completed", "failed", "cancelled"})
#: How the memfd of a ``memory-backend-memfd`` shows in ``/proc/PID/fd`` (QEMU 7.2 names it after the type).
_RAM_MEMFD: Final = "/memfd:memory-backend-memfd"
PAGE: Final = 4096
_CHUNK: Final = 1 << 20


class QmpError(RuntimeError):
    """QEMU's monitor did not connect, answered with an error, or did not say what was awaited in time."""


class Qmp:
    """A QMP connection QEMU makes to a socket listened on here (``-chardev socket,path=P`` without ``server``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(1)
        self._sock: socket.socket | None = None
        self._buf = b""
        self.events: list[dict[str, Any]] = []

    def accept(self, timeout: float) -> dict[str, Any]:
        """Take QEMU's connection, negotiate capabilities; QEMU's greeting."""
        self._listener.settimeout(timeout)
        try:
            self._sock, _ = self._listener.accept()
        except TimeoutError:
            raise QmpError(f"QEMU did not connect its monitor to {self.path} within {timeout:g} s") from None
        greeting = self._read(time.monotonic() + timeout)
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting}")
        self.command("qmp_capabilities", timeout=timeout)
        return greeting

    def _read(self, deadline: float) -> dict[str, Any]:
        """The next message QEMU sends (a reply or an event)."""
        assert self._sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError("QMP: no message before the deadline")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise QmpError("QMP: QEMU closed the monitor")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def command(self, name: str, arguments: dict[str, Any] | None = None, *,
                timeout: float = QMP_TIMEOUT) -> Any:
        """Run ``name``; its ``return`` value (events that arrive meanwhile are kept in :attr:`events`)."""
        if self._sock is None:
            raise QmpError("QMP: not connected")
        request: dict[str, Any] = {"execute": name}
        if arguments is not None:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise QmpError(f"QMP {name}: {message['error']}")
            elif "return" in message:
                return message["return"]

    def wait_event(self, name: str, timeout: float, *, status: frozenset[str] | None = None) -> dict[str, Any]:
        """The first event ``name`` (with ``data.status`` in ``status``, when given), kept or still to come."""
        def wanted(message: dict[str, Any]) -> bool:
            return message.get("event") == name and (status is None or message["data"].get("status") in status)

        for i, message in enumerate(self.events):
            if wanted(message):
                del self.events[: i + 1]
                return message
        self.events.clear()
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self._read(deadline)
            except QmpError as exc:
                raise QmpError(f"no {name} event{f' with status {sorted(status)}' if status else ''} within "
                               f"{timeout:g} s ({exc})") from None
            if wanted(message):
                return message

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._listener.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class MigrationStats:
    """What ``query-migrate`` reported at the end, in QEMU's units (ms, bytes)."""

    status: str
    downtime_ms: int
    total_time_ms: int
    setup_time_ms: int
    ram_transferred: int

    @classmethod
    def from_query(cls, info: dict[str, Any]) -> MigrationStats:
        return cls(str(info["status"]), int(info.get("downtime", -1)), int(info.get("total-time", -1)),
                   int(info.get("setup-time", -1)), int(info.get("ram", {}).get("transferred", -1)))


class MigrationGuest:
    """One QEMU of a migration pair, in ``workdir``: console on stdio (its stdin a pipe: :meth:`send` types on the
    guest's serial line), QMP at ``qmp_path`` (a short path: socket names are limited to 107 bytes).

    ``net_args`` give the NIC under test; ``incoming`` starts it as a migration destination (``-incoming defer``,
    paused until :func:`resume`).
    The guest runs ``job`` from its initramfs and prints ``vdpa-guest: boot 1 job exit N`` at its end.
    """

    def __init__(self, workdir: Path, qmp_path: Path, *, kernel: Kernel, job: str, net_args: Sequence[str],
                 memory_mb: int, name: str, incoming: bool = False) -> None:
        self.name = name
        self.workdir = workdir
        self.qmp = Qmp(qmp_path)
        qemu = find_program(QEMU, QEMU_HINT)
        initramfs = build_initramfs(kernel, MIGRATION_MODULES, files={"/etc/job.sh": job.encode()})
        self.argv = [qemu, "-accel", "tcg", "-machine", "pc", "-smp", "1", "-m", f"{memory_mb}M",
                     "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
                     "-kernel", str(kernel.image), "-initrd", str(initramfs),
                     # a vhost-user backend maps guest RAM from this fd; the built-in NIC gets the same memory
                     "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on", "-numa", "node,memdev=mem",
                     "-chardev", f"socket,id=qmp,path={qmp_path}", "-mon", "chardev=qmp,mode=control",
                     *net_args, *(("-incoming", "defer", "-S") if incoming else ()),
                     "-append", "console=ttyS0 quiet panic=-1"]
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.process = ChildProcess(self.argv, log=workdir / f"{name}-console.log", name=name, interactive=True)
            try:
                self.qmp.accept(QMP_TIMEOUT)
            except QmpError as exc:
                raise QmpError(f"{name}: {exc}\n{self.process.tail()}") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> int | None:
        """Stop QEMU (by PID: SIGTERM, then SIGKILL) and close the monitor; the exit status."""
        process = getattr(self, "process", None)
        code = None if process is None else process.stop()
        self.qmp.close()
        return code

    def quit(self, timeout: float = QMP_TIMEOUT) -> int:
        """QMP ``quit``; QEMU's exit status."""
        self.qmp.command("quit", timeout=timeout)
        return self.process.wait_exit(timeout)

    def console(self) -> str:
        return self.process.output()

    def send(self, text: str) -> None:
        """Type ``text`` on the guest's serial line."""
        self.process.send(text)

    def __enter__(self) -> MigrationGuest:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def migrate(source: MigrationGuest, destination: MigrationGuest, uri: str, timeout: float) -> MigrationStats:
    """Migrate the running ``source`` to ``destination`` (started with ``incoming``) over ``uri`` (e.g.
    ``unix:PATH``); waits for the end on the source and the guest running on the destination, within ``timeout``.
    A migration that fails raises :class:`QmpError` with QEMU's reason."""
    deadline = time.monotonic() + timeout
    destination.qmp.command("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
    destination.qmp.command("migrate-incoming", {"uri": uri})
    source.qmp.command("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
    source.qmp.command("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
    source.qmp.command("migrate", {"uri": uri})
    end = source.qmp.wait_event("MIGRATION", max(0.0, deadline - time.monotonic()), status=_END_STATES)
    info = source.qmp.command("query-migrate")
    # QEMU 7.2 announces "completed" before its migration thread computes the times (migration_calculate_complete),
    # and no event follows that: ask again until they are there (bounded by the deadline; each ask is one QMP
    # round trip, and the thread sets them right after the state).
    while info.get("status") == "completed" and not info.get("total-time") and time.monotonic() < deadline:
        info = source.qmp.command("query-migrate")
    stats = MigrationStats.from_query(info)
    if end["data"]["status"] != "completed" or stats.status != "completed":
        raise QmpError(f"migration {end['data']['status']}: {info}")
    destination.qmp.wait_event("MIGRATION", max(0.0, deadline - time.monotonic()), status=_END_STATES)
    return stats


def resume(destination: MigrationGuest, timeout: float = QMP_TIMEOUT) -> None:
    """Let the migrated guest run on the destination (``cont``), once it runs."""
    destination.qmp.command("cont", timeout=timeout)
    destination.qmp.wait_event("RESUME", timeout)


def guest_ram(guest: MigrationGuest) -> Path:
    """The guest RAM's memfd (``memory-backend-memfd,id=mem``) as QEMU holds it: ``/proc/PID/fd/N``."""
    fds = Path(f"/proc/{guest.process.pid}/fd")
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            if os.readlink(fd).startswith(_RAM_MEMFD):
                return fd
    raise QmpError(f"{guest.name}: no {_RAM_MEMFD} among QEMU's fds")


def differing_pages(a: Path, b: Path, size: int) -> list[int]:
    """Offsets of the 4 KiB pages whose content differs between the memory files ``a`` and ``b`` (``size`` bytes)."""
    out: list[int] = []
    with a.open("rb") as fa, b.open("rb") as fb, mmap.mmap(fa.fileno(), size, prot=mmap.PROT_READ) as ma, \
            mmap.mmap(fb.fileno(), size, prot=mmap.PROT_READ) as mb:
        for off in range(0, size, _CHUNK):
            if ma[off:off + _CHUNK] != mb[off:off + _CHUNK]:
                out += [p for p in range(off, off + _CHUNK, PAGE) if ma[p:p + PAGE] != mb[p:p + PAGE]]
    return out
