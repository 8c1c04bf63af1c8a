"""What the register-layer and vDPA-driver checks see of a function, and the device variants they show it.

:class:`RegisterView` records every access (a :class:`~testbenches.monitor.TracingPciDevice`) and changes one
common-config answer at a time (a smaller queue maximum, a vector that does not stick, other notification
values); :class:`RingStateRegisters` adds a vendor ring-state block in a BAR the target leaves free;
:class:`SlowReset` and :class:`NoIoeventfd` stand for a device slow to reset and an access layer without
ioeventfds. The rest of the target stays live behind each of them. Used by test_register_layer_rules.py
(backend/drivers/transport.py) and test_vdpa_driver_rules.py (backend/drivers/vdpa.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from backend.device import NotSupported, VdpaError
from backend.drivers.transport import VirtioPciError, VirtioPciModern
from backend.pci.device import PciDevice, RegionFlags, RegionInfo
from backend.pci.proxy import PciDeviceProxy
from backend.virtio.features import DeviceStatus
from backend.virtio.pci_regs import NO_VECTOR, CommonCfg
from testbenches.monitor import TracingPciDevice

#: device_status once a driver has noticed the device (ACKNOWLEDGE) and knows how to drive it (DRIVER).
UP = DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER


@dataclass(frozen=True)
class CommonAccess:
    """One access to the common configuration: field offset, width, value, and queue_select in force."""

    seq: int
    op: str
    rel: int
    size: int
    value: int
    queue: int


def common_accesses(trace: TracingPciDevice, common_bar: int, common_offset: int,
                    start: int = 0) -> list[CommonAccess]:
    """The common-config accesses of ``trace`` from access ``start`` on, with the queue selected for each."""
    out: list[CommonAccess] = []
    qsel = 0
    for a in trace.accesses:
        if a.region != common_bar or not common_offset <= a.offset < common_offset + 0x40:
            continue
        rel = a.offset - common_offset
        if a.op == "w" and rel == CommonCfg.QUEUE_SELECT:
            qsel = a.value
        if a.seq >= start:
            out.append(CommonAccess(a.seq, a.op, rel, a.size, a.value, qsel))
    return out


class RegisterView(TracingPciDevice):
    """The target as a device with other common-config answers, every access recorded.

    ``queue_size_max``: queue -> the maximum queue_size shows until the driver writes that queue's size.
    ``vector_refused``: ``"config"`` or ``"q<i>"``, whose MSI-X vector reads back NO_VECTOR after a write.
    ``notif_config_data``: queue -> the queue_notif_config_data shown. ``notify_off``: queue -> the
    queue_notify_off shown. ``sink_doorbells``: writes to the notification structure are recorded, not passed on
    (the register layer is judged without ringing a device that is not live). ``set_irqs`` calls are recorded.
    """

    def __init__(self, inner: PciDevice, *, queue_size_max: dict[int, int] | None = None,
                 vector_refused: frozenset[str] = frozenset(), notif_config_data: dict[int, int] | None = None,
                 notify_off: dict[int, int] | None = None, sink_doorbells: bool = False) -> None:
        super().__init__(inner)
        t = VirtioPciModern(inner)  # discovery reads config space only
        self.common, self.notify_cap = t.common, t.notify_cap
        self.queue_size_max = dict(queue_size_max or {})
        self.vector_refused = vector_refused
        self.notif_config_data = dict(notif_config_data or {})
        self.notify_off = dict(notify_off or {})
        self.sink_doorbells = sink_doorbells
        self.irq_bindings: list[tuple[int, int, list[int | None]]] = []
        self._qsel = 0

    def _rel(self, index: int, offset: int) -> int | None:
        c = self.common
        return offset - c.offset if index == c.bar and c.offset <= offset < c.offset + c.length else None

    def _in_notify(self, index: int, offset: int) -> bool:
        n = self.notify_cap
        return index == n.bar and n.offset <= offset < n.offset + n.length

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        rel = self._rel(index, offset)
        if rel == CommonCfg.QUEUE_SELECT:
            self._qsel = int.from_bytes(data, "little")
        elif rel == CommonCfg.QUEUE_SIZE:
            self.queue_size_max.pop(self._qsel, None)  # from now on the device's own register answers
        if self.sink_doorbells and self._in_notify(index, offset):
            self._record("w", index, offset, bytes(data))
            return
        super().region_write(index, offset, data)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        data = super().region_read(index, offset, size)
        rel = self._rel(index, offset)
        shown: int | None = None
        if rel == CommonCfg.QUEUE_SIZE and self._qsel in self.queue_size_max:
            shown = self.queue_size_max[self._qsel]
        elif (rel == CommonCfg.CONFIG_MSIX_VECTOR and "config" in self.vector_refused) \
                or (rel == CommonCfg.QUEUE_MSIX_VECTOR and f"q{self._qsel}" in self.vector_refused):
            shown = NO_VECTOR
        elif rel == CommonCfg.QUEUE_NOTIF_CONFIG_DATA and self._qsel in self.notif_config_data:
            shown = self.notif_config_data[self._qsel]
        elif rel == CommonCfg.QUEUE_NOTIFY_OFF and self._qsel in self.notify_off:
            shown = self.notify_off[self._qsel]
        return data if shown is None else shown.to_bytes(size, "little")

    def set_irqs(self, index: int, start: int, fds: Sequence[int | None]) -> None:
        self.irq_bindings.append((index, start, list(fds)))
        super().set_irqs(index, start, fds)


def refusal(step: object) -> str:
    """``"accepted"`` or ``"refused: <text>"`` for a call that may raise the driver's refusals."""
    assert callable(step)
    try:
        step()
    except (VdpaError, NotSupported, VirtioPciError, ValueError) as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    return "accepted"


