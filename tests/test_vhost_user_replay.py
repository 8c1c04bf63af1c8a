"""The captured message sequences of DPDK virtio_user, replayed into a session on the simulated
device: every message is accepted, every reply the real backend sent is sent here too (same
request, same ack), the device reaches DRIVER_OK with the captured rings, survives the memory
table growing three times at run time, and teardown leaves no descriptor open.

The frontend's side adapts to this backend's offer the way virtio_user does: it acks the
intersection of its captured features with what the session offers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.sigbus_guard import process_guard
from backend.targets import default_registry
from backend.vhost_user import messages as m
from backend.vhost_user.session import VhostUserSession
from backend.virtio.features import DeviceStatus
from tests.captures import CAPTURES, header_flags, payload_from_record, read_capture

SPLIT_CAPTURES = ["dpdk-virtio_user-default", "dpdk-virtio_user-nohuge", "dpdk-virtio_user-server",
                  "dpdk-virtio_user-backend_quits_first"]


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def stand_in_fds(msg_payload: m.Payload, count: int) -> tuple[int, ...]:
    """memfds of the captured region sizes for a memory table, eventfds for rings (the session owns them)."""
    fds: list[int] = []
    if isinstance(msg_payload, m.MemoryTable):
        for i, region in enumerate(msg_payload.regions):
            fd = os.memfd_create(f"replay-region-{i}", os.MFD_CLOEXEC)
            os.ftruncate(fd, region.mmap_offset + region.memory_size)
            fds.append(fd)
    else:
        fds.extend(os.eventfd(0, os.EFD_CLOEXEC) for _ in range(count))
    assert len(fds) == count
    return tuple(fds)


def adapt(session: VhostUserSession, req: m.FrontendRequest, payload: m.Payload) -> m.Payload:
    """What virtio_user would have sent to this backend: only bits it was offered."""
    if req is m.FrontendRequest.SET_FEATURES:
        assert isinstance(payload, m.U64)
        return m.U64(payload.value & session.offered_features())
    if req is m.FrontendRequest.SET_PROTOCOL_FEATURES:
        assert isinstance(payload, m.U64)
        return m.U64(payload.value & session.offered_protocol_features())
    return payload


def check_reply(reply: m.Message, rec: dict[str, Any]) -> None:
    assert reply.request.value == rec["request"], (reply.describe(), rec)
    assert reply.is_reply
    captured = payload_from_record(m.FrontendRequest(rec["request"]), rec)
    if isinstance(captured, m.U64) and rec["name"] in ("SET_STATUS", "SET_MEM_TABLE", "SET_VRING_ADDR"):
        assert reply.payload == captured, f"ack {reply.payload} where the real backend acked {captured}"
    elif isinstance(captured, m.Status):
        assert reply.payload == captured, f"{rec['name']}: {reply.payload} vs captured {captured}"
    elif isinstance(captured, m.VringState):
        assert isinstance(reply.payload, m.VringState) and reply.payload.index == captured.index
    else:
        assert type(reply.payload) is type(captured), (reply.describe(), rec)


@pytest.mark.parametrize("name", SPLIT_CAPTURES)
def test_replay_into_session(name: str) -> None:
    records = read_capture(CAPTURES / f"{name}.jsonl")
    process_guard()  # the process's one SIGBUS guard (its pipe) is made on first mapping, not per session
    before = open_fds()
    device = VirtioPciVdpaDevice(default_registry().open("sim:virtio-net,wire=loopback"))
    session = VhostUserSession(device, name=f"replay:{name}")
    tables = 0
    ran = False
    try:
        i = 0
        while i < len(records):
            rec = records[i]
            assert rec["dir"] == "F->B", f"reply without a request at record {rec['n']}"
            req = m.FrontendRequest(rec["request"])
            payload = adapt(session, req, payload_from_record(req, rec))
            msg = m.Message(req, payload, stand_in_fds(payload, rec["nfds"]), header_flags(rec))
            replies = session.handle(msg)
            i += 1
            captured_replies = []
            while i < len(records) and records[i]["dir"] == "B->F":
                captured_replies.append(records[i])
                i += 1
            assert len(replies) == len(captured_replies), \
                f"{rec['name']} (record {rec['n']}): {len(replies)} replies, the real backend sent " \
                f"{len(captured_replies)}; errors {session.stats.errors}"
            for reply, crec in zip(replies, captured_replies, strict=True):
                check_reply(reply, crec)
            tables += req is m.FrontendRequest.SET_MEM_TABLE
            ran |= bool(device.get_status() & DeviceStatus.DRIVER_OK)
        assert session.stats.errors == []
        assert ran, "the device never reached DRIVER_OK"
        assert session.stats.mem_tables == tables > 0
    finally:
        session.close()
        device.close()
    assert open_fds() <= before, "descriptors left open after the session closed"


def test_replay_runs_the_captured_rings() -> None:
    """After the default capture's DRIVER_OK both rings are live at the captured (translated) addresses."""
    records = read_capture(CAPTURES / "dpdk-virtio_user-default.jsonl")
    upto = next(r["n"] for r in records if r["name"] == "SET_STATUS" and r.get("status") == 15)
    device = VirtioPciVdpaDevice(default_registry().open("sim:virtio-net,wire=loopback"))
    session = VhostUserSession(device, name="replay")
    try:
        for rec in records:
            if rec["n"] > upto:
                break
            if rec["dir"] != "F->B":
                continue
            req = m.FrontendRequest(rec["request"])
            payload = adapt(session, req, payload_from_record(req, rec))
            session.handle(m.Message(req, payload, stand_in_fds(payload, rec["nfds"]), header_flags(rec)))
        assert device.get_status() & DeviceStatus.DRIVER_OK
        addrs = {r["index"]: r for r in records if r["name"] == "SET_VRING_ADDR"}
        for index in (0, 1):
            assert device.get_vq_ready(index)
            ring = session.rings[index]
            assert (ring.desc, ring.avail, ring.used) == (addrs[index]["desc"], addrs[index]["avail"],
                                                          addrs[index]["used"])  # virtio_user: gpa == uva
    finally:
        session.close()
        device.close()


def test_captures_cover_what_virtio_user_sends() -> None:
    names = {r["name"] for p in SPLIT_CAPTURES for r in read_capture(CAPTURES / f"{p}.jsonl")}
    assert {"SET_OWNER", "SET_MEM_TABLE", "SET_VRING_ADDR", "SET_STATUS", "GET_VRING_BASE"} <= names
    assert Path(CAPTURES / "README.md").is_file()
