"""Dirty tracking for a device that keeps no log of its own: the backend interposes on the used ring.

While the frontend has ``VHOST_F_LOG_ALL`` on, a ring handed to the device gets a *shadow used
ring* in backend memory, mapped into the device at an IOVA no frontend region uses (above the
shadow control queue, :data:`backend.vhost_user.shadow_cvq.SHADOW_IOVA`). The device still reads
the frontend's descriptor table and available ring and still reads and writes the frontend's
buffers in place: no packet is copied. Its used-buffer interrupt goes to an eventfd of the
backend; for each new used entry :meth:`UsedRelay.relay` marks in the dirty log every page the
device wrote (the chain's device-writable buffers, up to the entry's ``len``, found through the
frontend's descriptor table), copies the entry to the frontend's used ring and marks that, and
only then publishes the used index and signals the frontend's call eventfd. This is the mediated
used ring of DPDK's IFC VF software relay, here in the session's own thread.

The frontend's ``flags`` and ``avail_event`` in its used ring are copied on every pass. The
device decides on interrupts from the frontend's ``used_event``/``flags`` and its own used index,
so entries whose interrupt the frontend suppressed would wait in the shadow, and a frontend that
skipped a kick on a ``flags``/``avail_event`` copied late would leave the device waiting. While
any ring is relayed a timer (:data:`REFRESH_PERIOD`) also runs a pass: it publishes what is there,
interrupts the frontend if it asks for it at the new index (as the device would have), and rings
the device's doorbell when the frontend added buffers since the last tick (a spare kick is
harmless). GET_VRING_BASE relays the last entries before it answers.

:class:`LogShadow` is what a session holds: the log, the SET_LOG_FD eventfd, the relays and the timer; for a
device that logs its own writes, the bytemap it writes instead of relays (:mod:`backend.vhost_user.device_log`).
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable
from typing import Final

from backend.device import DeviceDirtyLog, VdpaDevice, VdpaError
from backend.eventloop import consume_eventfd, new_eventfd
from backend.pci.device import PciError
from backend.vhost_user.device_log import FOLD_PERIOD, DeviceLog
from backend.vhost_user.device_memory import DeviceMemory
from backend.vhost_user.dirty_log import DirtyLog, DirtyLogError
from backend.vhost_user.memory import MemoryTable, MemoryTableError
from backend.vhost_user.shadow_cvq import SHADOW_IOVA
from backend.virtio.split_ring import (
    DESC,
    DESC_SIZE,
    USED_ELEM,
    USED_ELEM_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    DescFlags,
    SplitLayout,
    vring_need_event,
)

#: First shadow used ring's IOVA; ring ``q`` is at ``SHADOW_USED_IOVA + q * SHADOW_STRIDE``.
SHADOW_USED_IOVA: Final = SHADOW_IOVA + 0x10_0000
#: Room per ring: a used ring of 32768 entries is 262 150 bytes.
SHADOW_STRIDE: Final = 0x10_0000
_PAGE: Final = 4096
_U16: Final = struct.Struct("<H")
#: Seconds between the timer's passes while a ring is relayed: the most an entry whose interrupt was
#: suppressed, or a kick the frontend skipped on stale suppression fields, waits.
REFRESH_PERIOD: Final = 0.002


class LogShadowError(Exception):
    """The device or the frontend's rings said something the relay cannot follow (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def shadow_range(index: int) -> tuple[int, int]:
    """The IOVA range ring ``index``'s shadow used ring may occupy (a memory table must not overlap it)."""
    return SHADOW_USED_IOVA + index * SHADOW_STRIDE, SHADOW_STRIDE


