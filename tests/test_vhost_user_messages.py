"""vhost-user codec: capture replay, per-kind round trips, strict rejections and a decode fuzz."""

from __future__ import annotations

import csv
import json
import re
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.scapy_layers import VhostUserBackendHeader, VhostUserHeader
from backend.vhost_user.messages import (
    BACKEND_SPECS,
    EMPTY,
    FRONTEND_SPECS,
    HEADER,
    HEADER_SIZE,
    MAX_CONFIG_SIZE,
    MAX_MEM_REGIONS,
    MAX_PAYLOAD_SIZE,
    MAX_SHMEM_REGIONS,
    U64,
    UNCERTAIN_BACKEND_REQUESTS,
    UNCERTAIN_FRONTEND_REQUESTS,
    UNCERTAIN_PROTOCOL_FEATURES,
    VHOST_F_LOG_ALL,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VRING_NOFD_MASK,
    BackendRequest,
    Channel,
    ConfigFlags,
    ConfigSpace,
    CryptoSession,
    DeviceStateResult,
    DeviceStateTransfer,
    FrontendRequest,
    HeaderFlag,
    Inflight,
    IotlbMsg,
    IotlbPerm,
    IotlbType,
    LogDescription,
    MemoryRegion,
    MemoryTable,
    Message,
    MigrationPhase,
    Payload,
    PayloadKind,
    ProtocolFeature,
    Request,
    SharedObject,
    ShmemConfig,
    ShmemMap,
    SingleMemoryRegion,
    Status,
    TransferDirection,
    VhostUserProtocolError,
    VringAddr,
    VringArea,
    VringFile,
    VringState,
    XenMmap,
    decode,
    decode_bytes,
    fd_range,
    parse_header,
    rarp_mac,
    spec_of,
    vring_index,
    vring_nofd,
    vring_word,
)
from tests.captures import (
    CAPTURES,
    HEADER_KEYS,
    JSONL,
    capture_records,
    expected_fields,
    header_flags,
    payload_from_record,
    placeholder_fds,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC_CSV = ROOT / "testbenches" / "conformance" / "spec" / "vhost-user-messages.csv"


# ---------------------------------------------------------------------------------------------
# captures


def test_capture_files_present() -> None:
    assert len(JSONL) == 5
    assert sum(1 for _ in capture_records()) == 241


@pytest.mark.parametrize("path", JSONL, ids=lambda p: p.stem)
def test_replay_capture(path: Path) -> None:
    seen = 0
    with path.open() as f:
        records = [json.loads(line) for line in f if line.strip()]
    for rec in records:
        req = FrontendRequest(rec["request"])
        assert req.name == rec["name"], rec
        flags = header_flags(rec)
        payload = payload_from_record(req, rec)
        with ExitStack() as stack:
            fds = placeholder_fds(stack, rec["nfds"], memory=isinstance(payload, MemoryTable))
            built = Message(req, payload, fds, flags)
            data, out_fds = built.encode()
            assert len(data) == HEADER_SIZE + rec["size"], rec
            assert out_fds == fds
            back = decode(data[:HEADER_SIZE], data[HEADER_SIZE:], out_fds, reply=rec["reply"])
            assert back == built
            assert back.direction == rec["dir"]
            assert back.fields() == expected_fields(rec), rec
            line = back.describe()
            assert "\n" not in line and rec["name"] in line and line.startswith(rec["dir"])
        seen += 1
    assert seen == len(records) > 0


def test_capture_session_shapes() -> None:
    """A few facts from the captures the backend will have to answer the same way."""
    recs = [r for _, r in capture_records()]
    kinds = {(r["name"], r["reply"]) for r in recs}
    assert ("GET_VRING_BASE", True) in kinds and ("SET_MEM_TABLE", True) in kinds
    # every need_reply request is answered by a reply with the same request number
    for name in ("SET_MEM_TABLE", "SET_STATUS"):
        asks = [r for r in recs if r["name"] == name and r["need_reply"]]
        answers = [r for r in recs if r["name"] == name and r["reply"]]
        assert len(asks) == len(answers) > 0
    # the protocol features offered and acked decode into known bits only
    known = sum(f.mask for f in ProtocolFeature)
    for r in recs:
        if "protocol_features" in r:
            assert r["protocol_features"] & ~known == 0
        if "features" in r and r["reply"]:
            assert r["features"] >> VHOST_USER_F_PROTOCOL_FEATURES & 1


@pytest.mark.parametrize("name", ["qemu-7.2-guest-sequence.txt", "qemu-7.2-guest-iotlb-sequence.txt"])
def test_qemu_log_names_and_features(name: str) -> None:
    text = (CAPTURES / name).read_text()
    names = re.findall(r"read message VHOST_USER_(\w+)", text)
    assert names
    for n in names:
        assert FrontendRequest[n].name in FrontendRequest.__members__  # former names (SLAVE) resolve too
    assert "SET_SLAVE_REQ_FD" not in {m.name for m in FrontendRequest}  # alias, not a member of its own
    assert FrontendRequest["SET_SLAVE_REQ_FD"] is FrontendRequest.SET_BACKEND_REQ_FD
    (proto,) = re.findall(r"negotiated Vhost-user protocol features: (0x[0-9a-f]+)", text)
    value = int(proto, 16)
    bits = [ProtocolFeature(b) for b in range(64) if value >> b & 1]
    assert sum(b.mask for b in bits) == value
    # statuses and the memory region the back-end logged round-trip through the codec
    for status in re.findall(r"new device status\((0x[0-9a-f]+)\)", text):
        msg = Message(FrontendRequest.SET_STATUS, Status(int(status, 16)))
        assert decode_bytes(msg.encode()[0]) == msg
    for size, gpa, uva, off in re.findall(
            r"region size: (0x[0-9a-f]+)\s+guest physical addr: (0x[0-9a-f]+)\s+guest virtual\s+addr: "
            r"(0x[0-9a-f]+)(?:.|\n)*?mmap off\s*: (0x[0-9a-f]+)", text):
        table = MemoryTable((MemoryRegion(int(gpa, 16), int(size, 16), int(uva, 16), int(off, 16)),))
        msg = Message(FrontendRequest.SET_MEM_TABLE, table, (3,))
        assert decode_bytes(*msg.encode()) == msg


# ---------------------------------------------------------------------------------------------
# numbers vs the spec CSV


def test_enums_match_spec_csv() -> None:
    with SPEC_CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    front = [r for r in rows if r["record_type"] == "message" and r["direction"].startswith("front-end")]
    back = [r for r in rows if r["record_type"] == "message" and r["direction"].startswith("back-end")]
    assert (len(front), len(back)) == (44, 10)
    assert len(FrontendRequest) == 44 and len(BackendRequest) == 10
    for r in front:
        m = FrontendRequest(int(r["id"]))
        assert m.wire_name == r["name"]
        if r["former_name"]:
            assert FrontendRequest[r["former_name"].removeprefix("VHOST_USER_")] is m
        assert (m in UNCERTAIN_FRONTEND_REQUESTS) == ("absent from the stored" in r["source"])
    for r in back:
        b = BackendRequest(int(r["id"]))
        assert b.wire_name == r["name"]
        assert (b in UNCERTAIN_BACKEND_REQUESTS) == ("absent from the stored" in r["source"])
    protos = [r for r in rows if r["record_type"] == "protocol_feature"]
    assert len(protos) == len(ProtocolFeature) == 21
    for r in protos:
        p = ProtocolFeature(int(r["id"]))
        assert f"VHOST_USER_PROTOCOL_F_{p.name}" == r["name"]
        assert (p in UNCERTAIN_PROTOCOL_FEATURES) == ("absent from the stored" in r["source"])
    bits = {r["name"]: int(r["id"]) for r in rows if r["record_type"] == "feature_bit"}
    assert bits == {"VHOST_USER_F_PROTOCOL_FEATURES": VHOST_USER_F_PROTOCOL_FEATURES,
                    "VHOST_F_LOG_ALL": VHOST_F_LOG_ALL}
    flags = {r["name"]: r["id"] for r in rows if r["record_type"] == "header_flag"}
    assert flags == {"VERSION": "0-1", "REPLY": "2", "NEED_REPLY": "3"}
    assert (HeaderFlag.VERSION, HeaderFlag.REPLY, HeaderFlag.NEED_REPLY) == (0x1, 0x4, 0x8)
    assert ProtocolFeature["NET_MTU"] is ProtocolFeature.MTU
    assert ProtocolFeature["SLAVE_REQ"] is ProtocolFeature.BACKEND_REQ
    assert set(FRONTEND_SPECS) == set(FrontendRequest) and set(BACKEND_SPECS) == set(BackendRequest)


# ---------------------------------------------------------------------------------------------
# round trips


u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, (1 << 64) - 1)


