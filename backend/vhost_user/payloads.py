"""vhost-user payloads: one frozen dataclass per body layout, each declared as its C struct.

Fields annotated ``wire.U32``/``wire.U64``/... are the struct (:class:`backend.wire.Record`): the
layout, the range checks, ``pack`` and ``unpack`` come from those annotations, so a class spells
out only what the wire format adds to its struct: fixed values the spec checks (the vring index and
no-fd word, IOTLB type and permissions, config flags, device-state enums, status byte), a variable
part, or the trace names the capture files use. Meaning that depends on session state (is this
feature negotiated, is this ring index in range) is left to the session layer.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Annotated, ClassVar, Final, Self, TypeAlias, cast

from backend import wire
from backend.vhost_user.protocol import (
    MAX_CONFIG_SIZE,
    MAX_MEM_REGIONS,
    MAX_PAYLOAD_SIZE,
    MAX_SHMEM_REGIONS,
    VHOST_VRING_F_LOG,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    PayloadKind,
    VhostUserProtocolError,
    vring_index,
    vring_nofd,
    vring_word,
)

Raw: TypeAlias = bytes | bytearray | memoryview


def _check_uint(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise VhostUserProtocolError(f"{name}={value} does not fit u{bits}")


_WORD: Final = wire.Layout(word=wire.UINT64)


class _Checked(wire.Record):
    """A record whose every struct field must fit its C type when it is built."""

    __slots__ = ()

    def __post_init__(self) -> None:
        if (reason := self.LAYOUT.out_of_range(self)) is not None:
            raise VhostUserProtocolError(reason)


class _Payload(_Checked):
    """A message body: its :class:`PayloadKind`, wire size, decoder and trace fields.

    ``TRACE_NAMES`` renames fields in :meth:`fields` where the capture files avoid a header key
    (``flags``, ``size``) or use the spec's short name.
    """

    __slots__ = ()
    KIND: ClassVar[PayloadKind]
    TRACE_NAMES: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def wire_size(cls, xen_mmap: bool) -> int | None:
        """Bytes on the wire, or None for a variable-size body."""
        return cls.LAYOUT.size

    @classmethod
    def decode(cls, raw: bytes, xen_mmap: bool) -> Self:
        return cls.unpack(raw)

    def fields(self) -> dict[str, object]:
        return {self.TRACE_NAMES.get(name, name): int(getattr(self, name)) for name in self.LAYOUT.fields}


class FdWord(_Payload):
    """A body led by a u64 with a byte in bits 0-7 (the field named ``LOW``: a ring index, an error code) and
    bit 8 set when no fd travels with the message (``nofd``); bits 9-63 are reserved. SET_VRING_KICK/CALL/ERR,
    the vring area, the device state reply."""

    __slots__ = ()
    WHAT: ClassVar[str]
    LOW: ClassVar[str]
    nofd: bool

    @property
    def low(self) -> int:
        value: int = getattr(self, self.LOW)
        return value

    @property
    def word(self) -> int:
        return vring_word(self.low, self.nofd)

    @classmethod
    def split_word(cls, raw: Raw) -> tuple[int, bool]:
        """``low`` and ``nofd`` of the word leading ``raw``."""
        word: int = _WORD.unpack(raw)["word"]
        if word & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise VhostUserProtocolError(f"{cls.WHAT} 0x{word:x} has reserved bits 9-63 set")
        return vring_index(word), vring_nofd(word)

    @classmethod
    def unpack(cls, raw: Raw) -> Self:
        low, nofd = cls.split_word(raw)
        return cls(**{cls.LOW: low, "nofd": nofd})

    def fields(self) -> dict[str, object]:
        return {self.LOW: self.low, "nofd": self.nofd}


@dataclass(frozen=True, slots=True)
class Empty(_Payload):
    KIND: ClassVar[PayloadKind] = PayloadKind.EMPTY
    LAYOUT: ClassVar[wire.Layout] = wire.Layout()


@dataclass(frozen=True, slots=True)
class _Word(_Payload):
    """A body that is one u64 holding a ``BITS``-bit value, traced as ``NAME``."""

    NAME: ClassVar[str]
    BITS: ClassVar[int] = 64
    value: wire.U64

    def __post_init__(self) -> None:
        _check_uint(self.NAME, self.value, self.BITS)

    def fields(self) -> dict[str, object]:
        return {self.NAME: self.value}


@dataclass(frozen=True, slots=True)
class U64(_Word):
    """A plain u64: feature masks, queue count, MTU, acks (0 = success), session id ..."""

    KIND: ClassVar[PayloadKind] = PayloadKind.U64
    NAME: ClassVar[str] = "u64"


@dataclass(frozen=True, slots=True)
class Status(_Word):
    """Virtio device status byte carried in a u64 (SET_STATUS request, GET_STATUS reply)."""

    KIND: ClassVar[PayloadKind] = PayloadKind.STATUS
    NAME: ClassVar[str] = "status"
    BITS: ClassVar[int] = 8

    @classmethod
    def unpack(cls, raw: Raw) -> Self:
        word = _WORD.unpack(raw)["word"]
        if word > 0xFF:
            raise VhostUserProtocolError(f"status 0x{word:x} has bits above the status byte set")
        return cls(word)


@dataclass(frozen=True, slots=True)
class VringState(_Payload):
    """``index`` u32, ``num`` u32: ring size, enable, endian, and the SET/GET_VRING_BASE indices."""

    KIND: ClassVar[PayloadKind] = PayloadKind.VRING_STATE
    index: wire.U32
    num: wire.U32

    # SET/GET_VRING_BASE: split rings use bits 0-15 of num; packed rings pack both indices + wraps.
    @property
    def split_avail_idx(self) -> int:
        return self.num & 0xFFFF

    @property
    def packed_avail_idx(self) -> int:
        return self.num & 0x7FFF

    @property
    def packed_avail_wrap(self) -> bool:
        return bool(self.num & (1 << 15))

    @property
    def packed_used_idx(self) -> int:
        return (self.num >> 16) & 0x7FFF

    @property
    def packed_used_wrap(self) -> bool:
        return bool(self.num & (1 << 31))

    @classmethod
    def packed_base(cls, index: int, avail_idx: int, avail_wrap: bool, used_idx: int, used_wrap: bool) -> VringState:
        for name, v in (("avail_idx", avail_idx), ("used_idx", used_idx)):
            if not 0 <= v <= 0x7FFF:
                raise VhostUserProtocolError(f"packed {name}={v} does not fit 15 bits")
        num = avail_idx | (int(avail_wrap) << 15) | (used_idx << 16) | (int(used_wrap) << 31)
        return cls(index, num)


@dataclass(frozen=True, slots=True)
class VringFile(FdWord):
    """u64 of SET_VRING_KICK/CALL/ERR: ring index in bits 0-7, bit 8 = no fd (poll)."""

    KIND: ClassVar[PayloadKind] = PayloadKind.VRING_FILE
    LAYOUT: ClassVar[wire.Layout] = _WORD
    WHAT: ClassVar[str] = "vring fd word"
    LOW: ClassVar[str] = "index"
    index: int
    nofd: bool = False


@dataclass(frozen=True, slots=True)
class VringAddr(_Payload):
    """struct vhost_vring_addr, 40 bytes: index, flags (bit 0 = log used ring), desc, used, avail, log.

    The doc's table shows a ``size`` column that neither the field list nor the C struct has.
    """

    KIND: ClassVar[PayloadKind] = PayloadKind.VRING_ADDR
    TRACE_NAMES: ClassVar[Mapping[str, str]] = {"flags": "vring_flags"}  # "flags" is the header's
    index: wire.U32
    flags: wire.U32
    desc: wire.U64
    used: wire.U64
    avail: wire.U64
    log: wire.U64

    log_used = wire.FlagBit(1 << VHOST_VRING_F_LOG)


@dataclass(frozen=True, slots=True)
class XenMmap(_Checked):
    """Extra region fields with VHOST_USER_PROTOCOL_F_XEN_MMAP: flags (bit 0 foreign, 1 grant, 8 map on demand)."""

    flags: wire.U32
    domid: wire.U32


@dataclass(frozen=True, slots=True)
class MemoryRegion(_Checked):
    guest_phys_addr: wire.U64
    memory_size: wire.U64
    userspace_addr: wire.U64
    mmap_offset: wire.U64
    xen: XenMmap | None = None

    @classmethod
    def wire_size(cls, xen_mmap: bool) -> int:
        return cls.LAYOUT.size + (XenMmap.LAYOUT.size if xen_mmap else 0)

    def pack(self) -> bytes:
        return self.LAYOUT.pack_obj(self) + (self.xen.pack() if self.xen is not None else b"")

    @classmethod
    def unpack(cls, raw: Raw, offset: int = 0, xen_mmap: bool = False) -> Self:
        xen = XenMmap(**XenMmap.LAYOUT.unpack(raw, offset + cls.LAYOUT.size)) if xen_mmap else None
        return cls(**cls.LAYOUT.unpack(raw, offset), xen=xen)

    def fields(self) -> dict[str, object]:
        out: dict[str, object] = {"gpa": self.guest_phys_addr, "size": self.memory_size,
                                  "uva": self.userspace_addr, "mmap_offset": self.mmap_offset}
        if self.xen is not None:
            out["xen_flags"] = self.xen.flags
            out["xen_domid"] = self.xen.domid
        return out

    def brief(self) -> str:
        text = (f"gpa=0x{self.guest_phys_addr:x} size=0x{self.memory_size:x} "
                f"uva=0x{self.userspace_addr:x} off=0x{self.mmap_offset:x}")
        if self.xen is not None:
            text += f" xen_flags=0x{self.xen.flags:x} domid={self.xen.domid}"
        return text


def _uniform_xen(regions: Sequence[MemoryRegion]) -> bool:
    kinds = {r.xen is not None for r in regions}
    if len(kinds) > 1:
        raise VhostUserProtocolError("regions mix the Xen and the plain layout")
    return kinds == {True}


_TABLE_HDR: Final = wire.Layout(nregions=wire.UINT32, padding=wire.UINT32)


@dataclass(frozen=True, slots=True)
class MemoryTable(_Payload):
    """SET_MEM_TABLE: u32 nregions, u32 padding, then 1..8 regions (size = 8 + nregions * region size).

    Eight payload bytes alone are the postcopy acknowledgement (a u64), not an empty table.
    """

    KIND: ClassVar[PayloadKind] = PayloadKind.MEMORY_TABLE
    regions: tuple[MemoryRegion, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.regions) <= MAX_MEM_REGIONS:
            raise VhostUserProtocolError(f"memory table has {len(self.regions)} regions, must be 1..{MAX_MEM_REGIONS}")
        _uniform_xen(self.regions)

    @property
    def nregions(self) -> int:
        return len(self.regions)

    @classmethod
    def wire_size(cls, xen_mmap: bool) -> None:
        return None

    def pack(self) -> bytes:
        return _TABLE_HDR.pack(nregions=len(self.regions), padding=0) + b"".join(r.pack() for r in self.regions)

    @classmethod
    def decode(cls, raw: bytes, xen_mmap: bool) -> Self:
        return cls.unpack(raw, xen_mmap)

    @classmethod
    def unpack(cls, raw: Raw, xen_mmap: bool = False) -> Self:
        if len(raw) < _TABLE_HDR.size:
            raise VhostUserProtocolError(f"memory table of {len(raw)} bytes is shorter than its 8-byte header")
        nregions = _TABLE_HDR.unpack(raw)["nregions"]
        if not 1 <= nregions <= MAX_MEM_REGIONS:
            raise VhostUserProtocolError(f"memory table nregions={nregions}, must be 1..{MAX_MEM_REGIONS}")
        rsize = MemoryRegion.wire_size(xen_mmap)
        want = _TABLE_HDR.size + nregions * rsize
        if len(raw) != want:
            raise VhostUserProtocolError(
                f"memory table size {len(raw)} does not match nregions={nregions} ({want} bytes expected)")
        return cls(tuple(MemoryRegion.unpack(raw, _TABLE_HDR.size + i * rsize, xen_mmap) for i in range(nregions)))

    def fields(self) -> dict[str, object]:
        return {"nregions": self.nregions, "regions": [r.fields() for r in self.regions]}


@dataclass(frozen=True, slots=True)
class SingleMemoryRegion(_Payload):
    """ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region."""

    KIND: ClassVar[PayloadKind] = PayloadKind.SINGLE_REGION
    region: MemoryRegion

    def __post_init__(self) -> None:
        pass  # the region checked itself

    @classmethod
    def wire_size(cls, xen_mmap: bool) -> int:
        return _WORD.size + MemoryRegion.wire_size(xen_mmap)

    def pack(self) -> bytes:
        return _WORD.pack(word=0) + self.region.pack()

    @classmethod
    def decode(cls, raw: bytes, xen_mmap: bool) -> Self:
        return cls.unpack(raw, xen_mmap)

    @classmethod
    def unpack(cls, raw: Raw, xen_mmap: bool = False) -> Self:
        return cls(MemoryRegion.unpack(raw, _WORD.size, xen_mmap))

    def fields(self) -> dict[str, object]:
        return {"region": self.region.fields()}


@dataclass(frozen=True, slots=True)
class LogDescription(_Payload):
    """SET_LOG_BASE with LOG_SHMFD: mmap size and offset of the shared dirty log."""

    KIND: ClassVar[PayloadKind] = PayloadKind.LOG
    mmap_size: wire.U64
    mmap_offset: wire.U64


class IotlbType(IntEnum):
    MISS = 1
    UPDATE = 2
    INVALIDATE = 3
    ACCESS_FAIL = 4


class IotlbPerm(IntFlag):
    NONE = 0
    RO = 1
    WO = 2
    RW = 3


@dataclass(frozen=True, slots=True)
class IotlbMsg(_Payload):
    """struct vhost_iotlb_msg (32 bytes with its C padding)."""

    KIND: ClassVar[PayloadKind] = PayloadKind.IOTLB
    TRACE_NAMES: ClassVar[Mapping[str, str]] = {"size": "iotlb_size"}
    iova: wire.U64
    size: wire.U64
    uaddr: wire.U64
    perm: Annotated[IotlbPerm, wire.UINT8]
    type: Annotated[IotlbType, wire.UINT8]

    def __post_init__(self) -> None:
        _Checked.__post_init__(self)
        if int(self.perm) not in (0, 1, 2, 3):
            raise VhostUserProtocolError(f"IOTLB permission {int(self.perm)} is not 0..3")
        if int(self.type) not in (1, 2, 3, 4):
            raise VhostUserProtocolError(f"IOTLB type {int(self.type)} is not 1..4")

    @classmethod
    def unpack(cls, raw: Raw) -> Self:
        v = cls.LAYOUT.unpack(raw)
        if v["perm"] > 3:
            raise VhostUserProtocolError(f"IOTLB permission {v['perm']} is not 0..3")
        if v["type"] not in IotlbType._value2member_map_:
            raise VhostUserProtocolError(
                f"IOTLB type {v['type']} is not 1 (miss), 2 (update), 3 (invalidate), 4 (fail)")
        return cls(**v | {"perm": IotlbPerm(v["perm"]), "type": IotlbType(v["type"])})


class ConfigFlags(IntEnum):
    WRITABLE = 0  # front-end writes to writable fields
    MIGRATION = 1  # live migration: read-only fields may be written


_CONFIG_HDR: Final = wire.Layout(offset=wire.UINT32, size=wire.UINT32, flags=wire.UINT32)


@dataclass(frozen=True, slots=True)
class ConfigSpace(_Payload):
    """GET/SET_CONFIG: u32 offset, u32 size, u32 flags, then ``size`` (<= 256) bytes of config space."""

    KIND: ClassVar[PayloadKind] = PayloadKind.CONFIG
    offset: int
    flags: ConfigFlags
    data: bytes

    def __post_init__(self) -> None:
        _check_uint("offset", self.offset, 32)
        if len(self.data) > MAX_CONFIG_SIZE:
            raise VhostUserProtocolError(f"config size {len(self.data)} exceeds {MAX_CONFIG_SIZE}")
        if int(self.flags) not in (0, 1):
            raise VhostUserProtocolError(f"config flags {int(self.flags)} is not 0 (writable) or 1 (migration)")

    @classmethod
    def wire_size(cls, xen_mmap: bool) -> None:
        return None

    def pack(self) -> bytes:
        return _CONFIG_HDR.pack(offset=self.offset, size=len(self.data), flags=self.flags) + self.data

    @classmethod
    def unpack(cls, raw: Raw) -> Self:
        if len(raw) < _CONFIG_HDR.size:
            raise VhostUserProtocolError(f"config payload of {len(raw)} bytes is shorter than its 12-byte header")
        head = _CONFIG_HDR.unpack(raw)
        size, flags = head["size"], head["flags"]
        if size > MAX_CONFIG_SIZE:
            raise VhostUserProtocolError(f"config size {size} exceeds {MAX_CONFIG_SIZE}")
        if len(raw) != _CONFIG_HDR.size + size:
            raise VhostUserProtocolError(f"config payload is {len(raw)} bytes but its size field says 12+{size}")
        if flags not in (0, 1):
            raise VhostUserProtocolError(f"config flags {flags} is not 0 (writable) or 1 (migration)")
        return cls(head["offset"], ConfigFlags(flags), bytes(raw[_CONFIG_HDR.size:]))

    def fields(self) -> dict[str, object]:
        return {"offset": self.offset, "config_size": len(self.data), "config_flags": int(self.flags),
                "data": self.data.hex()}


@dataclass(frozen=True, slots=True)
class VringArea(FdWord):
    """BACKEND_VRING_HOST_NOTIFIER_MSG: u64 (index bits 0-7, bit 8 = no fd: de-register), size, offset."""

    KIND: ClassVar[PayloadKind] = PayloadKind.VRING_AREA
    LAYOUT: ClassVar[wire.Layout] = _WORD.extend(size=wire.UINT64, offset=wire.UINT64)
    WHAT: ClassVar[str] = "vring area word"
    LOW: ClassVar[str] = "index"
    index: int
    size: int
    offset: int
    nofd: bool = False

    @classmethod
    def unpack(cls, raw: Raw) -> Self:
        v = cls.LAYOUT.unpack(raw)
        index, nofd = cls.split_word(raw)
        return cls(index, v["size"], v["offset"], nofd)

    def fields(self) -> dict[str, object]:
        return FdWord.fields(self) | {"area_size": self.size, "offset": self.offset}  # no super(): slots=True


@dataclass(frozen=True, slots=True)
class Inflight(_Payload):
    KIND: ClassVar[PayloadKind] = PayloadKind.INFLIGHT
    mmap_size: wire.U64
    mmap_offset: wire.U64
    num_queues: wire.U16
    queue_size: wire.U16


@dataclass(frozen=True, slots=True)
class SharedObject(_Payload):
    """VhostUserShared: a 16-byte UUID in RFC byte order (first three groups big-endian)."""

    KIND: ClassVar[PayloadKind] = PayloadKind.SHARED_OBJECT
    LAYOUT: ClassVar[wire.Layout] = wire.Layout(uuid=wire.Array(wire.UINT8, 16))
    uuid: uuid.UUID

    def __post_init__(self) -> None:
        pass  # a UUID is 16 bytes by construction

    def pack(self) -> bytes:
        return self.uuid.bytes

    @classmethod
    def unpack(cls, raw: Raw) -> Self:
        return cls(uuid.UUID(bytes=bytes(raw)))

    def fields(self) -> dict[str, object]:
        return {"uuid": str(self.uuid)}


class TransferDirection(IntEnum):
    SAVE = 0
    LOAD = 1


class MigrationPhase(IntEnum):
    STOPPED = 0


@dataclass(frozen=True, slots=True)
class DeviceStateTransfer(_Payload):
    """SET_DEVICE_STATE_FD request: u32 direction (0 save, 1 load), u32 phase (0 stopped)."""

    KIND: ClassVar[PayloadKind] = PayloadKind.DEVICE_STATE
    LAYOUT: ClassVar[wire.Layout] = wire.Layout(direction=wire.UINT32, phase=wire.UINT32)
    direction: TransferDirection
    phase: MigrationPhase = MigrationPhase.STOPPED

    def __post_init__(self) -> None:
        self._check(int(self.direction), int(self.phase))

    @staticmethod
    def _check(direction: int, phase: int) -> None:
        if direction not in (0, 1):
            raise VhostUserProtocolError(f"transfer direction {direction} is not 0 (save) or 1 (load)")
        if phase != 0:
            raise VhostUserProtocolError(f"migration phase {phase} is not 0 (stopped)")

    @classmethod
    def unpack(cls, raw: Raw) -> Self:
        v = cls.LAYOUT.unpack(raw)
        cls._check(v["direction"], v["phase"])
        return cls(TransferDirection(v["direction"]), MigrationPhase(v["phase"]))


@dataclass(frozen=True, slots=True)
class DeviceStateResult(FdWord):
    """SET_DEVICE_STATE_FD reply u64: bits 0-7 error (0 = ok), bit 8 = no fd returned."""

    KIND: ClassVar[PayloadKind] = PayloadKind.DEVICE_STATE_RESULT
    LAYOUT: ClassVar[wire.Layout] = _WORD
    WHAT: ClassVar[str] = "device state reply"
    LOW: ClassVar[str] = "error"
    error: int
    nofd: bool = True

    def __post_init__(self) -> None:
        _check_uint("error", self.error, 8)
        if self.error and not self.nofd:
            raise VhostUserProtocolError("device state reply reports an error and returns an fd")


@dataclass(frozen=True, slots=True)
class ShmemConfig(_Payload):
    """GET_SHMEM_CONFIG reply (uncertain): u32 nregions, u32 pad, 256 u64 region sizes indexed by shmid."""

    KIND: ClassVar[PayloadKind] = PayloadKind.SHMEM_CONFIG
    LAYOUT: ClassVar[wire.Layout] = _TABLE_HDR.extend(memory_sizes=wire.Array(wire.UINT64, MAX_SHMEM_REGIONS))
    nregions: int
    memory_sizes: tuple[int, ...] = field(default=(0,) * MAX_SHMEM_REGIONS)

    def __post_init__(self) -> None:
        if not 0 <= self.nregions <= MAX_SHMEM_REGIONS:
            raise VhostUserProtocolError(f"shmem nregions={self.nregions} exceeds {MAX_SHMEM_REGIONS}")
        if len(self.memory_sizes) != MAX_SHMEM_REGIONS:
            raise VhostUserProtocolError(f"shmem config needs {MAX_SHMEM_REGIONS} sizes, got {len(self.memory_sizes)}")
        for i, v in enumerate(self.memory_sizes):
            _check_uint(f"memory_sizes[{i}]", v, 64)

    def pack(self) -> bytes:
        return self.LAYOUT.pack(nregions=self.nregions, padding=0, memory_sizes=self.memory_sizes)

    @classmethod
    def unpack(cls, raw: Raw) -> Self:
        v = cls.LAYOUT.unpack(raw)
        return cls(v["nregions"], v["memory_sizes"])

    def fields(self) -> dict[str, object]:
        return {"nregions": self.nregions, "memory_sizes": {i: s for i, s in enumerate(self.memory_sizes) if s}}


@dataclass(frozen=True, slots=True)
class ShmemMap(_Payload):
    """VhostUserMMap (uncertain): u8 shmid, 7 pad, u64 fd_offset, shm_offset, len, flags.

    Revisions of the series disagree on ``flags`` (bit 0 = rw, or bit 0 = read / bit 1 = write), so it
    is kept raw.
    """

    KIND: ClassVar[PayloadKind] = PayloadKind.SHMEM_MMAP
    TRACE_NAMES: ClassVar[Mapping[str, str]] = {"length": "len", "flags": "mmap_flags"}
    shmid: wire.U8
    fd_offset: wire.U64
    shm_offset: wire.U64
    length: wire.U64
    flags: wire.U64 = 0


@dataclass(frozen=True, slots=True)
class CryptoSession(_Payload):
    """CREATE_CRYPTO_SESSION body, kept opaque: its layout is QEMU's C struct, not described by the doc."""

    KIND: ClassVar[PayloadKind] = PayloadKind.CRYPTO_SESSION
    data: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.data) <= MAX_PAYLOAD_SIZE:
            raise VhostUserProtocolError(f"crypto session body of {len(self.data)} bytes")

    @classmethod
    def wire_size(cls, xen_mmap: bool) -> None:
        return None

    def pack(self) -> bytes:
        return self.data

    @classmethod
    def unpack(cls, raw: Raw) -> Self:
        return cls(bytes(raw))

    def fields(self) -> dict[str, object]:
        return {"data": self.data.hex()}


