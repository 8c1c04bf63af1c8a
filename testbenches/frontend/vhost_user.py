"""A vhost-user frontend in Python, sending what DPDK's virtio_user sends (see tests/data/captures).

It owns the guest side: a memfd :class:`~sim.memory.GuestMemory` shared as the memory table
(frontend virtual address = guest-physical address + ``uva_offset``, so a non-zero offset makes
the backend translate), split rings built with :class:`DriverSplitQueue` (or, with ``packed=True`` in
:meth:`start`, packed rings built with :class:`DriverPackedQueue`), and one kick and one
call eventfd per ring. Every wait is bounded (socket timeout, ``select`` on eventfds).

Typical use::

    fe = VhostUserFrontend.connect(path, mem)
    fe.start()                       # the virtio_user sequence up to DRIVER_OK
    got = fe.exchange(frames)        # loopback device: frames come back on RX
    fe.stop()                        # SET_VRING_ENABLE 0 + GET_VRING_BASE per ring
    fe.close()

With ``backend_req=True`` (:meth:`negotiate`, :meth:`start`) it also asks for BACKEND_REQ and CONFIG and hands
the backend one end of a socket pair (``SET_BACKEND_REQ_FD``, where QEMU sends it: after the protocol
features); :meth:`recv_backend` waits (bounded) for the backend's next request on it and answers it.
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Sequence

from backend.eventloop import new_eventfd
from backend.fd_channel import FdChannel
from backend.vhost_user import messages as m
from backend.vhost_user.server import recv_message, send_message
from backend.virtio.features import DeviceStatus, F, has
from sim.memory import Allocator, GuestMemory
from testbenches.driver.layout import default_allocator
from testbenches.driver.packed import DriverPackedQueue
from testbenches.driver.split_ring import DriverSplitQueue
from testbenches.driver.vdpa_frontend import exchange_frames, stream_frames

R = m.FrontendRequest
#: Protocol features virtio_user asks for (it sends MQ|REPLY_ACK|STATUS).
WANTED_PROTOCOL = m.ProtocolFeature.MQ.mask | m.ProtocolFeature.REPLY_ACK.mask | m.ProtocolFeature.STATUS.mask
#: Added with ``backend_req``: the back-end request channel, and GET_CONFIG to read what changed.
BACKEND_PROTOCOL = m.ProtocolFeature.BACKEND_REQ.mask | m.ProtocolFeature.CONFIG.mask
#: Virtio features this frontend accepts when offered (virtio_user's kind: no EVENT_IDX, no offloads).
WANTED_FEATURES = (1 << F.VERSION_1) | (1 << F.INDIRECT_DESC) | (1 << m.VHOST_USER_F_PROTOCOL_FEATURES)
_UP = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK
#: SET_VRING_BASE of a packed ring at its start, as DPDK 22.11's virtio_user sends it: avail wrap counter 1 only.
PACKED_START = 1 << 15


class FrontendError(Exception):
    """The backend refused a request or answered something unexpected."""


class VhostUserFrontend:
    def __init__(self, sock: socket.socket, mem: GuestMemory, *, uva_offset: int = 0,
                 alloc: Allocator | None = None, timeout: float = 5.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.mem = mem
        self.uva_offset = uva_offset
        self.alloc = default_allocator(mem, alloc)
        self.timeout = timeout
        self.rings: dict[int, DriverSplitQueue | DriverPackedQueue] = {}
        self.kicks: dict[int, int] = {}
        self.calls: dict[int, int] = {}
        self.features = 0
        self.protocol_features = 0
        self.log: list[m.Message] = []  # every message sent and received, in order
        self.backend_sock: socket.socket | None = None  # our end of the SET_BACKEND_REQ_FD channel

    @classmethod
    def connect(cls, path: str, mem: GuestMemory, *, uva_offset: int = 0,
                timeout: float = 5.0) -> VhostUserFrontend:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(path)
        return cls(sock, mem, uva_offset=uva_offset, timeout=timeout)

    # --- messages -----------------------------------------------------------------------------

    def send(self, msg: m.Message) -> None:
        self.log.append(msg)
        send_message(self.sock, msg)

    def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Bytes as they are (hostile tests): no validation."""
        FdChannel(self.sock, max_fds=len(fds)).send(data, fds)

    def recv(self) -> m.Message:
        msg = recv_message(self.sock, reply=True)
        self.log.append(msg)
        return msg

    def request(self, request: R, payload: m.Payload = m.EMPTY, fds: Sequence[int] = (),
                need_reply: bool = False) -> m.Message | None:
        """Send a request; return its reply when one comes (explicit reply, or ack on need_reply)."""
        flags = m.HeaderFlag.VERSION | (m.HeaderFlag.NEED_REPLY if need_reply else 0)
        msg = m.Message(request, payload, tuple(fds), flags)
        self.send(msg)
        if m.spec_of(request).explicit_reply or need_reply:
            reply = self.recv()
            if reply.request is not request:
                raise FrontendError(f"{request.name}: got a reply to {reply.name}")
            if need_reply and not m.spec_of(request).explicit_reply:
                assert isinstance(reply.payload, m.U64)
                if reply.payload.value != 0:
                    raise FrontendError(f"{request.name} refused by the backend (ack {reply.payload.value})")
            return reply
        return None

    def _acked(self) -> bool:
        return bool(self.protocol_features & m.ProtocolFeature.REPLY_ACK.mask)

    def _u64(self, request: R) -> int:
        reply = self.request(request)
        assert reply is not None and isinstance(reply.payload, m.U64)
        return reply.payload.value

    # --- bring-up, in virtio_user's order -----------------------------------------------------

    def memory_table(self) -> m.MemoryTable:
        regions = tuple(m.MemoryRegion(r.gpa, r.size, r.gpa + self.uva_offset, 0) for r in self.mem.regions)
        return m.MemoryTable(regions)

    def set_mem_table(self) -> None:
        self.request(R.SET_MEM_TABLE, self.memory_table(), [r.fd for r in self.mem.regions],
                     need_reply=self._acked())

    def negotiate(self, wanted: int = WANTED_FEATURES, *, backend_req: bool = False,
                  protocol: int = WANTED_PROTOCOL) -> int:
        """SET_OWNER, features, protocol features (``protocol`` of those offered); with ``backend_req``
        also BACKEND_REQ and CONFIG and the back-end channel (which must then be offered)."""
        self.request(R.SET_OWNER)
        offered = self._u64(R.GET_FEATURES)
        if offered & (1 << m.VHOST_USER_F_PROTOCOL_FEATURES):
            want = protocol | (BACKEND_PROTOCOL if backend_req else 0)
            proto = self._u64(R.GET_PROTOCOL_FEATURES) & want
            self.request(R.SET_PROTOCOL_FEATURES, m.U64(proto))
            self.protocol_features = proto
        if backend_req:
            if not self.protocol_features & m.ProtocolFeature.BACKEND_REQ.mask:
                raise FrontendError("the backend does not offer BACKEND_REQ")
            self.open_backend_channel()
        self.features = offered & wanted
        return self.features

    def open_backend_channel(self) -> None:
        """SET_BACKEND_REQ_FD with one end of a fresh socket pair; the other end is :attr:`backend_sock`."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.request(R.SET_BACKEND_REQ_FD, m.EMPTY, [theirs.fileno()], need_reply=self._acked())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the backend has its own copy now
        if self.backend_sock is not None:
            self.backend_sock.close()
        self.backend_sock = ours

    def recv_backend(self, timeout: float | None = None, *, answer: int | None = 0) -> m.Message | None:
        """The backend's next request on the back-end channel within ``timeout`` (None if none came).
        A NEED_REPLY request is answered with ``answer`` (None: left unanswered, as a stuck frontend would)."""
        if self.backend_sock is None:
            raise FrontendError("no back-end channel: negotiate(backend_req=True) first")
        ready, _, _ = select.select([self.backend_sock], [], [], self.timeout if timeout is None else timeout)
        if not ready:
            return None
        msg = recv_message(self.backend_sock, channel=m.Channel.BACKEND)
        self.log.append(msg)
        if msg.need_reply and answer is not None:
            reply = m.Message.ack(msg, answer)
            self.log.append(reply)
            send_message(self.backend_sock, reply)
        return msg

    def get_config(self, offset: int, size: int) -> bytes:
        """GET_CONFIG (needs CONFIG); an empty reply, the backend's failure signal, raises."""
        reply = self.request(R.GET_CONFIG, m.ConfigSpace(offset, m.ConfigFlags(0), bytes(size)))
        assert reply is not None
        if not isinstance(reply.payload, m.ConfigSpace) or not reply.payload.data:
            raise FrontendError(f"GET_CONFIG [{offset}, {offset + size}) refused")
        return reply.payload.data

    def start(self, queues: Sequence[int] = (0, 1), size: int = 256, wanted: int = WANTED_FEATURES, *,
              backend_req: bool = False, protocol: int = WANTED_PROTOCOL, packed: bool = False) -> None:
        """The whole virtio_user sequence: owner, features, calls, status, memory, rings, DRIVER_OK; with
        ``packed`` VIRTIO_F_RING_PACKED is asked for and must be offered."""
        self.negotiate(wanted | (1 << F.RING_PACKED if packed else 0), backend_req=backend_req, protocol=protocol)
        if packed and not has(self.features, F.RING_PACKED):
            raise FrontendError("packed rings asked for, VIRTIO_F_RING_PACKED not offered")
        for q in queues:
            self.calls[q] = new_eventfd()
            self.request(R.SET_VRING_CALL, m.VringFile(q), [self.calls[q]])
        self.request(R.SET_FEATURES, m.U64(self.features))
        status = bool(self.protocol_features & m.ProtocolFeature.STATUS.mask)
        if status:
            self.request(R.SET_STATUS, m.Status(_UP), need_reply=self._acked())
            got = self.get_status()
            if got & _UP != _UP:
                raise FrontendError(f"status {got:#x} after SET_STATUS({int(_UP):#x})")
        self.set_mem_table()
        for q in queues:
            self.add_ring(q, size)
        for q in queues:
            self.enable(q, True)
        if status:
            self.request(R.SET_STATUS, m.Status(_UP | DeviceStatus.DRIVER_OK), need_reply=self._acked())

    def add_ring(self, index: int, size: int, base: int | None = None) -> DriverSplitQueue | DriverPackedQueue:
        """One ring in the negotiated layout; ``base`` is SET_VRING_BASE's value (default: the ring's start)."""
        ring: DriverSplitQueue | DriverPackedQueue
        if has(self.features, F.RING_PACKED):
            ring = DriverPackedQueue(self.mem, self.alloc, size, index=index, in_order=has(self.features, F.IN_ORDER))
            parts = (ring.desc_addr, ring.driver_addr, ring.device_addr)  # SET_VRING_ADDR's desc, avail, used
            start = PACKED_START
        else:
            ring = DriverSplitQueue(self.mem, self.alloc, size, index=index, event_idx=False)
            parts = (ring.desc_addr, ring.avail_addr, ring.used_addr)
            start = 0
        self.rings[index] = ring
        self.kicks[index] = new_eventfd()
        self.request(R.SET_VRING_NUM, m.VringState(index, size))
        self.request(R.SET_VRING_BASE, m.VringState(index, start if base is None else base))
        self.set_ring_addr(index, *parts)
        self.request(R.SET_VRING_KICK, m.VringFile(index), [self.kicks[index]])
        return ring

    def set_ring_addr(self, index: int, desc: int, avail: int, used: int, need_reply: bool = False) -> None:
        """Guest-physical ring addresses, sent as frontend virtual addresses."""
        o = self.uva_offset
        self.request(R.SET_VRING_ADDR, m.VringAddr(index, 0, desc + o, used + o, avail + o, 0),
                     need_reply=need_reply)

    def enable(self, index: int, on: bool) -> None:
        self.request(R.SET_VRING_ENABLE, m.VringState(index, int(on)))

    def get_status(self) -> int:
        reply = self.request(R.GET_STATUS)
        assert reply is not None and isinstance(reply.payload, m.Status)
        return reply.payload.value

    def remap(self) -> None:
        """What virtio_user does when its heap grows: rings off, new SET_MEM_TABLE, rings on."""
        for q in self.rings:
            self.enable(q, False)
        self.set_mem_table()
        for q in self.rings:
            self.enable(q, True)

    def stop(self) -> dict[int, int]:
        """virtio_user's teardown: every ring disabled, then GET_VRING_BASE for each; returns the bases."""
        for q in self.rings:
            self.enable(q, False)
        bases: dict[int, int] = {}
        for q in self.rings:
            reply = self.request(R.GET_VRING_BASE, m.VringState(q, 0))
            assert reply is not None and isinstance(reply.payload, m.VringState)
            bases[q] = reply.payload.num
        return bases

    # --- traffic ------------------------------------------------------------------------------

    def kick(self, index: int) -> bool:
        ring = self.rings[index]
        if ring.kick_needed() if isinstance(ring, DriverPackedQueue) else ring.publish():
            os.eventfd_write(self.kicks[index], 1)
            return True
        return False

    def exchange(self, frames: Sequence[bytes], rx: int = 0, tx: int = 1, timeout: float | None = None,
                 buf_size: int = 2048) -> list[bytes]:
        """Post RX buffers, send ``frames`` on TX, return what arrived on RX within ``timeout``."""
        return exchange_frames(self.rings[rx], self.rings[tx], self.calls[rx], self.calls[tx],
                               lambda: self.kick(rx), lambda: self.kick(tx), frames,
                               self.timeout if timeout is None else timeout, buf_size)

    def stream(self, frames: Sequence[bytes], rx: int = 0, tx: int = 1, timeout: float | None = None,
               buf_size: int = 2048) -> list[bytes]:
        """:meth:`exchange` with the rings kept stocked as the device returns slots (any number of frames)."""
        return stream_frames(self.rings[rx], self.rings[tx], self.calls[rx], self.calls[tx],
                             lambda: self.kick(rx), lambda: self.kick(tx), frames,
                             self.timeout if timeout is None else timeout, buf_size)

    def closed_by_peer(self, timeout: float = 2.0) -> bool:
        """True when the backend closed the connection within ``timeout`` (EOF)."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(self.timeout)

    def close(self) -> None:
        self.sock.close()
        if self.backend_sock is not None:
            self.backend_sock.close()
            self.backend_sock = None
        for fd in [*self.kicks.values(), *self.calls.values()]:
            os.close(fd)
        self.kicks.clear()
        self.calls.clear()
