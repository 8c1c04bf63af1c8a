"""vhost-user wire format: every front-end and back-end request, their payloads, and strict validation.

A message is a 12-byte header (``request``, ``flags``, ``size``: three little-endian u32) followed by
``size`` payload bytes; file descriptors travel beside it as SCM_RIGHTS ancillary data. The request
numbering and what each request carries are in :mod:`backend.vhost_user.protocol`, the payload
structs in :mod:`backend.vhost_user.payloads`; this module puts them together into messages and
re-exports both, so ``backend.vhost_user.messages`` is the one import a user needs.

Entry points:

* :func:`parse_header` validates a header before its payload is read (request number, version,
  flag bits, size bound), so a server never reads an absurd ``size``;
* :func:`decode` turns header + payload bytes + received fds into a :class:`Message`, or raises
  :class:`VhostUserProtocolError` with a reason;
* :meth:`Message.encode` gives the bytes to send and the fds to pass beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from backend.vhost_user.payloads import (
    EMPTY,
    U64,
    ConfigFlags,
    ConfigSpace,
    CryptoSession,
    DeviceStateResult,
    DeviceStateTransfer,
    Empty,
    FdWord,
    Inflight,
    IotlbMsg,
    IotlbPerm,
    IotlbType,
    LogDescription,
    MemoryRegion,
    MemoryTable,
    MigrationPhase,
    Payload,
    SharedObject,
    ShmemConfig,
    ShmemMap,
    SingleMemoryRegion,
    Status,
    TransferDirection,
    VringAddr,
    VringArea,
    VringFile,
    VringState,
    XenMmap,
    decode_payload,
    wire_size,
)
from backend.vhost_user.protocol import (
    BACKEND_SPECS,
    FRONTEND_SPECS,
    HEADER,
    HEADER_SIZE,
    KNOWN_FLAG_BITS,
    MAX_CONFIG_SIZE,
    MAX_FDS,
    MAX_MEM_REGIONS,
    MAX_PAYLOAD_SIZE,
    MAX_SHMEM_REGIONS,
    PROTOCOL_VERSION,
    UNCERTAIN_BACKEND_REQUESTS,
    UNCERTAIN_FRONTEND_REQUESTS,
    UNCERTAIN_PROTOCOL_FEATURES,
    VERSION_MASK,
    VHOST_F_LOG_ALL,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VHOST_VRING_F_LOG,
    VRING_IDX_MASK,
    VRING_NOFD_MASK,
    BackendRequest,
    Channel,
    FdRule,
    FrontendRequest,
    HeaderFlag,
    PayloadKind,
    ProtocolFeature,
    Request,
    RequestSpec,
    VhostUserProtocolError,
    fd_rule,
    spec_of,
    vring_index,
    vring_nofd,
    vring_word,
)
from backend.virtio.features import DeviceStatus
from backend.wire import FlagBit

if TYPE_CHECKING:
    from scapy.packet import Packet

__all__ = [  # the names of protocol and payloads, re-exported
    "BACKEND_SPECS", "EMPTY", "FRONTEND_SPECS", "HEADER", "HEADER_SIZE", "KNOWN_FLAG_BITS", "MAX_CONFIG_SIZE",
    "MAX_FDS", "MAX_MEM_REGIONS", "MAX_PAYLOAD_SIZE", "MAX_SHMEM_REGIONS", "PROTOCOL_VERSION", "U64",
    "UNCERTAIN_BACKEND_REQUESTS", "UNCERTAIN_FRONTEND_REQUESTS", "UNCERTAIN_PROTOCOL_FEATURES", "VERSION_MASK",
    "VHOST_F_LOG_ALL", "VHOST_USER_F_PROTOCOL_FEATURES", "VHOST_VRING_F_LOG", "VRING_IDX_MASK", "VRING_NOFD_MASK",
    "BackendRequest", "Channel", "ConfigFlags", "ConfigSpace", "CryptoSession", "DeviceStateResult",
    "DeviceStateTransfer", "Empty", "FdRule", "FrontendRequest", "Header", "HeaderFlag", "Inflight", "IotlbMsg",
    "IotlbPerm", "IotlbType", "LogDescription", "MemoryRegion", "MemoryTable", "Message", "MigrationPhase",
    "Payload", "PayloadKind", "ProtocolFeature", "Request", "RequestSpec", "SharedObject", "ShmemConfig",
    "ShmemMap", "SingleMemoryRegion", "Status", "TransferDirection", "VhostUserProtocolError", "VringAddr",
    "VringArea", "VringFile", "VringState", "XenMmap", "decode", "decode_bytes", "fd_range", "fd_rule",
    "parse_header", "rarp_mac", "spec_of", "vring_index", "vring_nofd", "vring_word",
]


# ---------------------------------------------------------------------------------------------
# fds and trace names


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
            nofd = payload.nofd if isinstance(payload, FdWord) else True
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
    return ":".join(f"{b:02x}" for b in U64(value).pack()[:6])



# ---------------------------------------------------------------------------------------------
# header and message


class _HeaderFlags:
    """What the header's flags say, for :class:`Header` and :class:`Message`."""

    __slots__ = ()
    flags: int

    is_reply = FlagBit(HeaderFlag.REPLY)
    need_reply = FlagBit(HeaderFlag.NEED_REPLY)


@dataclass(frozen=True, slots=True)
class Header(_HeaderFlags):
    request: Request
    flags: int
    size: int

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
        if wire_size(kind, xen_mmap) == size:
            return decode_payload(kind, raw, xen_mmap)
    variable = [k for k in kinds if wire_size(k, xen_mmap) is None]
    if variable:
        return decode_payload(variable[0], raw, xen_mmap)
    expected = " or ".join(f"{k.value} ({wire_size(k, xen_mmap)} bytes)" for k in kinds)
    raise VhostUserProtocolError(f"{request.name}: payload size {size} does not match {expected}")


@dataclass(frozen=True, slots=True)
class Message(_HeaderFlags):
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
        """The message as scapy layers (needs scapy, the ``bench`` extra: imported only here)."""
        from scapy.packet import Raw

        from backend.scapy_layers import VhostUserBackendHeader, VhostUserHeader

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
