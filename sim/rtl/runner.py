"""The clock of one RTL device: a thread that runs the design while it has work and sleeps on its
doorbells otherwise, and the one place its events reach Python.

* The clock thread calls :meth:`NativeBridge.run` in chunks. The native side stops when the design
  is idle; the thread then blocks in :meth:`NativeBridge.wait` (``poll`` on the doorbell eventfds
  and a wake eventfd, GIL released) until a kick, a frame, a register access or :meth:`close`.
* Register accesses from any thread take :attr:`lock` and run the AXI4-Lite transfer to its
  response on the calling thread (the design keeps running meanwhile). When the design is left
  busy or with events pending, the clock thread is woken.
* Events (transmitted frames, MSI-X vector requests, DMA faults, INTx and error changes) are taken
  from the design by the clock thread and delivered by one delivery thread, in that order per batch
  and batches in the order taken: a fault and an error are on record before the interrupt that
  reports them fires. The clock does not wait for Python to deliver (the wire, the interrupt
  eventfds): the design runs on while a batch is delivered, as hardware does. A register read is the
  exception, as on PCIe, where a read completion may not pass the posted writes before it (an MSI-X
  message included): :meth:`RtlRunner.axil_read` returns only once every event the design raised up
  to its response has been delivered, so an interrupt requested before a read never lands after it.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from backend.pci.device import DmaPerm
from sim.rtl.bridge import AXIL_IDLE, Events, Fault, NativeBridge, RunResult

#: Cycles per native run call while the design is busy (the thread checks for close in between).
CHUNK = 1 << 20
#: Cycles events may wait while the design stays busy: batches frames and interrupts under load,
#: and costs nothing when the design goes idle (then they leave at once).
EVENT_DELAY = 2048
#: Bound on joining the clock thread at close.
JOIN_TIMEOUT = 10.0
#: Bound on a register read waiting for the events before it to be delivered (PCIe ordering).
FLUSH_TIMEOUT = 10.0

AccessObserver = Callable[[DmaPerm, int, int], None]


class EventSink(Protocol):
    """Where a device's events go (the PCI function around the design)."""

    def faults(self, faults: Sequence[Fault]) -> None: ...

    def status_changed(self, status: dict[str, int], events: Events) -> None: ...

    def irqs(self, vectors: Sequence[int]) -> None: ...

    def frames(self, frames: Sequence[tuple[bytes, int]]) -> None: ...


@dataclass
class _Batch:
    """One batch of events as the clock thread took it from the design."""

    events: Events
    faults: list[Fault]
    status: dict[str, int]
    irqs: list[int]
    frames: list[tuple[bytes, int]]


@dataclass
class ClockStats:
    cycles: int
    busy_seconds: float
    kicks: int


class Runner(Protocol):
    """What the PCI function around a design needs from its clock: :class:`RtlRunner` (Verilator, in
    process) or ``sim.rtl.icarus_child.IcarusRunner`` (cocotb on Icarus, in a device process)."""

    errors: list[BaseException]

    def start(self, sink: EventSink) -> None: ...

    def settle(self, timeout: float) -> bool: ...

    def axil_read(self, addr: int, slave: int = 0) -> int: ...

    def axil_write(self, addr: int, data: int, strb: int, slave: int = 0) -> None: ...

    def push_frames(self, frames: Sequence[tuple[bytes, int]]) -> int: ...

    def set_link(self, up: bool) -> None: ...

    def set_inputs(self, *, bus_master: bool, msix_enabled: bool, msix_function_mask: bool = False) -> None: ...

    def reset(self) -> None: ...

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None: ...

    def dma_unmap(self, iova: int, size: int) -> None: ...

    def kick_add(self, fd: int, addr: int, value: int, width: int, slave: int = 0) -> None: ...

    def kick_remove(self, fd: int, addr: int, slave: int = 0) -> None: ...

    def stats(self) -> ClockStats: ...

    def intx(self) -> bool: ...

    def close(self) -> None: ...


def _where(thread: threading.Thread | None) -> str:
    """The innermost frames of ``thread``'s stack, for an error that says where it is stuck."""
    frame = sys._current_frames().get(thread.ident) if thread is not None and thread.ident is not None else None
    return "".join(traceback.format_stack(frame)[-6:]) if frame is not None else "(not running)"