@st.composite
def regions(draw: st.DrawFn, xen: bool) -> MemoryRegion:
    x = XenMmap(draw(u32), draw(u32)) if xen else None
    return MemoryRegion(draw(u64), draw(u64), draw(u64), draw(u64), x)


def payloads(kind: PayloadKind, xen: bool) -> st.SearchStrategy[Payload]:
    table: dict[PayloadKind, st.SearchStrategy[Payload]] = {
        PayloadKind.EMPTY: st.just(EMPTY),
        PayloadKind.U64: st.builds(U64, u64),
        PayloadKind.STATUS: st.builds(Status, u8),
        PayloadKind.VRING_STATE: st.builds(VringState, u32, u32),
        PayloadKind.VRING_FILE: st.builds(VringFile, u8, st.booleans()),
        PayloadKind.VRING_ADDR: st.builds(VringAddr, u32, u32, u64, u64, u64, u64),
        PayloadKind.MEMORY_TABLE: st.lists(regions(xen), min_size=1, max_size=MAX_MEM_REGIONS).map(
            lambda rs: MemoryTable(tuple(rs))),
        PayloadKind.SINGLE_REGION: regions(xen).map(SingleMemoryRegion),
        PayloadKind.LOG: st.builds(LogDescription, u64, u64),
        PayloadKind.IOTLB: st.builds(IotlbMsg, u64, u64, u64, st.sampled_from(list(IotlbPerm)),
                                     st.sampled_from(list(IotlbType))),
        PayloadKind.CONFIG: st.builds(ConfigSpace, u32, st.sampled_from(list(ConfigFlags)),
                                      st.binary(max_size=MAX_CONFIG_SIZE)),
        PayloadKind.VRING_AREA: st.builds(VringArea, u8, u64, u64, st.booleans()),
        PayloadKind.INFLIGHT: st.builds(Inflight, u64, u64, u16, u16),
        PayloadKind.SHARED_OBJECT: st.builds(SharedObject, st.uuids()),
        PayloadKind.DEVICE_STATE: st.builds(DeviceStateTransfer, st.sampled_from(list(TransferDirection)),
                                            st.just(MigrationPhase.STOPPED)),
        PayloadKind.DEVICE_STATE_RESULT: st.one_of(st.builds(DeviceStateResult, u8, st.just(True)),
                                                   st.builds(DeviceStateResult, st.just(0), st.just(False))),
        PayloadKind.SHMEM_CONFIG: st.builds(ShmemConfig, st.integers(0, MAX_SHMEM_REGIONS),
                                            st.lists(u64, min_size=MAX_SHMEM_REGIONS, max_size=MAX_SHMEM_REGIONS)
                                            .map(tuple)),
        PayloadKind.SHMEM_MMAP: st.builds(ShmemMap, u8, u64, u64, u64, u64),
        PayloadKind.CRYPTO_SESSION: st.builds(CryptoSession, st.binary(min_size=1, max_size=1024)),
    }
    return table[kind]


