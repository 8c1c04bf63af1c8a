"""vhost-user wire format: every front-end and back-end request, their payloads, and strict validation.

A message is a 12-byte header (``request``, ``flags``, ``size``: three little-endian u32) followed by
``size`` payload bytes; file descriptors travel beside it as SCM_RIGHTS ancillary data.  The same
request numbers are reused by the two channels: the main socket carries front-end requests (and the
back-end's replies), the channel installed by ``SET_BACKEND_REQ_FD`` carries back-end requests (and
the front-end's replies), so decoding needs to know the :class:`Channel`.

Entry points:

* :func:`parse_header` validates a header before its payload is read (request number, version,
  flag bits, size bound), so a server never reads an absurd ``size``;
* :func:`decode` turns header + payload bytes + received fds into a :class:`Message`, or raises
  :class:`VhostUserProtocolError` with a reason;
* :meth:`Message.encode` gives the bytes to send and the fds to pass beside them.

Values follow QEMU ``docs/interop/vhost-user.rst``; the shared-memory additions (``GET_SHMEM_CONFIG``,
``BACKEND_SHMEM_MAP``/``UNMAP``, protocol bit 20) come from a later series and are flagged in
:data:`UNCERTAIN_FRONTEND_REQUESTS`, :data:`UNCERTAIN_BACKEND_REQUESTS` and
:data:`UNCERTAIN_PROTOCOL_FEATURES`.  Payloads whose fields are fixed by the wire format (the vring
index/no-fd word, IOTLB type and permissions, config flags, device-state enums, status byte) are
checked here; meaning that depends on session state (is this feature negotiated, is this ring
index in range) is left to the session layer.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum, IntFlag
from typing import ClassVar, Final, TypeAlias

from scapy.fields import FlagsField, LEIntEnumField, LEIntField
from scapy.packet import Packet, Raw

from backend.virtio.features import DeviceStatus

# ---------------------------------------------------------------------------------------------
# numbers


class VhostUserProtocolError(Exception):
    """A message that is not valid vhost-user on the wire; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrontendRequest(IntEnum):
    """Requests the front-end sends on the main socket (``VHOST_USER_`` prefix dropped)."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    SET_SLAVE_REQ_FD = 21  # former name, an alias
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43
    GET_SHMEM_CONFIG = 44

    @property
    def wire_name(self) -> str:
        return f"VHOST_USER_{self.name}"


class BackendRequest(IntEnum):
    """Requests the back-end sends on the back-end channel (``VHOST_USER_BACKEND_`` prefix dropped)."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5
    SHARED_OBJECT_ADD = 6
    SHARED_OBJECT_REMOVE = 7
    SHARED_OBJECT_LOOKUP = 8
    SHMEM_MAP = 9
    SHMEM_UNMAP = 10

    @property
    def wire_name(self) -> str:
        return f"VHOST_USER_BACKEND_{self.name}"


Request: TypeAlias = FrontendRequest | BackendRequest


