"""The generic vDPA vendor driver: :class:`backend.device.VdpaDevice` over a virtio-pci function.

It programs the device through the register layer (:mod:`backend.drivers.transport`)
and consults the quirk table (:mod:`backend.drivers.quirks`) for what plain
virtio-pci lacks (ring state, dirty logging, device-specific behaviour).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from backend.device import NotSupported, VdpaError, VqState
from backend.drivers.quirks import (
    DirtyLogBlock,
    DirtyLogCtrl,
    DirtyLogReg,
    DirtyLogStatus,
    PciIds,
    QueueStop,
    Quirk,
    QuirkTable,
    VqStateBlock,
    default_quirks,
)
from backend.drivers.transport import (
    PCI_EXT_CAP_ID_SRIOV,
    VirtioPciError,
    VirtioPciModern,
    config_field_exists,
    config_fields,
    extended_capabilities,
    is_virtio_pci_id,
)
from backend.eventloop import EventLoop, consume_eventfd
from backend.pci.device import (
    DmaPerm,
    IrqIndex,
    PciDevice,
    PciError,
    read_int,
    write_int,
)
from backend.virtio.features import DeviceStatus, F, dependency_violations, has
from backend.virtio.pci_regs import (
    NO_VECTOR,
)
from backend.virtio.split_ring import AVAIL_ALIGN, DESC_ALIGN, USED_ALIGN, is_valid_split_size


@dataclass
class _Vq:
    num: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    ready: bool = False
    state: VqState = field(default_factory=VqState)
    kick_fd: int | None = None
    call_fd: int | None = None
    live: bool = False  # programmed into the device and enabled
    kick: tuple[int, int, int] | None = None  # (bar, offset, fd) of a registered ioeventfd
    relayed: bool = False
    reset_unfinished: bool = False  # a queue reset the device never completed: it may still run the queue


class VirtioPciVdpaDevice:
    """:class:`backend.device.VdpaDevice` over a virtio-pci modern function.

    The vhost-user side may send queue parameters in any order; they are kept
    here and written to the device when it goes live (DRIVER_OK, or
    ``set_vq_ready`` after it), in the order 4.1.5.1.3 asks for: size,
    addresses, vector, then queue_enable. Kick eventfds become ioeventfds on
    the queue's doorbell; call eventfds are bound to MSI-X vectors.
    """

    #: Features never passed upward: a kick eventfd carries no data, so the doorbell could not
    #: carry next_off/next_wrap as VIRTIO_F_NOTIFICATION_DATA requires.
    HIDDEN_FEATURES = 1 << F.NOTIFICATION_DATA

    def __init__(self, pci: PciDevice, *, quirks: QuirkTable | None = None, reset_timeout: float = 1.0,
                 owns_pci: bool = True) -> None:
        self.pci = pci
        self.ids = PciIds.read(pci)
        if not is_virtio_pci_id(self.ids.vendor, self.ids.device):
            raise VdpaError(f"{pci.name}: {self.ids} is not a virtio PCI function")
        self.quirk: Quirk = (quirks if quirks is not None else default_quirks()).lookup(self.ids)
        try:
            self.transport = VirtioPciModern(pci, reset_timeout=reset_timeout)
        except VirtioPciError as exc:
            raise VdpaError(str(exc)) from None
        self.transport.enable_device()
        # Taking the device over starts from a reset, whatever a previous owner left (INIT-DRV-01).
        try:
            self.transport.reset()
        except VirtioPciError as exc:
            raise VdpaError(str(exc)) from None
        self._owns_pci = owns_pci
        self._lock = threading.RLock()
        self._relay: EventLoop | None = None
        self._vqs: dict[int, _Vq] = {}
        self._num_max: dict[int, int] = {}
        self._config_fd: int | None = None
        self._vectors: dict[str, int] | None = None  # "config" / "q<i>" -> vector, once planned
        self._fanout: dict[int, int] = {}  # vector -> private eventfd relayed to several call fds
        self._features = 0
        self._closed = False

    # helpers ---------------------------------------------------------------------------------

    def _vq(self, index: int) -> _Vq:
        if not 0 <= index < self.get_vq_count():
            raise VdpaError(f"virtqueue {index} does not exist (device has {self.get_vq_count()})")
        return self._vqs.setdefault(index, _Vq())

    def _relay_thread(self) -> EventLoop:
        if self._relay is None:
            self._relay = EventLoop(f"{self.pci.name}-relay")
        return self._relay

    # features --------------------------------------------------------------------------------

    def get_device_features(self) -> int:
        offered = self.transport.device_features() & ~(self.HIDDEN_FEATURES | self.quirk.hide_features)
        if has(offered, F.SR_IOV) and not self._has_sriov_capability():
            offered &= ~(1 << F.SR_IOV)  # FEAT-DRV-17: never negotiated without an SR-IOV capability
        return offered

    def _has_sriov_capability(self) -> bool:
        try:
            return PCI_EXT_CAP_ID_SRIOV in extended_capabilities(self.pci).ids
        except PciError:
            return False

    def set_driver_features(self, features: int) -> None:
        with self._lock:
            extra = features & ~self.get_device_features()
            if extra:
                raise VdpaError(f"features {extra:#x} were not offered (FEAT-DRV-01)")
            broken = dependency_violations(features)
            if broken:  # a frontend asking for a feature without its prerequisite: never written (FEAT-DRV-02)
                raise VdpaError(f"features {features:#x} lack prerequisites (FEAT-DRV-02): "
                                + ", ".join(f"bit {r.feature} ({r.req_id.replace('-DEV-', '-DRV-')})" for r in broken))
            if self.get_status() & DeviceStatus.FEATURES_OK:
                raise VdpaError("features cannot change after FEATURES_OK (INIT-DRV-07)")
            self.transport.write_driver_features(features)
            self._features = features

    def get_driver_features(self) -> int:
        return self._features

    # status ----------------------------------------------------------------------------------

    def get_status(self) -> int:
        return self.transport.status()

    def set_status(self, status: int) -> None:
        with self._lock:
            if status == 0:
                self.reset()
                return
            cur = self.get_status()
            if cur & ~status & ~DeviceStatus.SUSPEND:
                raise VdpaError(f"status {status:#x} would clear bits of {cur:#x} (STATUS-DRV-02)")
            new = status & ~cur
            if new & DeviceStatus.DRIVER_OK and not new & DeviceStatus.FAILED:
                if not cur & DeviceStatus.FEATURES_OK:  # a refused or skipped negotiation ends initialisation
                    raise VdpaError(f"DRIVER_OK asked for ({status:#x}) while device status {cur:#x} holds no "
                                    "FEATURES_OK (INIT-DRV-08, INIT-DRV-12)")
                self._go_live()
            self.transport.set_status(status)
            if new & DeviceStatus.FEATURES_OK and not self.get_status() & DeviceStatus.FEATURES_OK:
                raise VdpaError(f"device refused features {self._features:#x}: FEATURES_OK did not stick "
                                "(INIT-DRV-08)")

    # config space ----------------------------------------------------------------------------

    def get_config_size(self) -> int:
        return self.transport.device_config_size()

    def get_config(self, offset: int, size: int) -> bytes:
        """Bytes of device config, each field read whole at its natural width (PCI-DRV-05) in one
        generation-checked group (CFG-DRV-02); fields of unknown device types are read bytewise."""
        fields = config_fields(self.ids.device, offset, size)
        # A field whose feature the device did not offer does not exist (CFG-DRV-03): a frontend that asks
        # for the whole config gets zeros there, and the device is never asked.
        offered = self.transport.device_features()
        present = [f for f in fields if config_field_exists(self.ids.device, f[0], offered)]
        try:
            values = dict(zip(present, self.transport.read_config_fields(present), strict=True))
        except VirtioPciError as exc:
            raise VdpaError(str(exc)) from None
        raw = b"".join(values.get(f, 0).to_bytes(f[1], "little") for f in fields)
        start = offset - fields[0][0] if fields else 0
        return raw[start:start + size]

    def set_config(self, offset: int, data: bytes) -> None:
        """Write device config as whole fields at their natural width (PCI-DRV-05). A request that covers part
        of a field, a field whose feature was not offered (CFG-DRV-03) or bytes beyond the structure is refused
        before anything is written."""
        end = offset + len(data)
        if offset < 0 or end > self.get_config_size():
            raise VdpaError(f"config write {offset:#x}+{len(data)} beyond the {self.get_config_size()}-byte "
                            "device configuration")
        fields = config_fields(self.ids.device, offset, len(data))
        offered = self.transport.device_features()
        for off, width in fields:
            if off < offset or off + width > end:
                raise VdpaError(f"config write {offset:#x}+{len(data)} covers part of the {width}-byte field at "
                                f"{off:#x}: fields are written whole (PCI-DRV-05)")
            if not config_field_exists(self.ids.device, off, offered):
                raise VdpaError(f"config field at {off:#x} does not exist: its feature was not offered (CFG-DRV-03)")
        # Whole, aligned, in-range fields: the register layer has nothing left to refuse.
        for off, width in fields:
            self.transport.write_device_config(off, data[off - offset:off - offset + width], width)

    def get_config_generation(self) -> int:
        return self.transport.config_generation()

    # virtqueues ------------------------------------------------------------------------------

    def get_vq_count(self) -> int:
        return self.transport.num_queues()

    def get_vq_num_max(self, index: int) -> int:
        self._vq(index)
        if index not in self._num_max:  # queue_size reads the maximum until the driver writes it
            self._num_max[index] = self.transport.queue_size(index)
        return self._num_max[index]

    def set_vq_num(self, index: int, num: int) -> None:
        vq = self._vq(index)
        limit = self.get_vq_num_max(index)
        packed = has(self._features, F.RING_PACKED)
        if limit == 0:
            raise VdpaError(f"virtqueue {index} is not available (queue_size reads 0)")
        if not 0 < num <= limit or (not packed and not is_valid_split_size(num)):
            raise VdpaError(f"virtqueue {index}: size {num} invalid (max {limit}, split rings need a power "
                            "of two: PCI-DRV-17)")
        vq.num = num

    def set_vq_address(self, index: int, desc: int, driver: int, device: int) -> None:
        vq = self._vq(index)
        if not has(self._features, F.RING_PACKED) and (
                desc % DESC_ALIGN or driver % AVAIL_ALIGN or device % USED_ALIGN):
            raise VdpaError(f"virtqueue {index}: ring parts misaligned (SPLIT-DRV-01): "
                            f"desc {desc:#x}, driver {driver:#x}, device {device:#x}")
        vq.desc, vq.driver, vq.device = desc, driver, device

    def set_vq_ready(self, index: int, ready: bool) -> None:
        with self._lock:
            vq = self._vq(index)
            if ready:
                vq.ready = True
                if self._vectors is not None and not vq.live:  # already live: bring this one up now
                    self._bind_irqs()
                    self._program_queue(index, vq)
                return
            if vq.live:
                if not has(self._features, F.RING_RESET):
                    raise NotSupported(f"virtqueue {index}: disabling a live queue needs VIRTIO_F_RING_RESET "
                                       "(queue_enable is never written 0: PCI-DRV-20)")
                self._reset_queue(index, vq, "")
            vq.ready = False

    def get_vq_ready(self, index: int) -> bool:
        vq = self._vq(index)
        return self.transport.queue_enabled(index) if vq.live else vq.ready

    def set_vq_state(self, index: int, state: VqState) -> None:
        vq = self._vq(index)
        block = self.quirk.vq_state
        if block is None:
            if state != VqState():  # a packed ring's wrap counters too: both start at 1
                raise NotSupported(f"virtqueue {index}: virtio-pci has no register for the ring state; only the "
                                   f"state after reset (index 0, wrap counters 1) can be set, not {state}")
            vq.state = state
            return
        word = self._state_word(index, block, state)
        vq.state = state
        write_int(self.pci, block.bar, block.field_offset(index), 4 if self._packed() else block.width, word)

    def _packed(self) -> bool:
        return has(self._features, F.RING_PACKED)

    def _state_word(self, index: int, block: VqStateBlock, state: VqState) -> int:
        """What the block is written: last_avail_idx, or a packed ring's whole state word."""
        if not self._packed():
            return state.avail_idx
        if not block.packed:
            raise NotSupported(f"virtqueue {index}: {self.quirk.name}'s ring-state register holds split rings only")
        return (state.avail_idx & 0x7FFF | (state.avail_wrap & 1) << 15 | (state.used_idx & 0x7FFF) << 16
                | (state.used_wrap & 1) << 31)

    def _read_state(self, index: int, block: VqStateBlock) -> VqState:
        if not self._packed():
            return VqState(avail_idx=read_int(self.pci, block.bar, block.field_offset(index), block.width) & 0xFFFF)
        if not block.packed:
            raise NotSupported(f"virtqueue {index}: {self.quirk.name}'s ring-state register holds split rings only")
        word = read_int(self.pci, block.bar, block.field_offset(index), 4)
        return VqState(word & 0x7FFF, word >> 15 & 1, word >> 16 & 0x7FFF, word >> 31 & 1)

    def get_vq_state(self, index: int) -> VqState:
        """The queue's ring position. With a quirk whose block stops the queue first (GET_VRING_BASE stops the
        ring), a running queue is stopped here and the position it stopped at is read, exact with buffers in
        flight; a stopped queue then reports that, or what the frontend set since."""
        vq = self._vq(index)
        block = self.quirk.vq_state
        if block is not None and block.stop is QueueStop.QUEUE_RESET:
            with self._lock:
                if vq.live:
                    if self._packed() and not block.packed:
                        raise NotSupported(f"virtqueue {index}: {self.quirk.name}'s ring-state register holds split "
                                           "rings only")
                    self._stop_queue(index, vq)
                    vq.state = self._read_state(index, block)
                return vq.state
        if block is not None:
            return self._read_state(index, block)
        if vq.live:
            raise NotSupported(f"virtqueue {index}: virtio-pci cannot report last_avail_idx of a running queue")
        return vq.state

    def _stop_queue(self, index: int, vq: _Vq) -> None:
        """Stop a running queue with a queue reset, after which the quirk's block holds where it stopped."""
        if not has(self._features, F.RING_RESET):
            raise NotSupported(f"virtqueue {index}: {self.quirk.name} stops a queue with a queue reset, which needs "
                               "VIRTIO_F_RING_RESET; without it a running queue's state cannot be read exactly")
        if vq.reset_unfinished:
            raise NotSupported(f"virtqueue {index}: its earlier queue reset never completed, so the device may still "
                               "run it; its state cannot be read")
        self._reset_queue(index, vq, f"virtqueue {index}: stopping it to read its state: ")

    def _reset_queue(self, index: int, vq: _Vq, context: str) -> None:
        """Take a live queue down with a queue reset; one the device never completes is remembered, since
        the device may still run that queue."""
        self._unregister_kick(vq)
        try:
            self.transport.reset_queue(index)
        except VirtioPciError as exc:
            vq.reset_unfinished = True
            raise VdpaError(f"{context}{exc}") from None
        vq.live = False

    # kicks -----------------------------------------------------------------------------------

    def set_vq_kick(self, index: int, fd: int | None) -> None:
        with self._lock:
            vq = self._vq(index)
            self._unregister_kick(vq)
            vq.kick_fd = fd
            if vq.live:
                self._register_kick(index, vq)

    def _register_kick(self, index: int, vq: _Vq) -> None:
        if vq.kick_fd is None:
            return
        bar, off, width = self.transport.notify_location(index)
        value = self.transport.notify_value(index)
        fd = vq.kick_fd
        try:
            taken = self.pci.ioeventfd(bar, off, width, value, fd)
        except PciError as exc:
            raise VdpaError(f"virtqueue {index}: kick eventfd {fd} refused as its doorbell: {exc}") from None
        if taken:
            vq.kick = (bar, off, fd)
            return
        # The device cannot take the eventfd as its doorbell: relay it (the report says so).
        transport, location = self.transport, (bar, off, width)

        def relay() -> None:
            if consume_eventfd(fd):
                transport.notify(index, value, location=location)

        try:
            self._relay_thread().watch(fd, relay)
        except (OSError, ValueError) as exc:
            raise VdpaError(f"virtqueue {index}: kick eventfd {fd} cannot be relayed: {exc}") from None
        vq.relayed = True

    def _unregister_kick(self, vq: _Vq) -> None:
        if vq.kick is not None:
            bar, off, fd = vq.kick
            self.pci.ioeventfd_remove(bar, off, fd)
            vq.kick = None
        if vq.relayed and vq.kick_fd is not None and self._relay is not None:
            self._relay.unwatch(vq.kick_fd)
        vq.relayed = False

    def kicks_relayed(self) -> bool:
        return any(vq.relayed for vq in self._vqs.values())

    def calls_relayed(self) -> bool:
        """True where vectors are shared and a relay fans one interrupt out to several call eventfds."""
        return bool(self._fanout)

    # interrupts ------------------------------------------------------------------------------

    def set_vq_call(self, index: int, fd: int | None) -> None:
        with self._lock:
            self._vq(index).call_fd = fd
            if self._vectors is not None:
                self._bind_irqs()

    def set_config_call(self, fd: int | None) -> None:
        with self._lock:
            self._config_fd = fd
            if self._vectors is not None:
                self._bind_irqs()

    def vector_plan(self) -> dict[str, int]:
        """Config on vector 0 and queue i on i+1; with a small table, queues share (PCI-DRV-34)."""
        nvec = self.transport.msix_table_size()
        nq = self.get_vq_count()
        if nvec == 0:
            return {}
        plan = {"config": 0}
        for q in range(nq):
            plan[f"q{q}"] = q + 1 if nvec >= nq + 1 else min(1, nvec - 1)
        return plan

    def _bind_irqs(self) -> None:
        """(Re)bind every planned vector to its eventfd(s); a shared vector is fanned out by the relay."""
        if self._vectors is None:
            self._vectors = self.vector_plan()
        if not self._vectors:
            if self._config_fd is not None or any(vq.call_fd is not None for vq in self._vqs.values()):
                raise NotSupported(f"{self.pci.name}: no MSI-X vectors, call eventfds cannot be signalled")
            return
        targets: dict[int, list[int]] = {v: [] for v in set(self._vectors.values())}
        if self._config_fd is not None:
            targets[self._vectors["config"]].append(self._config_fd)
        for q, vq in self._vqs.items():
            if vq.call_fd is not None:
                targets[self._vectors[f"q{q}"]].append(vq.call_fd)
        fds: list[int | None] = [None] * (max(targets) + 1)
        for vector, calls in targets.items():
            if len(calls) <= 1:
                self._drop_fanout(vector)
                fds[vector] = calls[0] if calls else None
            else:
                fds[vector] = self._fanout_fd(vector, calls)
        try:
            self.pci.set_irqs(IrqIndex.MSIX, 0, fds)
        except PciError as exc:
            raise VdpaError(f"binding MSI-X vectors: {exc}") from None

    def _fanout_fd(self, vector: int, calls: list[int]) -> int:
        src = self._fanout.get(vector)
        if src is None:
            src = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._fanout[vector] = src
        targets = tuple(calls)

        def fan_out() -> None:
            if consume_eventfd(src):
                for fd in targets:  # every sharer hears it; spurious ones are allowed (SPLIT-DRV-16)
                    os.eventfd_write(fd, 1)

        self._relay_thread().watch(src, fan_out)
        return src

    def _drop_fanout(self, vector: int) -> None:
        src = self._fanout.pop(vector, None)
        if src is not None:
            if self._relay is not None:
                self._relay.unwatch(src)
            os.close(src)

    def _check_vector(self, what: str, wrote: int, got: int) -> None:
        if got != wrote:
            raise VdpaError(f"{what}: MSI-X vector {wrote} read back as {got:#x} (PCI-DRV-35)")

    # going live ------------------------------------------------------------------------------

    def _go_live(self) -> None:
        """At DRIVER_OK: bind vectors, map config changes, program and enable every ready queue."""
        self._bind_irqs()
        assert self._vectors is not None
        if self._vectors:
            v = self._vectors["config"]
            self._check_vector("config", v, self.transport.set_config_msix_vector(v))
        for index, vq in sorted(self._vqs.items()):
            if vq.ready and not vq.live:
                self._program_queue(index, vq)

    def _program_queue(self, index: int, vq: _Vq) -> None:
        if vq.num == 0:
            raise VdpaError(f"virtqueue {index} enabled without a size")
        t = self.transport
        t.set_queue_size(index, vq.num)
        t.set_queue_addresses(index, vq.desc, vq.driver, vq.device)
        assert self._vectors is not None
        vector = self._vectors.get(f"q{index}", NO_VECTOR)
        self._check_vector(f"virtqueue {index}", vector, t.set_queue_msix_vector(index, vector))
        block = self.quirk.vq_state
        # A queue of a block that starts at 0 unless written (the stop-by-reset kind) is left alone when it starts
        # at 0: a frontend that never uses ring state never touches the vendor registers.
        if block is not None and not (block.stop is QueueStop.QUEUE_RESET and vq.state == VqState()):
            write_int(self.pci, block.bar, block.field_offset(index), 4 if self._packed() else block.width,
                      self._state_word(index, block, vq.state))
        t.enable_queue(index)
        vq.live = True
        self._register_kick(index, vq)

    # suspend / resume --------------------------------------------------------------------------

    def suspend(self) -> None:
        if not has(self._features, F.SUSPEND):
            raise NotSupported("suspend needs VIRTIO_F_SUSPEND")
        with self._lock:
            self.transport.add_status(DeviceStatus.SUSPEND)
            try:
                self.transport.wait_status(lambda s: bool(s & DeviceStatus.SUSPEND))
            except VirtioPciError as exc:
                raise VdpaError(str(exc)) from None

    def resume(self) -> None:
        if not has(self._features, F.SUSPEND):
            raise NotSupported("resume needs VIRTIO_F_SUSPEND")
        with self._lock:
            self.transport.set_status(self.get_status() & ~DeviceStatus.SUSPEND)
            try:
                self.transport.wait_status(lambda s: not s & DeviceStatus.SUSPEND)
            except VirtioPciError as exc:
                raise VdpaError(str(exc)) from None

    # dirty logging (DeviceDirtyLog, through the quirk's DirtyLogBlock) -------------------------

    def logs_dma_writes(self) -> bool:
        return self.quirk.dirty_log is not None

    def _log_block(self) -> DirtyLogBlock:
        block = self.quirk.dirty_log
        if block is None:
            raise NotSupported(f"{self.pci.name} ({self.quirk.name}): the device keeps no dirty page log")
        return block

    def log_start(self, iova: int, pages: int) -> None:
        """Program the bytemap and enable logging; ENABLE must read back set."""
        block = self._log_block()
        if not 0 < pages < 1 << 32 or iova < 0 or iova + pages > 1 << 64:
            raise VdpaError(f"dirty log bytemap of {pages} pages at IOVA {iova:#x} does not fit the block's registers")
        with self._lock:
            for reg, value in ((DirtyLogReg.CTRL, 0), (DirtyLogReg.BASE_LO, iova & 0xFFFF_FFFF),
                               (DirtyLogReg.BASE_HI, iova >> 32), (DirtyLogReg.PAGES, pages),
                               (DirtyLogReg.STATUS, int(DirtyLogStatus.OVERFLOW | DirtyLogStatus.FAULT)),
                               (DirtyLogReg.CTRL, int(DirtyLogCtrl.ENABLE))):
                write_int(self.pci, block.bar, block.reg(reg), 4, value)
            if not self.log_running():
                raise VdpaError(f"{self.pci.name}: dirty log ENABLE did not stick (LOG_CTRL at BAR{block.bar} "
                                f"{block.reg(DirtyLogReg.CTRL):#x})")

    def log_running(self) -> bool:
        block = self._log_block()
        return bool(read_int(self.pci, block.bar, block.reg(DirtyLogReg.CTRL), 4) & DirtyLogCtrl.ENABLE)

    def log_stop(self) -> None:
        """Disable logging and wait (bounded) until no log write is in flight: the bytemap is then final."""
        block = self._log_block()
        ctrl = block.reg(DirtyLogReg.CTRL)
        with self._lock:
            write_int(self.pci, block.bar, ctrl, 4, 0)
            try:
                self.transport.poll(lambda: read_int(self.pci, block.bar, ctrl, 4),
                                    lambda v: not v & (DirtyLogCtrl.BUSY | DirtyLogCtrl.ENABLE),
                                    lambda v: f"dirty log still busy after it was disabled (LOG_CTRL {v:#x})")
            except VirtioPciError as exc:
                raise VdpaError(str(exc)) from None

    def log_trouble(self) -> str | None:
        block = self._log_block()
        status = DirtyLogStatus(read_int(self.pci, block.bar, block.reg(DirtyLogReg.STATUS), 4)
                                & (DirtyLogStatus.OVERFLOW | DirtyLogStatus.FAULT))
        if not status:
            return None
        write_int(self.pci, block.bar, block.reg(DirtyLogReg.STATUS), 4, int(status))
        said = [text for bit, text in ((DirtyLogStatus.OVERFLOW, "wrote a page beyond the bytemap (not logged)"),
                                       (DirtyLogStatus.FAULT, "had a log write refused by the IOMMU"))
                if status & bit]
        return f"{self.pci.name}: the device {' and '.join(said)}"

    # DMA -------------------------------------------------------------------------------------

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        try:
            self.pci.dma_map(iova, size, fd, offset, perm)
        except PciError as exc:
            raise VdpaError(str(exc)) from None

    def dma_unmap(self, iova: int, size: int) -> None:
        try:
            self.pci.dma_unmap(iova, size)
        except PciError as exc:
            raise VdpaError(str(exc)) from None

    # lifecycle -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Device reset (bounded wait for status 0); kicks, vectors and queue setup are dropped."""
        with self._lock:
            for vq in self._vqs.values():
                self._unregister_kick(vq)
            for vector in list(self._fanout):
                self._drop_fanout(vector)
            if self._vectors:
                try:
                    self.pci.set_irqs(IrqIndex.MSIX, 0, [])
                except PciError as exc:
                    raise VdpaError(f"unbinding MSI-X vectors: {exc}") from None
            self._vectors = None
            self._vqs.clear()
            self._num_max.clear()
            self._config_fd = None
            self._features = 0
            try:
                self.transport.reset()
            except VirtioPciError as exc:
                raise VdpaError(str(exc)) from None

    def peer_fd(self) -> int | None:
        """The fd of the function's own connection (a vfio-user socket), which hangs up when the device
        process dies, so a backend can watch it; None for a function without one."""
        get = getattr(self.pci, "peer_fd", None)
        fd = get() if callable(get) and not self._closed else None
        return fd if isinstance(fd, int) else None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.reset()
        finally:
            if self._relay is not None:
                self._relay.close()
                self._relay = None
            if self._owns_pci:
                self.pci.close()