def _combos() -> list[tuple[Request, bool, PayloadKind]]:
    out: list[tuple[Request, bool, PayloadKind]] = []
    for spec_table in (FRONTEND_SPECS, BACKEND_SPECS):
        for req, spec in spec_table.items():
            out += [(req, False, k) for k in spec.kinds] + [(req, True, k) for k in spec.reply_kinds]
    return out


COMBOS = _combos()


def test_every_payload_kind_is_used() -> None:
    assert {k for _, _, k in COMBOS} == set(PayloadKind)
    assert len(PayloadKind) == 19


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), combo=st.sampled_from(COMBOS), need_reply=st.booleans(), xen=st.booleans())
def test_round_trip_every_request_and_kind(data: st.DataObject, combo: tuple[Request, bool, PayloadKind],
                                           need_reply: bool, xen: bool) -> None:
    req, is_reply, kind = combo
    payload = data.draw(payloads(kind, xen))
    lo, hi = fd_range(req, payload, reply=is_reply)
    nfds = data.draw(st.integers(lo, hi))
    flags = HeaderFlag.VERSION | (HeaderFlag.REPLY if is_reply else 0)
    if need_reply and not is_reply:
        flags |= HeaderFlag.NEED_REPLY
    if kind is PayloadKind.MEMORY_TABLE and not is_reply and isinstance(payload, MemoryTable):
        assert (lo, hi) == (payload.nregions, payload.nregions)
    msg = Message(req, payload, tuple(range(100, 100 + nfds)), flags)
    data_bytes, fds = msg.encode()
    channel = Channel.MAIN if isinstance(req, FrontendRequest) else Channel.BACKEND
    back = decode(data_bytes[:HEADER_SIZE], data_bytes[HEADER_SIZE:], fds, channel=channel, reply=is_reply,
                  xen_mmap=xen)
    assert back == msg
    assert back.kind is kind
    assert not set(payload.fields()) & HEADER_KEYS  # payload keys never shadow header keys
    assert back.fields()["size"] == len(data_bytes) - HEADER_SIZE
    assert back.encode() == (data_bytes, fds)
    assert len(back.describe().splitlines()) == 1
    assert bytes(msg.to_scapy()) == data_bytes


