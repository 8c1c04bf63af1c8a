"""The socket layer the servers share: :class:`~backend.fd_channel.FdChannel` (exact reads, fds collected
from every chunk, close-on-exec, truncation reported, nothing leaked on error) and
:class:`~backend.unix_socket.UnixSocketServer` (a thread per connection, released in order, only
live connections and a bounded tail of ended ones kept, bounded close)."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.fd_channel import ControlTruncated, FdChannel, PeerClosed, owned_fds
from backend.unix_socket import Connection, UnixSocketServer

WAIT = 5.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(WAIT)
    b.settimeout(WAIT)
    yield a, b
    a.close()
    b.close()


def eventfds(n: int) -> list[int]:
    return [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(n)]


def test_exact_read_collects_fds_from_every_chunk(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sent = eventfds(3)
    try:
        FdChannel(a, max_fds=0).send(b"head", sent[:2])
        FdChannel(a, max_fds=0).send(b"payload", sent[2:])
    finally:
        for fd in sent:
            os.close(fd)
    chan = FdChannel(b, max_fds=4)
    fds: list[int] = []
    try:
        assert chan.recv_exact(2, fds) == b"he"
        assert chan.recv_exact(9, fds, started=True) == b"adpayload"
        assert len(fds) == 3
        for fd in fds:  # received close-on-exec: a child process never inherits them
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            assert os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    finally:
        for fd in fds:
            os.close(fd)


def test_too_many_fds_is_reported_and_nothing_leaks(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    before = open_fds()
    sent = eventfds(5)
    FdChannel(a, max_fds=0).send(b"x" * 16, sent)
    for fd in sent:
        os.close(fd)
    with pytest.raises(ControlTruncated, match="more than 2 fds"), owned_fds() as fds:
        FdChannel(b, max_fds=2).recv_exact(16, fds)
    assert open_fds() == before


def test_close_between_and_inside_messages(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    chan = FdChannel(b, max_fds=1)
    a.sendall(b"abc")
    a.shutdown(socket.SHUT_WR)
    fds: list[int] = []
    with pytest.raises(PeerClosed) as inside:
        chan.recv_exact(8, fds)
    assert inside.value.partial and "after 3 of 8 bytes" in str(inside.value)
    with pytest.raises(PeerClosed) as between:
        chan.recv_exact(8, fds)
    assert not between.value.partial


class Echo(UnixSocketServer[Connection]):
    """Echoes what it gets; ``boom`` is a bug in serving (the connection ends with the reason)."""

    def __init__(self, path: str, *, connect: bool = False, keep_ended: int = 16) -> None:
        self.released: list[int] = []
        super().__init__(path, connect=connect, name="echo", keep_ended=keep_ended)

    def new_connection(self, id: int, sock: socket.socket) -> Connection:
        return Connection(id, sock)

    def serve_connection(self, conn: Connection) -> None:
        while data := conn.sock.recv(64):
            if data == b"boom":
                raise RuntimeError("boom")
            conn.sock.sendall(data)
            conn.handled += 1

    def release_connection(self, conn: Connection) -> None:
        self.released.append(conn.id)


def talk(path: str, data: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(WAIT)
        s.connect(path)
        s.sendall(data)
        # an echo, or the server hanging up on the connection that broke it
        assert s.recv(64) == (b"" if data == b"boom" else data)


def test_ended_connections_are_released_and_not_kept(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    before = open_fds()
    srv = Echo(path, keep_ended=3)
    try:
        for i in range(10):
            talk(path, b"boom" if i == 4 else b"hello %d" % i)
            rec = next(r for r in srv.sessions if r.id == i + 1)
            assert rec.ended.wait(WAIT)
        assert srv.live == [] and [r.id for r in srv.sessions] == [8, 9, 10]
        assert srv.released == list(range(1, 11)) and (srv.started, srv.dropped) == (10, 1)
        assert all(r.sock.fileno() == -1 for r in srv.sessions)
    finally:
        srv.close()
    assert not os.path.exists(path)
    assert open_fds() == before


def test_close_shuts_live_connections_down(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    srv = Echo(path)
    clients = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(WAIT)
            s.connect(path)
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"  # served: the server holds a live record for it
            clients.append(s)
        assert len(srv.live) == 3
    finally:
        srv.close(timeout=WAIT)
        for s in clients:
            s.close()
    assert srv.live == [] and sorted(srv.released) == [1, 2, 3]
    assert all(r.ended.is_set() for r in srv.sessions)


def test_listening_claims_a_stale_socket_but_not_a_live_one(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # a dead server's socket file
    srv = Echo(path)
    try:
        with pytest.raises(FileExistsError, match="another process is listening"):
            Echo(path)
        talk(path, b"still mine")
    finally:
        srv.close()


def test_connect_mode_serves_the_one_connection(tmp_path: Path) -> None:
    path = str(tmp_path / "peer.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(WAIT)
        srv = Echo(path, connect=True)
        conn, _ = listener.accept()
    try:
        conn.settimeout(WAIT)
        conn.sendall(b"hi")
        assert conn.recv(2) == b"hi"
        conn.close()
        assert srv.sessions[0].ended.wait(WAIT)
    finally:
        srv.close()
    assert os.path.exists(path), "a client-mode server removed its peer's socket"
