"""Soak ``vdpa-bench serve``: many sequential vhost-user sessions, each moving frames, while the serve
process's resident memory and open file descriptors are sampled.

A server that keeps anything of an ended session (records, devices, mappings, fds, threads) grows
with the session count; one that gives everything back levels off after a warm-up (allocator
arenas, import-time caches). Run the full figure with::

    python -m tests.soak --sessions 5000 --sample 100

``tests/test_serve_soak.py`` runs a short version in ``make test``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sim.memory import GuestMemory
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.serve import ServeProcess

DEVICE = "sim:virtio-net,queues=1,mac=02:00:00:00:00:0a,wire=loopback"
MEM_SIZE = 4 << 20
GPA = 0x1_0000_0000
#: Frames each session sends and expects back on the loopback wire.
FRAMES = 8
#: Bound on one session's end showing in the serve log (its resources released).
END_TIMEOUT = 10.0


def frame(session: int, i: int) -> bytes:
    """An Ethernet frame to the device's MAC, numbered so a frame from another session cannot pass."""
    head = bytes.fromhex("02000000000a02000000000208004500") + session.to_bytes(4, "big") + i.to_bytes(2, "big")
    return head + bytes((session + i + k) & 0xFF for k in range(64 + 37 * i))


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    session: int
    rss_kib: int
    fds: int


@dataclass
class SoakResult:
    idle_fds: int
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0

    def at(self, session: int) -> Sample:
        return next(s for s in self.samples if s.session == session)


class SessionFailed(AssertionError):
    """A session did not move its frames, or its end never showed in the serve log."""


def one_session(serve: ServeProcess, path: str, mem: GuestMemory, number: int) -> None:
    """Connect, start, move :data:`FRAMES` frames through the loopback device, stop, hang up, and wait
    until serve logs the session's end (logged once its device, fds and mappings are released)."""
    mark = serve.proc.mark()
    fe = VhostUserFrontend.connect(path, mem)
    try:
        fe.start(queues=(0, 1), size=64)
        sent = [frame(number, i) for i in range(FRAMES)]
        got = fe.exchange(sent, timeout=10.0)
        if got != sent:
            raise SessionFailed(f"session {number}: sent {len(sent)} frames, {len(got)} came back "
                                f"({'altered' if len(got) == len(sent) else 'missing'})")
        fe.stop()
    finally:
        fe.close()
    serve.proc.wait_for(rf"vhost-user#{number}: frontend disconnected", END_TIMEOUT, since=mark)


def soak(sessions: int, samples: list[int], workdir: Path,
         progress: Callable[[Sample], None] | None = None) -> SoakResult:
    """Run ``sessions`` sequential sessions against a fresh ``serve``; sample RSS and fds after each
    session numbered in ``samples`` (and after the last)."""
    path = str(workdir / "soak.sock")
    wanted = {s for s in samples if 0 < s <= sessions} | {sessions}
    with ServeProcess(path, DEVICE, log=workdir / "serve.log") as serve, \
            GuestMemory.single(MEM_SIZE, gpa=GPA) as mem:
        serve.wait_listening()
        result = SoakResult(idle_fds=fd_count(serve.pid))
        start = time.monotonic()
        for number in range(1, sessions + 1):
            one_session(serve, path, mem, number)
            if number in wanted:
                sample = Sample(number, rss_kib(serve.pid), fd_count(serve.pid))
                result.samples.append(sample)
                if progress is not None:
                    progress(sample)
        result.seconds = time.monotonic() - start
        code = serve.stop()
        if code != 0:
            raise SessionFailed(f"serve exited {code} on SIGTERM:\n{serve.proc.tail()}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5000, help="sequential sessions (default 5000)")
    parser.add_argument("--sample", type=int, default=100,
                        help="the session whose RSS is the baseline (default 100)")
    parser.add_argument("--every", type=int, default=500, help="also print RSS every N sessions (default 500)")
    parser.add_argument("--max-growth-mib", type=float, default=10.0,
                        help="exit 1 when RSS grows more than this from --sample to the end (default 10)")
    args = parser.parse_args(argv)
    if not 0 < args.sample < args.sessions:
        parser.error("--sample must be between 1 and --sessions - 1")
    points = [args.sample, *range(args.every, args.sessions, args.every)] if args.every > 0 else [args.sample]

    def show(s: Sample) -> None:
        print(f"session {s.session:6d}: RSS {s.rss_kib / 1024:8.1f} MiB, open fds {s.fds}", flush=True)

    with tempfile.TemporaryDirectory(prefix="vdpa-soak-") as tmp:
        result = soak(args.sessions, points, Path(tmp), show)
    base, end = result.at(args.sample), result.at(args.sessions)
    growth = (end.rss_kib - base.rss_kib) / 1024
    print(f"{args.sessions} sessions in {result.seconds:.0f} s; idle fds {result.idle_fds}, "
          f"after the last session {end.fds}; RSS {base.rss_kib / 1024:.1f} MiB at session {args.sample}, "
          f"{end.rss_kib / 1024:.1f} MiB at {args.sessions} ({growth:+.1f} MiB)", flush=True)
    ok = growth < args.max_growth_mib and end.fds == result.idle_fds
    if not ok:
        print("FAIL: " + ("; ".join(w for w in (
            f"RSS grew {growth:.1f} MiB (bound {args.max_growth_mib})" if growth >= args.max_growth_mib else "",
            f"{end.fds} fds open, {result.idle_fds} when idle" if end.fds != result.idle_fds else "") if w)),
            file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
