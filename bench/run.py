"""The benchmark: DPDK virtio_user ``txonly`` into (a) ``vdpa-bench serve`` + the behavioral model and
(b) DPDK's own ``net_vhost`` (``rxonly``), interleaved, several runs each; the time to answer a
256 MB SET_MEM_TABLE for both; and the backend's CPU share while traffic runs.

Timings on shared machines swing ~3x, so the result that counts is the ratio of runs measured
back to back in the same window. The frontend's TX counter is the rate: with the ring full, a
frame is accepted only when the device has consumed one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from backend.vhost_user import messages as m
from bench import results as committed
from bench import rtl as bench_rtl
from bench.cpu import ThreadTimes, split_cpu
from sim.memory import GuestMemory
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.process import MissingPeer
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import Testpmd, vhost_vdev, virtio_user_vdev

BACKEND_CPU = 0  # the backend under test (ours or DPDK's) runs here
FRONTEND_CPU = 1  # virtio_user's lcores run here
MEM_TABLE_SIZE = 256 << 20
GOAL_RATIO = 0.10
GOAL_MEM_TABLE_MS = 10.0
GOAL_BACKEND_CPU = 1.0  # percent of one core


@dataclass
class RateSample:
    peer: str
    run: int
    mpps: float
    backend_rx_mpps: float | None = None  # net_vhost's own RX counter (cross-check)
    backend_cpu_pct: float | None = None  # ours: backend threads (control plane)
    device_cpu_pct: float | None = None  # ours: the simulated device's threads


def _window(seconds: float) -> None:
    """Let traffic run for a measurement window (a measured interval, not a synchronisation)."""
    time.sleep(seconds)


def _txonly_rate(tp: Testpmd, warmup: float, window: float,
                 during: Callable[[], None] | None = None) -> tuple[float, float, int, int]:
    """Start txonly; return (seconds, frames sent in the window, tx0, tx1)."""
    tp.command("set fwd txonly")
    tp.command("start")
    _window(warmup)
    if during is not None:
        during()
    s0, t0 = tp.port_stats(), time.monotonic()
    _window(window)
    s1, t1 = tp.port_stats(), time.monotonic()
    if during is not None:
        during()
    tp.command("stop")
    return t1 - t0, s1.tx_packets - s0.tx_packets, s0.tx_packets, s1.tx_packets


def rate_ours(work: Path, run: int, args: argparse.Namespace) -> RateSample:
    sock = str(work / f"ours-{run}.sock")
    spec = f"sim:virtio-net,wire=none,qsize={args.qsize}"
    with ServeProcess(sock, spec, log=work / f"ours-{run}-serve.log", cpu=BACKEND_CPU) as serve:
        serve.wait_listening()
        with Testpmd(virtio_user_vdev(sock, queue_size=args.qsize), log=work / f"ours-{run}-testpmd.log",
                     cpu=FRONTEND_CPU, name="virtio_user") as tp:
            tp.wait_ready()
            readings: list[ThreadTimes] = []
            seconds, frames, _, _ = _txonly_rate(tp, args.warmup, args.window,
                                                 lambda: readings.append(ThreadTimes.read(serve.pid)))
            tp.quit()
        backend_s, device_s = split_cpu(readings[0], readings[1], "sim:")
        serve.stop()
    return RateSample("ours", run, frames / seconds / 1e6, backend_cpu_pct=100 * backend_s / seconds,
                      device_cpu_pct=100 * device_s / seconds)


def rate_dpdk(work: Path, run: int, args: argparse.Namespace) -> RateSample:
    sock = str(work / f"dpdk-{run}.sock")
    with Testpmd(vhost_vdev(sock), log=work / f"dpdk-{run}-vhost.log", cpu=BACKEND_CPU, name="net_vhost") as vh:
        vh.wait_ready()
        vh.command("set fwd rxonly")
        vh.command("start")
        with Testpmd(virtio_user_vdev(sock, queue_size=args.qsize), log=work / f"dpdk-{run}-testpmd.log",
                     cpu=FRONTEND_CPU, name="virtio_user") as tp:
            tp.wait_ready()
            rx: list[tuple[float, int]] = []
            seconds, frames, _, _ = _txonly_rate(
                tp, args.warmup, args.window, lambda: rx.append((time.monotonic(), vh.port_stats().rx_packets)))
            tp.quit()
        vh.command("stop")
        vh.quit()
    (ta, ra), (tb, rb) = rx
    return RateSample("dpdk", run, frames / seconds / 1e6, backend_rx_mpps=(rb - ra) / (tb - ta) / 1e6)


def _mem_table_once(sock: str, mem: GuestMemory) -> float:
    """Seconds from sending SET_MEM_TABLE (need_reply) to the backend's ack, on a fresh connection."""
    fe = VhostUserFrontend.connect(sock, mem, timeout=30.0)
    try:
        fe.negotiate()
        if not fe.protocol_features & m.ProtocolFeature.REPLY_ACK.mask:
            raise RuntimeError("backend did not negotiate REPLY_ACK: cannot time SET_MEM_TABLE")
        t0 = time.perf_counter()
        fe.set_mem_table()
        return time.perf_counter() - t0
    finally:
        fe.close()


