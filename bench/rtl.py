"""The RTL section of ``make bench``: how fast the SystemVerilog function runs behind the whole stack.

* plain loop: the Verilated design with nothing but the clock toggling, in C++ (no bus model, no
  Python): the limit for this design on this machine.
* full stack, Python frontend: ``VhostUserFrontend`` (virtio_user's message sequence) →
  ``vdpa-bench serve --device rtl:virtio-net,wire=loopback`` → the design; the rings (BATCH entries) kept
  stocked as the design returns slots (``VhostUserFrontend.stream``), frames compared byte for byte.
* full stack, DPDK testpmd ``net_virtio_user`` (io forwarding loop seeded with ``tx_first``), when
  testpmd is installed.

Simulated cycles come from the serve log (the device logs them at close). The clock stops while the
design is idle, so "cycles per second" is simulated cycles over the traffic window's wall time, and
"clock running" divides by the time the clock thread actually ran the design. For reference, cocotb
awaiting every edge from Python tops out near 0.19 M cycles/s on these machines (measured when the
toolchain was chosen; printed, not committed as a result).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from models.rtl import TOP, source_paths
from models.rtl.targets import RtlOptions, build_variant
from sim.memory import GuestMemory
from sim.rtl.bridge import NativeBridge
from sim.rtl.build import Design, RtlBuildError, build
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.process import MissingPeer
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import Testpmd, virtio_user_vdev

SPEC = "rtl:virtio-net,wire=loopback"
PLAIN_CYCLES = 5_000_000
FRAMES = 32768  # Python frontend: frames per run (over a second of traffic: start-up is a small part of it)
FRONTEND_RUNS = 2  # Python frontend runs, each on a fresh serve; the faster one is reported
BATCH = 256  # ring size
FRAME_LEN = 64
TESTPMD_WINDOW = 3.0
GOAL_CYCLES = 1e6
CYCLES_LINE = re.compile(r"(\d+) cycles simulated, ([\d.]+) s with the clock running, (\d+) doorbells")
REFERENCE_COCOTB_PER_EDGE = 0.19e6  # Python awaiting every rising edge (Verilator), measured once


@dataclass
class Run:
    name: str
    seconds: float
    frames: int
    intact: int | None  # None: the frontend only counts frames (testpmd), it does not compare them
    cycles: int
    clock_seconds: float
    kicks: int

    @property
    def pps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0

    @property
    def clock_cycles_per_s(self) -> float:
        return self.cycles / self.clock_seconds if self.clock_seconds else 0.0


def _session_cycles(serve: ServeProcess) -> tuple[int, float, int]:
    """(cycles, clock seconds, kicks) of the last device serve closed (the session's)."""
    runs = CYCLES_LINE.findall(serve.proc.output())
    if not runs:
        raise RuntimeError("serve logged no cycle count for the session's device")
    c, s, k = runs[-1]
    return int(c), float(s), int(k)


LEGACY_DIR = Path(__file__).resolve().parent / "legacy_bridge"
BRIDGE_LOOP_FRAMES = 1000  # frames on the receive stream per bridge-loop run (the FIFO holds 1024)
BRIDGE_LOOP_RUNS = 5


def legacy_library() -> Path:
    """The hand-written bridge the generated one replaced (kept here as the baseline it must not fall behind),
    built for the project's design with the same parameters."""
    params = dict(RtlOptions("virtio-net").variant.parameters)
    design = Design("virtio-net-legacy", TOP, tuple(source_paths()), LEGACY_DIR, (LEGACY_DIR / "virtio_net.vlt",),
                    params, harness_sources=(LEGACY_DIR / "bridge.cpp",))
    return build(design).library


def model_code_offset(library: Path) -> int | None:
    """Where the model's evaluation code starts within a page of ``library`` (``nm``), None without ``nm``.
    Equal in both bridge-loop libraries, or their comparison measures code placement, not the bridges."""
    try:
        out = subprocess.run(["nm", "--defined-only", str(library)], capture_output=True, text=True, timeout=30,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        address, _, symbol = line.partition(" ")
        if re.search(f"V{TOP}___024root___eval_nbaP", symbol):  # the model's (mangled) entry point
            return int(address, 16) % 4096
    return None


def bridge_loop(library: Path) -> float:
    """Cycles per second of the design with a bridge's bus models stepping beside it: frames streamed into
    the receive port of a function no driver set up (the design takes and drops them), through the entry
    points both bridges share (vb_new, vb_reset, vb_push_frame, vb_run, vb_status)."""
    lib = ctypes.CDLL(str(library))
    lib.vb_new.restype = ctypes.c_void_p
    lib.vb_new.argtypes = [ctypes.c_char_p]
    lib.vb_free.argtypes = [ctypes.c_void_p]
    lib.vb_reset.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.vb_push_frame.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32]
    lib.vb_run.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64]
    lib.vb_status.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_int]
    h = ctypes.c_void_p(lib.vb_new(None))
    status = (ctypes.c_uint64 * 1)()
    best = 0.0
    try:
        lib.vb_reset(h, 8)
        frame = bytes(range(256)) * 5 + bytes(220)  # 1500 bytes
        for _ in range(BRIDGE_LOOP_RUNS):
            for _ in range(BRIDGE_LOOP_FRAMES):
                lib.vb_push_frame(h, frame, len(frame), 0)
            lib.vb_status(h, status, 1)
            c0, t0 = status[0], time.perf_counter()
            lib.vb_run(h, 50_000_000, 1 << 40)
            seconds = time.perf_counter() - t0
            lib.vb_status(h, status, 1)
            best = max(best, (status[0] - c0) / seconds)
    finally:
        lib.vb_free(h)
    return best


