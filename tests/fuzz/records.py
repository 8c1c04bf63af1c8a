"""The input encoding the fuzz targets share: a stream of records, each with the fds to pass beside it.

A record is ``nfds:u8 | kind:u8 * (nfds % 9) | length:u16le | body[length]``; an input that ends inside
a record ends with what is there (a truncated body is a truncated message on the wire). Every fd kind
byte makes one real descriptor (:func:`make_fd`): eventfds, memfds of chosen sizes, and descriptors of
the wrong kind (a pipe, a socket, a directory, a regular file shorter than a page) so the peer's checks
of what it was given are fuzzed too.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from backend.fd_channel import FdChannel

#: Most fds one record may carry (vhost-user's limit; vfio-user servers take more, clients fewer).
MAX_RECORD_FDS: Final = 8
#: Most fds one input makes: bounds the fds in flight on the socket whatever the input says.
MAX_INPUT_FDS: Final = 32
#: Kind bytes: below EVENTFD_END an eventfd, below OTHER_END a descriptor of the wrong kind, above a memfd.
EVENTFD_END: Final = 0x40
OTHER_END: Final = 0x80
#: Memfd sizes are 1 << (MEMFD_MIN_SHIFT + k) for k < MEMFD_SHIFTS, or 0 (sparse: untouched pages cost nothing).
MEMFD_MIN_SHIFT: Final = 12
MEMFD_SHIFTS: Final = 19  # up to 1 GiB


@dataclass(frozen=True)
class Record:
    fd_kinds: bytes
    body: bytes


def records(data: bytes, *, limit: int = 256) -> Iterator[Record]:
    """The records of ``data`` in order (at most ``limit``); the fds of an input are capped at MAX_INPUT_FDS."""
    pos = 0
    fds_left = MAX_INPUT_FDS
    for _ in range(limit):
        if pos >= len(data):
            return
        nfds = min(data[pos] % (MAX_RECORD_FDS + 1), fds_left)
        pos += 1
        kinds = data[pos:pos + nfds]
        pos += len(kinds)
        fds_left -= len(kinds)
        (length,) = struct.unpack_from("<H", data[pos:pos + 2].ljust(2, b"\0"))
        pos += 2
        body = data[pos:pos + length]
        pos += len(body)
        yield Record(kinds, body)


def encode(recs: Sequence[Record]) -> bytes:
    """The inverse of :func:`records` (seed corpora are written with it)."""
    out = bytearray()
    for r in recs:
        out += bytes([len(r.fd_kinds)]) + r.fd_kinds + struct.pack("<H", len(r.body)) + r.body
    return bytes(out)


def memfd_kind(size: int) -> int:
    """The kind byte of a memfd of at least ``size`` bytes (0: an empty memfd)."""
    if size <= 0:
        return OTHER_END
    shift = max(size - 1, 1).bit_length()
    return OTHER_END + 1 + min(max(shift - MEMFD_MIN_SHIFT, 0), MEMFD_SHIFTS - 1)


def memfd_size(kind: int) -> int:
    k = (kind - OTHER_END) % (MEMFD_SHIFTS + 1)
    return 0 if k == 0 else 1 << (MEMFD_MIN_SHIFT + k - 1)


def make_fd(kind: int, scratch_dir: str) -> int:
    """One fresh descriptor for ``kind`` (the caller owns it)."""
    if kind < EVENTFD_END:
        return os.eventfd(kind, os.EFD_CLOEXEC)
    if kind < OTHER_END:
        other = kind % 4
        if other == 0:
            r, w = os.pipe2(os.O_CLOEXEC)
            os.close(w)
            return r
        if other == 1:
            a, b = socket.socketpair()
            b.close()
            return a.detach()
        if other == 2:
            return os.open(scratch_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = os.memfd_create("fuzz-short", os.MFD_CLOEXEC)
        os.ftruncate(fd, 100)  # shorter than any page-sized region naming it
        return fd
    fd = os.memfd_create("fuzz-region", os.MFD_CLOEXEC)
    os.ftruncate(fd, memfd_size(kind))
    return fd


def fd_kind(fd: int) -> int:
    """The kind byte that makes a descriptor like ``fd`` (seed corpora from recorded sessions)."""
    link = os.readlink(f"/proc/self/fd/{fd}")
    if link == "anon_inode:[eventfd]":
        return 0
    if link.startswith("/memfd:"):
        return memfd_kind(os.fstat(fd).st_size)
    return EVENTFD_END  # anything else: a pipe stands in


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def leaked(before: set[int], after: set[int]) -> list[str]:
    """Descriptors open now that were not before, with what they are (for the defect message)."""
    out = []
    for fd in sorted(after - before):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            continue  # the listing's own fd, closed since
    return out


class Defect(AssertionError):
    """A real defect found by a fuzz target (anything else a target raises is one too)."""


def send_records(sock: socket.socket, data: bytes, scratch: str, max_fds: int) -> None:
    """Send each record of ``data`` as one message with fds of its kinds (ours closed after the send)."""
    chan = FdChannel(sock, max_fds=max_fds)
    for r in records(data):
        fds = [make_fd(k, scratch) for k in r.fd_kinds]
        try:
            if r.body:
                chan.send(r.body, fds)
        finally:
            for fd in fds:
                os.close(fd)