@given(index=u8, nofd=st.booleans())
def test_vring_word_helpers(index: int, nofd: bool) -> None:
    w = vring_word(index, nofd)
    assert (vring_index(w), vring_nofd(w)) == (index, nofd)
    assert VringFile(index, nofd).word == w


@given(index=u32, avail=st.integers(0, 0x7FFF), aw=st.booleans(), used=st.integers(0, 0x7FFF), uw=st.booleans())
def test_packed_vring_base(index: int, avail: int, aw: bool, used: int, uw: bool) -> None:
    s = VringState.packed_base(index, avail, aw, used, uw)
    assert (s.packed_avail_idx, s.packed_avail_wrap, s.packed_used_idx, s.packed_used_wrap) == (avail, aw, used, uw)
    assert s.split_avail_idx == avail | (aw << 15)


# ---------------------------------------------------------------------------------------------
# rejections


def raw_msg(request: int, flags: int, payload: bytes) -> tuple[bytes, bytes]:
    return VhostUserHeader(request=request, flags=flags, size=len(payload)).build(), payload


def rejects(match: str, header: bytes, payload: bytes = b"", fds: tuple[int, ...] = (), **kw: Any) -> None:
    with pytest.raises(VhostUserProtocolError, match=match) as exc:
        decode(header, payload, fds, **kw)
    assert exc.value.reason


U64_0 = (0).to_bytes(8, "little")


def test_reject_unknown_request() -> None:
    rejects("unknown front-end request number 0", *raw_msg(0, 1, b""))
    rejects("unknown front-end request number 45", *raw_msg(45, 1, b""))
    rejects("unknown back-end request number 11", *raw_msg(11, 1, b""), channel=Channel.BACKEND)


def test_reject_header_flags() -> None:
    rejects("version 0", *raw_msg(1, 0, b""))
    rejects("version 2", *raw_msg(1, 2, b""))
    rejects("version 3", *raw_msg(1, 3, b""))
    rejects("reserved bits 0x10", *raw_msg(1, 0x11, b""))
    rejects("reply flag set on a request", *raw_msg(1, 5, U64_0))
    rejects("reply flag missing", *raw_msg(1, 1, b""), reply=True)
    rejects("need_reply flag set on a reply", *raw_msg(1, 0xD, U64_0), reply=True)
    rejects("header is 11 bytes", b"\x01" * 11)


