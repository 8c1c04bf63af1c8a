"""vhost-user numbering: requests, protocol features, header flags, limits, and what each request carries.

The same request numbers are reused by the two channels: the main socket carries front-end requests
(and the back-end's replies), the channel installed by ``SET_BACKEND_REQ_FD`` carries back-end
requests (and the front-end's replies), so a number means something only with its :class:`Channel`.
:data:`FRONTEND_SPECS` and :data:`BACKEND_SPECS` say, per request, which payload kinds and how many
fds travel with the request and with its reply; the payloads themselves are in
:mod:`backend.vhost_user.payloads`, the header and the message in :mod:`backend.vhost_user.messages`.

Values follow QEMU ``docs/interop/vhost-user.rst``; the shared-memory additions (``GET_SHMEM_CONFIG``,
``BACKEND_SHMEM_MAP``/``UNMAP``, protocol bit 20) come from a later series and are flagged in
:data:`UNCERTAIN_FRONTEND_REQUESTS`, :data:`UNCERTAIN_BACKEND_REQUESTS` and
:data:`UNCERTAIN_PROTOCOL_FEATURES`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag
from typing import Final, TypeAlias

from backend.wire import WireError

# ---------------------------------------------------------------------------------------------
# numbers


class VhostUserProtocolError(WireError):
    """A message that is not valid vhost-user on the wire; ``reason`` says what is wrong."""


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


class PayloadKind(Enum):
    """What a payload is (the classes are in :mod:`backend.vhost_user.payloads`)."""

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


def fd_rule(request: Request, *, reply: bool) -> FdRule:
    spec = spec_of(request)
    if not reply:
        return spec.fds
    return spec.reply_fds if spec.explicit_reply else FdRule.NONE

