"""The captured vhost-user sequences of real frontends (``tests/data/captures``) as records and
as :class:`~backend.vhost_user.messages.Message` objects with stand-in file descriptors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from backend.vhost_user.messages import (
    EMPTY,
    U64,
    HeaderFlag,
    MemoryRegion,
    MemoryTable,
    Payload,
    PayloadKind,
    Request,
    Status,
    VringAddr,
    VringFile,
    VringState,
    spec_of,
)

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"
JSONL = sorted(CAPTURES.glob("*.jsonl"))
HEADER_KEYS = {"t", "session", "dir", "n", "request", "name", "reply", "need_reply", "flags", "size", "nfds"}


def read_capture(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def placeholder_fds(stack: ExitStack, count: int, memory: bool) -> tuple[int, ...]:
    """Real descriptors standing in for the captured ones: memfds for memory, eventfds otherwise."""
    fds = []
    for i in range(count):
        fd = os.memfd_create(f"vu-region-{i}", os.MFD_CLOEXEC) if memory else os.eventfd(0, os.EFD_CLOEXEC)
        stack.callback(os.close, fd)
        fds.append(fd)
    return tuple(fds)


def header_flags(rec: dict[str, Any]) -> int:
    """Header flags of a capture record.

    The capture proxy writes SET_VRING_ADDR's ring ``flags`` over the header's ``flags`` key (every
    such record shows 0, a version the peer would have rejected), so those are rebuilt from the
    reply/need_reply booleans, which the other records show agree with the flags.
    """
    flags = int(HeaderFlag.VERSION)
    if rec["reply"]:
        flags |= HeaderFlag.REPLY
    if rec["need_reply"]:
        flags |= HeaderFlag.NEED_REPLY
    if rec["name"] != "SET_VRING_ADDR":
        assert rec["flags"] == flags, rec
    return flags


def payload_from_record(req: Request, rec: dict[str, Any]) -> Payload:
    body = {k: v for k, v in rec.items() if k not in HEADER_KEYS}
    spec = spec_of(req)
    kinds = spec.reply_kinds if rec["reply"] else spec.kinds
    if not body:
        assert rec["size"] == 0, rec
        return EMPTY
    if "regions" in body:
        assert body["nregions"] == len(body["regions"])
        regions = (MemoryRegion(r["gpa"], r["size"], r["uva"], r["mmap_offset"]) for r in body["regions"])
        return MemoryTable(tuple(regions))
    if "desc" in body:
        return VringAddr(body["index"], rec["flags"], body["desc"], body["used"], body["avail"], body["log"])
    if "nofd" in body:
        return VringFile(body["index"], body["nofd"])
    if "num" in body:
        return VringState(body["index"], body["num"])
    ((key, value),) = body.items()
    if key == "status" and PayloadKind.STATUS in kinds:
        return Status(value)
    # "status" on a SET_STATUS reply is the REPLY_ACK u64, not a device status
    assert PayloadKind.U64 in kinds, (req, rec)
    return U64(value)


def expected_fields(rec: dict[str, Any]) -> dict[str, Any]:
    """The capture's fields in the codec's naming (see payload_from_record for the two quirks)."""
    out = {k: v for k, v in rec.items() if k not in {"t", "session", "n"}}
    if rec["name"] == "SET_VRING_ADDR":
        out["vring_flags"] = rec["flags"]
        out["flags"] = header_flags(rec)
    if rec["name"] == "SET_STATUS" and rec["reply"]:
        out["u64"] = out.pop("status")
    return out


def capture_records() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in JSONL:
        for rec in read_capture(path):
            yield path.name, rec
