"""Wires between device models: what a virtio-net model transmits to and receives from.

A device transmits through its :class:`Port`; whatever sits at the other end
receives through a :class:`Station` (``receive(frame)``). Deliveries are
synchronous on the sender's thread. Any wire can carry pcap taps.

Frames also travel in bursts (:class:`FrameBatch`, ``transmit_batch`` /
``receive_batch``): one buffer holding the frames back to back, so a device
moving thousands of frames a second does not pay a Python call per frame on
every hop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scapy.utils import PcapWriter

DLT_EN10MB = 1


class FrameBatch:
    """Frames back to back in one byte array: frame ``i`` is ``lengths[i]`` bytes at ``starts[i]``.

    ``uniform`` is the common length when every frame has the same one (then ``data`` reshapes to rows).
    The bytes are the batch's own (copied out of guest memory), so a driver reusing its buffers cannot
    change a frame in flight.
    """

    __slots__ = ("_starts", "data", "lengths", "uniform")

    def __init__(self, data: NDArray[np.uint8], lengths: NDArray[np.int64], uniform: int | None = None) -> None:
        self.data = data
        self.lengths = lengths
        n = len(lengths)
        if uniform is None and n and bool((lengths == lengths[0]).all()):
            uniform = int(lengths[0])
        self.uniform = uniform
        self._starts: NDArray[np.int64] | None = None

    @classmethod
    def of(cls, frames: Iterable[bytes | bytearray | memoryview]) -> FrameBatch:
        items = [bytes(f) for f in frames]
        data = np.frombuffer(b"".join(items), dtype=np.uint8)
        return cls(data, np.array([len(f) for f in items], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def total_bytes(self) -> int:
        return len(self) * self.uniform if self.uniform is not None else int(self.lengths.sum())

    @property
    def starts(self) -> NDArray[np.int64]:
        if self._starts is None:
            self._starts = np.cumsum(self.lengths) - self.lengths
        return self._starts

    def frame(self, i: int) -> bytes:
        start = int(self.starts[i])
        return self.data[start:start + int(self.lengths[i])].tobytes()

    def __iter__(self) -> Iterator[bytes]:
        raw = self.data.tobytes()
        for start, n in zip(self.starts.tolist(), self.lengths.tolist(), strict=True):
            yield raw[start:start + n]

    def select(self, keep: NDArray[np.bool_]) -> FrameBatch:
        """The frames where ``keep`` is True, in order."""
        if bool(keep.all()):
            return self
        return FrameBatch.of(f for f, k in zip(self, keep.tolist(), strict=True) if k)

    def with_header(self, hdr: bytes, lo: int, hi: int) -> NDArray[np.uint8]:
        """Frames ``lo``..``hi``-1, each behind ``hdr``, back to back (what a receive queue gets written)."""
        n = hi - lo
        head = np.frombuffer(hdr, dtype=np.uint8)
        width = self.uniform
        if width is not None:
            out = np.empty((n, len(hdr) + width), dtype=np.uint8)
            out[:, :len(hdr)] = head
            out[:, len(hdr):] = self.data[lo * width:hi * width].reshape(n, width)
            return out.reshape(-1)
        raw = self.data.tobytes()
        starts = self.starts[lo:hi].tolist()
        lens = self.lengths[lo:hi].tolist()
        return np.frombuffer(b"".join(hdr + raw[s:s + k] for s, k in zip(starts, lens, strict=True)), dtype=np.uint8)


class Station(Protocol):
    """Anything that takes frames off a wire (a device model's RX side, a collector)."""

    def receive(self, frame: bytes) -> None: ...

    def receive_batch(self, frames: FrameBatch) -> None: ...


class Port(Protocol):
    """The attachment a station transmits through."""

    def transmit(self, frame: bytes) -> None: ...

    def transmit_batch(self, frames: FrameBatch) -> None: ...


class Tap(Protocol):
    def capture(self, frame: bytes) -> None: ...


class PcapTap:
    """Writes every frame crossing a wire to a pcap file (Ethernet link type), flushed per frame."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer = PcapWriter(path, linktype=DLT_EN10MB, sync=True)
        self._lock = threading.Lock()
        self.count = 0

    def capture(self, frame: bytes) -> None:
        with self._lock:
            self._writer.write(frame)
            self.count += 1

    def close(self) -> None:
        with self._lock:
            self._writer.close()


class Wire:
    """Base: taps see every frame that crosses."""

    def __init__(self) -> None:
        self.taps: list[Tap] = []
        self.frames = 0

    def add_tap(self, tap: Tap) -> None:
        self.taps.append(tap)

    def _carry(self, frame: bytes, to: Station) -> None:
        self.frames += 1
        for tap in self.taps:
            tap.capture(frame)
        to.receive(frame)

    def _carry_batch(self, frames: FrameBatch, to: Station) -> None:
        self.frames += len(frames)
        for tap in self.taps:
            for frame in frames:
                tap.capture(frame)
        to.receive_batch(frames)

    def close(self) -> None:
        for tap in self.taps:
            close = getattr(tap, "close", None)
            if close is not None:
                close()


class _WirePort:
    def __init__(self, wire: Wire, peer: Station) -> None:
        self._wire = wire
        self._peer = peer

    def transmit(self, frame: bytes) -> None:
        self._wire._carry(frame, self._peer)

    def transmit_batch(self, frames: FrameBatch) -> None:
        self._wire._carry_batch(frames, self._peer)


class LoopbackWire(Wire):
    """Frames a station sends come back to its own receive side."""

    def __init__(self, station: Station) -> None:
        super().__init__()
        self.port: Port = _WirePort(self, station)


class PairWire(Wire):
    """Two stations back to back: ``port_a`` delivers to ``b`` and ``port_b`` to ``a``."""

    def __init__(self, a: Station, b: Station) -> None:
        super().__init__()
        self.port_a: Port = _WirePort(self, b)
        self.port_b: Port = _WirePort(self, a)


class NullPort:
    """An unplugged cable: transmitted frames are counted and dropped."""

    def __init__(self) -> None:
        self.dropped = 0

    def transmit(self, frame: bytes) -> None:
        self.dropped += 1

    def transmit_batch(self, frames: FrameBatch) -> None:
        self.dropped += len(frames)


class Collector:
    """Test helper: a Port (records what a device transmits) and a Station (records what it receives)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self._lock = threading.Lock()

    def transmit(self, frame: bytes) -> None:
        with self._lock:
            self.frames.append(bytes(frame))

    def receive(self, frame: bytes) -> None:
        self.transmit(frame)

    def transmit_batch(self, frames: FrameBatch) -> None:
        with self._lock:
            self.frames.extend(frames)

    def receive_batch(self, frames: FrameBatch) -> None:
        self.transmit_batch(frames)

    def take(self) -> list[bytes]:
        with self._lock:
            out, self.frames = self.frames, []
        return out
