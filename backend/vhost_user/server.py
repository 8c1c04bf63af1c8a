"""A vhost-user backend on a unix socket: one thread per connection, each bound to its own device.

``VhostUserServer(path, factory)`` listens on ``path`` (or, with ``connect=True``, connects to a
frontend that listens there, as DPDK virtio_user does with ``server=1``). Every connection gets a
fresh device from ``factory`` and a :class:`~backend.vhost_user.session.VhostUserSession`; the
session thread polls the frontend's socket together with the session's device events (its
configuration interrupt, the hang-up of a device reached over a connection), reads one message at a
time (header, then payload, with the fds that came beside them, through :class:`~backend.fd_channel.
FdChannel`; a started message must be whole within :data:`MESSAGE_TIMEOUT`), hands it to the session
and writes the replies back, then lets the session act on the device events.

A session whose frontend breaks the protocol is dropped with a logged reason; the others go on.
When a session ends, everything it took is given back before its end is logged: the session
closes its device, rings, eventfds and memory table, the socket is closed, and the record leaves
the server (only the last few ended records stay visible, see :class:`~backend.unix_socket.
UnixSocketServer`). :meth:`VhostUserServer.close` stops accepting, shuts every connection down and
joins the threads within its timeout.
"""

from __future__ import annotations

import logging
import os
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass

from backend.device import VdpaDevice
from backend.eventloop import consume_eventfd, new_eventfd
from backend.sigbus_guard import optional_guard
from backend.unix_socket import KEEP_ENDED, Connection, UnixSocketServer
from backend.vhost_user import messages as m
from backend.vhost_user.session import SessionClosed, VhostUserSession
from backend.vhost_user.stream import ConnectionLost as ConnectionLost
from backend.vhost_user.stream import recv_message as recv_message
from backend.vhost_user.stream import send_message as send_message

log = logging.getLogger(__name__)

DeviceFactory = Callable[[], VdpaDevice]
#: Seconds a frontend has to finish a message it started sending (and to take the replies).
MESSAGE_TIMEOUT = 10.0

@dataclass(eq=False)
class SessionRecord(Connection):
    """One connection: its session (None until the device opened), thread, and why it ended."""

    session: VhostUserSession | None = None


class VhostUserServer(UnixSocketServer[SessionRecord]):
    def __init__(self, path: str, factory: DeviceFactory, *, connect: bool = False, backlog: int = 8,
                 name: str = "vhost-user", first_id: int = 1, keep_ended: int = KEEP_ENDED) -> None:
        self.factory = factory
        # Before the first session: a frontend's memory truncated under the device becomes a fault, not a SIGBUS
        # that kills every session (installing it compiles the handler, which takes a few seconds).
        self.guard = optional_guard()
        # Session numbers go on across the servers of a reconnecting client (first_id).
        super().__init__(path, connect=connect, backlog=backlog, name=name, first_id=first_id,
                         keep_ended=keep_ended)

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

    # --- one session ------------------------------------------------------------------------

    def new_connection(self, id: int, sock: socket.socket) -> SessionRecord:
        return SessionRecord(id, sock)

    def serve_connection(self, rec: SessionRecord) -> None:
        label = f"{self.name}#{rec.id}"
        try:
            device = self.factory()
        except Exception as exc:  # a device that cannot be opened ends this session only
            rec.reason = f"no device for the session: {exc}"
            return
        session = rec.session = VhostUserSession(device, name=label)
        # Without a guard nothing signals this eventfd: the session just never hears of a truncation.
        memory_faults = self.guard.subscribe() if self.guard is not None else new_eventfd()
        try:
            self._serve_session(rec, session, memory_faults)
        finally:
            if self.guard is not None:
                self.guard.unsubscribe(memory_faults)
            os.close(memory_faults)

    def _serve_session(self, rec: SessionRecord, session: VhostUserSession, memory_faults: int) -> None:
        while True:
            # Wait on the frontend and on the session's device events at once, so a configuration
            # change or a dead device is acted on now rather than at the frontend's next message.
            poller = select.poll()
            poller.register(rec.sock, select.POLLIN)
            poller.register(memory_faults, select.POLLIN)
            for fd, events in session.watched():
                poller.register(fd, events)
            ready = dict(poller.poll())
            # The frontend's message first: it may be waiting for our reply, and not reading the
            # back-end channel a configuration change is sent on meanwhile.
            if rec.sock.fileno() in ready and not self._serve_message(rec, session):
                return
            # Some guest memory in this process was truncated: this session's, if one of its files shrank.
            if memory_faults in ready and consume_eventfd(memory_faults) and self._truncated(rec, session):
                return
            config_changes = session.events.config_changes
            try:
                for fd in ready:
                    if fd not in (rec.sock.fileno(), memory_faults):
                        session.service(fd)
            except SessionClosed as exc:
                rec.reason = exc.reason
                return
            # A device in its own process (vfio-user) has its own SIGBUS guard: a file truncated under it comes
            # back as that device's DMA fault and DEVICE_NEEDS_RESET, a configuration interrupt here.
            if session.events.config_changes != config_changes and self._truncated(rec, session):
                return

    @staticmethod
    def _truncated(rec: SessionRecord, session: VhostUserSession) -> bool:
        """True (``rec.reason`` set) when one of the session's memory files is shorter than its region."""
        lost = session.table.truncated() if session.table is not None else []
        if lost:
            rec.reason = f"memory truncated under the device: {lost[0]}"
        return bool(lost)

    def _serve_message(self, rec: SessionRecord, session: VhostUserSession) -> bool:
        """Read, handle and answer one frontend message; False (``rec.reason`` set) when the session ends.

        Called when the socket is readable: a message that has started must be whole, and its replies
        taken, within :data:`MESSAGE_TIMEOUT`, so a frontend stalling mid-message does not hold a thread."""
        rec.sock.settimeout(MESSAGE_TIMEOUT)
        try:
            msg = recv_message(rec.sock)
        except ConnectionLost as exc:
            # Between messages a close is the frontend's way to end; inside one it is a fault worth naming.
            rec.reason = f"partial message: {exc}" if exc.partial else None
            return False
        except m.VhostUserProtocolError as exc:
            rec.reason = f"malformed message: {exc.reason}"
            return False
        except TimeoutError:
            rec.reason = f"partial message: the rest did not arrive within {MESSAGE_TIMEOUT:g} s"
            return False
        except OSError as exc:
            rec.reason = None if self.closed else f"socket error: {exc}"
            return False
        try:
            replies = session.handle(msg)
        except SessionClosed as exc:
            rec.reason = exc.reason
            return False
        rec.handled += 1
        try:
            for reply in replies:
                send_message(rec.sock, reply)
        except OSError as exc:
            rec.reason = None if self.closed else f"socket error on reply: {exc}"
            return False
        return True

    def release_connection(self, rec: SessionRecord) -> None:
        if rec.session is not None:
            rec.session.close()  # device, rings, eventfds, memory table

    def connection_ended(self, rec: SessionRecord) -> None:
        label = f"{self.name}#{rec.id}"
        if rec.reason is not None:
            log.warning("%s: session dropped: %s", label, rec.reason)
        else:
            log.info("%s: frontend disconnected", label)

    def __enter__(self) -> VhostUserServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