class RingStateRegisters(RegisterView):
    """The target with a vendor register block in a BAR it does not implement: ``slots`` 32-bit (or wider)
    slots of ring state, as a card with a live-migration block has. What the driver writes there is kept; the
    checks fill slots to stand for the device's progress."""

    def __init__(self, inner: PciDevice, bar: int, size: int = 0x1000) -> None:
        super().__init__(inner)
        self.block_bar = bar
        self.block = bytearray(size)

    def region_info(self, index: int) -> RegionInfo:
        if index == self.block_bar:
            return RegionInfo(index, len(self.block), RegionFlags.READ | RegionFlags.WRITE)
        return super().region_info(index)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if index != self.block_bar:
            return super().region_read(index, offset, size)
        data = bytes(self.block[offset:offset + size])
        self._record("r", index, offset, data)
        return data

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index != self.block_bar:
            super().region_write(index, offset, data)
            return
        self._record("w", index, offset, bytes(data))
        self.block[offset:offset + len(data)] = data


class SlowReset(PciDeviceProxy):
    """device_status keeps showing its value before a reset for ``lag`` seconds after 0 is written (a device
    whose reset takes that long); the driver is judged on waiting within the bound it was given."""

    def __init__(self, inner: PciDevice, lag: float) -> None:
        super().__init__(inner, f"slow-reset({inner.name})")
        self.common = VirtioPciModern(inner).common
        self.lag = lag
        self._old: tuple[int, float] | None = None  # (value shown, until)
        self.stale_reads = 0

    def _is_status(self, index: int, offset: int) -> bool:
        return index == self.common.bar and offset == self.common.offset + CommonCfg.DEVICE_STATUS

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if self._is_status(index, offset) and data[0] == 0:
            before = self.inner.region_read(index, offset, 1)[0]
            self._old = (before, time.monotonic() + self.lag) if before else None
        super().region_write(index, offset, data)

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        if self._is_status(index, offset) and self._old is not None:
            value, until = self._old
            if time.monotonic() < until:
                self.stale_reads += 1
                return value.to_bytes(size, "little")
            self._old = None
        return super().region_read(index, offset, size)


class NoIoeventfd(RegisterView):
    """A function whose access layer cannot turn an eventfd into a doorbell write (the driver relays)."""

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        self.ioeventfds.append((index, offset, width, value))
        return False


def wait_for_access(trace: TracingPciDevice, start: int, timeout: float) -> list[str]:
    """Writes recorded after ``start`` within ``timeout`` (a relay thread acting on a signalled eventfd)."""
    done = threading.Event()
    trace.listeners.append(lambda a: done.set() if a.op == "w" else None)
    try:
        if len(trace.accesses) == start:
            done.wait(timeout)
    finally:
        trace.listeners.pop()
    return [f"{a.region}:{a.offset:#x}={a.value:#x}" for a in trace.accesses[start:] if a.op == "w"]