def test_reject_sizes() -> None:
    rejects("payload size 8 does not match empty", *raw_msg(FrontendRequest.GET_FEATURES, 1, U64_0))
    rejects("payload size 4 does not match u64", *raw_msg(FrontendRequest.SET_FEATURES, 1, b"\0" * 4))
    rejects("payload size 36 does not match vring_addr", *raw_msg(FrontendRequest.SET_VRING_ADDR, 1, b"\0" * 36))
    too_big = VhostUserHeader(request=FrontendRequest.SET_CONFIG, flags=1, size=MAX_PAYLOAD_SIZE + 1).build()
    rejects("exceeds the 4096-byte maximum", too_big, b"")
    with pytest.raises(VhostUserProtocolError, match="exceeds the 4096-byte maximum"):
        parse_header(VhostUserHeader(request=5, flags=1, size=0xFFFF_FFFF).build())
    hdr = VhostUserHeader(request=FrontendRequest.SET_FEATURES, flags=1, size=8).build()
    rejects("header says 8 payload bytes, got 7", hdr, b"\0" * 7)
    cfg = (0).to_bytes(4, "little") + (300).to_bytes(4, "little") + (0).to_bytes(4, "little") + b"\0" * 300
    rejects("config size 300 exceeds 256", *raw_msg(FrontendRequest.SET_CONFIG, 1, cfg))
    cfg = (0).to_bytes(4, "little") + (4).to_bytes(4, "little") + (0).to_bytes(4, "little") + b"\0" * 5
    rejects("size field says 12\\+4", *raw_msg(FrontendRequest.SET_CONFIG, 1, cfg))


def region_bytes(n: int) -> bytes:
    return b"".join(MemoryRegion(i << 30, 1 << 30, 0x7F00_0000_0000 + (i << 30), 0).pack() for i in range(n))


def test_reject_memory_tables() -> None:
    def table(n: int, regions: int) -> bytes:
        return n.to_bytes(4, "little") + b"\0" * 4 + region_bytes(regions)

    rejects("nregions=9, must be 1..8", *raw_msg(5, 1, table(9, 9)), fds=tuple(range(9)))
    rejects("nregions=0", *raw_msg(5, 1, table(0, 1)))
    rejects("does not match nregions=2", *raw_msg(5, 1, table(2, 1)), fds=(3, 4))
    rejects("missing fds: got 1, expected 2", *raw_msg(5, 1, table(2, 2)), fds=(3,))
    rejects("extra fds: got 3, expected 2", *raw_msg(5, 1, table(2, 2)), fds=(3, 4, 5))
    with pytest.raises(VhostUserProtocolError, match=r"1\.\.8"):
        MemoryTable(())
    with pytest.raises(VhostUserProtocolError, match="mix the Xen"):
        MemoryTable((MemoryRegion(0, 1, 2, 3), MemoryRegion(0, 1, 2, 3, XenMmap(1, 0))))
    # 8 bytes are the front-end's postcopy acknowledgement, carried without fds
    ack = decode(*raw_msg(5, 1, U64_0))
    assert ack.payload == U64(0)
    # with XEN_MMAP a region is 40 bytes, so the plain 32-byte layout no longer fits
    rejects("does not match nregions=1", *raw_msg(5, 1, table(1, 1)), fds=(3,), xen_mmap=True)


@pytest.mark.parametrize("req", [FrontendRequest.SET_VRING_KICK, FrontendRequest.SET_VRING_CALL,
                                 FrontendRequest.SET_VRING_ERR])
def test_vring_fd_rules(req: FrontendRequest) -> None:
    word = (3).to_bytes(8, "little")
    nofd = (3 | VRING_NOFD_MASK).to_bytes(8, "little")
    assert decode(*raw_msg(req, 1, word), (7,)).payload == VringFile(3, False)
    assert decode(*raw_msg(req, 1, nofd)).payload == VringFile(3, True)
    rejects("missing fds: got 0, expected 1", *raw_msg(req, 1, word))
    rejects("extra fds: got 1, expected 0", *raw_msg(req, 1, nofd), fds=(7,))
    rejects("extra fds: got 2, expected 1", *raw_msg(req, 1, word), fds=(7, 8))
    rejects("reserved bits 9-63", *raw_msg(req, 1, (1 << 9).to_bytes(8, "little")))


