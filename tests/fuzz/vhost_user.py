"""Fuzz target: raw vhost-user message bytes and fds into a live session of ``VhostUserServer`` on the
simulated virtio-net device.

Each input is one connection. Its records (:mod:`tests.fuzz.records`) are written to one end of a
socket pair, each record's fds passed beside its first byte, and the write side shut down; the
server's own ``serve_connection`` then reads, decodes and handles them on the other end exactly as
its connection threads do (run here on the fuzzing thread, so an escaping exception is seen), and
``release_connection`` gives the session back. Handled outcomes: the session ends on a malformed
message, a refused request or the end of the stream. Defects: any exception out of the server's
loop (the threaded server would log it as an ``internal error``), a reply stream the frontend cannot
decode, an fd still open after the session ended, a crash in the device's own thread, a device not back
in its reset state after the session.

One device serves every input, as one device serves a ``serve`` process's successive frontends: the
simulated function is opened once and :class:`PooledDevice` is what the server's factory hands each
session. The session's close resets it through virtio-pci (device status 0) as at the end of any session,
and then checks that it is clean: status 0, no virtqueue, vector, interrupt binding, ioeventfd or DMA
mapping left. Opening a function per input (the model, its event thread, its IOMMU) cost more than
most inputs.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from backend.device import VdpaDevice
from backend.drivers.quirks import QuirkTable, default_quirks
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.pci.device import PciDevice
from backend.targets import default_registry
from backend.vhost_user import messages as m
from backend.vhost_user.server import ConnectionLost, SessionRecord, VhostUserServer, recv_message
from tests.fuzz.records import Defect, leaked, open_fds, send_records

SPEC = "sim:virtio-net,wire=loopback"
#: Socket buffers large enough that a whole input and all its replies fit before anyone reads.
SOCK_BUF = 1 << 20


class PooledDevice(VirtioPciVdpaDevice):
    """The vendor driver over one function that outlives its sessions: closing it resets the device and
    checks the reset left nothing behind, instead of closing the function (:meth:`dispose` does that)."""

    def __init__(self, pci: PciDevice, quirks: QuirkTable) -> None:
        super().__init__(pci, quirks=quirks, owns_pci=False)
        self.in_use = False

    def close(self) -> None:
        self.in_use = False
        self.reset()
        self.check_clean()

    def check_clean(self) -> None:
        """Raise :class:`Defect` naming what a reset left: the next frontend would inherit it."""
        left = []
        if (status := self.transport.status()) != 0:
            left.append(f"device status {status:#x}")
        if self._vqs or self._num_max or self._vectors is not None or self._fanout or self._config_fd is not None:
            left.append(f"driver state (queues {sorted(self._vqs)}, vectors {self._vectors}, config fd "
                        f"{self._config_fd})")
        endpoint = getattr(self.pci, "endpoint", None)
        if endpoint is not None:
            if maps := endpoint.iommu.mappings():
                left.append(f"DMA mappings {maps}")
            msix = endpoint.msix
            if msix is not None and any(fd is not None for fd in msix.fds):
                left.append("MSI-X vectors bound to eventfds")
            if endpoint.intx_fd is not None:
                left.append("INTx bound to an eventfd")
        if ioeventfds := getattr(self.pci, "_ioeventfds", None):
            left.append(f"ioeventfds {sorted(ioeventfds)}")
        if left:
            raise Defect(f"the device is not clean after the session's reset: {'; '.join(left)}")

    def dispose(self) -> None:
        super().close()
        self.pci.close()


class VhostUserSessionTarget:
    def __init__(self, spec: str = SPEC) -> None:
        self.spec = spec
        self.device = PooledDevice(default_registry().open(spec), default_quirks())
        self.scratch = tempfile.mkdtemp(prefix="fuzz-vu-")
        self.server = VhostUserServer(os.path.join(self.scratch, "vu.sock"), self._device)
        self.next_id = 1

    def _device(self) -> VdpaDevice:
        self.device.in_use = True  # until the session closes it (checked after each input)
        return self.device

    def close(self) -> None:
        self.server.close()
        self.device.dispose()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def one_input(self, data: bytes) -> None:
        before = open_fds()
        front, back = socket.socketpair()
        for s in (front, back):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)
        rec = self.server.new_connection(self.next_id, back)
        self.next_id += 1
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
        crashes = self.device.pci.abilities().crashes
        found = crashes.crashes() if hasattr(crashes, "crashes") else []
        if found:
            raise Defect(f"the device's thread crashed: {found}")
        if self.device.in_use:
            raise Defect("the session ended without closing its device")

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
