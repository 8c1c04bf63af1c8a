"""Run the fuzz targets (tests/fuzz) under atheris/libFuzzer, each in its own process, and summarise.

    python tools/fuzz.py                       # every target, long runs (make fuzz)
    python tools/fuzz.py --only split-ring --runs 100000 --max-total-time 900

Per target the process is ``python -m tests.fuzz.targets NAME`` with libFuzzer's options (-runs,
-max_total_time, -rss_limit_mb, -timeout, -max_len) on a working corpus (reports/fuzz/corpus/NAME,
where new inputs go) seeded from the committed one (tests/fuzz/corpus/NAME, read only). Its output
is kept in reports/fuzz/NAME.log and parsed: inputs executed, execs/s, coverage (cov/ft, libFuzzer's
counters of instrumented edges and features), corpus size, crashes (an uncaught exception or a
deadly signal), hangs (libFuzzer's -timeout), out-of-memory (-rss_limit_mb), and the peak RSS of the
fuzzed process (from the kernel's rusage of the child, with libFuzzer's own figure beside it).
libFuzzer stops at the first crash and writes the input to reports/fuzz/artifacts/NAME/; that input
becomes a regression test (tests/test_fuzz_regressions.py). The table is printed with rich and the
whole summary written to reports/fuzz/summary.json. Exit status 1 when any target crashed, hung, ran
out of memory or did not run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
SEEDS: Final = ROOT / "tests" / "fuzz" / "corpus"
OUT: Final = ROOT / "reports" / "fuzz"
#: Every target, cheapest first (the same names as tests.fuzz.targets.TARGETS).
TARGETS: Final = ("split-ring", "packed-ring", "vhost-user-session", "vfio-user-server", "vfio-user-client", "rtl-ring")

_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+.*?exec/s: (\d+) rss: (\d+)Mb")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass
class Result:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    execs_per_s: float = 0.0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    crashes: int = 0
    hangs: int = 0
    ooms: int = 0
    peak_rss_mb: float = 0.0  # of the fuzzed process, from rusage
    libfuzzer_rss_mb: int = 0
    exit_code: int = 0
    artifacts: list[str] = field(default_factory=list)
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not (self.crashes or self.hangs or self.ooms) and self.inputs > 0


def parse(text: str, res: Result) -> Result:
    """Fill ``res`` from libFuzzer's output (status lines, -print_final_stats, error banners)."""
    for line in text.splitlines():
        if m := _STATUS.match(line):
            res.inputs = max(res.inputs, int(m[1]))
            res.cov, res.ft, res.corpus = int(m[3]), int(m[4]), int(m[5])
            res.libfuzzer_rss_mb = max(res.libfuzzer_rss_mb, int(m[7]))
        elif m := _STAT.match(line):
            key, value = m[1], int(m[2])
            if key == "number_of_executed_units":
                res.inputs = max(res.inputs, value)
            elif key == "peak_rss_mb":
                res.libfuzzer_rss_mb = max(res.libfuzzer_rss_mb, value)
        elif "ERROR: libFuzzer: timeout" in line:
            res.hangs += 1
        elif "ERROR: libFuzzer: out-of-memory" in line:
            res.ooms += 1
        elif "Uncaught Python exception" in line or "ERROR: libFuzzer: deadly signal" in line:
            res.crashes += 1
        if m := _ARTIFACT.search(line):
            res.artifacts.append(m[1])
    # One crash can print both banners (the exception, then the abort it causes): count crashing inputs.
    if res.crashes:
        res.crashes = max(1, len([a for a in res.artifacts if "/crash-" in a or a.startswith("crash-")]))
    return res


def run_target(name: str, *, runs: int, max_total_time: int, rss_limit_mb: int, timeout: int, max_len: int,
               out: Path = OUT, work: Path | None = None) -> Result:
    """Fuzz ``name`` in a child process until ``runs`` inputs or ``max_total_time`` seconds, whichever first."""
    work = work if work is not None else out / "corpus" / name
    artifacts = out / "artifacts" / name
    work.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    log = out / f"{name}.log"
    cmd = [sys.executable, "-m", "tests.fuzz.targets", name, f"-runs={runs}", f"-max_total_time={max_total_time}",
           f"-rss_limit_mb={rss_limit_mb}", f"-timeout={timeout}", f"-max_len={max_len}",
           f"-artifact_prefix={artifacts}/", "-print_final_stats=1", str(work), str(SEEDS / name)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            # libFuzzer bounds the run; this bounds libFuzzer (startup, a last slow input, the final merge).
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)
    res = Result(name, seconds=round(time.monotonic() - start, 1), exit_code=proc.returncode, log=str(log),
                 peak_rss_mb=round(usage.ru_maxrss / 1024, 1))
    parse(log.read_text(errors="replace"), res)
    res.execs_per_s = round(res.inputs / res.seconds, 1) if res.seconds else 0.0
    return res


def table(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="fuzzing summary (atheris / libFuzzer)")
    for col in ("target", "inputs", "s", "exec/s", "cov", "ft", "corpus", "crashes", "hangs", "oom",
                "peak RSS MB", "result"):
        t.add_column(col, justify="left" if col in ("target", "result") else "right")
    for r in results:
        t.add_row(r.target, f"{r.inputs:,}", f"{r.seconds:.0f}", f"{r.execs_per_s:.0f}", str(r.cov), str(r.ft),
                  str(r.corpus), str(r.crashes), str(r.hangs), str(r.ooms), f"{r.peak_rss_mb:.0f}",
                  "ok" if r.ok else f"FAILED (exit {r.exit_code}, see {r.log})")
    Console(width=160).print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", choices=TARGETS, help="a target to run (repeatable; default all)")
    p.add_argument("--runs", type=int, default=100_000, help="inputs per target (libFuzzer -runs)")
    p.add_argument("--rtl-runs", type=int, default=None, help="inputs for rtl-ring (default: --runs)")
    p.add_argument("--max-total-time", type=int, default=1200, help="seconds per target (-max_total_time)")
    p.add_argument("--rss-limit-mb", type=int, default=1024, help="-rss_limit_mb: more is a defect (unbounded memory)")
    p.add_argument("--timeout", type=int, default=60, help="-timeout: seconds one input may take (a hang beyond)")
    p.add_argument("--max-len", type=int, default=8192, help="-max_len: bytes per input")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.only or TARGETS:
        runs = args.rtl_runs if name == "rtl-ring" and args.rtl_runs is not None else args.runs
        print(f"fuzzing {name}: up to {runs} inputs or {args.max_total_time}s", flush=True)
        results.append(run_target(name, runs=runs, max_total_time=args.max_total_time, rss_limit_mb=args.rss_limit_mb,
                                  timeout=args.timeout, max_len=args.max_len, out=args.out))
    summary = args.out / "summary.json"
    old = json.loads(summary.read_text()) if summary.exists() else {}
    merged = {**old.get("targets", {}), **{r.target: asdict(r) for r in results}}
    summary.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   "options": {k: str(v) for k, v in vars(args).items()},
                                   "targets": merged}, indent=2) + "\n")
    table(results)
    print(f"summary: {summary}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