def mem_table_ours(work: Path, args: argparse.Namespace) -> list[float]:
    sock = str(work / "mt-ours.sock")
    with GuestMemory.single(MEM_TABLE_SIZE) as mem, \
            ServeProcess(sock, "sim:virtio-net,wire=none", log=work / "mt-ours-serve.log", cpu=BACKEND_CPU) as serve:
        serve.wait_listening()
        return [_mem_table_once(sock, mem) for _ in range(args.runs)]


def mem_table_dpdk(work: Path, args: argparse.Namespace) -> list[float]:
    out: list[float] = []
    with GuestMemory.single(MEM_TABLE_SIZE) as mem:
        for i in range(args.runs):  # one connection per net_vhost: it keeps the first table's mappings
            sock = str(work / f"mt-dpdk-{i}.sock")
            with Testpmd(vhost_vdev(sock), log=work / f"mt-dpdk-{i}.log", cpu=BACKEND_CPU, name="net_vhost") as vh:
                vh.wait_ready()
                out.append(_mem_table_once(sock, mem))
                vh.quit()
    return out


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def report(console: Console, rates: list[RateSample], mt_ours: list[float], mt_dpdk: list[float],
           args: argparse.Namespace) -> dict[str, object]:
    ours = [s for s in rates if s.peer == "ours"]
    dpdk = [s for s in rates if s.peer == "dpdk"]
    pair_ratios = [o.mpps / d.mpps for o, d in zip(ours, dpdk, strict=True)]
    table = Table(title=f"virtio_user txonly, 64 B, 1 queue, queue_size {args.qsize}, "
                        f"{args.window:g} s windows, interleaved")
    for col in ("run", "ours Mpps", "net_vhost Mpps", "ratio", "backend CPU %", "device CPU %"):
        table.add_column(col, justify="right")
    for o, d, r in zip(ours, dpdk, pair_ratios, strict=True):
        table.add_row(str(o.run), f"{o.mpps:.3f}", f"{d.mpps:.2f}", f"{r:.3f}", f"{o.backend_cpu_pct:.2f}",
                      f"{o.device_cpu_pct:.0f}")
    ratio = _med(pair_ratios)
    backend_cpu = max(o.backend_cpu_pct or 0.0 for o in ours)
    table.add_row("median", f"{_med([o.mpps for o in ours]):.3f}", f"{_med([d.mpps for d in dpdk]):.2f}",
                  f"{ratio:.3f}", f"max {backend_cpu:.2f}", "", style="bold")
    console.print(table)
    mt = Table(title="SET_MEM_TABLE, one 256 MB memfd region: send to ack (ms)")
    for col in ("backend", "runs", "median", "min", "max"):
        mt.add_column(col, justify="right")
    for name, xs in (("vdpa-bench serve", mt_ours), ("DPDK net_vhost", mt_dpdk)):
        ms = [1000 * x for x in xs]
        mt.add_row(name, str(len(ms)), f"{_med(ms):.2f}", f"{min(ms):.2f}", f"{max(ms):.2f}")
    console.print(mt)
    mt_med = 1000 * _med(mt_ours)
    verdicts = [
        ("data-path ratio to net_vhost", f"{ratio:.3f}", f">= {GOAL_RATIO}", ratio >= GOAL_RATIO),
        ("SET_MEM_TABLE 256 MB (median)", f"{mt_med:.2f} ms", f"<= {GOAL_MEM_TABLE_MS} ms",
         mt_med <= GOAL_MEM_TABLE_MS),
        ("backend CPU during traffic (max)", f"{backend_cpu:.2f} %", f"< {GOAL_BACKEND_CPU} %",
         backend_cpu < GOAL_BACKEND_CPU),
    ]
    goals = Table(title="goals (issue 3)")
    for col in ("measure", "value", "goal", "met"):
        goals.add_column(col)
    for name, value, goal, met in verdicts:
        goals.add_row(name, value, goal, "[green]yes[/]" if met else "[red]no[/]")
    console.print(goals)
    return {
        "rates": [asdict(s) for s in rates],
        "pair_ratios": pair_ratios,
        "ratio_median": ratio,
        "mem_table_ms": {"ours": [1000 * x for x in mt_ours], "dpdk": [1000 * x for x in mt_dpdk]},
        "backend_cpu_pct_max": backend_cpu,
        "goals": {"ratio_min": GOAL_RATIO, "mem_table_ms_max": GOAL_MEM_TABLE_MS,
                  "backend_cpu_pct_max": GOAL_BACKEND_CPU},
        "goals_met": {name: met for name, _, _, met in verdicts},
        "config": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},  # how, not where to
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=4, help="runs per peer (interleaved), default 4")
    ap.add_argument("--window", type=float, default=3.0, help="measurement window in seconds, default 3")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of traffic before the window, default 1")
    ap.add_argument("--qsize", type=int, default=1024, help="virtio_user queue_size (both peers), default 1024")
    ap.add_argument("--out", type=Path, default=Path("reports/bench"), help="results.json and rtl.json go here")
    ap.add_argument("--commit", type=Path, default=committed.RESULTS_DIR / committed.BENCH_FILE,
                    help="after a full run (--only all): the committed result (date, machine, every figure) "
                         "and the README's figures rendered from it; default docs/results/bench.json")
    ap.add_argument("--only", choices=("all", "vhost", "rtl"), default="all",
                    help="vhost: the data path against net_vhost; rtl: the RTL full stack (bench/rtl.py)")
    args = ap.parse_args(argv)
    console = Console()
    if args.only == "rtl":
        return bench_rtl.section(console, args.out)[0]
    recorded_on = committed.machine()  # the load average before the runs: the machine is often shared
    if (os.cpu_count() or 1) < 2:
        console.print("[yellow]one CPU: frontend and backend share it; ratios still compare like with like[/]")
    rates: list[RateSample] = []
    try:
        with tempfile.TemporaryDirectory(prefix="vdpa-bench-") as tmp, Progress(console=console) as progress:
            work = Path(tmp)
            task = progress.add_task("data path", total=2 * args.runs + 2)
            for run in range(1, args.runs + 1):
                for peer, fn in (("ours", rate_ours), ("dpdk", rate_dpdk)):
                    progress.update(task, description=f"data path: {peer} run {run}/{args.runs}")
                    rates.append(fn(work, run, args))
                    progress.advance(task)
            progress.update(task, description="SET_MEM_TABLE: ours")
            mt_ours = mem_table_ours(work, args)
            progress.advance(task)
            progress.update(task, description="SET_MEM_TABLE: net_vhost")
            mt_dpdk = mem_table_dpdk(work, args)
            progress.advance(task)
    except MissingPeer as exc:
        console.print(f"[red]bench needs {exc.program}[/]: {exc.hint}")
        return 2
    results = report(console, rates, mt_ours, mt_dpdk, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results: {args.out / 'results.json'}")
    if args.only != "all":
        return 0
    code, rtl = bench_rtl.section(console, args.out)
    if code != 0 or rtl is None:
        return code or 2
    recorded_on["load_average_end"] = committed.machine()["load_average"]
    committed.write_json(args.commit, {"date": committed.today(), "command": "make bench", "machine": recorded_on,
                                       "vhost": results, "rtl": rtl})
    console.print(f"committed result: {args.commit}")
    if args.commit.resolve() == (committed.RESULTS_DIR / committed.BENCH_FILE).resolve():
        committed.main(["readme"])
    return 0