class ProtocolFeature(IntEnum):
    """Protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES); :attr:`mask` gives the bit value."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    NET_MTU = 4  # the body text's spelling of the same bit
    BACKEND_REQ = 5
    SLAVE_REQ = 5  # former name
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    SLAVE_SEND_FD = 10  # former name
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17
    SHARED_OBJECT = 18
    DEVICE_STATE = 19
    SHMEM = 20  # uncertain: see UNCERTAIN_PROTOCOL_FEATURES

    @property
    def mask(self) -> int:
        return 1 << self.value


#: Entries that come from a later, not yet cross-checked series (see the spec CSV ``source`` column).
#: Bit 20 is also claimed by an unmerged GET_VRING_BASE_INFLIGHT series.
UNCERTAIN_PROTOCOL_FEATURES: Final = frozenset({ProtocolFeature.SHMEM})
UNCERTAIN_FRONTEND_REQUESTS: Final = frozenset({FrontendRequest.GET_SHMEM_CONFIG})
UNCERTAIN_BACKEND_REQUESTS: Final = frozenset({BackendRequest.SHMEM_MAP, BackendRequest.SHMEM_UNMAP})

#: Virtio feature bit (GET/SET_FEATURES) that enables protocol-feature negotiation.
VHOST_USER_F_PROTOCOL_FEATURES: Final = 30
#: vhost feature bit (GET/SET_FEATURES) that turns dirty logging on (linux vhost_types.h).
VHOST_F_LOG_ALL: Final = 26


class HeaderFlag(IntFlag):
    VERSION = 0x1
    REPLY = 0x4
    NEED_REPLY = 0x8


class Channel(Enum):
    """Which request numbering a socket uses."""

    MAIN = "main"  # front-end requests, back-end replies
    BACKEND = "backend"  # back-end requests (SET_BACKEND_REQ_FD channel), front-end replies


HEADER: Final = struct.Struct("<III")
HEADER_SIZE: Final = HEADER.size
VERSION_MASK: Final = 0x3
PROTOCOL_VERSION: Final = 0x1
KNOWN_FLAG_BITS: Final = VERSION_MASK | int(HeaderFlag.REPLY) | int(HeaderFlag.NEED_REPLY)
#: Largest payload any known message has (GET_SHMEM_CONFIG reply, 2056 bytes), rounded up.
MAX_PAYLOAD_SIZE: Final = 4096
#: At most this many fds travel with one message (memory table limit; back-end channel limit).
MAX_FDS: Final = 8
MAX_MEM_REGIONS: Final = 8
MAX_CONFIG_SIZE: Final = 256
MAX_SHMEM_REGIONS: Final = 256

VRING_IDX_MASK: Final = 0xFF
VRING_NOFD_MASK: Final = 1 << 8
VHOST_VRING_F_LOG: Final = 0  # bit number in VringAddr.flags


def vring_index(word: int) -> int:
    """Ring index (bits 0-7) of a SET_VRING_KICK/CALL/ERR or vring-area u64."""
    return word & VRING_IDX_MASK


def vring_nofd(word: int) -> bool:
    """The invalid-fd flag (bit 8): no fd travels with the message."""
    return bool(word & VRING_NOFD_MASK)


def vring_word(index: int, nofd: bool) -> int:
    if not 0 <= index <= VRING_IDX_MASK:
        raise VhostUserProtocolError(f"vring index {index} does not fit bits 0-7")
    return index | (VRING_NOFD_MASK if nofd else 0)


def _check_uint(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise VhostUserProtocolError(f"{name}={value} does not fit u{bits}")


def _check_fields(obj: object, spec: Sequence[tuple[str, int]]) -> None:
    for name, bits in spec:
        _check_uint(name, getattr(obj, name), bits)


# ---------------------------------------------------------------------------------------------
# payloads


class PayloadKind(Enum):
    EMPTY = "empty"
    U64 = "u64"
    STATUS = "status"
    VRING_STATE = "vring_state"
    VRING_FILE = "vring_file"
    VRING_ADDR = "vring_addr"
    MEMORY_TABLE = "memory_table"
    SINGLE_REGION = "single_region"
    LOG = "log"
    IOTLB = "iotlb"
    CONFIG = "config"
    VRING_AREA = "vring_area"
    INFLIGHT = "inflight"
    SHARED_OBJECT = "shared_object"
    DEVICE_STATE = "device_state"
    DEVICE_STATE_RESULT = "device_state_result"
    SHMEM_CONFIG = "shmem_config"
    SHMEM_MMAP = "shmem_mmap"
    CRYPTO_SESSION = "crypto_session"


@dataclass(frozen=True, slots=True)
class Empty:
    KIND: ClassVar[PayloadKind] = PayloadKind.EMPTY

    def pack(self) -> bytes:
        return b""

    def fields(self) -> dict[str, object]:
        return {}


_U64: Final = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class U64:
    """A plain u64: feature masks, queue count, MTU, acks (0 = success), session id ..."""

    KIND: ClassVar[PayloadKind] = PayloadKind.U64
    value: int

    def __post_init__(self) -> None:
        _check_uint("u64", self.value, 64)

    def pack(self) -> bytes:
        return _U64.pack(self.value)

    @classmethod
    def unpack(cls, raw: bytes) -> U64:
        return cls(_U64.unpack(raw)[0])

    def fields(self) -> dict[str, object]:
        return {"u64": self.value}


@dataclass(frozen=True, slots=True)
class Status:
    """Virtio device status byte carried in a u64 (SET_STATUS request, GET_STATUS reply)."""

    KIND: ClassVar[PayloadKind] = PayloadKind.STATUS
    value: int

    def __post_init__(self) -> None:
        _check_uint("status", self.value, 8)

    def pack(self) -> bytes:
        return _U64.pack(self.value)

    @classmethod
    def unpack(cls, raw: bytes) -> Status:
        word = _U64.unpack(raw)[0]
        if word > 0xFF:
            raise VhostUserProtocolError(f"status 0x{word:x} has bits above the status byte set")
        return cls(word)

    def fields(self) -> dict[str, object]:
        return {"status": self.value}


_VRING_STATE: Final = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class VringState:
    """``index`` u32, ``num`` u32: ring size, enable, endian, and the SET/GET_VRING_BASE indices."""

    KIND: ClassVar[PayloadKind] = PayloadKind.VRING_STATE
    index: int
    num: int

    def __post_init__(self) -> None:
        _check_fields(self, (("index", 32), ("num", 32)))

    def pack(self) -> bytes:
        return _VRING_STATE.pack(self.index, self.num)

    @classmethod
    def unpack(cls, raw: bytes) -> VringState:
        return cls(*_VRING_STATE.unpack(raw))

    def fields(self) -> dict[str, object]:
        return {"index": self.index, "num": self.num}

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
class VringFile:
    """u64 of SET_VRING_KICK/CALL/ERR: ring index in bits 0-7, bit 8 = no fd (poll)."""

    KIND: ClassVar[PayloadKind] = PayloadKind.VRING_FILE
    index: int
    nofd: bool = False

    def __post_init__(self) -> None:
        vring_word(self.index, self.nofd)

    @property
    def word(self) -> int:
        return vring_word(self.index, self.nofd)

    def pack(self) -> bytes:
        return _U64.pack(self.word)

    @classmethod
    def unpack(cls, raw: bytes) -> VringFile:
        word = _U64.unpack(raw)[0]
        if word & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise VhostUserProtocolError(f"vring fd word 0x{word:x} has reserved bits 9-63 set")
        return cls(vring_index(word), vring_nofd(word))

    def fields(self) -> dict[str, object]:
        return {"index": self.index, "nofd": self.nofd}


_VRING_ADDR: Final = struct.Struct("<IIQQQQ")


@dataclass(frozen=True, slots=True)
class VringAddr:
    """struct vhost_vring_addr, 40 bytes: index, flags (bit 0 = log used ring), desc, used, avail, log.

    The doc's table shows a ``size`` column that neither the field list nor the C struct has.
    """

    KIND: ClassVar[PayloadKind] = PayloadKind.VRING_ADDR
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int

    def __post_init__(self) -> None:
        _check_fields(self, (("index", 32), ("flags", 32), ("desc", 64), ("used", 64), ("avail", 64), ("log", 64)))

    def pack(self) -> bytes:
        return _VRING_ADDR.pack(self.index, self.flags, self.desc, self.used, self.avail, self.log)

    @classmethod
    def unpack(cls, raw: bytes) -> VringAddr:
        return cls(*_VRING_ADDR.unpack(raw))

    @property
    def log_used(self) -> bool:
        return bool(self.flags & (1 << VHOST_VRING_F_LOG))

    def fields(self) -> dict[str, object]:
        # "vring_flags", not "flags": the latter is the header's.
        return {"index": self.index, "vring_flags": self.flags, "desc": self.desc, "used": self.used,
                "avail": self.avail, "log": self.log}


_REGION: Final = struct.Struct("<QQQQ")
_XEN: Final = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class XenMmap:
    """Extra region fields with VHOST_USER_PROTOCOL_F_XEN_MMAP: flags (bit 0 foreign, 1 grant, 8 map on demand)."""

    flags: int
    domid: int

    def __post_init__(self) -> None:
        _check_fields(self, (("flags", 32), ("domid", 32)))


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int
    xen: XenMmap | None = None

    def __post_init__(self) -> None:
        _check_fields(self, (("guest_phys_addr", 64), ("memory_size", 64), ("userspace_addr", 64),
                             ("mmap_offset", 64)))

    @staticmethod
    def wire_size(xen_mmap: bool) -> int:
        return _REGION.size + (_XEN.size if xen_mmap else 0)

    def pack(self) -> bytes:
        raw = _REGION.pack(self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset)
        if self.xen is not None:
            raw += _XEN.pack(self.xen.flags, self.xen.domid)
        return raw

    @classmethod
    def unpack(cls, raw: bytes, offset: int, xen_mmap: bool) -> MemoryRegion:
        gpa, size, uva, off = _REGION.unpack_from(raw, offset)
        xen = XenMmap(*_XEN.unpack_from(raw, offset + _REGION.size)) if xen_mmap else None
        return cls(gpa, size, uva, off, xen)

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


_TABLE_HDR: Final = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class MemoryTable:
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

    def pack(self) -> bytes:
        return _TABLE_HDR.pack(len(self.regions), 0) + b"".join(r.pack() for r in self.regions)

    @classmethod
    def unpack(cls, raw: bytes, xen_mmap: bool) -> MemoryTable:
        if len(raw) < _TABLE_HDR.size:
            raise VhostUserProtocolError(f"memory table of {len(raw)} bytes is shorter than its 8-byte header")
        nregions, _pad = _TABLE_HDR.unpack_from(raw)
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
class SingleMemoryRegion:
    """ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region."""

    KIND: ClassVar[PayloadKind] = PayloadKind.SINGLE_REGION
    region: MemoryRegion

    def pack(self) -> bytes:
        return _U64.pack(0) + self.region.pack()

    @classmethod
    def unpack(cls, raw: bytes, xen_mmap: bool) -> SingleMemoryRegion:
        return cls(MemoryRegion.unpack(raw, _U64.size, xen_mmap))

    def fields(self) -> dict[str, object]:
        return {"region": self.region.fields()}


_LOG: Final = struct.Struct("<QQ")


@dataclass(frozen=True, slots=True)
class LogDescription:
    """SET_LOG_BASE with LOG_SHMFD: mmap size and offset of the shared dirty log."""

    KIND: ClassVar[PayloadKind] = PayloadKind.LOG
    mmap_size: int
    mmap_offset: int

    def __post_init__(self) -> None:
        _check_fields(self, (("mmap_size", 64), ("mmap_offset", 64)))

    def pack(self) -> bytes:
        return _LOG.pack(self.mmap_size, self.mmap_offset)

    @classmethod
    def unpack(cls, raw: bytes) -> LogDescription:
        return cls(*_LOG.unpack(raw))

    def fields(self) -> dict[str, object]:
        return {"mmap_size": self.mmap_size, "mmap_offset": self.mmap_offset}


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


_IOTLB: Final = struct.Struct("<QQQBB6x")  # struct vhost_iotlb_msg, padded to 32 bytes


@dataclass(frozen=True, slots=True)
class IotlbMsg:
    KIND: ClassVar[PayloadKind] = PayloadKind.IOTLB
    iova: int
    size: int
    uaddr: int
    perm: IotlbPerm
    type: IotlbType

    def __post_init__(self) -> None:
        _check_fields(self, (("iova", 64), ("size", 64), ("uaddr", 64)))
        if int(self.perm) not in (0, 1, 2, 3):
            raise VhostUserProtocolError(f"IOTLB permission {int(self.perm)} is not 0..3")
        if int(self.type) not in (1, 2, 3, 4):
            raise VhostUserProtocolError(f"IOTLB type {int(self.type)} is not 1..4")

    def pack(self) -> bytes:
        return _IOTLB.pack(self.iova, self.size, self.uaddr, int(self.perm), int(self.type))

    @classmethod
    def unpack(cls, raw: bytes) -> IotlbMsg:
        iova, size, uaddr, perm, typ = _IOTLB.unpack(raw)
        if perm > 3:
            raise VhostUserProtocolError(f"IOTLB permission {perm} is not 0..3")
        if typ not in IotlbType._value2member_map_:
            raise VhostUserProtocolError(f"IOTLB type {typ} is not 1 (miss), 2 (update), 3 (invalidate), 4 (fail)")
        return cls(iova, size, uaddr, IotlbPerm(perm), IotlbType(typ))

    def fields(self) -> dict[str, object]:
        return {"iova": self.iova, "iotlb_size": self.size, "uaddr": self.uaddr, "perm": int(self.perm),
                "type": int(self.type)}


class ConfigFlags(IntEnum):
    WRITABLE = 0  # front-end writes to writable fields
    MIGRATION = 1  # live migration: read-only fields may be written


_CONFIG_HDR: Final = struct.Struct("<III")


@dataclass(frozen=True, slots=True)
class ConfigSpace:
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

    def pack(self) -> bytes:
        return _CONFIG_HDR.pack(self.offset, len(self.data), int(self.flags)) + self.data

    @classmethod
    def unpack(cls, raw: bytes) -> ConfigSpace:
        if len(raw) < _CONFIG_HDR.size:
            raise VhostUserProtocolError(f"config payload of {len(raw)} bytes is shorter than its 12-byte header")
        offset, size, flags = _CONFIG_HDR.unpack_from(raw)
        if size > MAX_CONFIG_SIZE:
            raise VhostUserProtocolError(f"config size {size} exceeds {MAX_CONFIG_SIZE}")
        if len(raw) != _CONFIG_HDR.size + size:
            raise VhostUserProtocolError(f"config payload is {len(raw)} bytes but its size field says 12+{size}")
        if flags not in (0, 1):
            raise VhostUserProtocolError(f"config flags {flags} is not 0 (writable) or 1 (migration)")
        return cls(offset, ConfigFlags(flags), bytes(raw[_CONFIG_HDR.size:]))

    def fields(self) -> dict[str, object]:
        return {"offset": self.offset, "config_size": len(self.data), "config_flags": int(self.flags),
                "data": self.data.hex()}


_AREA: Final = struct.Struct("<QQQ")


@dataclass(frozen=True, slots=True)
class VringArea:
    """BACKEND_VRING_HOST_NOTIFIER_MSG: u64 (index bits 0-7, bit 8 = no fd: de-register), size, offset."""

    KIND: ClassVar[PayloadKind] = PayloadKind.VRING_AREA
    index: int
    size: int
    offset: int
    nofd: bool = False

    def __post_init__(self) -> None:
        vring_word(self.index, self.nofd)
        _check_fields(self, (("size", 64), ("offset", 64)))

    def pack(self) -> bytes:
        return _AREA.pack(vring_word(self.index, self.nofd), self.size, self.offset)

    @classmethod
    def unpack(cls, raw: bytes) -> VringArea:
        word, size, offset = _AREA.unpack(raw)
        if word & ~(VRING_IDX_MASK | VRING_NOFD_MASK):
            raise VhostUserProtocolError(f"vring area word 0x{word:x} has reserved bits 9-63 set")
        return cls(vring_index(word), size, offset, vring_nofd(word))

    def fields(self) -> dict[str, object]:
        return {"index": self.index, "nofd": self.nofd, "area_size": self.size, "offset": self.offset}


_INFLIGHT: Final = struct.Struct("<QQHH4x")  # C struct padding to 24 bytes


@dataclass(frozen=True, slots=True)
class Inflight:
    KIND: ClassVar[PayloadKind] = PayloadKind.INFLIGHT
    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int

    def __post_init__(self) -> None:
        _check_fields(self, (("mmap_size", 64), ("mmap_offset", 64), ("num_queues", 16), ("queue_size", 16)))

    def pack(self) -> bytes:
        return _INFLIGHT.pack(self.mmap_size, self.mmap_offset, self.num_queues, self.queue_size)

    @classmethod
    def unpack(cls, raw: bytes) -> Inflight:
        return cls(*_INFLIGHT.unpack(raw))

    def fields(self) -> dict[str, object]:
        return {"mmap_size": self.mmap_size, "mmap_offset": self.mmap_offset, "num_queues": self.num_queues,
                "queue_size": self.queue_size}


@dataclass(frozen=True, slots=True)
class SharedObject:
    """VhostUserShared: a 16-byte UUID in RFC byte order (first three groups big-endian)."""

    KIND: ClassVar[PayloadKind] = PayloadKind.SHARED_OBJECT
    uuid: uuid.UUID

    def pack(self) -> bytes:
        return self.uuid.bytes

    @classmethod
    def unpack(cls, raw: bytes) -> SharedObject:
        return cls(uuid.UUID(bytes=bytes(raw)))

    def fields(self) -> dict[str, object]:
        return {"uuid": str(self.uuid)}


class TransferDirection(IntEnum):
    SAVE = 0
    LOAD = 1


class MigrationPhase(IntEnum):
    STOPPED = 0


@dataclass(frozen=True, slots=True)
class DeviceStateTransfer:
    """SET_DEVICE_STATE_FD request: u32 direction (0 save, 1 load), u32 phase (0 stopped)."""

    KIND: ClassVar[PayloadKind] = PayloadKind.DEVICE_STATE
    direction: TransferDirection
    phase: MigrationPhase = MigrationPhase.STOPPED

    def __post_init__(self) -> None:
        if int(self.direction) not in (0, 1):
            raise VhostUserProtocolError(f"transfer direction {int(self.direction)} is not 0 (save) or 1 (load)")
        if int(self.phase) != 0:
            raise VhostUserProtocolError(f"migration phase {int(self.phase)} is not 0 (stopped)")

    def pack(self) -> bytes:
        return _VRING_STATE.pack(int(self.direction), int(self.phase))

    @classmethod
    def unpack(cls, raw: bytes) -> DeviceStateTransfer:
        direction, phase = _VRING_STATE.unpack(raw)
        if direction not in (0, 1):
            raise VhostUserProtocolError(f"transfer direction {direction} is not 0 (save) or 1 (load)")
        if phase != 0:
            raise VhostUserProtocolError(f"migration phase {phase} is not 0 (stopped)")
        return cls(TransferDirection(direction), MigrationPhase(phase))

    def fields(self) -> dict[str, object]:
        return {"direction": int(self.direction), "phase": int(self.phase)}


@dataclass(frozen=True, slots=True)
class DeviceStateResult:
    """SET_DEVICE_STATE_FD reply u64: bits 0-7 error (0 = ok), bit 8 = no fd returned."""

    KIND: ClassVar[PayloadKind] = PayloadKind.DEVICE_STATE_RESULT
    error: int
    nofd: bool = True

    def __post_init__(self) -> None:
        _check_uint("error", self.error, 8)
        if self.error and not self.nofd:
            raise VhostUserProtocolError("device state reply reports an error and returns an fd")

    def pack(self) -> bytes:
        return _U64.pack(self.error | (VRING_NOFD_MASK if self.nofd else 0))

    @classmethod
    def unpack(cls, raw: bytes) -> DeviceStateResult:
        word = _U64.unpack(raw)[0]
        if word & ~(0xFF | VRING_NOFD_MASK):
            raise VhostUserProtocolError(f"device state reply 0x{word:x} has reserved bits 9-63 set")
        return cls(word & 0xFF, bool(word & VRING_NOFD_MASK))

    def fields(self) -> dict[str, object]:
        return {"error": self.error, "nofd": self.nofd}


_SHMEM_CONFIG: Final = struct.Struct(f"<II{MAX_SHMEM_REGIONS}Q")


@dataclass(frozen=True, slots=True)
class ShmemConfig:
    """GET_SHMEM_CONFIG reply (uncertain): u32 nregions, u32 pad, 256 u64 region sizes indexed by shmid."""

    KIND: ClassVar[PayloadKind] = PayloadKind.SHMEM_CONFIG
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
        return _SHMEM_CONFIG.pack(self.nregions, 0, *self.memory_sizes)

    @classmethod
    def unpack(cls, raw: bytes) -> ShmemConfig:
        nregions, _pad, *sizes = _SHMEM_CONFIG.unpack(raw)
        return cls(nregions, tuple(sizes))

    def fields(self) -> dict[str, object]:
        return {"nregions": self.nregions, "memory_sizes": {i: s for i, s in enumerate(self.memory_sizes) if s}}


_MMAP: Final = struct.Struct("<B7xQQQQ")


@dataclass(frozen=True, slots=True)
class ShmemMap:
    """VhostUserMMap (uncertain): u8 shmid, 7 pad, u64 fd_offset, shm_offset, len, flags.

    Revisions of the series disagree on ``flags`` (bit 0 = rw, or bit 0 = read / bit 1 = write), so it
    is kept raw.
    """

    KIND: ClassVar[PayloadKind] = PayloadKind.SHMEM_MMAP
    shmid: int
    fd_offset: int
    shm_offset: int
    length: int
    flags: int = 0

    def __post_init__(self) -> None:
        _check_fields(self, (("shmid", 8), ("fd_offset", 64), ("shm_offset", 64), ("length", 64), ("flags", 64)))

    def pack(self) -> bytes:
        return _MMAP.pack(self.shmid, self.fd_offset, self.shm_offset, self.length, self.flags)

    @classmethod
    def unpack(cls, raw: bytes) -> ShmemMap:
        return cls(*_MMAP.unpack(raw))

    def fields(self) -> dict[str, object]:
        return {"shmid": self.shmid, "fd_offset": self.fd_offset, "shm_offset": self.shm_offset,
                "len": self.length, "mmap_flags": self.flags}


@dataclass(frozen=True, slots=True)
class CryptoSession:
    """CREATE_CRYPTO_SESSION body, kept opaque: its layout is QEMU's C struct, not described by the doc."""

    KIND: ClassVar[PayloadKind] = PayloadKind.CRYPTO_SESSION
    data: bytes

    def __post_init__(self) -> None:
        if not 1 <= len(self.data) <= MAX_PAYLOAD_SIZE:
            raise VhostUserProtocolError(f"crypto session body of {len(self.data)} bytes")

    def pack(self) -> bytes:
        return self.data

    def fields(self) -> dict[str, object]:
        return {"data": self.data.hex()}


