"""Reconnect storm: DPDK testpmd (``net_virtio_user``) restarted again and again against one ``vdpa-bench serve``,
moving traffic every cycle, both ways round: serve listening (virtio_user connects), and ``serve --client
--reconnect`` connecting to virtio_user ``server=1`` each time it comes back.

Per cycle: the frames testpmd sent, the frames it received back on the loopback wire, and the difference (lost).
The io loop is seeded with ``start tx_first`` and stopped once enough frames came back; then testpmd receives
what is still on its way (``rxonly``, until two polls see the same count), so a frame counts as lost only if the
device dropped it or never returned it. After each cycle serve's resident memory and open fds are sampled: a
session that leaves anything behind shows as growth over the cycles.

    python -m bench.reconnect_storm --cycles 100            # both ways, the figures of issue 13
    python -m bench.reconnect_storm --cycles 100 --way client
    python -m bench.reconnect_storm --cycles 10 --way resume  # one testpmd, serve restarted under it

``resume`` passes its first cycle only on the default device. On its new connection DPDK 22.11's virtio_user
(server=1) never sends SET_OWNER: it stops the rings it had running (SET_VRING_ENABLE 0, GET_VRING_BASE), which
serve takes as a resuming frontend (owner implied), negotiates again and restarts the rings with SET_VRING_BASE 0
although their used idx has moved on. Like DPDK's vhost library, serve then starts each ring at its used idx, which
needs a device that can set last_avail_idx (a vq-state register, a vendor quirk): a plain virtio-pci queue, as the
simulated device's, always starts at 0, so serve refuses DRIVER_OK with that reason and the cycle fails at once.

Exit status 1 when a cycle moved no traffic, lost more than the ring holds in flight, or serve's fds or RSS grew.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import Testpmd, virtio_user_vdev
from tests.soak import fd_count, rss_kib

DEVICE = "sim:virtio-net,wire=loopback"
QUEUE_SIZE = 256
#: Frames the device may hold when testpmd stops: a full TX ring not yet taken plus a full RX ring not yet read.
IN_FLIGHT = 2 * QUEUE_SIZE
BURSTS = 8  # start tx_first 8: 8 bursts of 32 frames seed the loop (a TX ring's worth)
TARGET = 1024  # frames testpmd must receive back per cycle
TRAFFIC_TIMEOUT = 60.0
DRAIN_TIMEOUT = 10.0
END_TIMEOUT = 10.0
#: RSS growth allowed from the first sampled cycle to the last (the soak's figure: allocator warm-up, then flat).
RSS_BOUND_MIB = 10.0
WAYS = ("listen", "client", "resume")


class StormFailed(AssertionError):
    """A cycle did not move traffic, or lost more than was in flight, or its session did not end."""


@dataclass(frozen=True)
class Cycle:
    number: int
    sent: int
    received: int
    rss_kib: int
    fds: int
    seconds: float

    @property
    def lost(self) -> int:
        return self.sent - self.received


@dataclass
class StormResult:
    way: str
    idle_fds: int
    cycles: list[Cycle] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(c.lost for c in self.cycles)

    def summary(self) -> str:
        cs = self.cycles
        first, last = cs[0], cs[-1]
        return (f"{self.way}: {len(cs)} cycles, sent {sum(c.sent for c in cs)}, received "
                f"{sum(c.received for c in cs)}, lost {self.lost} (max {max(c.lost for c in cs)} in a cycle, bound "
                f"{IN_FLIGHT}); serve RSS {first.rss_kib / 1024:.1f} MiB after cycle 1, {last.rss_kib / 1024:.1f} "
                f"after cycle {last.number}; fds idle {self.idle_fds}, after each cycle "
                f"{sorted({c.fds for c in cs})}; {sum(c.seconds for c in cs) / len(cs):.1f} s a cycle")

    def problems(self) -> list[str]:
        out = [f"cycle {c.number} lost {c.lost} frames (bound {IN_FLIGHT})" for c in self.cycles if c.lost > IN_FLIGHT]
        out += [f"cycle {c.number} lost {c.lost} frames (received more than sent)" for c in self.cycles if c.lost < 0]
        out += [f"{c.fds} fds open after cycle {c.number}, {self.idle_fds} idle" for c in self.cycles
                if c.fds != self.idle_fds]
        growth = (self.cycles[-1].rss_kib - self.cycles[0].rss_kib) / 1024
        if growth > RSS_BOUND_MIB:
            out.append(f"serve RSS grew {growth:.1f} MiB over the cycles (bound {RSS_BOUND_MIB})")
        return out


def _wait_rx(tp: Testpmd, at_least: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (got := tp.port_stats().rx_packets) < at_least:  # each poll is one prompt round trip
        if time.monotonic() > deadline:
            raise StormFailed(f"only {got} of {at_least} frames came back within {timeout} s")
    return got


def _drain(tp: Testpmd) -> None:
    """Receive what is still on its way back: rxonly until two polls agree (bounded)."""
    tp.command("set fwd rxonly")
    tp.command("start")
    deadline = time.monotonic() + DRAIN_TIMEOUT
    last, now = -1, tp.port_stats().rx_packets
    while now != last and time.monotonic() < deadline:
        last, now = now, tp.port_stats().rx_packets
    tp.command("stop")


def one_cycle(serve: ServeProcess, sock: str, client: bool, number: int, workdir: Path) -> Cycle:
    """One testpmd life: connect (or be connected to), io loop until :data:`TARGET` frames came back, drain, quit;
    waits until serve logs the session's end."""
    start = time.monotonic()
    since = serve.proc.mark()
    with Testpmd(virtio_user_vdev(sock, server=client, queue_size=QUEUE_SIZE), log=workdir / "testpmd.log",
                 cpu=1) as tp:
        tp.wait_ready()
        if client:
            serve.wait_connected(since=since)
        sent, received = _traffic(tp, number)
        code = tp.quit()
        if code != 0:
            raise StormFailed(f"cycle {number}: testpmd exited {code}:\n{tp.proc.tail()}")
    serve.proc.wait_for(rf"vhost-user#{number}: frontend disconnected", END_TIMEOUT, since=since)
    return Cycle(number, sent, received, rss_kib(serve.pid), fd_count(serve.pid), time.monotonic() - start)


