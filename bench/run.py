"""The benchmark: DPDK virtio_user into (a) ``vdpa-bench serve`` + the behavioral model and (b) DPDK's own
``net_vhost``, interleaved, at every queue size, txonly and an io loop, 64- and 1500-byte frames
(bench/datapath.py); the time to answer a 256 MB SET_MEM_TABLE for both; the backend's CPU share while
traffic runs; then the RTL full stack (bench/rtl.py).

Timings on shared machines swing ~3x, so the result that counts is the ratio of runs measured
back to back in the same window. The frontend's TX counter is the txonly rate: with the ring full, a
frame is accepted only when the device has consumed one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from backend.vhost_user import messages as m
from bench import campaign as bench_campaign
from bench import datapath
from bench import results as committed
from bench import rtl as bench_rtl
from sim.memory import GuestMemory
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.process import MissingPeer
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import Testpmd, vhost_vdev

BACKEND_CPU = datapath.BACKEND_CPU
MEM_TABLE_SIZE = 256 << 20
GOAL_MEM_TABLE_MS = 10.0


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


def report(console: Console, samples: list[datapath.Sample], mt_ours: list[float], mt_dpdk: list[float],
           args: argparse.Namespace) -> dict[str, object]:
    win = datapath.Window(args.warmup, args.window)
    table = datapath.rows(samples)
    verdicts = datapath.print_tables(console, table, args.runs, win)
    mt = Table(title="SET_MEM_TABLE, one 256 MB memfd region: send to ack (ms)")
    for col in ("backend", "runs", "median", "min", "max"):
        mt.add_column(col, justify="right")
    for name, xs in (("vdpa-bench serve", mt_ours), ("DPDK net_vhost", mt_dpdk)):
        ms = [1000 * x for x in xs]
        mt.add_row(name, str(len(ms)), f"{_med(ms):.2f}", f"{min(ms):.2f}", f"{max(ms):.2f}")
    console.print(mt)
    mt_med = 1000 * _med(mt_ours)
    met = mt_med <= GOAL_MEM_TABLE_MS
    console.print(f"SET_MEM_TABLE 256 MB (median) {mt_med:.2f} ms, goal <= {GOAL_MEM_TABLE_MS} ms: "
                  + ("[green]met[/]" if met else "[red]not met[/]"))
    backend_cpu = max((r.backend_cpu_pct for r in table), default=0.0)
    return {
        "machine": committed.machine(),  # the load average says how far the absolute figures can be trusted
        "sweep": datapath.summary(samples, table, verdicts),
        "mem_table_ms": {"ours": [1000 * x for x in mt_ours], "dpdk": [1000 * x for x in mt_dpdk]},
        "backend_cpu_pct_max": backend_cpu,
        "goals": {"mem_table_ms_max": GOAL_MEM_TABLE_MS, "backend_cpu_pct_max": datapath.GOAL_BACKEND_CPU},
        "goals_met": {"SET_MEM_TABLE 256 MB (median)": met, **{name: ok for name, _, _, ok in verdicts}},
        "config": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},  # how, not where to
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3, help="runs through every cell (interleaved), default 3")
    ap.add_argument("--window", type=float, default=1.5, help="measurement window in seconds, default 1.5")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds of traffic before the window, default 0.5")
    ap.add_argument("--qsize", type=int, nargs="+", default=list(datapath.QSIZES),
                    help="virtio_user queue sizes to sweep (both peers), default 64 256 1024 4096")
    ap.add_argument("--mode", nargs="+", choices=datapath.MODES, default=list(datapath.MODES),
                    help="frontend modes to sweep, default txonly io")
    ap.add_argument("--profile", type=Path, default=None,
                    help="instead of the sweep: a py-spy flame graph (SVG) of serve during one txonly 64-byte "
                         "window at the first --qsize, written to this path")
    ap.add_argument("--out", type=Path, default=Path("reports/bench"), help="results.json and rtl.json go here")
    ap.add_argument("--commit", type=Path, default=committed.RESULTS_DIR / committed.BENCH_FILE,
                    help="after a full run (--only all): the committed result (date, machine, every figure) "
                         "and the README's figures rendered from it; default docs/results/bench.json")
    ap.add_argument("--only", choices=("all", "vhost", "rtl", "campaign"), default="all",
                    help="vhost: the data path against net_vhost; rtl: the RTL full stack (bench/rtl.py); "
                         "campaign: serial cells vs two Dask workers (bench/campaign.py)")
    args = ap.parse_args(argv)
    console = Console()
    if args.only == "rtl":
        return bench_rtl.section(console, args.out)[0]
    if args.only == "campaign":
        return bench_campaign.section(console, args.out)[0]
    recorded_on = committed.machine()  # the load average before the runs: the machine is often shared
    if (os.cpu_count() or 1) < 2:
        console.print("[yellow]one CPU: frontend and backend share it; ratios still compare like with like[/]")
    win = datapath.Window(args.warmup, args.window)
    if args.profile is not None:
        with tempfile.TemporaryDirectory(prefix="vdpa-bench-") as tmp:
            try:
                s = datapath.profile(Path(tmp), args.qsize[0], win, args.profile)
            except MissingPeer as exc:
                console.print(f"[red]bench needs {exc.program}[/]: {exc.hint}")
                return 2
        console.print(f"flame graph: {args.profile} (queue size {s.qsize}: {s.mpps:.3f} Mpps, device CPU "
                      f"{s.device_cpu_pct:.0f} %, {s.device_ns_per_pkt or 0:.0f} ns/packet, backend CPU "
                      f"{s.backend_cpu_pct:.2f} %; load average {os.getloadavg()[0]:.2f})")
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="vdpa-bench-") as tmp, Progress(console=console) as progress:
            work = Path(tmp)
            n_cells = len(datapath.cells(args.qsize, args.mode))
            task = progress.add_task("data path", total=2 * args.runs * n_cells + 2)

            def step(what: str) -> None:
                progress.update(task, description=what)
                progress.advance(task)

            samples = datapath.sweep(work, args.runs, win, step, args.qsize, args.mode)
            progress.update(task, description="SET_MEM_TABLE: ours")
            mt_ours = mem_table_ours(work, args)
            progress.advance(task)
            progress.update(task, description="SET_MEM_TABLE: net_vhost")
            mt_dpdk = mem_table_dpdk(work, args)
            progress.advance(task)
    except MissingPeer as exc:
        console.print(f"[red]bench needs {exc.program}[/]: {exc.hint}")
        return 2
    results = report(console, samples, mt_ours, mt_dpdk, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results: {args.out / 'results.json'}")
    if args.only != "all":
        return 0
    code, rtl = bench_rtl.section(console, args.out)
    if code != 0 or rtl is None:
        return code or 2
    code, campaign = bench_campaign.section(console, args.out)
    if code != 0 or campaign is None:
        return code or 2
    recorded_on["load_average_end"] = committed.machine()["load_average"]
    committed.write_json(args.commit, {"date": committed.today(), "command": "make bench", "machine": recorded_on,
                                       "vhost": results, "rtl": rtl, "campaign": campaign})
    console.print(f"committed result: {args.commit}")
    if args.commit.resolve() == (committed.RESULTS_DIR / committed.BENCH_FILE).resolve():
        committed.main(["readme"])
    return 0
