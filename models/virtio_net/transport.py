"""virtio-pci modern transport (virtio 1.4, 4.1) for a behavioral device model.

:class:`VirtioPciFunction` builds the PCI endpoint (config header, virtio
capabilities, one 64-bit BAR holding common/ISR/device/notify structures and
the MSI-X table and PBA), serves the common configuration structure, runs the
device_status state machine and delivers used buffer / configuration change
notifications. A device type subclasses it and supplies its device-specific
configuration and queue processing.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from backend.pci.device import DmaFaultError, DmaPerm
from backend.virtio.features import DeviceStatus, F, dependency_violations, has
from backend.virtio.pci_regs import (
    COMMON_CFG_SIZE,
    ISR_CONFIG,
    ISR_QUEUE,
    MSIX_ENTRY_SIZE,
    NO_VECTOR,
    NOTIFY_CAP_LEN,
    PCI_CAP_ID_VNDR,
    PCI_CFG_CAP_LEN,
    PCI_CFG_DATA,
    VENDOR_DATA_CAP_HDR_LEN,
    VIRTIO_PCI_DEVICE_ID_BASE,
    VIRTIO_PCI_VENDOR_ID,
    CapType,
    CommonCfg,
    VirtioPciCap,
)
from backend.virtio.split_ring import MAX_QUEUE_SIZE
from models.virtio_net.packed_engine import PackedHooks, PackedQueue
from models.virtio_net.split_engine import RingError, RingHooks, SplitQueue
from sim.iommu import Iommu
from sim.pci.endpoint import Bar, Capability, ConfigSpace, Msix, PciEndpoint, Register, RegisterBlock

_STRUCT_ALIGN = 0x1000
_DRIVER_OK = int(DeviceStatus.DRIVER_OK)
_FEATURES_OK = int(DeviceStatus.FEATURES_OK)
_NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)
#: Driver errors a device keeps (the oldest go first): a driver repeating one forever must not grow the
#: device's memory without bound (found by fuzzing; tests/test_fuzz_regressions.py).
MAX_RECORDED_ERRORS = 4096
_FAILED = int(DeviceStatus.FAILED)
_LIVE = _DRIVER_OK | _FEATURES_OK
#: Either ring layout's queue: the one VIRTIO_F_RING_PACKED chose at FEATURES_OK.
AnyQueue = TypeVar("AnyQueue", SplitQueue, PackedQueue)


class EndpointDma:
    """The split engine's :class:`~models.virtio_net.split_engine.BatchDma` over the endpoint's bus-master DMA.

    The batch calls move nothing while bus mastering is off: the exact access that follows records the fault.
    """

    def __init__(self, endpoint: PciEndpoint) -> None:
        self._ep = endpoint
        # Asked several times a round (generation): the objects themselves, which the endpoint never replaces.
        self._config = endpoint.config
        self._iommu = endpoint.iommu

    def read(self, iova: int, n: int) -> bytes:
        return self._ep.dma_read(iova, n)

    def write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        self._ep.dma_write(iova, data)

    def read_u16(self, iova: int) -> int:
        if not self._ep.config.bus_master:
            return int.from_bytes(self._ep.dma_read(iova, 2), "little")  # records the fault
        return self._ep.iommu.read_u16(iova)

    def write_u16(self, iova: int, value: int) -> None:
        if not self._ep.config.bus_master:
            self._ep.dma_write(iova, (value & 0xFFFF).to_bytes(2, "little"))  # records the fault
            return
        self._ep.iommu.write_u16(iova, value)

    def try_view(self, iova: int, n: int) -> memoryview | None:
        if not self._ep.config.bus_master:
            return None
        return self._ep.iommu.try_view(iova, n, DmaPerm.READ)

    def generation(self) -> int | None:
        iommu = self._iommu
        # every access seen (observers, write hooks): no arrays; the fields, not Iommu.watched: asked per ring access
        if not self._config.bus_master or iommu.observers or iommu.write_hooks:
            return None
        return iommu.generation

    def mapping_bytes(self, iova: int, n: int, write: bool) -> tuple[NDArray[np.uint8], int, int] | None:
        if not self._ep.config.bus_master:
            return None
        return self._ep.iommu.mapping_bytes(iova, n, write)

    def gather(self, iovas: NDArray[np.uint64],
               sizes: NDArray[np.uint64] | int) -> tuple[NDArray[np.uint8], int]:
        if not self._ep.config.bus_master:
            return np.empty(0, dtype=np.uint8), 0
        return self._ep.iommu.gather(iovas, sizes)

    def scatter(self, iovas: NDArray[np.uint64], sizes: NDArray[np.uint64], data: NDArray[np.uint8]) -> int:
        if not self._ep.config.bus_master:
            return 0
        return self._ep.iommu.scatter(iovas, sizes, data)


class ModelEndpoint(PciEndpoint):
    """A PciEndpoint that runs the model's deferred work once an access has released the device lock.

    Frames transmitted while the lock is held are delivered to the wire here,
    still on the accessing thread, so two devices joined by a wire never wait
    on each other's locks.
    """

    after_access: Callable[[], None] | None = None

    def bar_write(self, index: int, offset: int, data: bytes) -> None:
        super().bar_write(index, offset, data)
        if self.after_access is not None:
            self.after_access()

    def config_write(self, offset: int, data: bytes) -> None:
        super().config_write(offset, data)
        if self.after_access is not None:
            self.after_access()


class _CallbackBlock:
    def __init__(self, size: int, read: Callable[[int, int], bytes], write: Callable[[int, bytes], None]) -> None:
        self.size = size
        self.read = read
        self.write = write


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


class VirtioPciFunction(RingHooks, PackedHooks):
    """Generic virtio-pci modern function. Override hooks (besides the ring ones of RingHooks and PackedHooks):

    - :meth:`features_acceptable` (FEATURES_OK decision, FEAT-DEV-03)
    - :meth:`reset_queue` (what a device or queue reset does to one queue, PCI-DEV-19, RESET-DEV-04)
    - :meth:`queue_config_error` (queue_enable validation)
    - :meth:`notify_used` (deliver a used buffer notification for a queue)
    - :meth:`process_queue` (device type: handle an available buffer notification)
    """

    VIRTIO_DEVICE_ID = 0
    PCI_CLASS = 0
    SUBSYSTEM_ID = 0x1100  # >= 0x40 for a non-transitional device (PCI-DEV-07)
    REVISION = 1  # non-transitional (PCI-DEV-06)
    VENDOR_DATA_ID = 0x1DB5  # vendor data capability vendor_id: anything but 0x1AF4 (PCI-DEV-47)
    VENDOR_DATA = b"VDPABENCH\0"

    def __init__(self, *, num_queues: int, max_queue_size: int, features: int, device_cfg_size: int,
                 msix_vectors: int, notify_off_multiplier: int = 4, iommu: Iommu | None = None) -> None:
        if not 1 <= num_queues <= 0xFFFF:
            raise ValueError("num_queues must be 1..65535")
        if max_queue_size > MAX_QUEUE_SIZE or max_queue_size & (max_queue_size - 1) or max_queue_size <= 0:
            raise ValueError(f"max queue size {max_queue_size} must be a power of two <= {MAX_QUEUE_SIZE}")
        m = notify_off_multiplier
        if m and (m < 2 or m & (m - 1) or (has(features, F.NOTIFICATION_DATA) and m % 4)):
            raise ValueError("notify_off_multiplier must be 0 or an even power of two, a multiple of 4 with "
                             "NOTIFICATION_DATA (PCI-DEV-30/33)")
        self.offered = features
        self.notify_off_multiplier = notify_off_multiplier
        self.status = 0
        self.isr = 0
        self.config_generation = 0
        self.config_msix_vector = NO_VECTOR
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features_raw: dict[int, int] = {}
        self.negotiated = 0
        self.queue_select = 0
        self.errors: list[RingError] = []  # every driver error that set DEVICE_NEEDS_RESET, in order
        self.ignored_kicks = 0
        self.refused_features: list[int] = []
        self._deferred: list[Callable[[], None]] = []
        self._deferred_lock = threading.Lock()  # guards the list only; never held while waiting on another lock
        self._delivery_lock = threading.RLock()  # keeps deferred work in order across threads

        # --- BAR0 layout: one structure per 4 KiB so each can be mapped on its own -------------
        notify_width = 4 if has(features, F.NOTIFICATION_DATA) else 2
        notify_len = max(notify_off_multiplier * (num_queues - 1) + notify_width, notify_width)
        self.common_off, self.isr_off, self.devcfg_off, self.notify_off = 0x0, 0x1000, 0x2000, 0x3000
        self.msix_table_off = self.notify_off + (notify_len + _STRUCT_ALIGN - 1) // _STRUCT_ALIGN * _STRUCT_ALIGN
        table_len = msix_vectors * MSIX_ENTRY_SIZE
        self.msix_pba_off = self.msix_table_off + (table_len + _STRUCT_ALIGN - 1) // _STRUCT_ALIGN * _STRUCT_ALIGN
        bar_size = _pow2_at_least(max(self.msix_pba_off + _STRUCT_ALIGN, 0x4000))
        self.bar = Bar(0, bar_size, is64=True)

        self.msix = Msix(msix_vectors, bar=0, table_offset=self.msix_table_off, pba_offset=self.msix_pba_off)
        self.config = ConfigSpace(vendor_id=VIRTIO_PCI_VENDOR_ID,
                                  device_id=VIRTIO_PCI_DEVICE_ID_BASE + self.VIRTIO_DEVICE_ID,
                                  revision=self.REVISION, class_code=self.PCI_CLASS,
                                  subsystem_vendor_id=VIRTIO_PCI_VENDOR_ID, subsystem_id=self.SUBSYSTEM_ID,
                                  bars=[self.bar], interrupt_status=self._intx_pending)
        self.endpoint = ModelEndpoint(self.config, [self.bar], None, iommu)
        self.endpoint.msix = self.msix
        self.endpoint.after_access = self.run_deferred
        self.endpoint.reset_hooks.append(self._function_reset)
        self.dma = EndpointDma(self.endpoint)
        self.queues = [SplitQueue(i, max_queue_size, self.dma, self) for i in range(num_queues)]
        # The same queues in the packed layout, used from FEATURES_OK when VIRTIO_F_RING_PACKED was negotiated.
        self.packed_queues = [PackedQueue(i, max_queue_size, self.dma, self) for i in range(num_queues)]
        self.ring_packed = False

        self.common = RegisterBlock("common_cfg", COMMON_CFG_SIZE, self._common_registers())
        self.isr_block = _CallbackBlock(4, self._isr_read, lambda _o, _d: None)
        self.device_cfg = RegisterBlock("device_cfg", device_cfg_size, self.device_config_registers())
        self.notify_block = _CallbackBlock(notify_len, lambda _o, n: bytes(n), self._notify_write)
        self.notify_len = notify_len
        self.bar.mount(self.common_off, self.common)
        self.bar.mount(self.isr_off, self.isr_block)
        self.bar.mount(self.devcfg_off, self.device_cfg)
        self.bar.mount(self.notify_off, self.notify_block)
        self.bar.mount(self.msix_table_off, self.msix.table_block)
        self.bar.mount(self.msix_pba_off, self.msix.pba_block)
        self._add_capabilities(device_cfg_size)
        self.config.add_capability(self.msix.cap)

    # --- capabilities ----------------------------------------------------------------------------

    def _virtio_cap(self, cfg_type: int, offset: int, length: int, extra: bytes = b"",
                    cap_len: int = VirtioPciCap.SIZE) -> Capability:
        raw = VirtioPciCap(PCI_CAP_ID_VNDR, 0, cap_len, cfg_type, 0, 0, offset, length).pack() + extra
        cap = Capability(PCI_CAP_ID_VNDR, bytearray(raw[2:]))
        self.config.add_capability(cap)
        return cap

    def _add_capabilities(self, device_cfg_size: int) -> None:
        self._virtio_cap(CapType.COMMON_CFG, self.common_off, COMMON_CFG_SIZE)
        self._virtio_cap(CapType.NOTIFY_CFG, self.notify_off, self.notify_len,
                         struct.pack("<I", self.notify_off_multiplier), NOTIFY_CAP_LEN)
        self._virtio_cap(CapType.ISR_CFG, self.isr_off, 1)
        self._virtio_cap(CapType.DEVICE_CFG, self.devcfg_off, device_cfg_size)
        # PCI configuration access window (4.1.4.9): bar/offset/length/pci_cfg_data are driver-writable
        self.pci_cfg_cap = self._virtio_cap(CapType.PCI_CFG, 0, 0, bytes(4), PCI_CFG_CAP_LEN)
        w = bytearray(len(self.pci_cfg_cap.body))
        for i in [4 - 2, *range(8 - 2, 16 - 2), *range(PCI_CFG_DATA - 2, PCI_CFG_DATA + 2)]:
            w[i] = 0xFF
        self.pci_cfg_cap.writable = w
        self.pci_cfg_cap.on_write = self._pci_cfg_written
        self.pci_cfg_cap.on_read = self._pci_cfg_read
        # Vendor data capability (4.1.4.8): cap_len, cfg_type, vendor_id, data; a multiple of 4, read-only
        data = self.VENDOR_DATA
        total = (VENDOR_DATA_CAP_HDR_LEN + len(data) + 3) // 4 * 4
        body = bytearray(total - 2)
        struct.pack_into("<BBH", body, 0, total, CapType.VENDOR_CFG, self.VENDOR_DATA_ID)
        body[VENDOR_DATA_CAP_HDR_LEN - 2:VENDOR_DATA_CAP_HDR_LEN - 2 + len(data)] = data
        self.config.add_capability(Capability(PCI_CAP_ID_VNDR, body))

    def _pci_cfg_target(self) -> tuple[int, int, int]:
        body = self.pci_cfg_cap.body
        bar = body[4 - 2]
        offset, length = struct.unpack_from("<II", body, 8 - 2)
        return bar, offset, length

    def _pci_cfg_window_ok(self, bar: int, offset: int, length: int) -> bool:
        b = self.endpoint.bars.get(bar)
        return b is not None and length in (1, 2, 4) and offset + length <= b.size

    def _pci_cfg_written(self, lo: int, size: int) -> None:
        data_lo = PCI_CFG_DATA - 2
        if lo + size <= data_lo:
            return  # only bar/offset/length moved
        bar, offset, length = self._pci_cfg_target()
        if self._pci_cfg_window_ok(bar, offset, length):
            # PCI-DEV-51: forward cap.length bytes from the start of pci_cfg_data to the BAR
            self.endpoint.bars[bar].write(offset, bytes(self.pci_cfg_cap.body[data_lo:data_lo + length]))

    def _pci_cfg_read(self, lo: int, size: int) -> None:
        data_lo = PCI_CFG_DATA - 2
        if lo + size <= data_lo:
            return
        bar, offset, length = self._pci_cfg_target()
        if self._pci_cfg_window_ok(bar, offset, length):
            # PCI-DEV-52: the BAR read lands in the first cap.length bytes of pci_cfg_data
            self.pci_cfg_cap.body[data_lo:data_lo + length] = self.endpoint.bars[bar].read(offset, length)

    # --- common configuration (4.1.4.3) ----------------------------------------------------------

    def _q(self) -> SplitQueue | PackedQueue | None:
        queues: list[SplitQueue] | list[PackedQueue] = self.packed_queues if self.ring_packed else self.queues
        return queues[self.queue_select] if self.queue_select < len(queues) else None

    def _qget(self, attr: str) -> Callable[[], int]:
        def get() -> int:
            q = self._q()
            return int(getattr(q, attr)) if q is not None else 0
        return get

    def _qset_while_disabled(self, attr: str) -> Callable[[int], None]:
        def put(value: int) -> None:
            q = self._q()
            # Ring configuration only changes while the queue is disabled (PCI-DRV-18).
            if q is not None and not q.enabled:
                setattr(q, attr, value)
        return put

    def _common_registers(self) -> list[Register]:
        C = CommonCfg
        R = Register
        return [
            R("device_feature_select", C.DEVICE_FEATURE_SELECT, 4, lambda: self.device_feature_select,
              self._set_device_feature_select),
            R("device_feature", C.DEVICE_FEATURE, 4, self._device_feature),
            R("driver_feature_select", C.DRIVER_FEATURE_SELECT, 4, lambda: self.driver_feature_select,
              self._set_driver_feature_select),
            R("driver_feature", C.DRIVER_FEATURE, 4,
              lambda: self.driver_features_raw.get(self.driver_feature_select, 0), self._set_driver_feature),
            R("config_msix_vector", C.CONFIG_MSIX_VECTOR, 2, lambda: self.config_msix_vector,
              self._set_config_vector),
            R("num_queues", C.NUM_QUEUES, 2, lambda: len(self.queues)),
            R("device_status", C.DEVICE_STATUS, 1, lambda: self.status, self.write_status),
            R("config_generation", C.CONFIG_GENERATION, 1, lambda: self.config_generation),
            R("queue_select", C.QUEUE_SELECT, 2, lambda: self.queue_select, self._set_queue_select),
            R("queue_size", C.QUEUE_SIZE, 2, self._qget("size"), self._qset_while_disabled("size")),
            R("queue_msix_vector", C.QUEUE_MSIX_VECTOR, 2, self._queue_vector, self._set_queue_vector),
            R("queue_enable", C.QUEUE_ENABLE, 2, self._qget("enabled"), self._set_queue_enable),
            R("queue_notify_off", C.QUEUE_NOTIFY_OFF, 2, self._qget("notify_off")),
            R("queue_desc", C.QUEUE_DESC, 8, self._qget("desc"), self._qset_while_disabled("desc")),
            R("queue_driver", C.QUEUE_DRIVER, 8, self._qget("driver"), self._qset_while_disabled("driver")),
            R("queue_device", C.QUEUE_DEVICE, 8, self._qget("device"), self._qset_while_disabled("device")),
            R("queue_notif_config_data", C.QUEUE_NOTIF_CONFIG_DATA, 2, self._queue_notif_config_data),
            R("queue_reset", C.QUEUE_RESET, 2, lambda: 0, self._set_queue_reset),
            R("admin_queue_index", C.ADMIN_QUEUE_INDEX, 2, lambda: 0),
            R("admin_queue_num", C.ADMIN_QUEUE_NUM, 2, lambda: 0),
        ]

    def _set_device_feature_select(self, v: int) -> None:
        self.device_feature_select = v

    def _device_feature(self) -> int:
        # PCI-DEV-14: bits device_feature_select*32 .. +31 of the offer; 0 past the defined bits
        return (self.offered >> (32 * self.device_feature_select)) & 0xFFFFFFFF if self.device_feature_select < 4 else 0

    def _set_driver_feature_select(self, v: int) -> None:
        self.driver_feature_select = v

    def _set_driver_feature(self, v: int) -> None:
        # Once FEATURES_OK is set the negotiated set is fixed (INIT-DRV-07); later writes are ignored.
        if not self.status & _FEATURES_OK and self.driver_feature_select < 4:
            self.driver_features_raw[self.driver_feature_select] = v

    @property
    def driver_features(self) -> int:
        value = 0
        for sel, bits in self.driver_features_raw.items():
            value |= bits << (32 * sel)
        return value

    def _valid_vector(self, v: int) -> int:
        # PCI-DEV-56/61: any vector in the table can be mapped; anything else is refused as NO_VECTOR
        return v if v == NO_VECTOR or v < self.msix.table_size else NO_VECTOR

    def _set_config_vector(self, v: int) -> None:
        self.config_msix_vector = self._valid_vector(v)

    def _queue_vector(self) -> int:
        q = self._q()
        return q.msix_vector if q is not None else NO_VECTOR

    def _set_queue_vector(self, v: int) -> None:
        q = self._q()
        if q is not None:
            q.msix_vector = self._valid_vector(v)

    def _set_queue_select(self, v: int) -> None:
        self.queue_select = v

    def _queue_notif_config_data(self) -> int:
        q = self._q()
        return self.notif_config_data(q.index) if q is not None else 0

    def notif_config_data(self, index: int) -> int:
        """Value the driver writes to notify queue ``index`` when VIRTIO_F_NOTIF_CONFIG_DATA is negotiated."""
        return 0x4000 | index

    def _set_queue_enable(self, v: int) -> None:
        q = self._q()
        if q is None or q.enabled or v != 1:
            return  # PCI-DRV-20: 0 is never written; re-enabling a live queue changes nothing
        err = q.config_error() if isinstance(q, PackedQueue) else self.queue_config_error(q)
        if err is not None:
            # The queue stays disabled (queue_enable reads 0) and the device needs a reset.
            self.fail(err)
            return
        self._activate(q)
        q.enabled = True

    def _activate(self, q: SplitQueue | PackedQueue) -> None:
        f = self.negotiated or self.driver_features
        q.activate(event_idx=has(f, F.EVENT_IDX), indirect=has(f, F.INDIRECT_DESC), in_order=has(f, F.IN_ORDER))

    def _set_queue_reset(self, v: int) -> None:
        q = self._q()
        if q is None or v != 1 or not has(self.negotiated, F.RING_RESET):
            return
        # The reset completes synchronously, so queue_reset and queue_enable read 0 afterwards (PCI-DEV-24).
        if isinstance(q, PackedQueue):
            q.reset()  # positions and both wrap counters back to their defaults (RESET-DEV-04)
        else:
            self.reset_queue(q)

    # --- hooks -----------------------------------------------------------------------------------

    def features_acceptable(self, features: int) -> bool:
        """FEATURES_OK may stick: a subset of the offer, with VERSION_1, honouring the dependency table."""
        return (not features & ~self.offered and has(features, F.VERSION_1)
                and not dependency_violations(features))

    def reset_queue(self, q: SplitQueue) -> None:
        """Return one queue to its defaults: disabled, indices 0, size max, vector unmapped."""
        q.reset()

    def queue_config_error(self, q: SplitQueue) -> RingError | None:
        return q.config_error()

    def notify_used(self, q: SplitQueue) -> None:
        """Used buffer notification: MSI-X vector of the queue, or ISR queue bit then INTx (PCI-DEV-39)."""
        self.signal_queue(q.msix_vector)

    def signal_queue(self, vector: int) -> None:
        """Deliver a used buffer notification on ``vector`` (either ring layout)."""
        if self.msix.enabled:
            if vector != NO_VECTOR:  # PCI-DEV-62
                self.msix.fire(vector)
            return
        self.isr |= ISR_QUEUE
        self.endpoint.set_intx(True)

    def device_config_registers(self) -> list[Register]:
        """Device type: the fields of its device-specific configuration structure."""
        return []

    def process_queue(self, q: SplitQueue) -> None:
        """Device type: handle an available buffer notification for ``q`` (called with the lock held)."""

    def on_reset(self) -> None:
        """Device type: forget device-specific runtime state on reset."""

    # --- status and reset ------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        """Queues are processed only between DRIVER_OK and reset, unless the device failed (STATUS-DEV-01)."""
        s = self.status
        return s & _LIVE == _LIVE and not s & (_NEEDS_RESET | _FAILED)

    def write_status(self, value: int) -> None:
        value &= 0xFF
        if value == 0:
            self.device_reset()
            return
        old = self.status
        # Bits are cleared only by a reset; DEVICE_NEEDS_RESET is the device's to set.
        new = old | (value & ~_NEEDS_RESET)
        if new & _FEATURES_OK and not old & _FEATURES_OK:
            features = self.driver_features
            if self.features_acceptable(features):
                self.negotiated = features
                self.ring_packed = has(features, F.RING_PACKED)  # the layout every queue uses until reset
            else:
                self.refused_features.append(features)
                new &= ~_FEATURES_OK  # FEAT-DEV-03: the bit does not stick
        self.status = new
        if new & _DRIVER_OK and not old & _DRIVER_OK and self.live:
            for q in self.queues:
                if q.enabled:
                    self._activate(q)
            for pq in self.packed_queues:
                if pq.enabled:
                    self._activate(pq)
            self.on_driver_ok()

    def on_driver_ok(self) -> None:
        """Device type: the device just went live."""

    def device_reset(self) -> None:
        """Reset through device_status (RESET-DEV-01) or function reset: everything back to defaults."""
        self.status = 0
        self.negotiated = 0
        self.driver_features_raw.clear()
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.config_msix_vector = NO_VECTOR  # PCI-DEV-59
        for q in self.queues:
            self.reset_queue(q)
        self.isr = 0
        self.endpoint.set_intx(False)
        for pq in self.packed_queues:
            pq.reset()
        self.ring_packed = False
        self.on_reset()

    def _function_reset(self) -> None:
        self.device_reset()

    def fail(self, err: RingError) -> None:
        """A driver error the device can leave only through reset: DEVICE_NEEDS_RESET (STATUS-DEV-02)."""
        # Kept without its traceback: its frames (DMA buffers among their locals) held ~20 KB an error.
        self.errors.append(err.with_traceback(None))
        del self.errors[:-MAX_RECORDED_ERRORS]
        if self.status & _NEEDS_RESET:
            return
        self.status |= _NEEDS_RESET
        if self.status & _DRIVER_OK:
            self.notify_config()  # STATUS-DEV-03

    # --- interrupts ------------------------------------------------------------------------------

    def _intx_pending(self) -> bool:
        return self.isr != 0 and not self.msix.enabled  # PCI-DEV-40

    def _isr_read(self, offset: int, size: int) -> bytes:
        out = bytearray(size)
        if offset == 0 and size:
            out[0] = self.isr
            self.isr = 0  # PCI-DEV-41: reading ISR status clears it
            self.endpoint.set_intx(False)
        return bytes(out)

    def notify_config(self) -> None:
        """Configuration change notification, ISR bit 1 set first (PCI-DEV-38)."""
        self.isr |= ISR_CONFIG
        if self.msix.enabled:
            if self.config_msix_vector != NO_VECTOR:  # PCI-DEV-63
                self.msix.fire(self.config_msix_vector)
        else:
            self.endpoint.set_intx(True)

    def config_changed(self) -> None:
        """Device configuration changed: new config_generation (PCI-DEV-17), then notify if live."""
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.status & _DRIVER_OK:
            self.notify_config()

    # --- notifications ---------------------------------------------------------------------------

    def _notify_write(self, offset: int, data: bytes) -> None:
        value = int.from_bytes(data, "little")
        ident = value & 0xFFFF  # vq index, or queue_notif_config_data; NOTIFICATION_DATA adds next_off above
        index = ident
        if has(self.negotiated, F.NOTIF_CONFIG_DATA):
            index = next((q.index for q in self.queues if self.notif_config_data(q.index) == ident), -1)
        if self.ring_packed and has(self.negotiated, F.NOTIFICATION_DATA) and len(data) == 4:
            self.kick_packed_locked(index, (value >> 16 & 0x7FFF, value >> 31))
            return
        self.kick_locked(index)

    def kick(self, index: int) -> None:
        """Available buffer notification from outside a register access (tests, other transports)."""
        with self.endpoint.lock:
            self.kick_locked(index)
        self.run_deferred()

    def kick_locked(self, index: int) -> None:
        """Available buffer notification for queue ``index``; spurious ones are harmless (SPLIT-DEV-22)."""
        if self.ring_packed:
            self.kick_packed_locked(index, None)
            return
        with self.endpoint.lock:
            if not self.live or not 0 <= index < len(self.queues) or not self.queues[index].enabled:
                self.ignored_kicks += 1
                return
            self.run_guarded(self.process_queue, self.queues[index])

    def kick_packed_locked(self, index: int, notification: tuple[int, int] | None) -> None:
        """Available buffer notification for packed queue ``index``; with VIRTIO_F_NOTIFICATION_DATA
        ``notification`` is its (next_off, next_wrap), checked against the ring (PACKED-DRV-04)."""
        with self.endpoint.lock:
            if not self.live or not 0 <= index < len(self.packed_queues) or not self.packed_queues[index].enabled:
                self.ignored_kicks += 1
                return
            q = self.packed_queues[index]
            if notification is not None:
                self.run_guarded(lambda pq: pq.check_notification(*notification), q)
                if not self.live:
                    return
            self.run_guarded(self.process_packed_queue, q)

    def process_packed_queue(self, q: PackedQueue) -> None:
        """Device type: handle an available buffer notification for packed queue ``q`` (lock held)."""

    def run_guarded(self, fn: Callable[[AnyQueue], None], q: AnyQueue) -> None:
        """Run queue work; a driver error or DMA fault stops the device until reset."""
        try:
            fn(q)
        except RingError as err:
            self.fail(err)
        except DmaFaultError as exc:
            # The IOMMU already logged the fault; the driver handed the device an address it did not map.
            self.fail(RingError("FEAT-DRV-11", f"queue {q.index}: {exc}"))

    # --- deferred work (runs after the device lock is released) ----------------------------------

    def defer(self, fn: Callable[[], None]) -> None:
        with self._deferred_lock:
            self._deferred.append(fn)

    def run_deferred(self) -> None:
        """Run work queued under the device lock (frame deliveries); call it without holding that lock."""
        with self._delivery_lock:
            while True:
                with self._deferred_lock:
                    work, self._deferred = self._deferred, []
                if not work:
                    return
                for fn in work:
                    fn()