def _traffic(tp: Testpmd, number: int) -> tuple[int, int]:
    """io loop seeded with tx_first until :data:`TARGET` frames came back, then drained: (sent, received)."""
    if not tp.link_up():
        raise StormFailed(f"cycle {number}: virtio_user port link is down")
    tp.command("set fwd io")
    tp.command(f"start tx_first {BURSTS}")
    _wait_rx(tp, TARGET, TRAFFIC_TIMEOUT)
    tp.command("stop")
    _drain(tp)
    stats = tp.port_stats()
    if stats.rx_errors or stats.tx_errors:
        raise StormFailed(f"cycle {number}: errors in testpmd's counters: {stats}")
    return stats.tx_packets, stats.rx_packets


def _stop_serve(serve: ServeProcess, context: str) -> None:
    """Stop ``serve``, which must have logged no traceback and must exit 0 on SIGTERM."""
    if "Traceback" in serve.proc.output():
        raise StormFailed(f"{context}traceback in the serve log:\n{serve.proc.tail()}")
    code = serve.stop()
    if code != 0:
        raise StormFailed(f"{context}serve exited {code} on SIGTERM:\n{serve.proc.tail()}")


def resume_storm(cycles: int, workdir: Path, progress: Callable[[Cycle], None] | None = None) -> StormResult:
    """One testpmd (virtio_user ``server=1``) for the whole run, and a new ``serve --client`` every cycle: virtio_user
    keeps its rings across the backend's restarts and hands their positions to the next serve (SET_VRING_BASE), so
    every cycle after the first resumes rings that have already turned. The sampled RSS and fds are each cycle's
    serve's, just before it is stopped."""
    sock = str(workdir / "resume.sock")
    result = StormResult("resume", -1)
    with Testpmd(virtio_user_vdev(sock, server=True, queue_size=QUEUE_SIZE), log=workdir / "testpmd.log",
                 cpu=1) as tp:
        for number in range(1, cycles + 1):
            start = time.monotonic()
            with ServeProcess(sock, DEVICE, log=workdir / "serve-resume.log", client=True) as serve:
                if number == 1:
                    tp.wait_ready()
                serve.wait_connected()
                started = serve.proc.wait_for(r"DRIVER_OK|refused: (?P<why>.*)", END_TIMEOUT)
                if started["why"] is not None:
                    raise StormFailed(f"cycle {number}: serve refused the resumed session: {started['why']}")
                tp.command("clear port stats all")
                sent, received = _traffic(tp, number)
                fds = fd_count(serve.pid)
                if result.idle_fds < 0:
                    result.idle_fds = fds
                cycle = Cycle(number, sent, received, rss_kib(serve.pid), fds, time.monotonic() - start)
                _stop_serve(serve, f"cycle {number}: ")
            result.cycles.append(cycle)
            if progress is not None:
                progress(cycle)
        if tp.quit() != 0:
            raise StormFailed(f"testpmd did not quit cleanly:\n{tp.proc.tail()}")
    return result


