"""A vhost-user backend on a unix socket: one thread per connection, each bound to its own device.

``VhostUserServer(path, factory)`` listens on ``path`` (or, with ``connect=True``, connects to a
frontend that listens there, as DPDK virtio_user does with ``server=1``). Every connection gets a
fresh device from ``factory`` and a :class:`~backend.vhost_user.session.VhostUserSession`; the
session thread reads one message at a time (header, then payload, with the fds that came beside
them, through :class:`~backend.fd_channel.FdChannel`), hands it to the session and writes the
replies back.

A session whose frontend breaks the protocol is dropped with a logged reason; the others go on.
When a session ends, everything it took is given back before its end is logged: the session
closes its device, rings, eventfds and memory table, the socket is closed, and the record leaves
the server (only the last few ended records stay visible, see :class:`~backend.unix_socket.
UnixSocketServer`). :meth:`VhostUserServer.close` stops accepting, shuts every connection down and
joins the threads within its timeout.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from backend.device import VdpaDevice
from backend.fd_channel import ControlTruncated, FdChannel, PeerClosed, owned_fds
from backend.unix_socket import KEEP_ENDED, Connection, UnixSocketServer
from backend.vhost_user import messages as m
from backend.vhost_user.session import SessionClosed, VhostUserSession

log = logging.getLogger(__name__)

DeviceFactory = Callable[[], VdpaDevice]

#: The peer closed the connection (or it was shut down).
ConnectionLost = PeerClosed


def recv_message(sock: socket.socket, *, reply: bool | None = False,
                 channel: m.Channel = m.Channel.MAIN) -> m.Message:
    """Read one message and the fds that came with it.

    On a protocol error the received fds are closed and :class:`~backend.vhost_user.messages.
    VhostUserProtocolError` is raised; the stream cannot be trusted after it. :class:`ConnectionLost`
    when the peer closed the connection.
    """
    chan = FdChannel(sock, max_fds=m.MAX_FDS)
    with owned_fds() as fds:
        try:
            header = chan.recv_exact(m.HEADER_SIZE, fds)
            hdr = m.parse_header(header, channel=channel, reply=reply)
            payload = chan.recv_exact(hdr.size, fds, started=True) if hdr.size else b""
        except ControlTruncated as exc:
            raise m.VhostUserProtocolError(str(exc)) from None
        return m.decode(header, payload, fds, channel=channel, reply=reply)


def send_message(sock: socket.socket, msg: m.Message) -> None:
    data, fds = msg.encode()
    FdChannel(sock, max_fds=m.MAX_FDS).send(data, fds)


@dataclass(eq=False)
class SessionRecord(Connection):
    """One connection: its session (None until the device opened), thread, and why it ended."""

    session: VhostUserSession | None = None


class VhostUserServer(UnixSocketServer[SessionRecord]):
    def __init__(self, path: str, factory: DeviceFactory, *, connect: bool = False, backlog: int = 8,
                 name: str = "vhost-user", first_id: int = 1, keep_ended: int = KEEP_ENDED) -> None:
        self.factory = factory
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
        while True:
            try:
                msg = recv_message(rec.sock)
            except ConnectionLost:
                return
            except m.VhostUserProtocolError as exc:
                rec.reason = f"malformed message: {exc.reason}"
                return
            except OSError as exc:
                rec.reason = None if self.closed else f"socket error: {exc}"
                return
            try:
                replies = session.handle(msg)
            except SessionClosed as exc:
                rec.reason = exc.reason
                return
            rec.handled += 1
            try:
                for reply in replies:
                    send_message(rec.sock, reply)
            except OSError as exc:
                rec.reason = None if self.closed else f"socket error on reply: {exc}"
                return

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
