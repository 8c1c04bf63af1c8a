"""Type-0 PCI endpoint: config space with a capability list, BARs of register blocks, MSI-X, INTx."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from backend.pci.device import DmaPerm
from backend.virtio.pci_regs import (
    MSIX_CAP_LEN,
    MSIX_CONTROL_ENABLE,
    MSIX_CONTROL_FUNCTION_MASK,
    MSIX_ENTRY_CTRL_MASKED,
    MSIX_ENTRY_SIZE,
    PCI_BAR_MEM_TYPE_64,
    PCI_CAP_ID_MSIX,
    PCI_COMMAND_INTX_DISABLE,
    PCI_COMMAND_MASTER,
    PCI_CONFIG_SPACE_SIZE,
    PCI_STATUS_CAP_LIST,
    PCI_STATUS_INTERRUPT,
    PciCfg,
)
from sim.iommu import Iommu

_COMMAND = int(PciCfg.COMMAND)

_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


def _mask(width: int) -> int:
    return (1 << (8 * width)) - 1


class Block(Protocol):
    """Anything mounted in a BAR: byte-addressed read/write relative to its own start."""

    size: int

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


@dataclass
class Register:
    """One field. ``read`` returns its value; ``write`` receives the full new value (None: read-only)."""

    name: str
    offset: int
    width: int
    read: Callable[[], int]
    write: Callable[[int], None] | None = None

    @property
    def end(self) -> int:
        return self.offset + self.width


class RegisterBlock:
    """A register map. Reads of any span assemble bytes from the fields they cover (gaps read 0).

    A write narrower than its field (for example one 32-bit half of a 64-bit
    address, PCI-DEV-08) merges into the current value; writes to gaps or
    read-only fields are ignored, as on a real device, and counted.
    """

    def __init__(self, name: str, size: int, registers: list[Register]) -> None:
        self.name = name
        self.size = size
        self.registers = sorted(registers, key=lambda r: r.offset)
        self._by_offset = {r.offset: r for r in self.registers}
        self.ignored_writes = 0
        for a, b in zip(self.registers, self.registers[1:], strict=False):
            if a.end > b.offset:
                raise ValueError(f"{name}: {a.name} overlaps {b.name}")

    def read(self, offset: int, size: int) -> bytes:
        out = bytearray(size)
        end = offset + size
        for r in self.registers:
            if r.end <= offset or r.offset >= end:
                continue
            raw = struct.pack(_FMT[r.width], r.read() & _mask(r.width))
            lo = max(offset, r.offset)
            hi = min(end, r.end)
            out[lo - offset:hi - offset] = raw[lo - r.offset:hi - r.offset]
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        hit = False
        for r in self.registers:
            if r.end <= offset or r.offset >= end:
                continue
            hit = True
            if r.write is None:
                self.ignored_writes += 1
                continue
            lo = max(offset, r.offset)
            hi = min(end, r.end)
            if lo == r.offset and hi == r.end:
                value = int.from_bytes(data[lo - offset:hi - offset], "little")
            else:  # partial access: merge into the current value
                cur = bytearray(struct.pack(_FMT[r.width], r.read() & _mask(r.width)))
                cur[lo - r.offset:hi - r.offset] = data[lo - offset:hi - offset]
                value = int.from_bytes(cur, "little")
            r.write(value)
        if not hit:
            self.ignored_writes += 1


@dataclass
class Bar:
    """A memory BAR: blocks mounted at offsets. Unclaimed space reads 0 and ignores writes."""

    index: int
    size: int
    is64: bool = True
    prefetchable: bool = False
    blocks: list[tuple[int, Block]] = field(default_factory=list)

    def mount(self, offset: int, block: Block) -> None:
        if offset + block.size > self.size:
            raise ValueError(f"BAR{self.index}: block at {offset:#x}+{block.size:#x} exceeds {self.size:#x}")
        for o, b in self.blocks:
            if offset < o + b.size and o < offset + block.size:
                raise ValueError(f"BAR{self.index}: block at {offset:#x} overlaps block at {o:#x}")
        self.blocks.append((offset, block))
        self.blocks.sort(key=lambda t: t[0])

    def read(self, offset: int, size: int) -> bytes:
        for o, b in self.blocks:
            if o <= offset and offset + size <= o + b.size:
                return b.read(offset - o, size)
        out = bytearray(size)
        for o, b in self.blocks:  # access straddling blocks or gaps: per-block pieces
            lo, hi = max(offset, o), min(offset + size, o + b.size)
            if lo < hi:
                out[lo - offset:hi - offset] = b.read(lo - o, hi - lo)
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        for o, b in self.blocks:
            lo, hi = max(offset, o), min(offset + len(data), o + b.size)
            if lo < hi:
                b.write(lo - o, data[lo - offset:hi - offset])


@dataclass
class Capability:
    """A config-space capability. ``body`` excludes the two header bytes (id, next)."""

    cap_id: int
    body: bytearray
    writable: bytearray | None = None  # per-byte write mask over body; None = read-only
    on_read: Callable[[int, int], None] | None = None  # (offset in body, size) before the read
    on_write: Callable[[int, int], None] | None = None  # (offset in body, size) after the write
    offset: int = 0  # assigned by ConfigSpace

    @property
    def length(self) -> int:
        return 2 + len(self.body)


class ConfigSpace:
    """256-byte type-0 header with a capability list; BAR sizing and command/status semantics."""

    def __init__(self, *, vendor_id: int, device_id: int, revision: int, class_code: int,
                 subsystem_vendor_id: int, subsystem_id: int, bars: list[Bar],
                 interrupt_status: Callable[[], bool] = lambda: False) -> None:
        self.data = bytearray(PCI_CONFIG_SPACE_SIZE)
        self.bars = {b.index: b for b in bars}
        self.caps: list[Capability] = []
        self._interrupt_status = interrupt_status
        self._bar_values: dict[int, int] = {}
        struct.pack_into("<HH", self.data, PciCfg.VENDOR_ID, vendor_id, device_id)
        self.data[PciCfg.REVISION_ID] = revision
        self.data[PciCfg.CLASS_PROG:PciCfg.CLASS_PROG + 3] = class_code.to_bytes(3, "little")
        struct.pack_into("<HH", self.data, PciCfg.SUBSYSTEM_VENDOR_ID, subsystem_vendor_id, subsystem_id)
        self.data[PciCfg.INTERRUPT_PIN] = 1
        self._next_cap = 0x40
        self.reset()

    def reset(self) -> None:
        struct.pack_into("<H", self.data, PciCfg.COMMAND, 0)
        self._bar_values = {i: 0 for i in range(6)}

    def add_capability(self, cap: Capability) -> int:
        pad = 4 - cap.length % 4 if cap.length % 4 and cap.length > 2 else 0
        offset = self._next_cap
        if offset + cap.length > PCI_CONFIG_SPACE_SIZE:
            raise ValueError("capability list does not fit into 256 bytes of config space")
        cap.offset = offset
        self.data[offset] = cap.cap_id
        self.data[offset + 1] = 0
        if self.caps:
            self.data[self.caps[-1].offset + 1] = offset
        else:
            self.data[PciCfg.CAPABILITIES_POINTER] = offset
        self.caps.append(cap)
        self._next_cap = offset + cap.length + pad
        return offset

    @property
    def command(self) -> int:
        value: int = struct.unpack_from("<H", self.data, PciCfg.COMMAND)[0]
        return value

    @property
    def bus_master(self) -> bool:
        # Asked before every DMA: one byte test (Bus Master Enable is in the Command register's low byte), the
        # offset a plain int (indexing with the IntEnum member costs as much again).
        return bool(self.data[_COMMAND] & PCI_COMMAND_MASTER)

    def _bar_register(self, slot: int) -> int:
        """Value a BAR dword reads: programmed address bits | type bits (or the sizing mask)."""
        low_bar = self.bars.get(slot)
        high_of = self.bars.get(slot - 1) if slot > 0 else None
        if low_bar is not None:
            flags = (PCI_BAR_MEM_TYPE_64 if low_bar.is64 else 0) | (0x8 if low_bar.prefetchable else 0)
            return (self._bar_values[slot] & ~(low_bar.size - 1) & 0xFFFFFFF0) | flags
        if high_of is not None and high_of.is64:
            return self._bar_values[slot] & (~(high_of.size - 1) >> 32) & 0xFFFFFFFF
        return 0

    def _cap_at(self, offset: int) -> Capability | None:
        for c in self.caps:
            if c.offset <= offset < c.offset + c.length:
                return c
        return None

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > PCI_CONFIG_SPACE_SIZE:
            return b"\xff" * size
        for cap in self.caps:  # each capability body the read covers sees it first (the PCI_CFG window fills)
            lo, hi = max(offset, cap.offset + 2), min(offset + size, cap.offset + cap.length)
            if cap.on_read is not None and lo < hi:
                cap.on_read(lo - cap.offset - 2, hi - lo)
        out = bytearray(self.data[offset:offset + size])
        for i in range(size):
            o = offset + i
            if PciCfg.BAR0 <= o < PciCfg.BAR0 + 24:
                slot = (o - PciCfg.BAR0) // 4
                out[i] = self._bar_register(slot).to_bytes(4, "little")[(o - PciCfg.BAR0) % 4]
            elif o == PciCfg.STATUS:
                status = PCI_STATUS_CAP_LIST if self.caps else 0
                if self._interrupt_status():
                    status |= PCI_STATUS_INTERRUPT
                out[i] = status
            else:
                c = self._cap_at(o)
                if c is not None and o >= c.offset + 2:
                    out[i] = c.body[o - c.offset - 2]
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > PCI_CONFIG_SPACE_SIZE:
            return
        touched: dict[int, tuple[Capability, int, int]] = {}
        for i, byte in enumerate(data):
            o = offset + i
            if o in (PciCfg.COMMAND, PciCfg.COMMAND + 1):
                self.data[o] = byte
            elif PciCfg.BAR0 <= o < PciCfg.BAR0 + 24:
                slot = (o - PciCfg.BAR0) // 4
                shift = 8 * ((o - PciCfg.BAR0) % 4)
                self._bar_values[slot] = self._bar_values[slot] & ~(0xFF << shift) | byte << shift
            elif o == PciCfg.INTERRUPT_LINE:
                self.data[o] = byte
            else:
                c = self._cap_at(o)
                if c is not None and o >= c.offset + 2 and c.writable is not None:
                    bo = o - c.offset - 2
                    m = c.writable[bo]
                    c.body[bo] = (c.body[bo] & ~m) | (byte & m)
                    first = touched.get(id(c), (c, bo, bo))
                    touched[id(c)] = (c, min(first[1], bo), max(first[2], bo))
        for c, lo, hi in touched.values():
            if c.on_write is not None:
                c.on_write(lo, hi - lo + 1)


class Msix:
    """MSI-X capability, table and PBA. Vectors fire eventfds bound through ``bind`` (VFIO SET_IRQS)."""

    def __init__(self, table_size: int, bar: int, table_offset: int, pba_offset: int) -> None:
        if not 1 <= table_size <= 2048:
            raise ValueError("MSI-X table size must be 1..2048")
        self.table_size = table_size
        self.bar = bar
        self.table = bytearray(MSIX_ENTRY_SIZE * table_size)
        self.pba = bytearray(((table_size + 63) // 64) * 8)
        self.fds: list[int | None] = [None] * table_size
        self.cap = Capability(PCI_CAP_ID_MSIX, bytearray(MSIX_CAP_LEN - 2), on_write=self._control_written)
        self.cap.writable = bytearray(MSIX_CAP_LEN - 2)
        self.cap.writable[1] = 0xC0  # message control bits 14 (function mask) and 15 (enable)
        struct.pack_into("<HII", self.cap.body, 0, table_size - 1, table_offset | bar, pba_offset | bar)
        self.table_block = _ArrayBlock(self.table, on_write=self._table_written)
        self.pba_block = _ArrayBlock(self.pba, read_only=True)
        self.lock = threading.RLock()
        self.reset()

    @property
    def control(self) -> int:
        value: int = struct.unpack_from("<H", self.cap.body, 0)[0]
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.control & MSIX_CONTROL_ENABLE)

    def set_enabled(self, on: bool) -> None:
        c = self.control & ~MSIX_CONTROL_ENABLE | (MSIX_CONTROL_ENABLE if on else 0)
        struct.pack_into("<H", self.cap.body, 0, c)
        self._deliver_pending()

    def reset(self) -> None:
        with self.lock:
            struct.pack_into("<H", self.cap.body, 0, self.table_size - 1)
            for v in range(self.table_size):
                self.table[v * MSIX_ENTRY_SIZE:(v + 1) * MSIX_ENTRY_SIZE] = b"\0" * 12 + bytes([1, 0, 0, 0])
            self.pba[:] = bytes(len(self.pba))

    def masked(self, vector: int) -> bool:
        if self.control & MSIX_CONTROL_FUNCTION_MASK:
            return True
        ctrl = self.table[vector * MSIX_ENTRY_SIZE + 12]
        return bool(ctrl & MSIX_ENTRY_CTRL_MASKED)

    def bind(self, start: int, fds: list[int | None]) -> None:
        with self.lock:
            if start + len(fds) > self.table_size:
                raise ValueError(f"MSI-X vectors {start}..{start + len(fds) - 1} exceed table size {self.table_size}")
            for i, fd in enumerate(fds):
                self.fds[start + i] = fd
                self._bound(start + i, fd is not None)
            self._deliver_pending()

    def _bound(self, vector: int, live: bool) -> None:
        """VFIO programs and unmasks the entry for the user: a bound vector is live, an unbound one masked."""
        self.table[vector * MSIX_ENTRY_SIZE + 12] = 0 if live else MSIX_ENTRY_CTRL_MASKED

    def unbind_all(self) -> None:
        with self.lock:
            self.fds = [None] * self.table_size

    def fire(self, vector: int) -> bool:
        """Signal ``vector``; returns True if an eventfd was written, False if held pending or dropped."""
        with self.lock:
            if not 0 <= vector < self.table_size or not self.enabled:
                return False
            if self.masked(vector):
                self.pba[vector // 8] |= 1 << (vector % 8)
                return False
            return self._send(vector)

    def _send(self, vector: int) -> bool:
        fd = self.fds[vector]
        if fd is None:
            return False
        os.eventfd_write(fd, 1)
        return True

    def _deliver_pending(self) -> None:
        if not self.enabled:
            return
        for v in range(self.table_size):
            if self.pba[v // 8] >> (v % 8) & 1 and not self.masked(v):
                self.pba[v // 8] &= ~(1 << (v % 8)) & 0xFF
                self._send(v)

    def _control_written(self, _offset: int, _size: int) -> None:
        with self.lock:
            self._deliver_pending()

    def _table_written(self, _offset: int, _size: int) -> None:
        with self.lock:
            self._deliver_pending()


class _ArrayBlock:
    def __init__(self, data: bytearray, *, read_only: bool = False,
                 on_write: Callable[[int, int], None] | None = None) -> None:
        self.data = data
        self.size = len(data)
        self.read_only = read_only
        self.on_write = on_write

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        if self.read_only:
            return
        self.data[offset:offset + len(data)] = data
        if self.on_write is not None:
            self.on_write(offset, len(data))


class PciEndpoint:
    """A PCI function: config space, BARs, MSI-X, INTx, and DMA through its IOMMU.

    All register accesses and device-side processing are serialised by ``lock``
    (one RLock: a device handles one access at a time, re-entrantly when a
    loopback wire feeds it from its own transmit path).
    """

    def __init__(self, config: ConfigSpace, bars: list[Bar], msix: Msix | None, iommu: Iommu | None = None) -> None:
        self.config = config
        self.bars = {b.index: b for b in bars}
        self.msix = msix
        self.iommu = iommu if iommu is not None else Iommu()
        self.lock = threading.RLock()
        self.intx_fd: int | None = None
        self._intx_level = False
        self.reset_hooks: list[Callable[[], None]] = []
        if msix is not None:
            config.add_capability(msix.cap)

    # --- interrupts ---------------------------------------------------------------------------

    def set_intx(self, level: bool) -> None:
        """Level-triggered INTx; the eventfd is signalled on each assertion edge."""
        rising = level and not self._intx_level
        self._intx_level = level
        if rising and self.intx_fd is not None and not self.config.command & PCI_COMMAND_INTX_DISABLE:
            os.eventfd_write(self.intx_fd, 1)

    # --- accesses -----------------------------------------------------------------------------

    def bar_read(self, index: int, offset: int, size: int) -> bytes:
        bar = self.bars[index]
        if offset < 0 or offset + size > bar.size:
            raise ValueError(f"BAR{index} read at {offset:#x}+{size} beyond {bar.size:#x}")
        with self.lock:
            return bar.read(offset, size)

    def bar_write(self, index: int, offset: int, data: bytes) -> None:
        bar = self.bars[index]
        if offset < 0 or offset + len(data) > bar.size:
            raise ValueError(f"BAR{index} write at {offset:#x}+{len(data)} beyond {bar.size:#x}")
        with self.lock:
            bar.write(offset, data)

    def config_read(self, offset: int, size: int) -> bytes:
        with self.lock:
            return self.config.read(offset, size)

    def config_write(self, offset: int, data: bytes) -> None:
        with self.lock:
            self.config.write(offset, data)

    # --- DMA (device side) ----------------------------------------------------------------------

    def _check_master(self, iova: int, size: int, access: DmaPerm) -> None:
        if not self.config.bus_master:
            raise self.iommu.fault(iova, size, access, "bus mastering is disabled in the PCI command register")

    def dma_read(self, iova: int, size: int) -> bytes:
        self._check_master(iova, size, DmaPerm.READ)
        return self.iommu.read_quick(iova, size)

    def dma_write(self, iova: int, data: bytes | bytearray | memoryview) -> None:
        self._check_master(iova, len(data), DmaPerm.WRITE)
        self.iommu.write_quick(iova, data)

    def function_reset(self) -> None:
        with self.lock:
            self.config.reset()
            if self.msix is not None:
                self.msix.reset()
            self._intx_level = False
            for hook in self.reset_hooks:
                hook()