def plain_loop() -> float:
    """Cycles per second of the bare clock loop."""
    bridge = NativeBridge(build_variant(RtlOptions("virtio-net")).library)
    try:
        bridge.reset()
        bridge.bench_plain(PLAIN_CYCLES // 10)  # warm caches
        return PLAIN_CYCLES / bridge.bench_plain(PLAIN_CYCLES)
    finally:
        bridge.close()


def python_frontend(work: Path, n: int = 0) -> Run:
    sock = str(work / f"py{n}.sock")
    with ServeProcess(sock, SPEC, log=work / f"serve-py{n}.log") as serve:
        serve.wait_listening()
        with GuestMemory.single(8 << 20, gpa=0x1_0000_0000) as mem:
            fe = VhostUserFrontend.connect(sock, mem)
            try:
                fe.start(queues=(0, 1), size=BATCH)
                sent = [test_frame(i, FRAME_LEN) for i in range(FRAMES)]
                t0 = time.perf_counter()
                got = fe.stream(sent, timeout=20.0)
                seconds = time.perf_counter() - t0
                intact = sum(a == b for a, b in zip(sent, got, strict=False))
                fe.stop()
            finally:
                fe.close()
        serve.proc.wait_for("frontend disconnected", 10.0)
        serve.stop()
        cycles, clock, kicks = _session_cycles(serve)
    return Run("Python frontend", seconds, FRAMES, intact, cycles, clock, kicks)


def testpmd_loop(work: Path) -> Run:
    sock = str(work / "tp.sock")
    with ServeProcess(sock, SPEC, log=work / "serve-tp.log", cpu=0) as serve:
        serve.wait_listening()
        with Testpmd(virtio_user_vdev(sock), log=work / "testpmd.log", cpu=1) as tp:
            tp.wait_ready()
            tp.command("set fwd io")
            tp.command("start tx_first 32")
            s0, t0 = tp.port_stats(), time.perf_counter()
            # a measurement window, not a synchronisation: traffic runs while we wait
            time.sleep(TESTPMD_WINDOW)
            s1, t1 = tp.port_stats(), time.perf_counter()
            tp.command("stop")
            tp.quit()
        serve.proc.wait_for("frontend disconnected", 10.0)
        serve.stop()
        cycles, clock, kicks = _session_cycles(serve)
    frames = s1.rx_packets - s0.rx_packets
    # cycles cover the whole session; scale to the window by its share of the frames received
    share = frames / s1.rx_packets if s1.rx_packets else 0.0
    return Run("testpmd io loop", t1 - t0, frames, None, int(cycles * share), clock * share, kicks)


def section(console: Console, out: Path) -> tuple[int, dict[str, object] | None]:
    """Run the RTL benchmark, print the table, write ``out/rtl.json``; (0 unless something is missing or
    frames came back altered, the result written)."""
    console.rule("RTL: SystemVerilog virtio-net under Verilator")
    try:
        t0 = time.perf_counter()
        built = build_variant(RtlOptions("virtio-net"))
        build_s = time.perf_counter() - t0
    except RtlBuildError as exc:
        console.print(f"[red]RTL bench needs the Verilator build[/]: {exc}")
        return 2, None
    plain = plain_loop()
    legacy = legacy_library()
    loops: dict[Path, list[float]] = {built.library: [], legacy: []}
    for _ in range(5):  # interleaved, best of five each: the machine's swings hit both alike
        for library, seen in loops.items():
            seen.append(bridge_loop(library))
    generated_loop, legacy_loop = max(loops[built.library]), max(loops[legacy])
    offsets = {model_code_offset(built.library), model_code_offset(legacy)}
    runs: list[Run] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="vdpa-bench-rtl-") as tmp:
        work = Path(tmp)
        runs.append(max((python_frontend(work, n) for n in range(FRONTEND_RUNS)), key=lambda r: r.cycles_per_s))
        try:
            runs.append(testpmd_loop(work))
        except MissingPeer as exc:
            notes.append(f"testpmd run skipped: {exc.program} missing ({exc.hint})")
    table = Table(title=f"RTL full stack (build {'made' if built.fresh else 'cached'} in {build_s:.1f} s)")
    for col in ("run", "frames", "intact", "pkt/s", "cycles/s", "cycles/s busy", "cycles/frame"):
        table.add_column(col, justify="right")
    table.add_row("plain C++ loop", "-", "-", "-", f"{plain / 1e6:.2f} M", "-", "-")
    for r in runs:
        intact = "counted" if r.intact is None else str(r.intact)
        table.add_row(r.name, str(r.frames), intact, f"{r.pps:,.0f}", f"{r.cycles_per_s / 1e6:.2f} M",
                      f"{r.clock_cycles_per_s / 1e6:.2f} M", f"{r.cycles / r.frames:.0f}" if r.frames else "-")
    table.add_row("cocotb per edge*", "-", "-", "-",
                  f"{REFERENCE_COCOTB_PER_EDGE / 1e6:.2f} M", "-", "-")
    console.print(table)
    console.print("cycles/s: simulated cycles over the traffic window (the clock stops while the design is "
                  "idle); busy: over the time the clock ran. *cocotb awaiting every rising edge from Python, "
                  "measured once")
    best = max((r.cycles_per_s for r in runs), default=0.0)
    verdict = "met" if best >= GOAL_CYCLES else "NOT met"
    console.print(f"goal >= {GOAL_CYCLES / 1e6:.0f} M simulated cycles/s full stack: {verdict} "
                  f"(best {best / 1e6:.2f} M, {100 * best / plain:.0f}% of the plain loop)")
    console.print(f"bridge loop (frames streamed in, the bus models stepping): generated bridge "
                  f"{generated_loop / 1e6:.2f} M cycles/s, the hand-written bridge it replaced "
                  f"{legacy_loop / 1e6:.2f} M, ratio {generated_loop / legacy_loop:.2f}; full stack over the plain "
                  f"loop: {best / plain:.2f}")
    if len(offsets) != 1 or None in offsets:
        notes.append("the model's code sits at different page offsets in the two bridge-loop libraries (or nm is "
                     "missing): their ratio includes code placement")
    for n in notes:
        console.print(f"[yellow]{n}[/]")
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {
        "plain_cycles_per_s": plain,
        "bridge_loop_cycles_per_s": generated_loop, "legacy_bridge_loop_cycles_per_s": legacy_loop,
        "full_stack_over_plain": best / plain if plain else 0.0,
        "runs": [asdict(r) | {"pps": r.pps, "cycles_per_s": r.cycles_per_s,
                              "clock_cycles_per_s": r.clock_cycles_per_s} for r in runs],
        "goal_cycles_per_s": GOAL_CYCLES, "goal_met": best >= GOAL_CYCLES, "notes": notes,
        "cpus": os.cpu_count()}
    (out / "rtl.json").write_text(json.dumps(result, indent=2))
    console.print(f"results: {out / 'rtl.json'}")
    bad = [r.name for r in runs if r.intact is not None and r.intact != r.frames]
    if bad:
        console.print(f"[red]frames came back altered or missing in: {', '.join(bad)}[/]")
        return 1, result
    return 0, result