def test_fd_rules_of_other_requests() -> None:
    one_fd = [(FrontendRequest.SET_LOG_FD, b""), (FrontendRequest.SET_BACKEND_REQ_FD, b""),
              (FrontendRequest.GPU_SET_SOCKET, b""),
              (FrontendRequest.SET_INFLIGHT_FD, Inflight(4096, 0, 2, 256).pack()),
              (FrontendRequest.ADD_MEM_REG, SingleMemoryRegion(MemoryRegion(0, 4096, 0, 0)).pack()),
              (FrontendRequest.SET_LOG_BASE, LogDescription(4096, 0).pack()),
              (FrontendRequest.SET_DEVICE_STATE_FD, DeviceStateTransfer(TransferDirection.LOAD).pack())]
    for req, body in one_fd:
        decode(*raw_msg(req, 1, body), (9,))
        rejects("missing fds", *raw_msg(req, 1, body))
        rejects("extra fds", *raw_msg(req, 1, body), fds=(9, 10))
    # the u64 form of SET_LOG_BASE (no LOG_SHMFD) carries no fd
    decode(*raw_msg(FrontendRequest.SET_LOG_BASE, 1, U64_0))
    rejects("extra fds", *raw_msg(FrontendRequest.SET_LOG_BASE, 1, U64_0), fds=(9,))
    # REM_MEM_REG: none expected, one tolerated
    rem = SingleMemoryRegion(MemoryRegion(0, 4096, 0, 0)).pack()
    decode(*raw_msg(FrontendRequest.REM_MEM_REG, 1, rem))
    decode(*raw_msg(FrontendRequest.REM_MEM_REG, 1, rem), (9,))
    rejects("extra fds", *raw_msg(FrontendRequest.REM_MEM_REG, 1, rem), fds=(9, 10))
    # fd-less requests take none
    rejects("extra fds: got 1, expected 0", *raw_msg(FrontendRequest.SET_OWNER, 1, b""), fds=(9,))
    # more than 8 fds never
    with pytest.raises(VhostUserProtocolError, match="at most 8"):
        Message(FrontendRequest.SET_OWNER, EMPTY, tuple(range(9)))
    # replies: POSTCOPY_ADVISE returns the userfaultfd, device state reply an fd unless nofd
    decode(*raw_msg(FrontendRequest.POSTCOPY_ADVISE, 5, b""), (9,), reply=True)
    rejects("missing fds", *raw_msg(FrontendRequest.POSTCOPY_ADVISE, 5, b""), reply=True)
    rejects("reports an error and returns an fd",
            *raw_msg(FrontendRequest.SET_DEVICE_STATE_FD, 5, (1).to_bytes(8, "little")), fds=(9,), reply=True)
    # an ack carries no fds
    rejects("extra fds", *raw_msg(FrontendRequest.SET_FEATURES, 5, U64_0), fds=(9,), reply=True)


def test_backend_channel() -> None:
    area = VringArea(2, 4096, 0x3000).pack()
    msg = decode(*raw_msg(BackendRequest.VRING_HOST_NOTIFIER_MSG, 1, area), (5,), channel=Channel.BACKEND)
    assert msg.payload == VringArea(2, 4096, 0x3000)
    assert msg.direction == "B->F" and Message.ack(msg).direction == "F->B"
    rejects("missing fds", *raw_msg(BackendRequest.VRING_HOST_NOTIFIER_MSG, 1, area), channel=Channel.BACKEND)
    nofd = VringArea(2, 0, 0, nofd=True).pack()
    decode(*raw_msg(BackendRequest.VRING_HOST_NOTIFIER_MSG, 1, nofd), channel=Channel.BACKEND)
    iotlb = IotlbMsg(0x1000, 0, 0, IotlbPerm.RO, IotlbType.MISS).pack()
    assert decode(*raw_msg(BackendRequest.IOTLB_MSG, 9, iotlb), channel=Channel.BACKEND).need_reply
    bad = bytearray(iotlb)
    bad[25] = 7
    rejects("IOTLB type 7", *raw_msg(BackendRequest.IOTLB_MSG, 1, bytes(bad)), channel=Channel.BACKEND)
    assert VhostUserBackendHeader(msg.encode()[0]).request == BackendRequest.VRING_HOST_NOTIFIER_MSG


