"""Unix socket servers: the one base the vhost-user server (``serve``) and the vfio-user device server
(``device``) are built on, and :func:`claim_socket` for their paths.

:class:`UnixSocketServer` listens on a path (or connects to a peer listening there, as ``serve
--client`` does) and serves each connection in its own thread. A subclass says how to serve one
connection (:meth:`UnixSocketServer.serve_connection`) and how to give back what it took
(:meth:`UnixSocketServer.release_connection`); the base guarantees the order around them:

1. the connection is tracked while it is alive (``live``);
2. when serving returns or raises, ``release_connection`` runs, then the socket is closed;
3. the record leaves the live table: only the last ``keep_ended`` ended records stay visible in
   :attr:`UnixSocketServer.sessions` (for a caller asking why a connection ended), and counters
   keep the totals, so a daemon serving thousands of connections holds none of them;
4. ``ended`` is set last, so a waiter sees everything released.

:meth:`UnixSocketServer.close` stops accepting, shuts every live connection down and joins the
threads under one deadline. No wait is unbounded: the accept thread waits on the listener and an
eventfd, session threads are woken by shutting their sockets down.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import socket
import stat
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from backend.eventloop import set_native_thread_name

log = logging.getLogger(__name__)

#: Ended connection records a server keeps visible by default (the most recent ones).
KEEP_ENDED = 16


def claim_socket(path: str) -> None:
    """Make ``path`` free to bind: remove a socket a dead server left there.

    Raises FileExistsError when something else is there (not a socket, or a live server: a probe
    connects) and OSError when the existing socket cannot be probed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("removed stale socket %s", path)
        return
    finally:
        probe.close()
    raise FileExistsError(f"another process is listening on {path}")


@dataclass(eq=False)
class Connection:
    """One connection: its number, socket and thread, and why it ended (``reason`` None: a clean hang-up)."""

    id: int
    sock: socket.socket
    thread: threading.Thread | None = None
    reason: str | None = None
    handled: int = 0  # messages served
    ended: threading.Event = field(default_factory=threading.Event)


C = TypeVar("C", bound=Connection)


class UnixSocketServer(ABC, Generic[C]):
    """Listens on ``path`` (``connect=True``: connects to it, one connection) and serves each connection in
    a thread named ``<name>-<id>``; ids start at ``first_id``."""

    def __init__(self, path: str, *, connect: bool = False, backlog: int = 8, name: str = "unix",
                 first_id: int = 1, keep_ended: int = KEEP_ENDED) -> None:
        self.path = path
        self.name = name
        self.started = 0  # connections served so far
        self.dropped = 0  # of them, ended with a reason
        self._live: dict[int, C] = {}
        self._ended: collections.deque[C] = collections.deque(maxlen=keep_ended)
        self._lock = threading.Lock()
        self._closed = False
        self._next_id = first_id
        self._listener: socket.socket | None = None
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket file this server made
        self._accept_thread: threading.Thread | None = None
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            if connect:
                self._start(self._connect(path))
            else:
                self._listen(path, backlog)
        except BaseException:
            os.close(self._wake)
            raise

    # --- to implement ----------------------------------------------------------------------

    @abstractmethod
    def new_connection(self, id: int, sock: socket.socket) -> C:
        """The record for a new connection (a :class:`Connection` subclass with the protocol's state)."""

    @abstractmethod
    def serve_connection(self, conn: C) -> None:
        """Serve ``conn`` until it ends (in its own thread); set ``conn.reason`` when it is dropped."""

    @abstractmethod
    def release_connection(self, conn: C) -> None:
        """Give back everything ``conn`` took (device, fds, mappings, threads); the socket is closed after."""

    def connection_ended(self, conn: C) -> None:
        """Called once all of ``conn`` is released, before ``ended`` is set (say so in the log here)."""

    def stopping(self) -> None:
        """Called by :meth:`close` once no new connection starts, before the live ones are shut down: wake
        whatever a connection thread may wait on besides its socket."""

    # --- setting up ------------------------------------------------------------------------

    @staticmethod
    def _connect(path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    def _listen(self, path: str, backlog: int) -> None:
        claim_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            st = os.stat(path)
            listener.listen(backlog)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._bound = (st.st_dev, st.st_ino)
        # The selector is made here, not in the accept thread: once this returns the server holds every
        # fd it will hold while idle (a ready line printed after it is true, and fd counts are stable).
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        sel.register(self._wake, selectors.EVENT_READ)
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(sel,), name=f"{self.name}-accept",
                                               daemon=True)
        self._accept_thread.start()

    def _accept_loop(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None
        with selector as sel:
            while True:
                for key, _ in sel.select():
                    if key.fd == self._wake:
                        return
                    try:
                        sock, _ = self._listener.accept()
                    except OSError as exc:
                        log.warning("%s: accept failed: %s", self.name, exc)
                        continue
                    self._start(sock)

    def _start(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed:
                sock.close()
                return
            conn = self.new_connection(self._next_id, sock)
            self._next_id += 1
            self._live[conn.id] = conn
            self.started += 1
            # The thread is created under the lock so close() never finds a live record without one.
            conn.thread = threading.Thread(target=self._run, args=(conn,), name=f"{self.name}-{conn.id}",
                                           daemon=True)
        conn.thread.start()

    # --- one connection --------------------------------------------------------------------

    def _run(self, conn: C) -> None:
        set_native_thread_name(f"{self.name}-{conn.id}")
        try:
            self.serve_connection(conn)
        except Exception as exc:  # a bug in one connection must not take the server down
            log.exception("%s#%d: connection failed", self.name, conn.id)
            conn.reason = f"internal error: {exc!r}"
        finally:
            self._finish(conn)

    def _finish(self, conn: C) -> None:
        try:
            self.release_connection(conn)
        except Exception:
            log.exception("%s#%d: release failed", self.name, conn.id)
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()
            with self._lock:
                self._live.pop(conn.id, None)
                self._ended.append(conn)
                self.dropped += conn.reason is not None
            try:
                self.connection_ended(conn)
            finally:
                conn.ended.set()

    # --- inspection ------------------------------------------------------------------------

    @property
    def sessions(self) -> list[C]:
        """The live connections and the last ``keep_ended`` ended ones, in order of id."""
        with self._lock:
            return sorted([*self._ended, *self._live.values()], key=lambda c: c.id)

    @property
    def live(self) -> list[C]:
        with self._lock:
            return sorted(self._live.values(), key=lambda c: c.id)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- lifetime --------------------------------------------------------------------------

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, shut every live connection down and join the threads, all within ``timeout``;
        remove the socket file this server made."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        self.stopping()
        os.eventfd_write(self._wake, 1)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._lock:  # the accept thread is gone: no connection starts after this
            live = list(self._live.values())
        for conn in live:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for conn in live:
            if conn.thread is not None:
                conn.thread.join(max(0.0, deadline - time.monotonic()))
                if conn.thread.is_alive():
                    log.warning("%s#%d: connection thread did not stop within %.1f s", self.name, conn.id, timeout)
        if self._listener is not None:
            self._listener.close()
            self._remove_socket_file()
        os.close(self._wake)

    def _remove_socket_file(self) -> None:
        """Unlink ``path`` only if it is still the socket this server bound (not a successor's)."""
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._bound:
                os.unlink(self.path)