Payload: TypeAlias = (Empty | U64 | Status | VringState | VringFile | VringAddr | MemoryTable | SingleMemoryRegion
                      | LogDescription | IotlbMsg | ConfigSpace | VringArea | Inflight | SharedObject
                      | DeviceStateTransfer | DeviceStateResult | ShmemConfig | ShmemMap | CryptoSession)

EMPTY: Final = Empty()

# Per kind: the fixed wire size (None = variable) and the decoder (raw, xen_mmap) -> payload.
_Decoder: TypeAlias = Callable[[bytes, bool], Payload]


def _fixed(kind: PayloadKind, xen_mmap: bool) -> int | None:
    sizes: dict[PayloadKind, int] = {
        PayloadKind.EMPTY: 0, PayloadKind.U64: 8, PayloadKind.STATUS: 8, PayloadKind.VRING_STATE: 8,
        PayloadKind.VRING_FILE: 8, PayloadKind.VRING_ADDR: _VRING_ADDR.size,
        PayloadKind.SINGLE_REGION: 8 + MemoryRegion.wire_size(xen_mmap), PayloadKind.LOG: _LOG.size,
        PayloadKind.IOTLB: _IOTLB.size, PayloadKind.VRING_AREA: _AREA.size, PayloadKind.INFLIGHT: _INFLIGHT.size,
        PayloadKind.SHARED_OBJECT: 16, PayloadKind.DEVICE_STATE: 8, PayloadKind.DEVICE_STATE_RESULT: 8,
        PayloadKind.SHMEM_CONFIG: _SHMEM_CONFIG.size, PayloadKind.SHMEM_MMAP: _MMAP.size,
    }
    return sizes.get(kind)


