"""vfio-user wire format, shared by the client (:mod:`backend.pci.vfio_user`) and the server (``sim.vfio_user``).

Every message is a 16-byte header (message id u16, command u16, size u32 of the whole
message, flags u32, errno u32; host byte order, little-endian here) followed by a
command-specific payload; file descriptors travel beside it as SCM_RIGHTS ancillary
data. Layouts follow the vfio-user specification (QEMU ``docs/interop/vfio-user.rst``),
whose structures mirror ``<linux/vfio.h>``.

Entry points:

* :meth:`Header.unpack` checks a header before its payload is read (type bits, reserved
  flags, size bounds), so a peer never reads an absurd ``size``;
* one dataclass per payload, each with ``pack()`` and a validating ``unpack()`` that raises
  :class:`VfioUserProtocolError` with a reason for anything malformed;
* :func:`send_message` / :func:`recv_message` move one message and its fds over a socket.

Three commands are this project's own (``BENCH_IOEVENTFD``, ``BENCH_DMA_FAULTS``, ``BENCH_PORT``),
used only when both sides named them in the ``vdpa_bench`` capability of ``VERSION`` (a standard
peer ignores an unknown capability, so the client then falls back):

* vfio-user has no counterpart of ``VFIO_DEVICE_IOEVENTFD``: its ``GET_REGION_IO_FDS`` hands
  the *server's* fds to the client for KVM to signal, while a vDPA backend holds the
  frontend's kick eventfd and needs the device to wait on *that* fd. ``BENCH_IOEVENTFD``
  passes it to the device process, so kicks never cross the backend.
* an IOMMU fault in the device process must reach the driver side: ``BENCH_DMA_FAULTS``
  drains the faults the server's IOMMU recorded.
* ``BENCH_PORT`` is the device's side facing the bench, as a cable and a traffic generator are
  for a card on a lab bench: read the link state, the MAC and the driver errors the model
  logged, pull or plug the link, and deliver a frame as if it arrived from the wire.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any, ClassVar, Final

from backend import wire
from backend.fd_channel import ControlTruncated, FdChannel, PeerClosed, close_fds, owned_fds
from backend.pci import vfio_uapi as uapi
from backend.pci.vfio_uapi import IRQ_ACTION_MASK as IRQ_ACTION_MASK
from backend.pci.vfio_uapi import IRQ_DATA_MASK as IRQ_DATA_MASK
from backend.pci.vfio_uapi import DeviceFlag as DeviceFlag
from backend.pci.vfio_uapi import DmaFlag as DmaFlag
from backend.pci.vfio_uapi import IrqInfoFlag as IrqInfoFlag
from backend.pci.vfio_uapi import IrqSetFlag as IrqSetFlag
from backend.pci.vfio_uapi import RegionCapId as RegionCapId
from backend.pci.vfio_uapi import RegionFlag as RegionFlag

# ---------------------------------------------------------------------------------------------
# numbers


class VfioUserProtocolError(wire.WireError):
    """A message that is not valid vfio-user on the wire; ``reason`` says what is wrong."""


class ConnectionClosed(Exception):
    """The peer closed the socket (cleanly, between messages, unless ``partial``)."""

    def __init__(self, message: str, *, partial: bool = False) -> None:
        super().__init__(message)
        self.partial = partial


class Command(IntEnum):
    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18
    # vdpa-bench extensions (negotiated through the "vdpa_bench" capability)
    BENCH_IOEVENTFD = 0xBE01
    BENCH_DMA_FAULTS = 0xBE02
    BENCH_PORT = 0xBE03


#: Commands a server receives (DMA_READ/DMA_WRITE go the other way).
SERVER_BOUND: Final = frozenset(set(Command) - {Command.DMA_READ, Command.DMA_WRITE})


class MsgType(IntEnum):
    COMMAND = 0
    REPLY = 1


class HeaderFlag(IntFlag):
    NO_REPLY = 0x10
    ERROR = 0x20


TYPE_MASK: Final = 0xF
HEADER: Final = struct.Struct("<HHIII")
HEADER_SIZE: Final = HEADER.size

#: Protocol version spoken here (libvfio-user's).
VERSION_MAJOR: Final = 0
VERSION_MINOR: Final = 1
#: Defaults the specification gives to absent capabilities.
DEFAULT_MAX_MSG_FDS: Final = 1
DEFAULT_MAX_DATA_XFER: Final = 1 << 20
DEFAULT_MAX_DMA_MAPS: Final = 65535
DEFAULT_PGSIZES: Final = 4096
#: Linux SCM_MAX_FD: no message can carry more.
SCM_MAX_FD: Final = 253
#: Longest VERSION JSON accepted (the capability object is a few hundred bytes).
MAX_VERSION_DATA: Final = 4096

#: PCI region and irq indexes (VFIO_PCI_*_REGION_INDEX, VFIO_PCI_*_IRQ_INDEX).
PCI_NUM_REGIONS: Final = 9  # BAR0..5, ROM, CONFIG, VGA
PCI_NUM_IRQS: Final = 5  # INTX, MSI, MSIX, ERR, REQ


class IoeventfdFlag(IntFlag):
    DATAMATCH = 1  # fire only for writes of ``datamatch`` (a doorbell write of that value)
    REMOVE = 2  # unregister (no fd)


class FaultsFlag(IntFlag):
    NONE = 0
    MORE = 1  # more faults are waiting than fitted into this reply


_U64: Final = (1 << 64) - 1


def _check(cond: bool, reason: str) -> None:
    if not cond:
        raise VfioUserProtocolError(reason)


def _exact(payload: bytes, size: int, what: str) -> None:
    _check(len(payload) == size, f"{what}: payload of {len(payload)} bytes, expected {size}")


def _fixed(layout: wire.Layout, payload: bytes, what: str, *, argsz_exact: bool = False) -> dict[str, Any]:
    """The fields of a payload that is exactly one ``argsz``-led struct.

    ``argsz`` must be the struct's size, or (where the requester may take a longer reply) at least it.
    """
    _exact(payload, layout.size, what)
    v = layout.unpack(payload)
    if argsz_exact:
        _check(v["argsz"] == layout.size, f"{what}: argsz {v['argsz']}, expected {layout.size}")
    else:
        _check(v["argsz"] >= layout.size, f"{what}: argsz {v['argsz']} below {layout.size}")
    return v


class _Struct:
    """A payload that is exactly its struct ``FMT``, its fields named as the dataclass's."""

    FMT: ClassVar[wire.Layout]

    def pack(self) -> bytes:
        return self.FMT.pack_obj(self)


