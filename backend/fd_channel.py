"""Messages with file descriptors over a unix stream socket (SCM_RIGHTS), for every protocol here.

vhost-user and vfio-user both send a header and a payload with fds beside them as SCM_RIGHTS
ancillary data. :class:`FdChannel` is the one place that moves such bytes:

* :meth:`FdChannel.recv_exact` reads exactly ``n`` bytes, collecting the fds that come with any of
  them into a list the caller owns; received fds are close-on-exec (``MSG_CMSG_CLOEXEC``), so a
  child process the server starts never inherits a frontend's memory or eventfds;
* more fds than the channel accepts (the kernel truncates the control data and discards the rest)
  is reported as :class:`ControlTruncated`, never silently dropped;
* :func:`owned_fds` closes what was received when parsing fails, so a malformed message leaks nothing;
* :meth:`FdChannel.send` sends the fds with the first byte and the rest of the bytes after them.

The protocol modules turn :class:`PeerClosed` and :class:`ControlTruncated` into their own errors.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

_FD_SIZE: Final = array.array("i").itemsize


class PeerClosed(Exception):
    """The peer closed the connection: between messages, or inside one when ``partial``."""

    def __init__(self, message: str, *, partial: bool = False) -> None:
        super().__init__(message)
        self.partial = partial


class ControlTruncated(Exception):
    """More fds (control data) came than the receiver has room for; the kernel dropped the rest."""

    def __init__(self, max_fds: int) -> None:
        super().__init__(f"more than {max_fds} fds came with one message")
        self.max_fds = max_fds


def close_fds(fds: Iterable[int]) -> None:
    """Close every fd; one already closed is no error (cleanup must finish)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@contextlib.contextmanager
def owned_fds() -> Iterator[list[int]]:
    """A list to receive fds into; they are closed if the block raises (the caller keeps them otherwise)."""
    fds: list[int] = []
    try:
        yield fds
    except BaseException:
        close_fds(fds)
        fds.clear()
        raise


def fds_of(ancdata: Iterable[tuple[int, int, bytes]]) -> list[int]:
    """The fds in ``recvmsg`` ancillary data (every SCM_RIGHTS entry; a partial int is ignored)."""
    out = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            out.frombytes(data[:len(data) - len(data) % _FD_SIZE])
    return list(out)


class FdChannel:
    """One unix stream socket carrying bytes and fds; accepts at most ``max_fds`` fds per message.

    ``socket.recv_fds`` is not used: in Python 3.11 it does not pass its flags on, so received fds
    could not be made close-on-exec atomically. ``socket.send_fds`` is used to send.
    """

    def __init__(self, sock: socket.socket, *, max_fds: int) -> None:
        if max_fds < 0:
            raise ValueError(f"max_fds {max_fds} is negative")
        self.sock = sock
        self.max_fds = max_fds
        # Room for max_fds fds; with none allowed, room for the header alone so extra fds show as truncation.
        self._ancbuf = socket.CMSG_SPACE(max_fds * _FD_SIZE) if max_fds else socket.CMSG_LEN(0)

    def recv_exact(self, size: int, fds: list[int], *, started: bool = False) -> bytes:
        """Exactly ``size`` bytes; fds that came with them are appended to ``fds`` (also when this raises,
        so the caller closes them: see :func:`owned_fds`).

        ``started`` says bytes of the same message were read before (a close is then ``partial``).
        Raises :class:`PeerClosed` on EOF and :class:`ControlTruncated` when more than ``max_fds`` fds
        came with the message; socket errors and timeouts propagate as ``OSError``.
        """
        buf = bytearray()
        while len(buf) < size:
            data, ancdata, flags, _ = self.sock.recvmsg(size - len(buf), self._ancbuf, socket.MSG_CMSG_CLOEXEC)
            fds.extend(fds_of(ancdata))
            if flags & socket.MSG_CTRUNC or len(fds) > self.max_fds:
                raise ControlTruncated(self.max_fds)
            if not data:
                got = f" after {len(buf)} of {size} bytes" if buf else ""
                raise PeerClosed(f"connection closed{got}", partial=started or bool(buf))
            buf += data
        return bytes(buf)

    def send(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """All of ``data``; ``fds`` travel with its first byte."""
        sent = socket.send_fds(self.sock, [data], list(fds)) if fds else self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(data[sent:])


def not_an_eventfd(fd: int) -> str | None:
    """Why ``fd`` cannot serve as a kick or call eventfd (what it is instead), or None when it is an eventfd.

    A frontend may pass any fd where the protocol says eventfd; a regular file or a socket would be accepted
    by a device's doorbell and fail only when polled or written, far from the message that brought it."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"not an open fd ({exc.strerror})"
    if target == "anon_inode:[eventfd]":
        return None
    return f"{target!r}, not an eventfd"