_DECODERS: Final[dict[PayloadKind, _Decoder]] = {
    PayloadKind.EMPTY: lambda raw, xen: EMPTY,
    PayloadKind.U64: lambda raw, xen: U64.unpack(raw),
    PayloadKind.STATUS: lambda raw, xen: Status.unpack(raw),
    PayloadKind.VRING_STATE: lambda raw, xen: VringState.unpack(raw),
    PayloadKind.VRING_FILE: lambda raw, xen: VringFile.unpack(raw),
    PayloadKind.VRING_ADDR: lambda raw, xen: VringAddr.unpack(raw),
    PayloadKind.MEMORY_TABLE: lambda raw, xen: MemoryTable.unpack(raw, xen),
    PayloadKind.SINGLE_REGION: lambda raw, xen: SingleMemoryRegion.unpack(raw, xen),
    PayloadKind.LOG: lambda raw, xen: LogDescription.unpack(raw),
    PayloadKind.IOTLB: lambda raw, xen: IotlbMsg.unpack(raw),
    PayloadKind.CONFIG: lambda raw, xen: ConfigSpace.unpack(raw),
    PayloadKind.VRING_AREA: lambda raw, xen: VringArea.unpack(raw),
    PayloadKind.INFLIGHT: lambda raw, xen: Inflight.unpack(raw),
    PayloadKind.SHARED_OBJECT: lambda raw, xen: SharedObject.unpack(raw),
    PayloadKind.DEVICE_STATE: lambda raw, xen: DeviceStateTransfer.unpack(raw),
    PayloadKind.DEVICE_STATE_RESULT: lambda raw, xen: DeviceStateResult.unpack(raw),
    PayloadKind.SHMEM_CONFIG: lambda raw, xen: ShmemConfig.unpack(raw),
    PayloadKind.SHMEM_MMAP: lambda raw, xen: ShmemMap.unpack(raw),
    PayloadKind.CRYPTO_SESSION: lambda raw, xen: CryptoSession(bytes(raw)),
}


