"""A vhost-user backend on a unix socket: one thread per connection, each bound to its own device.

``VhostUserServer(path, factory)`` listens on ``path`` (or, with ``connect=True``, connects to a
frontend that listens there, as DPDK virtio_user does with ``server=1``). Every connection gets a
fresh device from ``factory`` and a :class:`~backend.vhost_user.session.VhostUserSession`; the
session thread reads one message at a time (header, then payload, file descriptors taken from the
header's SCM_RIGHTS data), hands it to the session and writes the replies back.

A session whose frontend breaks the protocol is dropped with a logged reason; the others go on.
:meth:`VhostUserServer.close` stops accepting, shuts every connection down, joins the threads and
closes the devices. Waits are bounded: threads block in ``accept``/``recvmsg`` and are woken by
closing or shutting down their sockets.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.device import VdpaDevice
from backend.eventloop import set_native_thread_name
from backend.vhost_user import messages as m
from backend.vhost_user.session import SessionClosed, VhostUserSession

log = logging.getLogger(__name__)

DeviceFactory = Callable[[], VdpaDevice]

_FD_SIZE = array.array("i").itemsize


class ConnectionLost(Exception):
    """The peer closed the connection (or it was shut down)."""


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes; :class:`ConnectionLost` on EOF."""
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionLost(f"connection closed after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


def recv_message(sock: socket.socket, *, reply: bool | None = False,
                 channel: m.Channel = m.Channel.MAIN) -> m.Message:
    """Read one message and the fds that came with its header.

    On a protocol error the received fds are closed and :class:`~backend.vhost_user.messages.
    VhostUserProtocolError` is raised; the stream cannot be trusted after it.
    """
    data, ancdata, flags, _ = sock.recvmsg(m.HEADER_SIZE, socket.CMSG_SPACE(m.MAX_FDS * _FD_SIZE))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(payload[:len(payload) - len(payload) % _FD_SIZE])
            fds.extend(arr)
    try:
        if not data:
            raise ConnectionLost("connection closed")
        if flags & socket.MSG_CTRUNC:
            raise m.VhostUserProtocolError(f"more than {m.MAX_FDS} fds came with one message")
        header = data if len(data) == m.HEADER_SIZE else data + recv_exact(sock, m.HEADER_SIZE - len(data))
        hdr = m.parse_header(header, channel=channel, reply=reply)
        payload = recv_exact(sock, hdr.size) if hdr.size else b""
        return m.decode(header, payload, fds, channel=channel, reply=reply)
    except BaseException:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise


def send_message(sock: socket.socket, msg: m.Message) -> None:
    data, fds = msg.encode()
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sent = sock.sendmsg([data], anc)
    if sent < len(data):
        sock.sendall(data[sent:])


@dataclass
class SessionRecord:
    """One connection: its session, thread, and why it ended (``reason`` is None for a clean EOF)."""

    id: int
    sock: socket.socket
    session: VhostUserSession | None = None
    thread: threading.Thread | None = None
    reason: str | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    handled: int = 0


class VhostUserServer:
    def __init__(self, path: str, factory: DeviceFactory, *, connect: bool = False, backlog: int = 8,
                 name: str = "vhost-user", first_id: int = 1) -> None:
        self.path = path
        self.factory = factory
        self.name = name
        self.sessions: list[SessionRecord] = []
        self._lock = threading.Lock()
        self._closed = False
        self._next_id = first_id  # session numbers go on across the servers of a reconnecting client
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if connect:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                os.close(self._wake)
                raise
            self._start_session(sock)
        else:
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                listener.bind(path)
                listener.listen(backlog)
            except OSError:
                listener.close()
                os.close(self._wake)
                raise
            self._listener = listener
            self._accept_thread = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
            self._accept_thread.start()

    @classmethod
    def for_target(cls, path: str, spec: str, *, connect: bool = False) -> VhostUserServer:
        """Each session gets ``spec`` opened through the default target registry, driven by the
        generic virtio-pci vendor driver."""
        from backend.drivers.vdpa import VirtioPciVdpaDevice
        from backend.targets import default_registry

        registry = default_registry()

        def factory() -> VdpaDevice:
            return VirtioPciVdpaDevice(registry.open(spec))

        return cls(path, factory, connect=connect)

    # --- accepting --------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake, selectors.EVENT_READ)
            while not self._closed:
                for key, _ in sel.select():
                    if key.fd == self._wake:
                        return
                    try:
                        sock, _ = self._listener.accept()
                    except OSError as exc:
                        if not self._closed:
                            log.warning("%s: accept failed: %s", self.name, exc)
                        continue
                    self._start_session(sock)

    def _start_session(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed:
                sock.close()
                return
            record = SessionRecord(self._next_id, sock)
            self._next_id += 1
            self.sessions.append(record)
        record.thread = threading.Thread(target=self._run, args=(record,), name=f"{self.name}-{record.id}",
                                         daemon=True)
        record.thread.start()

    # --- one session ------------------------------------------------------------------------

    def _run(self, rec: SessionRecord) -> None:
        label = f"{self.name}#{rec.id}"
        set_native_thread_name(f"{self.name}-{rec.id}")
        try:
            device = self.factory()
        except Exception as exc:  # a device that cannot be opened ends this session only
            self._end(rec, f"no device for the session: {exc}")
            return
        rec.session = VhostUserSession(device, name=label)
        try:
            while True:
                try:
                    msg = recv_message(rec.sock)
                except ConnectionLost:
                    self._end(rec, None)
                    return
                except m.VhostUserProtocolError as exc:
                    self._end(rec, f"malformed message: {exc.reason}")
                    return
                except OSError as exc:
                    self._end(rec, None if self._closed else f"socket error: {exc}")
                    return
                try:
                    replies = rec.session.handle(msg)
                except SessionClosed as exc:
                    self._end(rec, exc.reason)
                    return
                rec.handled += 1
                try:
                    for reply in replies:
                        send_message(rec.sock, reply)
                except OSError as exc:
                    self._end(rec, None if self._closed else f"socket error on reply: {exc}")
                    return
        except Exception as exc:  # a bug in one session must not take the server down
            log.exception("%s: session failed", label)
            self._end(rec, f"internal error: {exc!r}")

    def _end(self, rec: SessionRecord, reason: str | None) -> None:
        label = f"{self.name}#{rec.id}"
        if reason is not None:
            log.warning("%s: session dropped: %s", label, reason)
        else:
            log.info("%s: frontend disconnected", label)
        rec.reason = reason
        try:
            if rec.session is not None:
                rec.session.close()
                rec.session.device.close()
        except Exception:
            log.exception("%s: cleanup failed", label)
        finally:
            with contextlib.suppress(OSError):
                rec.sock.close()
            rec.ended.set()

    # --- lifetime ---------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, shut every connection down, wait (bounded) for the session threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            records = list(self.sessions)
        os.eventfd_write(self._wake, 1)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        for rec in records:
            with contextlib.suppress(OSError):
                rec.sock.shutdown(socket.SHUT_RDWR)
        for rec in records:
            if rec.thread is not None:
                rec.thread.join(timeout)
                if rec.thread.is_alive():
                    log.warning("%s#%d: session thread did not stop within %.1f s", self.name, rec.id, timeout)
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._wake)

    def __enter__(self) -> VhostUserServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
