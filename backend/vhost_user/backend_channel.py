"""The back-end request channel: the socket a frontend hands over with ``SET_BACKEND_REQ_FD``.

On it the back-end is the one asking: it sends back-end requests (here ``CONFIG_CHANGE_MSG``, when the
device's configuration changed or it raised DEVICE_NEEDS_RESET) and, when ``REPLY_ACK`` was negotiated,
sets NEED_REPLY and waits for the frontend's u64 acknowledgement. The wait is bounded: a frontend busy
waiting for a reply of its own on the main socket must not hang the session, so a missing answer is
logged and the session goes on.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import Final

from backend.fd_channel import PeerClosed
from backend.vhost_user import messages as m
from backend.vhost_user.stream import recv_message, send_message

log = logging.getLogger(__name__)

#: Seconds a back-end request waits for the frontend's REPLY_ACK answer.
REPLY_TIMEOUT: Final = 2.0


class BackendChannelError(Exception):
    """The channel broke (peer closed, malformed reply); the session drops the channel, not the session."""


class BackendChannel:
    """Owns ``sock`` (from the SET_BACKEND_REQ_FD fd). :meth:`request` sends one back-end request."""

    def __init__(self, sock: socket.socket, *, name: str, reply_ack: bool, timeout: float = REPLY_TIMEOUT) -> None:
        self.sock = sock
        self.name = name
        self.reply_ack = reply_ack
        self.timeout = timeout
        self.sent = 0

    @classmethod
    def from_fd(cls, fd: int, *, name: str, reply_ack: bool, timeout: float = REPLY_TIMEOUT) -> BackendChannel:
        """Take ``fd`` over; it must be a unix stream socket (anything else is closed and refused)."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            socket.close(fd)
            raise BackendChannelError(f"backend request fd {fd} is not a socket: {exc.strerror or exc}") from None
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.close()
            raise BackendChannelError(f"backend request fd is a {sock.family.name}/{sock.type.name} socket, "
                                      "not a unix stream socket")
        sock.setblocking(True)
        return cls(sock, name=name, reply_ack=reply_ack, timeout=timeout)

    def request(self, request: m.BackendRequest, payload: m.Payload = m.EMPTY) -> bool:
        """Send ``request``; with REPLY_ACK wait (bounded) for the ack. True when sent and, if asked, acked 0.

        A refusal or a missing answer is logged and returns False; :class:`BackendChannelError` when the
        channel itself is unusable."""
        flags = m.HeaderFlag.VERSION | (m.HeaderFlag.NEED_REPLY if self.reply_ack else 0)
        msg = m.Message(request, payload, (), flags)
        try:
            send_message(self.sock, msg)
        except OSError as exc:
            raise BackendChannelError(f"sending {request.wire_name}: {exc.strerror or exc}") from None
        self.sent += 1
        if not self.reply_ack:
            return True
        ready, _, _ = select.select([self.sock], [], [], self.timeout)
        if not ready:
            log.warning("%s: no answer to %s within %.1f s (frontend busy or not reading the channel)",
                        self.name, request.wire_name, self.timeout)
            return False
        try:
            reply = recv_message(self.sock, reply=True, channel=m.Channel.BACKEND)
        except (PeerClosed, OSError) as exc:
            raise BackendChannelError(f"frontend closed the backend request channel: {exc}") from None
        except m.VhostUserProtocolError as exc:
            raise BackendChannelError(f"malformed answer to {request.wire_name}: {exc.reason}") from None
        reply_fds = reply.fds
        if reply_fds:
            socket.close(reply_fds[0])
        if reply.request is not request or not isinstance(reply.payload, m.U64):
            raise BackendChannelError(f"answer to {request.wire_name} is {reply.describe()}")
        if reply.payload.value != 0:
            log.warning("%s: frontend answered %s with error %d", self.name, request.wire_name, reply.payload.value)
            return False
        return True

    def close(self) -> None:
        self.sock.close()