# ---------------------------------------------------------------------------------------------
# per-request rules


class FdRule(Enum):
    NONE = "none"
    ONE = "one"
    PER_REGION = "one per region"
    UNLESS_NOFD = "one unless the no-fd bit is set"
    OPTIONAL = "zero or one"
    LOG_BASE = "one with the log description, none with a bare u64"
    INFLIGHT_REPLY = "one unless mmap_size is 0"
    DEVICE_STATE_REPLY = "one unless the reply's no-fd bit is set"
    LOOKUP_REPLY = "zero or one, none on error"


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """What a request carries: payload kinds and fd rule for the request and for its reply.

    ``explicit_reply`` is True when the request always has a reply body of its own; otherwise a
    reply exists only as a REPLY_ACK u64 (or the postcopy forms listed in ``reply_kinds``).
    """

    kinds: tuple[PayloadKind, ...]
    fds: FdRule = FdRule.NONE
    reply_kinds: tuple[PayloadKind, ...] = (PayloadKind.U64,)
    reply_fds: FdRule = FdRule.NONE
    explicit_reply: bool = False


_K = PayloadKind
_NONE: Final = (_K.EMPTY,)


def _spec(kinds: tuple[PayloadKind, ...], fds: FdRule = FdRule.NONE, reply: tuple[PayloadKind, ...] | None = None,
          reply_fds: FdRule = FdRule.NONE) -> RequestSpec:
    if reply is None:
        return RequestSpec(kinds, fds)
    return RequestSpec(kinds, fds, reply, reply_fds, explicit_reply=True)


