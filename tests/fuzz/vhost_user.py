"""Fuzz target: raw vhost-user message bytes and fds into a live session of ``VhostUserServer`` on the
simulated virtio-net device.

Each input is one connection. Its records (:mod:`tests.fuzz.records`) are written to one end of a
socket pair, each record's fds passed beside its first byte, and the write side shut down; the
server's own ``serve_connection`` then reads, decodes and handles them on the other end exactly as
its connection threads do (run here on the fuzzing thread, so an escaping exception is seen), and
``release_connection`` gives the session back. Handled outcomes: the session ends on a malformed
message, a refused request or the end of the stream. Defects: any exception out of the server's
loop (the threaded server would log it as an ``internal error``), a reply stream the frontend cannot
decode, an fd still open after the session ended, a crash in the device's own thread.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from backend.device import VdpaDevice
from backend.drivers.quirks import default_quirks
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.targets import default_registry
from backend.vhost_user import messages as m
from backend.vhost_user.server import ConnectionLost, SessionRecord, VhostUserServer, recv_message
from tests.fuzz.records import Defect, leaked, open_fds, send_records

SPEC = "sim:virtio-net,wire=loopback"
#: Socket buffers large enough that a whole input and all its replies fit before anyone reads.
SOCK_BUF = 1 << 20


class VhostUserSessionTarget:
    def __init__(self, spec: str = SPEC) -> None:
        self.registry = default_registry()
        self.spec = spec
        self.quirks = default_quirks()  # read once: it scans the installed providers
        self.devices: list[VirtioPciVdpaDevice] = []  # the device of the current input
        self.scratch = tempfile.mkdtemp(prefix="fuzz-vu-")
        self.server = VhostUserServer(os.path.join(self.scratch, "vu.sock"), self._device)
        self.next_id = 1

    def _device(self) -> VdpaDevice:
        dev = VirtioPciVdpaDevice(self.registry.open(self.spec), quirks=self.quirks)
        self.devices.append(dev)
        return dev

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def one_input(self, data: bytes) -> None:
        before = open_fds()
        front, back = socket.socketpair()
        for s in (front, back):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
        rec = self.server.new_connection(self.next_id, back)
        self.next_id += 1
        self.devices.clear()
        try:
            self._send_all(front, data)
            front.shutdown(socket.SHUT_WR)
            try:
                self.server.serve_connection(rec)
                # EOF after the replies (closing with the input unread would reset the connection instead)
                back.shutdown(socket.SHUT_WR)
                self._read_replies(front, rec)
            finally:
                self.server.release_connection(rec)
                back.close()
            self._check_device_threads()
        finally:
            front.close()
            back.close()
        left = leaked(before, open_fds())
        if left:
            raise Defect(f"fds left open after the session ended ({rec.reason}): {left}")

    def _send_all(self, front: socket.socket, data: bytes) -> None:
        send_records(front, data, self.scratch, m.MAX_FDS)

    def _check_device_threads(self) -> None:
        for dev in self.devices:
            crashes = dev.pci.abilities().crashes
            found = crashes.crashes() if hasattr(crashes, "crashes") else []
            if found:
                raise Defect(f"the device's thread crashed: {found}")

    @staticmethod
    def _read_replies(front: socket.socket, rec: SessionRecord) -> None:
        """Every reply the server sent decodes as a backend reply (the frontend's own reader)."""
        while True:
            try:
                msg = recv_message(front, reply=True)
            except ConnectionLost:
                return
            except m.VhostUserProtocolError as exc:
                raise Defect(f"the backend sent a malformed reply ({rec.reason}): {exc}") from None
            for fd in msg.fds:
                os.close(fd)
