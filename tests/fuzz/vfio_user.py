"""Fuzz targets on vfio-user, both ends.

* :class:`VfioUserServerTarget`: client messages (bytes and fds, :mod:`tests.fuzz.records`) into the
  simulated device's ``VfioUserServer``. As for vhost-user, the input is written to one end of a socket
  pair and the server's own ``serve_connection``/``release_connection`` run on the fuzzing thread.
  Handled: a dropped client (malformed message), error replies. Defects: an exception out of the
  server's loop, a reply the client cannot decode, fds left open, a crash in the device's thread.
* :class:`VfioUserClientTarget`: a hostile server's replies into ``VfioUserPciDevice``. The first input
  byte picks which client calls run after the handshake (:data:`SCRIPT`); each record is one thing the
  server sends: its first body byte is a mode (:data:`PATCH_ID`: msg_id is the number of replies before
  it, the id of the client's request it answers, so mutations get past the id check;
  :data:`UNSOLICITED`: not counted as a reply), the rest goes on the wire with the record's fds. The
  server sends all of it at once and then reads whatever the client sent. Handled: ``PciError``
  (``VfioUserError``) from any call. Defects: any other exception (a crash in the backend's client), a
  client message the server cannot decode, fds left open after ``close``, a hang (the client's reply
  timeout bounds every wait).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from typing import Final

from backend.fd_channel import FdChannel
from backend.pci import vfio_user_msg as m
from backend.pci.device import DmaPerm, IrqIndex, PciError, RegionIndex
from backend.pci.vfio_user import VfioUserPciDevice
from sim.vfio_user.daemon import model_factory
from sim.vfio_user.server import MAX_MESSAGE, SERVER_MAX_FDS, VfioUserServer
from tests.fuzz.records import Defect, leaked, make_fd, open_fds, records, send_records

MODEL: Final = "virtio-net,wire=loopback"
SOCK_BUF: Final = 1 << 20
#: Reply modes of the hostile server (first body byte of a client-target record).
PATCH_ID: Final = 1
UNSOLICITED: Final = 2
#: The client's wait for one reply; the hostile server hangs up when its records run out, so a wait this
#: long means the client waits on something that will never come.
CLIENT_TIMEOUT: Final = 2.0
JOIN_TIMEOUT: Final = 5.0
GUEST_MEM: Final = 0x10000


def _big_buffers(*socks: socket.socket) -> None:
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCK_BUF)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCK_BUF)


class VfioUserServerTarget:
    def __init__(self, model: str = MODEL) -> None:
        self.scratch = tempfile.mkdtemp(prefix="fuzz-vfu-")
        self.server = VfioUserServer(os.path.join(self.scratch, "vfu.sock"), model_factory(model), max_devices=1)
        self.next_id = 1
        self.one_input(b"")  # the pool's device (and its fds) exists from here on, as in a serving daemon

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def one_input(self, data: bytes) -> None:
        before = open_fds()
        fresh = not self.server.devices
        front, back = socket.socketpair()
        _big_buffers(front, back)
        rec = self.server.new_connection(self.next_id, back)
        self.next_id += 1
        try:
            send_records(front, data, self.scratch, SERVER_MAX_FDS)
            front.shutdown(socket.SHUT_WR)
            try:
                self.server.serve_connection(rec)
                # EOF after the replies (closing with the input unread would reset the connection instead)
                back.shutdown(socket.SHUT_WR)
                while True:
                    try:
                        msg = m.recv_message(front, max_size=MAX_MESSAGE, max_fds=8)
                    except m.ConnectionClosed:
                        break
                    except m.VfioUserProtocolError as exc:
                        raise Defect(f"the server sent a malformed reply ({rec.reason}): {exc}") from None
                    msg.close_fds()
            finally:
                self.server.release_connection(rec)
                back.close()
            for dev in self.server.devices:
                crashes = dev.abilities().crashes
                found = crashes.crashes() if hasattr(crashes, "crashes") else []
                if found:
                    raise Defect(f"the device's thread crashed: {found}")
        finally:
            front.close()
            back.close()
        # The device stays in the server's pool (reset), with its own fds: open before and after alike.
        left = leaked(before, open_fds())
        if left and not fresh:
            raise Defect(f"fds left open after the client went ({rec.reason}): {left}")


def _region_views(dev: VfioUserPciDevice) -> None:
    """Touch the first and last byte of every region the client mapped (a bad mapping faults here)."""
    for index in range(m.PCI_NUM_REGIONS):
        view = dev.region_mmap(index)
        if view is not None and len(view):
            _ = view[0], view[len(view) - 1]
            view.release()


def _calls(dev: VfioUserPciDevice, scratch: str) -> list[Callable[[], object]]:
    """The client calls a script byte picks from (bit i: call i); each makes and closes its own fds."""

    def dma() -> None:
        mem = os.memfd_create("fuzz-client-mem", os.MFD_CLOEXEC)
        try:
            os.ftruncate(mem, GUEST_MEM)
            dev.dma_map(0, GUEST_MEM, mem, 0, DmaPerm.RW)
        finally:
            os.close(mem)
        dev.dma_unmap(0, GUEST_MEM)

    def irqs() -> None:
        fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(2)]
        try:
            dev.set_irqs(IrqIndex.MSIX, 0, [fds[0], None, fds[1]])
        finally:
            for fd in fds:
                os.close(fd)
        dev.set_irqs(IrqIndex.MSIX, 0, [])

    def kick() -> None:
        efd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            if dev.ioeventfd(0, 0x3000, 2, None, efd):
                dev.ioeventfd_remove(0, 0x3000, efd)
        finally:
            os.close(efd)

    def port() -> None:
        if dev.model is not None:
            _ = dev.model.link_up, dev.model.errors
            dev.model.set_link(True)
            dev.model.receive(b"\x02" * 60)

    def read() -> None:
        dev.region_read(RegionIndex.CONFIG, 0, 64)
        dev.region_read(0, 0, 8)
        _region_views(dev)

    return [
        read,
        lambda: dev.region_write(0, 0x14, b"\0\0\0\0"),
        dma, irqs, dev.dma_faults, kick, port, dev.reset,
    ]


class VfioUserClientTarget:
    def __init__(self) -> None:
        self.scratch = tempfile.mkdtemp(prefix="fuzz-vfuc-")
        self.path = os.path.join(self.scratch, "hostile.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.listener.bind(self.path)
        self.listener.listen(1)
        self.listener.settimeout(JOIN_TIMEOUT)

    def close(self) -> None:
        self.listener.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def one_input(self, data: bytes) -> None:
        if not data:
            return
        script, replies = data[0], data[1:]
        before = open_fds()
        problems: list[str] = []
        server = threading.Thread(target=self._hostile, args=(replies, problems), name="fuzz-hostile-server")
        server.start()
        try:
            self._client(script)
        finally:
            server.join(JOIN_TIMEOUT)
        if server.is_alive():
            raise Defect("the hostile server thread did not end: the client left it waiting")
        if problems:
            raise Defect(problems[0])
        left = leaked(before, open_fds())
        if left:
            raise Defect(f"fds left open after the client closed: {left}")

    def _client(self, script: int) -> None:
        try:
            dev = VfioUserPciDevice(self.path, timeout=CLIENT_TIMEOUT)
        except PciError:
            return
        try:
            for bit, call in enumerate(_calls(dev, self.scratch)):
                if script & (1 << bit):
                    with contextlib.suppress(PciError):
                        call()
        finally:
            dev.close()

    def _hostile(self, replies: bytes, problems: list[str]) -> None:
        """Send every record at once, hang up the sending side, then read what the client sent.

        Nothing here waits for the client, so a truncated reply cannot deadlock the two sides: the
        client meets the end of the stream instead."""
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:
            problems.append(f"the client never connected: {exc}")
            return
        with conn:
            _big_buffers(conn)
            chan = FdChannel(conn, max_fds=SERVER_MAX_FDS)
            answered = 0
            try:
                for r in records(replies):
                    mode, body = (r.body[0], r.body[1:]) if r.body else (0, b"")
                    if not mode & UNSOLICITED:
                        if mode & PATCH_ID and len(body) >= 2:
                            body = struct.pack("<H", answered & 0xFFFF) + body[2:]
                        answered += 1
                    fds = [make_fd(k, self.scratch) for k in r.fd_kinds]
                    try:
                        if body:
                            chan.send(body, fds)
                    finally:
                        for fd in fds:
                            os.close(fd)
                conn.shutdown(socket.SHUT_WR)
                while True:
                    msg = m.recv_message(conn, max_size=MAX_MESSAGE, max_fds=SERVER_MAX_FDS)
                    msg.close_fds()
            except m.ConnectionClosed:
                return
            except m.VfioUserProtocolError as exc:
                problems.append(f"the client sent a malformed message: {exc}")
            except OSError:
                return  # the client hung up first: its call failed, which it handles