def test_payload_value_checks() -> None:
    rejects("bits above the status byte", *raw_msg(FrontendRequest.SET_STATUS, 1, (0x100).to_bytes(8, "little")))
    bad = bytearray(IotlbMsg(0, 0, 0, IotlbPerm.RW, IotlbType.UPDATE).pack())
    bad[24] = 4
    rejects("IOTLB permission 4", *raw_msg(FrontendRequest.IOTLB_MSG, 1, bytes(bad)))
    rejects("transfer direction 2",
            *raw_msg(FrontendRequest.SET_DEVICE_STATE_FD, 1, (2).to_bytes(8, "little")), fds=(3,))
    rejects("migration phase 1",
            *raw_msg(FrontendRequest.SET_DEVICE_STATE_FD, 1, (1 << 32).to_bytes(8, "little")), fds=(3,))
    cfg = ConfigSpace(0, ConfigFlags.WRITABLE, b"\0" * 6).pack()
    rejects("config flags 2", *raw_msg(FrontendRequest.SET_CONFIG, 1, cfg[:8] + (2).to_bytes(4, "little") + cfg[12:]))
    with pytest.raises(VhostUserProtocolError, match="carries a u64 payload"):
        Message(FrontendRequest.SET_VRING_NUM, U64(1))
    with pytest.raises(VhostUserProtocolError, match="does not fit u32"):
        VringState(1 << 32, 0)


def test_replies_and_describe() -> None:
    get = Message(FrontendRequest.GET_VRING_BASE, VringState(1, 0))
    rep = Message.reply_to(get, VringState(1, 42))
    assert decode_bytes(rep.encode()[0], reply=True) == rep
    assert decode_bytes(rep.encode()[0], reply=None) == rep
    assert rep.describe() == "B->F GET_VRING_BASE reply size=8 fds=0 index=1 num=0x2a"
    assert str(get) == "F->B GET_VRING_BASE size=8 fds=0 index=1 num=0"
    st_msg = Message(FrontendRequest.SET_STATUS, Status(0xF), flags=HeaderFlag.VERSION | HeaderFlag.NEED_REPLY)
    assert st_msg.describe() == ("F->B SET_STATUS need_reply size=8 fds=0 "
                                 "status=0xf(ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK)")
    rarp = Message(FrontendRequest.SEND_RARP, U64(int.from_bytes(bytes.fromhex("525400123456") + b"\0\0", "little")))
    assert rarp_mac(rarp.fields()["mac"]) == "52:54:00:12:34:56"  # type: ignore[arg-type]
    assert "mac=52:54:00:12:34:56" in rarp.describe()
    mem = Message(FrontendRequest.SET_MEM_TABLE, MemoryTable((MemoryRegion(0, 0x1000, 0x7F00, 0),)), (4,))
    assert mem.describe() == "F->B SET_MEM_TABLE size=40 fds=1 nregions=1 [gpa=0x0 size=0x1000 uva=0x7f00 off=0x0]"
    cfg_err = Message.reply_to(Message(FrontendRequest.GET_CONFIG, ConfigSpace(0, ConfigFlags.WRITABLE, b"\0" * 10)))
    assert cfg_err.kind is PayloadKind.EMPTY
    shared = SharedObject(uuid.UUID("12345678-9abc-def0-1234-56789abcdef0"))
    assert shared.pack()[:4] == bytes.fromhex("12345678")  # first group big-endian


def test_scapy_header_layer() -> None:
    msg = Message(FrontendRequest.SET_VRING_NUM, VringState(0, 256), flags=HeaderFlag.VERSION | HeaderFlag.NEED_REPLY)
    data, _ = msg.encode()
    pkt = VhostUserHeader(data)
    assert (pkt.request, int(pkt.flags), pkt.size) == (8, 9, 8)
    assert "SET_VRING_NUM" in pkt.sprintf("%request%")
    assert bytes(pkt.payload) == VringState(0, 256).pack()


# ---------------------------------------------------------------------------------------------
# fuzz