class UsedRelay:
    """Ring ``index``'s used ring, interposed while logging.

    ``used`` is the frontend's used ring (guest-physical), ``log_used`` where writes to it are logged
    (the ring's ``log_guest_addr``), ``call`` the frontend's call eventfd (None: no interrupts).
    :meth:`attach` maps the shadow; :meth:`close` unmaps it once the device stopped the ring.
    """

    def __init__(self, device: VdpaDevice, index: int, num: int, desc: int, avail: int, used: int, log_used: int,
                 call: int | None, kick: int | None, *, indirect: bool, event_idx: bool) -> None:
        self.device = device
        self.index = index
        self.num = num
        self.layout = SplitLayout(num)
        self.desc = desc
        self.avail = avail
        self.used = used
        self.log_used = log_used
        self.call = call
        self.kick = kick
        self.indirect = indirect
        self.event_idx = event_idx
        self._avail_seen = -1  # the frontend's avail idx at the last timer pass
        self.iova = shadow_range(index)[0]
        self.size = -(-self.layout.used_bytes // _PAGE) * _PAGE
        self.last = 0  # used index published to the frontend
        self.relayed = 0  # used entries copied in all
        self._shadow = DeviceMemory(device, f"shadow-used-{index}", self.iova, self.size)
        self._mem = self._shadow.mem
        self.device_call = new_eventfd()

    def attach(self, table: MemoryTable) -> None:
        """Map the shadow into the device and start it at the frontend's used index and flags."""
        front = table.gpa_view(self.used, 4)
        try:
            self._mem[0:4] = front
            self.last = int(_U16.unpack_from(front, SplitLayout.USED_IDX)[0])
        finally:
            front.release()
        self._shadow.attach()

    def service(self, table: MemoryTable, log: DirtyLog) -> int:
        """The device signalled: relay, then pass the interrupt on. Returns the entries relayed."""
        if not consume_eventfd(self.device_call):
            return 0
        n = self.relay(table, log)
        if self.call is not None:
            os.eventfd_write(self.call, 1)  # the device already applied the frontend's suppression
        return n

    def refresh(self, table: MemoryTable, log: DirtyLog) -> int:
        """The timer's pass: relay, interrupt the frontend if it wants one now, kick if it added buffers."""
        old = self.last
        n = self.relay(table, log)
        view = table.gpa_view(self.avail, self.layout.avail_bytes)
        try:
            flags, avail_idx = struct.unpack_from("<HH", view, 0)
            used_event = _U16.unpack_from(view, self.layout.used_event)[0]
        finally:
            view.release()
        wanted = vring_need_event(used_event, self.last, old) if self.event_idx else not (
            flags & VRING_AVAIL_F_NO_INTERRUPT)
        if n and wanted and self.call is not None:
            os.eventfd_write(self.call, 1)
        if avail_idx != self._avail_seen:
            self._avail_seen = avail_idx
            if self.kick is not None:
                os.eventfd_write(self.kick, 1)
        return n

    def relay(self, table: MemoryTable, log: DirtyLog) -> int:
        """Log and copy every used entry the device added since the last pass, then publish the index."""
        lay, shadow = self.layout, self._mem
        dev_idx: int = _U16.unpack_from(shadow, SplitLayout.USED_IDX)[0]
        count = (dev_idx - self.last) & 0xFFFF
        if count > self.num:
            raise LogShadowError(f"ring {self.index}: device used index {dev_idx} is {count} entries past "
                                 f"{self.last}, more than the ring's {self.num}")
        front = table.gpa_view(self.used, lay.used_bytes)
        try:
            for k in range(count):
                off = lay.used_ring_entry((self.last + k) % self.num)
                head, written = USED_ELEM.unpack_from(shadow, off)
                self._log_chain(table, log, head, written)
                log.mark(self.log_used + off, USED_ELEM_SIZE)
                front[off:off + USED_ELEM_SIZE] = shadow[off:off + USED_ELEM_SIZE]
            event = lay.avail_event
            log.mark(self.log_used, 2)
            log.mark(self.log_used + event, 2)
            front[0:2] = shadow[0:2]  # flags (NO_NOTIFY)
            front[event:event + 2] = shadow[event:event + 2]
            if count:
                log.mark(self.log_used + SplitLayout.USED_IDX, 2)
                # Entries and their pages are in place before the index makes them visible.
                _U16.pack_into(front, SplitLayout.USED_IDX, dev_idx)
        finally:
            front.release()
        self.last = dev_idx
        self.relayed += count
        return count

    def _log_chain(self, table: MemoryTable, log: DirtyLog, head: int, written: int) -> None:
        """Mark the pages of the first ``written`` bytes of the chain's device-writable buffers."""
        if head >= self.num:
            raise LogShadowError(f"ring {self.index}: used entry id {head} is not below the ring size {self.num}")
        table_addr, table_len, i = self.desc, self.num, head
        left = written
        for _ in range(self.num + 1):  # a chain longer than the table loops
            if left <= 0:
                return
            addr, length, flags, nxt = _read_desc(table, table_addr, i)
            if flags & DescFlags.INDIRECT and self.indirect and table_addr == self.desc:
                if length % DESC_SIZE or not length:
                    raise LogShadowError(f"ring {self.index}: indirect table of {length} bytes at {addr:#x}")
                table_addr, table_len, i = addr, length // DESC_SIZE, 0
                continue
            if flags & DescFlags.WRITE:
                part = min(length, left)
                log.mark(addr, part)
                left -= part
            if not flags & DescFlags.NEXT:
                break
            if nxt >= table_len:
                raise LogShadowError(f"ring {self.index}: descriptor {i} links to {nxt}, past {table_len}")
            i = nxt
        if left > 0:
            raise LogShadowError(f"ring {self.index}: used entry {head} says {written} bytes written, the "
                                 f"chain's writable buffers hold {written - left}")

    def close(self) -> None:
        """Unmap from the device (stopped first by the caller) and free the shadow."""
        self._shadow.close()
        os.close(self.device_call)


def _read_desc(table: MemoryTable, table_addr: int, i: int) -> tuple[int, int, int, int]:
    view = table.gpa_view(table_addr + i * DESC_SIZE, DESC_SIZE)
    try:
        addr, length, flags, nxt = DESC.unpack(view)
    finally:
        view.release()
    return int(addr), int(length), int(flags), int(nxt)


class _Timer:
    """A periodic timerfd (``timerfd_create`` through ctypes: Python 3.11's os module lacks it)."""

    _CLOCK_MONOTONIC: Final = 1
    _TFD_FLAGS: Final = os.O_NONBLOCK | os.O_CLOEXEC  # TFD_NONBLOCK, TFD_CLOEXEC share their values

    class _Spec(ctypes.Structure):
        _fields_ = [("interval_sec", ctypes.c_long), ("interval_nsec", ctypes.c_long),
                    ("value_sec", ctypes.c_long), ("value_nsec", ctypes.c_long)]

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime
        fd: int = libc.timerfd_create(self._CLOCK_MONOTONIC, self._TFD_FLAGS)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd
        self.armed = False

    def arm(self, period: float) -> None:
        sec, nsec = int(period), int(period % 1 * 1e9)
        self._set(self._Spec(sec, nsec, sec, nsec))
        self.armed = True

    def disarm(self) -> None:
        self._set(self._Spec(0, 0, 0, 0))
        self.armed = False

    def _set(self, spec: _Timer._Spec) -> None:
        if self._settime(self.fd, 0, ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def consume(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


class LogShadow:
    """A session's dirty logging: the log, the SET_LOG_FD eventfd, one :class:`UsedRelay` per relayed ring.

    ``report`` receives a line for every failure to log (a write outside the log, a chain the relay
    cannot follow): reported, and the entries are still published so the guest does not stall.
    """

    def __init__(self, device: VdpaDevice, report: Callable[[str], None]) -> None:
        self.device = device
        self.report = report
        self.log: DirtyLog | None = None
        self.log_event: int | None = None
        self.relays: dict[int, UsedRelay] = {}
        self._timer: _Timer | None = None
        #: Instead of relays, while the device logs its own writes (backend.vhost_user.device_log).
        self.device_log: DeviceLog | None = None
        self._fold_timer: _Timer | None = None

    def start_device_log(self, device: DeviceDirtyLog) -> DeviceLog:
        """The device logs its writes into a bytemap covering the log's pages, folded on a timer from now on."""
        assert self.log is not None and self.device_log is None
        dlog = DeviceLog(device, self.log.pages)
        try:
            if self._fold_timer is None:
                self._fold_timer = _Timer()
            self._fold_timer.arm(FOLD_PERIOD)
        except BaseException:
            dlog.close()
            raise
        self.device_log = dlog
        return dlog

    def stop_device_log(self) -> None:
        """Logging off: the device stops, what it logged is folded, the bytemap freed."""
        dlog, self.device_log = self.device_log, None
        if dlog is None:
            return
        if self._fold_timer is not None:
            self._fold_timer.disarm()
        try:
            dlog.stop()
        except (VdpaError, PciError) as exc:
            self.report(f"device-side dirty log did not stop cleanly: {exc}")
        finally:
            self._fold(dlog)
            dlog.close()

    def fold(self) -> None:
        """Move what the device logged into the log now (a ring's state is about to be answered, the log
        changes hands)."""
        if self.device_log is not None:
            self._fold(self.device_log)

    def _fold(self, dlog: DeviceLog) -> None:
        if self.log is None:
            return
        try:
            n = dlog.fold(self.log)
        except DirtyLogError as exc:
            self.report(f"device-side dirty log: {exc}")
            n = 1
        try:
            trouble = dlog.device.log_trouble()
        except (VdpaError, PciError) as exc:
            trouble = f"its status cannot be read: {exc}"
        if trouble is not None:
            self.report(f"device-side dirty log: {trouble}")
        if n and self.log_event is not None:
            os.eventfd_write(self.log_event, 1)

    def set_log(self, new: DirtyLog, table: MemoryTable | None) -> None:
        """A new log replaces the old one; what the device wrote so far goes to the old one first."""
        if self.log is not None:
            self.flush(table)
            self.fold()
            self.log.close()
        self.log = new

    def set_log_event(self, fd: int) -> None:
        old, self.log_event = self.log_event, fd
        if old is not None:
            os.close(old)

    def uncovered(self, table: MemoryTable) -> str | None:
        """Why the log cannot hold every page of ``table`` (None when it can)."""
        if self.log is None:
            return None
        top = max(r.gpa_end for r in table.regions)
        if top <= self.log.limit:
            return None
        return (f"memory table reaches gpa {top:#x}, past the dirty log's {self.log.limit:#x}: device writes "
                "there cannot be logged")

    def start(self, index: int, table: MemoryTable, *, num: int, desc: int, avail: int, used: int, log_used: int,
              call: int | None, kick: int | None, indirect: bool, event_idx: bool) -> UsedRelay:
        """A relay for ring ``index``, mapped; the caller points the device's used ring and call at it."""
        relay = UsedRelay(self.device, index, num, desc, avail, used, log_used, call, kick, indirect=indirect,
                          event_idx=event_idx)
        try:
            relay.attach(table)
            if self._timer is None:
                self._timer = _Timer()
            if not self._timer.armed:
                self._timer.arm(REFRESH_PERIOD)
        except BaseException:
            relay.close()
            raise
        self.relays[index] = relay
        return relay

    def stop(self, index: int, table: MemoryTable | None) -> None:
        """Ring ``index`` stopped: its last entries are logged and published, the relay unmapped (or what the
        device logged itself is folded)."""
        self.fold()
        relay = self.relays.pop(index, None)
        if relay is None:
            return
        if table is not None:
            self._pass(relay, table, relay.relay)
        if relay.call is not None:
            os.eventfd_write(relay.call, 1)  # entries of the last pass may await an interrupt
        relay.close()
        if not self.relays and self._timer is not None:
            self._timer.disarm()

    def stop_all(self, table: MemoryTable | None) -> None:
        for index in list(self.relays):
            self.stop(index, table)

    def flush(self, table: MemoryTable | None) -> None:
        """Relay every ring now (before the log changes hands)."""
        if table is None:
            return
        for relay in self.relays.values():
            self._pass(relay, table, relay.relay)

    def watched(self) -> list[int]:
        fds = [r.device_call for r in self.relays.values()]
        fds += [t.fd for t in (self._timer, self._fold_timer) if t is not None and t.armed]
        return fds

    def service(self, fd: int, table: MemoryTable | None) -> bool:
        """Handle ``fd`` if it is one of :meth:`watched` (True), else leave it to the caller (False)."""
        if self._fold_timer is not None and fd == self._fold_timer.fd:
            self._fold_timer.consume()
            self.fold()
            return True
        if self._timer is not None and fd == self._timer.fd:
            self._timer.consume()
            if table is not None:
                for relay in self.relays.values():
                    self._pass(relay, table, relay.refresh)
            return True
        signalled = next((r for r in self.relays.values() if r.device_call == fd), None)
        if signalled is None:
            return False
        if table is not None:
            self._pass(signalled, table, signalled.service)
        return True

    def _pass(self, relay: UsedRelay, table: MemoryTable, step: Callable[[MemoryTable, DirtyLog], int]) -> None:
        if self.log is None:
            return
        try:
            n = step(table, self.log)
        except (DirtyLogError, LogShadowError, MemoryTableError) as exc:
            self.report(f"ring {relay.index}: dirty logging failed: {exc}")
            return
        if n and self.log_event is not None:
            os.eventfd_write(self.log_event, 1)

    def close(self, table: MemoryTable | None) -> None:
        self.stop_all(table)
        self.stop_device_log()
        for timer in (self._timer, self._fold_timer):
            if timer is not None:
                timer.close()
        self._timer = self._fold_timer = None
        if self.log is not None:
            self.log.close()
            self.log = None
        if self.log_event is not None:
            os.close(self.log_event)
            self.log_event = None