def _head(layout: wire.Layout, payload: bytes, what: str) -> tuple[dict[str, Any], bytes]:
    """The fields of the struct a variable payload begins with, and the bytes after it."""
    _check(len(payload) >= layout.size, f"{what}: payload of {len(payload)} bytes, at least {layout.size}")
    return layout.unpack(payload), payload[layout.size:]


def _known_flags(flags: int, known: int, what: str) -> None:
    _check(not flags & ~int(known), f"{what}: unknown flags {flags:#x}")


# ---------------------------------------------------------------------------------------------
# header


@dataclass(frozen=True)
class Header:
    msg_id: int
    command: int
    size: int  # the whole message, header included
    type: MsgType = MsgType.COMMAND
    no_reply: bool = False
    error: bool = False
    errno: int = 0

    @property
    def is_reply(self) -> bool:
        return self.type is MsgType.REPLY

    @property
    def payload_size(self) -> int:
        return self.size - HEADER_SIZE

    def command_name(self) -> str:
        try:
            return Command(self.command).name
        except ValueError:
            return f"command {self.command}"

    def pack(self) -> bytes:
        flags = int(self.type) | (HeaderFlag.NO_REPLY if self.no_reply else 0) | (HeaderFlag.ERROR if self.error else 0)
        return HEADER.pack(self.msg_id, self.command, self.size, flags, self.errno)

    @classmethod
    def unpack(cls, data: bytes, *, max_size: int) -> Header:
        _check(len(data) == HEADER_SIZE, f"header of {len(data)} bytes, expected {HEADER_SIZE}")
        msg_id, command, size, flags, errno = HEADER.unpack(data)
        kind = flags & TYPE_MASK
        _check(kind in (MsgType.COMMAND, MsgType.REPLY), f"message type {kind} (0 command, 1 reply)")
        known = TYPE_MASK | int(HeaderFlag.NO_REPLY) | int(HeaderFlag.ERROR)
        _check(not flags & ~known, f"reserved header flag bits {flags & ~known:#x} set")
        mtype = MsgType(kind)
        no_reply = bool(flags & HeaderFlag.NO_REPLY)
        error = bool(flags & HeaderFlag.ERROR)
        if mtype is MsgType.COMMAND:
            _check(not error, "error flag on a command")
            _check(errno == 0, f"errno {errno} on a command (reserved)")
        else:
            _check(not no_reply, "no-reply flag on a reply")
            _check(error or errno == 0, f"errno {errno} on a reply without the error flag")
        _check(size >= HEADER_SIZE, f"message size {size} smaller than the header")
        _check(size <= max_size, f"message size {size} exceeds the limit of {max_size}")
        return cls(msg_id, command, size, mtype, no_reply, error, errno)


# ---------------------------------------------------------------------------------------------
# VERSION