FRONTEND_SPECS: Final[dict[FrontendRequest, RequestSpec]] = {
    FrontendRequest.GET_FEATURES: _spec(_NONE, reply=(_K.U64,)),
    FrontendRequest.SET_FEATURES: _spec((_K.U64,)),
    FrontendRequest.SET_OWNER: _spec(_NONE),
    FrontendRequest.RESET_OWNER: _spec(_NONE),
    # request: table + one fd per region, or (postcopy) the front-end's u64 acknowledgement without fds;
    # reply: REPLY_ACK u64, or (postcopy) the table with the back-end's mapping bases.
    FrontendRequest.SET_MEM_TABLE: RequestSpec((_K.MEMORY_TABLE, _K.U64), FdRule.PER_REGION,
                                               (_K.U64, _K.MEMORY_TABLE)),
    FrontendRequest.SET_LOG_BASE: RequestSpec((_K.LOG, _K.U64), FdRule.LOG_BASE),
    FrontendRequest.SET_LOG_FD: _spec(_NONE, FdRule.ONE),
    FrontendRequest.SET_VRING_NUM: _spec((_K.VRING_STATE,)),
    FrontendRequest.SET_VRING_ADDR: _spec((_K.VRING_ADDR,)),
    FrontendRequest.SET_VRING_BASE: _spec((_K.VRING_STATE,)),
    FrontendRequest.GET_VRING_BASE: _spec((_K.VRING_STATE,), reply=(_K.VRING_STATE,)),
    FrontendRequest.SET_VRING_KICK: _spec((_K.VRING_FILE,), FdRule.UNLESS_NOFD),
    FrontendRequest.SET_VRING_CALL: _spec((_K.VRING_FILE,), FdRule.UNLESS_NOFD),
    FrontendRequest.SET_VRING_ERR: _spec((_K.VRING_FILE,), FdRule.UNLESS_NOFD),
    FrontendRequest.GET_PROTOCOL_FEATURES: _spec(_NONE, reply=(_K.U64,)),
    FrontendRequest.SET_PROTOCOL_FEATURES: _spec((_K.U64,)),
    FrontendRequest.GET_QUEUE_NUM: _spec(_NONE, reply=(_K.U64,)),
    FrontendRequest.SET_VRING_ENABLE: _spec((_K.VRING_STATE,)),
    FrontendRequest.SEND_RARP: _spec((_K.U64,)),
    FrontendRequest.NET_SET_MTU: _spec((_K.U64,)),
    FrontendRequest.SET_BACKEND_REQ_FD: _spec(_NONE, FdRule.ONE),
    FrontendRequest.IOTLB_MSG: _spec((_K.IOTLB,), reply=(_K.U64,)),
    FrontendRequest.SET_VRING_ENDIAN: _spec((_K.VRING_STATE,)),
    # a back-end signals a GET_CONFIG failure with an empty reply
    FrontendRequest.GET_CONFIG: _spec((_K.CONFIG,), reply=(_K.CONFIG, _K.EMPTY)),
    FrontendRequest.SET_CONFIG: _spec((_K.CONFIG,)),
    FrontendRequest.CREATE_CRYPTO_SESSION: _spec((_K.CRYPTO_SESSION,), reply=(_K.CRYPTO_SESSION,)),
    FrontendRequest.CLOSE_CRYPTO_SESSION: _spec((_K.U64,)),
    FrontendRequest.POSTCOPY_ADVISE: _spec(_NONE, reply=_NONE, reply_fds=FdRule.ONE),
    FrontendRequest.POSTCOPY_LISTEN: _spec(_NONE),
    FrontendRequest.POSTCOPY_END: _spec(_NONE, reply=(_K.U64,)),
    FrontendRequest.GET_INFLIGHT_FD: _spec((_K.INFLIGHT,), reply=(_K.INFLIGHT,), reply_fds=FdRule.INFLIGHT_REPLY),
    FrontendRequest.SET_INFLIGHT_FD: _spec((_K.INFLIGHT,), FdRule.ONE),
    FrontendRequest.GPU_SET_SOCKET: _spec(_NONE, FdRule.ONE),
    FrontendRequest.RESET_DEVICE: _spec(_NONE),
    FrontendRequest.VRING_KICK: _spec((_K.VRING_STATE,)),
    FrontendRequest.GET_MAX_MEM_SLOTS: _spec(_NONE, reply=(_K.U64,)),
    FrontendRequest.ADD_MEM_REG: RequestSpec((_K.SINGLE_REGION,), FdRule.ONE, (_K.U64, _K.SINGLE_REGION)),
    # no fd should come, but a back-end may accept (and must close) one
    FrontendRequest.REM_MEM_REG: _spec((_K.SINGLE_REGION,), FdRule.OPTIONAL),
    FrontendRequest.SET_STATUS: _spec((_K.STATUS,)),
    FrontendRequest.GET_STATUS: _spec(_NONE, reply=(_K.STATUS,)),
    FrontendRequest.GET_SHARED_OBJECT: _spec((_K.SHARED_OBJECT,), reply=(_K.U64,), reply_fds=FdRule.LOOKUP_REPLY),
    FrontendRequest.SET_DEVICE_STATE_FD: _spec((_K.DEVICE_STATE,), FdRule.ONE, reply=(_K.DEVICE_STATE_RESULT,),
                                               reply_fds=FdRule.DEVICE_STATE_REPLY),
    FrontendRequest.CHECK_DEVICE_STATE: _spec(_NONE, reply=(_K.U64,)),
    FrontendRequest.GET_SHMEM_CONFIG: _spec(_NONE, reply=(_K.SHMEM_CONFIG,)),
}

BACKEND_SPECS: Final[dict[BackendRequest, RequestSpec]] = {
    BackendRequest.IOTLB_MSG: _spec((_K.IOTLB,)),
    BackendRequest.CONFIG_CHANGE_MSG: _spec(_NONE),
    BackendRequest.VRING_HOST_NOTIFIER_MSG: _spec((_K.VRING_AREA,), FdRule.UNLESS_NOFD),
    BackendRequest.VRING_CALL: _spec((_K.VRING_STATE,)),
    BackendRequest.VRING_ERR: _spec((_K.VRING_STATE,)),
    BackendRequest.SHARED_OBJECT_ADD: _spec((_K.SHARED_OBJECT,)),
    BackendRequest.SHARED_OBJECT_REMOVE: _spec((_K.SHARED_OBJECT,)),
    BackendRequest.SHARED_OBJECT_LOOKUP: _spec((_K.SHARED_OBJECT,), reply=(_K.U64,), reply_fds=FdRule.LOOKUP_REPLY),
    BackendRequest.SHMEM_MAP: _spec((_K.SHMEM_MMAP,), FdRule.ONE),
    BackendRequest.SHMEM_UNMAP: _spec((_K.SHMEM_MMAP,), reply=(_K.U64,)),
}


def spec_of(request: Request) -> RequestSpec:
    if isinstance(request, FrontendRequest):
        return FRONTEND_SPECS[request]
    return BACKEND_SPECS[request]


def _fd_bounds(rule: FdRule, payload: Payload) -> tuple[int, int]:
    match rule:
        case FdRule.NONE:
            return 0, 0
        case FdRule.ONE:
            return 1, 1
        case FdRule.OPTIONAL:
            return 0, 1
        case FdRule.PER_REGION:
            n = payload.nregions if isinstance(payload, MemoryTable) else 0
            return n, n
        case FdRule.UNLESS_NOFD | FdRule.DEVICE_STATE_REPLY:
            nofd = payload.nofd if isinstance(payload, VringFile | VringArea | DeviceStateResult) else True
            return (0, 0) if nofd else (1, 1)
        case FdRule.LOG_BASE:
            return (1, 1) if isinstance(payload, LogDescription) else (0, 0)
        case FdRule.INFLIGHT_REPLY:
            has = isinstance(payload, Inflight) and payload.mmap_size != 0
            return (1, 1) if has else (0, 0)
        case FdRule.LOOKUP_REPLY:
            ok = isinstance(payload, U64) and payload.value == 0
            return (0, 1) if ok else (0, 0)
    raise AssertionError(rule)  # pragma: no cover