def storm(cycles: int, way: str, workdir: Path, progress: Callable[[Cycle], None] | None = None) -> StormResult:
    """``cycles`` testpmd lives against one serve (``way``: ``listen`` or ``client``), or one testpmd and a serve
    started again every cycle (``resume``, see :func:`resume_storm`)."""
    if way not in WAYS:
        raise ValueError(f"way must be one of {WAYS}, not {way!r}")
    if way == "resume":
        return resume_storm(cycles, workdir, progress)
    client = way == "client"
    sock = str(workdir / f"{way}.sock")
    with ServeProcess(sock, DEVICE, log=workdir / f"serve-{way}.log", client=client, reconnect=client) as serve:
        if not client:
            serve.wait_listening()
        result = StormResult(way, fd_count(serve.pid))
        for number in range(1, cycles + 1):
            cycle = one_cycle(serve, sock, client, number, workdir)
            if number == 1 and client:
                # A client-mode serve holds no listening socket: its idle count is the one between sessions.
                result.idle_fds = cycle.fds
            result.cycles.append(cycle)
            if progress is not None:
                progress(cycle)
        _stop_serve(serve, "")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconnect_storm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=100, help="testpmd lives per way (default 100)")
    parser.add_argument("--way", choices=[*WAYS, "both"], default="both",
                        help="both: listen and client, the two ways issue 13 asks for (default)")
    parser.add_argument("--quiet", action="store_true", help="only the summary line per way")
    args = parser.parse_args(argv)
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")

    def show(c: Cycle) -> None:
        if not args.quiet:
            print(f"  cycle {c.number:4d}: sent {c.sent:6d} received {c.received:6d} lost {c.lost:4d}; serve RSS "
                  f"{c.rss_kib / 1024:6.1f} MiB, fds {c.fds}; {c.seconds:.1f} s", flush=True)

    failed = False
    for way in (("listen", "client") if args.way == "both" else (args.way,)):
        with tempfile.TemporaryDirectory(prefix="vb-storm-") as tmp:
            try:
                result = storm(args.cycles, way, Path(tmp), show)
            except StormFailed as exc:
                failed = True
                print(f"FAIL ({way}): {exc}", file=sys.stderr)
                continue
        print(result.summary(), flush=True)
        for problem in result.problems():
            failed = True
            print(f"FAIL ({way}): {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