Payload: TypeAlias = (Empty | U64 | Status | VringState | VringFile | VringAddr | MemoryTable | SingleMemoryRegion
                      | LogDescription | IotlbMsg | ConfigSpace | VringArea | Inflight | SharedObject
                      | DeviceStateTransfer | DeviceStateResult | ShmemConfig | ShmemMap | CryptoSession)

EMPTY: Final = Empty()

#: The class of each payload kind.
PAYLOAD_TYPES: Final[Mapping[PayloadKind, type[_Payload]]] = {
    cls.KIND: cls for cls in (Empty, U64, Status, VringState, VringFile, VringAddr, MemoryTable, SingleMemoryRegion,
                               LogDescription, IotlbMsg, ConfigSpace, VringArea, Inflight, SharedObject,
                               DeviceStateTransfer, DeviceStateResult, ShmemConfig, ShmemMap, CryptoSession)
}


def wire_size(kind: PayloadKind, xen_mmap: bool) -> int | None:
    """Bytes a payload of ``kind`` takes on the wire, or None where its size varies."""
    return PAYLOAD_TYPES[kind].wire_size(xen_mmap)


def decode_payload(kind: PayloadKind, raw: bytes, xen_mmap: bool) -> Payload:
    return cast(Payload, PAYLOAD_TYPES[kind].decode(raw, xen_mmap))
