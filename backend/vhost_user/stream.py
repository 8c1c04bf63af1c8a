"""Whole vhost-user messages over a unix stream socket, with the fds beside them (either channel, either side)."""

from __future__ import annotations

import socket

from backend.fd_channel import ControlTruncated, FdChannel, PeerClosed, owned_fds
from backend.vhost_user import messages as m

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
