"""Fuzz target: a live virtio-net function under hostile split-ring memory (the behavioral model's
split engine through ``sim:``, or the RTL through ``rtl:``).

The device is opened once per process, bus mastering on, one window of guest memory mapped RW at iova 0
(a memfd twice that size: the unmapped half is a canary no device access may change). Per input the
driver side is redone from reset with the input's queue sizes and ring features, then the input's
patches are written over zeroed guest memory: descriptor tables, avail flags/idx/ring/used_event,
indirect tables and buffers all come from the fuzzer (the used rings stay the device's). Then the
queues are kicked, frames arrive from the wire (a transmitted frame loops back), and the device is
left to settle within a bound.

Input: ``rx_size_log2:u8 | tx_size_log2:u8 | feature_bits:u8 | actions:u8 | patches``; a patch is
``offset:u16le | length:u8 | bytes`` into guest memory (:data:`LAYOUT` says where the rings are).

Handled outcomes: buffers used, chains refused with DEVICE_NEEDS_RESET and a recorded driver error,
DMA faults for addresses outside the mapping. Defects: an exception out of a register access (the
model processes doorbells on the caller's thread), a crash in the device's thread, a device that does
not settle or reset within its bound, a used idx beyond what the driver made available, a used id
that is not a descriptor index, a DMA fault for an access inside the mapping, a change to the canary.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Final

from backend.drivers.transport import VirtioPciModern
from backend.pci.device import DmaPerm, PciDevice
from backend.targets import default_registry
from backend.virtio.features import DeviceStatus, F, NetF, bits
from backend.virtio.split_ring import SplitLayout
from tests.fuzz.records import Defect

#: Guest memory the device may reach (mapped at iova 0); as much again follows it unmapped, as canary.
MEM: Final = 0x10000
CANARY: Final = 0xA5
#: (desc, avail, used) of receiveq1 and transmitq1; buffers and indirect tables anywhere from 0x6000 on.
LAYOUT: Final = ((0x0000, 0x1000, 0x2000), (0x3000, 0x4000, 0x5000))
#: Feature bits an input may ask for (bit i of feature_bits), on top of VERSION_1 | ACCESS_PLATFORM.
OPTIONAL: Final = (F.EVENT_IDX, F.INDIRECT_DESC, F.IN_ORDER, NetF.MRG_RXBUF, NetF.CSUM, NetF.GUEST_CSUM,
                   NetF.HOST_TSO4, NetF.GUEST_TSO4)
BASE_FEATURES: Final = bits(F.VERSION_1, F.ACCESS_PLATFORM)
#: Action bits.
KICK_RX: Final = 1
KICK_TX: Final = 2
WIRE_FRAME: Final = 4
KICK_AGAIN: Final = 8
#: Bound on the device settling after the kicks, and on its reset.
SETTLE_TIMEOUT: Final = 5.0
MAX_SIZE_LOG2: Final = 8  # rings of 2..256 entries fit LAYOUT's 4 KiB slots
FRAME: Final = bytes.fromhex("02000000000102000000000208004500") + bytes(44)


class RingTarget:
    def __init__(self, spec: str = "sim:virtio-net,wire=loopback") -> None:
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

    def one_input(self, data: bytes) -> None:
        head = data[:4].ljust(4, b"\0")
        sizes = [1 << (1 + head[i] % MAX_SIZE_LOG2) for i in (0, 1)]
        features = BASE_FEATURES | bits(*(f for i, f in enumerate(OPTIONAL) if head[2] >> i & 1))
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
        self._patch(data[4:], sizes)
        t.add_status(DeviceStatus.DRIVER_OK)
        for _ in range(2 if actions & KICK_AGAIN else 1):
            if actions & KICK_RX:
                t.notify(0)
            if actions & KICK_TX:
                t.notify(1)
        if actions & WIRE_FRAME:
            self._wire_frame()
        self._settle()
        self._check(sizes)
        t.reset()
        self._settle()

    def _patch(self, patches: bytes, sizes: list[int]) -> None:
        pos = 0
        while pos + 3 <= len(patches):
            off, n = struct.unpack_from("<HB", patches, pos)
            pos += 3
            chunk = patches[pos:pos + n]
            pos += len(chunk)
            end = min(off + len(chunk), MEM)
            self.mem[off:end] = chunk[:end - off]
        for (_, _, used), size in zip(LAYOUT, sizes, strict=True):  # the used rings are the device's
            n = SplitLayout(size).used_bytes
            self.mem[used:used + n] = bytes(n)

    def _wire_frame(self) -> None:
        port = self.dev.abilities().port
        receive = getattr(port, "receive", None)
        if receive is not None:
            receive(FRAME)

    def _settle(self) -> None:
        runner = getattr(self.dev, "runner", None)  # the RTL's clock thread; the model runs on this thread
        if runner is not None and not runner.settle(SETTLE_TIMEOUT):
            raise Defect(f"{self.spec}: the device did not settle within {SETTLE_TIMEOUT}s")

    def _check(self, sizes: list[int]) -> None:
        crashes = self.dev.abilities().crashes
        found = crashes.crashes() if hasattr(crashes, "crashes") else []
        if found:
            raise Defect(f"{self.spec}: the device's thread crashed: {found}")
        if bytes(self.mem[MEM:]) != bytes([CANARY]) * MEM:
            raise Defect(f"{self.spec}: memory beyond the mapping changed")
        for f in self.dev.dma_faults():
            if f.iova >= 0 and f.iova + max(f.size, 1) <= MEM:
                raise Defect(f"{self.spec}: DMA fault for an access inside the RW mapping: {f}")
        needs_reset = bool(self.transport.status() & DeviceStatus.DEVICE_NEEDS_RESET)
        for (_, avail, used), size in zip(LAYOUT, sizes, strict=True):
            (avail_idx,) = struct.unpack_from("<H", self.mem, avail + SplitLayout.AVAIL_IDX)
            (used_idx,) = struct.unpack_from("<H", self.mem, used + SplitLayout.USED_IDX)
            if used_idx > avail_idx and not needs_reset:
                raise Defect(f"{self.spec}: used idx {used_idx} beyond avail idx {avail_idx} (size {size})")
            for slot in range(min(used_idx, size)):
                (ident,) = struct.unpack_from("<I", self.mem, used + SplitLayout.USED_RING + 8 * slot)
                if ident >= size:
                    raise Defect(f"{self.spec}: used element {slot} names id {ident}, queue size {size}")