NOISE_SIZES = [0, 4, 12, 36, 100, 264, 2056, MAX_PAYLOAD_SIZE + 1]
KIND_SIZES: dict[PayloadKind, list[int]] = {
    PayloadKind.EMPTY: [0], PayloadKind.MEMORY_TABLE: [8 + 32 * n for n in (1, 2, 8)] + [8 + 40, 8 + 40 * 8],
    PayloadKind.CONFIG: [12, 12 + 6, 12 + 256], PayloadKind.CRYPTO_SESSION: [1, 200],
    PayloadKind.SINGLE_REGION: [40, 48], PayloadKind.SHMEM_CONFIG: [2056],
}
PATTERNS = [b"\0", b"\1\0\0\0", b"\2\0\0\0\0\0\0\0", b"\3\0\0\0\1\0\0\0", b"\xff"]


def _sizes_of(req: Request) -> list[int]:
    spec = spec_of(req)
    out: set[int] = set()
    for kind in spec.kinds + spec.reply_kinds:
        fixed = {PayloadKind.U64: 8, PayloadKind.STATUS: 8, PayloadKind.VRING_STATE: 8, PayloadKind.VRING_FILE: 8,
                 PayloadKind.VRING_ADDR: 40, PayloadKind.LOG: 16, PayloadKind.IOTLB: 32, PayloadKind.VRING_AREA: 24,
                 PayloadKind.INFLIGHT: 24, PayloadKind.SHARED_OBJECT: 16, PayloadKind.DEVICE_STATE: 8,
                 PayloadKind.DEVICE_STATE_RESULT: 8, PayloadKind.SHMEM_MMAP: 40}
        out |= set(KIND_SIZES.get(kind, [fixed.get(kind, 0)]))
    return sorted(out)


FUZZ_SIZES = {ch: {int(r): _sizes_of(r) for r in (FrontendRequest if ch is Channel.MAIN else BackendRequest)}
              for ch in Channel}


@st.composite
def fuzz_frames(draw: st.DrawFn) -> tuple[bytes, bytes, tuple[int, ...], Channel, bool | None, bool]:
    """Mostly near-valid frames (known request, sane flags, a size some kind of it uses), plus noise."""
    channel = draw(st.sampled_from(list(Channel)))
    known = sorted(FUZZ_SIZES[channel])
    request = draw(st.sampled_from(known * 6 + [0, 45, 51, 0x8000_0000, 0xFFFF_FFFF]))
    flags = draw(st.sampled_from([1] * 6 + [5] * 4 + [9] * 4 + [0, 2, 3, 0xD, 0x11, 0x8000_0001]))
    sizes = FUZZ_SIZES[channel].get(request, [8])
    size = draw(st.sampled_from(sizes * 4 + NOISE_SIZES))
    if size > MAX_PAYLOAD_SIZE:
        payload = b""
    else:
        # patterned payloads make the counted/enumerated fields plausible; binary() adds noise
        unit = draw(st.sampled_from([*PATTERNS, b""]))
        payload = (unit * size)[:size] if unit else draw(st.binary(min_size=size, max_size=size))
    declared = draw(st.sampled_from([len(payload)] * 8 + [size, len(payload) + 1, 0xFFFF_FFFF]))
    header = HEADER.pack(request, flags, declared)
    nfds = draw(st.sampled_from([0, 0, 0, 1, 1, 1, 2, 8, 9]))
    reply = draw(st.sampled_from([None, None, False, True]))
    return header, payload, tuple(range(3, 3 + nfds)), channel, reply, draw(st.booleans())


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=fuzz_frames())
def test_fuzz_decode_never_crashes(
        frame: tuple[bytes, bytes, tuple[int, ...], Channel, bool | None, bool]) -> None:
    header, payload, fds, channel, reply, xen = frame
    try:
        msg = decode(header, payload, fds, channel=channel, reply=reply, xen_mmap=xen)
    except VhostUserProtocolError as exc:
        assert exc.reason
        return
    assert isinstance(msg, Message)
    data, out_fds = msg.encode()
    assert out_fds == fds
    assert decode(data[:HEADER_SIZE], data[HEADER_SIZE:], out_fds, channel=channel, reply=reply,
                  xen_mmap=xen) == msg
