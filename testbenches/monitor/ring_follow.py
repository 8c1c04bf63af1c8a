"""What the split and packed ring monitors share: the driver's feature acks and queue programming, followed on the
register trace (4.1.4.3), and their findings folded into verdicts. Each monitor judges the rings of its own layout,
the one VIRTIO_F_RING_PACKED chooses."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Self, TypeVar

from backend.virtio.features import F, has
from backend.virtio.pci_regs import CommonCfg
from testbenches.monitor.ctrl_rules import ControlQueueMonitor
from testbenches.monitor.net_hdr_rules import NetBufferMonitor
from testbenches.monitor.pci_trace import Access, TracingPciDevice
from testbenches.monitor.virtio_pci_rules import Decoder, Event, Finding, Layout, verdicts_of

ReadMem = Callable[[int, int], bytes]
#: The queue's ring part addresses in common configuration, by the :class:`QueueProgram` field that keeps each.
_AREAS = {CommonCfg.QUEUE_DESC: "desc", CommonCfg.QUEUE_DRIVER: "driver", CommonCfg.QUEUE_DEVICE: "device"}


@dataclass
class QueueProgram:
    """One queue as the driver programmed it: size, Descriptor Area, Driver Area, Device Area, whether it is
    enabled and judged (``live``), and the queue_notif_config_data the driver read for it."""

    size: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    live: bool = False
    config_data: int | None = None


Q = TypeVar("Q", bound=QueueProgram)


@dataclass
class RingFollower(ABC, Generic[Q]):
    """Follows the register trace: a device reset, the driver's feature bits, queue programming and doorbells reach
    the ring monitor as the hooks below. :attr:`RING_PACKED` says which ring layout the monitor judges."""

    RING_PACKED: ClassVar[bool]
    read: ReadMem
    layout: Layout
    findings: list[Finding] = field(default_factory=list)
    _queues: dict[int, Q] = field(default_factory=dict)
    _features: int = 0
    _feature_select: int = 0
    _decoder: Decoder | None = None
    #: The virtio-net rows judged on every buffer the ring rules walk (NET-DRV, :mod:`.net_hdr_rules`): its own
    #: findings, apart from the ring rows'.
    net: NetBufferMonitor | None = None
    #: The control queue rows (NETCTRL-DRV, :mod:`.ctrl_rules`), fed the same buffers and the register events.
    ctrl: ControlQueueMonitor | None = None

    @classmethod
    def _following(cls, trace: TracingPciDevice, read: ReadMem) -> Self:
        mon = cls(read, Layout.discover(trace))
        mon._decoder = Decoder(mon.layout)
        device = mon.layout.device
        config = None
        if device is not None:
            def config(offset: int, size: int, bar: int = device.bar, base: int = device.offset) -> bytes:
                return trace.inner.region_read(bar, base + offset, size)  # the device's view, not recorded
        mon.net = NetBufferMonitor(read, config)
        mon.ctrl = ControlQueueMonitor(read, config)
        trace.listeners.append(mon._on_access)
        return mon

    @property
    def ring_negotiated(self) -> bool:
        """The driver's features choose the ring layout this monitor judges."""
        return has(self._features, F.RING_PACKED) == self.RING_PACKED

    def verdicts(self) -> dict[str, tuple[bool, list[str]]]:
        """Per id: (every finding held, evidence of the failing ones)."""
        return verdicts_of(self.findings)

    def _on_access(self, a: Access) -> None:
        assert self._decoder is not None
        e = self._decoder.feed(a)
        if e is None:
            return
        if e.kind == "status_w" and e.value == 0:
            self._device_reset()
        elif e.kind == "common_w" and e.field == CommonCfg.DRIVER_FEATURE_SELECT:
            self._feature_select = e.value
        elif e.kind == "common_w" and e.field == CommonCfg.DRIVER_FEATURE:
            sel = self._feature_select
            self._features = self._features & ~(0xFFFFFFFF << (32 * sel)) | e.value << (32 * sel)
        elif e.kind == "common_w" and e.queue >= 0:
            self._queue_write(e)
        elif e.kind == "common_r" and e.field == CommonCfg.QUEUE_NOTIF_CONFIG_DATA and e.queue >= 0:
            self._queues.setdefault(e.queue, self._new_queue()).config_data = e.value
        elif e.kind == "notify" and self.ring_negotiated:
            self._notified(e)
        if self.ctrl is not None and self.ring_negotiated:
            self.ctrl.event(e, self._features)

    def _device_reset(self) -> None:
        self._queues.clear()
        self._features = 0
        if self.net is not None:
            self.net.reset()
        if self.ctrl is not None:
            self.ctrl.reset()

    def _buffer(self, index: int, segments: list[tuple[int, int, bool]], where: str) -> None:
        """A buffer made available on queue ``index``, as (address, length, device-writable) segments: to the
        virtio-net rows."""
        if self.net is not None:
            self.net.buffer(index, segments, self._features, where)
        if self.ctrl is not None:
            self.ctrl.buffer(index, segments, self._features, where)

    def _queue_write(self, e: Event) -> None:
        q = self._queues.setdefault(e.queue, self._new_queue())
        shift = 32 * ((e.offset - int(e.field or 0)) // 4)  # 64-bit addresses arrive as two 32-bit halves
        area = _AREAS.get(e.field) if e.field is not None else None
        if e.field == CommonCfg.QUEUE_SIZE:
            q.size = e.value
        elif area is not None:
            setattr(q, area, getattr(q, area) & ~(0xFFFFFFFF << shift) | e.value << shift)
        elif e.field == CommonCfg.QUEUE_ENABLE and e.value == 1 and self.ring_negotiated:
            self._enabled(e.queue, q)
        elif e.field == CommonCfg.QUEUE_RESET and e.value == 1:
            self._queue_reset(e.queue, q)

    def _notified_queue(self, ident: int) -> tuple[int, Q | None]:
        """The queue a notification's data names: its index, or with VIRTIO_F_NOTIF_CONFIG_DATA the
        queue_notif_config_data the driver read for it."""
        if has(self._features, F.NOTIF_CONFIG_DATA):
            index = next((i for i, q in self._queues.items() if q.config_data == ident), -1)
        else:
            index = ident
        return index, self._queues.get(index)

    @abstractmethod
    def _new_queue(self) -> Q: ...

    @abstractmethod
    def _enabled(self, index: int, q: Q) -> None:
        """queue_enable written 1 with this monitor's ring layout negotiated."""

    @abstractmethod
    def _queue_reset(self, index: int, q: Q) -> None:
        """queue_reset written 1 (VIRTIO_F_RING_RESET)."""

    @abstractmethod
    def _notified(self, e: Event) -> None:
        """A doorbell with this monitor's ring layout negotiated."""
