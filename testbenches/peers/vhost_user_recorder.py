"""A recording relay on a vhost-user connection: the frontend connects here, the relay connects to the backend,
and every message of the main channel (with its fds) is passed on unchanged and recorded, decoded.

What a test reads from it: which requests a real frontend sent and what the backend answered (e.g. the ring bases of
SET_VRING_BASE and GET_VRING_BASE around a live migration), without a debug log in the backend. The back-end
request channel is a socket the frontend passes in SET_BACKEND_REQ_FD: it goes through as an fd, so that channel
runs directly between the two. One frontend connection per relay.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from backend.fd_channel import close_fds
from backend.vhost_user import messages as m
from backend.vhost_user.stream import ConnectionLost, recv_message, send_message

ACCEPT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Recorded:
    """One message as it crossed: ``F->B`` (request) or ``B->F`` (reply), the request and its decoded payload."""

    direction: str
    request: m.Request
    payload: m.Payload
    at: float  # time.monotonic() when the relay read it


class VhostUserRecorder:
    """Listens on ``listen_path``; the first connection is relayed to the backend at ``backend_path``."""

    def __init__(self, listen_path: Path, backend_path: Path) -> None:
        self.backend_path = backend_path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(listen_path))
        self._listener.listen(1)
        self.listen_path = listen_path
        self._lock = threading.Lock()
        self._messages: list[Recorded] = []
        self.errors: list[str] = []
        self._socks: list[socket.socket] = []
        self._closed = threading.Event()
        self._accepter = threading.Thread(target=self._accept, name="vu-recorder-accept", daemon=True)
        self._pumps: list[threading.Thread] = []
        self._accepter.start()

    def messages(self) -> list[Recorded]:
        with self._lock:
            return list(self._messages)

    def ring_bases(self, request: m.FrontendRequest, direction: str) -> dict[int, list[int]]:
        """``index -> [num, ...]`` of the VringState ``request`` messages seen going ``direction``, in order."""
        bases: dict[int, list[int]] = {}
        for msg in self.messages():
            if msg.request is request and msg.direction == direction and isinstance(msg.payload, m.VringState):
                bases.setdefault(msg.payload.index, []).append(msg.payload.num)
        return bases

    def _accept(self) -> None:
        self._listener.settimeout(ACCEPT_TIMEOUT)
        try:
            front, _ = self._listener.accept()
        except OSError as exc:  # timed out, or closed before a frontend came
            if not self._closed.is_set():
                self.errors.append(f"no frontend connected: {exc}")
            return
        back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            back.connect(str(self.backend_path))
        except OSError as exc:
            self.errors.append(f"backend {self.backend_path}: {exc}")
            front.close()
            back.close()
            return
        with self._lock:
            self._socks += [front, back]
        for src, dst, reply in ((front, back, False), (back, front, True)):
            pump = threading.Thread(target=self._pump, args=(src, dst, reply), daemon=True,
                                    name=f"vu-recorder-{'reply' if reply else 'request'}")
            self._pumps.append(pump)
            pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket, reply: bool) -> None:
        """Pass messages from ``src`` to ``dst`` until one side ends; then end both."""
        while True:
            try:
                msg = recv_message(src, reply=reply)
            except (ConnectionLost, OSError):
                break
            except m.VhostUserProtocolError as exc:
                self.errors.append(f"{'reply' if reply else 'request'} stream: {exc}")
                break
            with self._lock:
                self._messages.append(Recorded(msg.direction, msg.request, msg.payload, time.monotonic()))
            try:
                send_message(dst, msg)
            except OSError:
                break
            finally:
                close_fds(msg.fds)  # the peer holds its own copies now
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop relaying (both sides see the connection end) and wait for the relay's threads."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() still waiting
        self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._accepter.join(ACCEPT_TIMEOUT)
        for pump in self._pumps:
            pump.join(ACCEPT_TIMEOUT)
        for sock in socks:
            sock.close()
        self.listen_path.unlink(missing_ok=True)

    def __enter__(self) -> VhostUserRecorder:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
