"""Fuzz targets: a live virtio-net function under hostile ring memory, split or packed.

* :class:`RingTarget`: split rings, on the behavioral model's split engine (``sim:``) or on the RTL (``rtl:``).
* :class:`PackedRingTarget`: packed rings (2.8) on the model's packed engine (``sim:`` with an offer that has
  VIRTIO_F_RING_PACKED).

The device is opened once per process, bus mastering on, one window of guest memory mapped RW at iova 0
(a memfd twice that size: the unmapped half is a canary no device access may change). Per input the
driver side is redone from reset with the input's queue sizes and ring features, then the input's
patches are written over zeroed guest memory: split descriptor tables, avail flags/idx/ring/used_event,
packed descriptor rings and driver event suppression areas, indirect tables and buffers all come from
the fuzzer (split used rings and packed device event areas stay the device's). Then the queues are
kicked, frames arrive from the wire (a transmitted frame loops back), and the device is left to settle
within a bound; the device is reset at the end and must come back to status 0.

Input: ``rx_size:u8 | tx_size:u8 | feature_bits:u8 | actions:u8 | patches``; a patch is
``offset:u16le | length:u8 | bytes`` into guest memory (:data:`LAYOUT` says where the rings are). Split
sizes are ``1 << (1 + byte % 8)``, packed sizes ``1 + byte`` (any size, 1..256). With
VIRTIO_F_NOTIFICATION_DATA a packed kick names the first slot not made available (the driver's count),
or, with :data:`HOSTILE_NOTIFY`, the slot of the last patch byte's value (PACKED-DRV-04 errors).

Handled outcomes: buffers used, chains refused with DEVICE_NEEDS_RESET and a recorded driver error,
DMA faults for addresses outside the mapping. Defects: an exception out of a register access (the
model processes doorbells on the caller's thread), a crash in the device's thread, a device that does
not settle or reset within its bound, a DMA fault for an access inside the mapping, a change to the
canary; on split rings a used idx beyond what the driver made available or a used id that is not a
descriptor index; on packed rings a device write to a descriptor slot the driver never made available,
or a used descriptor whose flags do not mark it used or whose Buffer ID no available descriptor had.
The ring checks are left out for an input whose device-writable buffers (or indirect tables) reach a
ring: the device's writes there are the frame's bytes, which need not look like a ring.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Sequence
from typing import Final

from backend.drivers.transport import VirtioPciModern
from backend.pci.device import DmaPerm, PciDevice
from backend.targets import default_registry
from backend.virtio.features import DeviceStatus, F, NetF, bits, has
from backend.virtio.packed_ring import (
    DESC,
    DESC_SIZE,
    EVENT_SIZE,
    PackedDescFlags,
    is_avail,
    notification_data,
    used_bits,
)
from backend.virtio.split_ring import DESC as SPLIT_DESC
from backend.virtio.split_ring import DescFlags, SplitLayout
from tests.fuzz.records import Defect

#: Guest memory the device may reach (mapped at iova 0); as much again follows it unmapped, as canary.
MEM: Final = 0x10000
CANARY: Final = 0xA5
#: Per queue (receiveq1, transmitq1): split (desc, avail, used), packed (descriptor ring, driver event area,
#: device event area); buffers and indirect tables anywhere from 0x6000 on.
LAYOUT: Final = ((0x0000, 0x1000, 0x2000), (0x3000, 0x4000, 0x5000))
#: Feature bits an input may ask for (bit i of feature_bits), on top of VERSION_1 | ACCESS_PLATFORM.
OPTIONAL: Final = (F.EVENT_IDX, F.INDIRECT_DESC, F.IN_ORDER, NetF.MRG_RXBUF, NetF.CSUM, NetF.GUEST_CSUM,
                   NetF.HOST_TSO4, NetF.GUEST_TSO4)
BASE_FEATURES: Final = bits(F.VERSION_1, F.ACCESS_PLATFORM)
#: The packed target's choices: NOTIFICATION_DATA changes what a packed kick carries.
PACKED_OPTIONAL: Final = (F.EVENT_IDX, F.INDIRECT_DESC, F.IN_ORDER, NetF.MRG_RXBUF, F.NOTIFICATION_DATA,
                          F.ORDER_PLATFORM, NetF.MTU, NetF.STATUS)
PACKED_BASE: Final = bits(F.VERSION_1, F.ACCESS_PLATFORM, F.RING_PACKED)
#: Action bits.
KICK_RX: Final = 1
KICK_TX: Final = 2
WIRE_FRAME: Final = 4
KICK_AGAIN: Final = 8
HOSTILE_NOTIFY: Final = 16  # packed, NOTIFICATION_DATA: next_off/next_wrap from the input, not the ring
#: Bound on the device settling after the kicks, and on its reset.
SETTLE_TIMEOUT: Final = 5.0
MAX_SIZE_LOG2: Final = 8  # rings of 2..256 entries fit LAYOUT's 4 KiB slots
FRAME: Final = bytes.fromhex("02000000000102000000000208004500") + bytes(44)
_WRITE: Final = int(PackedDescFlags.WRITE)
_SPLIT_WRITE: Final = int(DescFlags.WRITE)
_SPLIT_INDIRECT: Final = int(DescFlags.INDIRECT)
_INDIRECT: Final = int(PackedDescFlags.INDIRECT)
_OWNER: Final = int(PackedDescFlags.AVAIL | PackedDescFlags.USED)


def packed_spec(wire: str = "loopback") -> str:
    """A model whose offer has VIRTIO_F_RING_PACKED and NOTIFICATION_DATA beside the default features."""
    from models.virtio_net.device import DEFAULT_FEATURES

    return f"sim:virtio-net,wire={wire},features={DEFAULT_FEATURES | bits(F.RING_PACKED, F.NOTIFICATION_DATA):#x}"


class _RingTargetBase:
    """The device, its guest memory and the per-input sequence; the ring layout's parts are the subclass's."""

    optional: tuple[int, ...] = OPTIONAL
    base_features: int = BASE_FEATURES

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.dev: PciDevice = default_registry().open(spec)
        try:
            self.fd = os.memfd_create("fuzz-guest", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, 2 * MEM)
            self.mem = mmap.mmap(self.fd, 2 * MEM)
            self.mem[MEM:] = bytes([CANARY]) * MEM
            self.transport = VirtioPciModern(self.dev, reset_timeout=SETTLE_TIMEOUT)
            self.transport.enable_device()  # memory space and bus mastering
            self.dev.dma_map(0, MEM, self.fd, 0, DmaPerm.RW)
            self.offered = self.transport.device_features()
        except BaseException:
            self.dev.close()
            raise

    def close(self) -> None:
        self.dev.close()
        self.mem.close()
        os.close(self.fd)

    # --- one input ------------------------------------------------------------------------------

    def sizes(self, head: bytes) -> list[int]:
        raise NotImplementedError

    def one_input(self, data: bytes) -> None:
        head = data[:4].ljust(4, b"\0")
        sizes = self.sizes(head)
        features = self.base_features | bits(*(f for i, f in enumerate(self.optional) if head[2] >> i & 1))
        actions = head[3]
        t = self.transport
        t.reset()
        self.mem[:MEM] = bytes(MEM)
        t.add_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)
        t.write_driver_features(features & self.offered)
        t.add_status(DeviceStatus.FEATURES_OK)
        if not t.status() & DeviceStatus.FEATURES_OK:
            return  # a combination the device refuses: handled (the driver would give up)
        for q, size in enumerate(sizes):
            t.set_queue_size(q, size)
            t.set_queue_addresses(q, *LAYOUT[q])
            t.enable_queue(q)
        self._patch(data[4:])
        self.device_parts(sizes)
        self.before_kicks(sizes)
        t.add_status(DeviceStatus.DRIVER_OK)
        for _ in range(2 if actions & KICK_AGAIN else 1):
            if actions & KICK_RX:
                self.kick(0, sizes[0], data)
            if actions & KICK_TX:
                self.kick(1, sizes[1], data)
        if actions & WIRE_FRAME:
            self._wire_frame()
        self._settle()
        self._check_device()
        self.check_rings(sizes)
        t.reset()
        self._settle()
        if t.status() != 0:
            raise Defect(f"{self.spec}: status {t.status():#x} after the reset, not 0")

    def _patch(self, patches: bytes) -> None:
        pos = 0
        while pos + 3 <= len(patches):
            off, n = struct.unpack_from("<HB", patches, pos)
            pos += 3
            chunk = patches[pos:pos + n]
            pos += len(chunk)
            end = min(off + len(chunk), MEM)
            self.mem[off:end] = chunk[:end - off]

    def device_parts(self, sizes: list[int]) -> None:
        """Zero what only the device writes (the fuzzer's patches may have landed there)."""
        raise NotImplementedError

    def before_kicks(self, sizes: list[int]) -> None:
        """Note what the driver made available (the ring checks compare against it)."""

    def kick(self, q: int, size: int, data: bytes) -> None:
        self.transport.notify(q)

    def check_rings(self, sizes: list[int]) -> None:
        raise NotImplementedError

    def _wire_frame(self) -> None:
        port = self.dev.abilities().port
        receive = getattr(port, "receive", None)
        if receive is not None:
            receive(FRAME)

    def _settle(self) -> None:
        runner = getattr(self.dev, "runner", None)  # the RTL's clock thread; the model runs on this thread
        if runner is not None and not runner.settle(SETTLE_TIMEOUT):
            raise Defect(f"{self.spec}: the device did not settle within {SETTLE_TIMEOUT}s")

    def _check_device(self) -> None:
        crashes = self.dev.abilities().crashes
        found = crashes.crashes() if hasattr(crashes, "crashes") else []
        if found:
            raise Defect(f"{self.spec}: the device's thread crashed: {found}")
        if self.mem[MEM:] != bytes([CANARY]) * MEM:
            raise Defect(f"{self.spec}: memory beyond the mapping changed")
        for f in self.dev.dma_faults():
            if f.iova >= 0 and f.iova + max(f.size, 1) <= MEM:
                raise Defect(f"{self.spec}: DMA fault for an access inside the RW mapping: {f}")

    @property
    def needs_reset(self) -> bool:
        return bool(self.transport.status() & DeviceStatus.DEVICE_NEEDS_RESET)


class RingTarget(_RingTargetBase):
    """Split rings (sizes 2..256, powers of two)."""

    def __init__(self, spec: str = "sim:virtio-net,wire=loopback") -> None:
        super().__init__(spec)
        self.avail_before = [0, 0]
        self.rings_written_as_data = False

    def sizes(self, head: bytes) -> list[int]:
        return [1 << (1 + head[i] % MAX_SIZE_LOG2) for i in (0, 1)]

    def device_parts(self, sizes: list[int]) -> None:
        for (_, _, used), size in zip(LAYOUT, sizes, strict=True):  # the used rings are the device's
            n = SplitLayout(size).used_bytes
            self.mem[used:used + n] = bytes(n)

    def before_kicks(self, sizes: list[int]) -> None:
        self.avail_before = [struct.unpack_from("<H", self.mem, avail + SplitLayout.AVAIL_IDX)[0]
                             for _, avail, _ in LAYOUT]
        writable: list[tuple[int, int]] = []
        for (desc, _, _), size in zip(LAYOUT, sizes, strict=True):
            for addr, length, flags, _ in SPLIT_DESC.iter_unpack(self.mem[desc:desc + DESC_SIZE * size]):
                if flags & _SPLIT_INDIRECT:
                    writable.append((addr, length))  # the table itself: a changed entry changes the chain
                    writable.extend((a, n) for a, n, f, _ in _table(self.mem, addr, length, SPLIT_DESC)
                                    if f & _SPLIT_WRITE)
                elif flags & _SPLIT_WRITE:
                    writable.append((addr, length))
        layouts = [(SplitLayout(size), parts) for size, parts in zip(sizes, LAYOUT, strict=True)]
        self.rings_written_as_data = any(
            _overlaps(writable, desc, desc + lay.desc_bytes) or _overlaps(writable, avail, avail + lay.avail_bytes)
            or _overlaps(writable, used, used + lay.used_bytes) for lay, (desc, avail, used) in layouts)

    def check_rings(self, sizes: list[int]) -> None:
        if self.rings_written_as_data:
            return
        needs_reset = self.needs_reset
        for (_, _, used), size, avail_idx in zip(LAYOUT, sizes, self.avail_before, strict=True):
            (used_idx,) = struct.unpack_from("<H", self.mem, used + SplitLayout.USED_IDX)
            if used_idx > avail_idx and not needs_reset:
                raise Defect(f"{self.spec}: used idx {used_idx} beyond avail idx {avail_idx} (size {size})")
            for slot in range(min(used_idx, size)):
                (ident,) = struct.unpack_from("<I", self.mem, used + SplitLayout.USED_RING + 8 * slot)
                if ident >= size:
                    raise Defect(f"{self.spec}: used element {slot} names id {ident}, queue size {size}")


def _table(mem: mmap.mmap, addr: int, length: int, fmt: struct.Struct) -> list[tuple[int, int, int, int]]:
    """The entries of an indirect table as the driver wrote it (inside the mapping; at most 256), read
    before the kicks."""
    n = min(length // DESC_SIZE, 256)
    if addr >= MEM or addr + DESC_SIZE * n > MEM:
        return []
    return list(fmt.iter_unpack(mem[addr:addr + DESC_SIZE * n]))


def _overlaps(ranges: Sequence[tuple[int, int]], lo: int, hi: int) -> bool:
    return any(a < hi and lo < a + n for a, n in ranges)


class PackedRingTarget(_RingTargetBase):
    """Packed rings (any size 1..256) on the model's packed engine."""

    optional = PACKED_OPTIONAL
    base_features = PACKED_BASE

    def __init__(self, spec: str | None = None) -> None:
        super().__init__(packed_spec() if spec is None else spec)
        if not has(self.offered, F.RING_PACKED):
            self.close()
            raise ValueError(f"{self.spec}: the device does not offer VIRTIO_F_RING_PACKED")
        self.rings_before: list[bytes] = []
        self.rings_written_as_data = False

    def sizes(self, head: bytes) -> list[int]:
        return [1 + head[0], 1 + head[1]]

    def device_parts(self, sizes: list[int]) -> None:
        for _, _, device in LAYOUT:  # the device event suppression areas are the device's
            self.mem[device:device + EVENT_SIZE] = bytes(EVENT_SIZE)

    def before_kicks(self, sizes: list[int]) -> None:
        self.rings_before = [bytes(self.mem[desc:desc + DESC_SIZE * size])
                             for (desc, _, _), size in zip(LAYOUT, sizes, strict=True)]
        # Where the device may write data (buffers, and indirect tables whose change changes a list): the ring
        # check is left out when that reaches a ring, since the device's writes there are then data.
        writable: list[tuple[int, int]] = []
        for before in self.rings_before:
            for addr, length, _, flags in DESC.iter_unpack(before):
                if flags & _INDIRECT:
                    writable.append((addr, length))
                    writable.extend((a, n) for a, n, _, f in _table(self.mem, addr, length, DESC) if f & _WRITE)
                elif flags & _WRITE:
                    writable.append((addr, length))
        self.rings_written_as_data = any(_overlaps(writable, desc, desc + DESC_SIZE * size)
                                         for (desc, _, _), size in zip(LAYOUT, sizes, strict=True))

    def kick(self, q: int, size: int, data: bytes) -> None:
        t = self.transport
        if not has(t.negotiated, F.NOTIFICATION_DATA):
            t.notify(q)
            return
        actions = data[3] if len(data) > 3 else 0
        if actions & HOSTILE_NOTIFY:
            value = notification_data(q, data[-1], data[-1] >> 7 & 1)
        else:  # a well-behaved driver's count: the run of slots made available from the start (wrap 1)
            ring = self.rings_before[q]
            n = 0
            while n < size and is_avail(DESC.unpack_from(ring, DESC_SIZE * n)[3], 1):
                n += 1
            value = notification_data(q, n % size, 0 if n == size else 1)
        t.notify(q, value)

    def check_rings(self, sizes: list[int]) -> None:
        """Every slot the device wrote held an available descriptor and now holds a used one, with a Buffer ID
        the driver made available (the rings start all-zero, so one lap: wrap counters 1). Skipped when a
        device-writable buffer or an indirect table overlaps a ring (the device's writes there are data)."""
        if self.rings_written_as_data:
            return
        for q, ((desc, _, _), size, before) in enumerate(zip(LAYOUT, sizes, self.rings_before, strict=True)):
            after = self.mem[desc:desc + DESC_SIZE * size]
            if after == before:
                continue
            ids = {i for _, _, i, f in DESC.iter_unpack(before) if is_avail(f, 1)}
            for slot in range(size):
                at = DESC_SIZE * slot
                if after[at:at + DESC_SIZE] == before[at:at + DESC_SIZE]:
                    continue
                _, _, _, old_flags = DESC.unpack_from(before, at)
                _, _, ident, flags = DESC.unpack_from(after, at)
                where = f"{self.spec}: queue {q} (size {size}) slot {slot}"
                if not is_avail(old_flags, 1):
                    raise Defect(f"{where}: written by the device, but never made available (flags {old_flags:#x})")
                if flags & _OWNER != used_bits(1) or flags & ~(_OWNER | _WRITE):
                    raise Defect(f"{where}: the device wrote flags {flags:#x}, not a used descriptor")
                if ident not in ids:
                    raise Defect(f"{where}: used Buffer ID {ident} was not in an available descriptor")