class RtlRunner:
    """Owns a :class:`NativeBridge`: the lock every access takes, the clock thread, event delivery."""

    def __init__(self, bridge: NativeBridge, name: str, observers: list[AccessObserver]) -> None:
        self.bridge = bridge
        self.name = name
        self.lock = threading.Lock()
        #: Exceptions the clock thread caught (it stops on the first): a crashed device thread.
        self.errors: list[BaseException] = []
        self._observers = observers
        self._observing = False
        self._sink: EventSink | None = None
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        bridge.set_wake_fd(self._wake)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._delivery: threading.Thread | None = None
        # batches taken by the clock thread, not yet delivered (the one being delivered included)
        self._outbox: deque[_Batch] = deque()
        self._outbox_ready = threading.Condition()
        self._taken = 0  # batches queued so far
        self._delivered = 0  # batches delivered so far
        # settle(): requests are numbered; a run that started after request n and ended idle with nothing
        # left to deliver settles every request up to n
        self._settled = threading.Condition()
        self._requests = 0
        self._settled_upto = 0

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        self._delivery = threading.Thread(target=self._deliver_loop, name=f"{self.name}-events", daemon=True)
        self._delivery.start()
        self._thread = threading.Thread(target=self._clock, name=f"{self.name}-clock", daemon=True)
        self._thread.start()

    # --- the clock thread ----------------------------------------------------------------------------

    def _observe(self, perm: int, iova: int, size: int) -> None:
        access = DmaPerm(perm)
        for obs in list(self._observers):
            obs(access, iova, size)

    def _sync_observer(self) -> None:
        """Called with the lock held: the native side reports DMA accesses only while someone watches."""
        want = bool(self._observers)
        if want != self._observing:
            self.bridge.set_observer(self._observe if want else None)
            self._observing = want

    def _clock(self) -> None:
        try:
            while not self._stop:
                with self.lock:
                    self._sync_observer()
                    requested = self._requests
                    result = self.bridge.run(CHUNK, EVENT_DELAY)
                if result & RunResult.EVENTS:
                    self._take()
                elif result & RunResult.IDLE:
                    with self._outbox_ready:
                        delivering = bool(self._outbox)
                    if not delivering:  # else the delivery thread wakes the clock once it is done
                        with self._settled:
                            self._settled_upto = max(self._settled_upto, requested)
                            self._settled.notify_all()
                    self.bridge.wait(-1)
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def _take(self) -> None:
        """The design's pending events, queued for the delivery thread."""
        with self.lock:
            self._take_locked()

    def _take_locked(self) -> int:
        """With :attr:`lock` held: queue the design's pending events (if any) for the delivery thread; the number of
        batches that must be delivered for everything raised so far to be out."""
        ev = self.bridge.events()
        with self._outbox_ready:
            if not ev:
                return self._taken
            batch = _Batch(ev, self.bridge.pop_faults() if ev & Events.FAULTS else [],
                           self.bridge.status() if ev & (Events.INTX | Events.ERRORS) else {},
                           self.bridge.pop_irqs() if ev & Events.IRQS else [],
                           self.bridge.pop_frames() if ev & Events.FRAMES else [])
            self._outbox.append(batch)
            self._taken += 1
            self._outbox_ready.notify_all()
            return self._taken

    def _flush(self, upto: int) -> None:
        """Wait until ``upto`` batches have been delivered (not on the delivery thread itself: a sink's own read
        must not wait for the batch it is delivering)."""
        if threading.current_thread() is self._delivery:
            return
        with self._outbox_ready:
            if not self._outbox_ready.wait_for(lambda: self._delivered >= upto or self._stop, FLUSH_TIMEOUT):
                raise RuntimeError(f"{self.name}: events before a register read not delivered within "
                                   f"{FLUSH_TIMEOUT} s (the delivery thread is stuck at:\n"
                                   f"{_where(self._delivery)})")

    def _deliver_loop(self) -> None:
        try:
            while True:
                with self._outbox_ready:
                    self._outbox_ready.wait_for(lambda: bool(self._outbox) or self._stop)
                    if self._stop:  # closing: what the design still had to say goes nowhere
                        return
                    batch = self._outbox[0]  # stays queued while delivered: settle() waits for it
                self._deliver(batch)
                with self._outbox_ready:
                    self._outbox.popleft()
                    self._delivered += 1
                    drained = not self._outbox
                    self._outbox_ready.notify_all()
                if drained:
                    self.wake()  # the clock thread looks again: idle with nothing left to deliver settles
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def _deliver(self, batch: _Batch) -> None:
        sink = self._sink
        if sink is None:
            return
        if batch.faults:
            sink.faults(batch.faults)
        if batch.status:
            sink.status_changed(batch.status, batch.events)
        if batch.frames:
            sink.frames(batch.frames)
        if batch.irqs:
            sink.irqs(batch.irqs)

    def wake(self) -> None:
        os.eventfd_write(self._wake, 1)

    def settle(self, timeout: float) -> bool:
        """Wait until the clock thread found the design idle with nothing left to deliver, after
        everything started before this call (loopback frames included); False on ``timeout``."""
        with self._settled:
            self._requests += 1
            target = self._requests
        self.wake()
        with self._settled:
            return self._settled.wait_for(lambda: self._settled_upto >= target or self._stop, timeout)

    # --- accesses from other threads -----------------------------------------------------------------

    def axil_read(self, addr: int, slave: int = 0) -> int:
        """One register read; returns once what the design raised before its response has been delivered (a read
        completion pushes the posted writes ahead of it: an MSI-X message requested earlier arrives first)."""
        with self.lock:
            self._sync_observer()
            data, state = self.bridge.axil(False, addr, 0, 0, slave)
            upto = self._take_locked()
        self._after(state)
        self._flush(upto)
        return data

    def axil_write(self, addr: int, data: int, strb: int, slave: int = 0) -> None:
        with self.lock:
            self._sync_observer()
            _, state = self.bridge.axil(True, addr, data, strb, slave)
        self._after(state)

    def _after(self, state: int) -> None:
        # the clock thread takes over whatever the access started, and delivers its events
        if state & ~AXIL_IDLE or not state & AXIL_IDLE:
            self.wake()

    def push_frames(self, frames: Sequence[tuple[bytes, int]]) -> int:
        """Frames from the wire into the receive FIFO; returns how many the full FIFO dropped."""
        dropped = 0
        with self.lock:
            for frame, dest in frames:
                dropped += not self.bridge.push_frame(frame, dest)
        self.wake()
        return dropped

    def set_link(self, up: bool) -> None:
        with self.lock:
            self.bridge.set_link(up)
            self.bridge.run(4, 0)  # the register block samples the input: visible to the next access
        self.wake()

    def set_inputs(self, *, bus_master: bool, msix_enabled: bool, msix_function_mask: bool = False) -> None:
        with self.lock:
            self.bridge.set_bus_master(bus_master)
            self.bridge.set_msix_enabled(msix_enabled)
            self.bridge.set_msix_function_mask(msix_function_mask)
        self.wake()

    def reset(self) -> None:
        """Function-level reset: the reset input pulsed; whatever the bus models held in flight is dropped."""
        with self.lock:
            self.bridge.reset()
        self.wake()

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        with self.lock:
            self.bridge.dma_map(iova, size, fd, offset, perm)

    def dma_unmap(self, iova: int, size: int) -> None:
        with self.lock:
            self.bridge.dma_unmap(iova, size)

    def kick_add(self, fd: int, addr: int, value: int, width: int, slave: int = 0) -> None:
        with self.lock:
            self.bridge.kick_add(fd, addr, value, width, slave)
        self.wake()  # the clock thread waits on the new fd from now on

    def kick_remove(self, fd: int, addr: int, slave: int = 0) -> None:
        with self.lock:
            self.bridge.kick_remove(fd, addr, slave)
        self.wake()

    def status(self) -> dict[str, int]:
        with self.lock:
            return self.bridge.status()

    def stats(self) -> ClockStats:
        s = self.status()
        return ClockStats(s["cycles"], s["busy_ns"] / 1e9, s["kicks"])

    def intx(self) -> bool:
        with self.lock:
            return bool(self.bridge.status()["intx"])

    # --- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._stop = True
        with self._outbox_ready:
            self._outbox_ready.notify_all()
        self.wake()
        for thread, what in ((self._thread, "clock"), (self._delivery, "event delivery")):
            if thread is not None and thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)
                if thread.is_alive():
                    raise RuntimeError(f"{self.name}: {what} thread did not stop within {JOIN_TIMEOUT} s")
        with self.lock:
            self.bridge.close()
        os.close(self._wake)