def fd_rule(request: Request, *, reply: bool) -> FdRule:
    spec = spec_of(request)
    if not reply:
        return spec.fds
    return spec.reply_fds if spec.explicit_reply else FdRule.NONE


def fd_range(request: Request, payload: Payload, *, reply: bool = False) -> tuple[int, int]:
    """How many fds (min, max) must travel with this request or reply carrying ``payload``."""
    return _fd_bounds(fd_rule(request, reply=reply), payload)


# Field names for a u64 body, by request, as the capture traces spell them (acks are "u64").
_U64_NAMES: Final[dict[Request, str]] = {
    FrontendRequest.GET_FEATURES: "features",
    FrontendRequest.SET_FEATURES: "features",
    FrontendRequest.GET_PROTOCOL_FEATURES: "protocol_features",
    FrontendRequest.SET_PROTOCOL_FEATURES: "protocol_features",
    FrontendRequest.GET_QUEUE_NUM: "queue_num",
    FrontendRequest.SEND_RARP: "mac",
    FrontendRequest.NET_SET_MTU: "mtu",
    FrontendRequest.CLOSE_CRYPTO_SESSION: "session_id",
    FrontendRequest.GET_MAX_MEM_SLOTS: "max_mem_slots",
    FrontendRequest.SET_LOG_BASE: "log_base",
}


def rarp_mac(value: int) -> str:
    """The guest MAC in a SEND_RARP u64 (its first six bytes in memory)."""
    return ":".join(f"{b:02x}" for b in _U64.pack(value)[:6])


# ---------------------------------------------------------------------------------------------
# header and message


@dataclass(frozen=True, slots=True)
class Header:
    request: Request
    flags: int
    size: int

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.REPLY)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.NEED_REPLY)

    def pack(self) -> bytes:
        return HEADER.pack(int(self.request), self.flags, self.size)


def _request_for(number: int, channel: Channel) -> Request:
    table: type[FrontendRequest] | type[BackendRequest] = (
        FrontendRequest if channel is Channel.MAIN else BackendRequest)
    try:
        return table(number)
    except ValueError:
        side = "front-end" if channel is Channel.MAIN else "back-end"
        raise VhostUserProtocolError(f"unknown {side} request number {number}") from None


def _check_flags(flags: int, reply: bool | None) -> None:
    if flags & VERSION_MASK != PROTOCOL_VERSION:
        raise VhostUserProtocolError(f"header version {flags & VERSION_MASK} (flags 0x{flags:x}), expected 1")
    if flags & ~KNOWN_FLAG_BITS:
        raise VhostUserProtocolError(f"header flags 0x{flags:x} set reserved bits 0x{flags & ~KNOWN_FLAG_BITS:x}")
    is_reply = bool(flags & HeaderFlag.REPLY)
    if reply is False and is_reply:
        raise VhostUserProtocolError(f"reply flag set on a request (flags 0x{flags:x})")
    if reply is True and not is_reply:
        raise VhostUserProtocolError(f"reply flag missing on a reply (flags 0x{flags:x})")
    if is_reply and flags & HeaderFlag.NEED_REPLY:
        raise VhostUserProtocolError(f"need_reply flag set on a reply (flags 0x{flags:x})")


def parse_header(raw: bytes | bytearray | memoryview, *, channel: Channel = Channel.MAIN,
                 reply: bool | None = False) -> Header:
    """Validate the 12 header bytes before reading the payload.

    ``reply``: False when a request is expected, True for a reply, None to accept either.
    """
    if len(raw) != HEADER_SIZE:
        raise VhostUserProtocolError(f"header is {len(raw)} bytes, expected {HEADER_SIZE}")
    number, flags, size = HEADER.unpack(bytes(raw))
    request = _request_for(number, channel)
    _check_flags(flags, reply)
    if size > MAX_PAYLOAD_SIZE:
        raise VhostUserProtocolError(f"{request.name}: payload size {size} exceeds the {MAX_PAYLOAD_SIZE}-byte maximum")
    return Header(request, flags, size)


def _decode_payload(request: Request, kinds: tuple[PayloadKind, ...], raw: bytes, xen_mmap: bool) -> Payload:
    size = len(raw)
    for kind in kinds:
        if _fixed(kind, xen_mmap) == size:
            return _DECODERS[kind](raw, xen_mmap)
    variable = [k for k in kinds if _fixed(k, xen_mmap) is None]
    if variable:
        return _DECODERS[variable[0]](raw, xen_mmap)
    expected = " or ".join(f"{k.value} ({_fixed(k, xen_mmap)} bytes)" for k in kinds)
    raise VhostUserProtocolError(f"{request.name}: payload size {size} does not match {expected}")


