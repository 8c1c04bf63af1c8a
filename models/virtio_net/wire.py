"""Wires between device models: what a virtio-net model transmits to and receives from.

A device transmits through its :class:`Port`; whatever sits at the other end
receives through a :class:`Station` (``receive(frame)``). Deliveries are
synchronous on the sender's thread. Any wire can carry pcap taps.
"""

from __future__ import annotations

import threading
from typing import Protocol

from scapy.utils import PcapWriter

DLT_EN10MB = 1


class Station(Protocol):
    """Anything that takes frames off a wire (a device model's RX side, a collector)."""

    def receive(self, frame: bytes) -> None: ...


class Port(Protocol):
    """The attachment a station transmits through."""

    def transmit(self, frame: bytes) -> None: ...


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

    def take(self) -> list[bytes]:
        with self._lock:
            out, self.frames = self.frames, []
        return out