def _number(obj: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    if key not in obj:
        return default
    value = obj[key]
    _check(isinstance(value, int) and not isinstance(value, bool), f"capability {key}: {value!r} is not an integer")
    _check(lo <= value <= hi, f"capability {key}: {value} outside {lo}..{hi}")
    return int(value)


def _flag(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key, False)
    _check(isinstance(value, bool), f"capability {key}: {value!r} is not a boolean")
    return bool(value)


@dataclass(frozen=True)
class BenchCaps:
    """The ``vdpa_bench`` capability: which extension commands the sender implements."""

    KEY: ClassVar[str] = "vdpa_bench"

    ioeventfd: bool = False
    dma_faults: bool = False
    port: bool = False

    def common(self, other: BenchCaps) -> BenchCaps:
        return BenchCaps(self.ioeventfd and other.ioeventfd, self.dma_faults and other.dma_faults,
                         self.port and other.port)

    def to_json(self) -> dict[str, Any]:
        return {"ioeventfd": self.ioeventfd, "dma_faults": self.dma_faults, "port": self.port}

    @classmethod
    def from_json(cls, obj: object) -> BenchCaps:
        _check(isinstance(obj, dict), f"capability {cls.KEY}: {obj!r} is not an object")
        assert isinstance(obj, dict)
        return cls(_flag(obj, "ioeventfd"), _flag(obj, "dma_faults"), _flag(obj, "port"))


@dataclass(frozen=True)
class Capabilities:
    max_msg_fds: int = DEFAULT_MAX_MSG_FDS
    max_data_xfer_size: int = DEFAULT_MAX_DATA_XFER
    max_dma_maps: int = DEFAULT_MAX_DMA_MAPS
    pgsizes: int = DEFAULT_PGSIZES
    bench: BenchCaps | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_msg_fds": self.max_msg_fds,
            "max_data_xfer_size": self.max_data_xfer_size,
            "max_dma_maps": self.max_dma_maps,
            "pgsizes": self.pgsizes,
        }
        if self.bench is not None:
            out[BenchCaps.KEY] = self.bench.to_json()
        return out

    @classmethod
    def from_json(cls, obj: object) -> Capabilities:
        """Known capabilities are checked; unknown ones are ignored (the specification's forward rule)."""
        _check(isinstance(obj, dict), f"capabilities: {obj!r} is not an object")
        assert isinstance(obj, dict)
        bench = BenchCaps.from_json(obj[BenchCaps.KEY]) if BenchCaps.KEY in obj else None
        return cls(
            max_msg_fds=_number(obj, "max_msg_fds", DEFAULT_MAX_MSG_FDS, 0, SCM_MAX_FD),
            max_data_xfer_size=_number(obj, "max_data_xfer_size", DEFAULT_MAX_DATA_XFER, 1, 1 << 31),
            max_dma_maps=_number(obj, "max_dma_maps", DEFAULT_MAX_DMA_MAPS, 1, 1 << 31),
            pgsizes=_number(obj, "pgsizes", DEFAULT_PGSIZES, 1, _U64),
            bench=bench,
        )


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    caps: Capabilities = field(default_factory=Capabilities)

    FMT: ClassVar = wire.Layout(major=wire.UINT16, minor=wire.UINT16)

    def pack(self) -> bytes:
        data = json.dumps({"capabilities": self.caps.to_json()}, separators=(",", ":")).encode()
        return self.FMT.pack_obj(self) + data + b"\0"

    @classmethod
    def unpack(cls, payload: bytes) -> Version:
        _check(len(payload) >= cls.FMT.size, f"VERSION: payload of {len(payload)} bytes, at least 4 expected")
        v = cls.FMT.unpack(payload)
        major, minor, data = v["major"], v["minor"], payload[cls.FMT.size:]
        if not data:
            return cls(major, minor)
        _check(len(data) <= MAX_VERSION_DATA, f"VERSION: {len(data)} bytes of version data")
        _check(data.endswith(b"\0"), "VERSION: version data is not NUL-terminated")
        _check(b"\0" not in data[:-1], "VERSION: NUL inside the version data")
        try:
            doc = json.loads(data[:-1].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise VfioUserProtocolError(f"VERSION: version data is not UTF-8 JSON: {exc}") from None
        _check(isinstance(doc, dict), "VERSION: version data is not a JSON object")
        caps = Capabilities.from_json(doc["capabilities"]) if "capabilities" in doc else Capabilities()
        return cls(major, minor, caps)


# ---------------------------------------------------------------------------------------------
# DMA


@dataclass(frozen=True)
class DmaMap:
    flags: DmaFlag
    offset: int  # in the fd passed with the message
    address: int  # IOVA
    size: int

    FMT: ClassVar = uapi.ARGSZ.extend(offset=wire.UINT64, address=wire.UINT64, size=wire.UINT64)

    def pack(self) -> bytes:
        return self.FMT.pack(argsz=self.FMT.size, flags=self.flags, offset=self.offset, address=self.address,
                                size=self.size)

    @classmethod
    def unpack(cls, payload: bytes) -> DmaMap:
        v = _fixed(cls.FMT, payload, "DMA_MAP", argsz_exact=True)
        _known_flags(v["flags"], DmaFlag.READ | DmaFlag.WRITE, "DMA_MAP")
        _check(v["size"] > 0, "DMA_MAP: size 0")
        _check(v["address"] + v["size"] - 1 <= _U64, "DMA_MAP: range wraps the 64-bit IOVA space")
        return cls(DmaFlag(v["flags"]), v["offset"], v["address"], v["size"])


@dataclass(frozen=True)
class DmaUnmap(_Struct):
    address: int
    size: int
    argsz: int = 24
    flags: int = 0

    FMT: ClassVar = uapi.ARGSZ.extend(address=wire.UINT64, size=wire.UINT64)

    @classmethod
    def unpack(cls, payload: bytes) -> DmaUnmap:
        v = _fixed(cls.FMT, payload, "DMA_UNMAP")
        _check(v["flags"] == 0, f"DMA_UNMAP: flags {v['flags']:#x} (none defined)")
        return cls(**v)


# ---------------------------------------------------------------------------------------------
# device, region and irq information


@dataclass(frozen=True)
class DeviceInfo(_Struct):
    argsz: int = 16
    flags: DeviceFlag = DeviceFlag.NONE
    num_regions: int = 0
    num_irqs: int = 0

    #: vfio_device_info before the kernel added ``cap_offset``.
    FMT: ClassVar = uapi.ARGSZ.extend(num_regions=wire.UINT32, num_irqs=wire.UINT32)

    @classmethod
    def unpack(cls, payload: bytes, *, reply: bool) -> DeviceInfo:
        v = _fixed(cls.FMT, payload, "DEVICE_GET_INFO")
        flags, num_regions, num_irqs = v["flags"], v["num_regions"], v["num_irqs"]
        if reply:
            _known_flags(flags, DeviceFlag.RESET | DeviceFlag.PCI, "DEVICE_GET_INFO")
            _check(num_regions <= 64 and num_irqs <= 64,
                   f"DEVICE_GET_INFO: {num_regions} regions, {num_irqs} irq types (64 at most)")
        else:
            _check(flags == num_regions == num_irqs == 0, "DEVICE_GET_INFO: request fields besides argsz not zero")
        return cls(**v | {"flags": DeviceFlag(flags)})


@dataclass(frozen=True)
class SparseMmapCap:
    areas: tuple[tuple[int, int], ...]  # (offset, size) pairs inside the region

    #: After the capability header: ``vfio_region_info_cap_sparse_mmap``'s own fields, then the areas.
    HEAD: ClassVar = wire.Layout(nr_areas=wire.UINT32, reserved=wire.UINT32)
    AREA: ClassVar = uapi.SPARSE_MMAP_AREA

    def body(self) -> bytes:
        return self.HEAD.pack(nr_areas=len(self.areas), reserved=0) + b"".join(
            self.AREA.pack(offset=o, size=s) for o, s in self.areas)


@dataclass(frozen=True)
class TypeCap:
    type: int
    subtype: int

    FMT: ClassVar = wire.Layout(type=wire.UINT32, subtype=wire.UINT32)

    def body(self) -> bytes:
        return self.FMT.pack_obj(self)


RegionCap = SparseMmapCap | TypeCap
CAP_HEADER: Final = uapi.INFO_CAP_HEADER  # id, version, next (offset from the region info start)


@dataclass(frozen=True)
class RegionInfo:
    index: int
    flags: RegionFlag = RegionFlag.NONE
    size: int = 0
    offset: int = 0  # mmap offset in the fd passed with the reply
    caps: tuple[RegionCap, ...] = ()
    argsz: int = 32

    FMT: ClassVar = uapi.REGION_INFO

    @classmethod
    def request(cls, index: int, argsz: int = 256) -> RegionInfo:
        return cls(index, argsz=argsz)

    def pack_request(self) -> bytes:
        return self.FMT.pack(argsz=self.argsz, flags=0, index=self.index, cap_offset=0, size=0, offset=0)

    @classmethod
    def unpack_request(cls, payload: bytes) -> RegionInfo:
        v = _fixed(cls.FMT, payload, "DEVICE_GET_REGION_INFO")
        _check(v["flags"] == v["cap_offset"] == v["size"] == v["offset"] == 0,
               "DEVICE_GET_REGION_INFO: request fields besides argsz and index not zero")
        return cls(v["index"], argsz=v["argsz"])

    def pack_reply(self, max_argsz: int) -> bytes:
        """The reply; capabilities only when they fit into the requester's ``argsz`` (as VFIO does)."""
        chain = b""
        flags = self.flags & ~RegionFlag.CAPS
        if self.caps:
            pos = self.FMT.size
            pieces: list[bytes] = []
            for i, cap in enumerate(self.caps):
                cap_id = RegionCapId.SPARSE_MMAP if isinstance(cap, SparseMmapCap) else RegionCapId.TYPE
                body = cap.body()
                nxt = pos + CAP_HEADER.size + len(body) if i + 1 < len(self.caps) else 0
                pieces.append(CAP_HEADER.pack(id=cap_id, version=1, next=nxt) + body)
                pos += CAP_HEADER.size + len(body)
            chain = b"".join(pieces)
            flags |= RegionFlag.CAPS
        full = self.FMT.size + len(chain)
        if full > max_argsz:
            chain = b""
        cap_offset = self.FMT.size if chain else 0
        return self.FMT.pack(argsz=full, flags=flags, index=self.index, cap_offset=cap_offset, size=self.size,
                                offset=self.offset) + chain

    @classmethod
    def unpack_reply(cls, payload: bytes) -> RegionInfo:
        _check(len(payload) >= cls.FMT.size,
               f"DEVICE_GET_REGION_INFO reply: {len(payload)} bytes, at least {cls.FMT.size} expected")
        v = cls.FMT.unpack(payload)
        flags, size = v["flags"], v["size"]
        _known_flags(flags, RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP | RegionFlag.CAPS,
                     "DEVICE_GET_REGION_INFO reply")
        _check(size <= _U64 >> 1, f"DEVICE_GET_REGION_INFO reply: region size {size:#x}")
        caps: list[RegionCap] = []
        if flags & RegionFlag.CAPS and v["cap_offset"] and len(payload) > cls.FMT.size:
            caps = _parse_caps(payload, v["cap_offset"])
        return cls(v["index"], RegionFlag(flags), size, v["offset"], tuple(caps), v["argsz"])


def _parse_caps(payload: bytes, first: int) -> list[RegionCap]:
    caps: list[RegionCap] = []
    pos = first
    while pos:
        # Offsets only move forward: a chain cannot loop.
        _check(pos >= RegionInfo.FMT.size and pos + CAP_HEADER.size <= len(payload),
               f"region capability at offset {pos} outside the {len(payload)}-byte reply")
        head = CAP_HEADER.unpack(payload, pos)
        cap_id, nxt = head["id"], head["next"]
        _check(nxt == 0 or nxt > pos, f"region capability at {pos} links back to {nxt}")
        end = nxt if nxt else len(payload)
        _check(end <= len(payload), f"region capability at {pos} links past the reply ({nxt})")
        body = payload[pos + CAP_HEADER.size:end]
        if cap_id == RegionCapId.SPARSE_MMAP:
            _check(len(body) >= SparseMmapCap.HEAD.size, "sparse mmap capability shorter than its header")
            nr = SparseMmapCap.HEAD.unpack(body)["nr_areas"]
            need = SparseMmapCap.HEAD.size + nr * SparseMmapCap.AREA.size
            _check(len(body) >= need, f"sparse mmap capability: {nr} areas need {need} bytes, {len(body)} given")
            areas = tuple(tuple(SparseMmapCap.AREA.unpack(body, SparseMmapCap.HEAD.size + i * SparseMmapCap.AREA.size)
                                .values()) for i in range(nr))
            caps.append(SparseMmapCap(areas))
        elif cap_id == RegionCapId.TYPE:
            _check(len(body) >= TypeCap.FMT.size, "region type capability shorter than 8 bytes")
            caps.append(TypeCap(**TypeCap.FMT.unpack(body)))
        # other capability ids are skipped: they do not change how the region is accessed
        pos = nxt
    return caps


@dataclass(frozen=True)
class IrqInfo(_Struct):
    index: int
    flags: IrqInfoFlag = IrqInfoFlag.NONE
    count: int = 0
    argsz: int = 16

    FMT: ClassVar = uapi.IRQ_INFO

    @classmethod
    def unpack(cls, payload: bytes, *, reply: bool) -> IrqInfo:
        v = _fixed(cls.FMT, payload, "DEVICE_GET_IRQ_INFO")
        flags, count = v["flags"], v["count"]
        if reply:
            _known_flags(flags, 0xF, "DEVICE_GET_IRQ_INFO")
            _check(count <= 2048, f"DEVICE_GET_IRQ_INFO: {count} interrupts (2048 at most)")
        else:
            _check(flags == count == 0, "DEVICE_GET_IRQ_INFO: request fields besides argsz and index not zero")
        return cls(**v | {"flags": IrqInfoFlag(flags)})


@dataclass(frozen=True)
class IrqSet:
    flags: IrqSetFlag
    index: int
    start: int
    count: int
    data: bytes = b""  # one byte per interrupt with DATA_BOOL

    FMT: ClassVar = uapi.IRQ_SET

    @property
    def data_kind(self) -> IrqSetFlag:
        return self.flags & IRQ_DATA_MASK

    @property
    def action(self) -> IrqSetFlag:
        return self.flags & IRQ_ACTION_MASK

    def pack(self) -> bytes:
        return self.FMT.pack(argsz=self.FMT.size + len(self.data), flags=self.flags, index=self.index,
                                start=self.start, count=self.count) + self.data

    @classmethod
    def unpack(cls, payload: bytes) -> IrqSet:
        v, data = _head(cls.FMT, payload, "DEVICE_SET_IRQS")
        flags, index, start, count = v["flags"], v["index"], v["start"], v["count"]
        _check(v["argsz"] == len(payload), f"DEVICE_SET_IRQS: argsz {v['argsz']} but {len(payload)} bytes of payload")
        _known_flags(flags, IRQ_DATA_MASK | IRQ_ACTION_MASK, "DEVICE_SET_IRQS")
        kinds = [f for f in (IrqSetFlag.DATA_NONE, IrqSetFlag.DATA_BOOL, IrqSetFlag.DATA_EVENTFD) if flags & f]
        actions = [f for f in (IrqSetFlag.ACTION_MASK, IrqSetFlag.ACTION_UNMASK, IrqSetFlag.ACTION_TRIGGER)
                   if flags & f]
        _check(len(kinds) == 1, f"DEVICE_SET_IRQS: flags {flags:#x} name {len(kinds)} data kinds, one expected")
        _check(len(actions) == 1, f"DEVICE_SET_IRQS: flags {flags:#x} name {len(actions)} actions, one expected")
        _check(start + count <= 0xFFFFFFFF, "DEVICE_SET_IRQS: start + count overflows")
        if kinds[0] is IrqSetFlag.DATA_BOOL:
            _check(len(data) == count, f"DEVICE_SET_IRQS: {count} interrupts but {len(data)} bool bytes")
        else:
            _check(not data, f"DEVICE_SET_IRQS: {len(data)} data bytes without DATA_BOOL")
        if count == 0:
            _check(start == 0 and kinds[0] is IrqSetFlag.DATA_NONE and actions[0] is IrqSetFlag.ACTION_TRIGGER,
                   "DEVICE_SET_IRQS: count 0 only as start 0, DATA_NONE|ACTION_TRIGGER (disable the index)")
        return cls(IrqSetFlag(flags), index, start, count, bytes(data))


# ---------------------------------------------------------------------------------------------
# region access


@dataclass(frozen=True)
class RegionAccess:
    """REGION_READ/REGION_WRITE: ``data`` is present in a read reply and a write request."""

    region: int
    offset: int
    count: int
    data: bytes = b""

    FMT: ClassVar = wire.Layout(offset=wire.UINT64, region=wire.UINT32, count=wire.UINT32)

    def pack(self) -> bytes:
        return self.FMT.pack_obj(self) + self.data

    @classmethod
    def unpack(cls, payload: bytes, *, with_data: bool, what: str) -> RegionAccess:
        v, data = _head(cls.FMT, payload, what)
        offset, region, count = v["offset"], v["region"], v["count"]
        if with_data:
            _check(len(data) == count, f"{what}: count {count} but {len(data)} data bytes")
        else:
            _check(not data, f"{what}: {len(data)} unexpected data bytes")
        _check(offset + count - 1 <= _U64 or count == 0, f"{what}: access wraps the 64-bit offset space")
        return cls(region, offset, count, bytes(data))


# ---------------------------------------------------------------------------------------------
# vdpa-bench extensions


@dataclass(frozen=True)
class BenchIoeventfd:
    """Add (one fd) or remove (``REMOVE``, no fd) an ioeventfd: a signal on the fd writes ``datamatch``
    (or 0 without ``DATAMATCH``) of ``width`` bytes at ``offset`` of region ``index``.

    ``cookie`` names the registration (the client's fd number): the server's copy of the fd has
    another number, so removal cannot go by fd.
    """

    flags: IoeventfdFlag
    index: int
    width: int
    offset: int
    datamatch: int
    cookie: int

    FMT: ClassVar = uapi.ARGSZ.extend(index=wire.UINT32, width=wire.UINT32, offset=wire.UINT64,
                                         datamatch=wire.UINT64, cookie=wire.UINT64)

    def pack(self) -> bytes:
        return self.FMT.pack(argsz=self.FMT.size, **{n: getattr(self, n) for n in self.FMT.names[1:]})

    @classmethod
    def unpack(cls, payload: bytes) -> BenchIoeventfd:
        v = _fixed(cls.FMT, payload, "BENCH_IOEVENTFD", argsz_exact=True)
        width, datamatch = v["width"], v["datamatch"]
        _known_flags(v["flags"], IoeventfdFlag.DATAMATCH | IoeventfdFlag.REMOVE, "BENCH_IOEVENTFD")
        _check(width in (1, 2, 4, 8), f"BENCH_IOEVENTFD: width {width} (1, 2, 4 or 8)")
        _check(datamatch >> (8 * width) == 0, f"BENCH_IOEVENTFD: datamatch {datamatch:#x} wider than {width} bytes")
        del v["argsz"]
        return cls(**v | {"flags": IoeventfdFlag(v["flags"])})


@dataclass(frozen=True)
class FaultRecord:
    iova: int
    size: int
    access: int  # DmaPerm bits: 1 device read, 2 device write
    reason: str

    FMT: ClassVar = wire.Layout(iova=wire.UINT64, size=wire.UINT64, access=wire.UINT32, reason_len=wire.UINT32)
    MAX_REASON: ClassVar[int] = 512

    def pack(self) -> bytes:
        reason = self.reason.encode()[:self.MAX_REASON]
        return self.FMT.pack(iova=self.iova, size=self.size, access=self.access, reason_len=len(reason)) + reason


@dataclass(frozen=True)
class BenchDmaFaults:
    """Request: empty body (argsz, flags 0). Reply: the faults drained, ``MORE`` when some did not fit."""

    flags: FaultsFlag = FaultsFlag.NONE
    faults: tuple[FaultRecord, ...] = ()
    argsz: int = 12  # request: the largest reply taken; reply: its size

    REQ: ClassVar = uapi.ARGSZ
    REPLY: ClassVar = uapi.ARGSZ.extend(count=wire.UINT32)

    def pack_request(self) -> bytes:
        return self.REQ.pack(argsz=self.argsz, flags=0)

    @classmethod
    def unpack_request(cls, payload: bytes) -> BenchDmaFaults:
        _exact(payload, cls.REQ.size, "BENCH_DMA_FAULTS")
        v = cls.REQ.unpack(payload)
        _check(v["argsz"] >= cls.REPLY.size, f"BENCH_DMA_FAULTS: argsz {v['argsz']} below {cls.REPLY.size}")
        _check(v["flags"] == 0, f"BENCH_DMA_FAULTS: request flags {v['flags']:#x}")
        return cls(argsz=v["argsz"])

    def pack_reply(self) -> bytes:
        body = b"".join(f.pack() for f in self.faults)
        return self.REPLY.pack(argsz=self.REPLY.size + len(body), flags=self.flags, count=len(self.faults)) + body

    @classmethod
    def unpack_reply(cls, payload: bytes) -> BenchDmaFaults:
        _check(len(payload) >= cls.REPLY.size, f"BENCH_DMA_FAULTS reply: {len(payload)} bytes")
        v = cls.REPLY.unpack(payload)
        argsz, flags = v["argsz"], v["flags"]
        _check(argsz == len(payload), f"BENCH_DMA_FAULTS reply: argsz {argsz} but {len(payload)} bytes")
        _known_flags(flags, FaultsFlag.MORE, "BENCH_DMA_FAULTS reply")
        pos = cls.REPLY.size
        faults: list[FaultRecord] = []
        for i in range(v["count"]):
            _check(pos + FaultRecord.FMT.size <= len(payload), f"BENCH_DMA_FAULTS reply: fault {i} truncated")
            rec = FaultRecord.FMT.unpack(payload, pos)
            iova, size, access, n = rec["iova"], rec["size"], rec["access"], rec["reason_len"]
            pos += FaultRecord.FMT.size
            _check(access in (1, 2), f"BENCH_DMA_FAULTS reply: fault {i} access {access} (1 read, 2 write)")
            _check(n <= FaultRecord.MAX_REASON and pos + n <= len(payload),
                   f"BENCH_DMA_FAULTS reply: fault {i} reason of {n} bytes")
            try:
                reason = payload[pos:pos + n].decode("utf-8")
            except UnicodeDecodeError:
                raise VfioUserProtocolError(f"BENCH_DMA_FAULTS reply: fault {i} reason is not UTF-8") from None
            pos += n
            faults.append(FaultRecord(iova, size, access, reason))
        _check(pos == len(payload), f"BENCH_DMA_FAULTS reply: {len(payload) - pos} trailing bytes")
        return cls(FaultsFlag(flags), tuple(faults), argsz)


class PortOp(IntEnum):
    STATE = 1  # reply: PortState as JSON
    SET_LINK = 2  # arg: 1 up, 0 down
    RECEIVE = 3  # data: one Ethernet frame arriving from the wire


@dataclass(frozen=True)
class BenchPort:
    op: PortOp
    arg: int = 0
    data: bytes = b""

    FMT: ClassVar = wire.Layout(argsz=wire.UINT32, op=wire.UINT32, arg=wire.UINT32)

    def pack(self) -> bytes:
        return self.FMT.pack(argsz=self.FMT.size + len(self.data), op=self.op, arg=self.arg) + self.data

    @classmethod
    def unpack(cls, payload: bytes) -> BenchPort:
        v, data = _head(cls.FMT, payload, "BENCH_PORT")
        op, arg = v["op"], v["arg"]
        _check(v["argsz"] == len(payload), f"BENCH_PORT: argsz {v['argsz']} but {len(payload)} bytes")
        _check(op in PortOp._value2member_map_, f"BENCH_PORT: operation {op}")
        port_op = PortOp(op)
        if port_op is PortOp.SET_LINK:
            _check(arg in (0, 1), f"BENCH_PORT SET_LINK: {arg} (0 down, 1 up)")
        else:
            _check(arg == 0, f"BENCH_PORT {port_op.name}: argument {arg} (none taken)")
        _check(bool(data) == (port_op is PortOp.RECEIVE), f"BENCH_PORT {port_op.name}: {len(data)} data bytes")
        return cls(port_op, arg, bytes(data))


@dataclass(frozen=True)
class PortState:
    """The bench's view of the device: link, MAC, and the driver errors it logged (oldest first)."""

    link_up: bool
    mac: bytes
    errors: tuple[str, ...] = ()

    def pack(self) -> bytes:
        return json.dumps({"link_up": self.link_up, "mac": self.mac.hex(), "errors": list(self.errors)}).encode()

    @classmethod
    def unpack(cls, payload: bytes) -> PortState:
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise VfioUserProtocolError(f"BENCH_PORT state is not UTF-8 JSON: {exc}") from None
        _check(isinstance(doc, dict), "BENCH_PORT state is not a JSON object")
        link, mac, errors = doc.get("link_up"), doc.get("mac"), doc.get("errors")
        _check(isinstance(link, bool), f"BENCH_PORT state: link_up {link!r}")
        _check(isinstance(mac, str) and len(mac) == 12, f"BENCH_PORT state: mac {mac!r}")
        try:
            raw = bytes.fromhex(str(mac))
        except ValueError:
            raise VfioUserProtocolError(f"BENCH_PORT state: mac {mac!r} is not hex") from None
        _check(isinstance(errors, list) and all(isinstance(e, str) for e in errors),
               "BENCH_PORT state: errors is not a list of strings")
        assert isinstance(errors, list)
        return cls(bool(link), raw, tuple(errors))


# ---------------------------------------------------------------------------------------------
# socket transport


@dataclass
class Message:
    """One received message; the receiver owns ``fds`` (close what it does not keep)."""

    header: Header
    payload: bytes
    fds: list[int] = field(default_factory=list)

    def close_fds(self) -> None:
        fds = list(self.fds)
        self.fds.clear()
        close_fds(fds)

    def take_fd(self) -> int:
        return self.fds.pop(0)


def recv_message(sock: socket.socket, *, max_size: int, max_fds: int) -> Message:
    """One message and every fd that came with it (header and payload), through :class:`FdChannel`.

    On a protocol error (more than ``max_fds`` fds included) the fds are closed and
    :class:`VfioUserProtocolError` is raised; the stream cannot be trusted after it. A close
    raises :class:`ConnectionClosed` (``partial`` inside a message).
    """
    chan = FdChannel(sock, max_fds=max_fds)
    with owned_fds() as fds:
        try:
            raw = chan.recv_exact(HEADER_SIZE, fds)
            header = Header.unpack(raw, max_size=max_size)
            payload = chan.recv_exact(header.payload_size, fds, started=True) if header.payload_size else b""
        except PeerClosed as exc:
            raise ConnectionClosed(str(exc), partial=exc.partial) from None
        except ControlTruncated as exc:
            raise VfioUserProtocolError(str(exc)) from None
        return Message(header, payload, fds)


def send_message(sock: socket.socket, header: Header, payload: bytes = b"", fds: Sequence[int] = ()) -> None:
    """Send header + payload; the fds go with its first byte."""
    FdChannel(sock, max_fds=len(fds)).send(header.pack() + payload, fds)


def command(msg_id: int, cmd: int, payload: bytes = b"", *, no_reply: bool = False) -> Header:
    return Header(msg_id, cmd, HEADER_SIZE + len(payload), MsgType.COMMAND, no_reply=no_reply)


def reply(to: Header, payload: bytes = b"", *, errno: int = 0, error: bool = False) -> Header:
    """Reply header to ``to``: an error reply carries no payload (the specification's rule)."""
    if error or errno:
        return Header(to.msg_id, to.command, HEADER_SIZE, MsgType.REPLY, error=True, errno=errno)
    return Header(to.msg_id, to.command, HEADER_SIZE + len(payload), MsgType.REPLY)