@dataclass(frozen=True, slots=True)
class Message:
    """One validated vhost-user message; ``fds`` are the raw descriptor numbers beside it (not owned)."""

    request: Request
    payload: Payload = EMPTY
    fds: tuple[int, ...] = ()
    flags: int = HeaderFlag.VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", int(self.flags))
        object.__setattr__(self, "fds", tuple(self.fds))
        _check_flags(self.flags, None)
        spec = spec_of(self.request)
        kinds = spec.reply_kinds if self.is_reply else spec.kinds
        if self.payload.KIND not in kinds:
            role = "reply" if self.is_reply else "request"
            allowed = ", ".join(k.value for k in kinds)
            raise VhostUserProtocolError(
                f"{self.request.name} {role} carries a {self.payload.KIND.value} payload; allowed: {allowed}")
        if len(self.pack_payload()) > MAX_PAYLOAD_SIZE:
            raise VhostUserProtocolError(f"{self.request.name}: payload exceeds {MAX_PAYLOAD_SIZE} bytes")
        self._check_fds()

    def _check_fds(self) -> None:
        if any(not isinstance(fd, int) or fd < 0 for fd in self.fds):
            raise VhostUserProtocolError(f"{self.request.name}: invalid fd numbers {self.fds}")
        if len(self.fds) > MAX_FDS:
            raise VhostUserProtocolError(f"{self.request.name}: {len(self.fds)} fds, at most {MAX_FDS} per message")
        rule = fd_rule(self.request, reply=self.is_reply)
        lo, hi = _fd_bounds(rule, self.payload)
        if not lo <= len(self.fds) <= hi:
            want = str(lo) if lo == hi else f"{lo}..{hi}"
            role = "reply" if self.is_reply else "request"
            what = "extra" if len(self.fds) > hi else "missing"
            raise VhostUserProtocolError(
                f"{self.request.name} {role}: {what} fds: got {len(self.fds)}, expected {want} ({rule.value})")

    # -- properties

    @property
    def is_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.REPLY)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.NEED_REPLY)

    @property
    def channel(self) -> Channel:
        return Channel.MAIN if isinstance(self.request, FrontendRequest) else Channel.BACKEND

    @property
    def direction(self) -> str:
        """``F->B`` or ``B->F``, as in the capture files."""
        from_frontend = (self.channel is Channel.MAIN) != self.is_reply
        return "F->B" if from_frontend else "B->F"

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def kind(self) -> PayloadKind:
        return self.payload.KIND

    @property
    def header(self) -> Header:
        return Header(self.request, self.flags, len(self.pack_payload()))

    # -- building

    @classmethod
    def reply_to(cls, request: Message, payload: Payload = EMPTY, fds: Sequence[int] = ()) -> Message:
        """The reply to ``request``: same request number, REPLY flag, version 1."""
        return cls(request.request, payload, tuple(fds), HeaderFlag.VERSION | HeaderFlag.REPLY)

    @classmethod
    def ack(cls, request: Message, status: int = 0) -> Message:
        """The REPLY_ACK answer to a need_reply request: u64 0 = success."""
        return cls.reply_to(request, U64(status))

    # -- wire

    def pack_payload(self) -> bytes:
        return self.payload.pack()

    def encode(self) -> tuple[bytes, tuple[int, ...]]:
        body = self.pack_payload()
        return HEADER.pack(int(self.request), self.flags, len(body)) + body, self.fds

    # -- traces

    def fields(self) -> dict[str, object]:
        """Header facts and decoded payload fields, named like the capture JSONL.

        Payload keys never reuse a header key (the capture proxy let SET_VRING_ADDR's ring flags
        overwrite the header ``flags``), hence ``vring_flags``, ``iotlb_size``, ``area_size``.
        """
        out: dict[str, object] = {
            "dir": self.direction, "request": int(self.request), "name": self.request.name,
            "reply": self.is_reply, "need_reply": self.need_reply, "flags": self.flags,
            "size": len(self.pack_payload()), "nfds": len(self.fds),
        }
        body = self.payload.fields()
        if isinstance(self.payload, U64) and (not self.is_reply or spec_of(self.request).explicit_reply):
            body = {_U64_NAMES.get(self.request, "u64"): self.payload.value}
        out.update(body)
        return out

    def describe(self) -> str:
        """One line for a trace: ``F->B SET_VRING_NUM need_reply size=8 fds=0 index=0 num=256``."""
        parts = [self.direction, self.request.name]
        if self.is_reply:
            parts.append("reply")
        if self.need_reply:
            parts.append("need_reply")
        parts.append(f"size={len(self.pack_payload())} fds={len(self.fds)}")
        parts.extend(self._describe_payload())
        return " ".join(parts)

    def _describe_payload(self) -> list[str]:
        p = self.payload
        if isinstance(p, MemoryTable):
            return [f"nregions={p.nregions}"] + [f"[{r.brief()}]" for r in p.regions]
        if isinstance(p, SingleMemoryRegion):
            return [f"[{p.region.brief()}]"]
        if isinstance(p, Status):
            return [f"status=0x{p.value:x}({_status_names(p.value)})"]
        out: list[str] = []
        for key, value in self.fields().items():
            if key in ("dir", "request", "name", "reply", "need_reply", "flags", "size", "nfds"):
                continue
            if key == "mac" and isinstance(value, int):
                out.append(f"mac={rarp_mac(value)}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 10:
                out.append(f"{key}={value}")
            else:
                out.append(f"{key}=0x{value:x}")
        return out

    def __str__(self) -> str:
        return self.describe()

    def to_scapy(self) -> Packet:
        layer = VhostUserHeader if self.channel is Channel.MAIN else VhostUserBackendHeader
        return layer(request=int(self.request), flags=self.flags, size=len(self.pack_payload())) / Raw(
            self.pack_payload())


def _status_names(value: int) -> str:
    names = [s.name for s in DeviceStatus if s.value and value & s.value and s.name]
    return "|".join(names) if names else "RESET"


def decode(header: bytes | bytearray | memoryview, payload: bytes | bytearray | memoryview = b"",
           fds: Sequence[int] = (), *, channel: Channel = Channel.MAIN, reply: bool | None = False,
           xen_mmap: bool = False) -> Message:
    """Decode one message; raise :class:`VhostUserProtocolError` if anything is off.

    ``channel`` picks the request numbering, ``reply`` what the receiver expects (see
    :func:`parse_header`), ``xen_mmap`` whether VHOST_USER_PROTOCOL_F_XEN_MMAP was negotiated
    (regions then carry two more u32 fields).
    """
    hdr = parse_header(header, channel=channel, reply=reply)
    raw = bytes(payload)
    if len(raw) != hdr.size:
        raise VhostUserProtocolError(f"{hdr.request.name}: header says {hdr.size} payload bytes, got {len(raw)}")
    spec = spec_of(hdr.request)
    kinds = spec.reply_kinds if hdr.is_reply else spec.kinds
    body = _decode_payload(hdr.request, kinds, raw, xen_mmap)
    return Message(hdr.request, body, tuple(fds), hdr.flags)


def decode_bytes(data: bytes | bytearray | memoryview, fds: Sequence[int] = (), *, channel: Channel = Channel.MAIN,
                 reply: bool | None = False, xen_mmap: bool = False) -> Message:
    """:func:`decode` for a buffer holding exactly one whole message."""
    return decode(bytes(data[:HEADER_SIZE]), bytes(data[HEADER_SIZE:]), fds, channel=channel, reply=reply,
                  xen_mmap=xen_mmap)


# ---------------------------------------------------------------------------------------------
# scapy


_FLAG_NAMES: Final = ["VERSION0", "VERSION1", "REPLY", "NEED_REPLY"]


class VhostUserHeader(Packet):
    """scapy layer for the main-channel header: ``VhostUserHeader(request=8, size=8)/Raw(...)``."""

    name = "vhost-user"
    fields_desc = [
        LEIntEnumField("request", 0, {int(m): m.name for m in FrontendRequest}),
        FlagsField("flags", int(HeaderFlag.VERSION), -32, _FLAG_NAMES),
        LEIntField("size", 0),
    ]


class VhostUserBackendHeader(Packet):
    """scapy layer for the back-end channel header (back-end request numbering)."""

    name = "vhost-user backend"
    fields_desc = [
        LEIntEnumField("request", 0, {int(m): m.name for m in BackendRequest}),
        FlagsField("flags", int(HeaderFlag.VERSION), -32, _FLAG_NAMES),
        LEIntField("size", 0),
    ]
