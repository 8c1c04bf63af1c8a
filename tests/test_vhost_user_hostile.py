"""A hostile frontend against one VhostUserServer while a well-behaved session keeps passing traffic.

Hypothesis generates batches of raw vhost-user messages (struct-packed headers, fds passed with
SCM_RIGHTS): wrong sizes and flags, unknown requests, missing and extra fds, bad memory tables,
ring addresses outside the table, out-of-range queue indices, requests before SET_OWNER (refused, except a
ring stop, SET_VRING_ENABLE 0 or GET_VRING_BASE on an existing ring, which implies the owner as a frontend
resuming on a restarted backend sends it), and shuffled valid bring-up sequences. Every message is sent
synchronously and its outcome checked:

* a well-formed request with need_reply gets an ack (1 whenever it is certainly wrong);
* a message that is malformed on the wire ends the session with a ``malformed message`` reason;
* a refused request without need_reply ends the session with a ``refused`` reason;
* nothing ends a session with an ``internal error`` and no wait is unbounded.

Between batches the good session exchanges frames through the loopback device; at the end no fd
is left behind by the hostile sessions.
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from backend.fd_channel import FdChannel
from backend.vhost_user import messages as m
from backend.vhost_user.server import ConnectionLost, SessionRecord, VhostUserServer, recv_message
from backend.virtio.features import DeviceStatus
from sim.memory import GuestMemory
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend

SPEC: Final = "sim:virtio-net,wire=loopback"
R: Final = m.FrontendRequest
V: Final = int(m.HeaderFlag.VERSION)
NR: Final = int(m.HeaderFlag.NEED_REPLY)
PAGE: Final = 0x1000
MEMFD_SIZE: Final = 0x10000  # every memfd the hostile frontend passes
GPA_BASE: Final = 0x4000_0000
UVA_BASE: Final = 0x5550_0000_0000  # valid tables and in-window ring addresses live above this
SLOT: Final = 0x10_0000  # region slots inside the window
OUTSIDE: Final = UVA_BASE + (1 << 40)  # no table the test sends reaches this far
TIMEOUT: Final = 5.0
BATCHES: Final = 75
PER_BATCH: Final = (70, 90)
MIN_MESSAGES: Final = 10_000
#: Requests a session answers before SET_OWNER (the session module's documented list).
PRE_OWNER: Final = frozenset({R.SET_OWNER, R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.SET_PROTOCOL_FEATURES,
                              R.GET_QUEUE_NUM, R.GET_MAX_MEM_SLOTS})
ALWAYS_ANSWERED: Final = frozenset({R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.GET_QUEUE_NUM,
                                    R.GET_MAX_MEM_SLOTS, R.GET_CONFIG})


def resume_stop(op: Op) -> bool:
    """SET_VRING_ENABLE 0: with GET_VRING_BASE, the ring stop that may come before SET_OWNER (owner implied)."""
    return op.request == R.SET_VRING_ENABLE and struct.unpack_from("<I", op.data, m.HEADER_SIZE + 4)[0] == 0


class Form(Enum):
    ACKED = "acked"  # well formed, need_reply set, not an explicit-reply request: an ack comes back
    EXPLICIT = "explicit"  # a request with a reply of its own
    MALFORMED = "malformed"  # broken on the wire: the session must end, reason "malformed message"
    REFUSED = "refused"  # certainly refused, no need_reply: the session must end, reason "... refused"
    TRUNCATED = "truncated"  # part of a message, then the frontend hangs up: the session ends, "partial message"


@dataclass(frozen=True)
class Op:
    label: str
    request: int
    data: bytes
    form: Form
    bad: bool = False  # refused whatever the session state
    fds: tuple[str, ...] = ()  # "ev" (eventfd) or "mem" (memfd of MEMFD_SIZE), created at send time


@dataclass(frozen=True)
class Limits:
    vq_count: int
    vq_max: int
    offered: int
    protocol: int  # the protocol features the session offers (the log features only where the atomic OR loads)


def wire(request: int, payload: bytes = b"", flags: int = V | NR, size: int | None = None) -> bytes:
    return m.HEADER.pack(request, flags, len(payload) if size is None else size) + payload


def state(index: int, num: int) -> bytes:
    return struct.pack("<II", index, num)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def region(gpa: int, size: int, uva: int, offset: int) -> bytes:
    return struct.pack("<QQQQ", gpa, size, uva, offset)


def table(regions: list[bytes], nregions: int | None = None) -> bytes:
    return struct.pack("<II", len(regions) if nregions is None else nregions, 0) + b"".join(regions)


def addr(index: int, desc: int, used: int, avail: int, flags: int = 0) -> bytes:
    return struct.pack("<IIQQQQ", index, flags, desc, used, avail, 0)


# --- strategies ---------------------------------------------------------------------------------

U32 = st.integers(0, 2**32 - 1)
U64S = st.integers(0, 2**64 - 1)


def valid_table_regions(draw: st.DrawFn) -> list[bytes]:
    n = draw(st.integers(1, 3))
    gslots = draw(st.lists(st.integers(0, 15), min_size=n, max_size=n, unique=True))
    uslots = draw(st.lists(st.integers(0, 15), min_size=n, max_size=n, unique=True))
    out = []
    for g, u in zip(gslots, uslots, strict=True):
        off = draw(st.sampled_from([0, PAGE]))
        size = draw(st.integers(1, (MEMFD_SIZE - off) // PAGE)) * PAGE
        out.append(region(GPA_BASE + g * SLOT, size, UVA_BASE + u * SLOT, off))
    return out


def in_window(draw: st.DrawFn) -> int:
    return UVA_BASE + draw(st.integers(0, 15)) * SLOT + draw(st.integers(0, MEMFD_SIZE // 16)) * 16


@st.composite
def bad_ops(draw: st.DrawFn, lim: Limits) -> Op:
    """Well-formed requests the backend must refuse whatever state the session is in."""
    bad_q = draw(st.integers(lim.vq_count, 2**32 - 1) | st.integers(lim.vq_count, lim.vq_count + 8))
    bad_q8 = draw(st.integers(lim.vq_count, 255))
    q = draw(st.integers(0, lim.vq_count - 1))
    kind = draw(st.integers(0, 17))
    if kind == 0:
        req = draw(st.sampled_from([R.SET_VRING_NUM, R.SET_VRING_BASE, R.SET_VRING_ENABLE]))
        return Op(f"{req.name} queue {bad_q}", req, wire(req, state(bad_q, draw(U32))), Form.ACKED, True)
    if kind == 1:
        req = draw(st.sampled_from([R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR]))
        return Op(f"{req.name} queue {bad_q8}", req, wire(req, u64(bad_q8)), Form.ACKED, True, ("ev",))
    if kind == 2:
        a = in_window(draw)
        return Op(f"SET_VRING_ADDR queue {bad_q}", R.SET_VRING_ADDR, wire(R.SET_VRING_ADDR, addr(bad_q, a, a, a)),
                  Form.ACKED, True)
    if kind == 3:
        num = draw(st.sampled_from([0, lim.vq_max * 2, 2**32 - 1]) | st.integers(3, lim.vq_max).filter(
            lambda n: n & (n - 1) != 0))
        return Op(f"SET_VRING_NUM size {num}", R.SET_VRING_NUM, wire(R.SET_VRING_NUM, state(q, num)), Form.ACKED,
                  True)
    if kind == 4:  # at least one ring part outside every table this test sends
        parts = [in_window(draw) for _ in range(3)]
        which = draw(st.integers(0, 2))
        parts[which] = draw(st.integers(OUTSIDE, 2**64 - 1) | st.integers(0, UVA_BASE - 1))
        return Op(f"SET_VRING_ADDR outside {parts}", R.SET_VRING_ADDR,
                  wire(R.SET_VRING_ADDR, addr(q, parts[0], parts[1], parts[2])), Form.ACKED, True)
    if kind == 5:
        a = in_window(draw)
        return Op("SET_VRING_ADDR log", R.SET_VRING_ADDR, wire(R.SET_VRING_ADDR, addr(q, a, a, a, flags=1)),
                  Form.ACKED, True)
    if kind == 6:
        num = draw(st.integers(0x1_0000, 2**32 - 1))
        return Op(f"SET_VRING_BASE {num:#x}", R.SET_VRING_BASE, wire(R.SET_VRING_BASE, state(q, num)),
                  Form.ACKED, True)
    if kind == 7:
        num = draw(st.integers(2, 2**32 - 1))
        return Op(f"SET_VRING_ENABLE {num}", R.SET_VRING_ENABLE, wire(R.SET_VRING_ENABLE, state(q, num)),
                  Form.ACKED, True)
    if kind == 16:  # a memory file where an eventfd belongs: refused before any device sees it
        req = draw(st.sampled_from([R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR]))
        return Op(f"{req.name} with a memfd", req, wire(req, u64(q)), Form.ACKED, True, ("mem",))
    if kind == 8:
        return Op("SET_VRING_KICK nofd", R.SET_VRING_KICK, wire(R.SET_VRING_KICK, u64(q | m.VRING_NOFD_MASK)),
                  Form.ACKED, True)
    if kind == 9:
        return bad_table(draw)
    if kind == 10:
        extra = draw(U64S.filter(lambda v: v & ~lim.offered != 0))
        return Op(f"SET_FEATURES {extra:#x}", R.SET_FEATURES, wire(R.SET_FEATURES, u64(extra)), Form.ACKED, True)
    if kind == 11:
        extra = draw(U64S.filter(lambda v: v & ~lim.protocol != 0))
        return Op(f"SET_PROTOCOL_FEATURES {extra:#x}", R.SET_PROTOCOL_FEATURES,
                  wire(R.SET_PROTOCOL_FEATURES, u64(extra)), Form.ACKED, True)
    if kind == 12:
        return Op("SET_MEM_TABLE postcopy ack", R.SET_MEM_TABLE, wire(R.SET_MEM_TABLE, u64(draw(U64S))),
                  Form.ACKED, True)
    if kind == 13:
        req = draw(st.sampled_from([R.NET_SET_MTU, R.CLOSE_CRYPTO_SESSION]))  # SEND_RARP, SET_LOG_BASE: served now
        return Op(f"unsupported {req.name}", req, wire(req, u64(draw(U64S))), Form.ACKED, True)
    if kind == 14:
        req = draw(st.sampled_from([R.SET_VRING_ENDIAN, R.VRING_KICK]))
        return Op(f"unsupported {req.name}", req, wire(req, state(q, draw(U32))), Form.ACKED, True)
    if kind == 15:
        req = draw(st.sampled_from([R.SET_BACKEND_REQ_FD, R.GPU_SET_SOCKET]))  # SET_LOG_FD is served with LOG_SHMFD
        fd = draw(st.sampled_from(["ev", "mem"]))
        return Op(f"unsupported {req.name} with {fd}", req, wire(req), Form.ACKED, True, (fd,))
    req = draw(st.sampled_from([R.ADD_MEM_REG, R.REM_MEM_REG, R.POSTCOPY_LISTEN]))
    if req is R.POSTCOPY_LISTEN:
        return Op("unsupported POSTCOPY_LISTEN", req, wire(req), Form.ACKED, True)
    body = u64(0) + region(GPA_BASE, MEMFD_SIZE, UVA_BASE, 0)
    return Op(f"unsupported {req.name}", req, wire(req, body), Form.ACKED, True,
              ("mem",) if req is R.ADD_MEM_REG else ())


def bad_table(draw: st.DrawFn) -> Op:
    """SET_MEM_TABLE layouts that cannot be accepted (fd count right, so the wire is fine)."""
    regions = valid_table_regions(draw)
    gpa, size, uva, off = struct.unpack("<QQQQ", regions[0])
    how = draw(st.sampled_from(["overlap-gpa", "overlap-uva", "huge", "zero", "wrap", "offset", "eventfd",
                                "unaligned", "nine-ish"]))
    fds = ["mem"] * len(regions)
    if how == "overlap-gpa":
        regions.append(region(gpa + draw(st.integers(0, size - 1)), PAGE, OUTSIDE + SLOT, 0))
    elif how == "overlap-uva":
        regions.append(region(GPA_BASE + 64 * SLOT, PAGE, uva + draw(st.integers(0, size - 1)), 0))
    elif how == "huge":
        regions[0] = region(gpa, draw(st.integers(MEMFD_SIZE + 1, 2**63) | st.just(2**64 - 1 - uva)), uva, 0)
    elif how == "zero":
        regions[0] = region(gpa, 0, uva, off)
    elif how == "wrap":
        regions[0] = region(2**64 - PAGE, 2 * PAGE, uva, 0)
    elif how == "offset":
        regions[0] = region(gpa, PAGE, uva, draw(st.integers(MEMFD_SIZE, 2**64 - 1 - PAGE)))
    elif how == "eventfd":
        fds[0] = "ev"
    elif how == "unaligned":
        regions[0] = region(gpa + draw(st.integers(1, PAGE - 1)), size - PAGE or PAGE, uva, 0) if size > PAGE \
            else region(gpa, draw(st.integers(1, PAGE - 1)), uva, 0)
    else:  # a valid table and then an overlapping copy of its first region
        regions.append(regions[0])
    fds = fds + ["mem"] * (len(regions) - len(fds))
    if len(regions) > m.MAX_MEM_REGIONS:
        regions, fds = regions[:m.MAX_MEM_REGIONS], fds[:m.MAX_MEM_REGIONS]
    return Op(f"SET_MEM_TABLE {how}", R.SET_MEM_TABLE, wire(R.SET_MEM_TABLE, table(regions)), Form.ACKED, True,
              tuple(fds))


@st.composite
def valid_ops(draw: st.DrawFn, lim: Limits) -> Op:
    """Requests that are fine on their own; whether they succeed depends on what came before."""
    q = draw(st.integers(0, lim.vq_count - 1))
    kind = draw(st.integers(0, 12))
    if kind == 0:
        return Op("SET_OWNER", R.SET_OWNER, wire(R.SET_OWNER), Form.ACKED)
    if kind == 1:
        req = draw(st.sampled_from([R.RESET_OWNER, R.RESET_DEVICE]))
        return Op(req.name, req, wire(req), Form.ACKED)
    if kind == 2:
        v = draw(U64S) & lim.offered
        return Op(f"SET_FEATURES {v:#x}", R.SET_FEATURES, wire(R.SET_FEATURES, u64(v)), Form.ACKED)
    if kind == 3:
        v = draw(U64S) & lim.protocol
        return Op(f"SET_PROTOCOL_FEATURES {v:#x}", R.SET_PROTOCOL_FEATURES, wire(R.SET_PROTOCOL_FEATURES, u64(v)),
                  Form.ACKED)
    if kind == 4:
        regions = valid_table_regions(draw)
        return Op(f"SET_MEM_TABLE x{len(regions)}", R.SET_MEM_TABLE, wire(R.SET_MEM_TABLE, table(regions)),
                  Form.ACKED, False, ("mem",) * len(regions))
    if kind == 5:
        num = 1 << draw(st.integers(0, lim.vq_max.bit_length() - 1))
        return Op(f"SET_VRING_NUM {num}", R.SET_VRING_NUM, wire(R.SET_VRING_NUM, state(q, num)), Form.ACKED)
    if kind == 6:
        return Op("SET_VRING_BASE 0", R.SET_VRING_BASE, wire(R.SET_VRING_BASE, state(q, 0)), Form.ACKED)
    if kind == 7:
        d, u, a = in_window(draw), in_window(draw), in_window(draw)
        return Op("SET_VRING_ADDR in window", R.SET_VRING_ADDR, wire(R.SET_VRING_ADDR, addr(q, d, u, a)), Form.ACKED)
    if kind == 8:
        req = draw(st.sampled_from([R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR]))
        nofd = req is not R.SET_VRING_KICK and draw(st.booleans())
        return Op(f"{req.name} nofd={nofd}", req, wire(req, u64(q | (m.VRING_NOFD_MASK if nofd else 0))),
                  Form.ACKED, False, () if nofd else ("ev",))
    if kind == 9:
        return Op("SET_VRING_ENABLE", R.SET_VRING_ENABLE, wire(R.SET_VRING_ENABLE, state(q, draw(st.integers(0, 1)))),
                  Form.ACKED)
    if kind == 10:
        s = draw(st.integers(0, 0xFF))
        return Op(f"SET_STATUS {s:#x}", R.SET_STATUS, wire(R.SET_STATUS, u64(s)), Form.ACKED)
    if kind == 11:
        data = draw(st.binary(max_size=8))
        body = struct.pack("<III", draw(st.integers(0, 40)), len(data), draw(st.integers(0, 1))) + data
        return Op("SET_CONFIG", R.SET_CONFIG, wire(R.SET_CONFIG, body), Form.ACKED)
    req = draw(st.sampled_from(sorted(ALWAYS_ANSWERED)))
    flags = V | draw(st.sampled_from([0, NR]))
    if req is R.GET_CONFIG:
        size = draw(st.integers(0, 16))
        body = struct.pack("<III", draw(st.integers(0, 64)), size, 0) + bytes(size)
        return Op("GET_CONFIG", req, wire(req, body, flags), Form.EXPLICIT)
    return Op(req.name, req, wire(req, b"", flags), Form.EXPLICIT)


@st.composite
def bring_up(draw: st.DrawFn, lim: Limits) -> tuple[Op, ...]:
    """A complete valid bring-up (table, two rings inside it, DRIVER_OK), in a random order."""
    feats = lim.offered & ((1 << 32) | (1 << m.VHOST_USER_F_PROTOCOL_FEATURES))  # VERSION_1 + protocol
    proto = m.ProtocolFeature.REPLY_ACK.mask | m.ProtocolFeature.STATUS.mask
    script = [
        Op("up SET_OWNER", R.SET_OWNER, wire(R.SET_OWNER), Form.ACKED),
        Op("up SET_PROTOCOL_FEATURES", R.SET_PROTOCOL_FEATURES, wire(R.SET_PROTOCOL_FEATURES, u64(proto)), Form.ACKED),
        Op("up SET_FEATURES", R.SET_FEATURES, wire(R.SET_FEATURES, u64(feats)), Form.ACKED),
        Op("up SET_MEM_TABLE", R.SET_MEM_TABLE,
           wire(R.SET_MEM_TABLE, table([region(GPA_BASE, MEMFD_SIZE, UVA_BASE, 0)])), Form.ACKED, False, ("mem",)),
        Op("up SET_STATUS", R.SET_STATUS, wire(R.SET_STATUS, u64(int(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER
                                                                     | DeviceStatus.FEATURES_OK
                                                                     | DeviceStatus.DRIVER_OK))), Form.ACKED),
    ]
    for q in range(2):
        base = UVA_BASE + q * 0x4000
        script += [
            Op(f"up SET_VRING_NUM {q}", R.SET_VRING_NUM, wire(R.SET_VRING_NUM, state(q, 64)), Form.ACKED),
            Op(f"up SET_VRING_BASE {q}", R.SET_VRING_BASE, wire(R.SET_VRING_BASE, state(q, 0)), Form.ACKED),
            Op(f"up SET_VRING_ADDR {q}", R.SET_VRING_ADDR,
               wire(R.SET_VRING_ADDR, addr(q, base, base + 0x2000, base + 0x1000)), Form.ACKED),
            Op(f"up SET_VRING_KICK {q}", R.SET_VRING_KICK, wire(R.SET_VRING_KICK, u64(q)), Form.ACKED, False, ("ev",)),
            Op(f"up SET_VRING_CALL {q}", R.SET_VRING_CALL, wire(R.SET_VRING_CALL, u64(q)), Form.ACKED, False, ("ev",)),
            Op(f"up SET_VRING_ENABLE {q}", R.SET_VRING_ENABLE, wire(R.SET_VRING_ENABLE, state(q, 1)), Form.ACKED),
        ]
    if draw(st.booleans()):
        return tuple(script)  # in order: the device really starts
    return tuple(draw(st.permutations(script)))


@st.composite
def malformed_ops(draw: st.DrawFn, lim: Limits) -> Op:
    """Broken on the wire: the session must be dropped with a 'malformed message' reason."""
    q = draw(st.integers(0, lim.vq_count - 1))
    kind = draw(st.integers(0, 10))
    if kind == 0:
        n = draw(st.sampled_from([0, 45, 99, 0xFFFF, 2**32 - 1]) | st.integers(45, 2**32 - 1))
        return Op(f"unknown request {n}", n, wire(n, b""), Form.MALFORMED)
    if kind == 1:
        flags = draw(st.sampled_from([0, 2, 3, V | 0x10, V | 0x8000_0000, V | int(m.HeaderFlag.REPLY)]))
        return Op(f"flags {flags:#x}", R.SET_OWNER, wire(R.SET_OWNER, b"", flags), Form.MALFORMED)
    if kind == 2:
        size = draw(st.integers(m.MAX_PAYLOAD_SIZE + 1, 2**32 - 1))
        return Op(f"size {size}", R.SET_VRING_NUM, wire(R.SET_VRING_NUM, b"", size=size), Form.MALFORMED)
    if kind == 3:
        req = draw(st.sampled_from([R.SET_VRING_NUM, R.SET_FEATURES, R.SET_VRING_ADDR, R.SET_OWNER, R.SET_STATUS,
                                    R.GET_FEATURES]))
        fixed = {R.SET_VRING_NUM: 8, R.SET_FEATURES: 8, R.SET_VRING_ADDR: 40, R.SET_OWNER: 0, R.SET_STATUS: 8,
                 R.GET_FEATURES: 0}[req]
        size = draw(st.integers(0, 64).filter(lambda s: s != fixed))
        return Op(f"{req.name} size {size}", req, wire(req, draw(st.binary(min_size=size, max_size=size))),
                  Form.MALFORMED)
    if kind == 4:
        regions = valid_table_regions(draw)
        n = draw(st.sampled_from([0, len(regions) + 1, m.MAX_MEM_REGIONS + 1, 2**32 - 1]))
        return Op(f"SET_MEM_TABLE nregions {n}", R.SET_MEM_TABLE, wire(R.SET_MEM_TABLE, table(regions, n)),
                  Form.MALFORMED, False, ("mem",) * len(regions))
    if kind == 5:  # fd count does not match the regions
        regions = valid_table_regions(draw)
        nfds = draw(st.integers(0, m.MAX_FDS).filter(lambda k: k != len(regions)))
        return Op(f"SET_MEM_TABLE {len(regions)} regions {nfds} fds", R.SET_MEM_TABLE,
                  wire(R.SET_MEM_TABLE, table(regions)), Form.MALFORMED, False, ("mem",) * nfds)
    if kind == 6:  # missing fd
        req = draw(st.sampled_from([R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_LOG_FD, R.SET_BACKEND_REQ_FD]))
        body = u64(q) if req in (R.SET_VRING_KICK, R.SET_VRING_CALL) else b""
        return Op(f"{req.name} missing fd", req, wire(req, body), Form.MALFORMED)
    if kind == 7:  # extra fds
        req = draw(st.sampled_from([R.SET_OWNER, R.SET_VRING_NUM, R.GET_FEATURES, R.SET_VRING_KICK]))
        body = {R.SET_OWNER: b"", R.SET_VRING_NUM: state(q, 64), R.GET_FEATURES: b"",
                R.SET_VRING_KICK: u64(q)}[req]
        n = draw(st.integers(1, 3)) + (1 if req is R.SET_VRING_KICK else 0)
        return Op(f"{req.name} {n} fds", req, wire(req, body), Form.MALFORMED, False,
                  tuple(draw(st.sampled_from(["ev", "mem"])) for _ in range(n)))
    if kind == 8:  # more fds than the backend takes in one message
        n = draw(st.integers(m.MAX_FDS + 1, 16))
        return Op(f"SET_OWNER {n} fds", R.SET_OWNER, wire(R.SET_OWNER), Form.MALFORMED, False, ("ev",) * n)
    if kind == 9:
        word = draw(st.integers(1 << 9, 2**64 - 1))
        return Op(f"SET_VRING_CALL word {word:#x}", R.SET_VRING_CALL, wire(R.SET_VRING_CALL, u64(word)),
                  Form.MALFORMED, False, ("ev",))
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return Op("SET_STATUS > 0xff", R.SET_STATUS, wire(R.SET_STATUS, u64(draw(st.integers(0x100, 2**64 - 1)))),
                  Form.MALFORMED)
    if choice == 1:
        body = struct.pack("<III", 0, 4, draw(st.integers(2, 2**32 - 1))) + bytes(4)
        return Op("SET_CONFIG flags", R.SET_CONFIG, wire(R.SET_CONFIG, body), Form.MALFORMED)
    body = struct.pack("<III", 0, draw(st.integers(5, 2**32 - 1)), 0) + bytes(4)
    return Op("GET_CONFIG size field", R.GET_CONFIG, wire(R.GET_CONFIG, body), Form.MALFORMED)


@st.composite
def fatal_ops(draw: st.DrawFn, lim: Limits) -> Op:
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        return draw(malformed_ops(lim))
    if kind == 3:  # certainly refused, and no need_reply: the session cannot report it otherwise
        op = draw(bad_ops(lim))
        req, _flags, size = m.HEADER.unpack_from(op.data)
        data = m.HEADER.pack(req, V, size) + op.data[m.HEADER_SIZE:]
        return Op(op.label + " (no need_reply)", op.request, data, Form.REFUSED, True, op.fds)
    if kind == 4:
        bad_q = draw(st.integers(lim.vq_count, 2**32 - 1))
        return Op(f"GET_VRING_BASE {bad_q}", R.GET_VRING_BASE, wire(R.GET_VRING_BASE, state(bad_q, 0), V),
                  Form.EXPLICIT, True)
    full = wire(R.SET_VRING_ADDR, addr(0, UVA_BASE, UVA_BASE, UVA_BASE))
    cut = draw(st.integers(1, len(full) - 1))
    return Op(f"truncated at {cut}", R.SET_VRING_ADDR, full[:cut], Form.TRUNCATED)


def batches(lim: Limits) -> st.SearchStrategy[list[tuple[Op, ...]]]:
    single = st.integers(0, 99).flatmap(
        lambda k: fatal_ops(lim) if k < 3 else valid_ops(lim) if k < 55 else bad_ops(lim)).map(lambda op: (op,))
    item = st.integers(0, 39).flatmap(lambda k: bring_up(lim) if k == 0 else single)
    return st.lists(item, min_size=PER_BATCH[0], max_size=PER_BATCH[1])


# --- the hostile frontend -------------------------------------------------------------------------


def make_fd(kind: str) -> int:
    if kind == "ev":
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC)
    os.ftruncate(fd, MEMFD_SIZE)
    return fd


@dataclass
class Counts:
    sent: int = 0
    sessions: int = 0
    started: int = 0  # bring-up SET_STATUS(DRIVER_OK) requests the backend accepted
    acks: dict[int, int] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)

    def ack(self, value: int) -> None:
        self.acks[value] = self.acks.get(value, 0) + 1

    def close(self, why: str) -> None:
        self.closed[why] = self.closed.get(why, 0) + 1


class Hostile:
    """One hostile connection at a time; a new one whenever the server drops the current one."""

    def __init__(self, server: VhostUserServer, path: str, first_id: int) -> None:
        self.server = server
        self.path = path
        self.next_id = first_id
        self.sock: socket.socket | None = None
        self.rec_id = 0
        self.owner = False
        self.counts = Counts()

    def record(self) -> SessionRecord:
        recs = [r for r in list(self.server.sessions) if r.id == self.rec_id]
        assert recs, f"no server record for hostile session #{self.rec_id}"
        return recs[0]

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(self.path)
        self.sock, self.rec_id, self.owner = sock, self.next_id, False
        self.next_id += 1
        self.counts.sessions += 1
        # A first answered request: the server has accepted this connection and holds its record.
        self.transmit(wire(R.GET_FEATURES, b"", V), ())
        reply = self.reply()
        assert reply is not None and reply.request is R.GET_FEATURES, reply
        return sock

    def transmit(self, data: bytes, kinds: tuple[str, ...]) -> None:
        sock = self.sock
        assert sock is not None
        fds = [make_fd(k) for k in kinds]
        try:
            FdChannel(sock, max_fds=0).send(data, fds)  # sends only: no fds are received on it
        finally:
            for fd in fds:  # the backend has its own copies now
                os.close(fd)
        self.counts.sent += 1

    def reply(self) -> m.Message | None:
        """The next reply, or None when the backend closed the connection (timeouts fail the test)."""
        assert self.sock is not None
        try:
            return recv_message(self.sock, reply=True)
        except (ConnectionLost, ConnectionResetError):
            return None

    def expect_closed(self, op: Op) -> str:
        """The backend must hang up; returns the reason recorded for the session."""
        assert self.sock is not None
        try:
            extra = self.sock.recv(64)
        except ConnectionResetError:
            extra = b""
        assert extra == b"", f"{op.label}: backend answered {extra!r} instead of closing the session"
        return self.finish(op)

    def finish(self, op: Op | None) -> str:
        assert self.sock is not None
        self.sock.close()
        self.sock = None
        rec = self.record()
        assert rec.ended.wait(TIMEOUT), f"hostile session #{rec.id} did not end"
        reason = rec.reason or ""
        assert "internal error" not in reason, f"{op.label if op else 'hang-up'}: {reason}"
        return reason

    def run(self, op: Op) -> None:
        if self.sock is None:
            self.connect()
        self.transmit(op.data, op.fds)
        match op.form:
            case Form.ACKED:
                self.acked(op)
            case Form.EXPLICIT:
                self.explicit(op)
            case Form.MALFORMED:
                reason = self.expect_closed(op)
                assert reason.startswith("malformed message:"), f"{op.label}: reason {reason!r}"
                self.counts.close("malformed")
            case Form.REFUSED:
                reason = self.expect_closed(op)
                assert "refused" in reason, f"{op.label}: reason {reason!r}"
                self.counts.close("refused")
            case Form.TRUNCATED:
                assert self.sock is not None
                self.sock.shutdown(socket.SHUT_WR)
                reason = self.expect_closed(op)
                assert reason.startswith("partial message: connection closed after "), \
                    f"{op.label}: a hang-up inside a message was logged as {reason!r}"
                self.counts.close("hang-up")

    def acked(self, op: Op) -> None:
        reply = self.reply()
        assert reply is not None, f"{op.label}: session dropped ({self.finish(op)!r}) instead of an ack"
        assert reply.request == op.request and isinstance(reply.payload, m.U64), f"{op.label}: got {reply}"
        value = reply.payload.value
        self.counts.ack(value)
        if not self.owner and not op.bad and resume_stop(op):
            # A ring stop before SET_OWNER is a frontend resuming on a restarted backend: the owner is implied.
            assert value == 0, f"{op.label}: acked {value}, expected the owner implied by a resuming ring stop"
            self.owner = True
        elif op.bad or (not self.owner and op.request not in PRE_OWNER):
            assert value == 1, f"{op.label}: acked {value}, expected a failure (owner={self.owner})"
        elif op.request == R.SET_OWNER:
            assert value == int(self.owner), f"SET_OWNER acked {value} with owner={self.owner}"
            self.owner = True
        else:
            assert value in (0, 1), f"{op.label}: ack value {value}"
            self.counts.started += op.label == "up SET_STATUS" and value == 0

    def explicit(self, op: Op) -> None:
        reply = self.reply()
        answered = op.request in ALWAYS_ANSWERED and not op.bad
        if reply is None:
            assert not answered, f"{op.label}: session dropped ({self.finish(op)!r})"
            reason = self.finish(op)
            assert "refused" in reason, f"{op.label}: reason {reason!r}"
            self.counts.close("refused")
            return
        assert not op.bad, f"{op.label}: answered {reply} instead of dropping the session"
        assert reply.request == op.request and reply.is_reply, f"{op.label}: got {reply}"

    def close(self) -> None:
        if self.sock is not None:
            reason = self.finish(None)
            assert reason == "", f"a clean hang-up was logged as {reason!r}"


# --- the test -------------------------------------------------------------------------------------


def open_fds() -> dict[int, str]:
    """This process's open fds and what they point at (after a collection, so that objects other
    tests left for the garbage collector do not close theirs in the middle of the comparison)."""
    gc.collect()
    out: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return out


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[VhostUserServer, str]]:
    path = str(tmp_path / "hostile.sock")
    srv = VhostUserServer.for_target(path, SPEC)
    yield srv, path
    srv.close()


def test_hostile_frontend_never_breaks_the_server(server: tuple[VhostUserServer, str]) -> None:
    srv, path = server
    mem = GuestMemory.single(4 << 20, gpa=0x1_0000_0000)
    good = VhostUserFrontend.connect(path, mem, uva_offset=0x7F00_0000_0000, timeout=TIMEOUT)
    hostile = Hostile(srv, path, first_id=2)
    try:
        good.start(size=256)
        good_rec = srv.sessions[0]
        session = good_rec.session
        assert session is not None
        lim = Limits(session.device.get_vq_count(), session.device.get_vq_num_max(0), session.offered_features(),
                     session.offered_protocol_features())
        checked = 0

        def traffic(tag: int) -> None:
            nonlocal checked
            sent = [test_frame(tag * 8 + k, 60 + (tag * 37 + k * 101) % 1400) for k in range(4)]
            got = good.exchange(sent, timeout=TIMEOUT)
            assert got == sent, f"good session after batch {tag}: sent {len(sent)} frames, got {len(got)} back intact"
            checked += len(sent)

        traffic(0)
        fds_before = open_fds()
        batch_no = 0

        @settings(max_examples=BATCHES, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(batches(lim))
        def hostile_batch(items: list[tuple[Op, ...]]) -> None:
            nonlocal batch_no
            batch_no += 1
            for item in items:
                for op in item:
                    hostile.run(op)
            traffic(batch_no)

        hostile_batch()
        hostile.close()
        assert not good_rec.ended.is_set(), f"the good session ended: {good_rec.reason}"
        traffic(batch_no + 1)
        for rec in list(srv.sessions)[1:]:
            assert rec.ended.wait(TIMEOUT), f"hostile session #{rec.id} still running"
        fds_after = open_fds()
    finally:
        if hostile.sock is not None:
            with contextlib.suppress(OSError):
                hostile.sock.close()
        good.close()
        mem.close()
    c = hostile.counts
    print(f"hostile messages sent {c.sent} over {c.sessions} sessions; acks {c.acks}; drops {c.closed}; "
          f"devices started {c.started}; good frames checked {checked}")
    assert c.sent >= MIN_MESSAGES, f"only {c.sent} hostile messages sent"
    assert c.acks.get(1, 0) > 1000 and c.acks.get(0, 0) > 100, c.acks
    assert c.started > 0, "no hostile session ever got its device to DRIVER_OK"
    assert all(c.closed.get(k, 0) > 5 for k in ("malformed", "refused", "hang-up")), c.closed
    leaked = {fd: what for fd, what in fds_after.items() if fds_before.get(fd) != what}
    assert not leaked, f"{len(leaked)} fds opened during the hostile sessions are still open: {leaked}"
