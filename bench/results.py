"""The results the project commits, and the README figures rendered from them.

``make bench`` writes ``docs/results/bench.json`` and ``make demo`` writes
``docs/results/suite-<target>.json``, each with the date and the machine it was measured on. The
README's figures sit between markers (``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``) and
are rendered from those files by :func:`render_readme`, never typed by hand; a unit test keeps the
README equal to what the committed files render.

Command line (``python -m bench.results``):

* ``suite RESULTS_JSON`` - summarise one suite run's ``results.json`` into ``docs/results/``.
* ``readme`` - re-render the README's marked sections from ``docs/results/*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "docs" / "results"
README = ROOT / "README.md"
BENCH_FILE = "bench.json"
SUITE_PREFIX = "suite-"
#: Suite statuses in the order the README shows them (the keys of ``Results.summary()``).
SUITE_STATUSES = ("passed", "failed", "not offered", "not applicable", "not covered", "not testable")


class ResultsError(Exception):
    """A results file or the README is not in the shape this module writes."""


# -- what is recorded ------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine a result was measured on: CPU model, cores, load average now, kernel, Python."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def suite_summary(results: Mapping[str, Any], recorded_on: Mapping[str, Any], date: str) -> dict[str, Any]:
    """The committed summary of one suite run: counts per status, overall and per area."""
    try:
        summary = results["summary"]
        return {
            "date": date,
            "machine": dict(recorded_on),
            "command": f"vdpa-bench run --target {results['target']}",
            "target": results["target"],
            "duration_s": results["duration"],
            "counts": {k: summary[k] for k in ("total", *SUITE_STATUSES)},
            "areas": summary["areas"],
        }
    except KeyError as exc:
        raise ResultsError(f"not a suite results.json: no {exc.args[0]!r}") from exc


def suite_file_name(target: str) -> str:
    """``suite-sim.json`` for ``sim``; a spec's options and separators become dashes."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", target).strip("-").lower()
    return f"{SUITE_PREFIX}{slug}.json"


# -- rendering ---------------------------------------------------------------------------------------


def _load(results_dir: Path, name: str) -> dict[str, Any] | None:
    path = results_dir / name
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object")
    return data


def _machine_line(data: Mapping[str, Any], command: str) -> str:
    m = data["machine"]
    load = m["load_average"]
    end = m.get("load_average_end")
    load_text = f"load average {load[0]:.2f}" + (f" at the start, {end[0]:.2f} at the end" if end else "")
    return (f"Measured {data['date']} by `{command}` on {m['cpu_model']} ({m['cores']} cores, {load_text}; "
            f"{m['kernel']}, Python {m['python']}), from `docs/results/{data['file']}`.")


def _f(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def render_bench(results_dir: Path) -> str:
    data = _load(results_dir, BENCH_FILE)
    if data is None or "vhost" not in data:
        return "No data-path result is committed yet: run `make bench`."
    v = data["vhost"]
    if "sweep" in v:
        return _render_sweep(data, v)
    ours = [r for r in v["rates"] if r["peer"] == "ours"]
    dpdk = [r for r in v["rates"] if r["peer"] == "dpdk"]
    goals = v["goals"]
    lines = [_machine_line(data | {"file": BENCH_FILE}, "make bench"), "",
             "| run | ours (Mpps) | net_vhost (Mpps) | ratio |", "|---|---|---|---|"]
    for o, d, r in zip(ours, dpdk, v["pair_ratios"], strict=True):
        lines.append(f"| {o['run']} | {_f(o['mpps'])} | {_f(d['mpps'])} | {_f(r)} |")
    lines.append(f"| median | {_f(statistics.median(o['mpps'] for o in ours))} | "
                 f"{_f(statistics.median(d['mpps'] for d in dpdk))} | **{_f(v['ratio_median'])}** "
                 f"(goal ≥ {goals['ratio_min']:g}) |")
    mt = v["mem_table_ms"]
    device = [o["device_cpu_pct"] for o in ours]
    lines += ["", "| measure | vdpa-bench serve | DPDK net_vhost |", "|---|---|---|",
              f"| SET_MEM_TABLE 256 MB, median of {len(mt['ours'])} | **{_f(statistics.median(mt['ours']))} ms** "
              f"(goal ≤ {goals['mem_table_ms_max']:g} ms) | {_f(statistics.median(mt['dpdk']), 1)} ms "
              "(it populates the mapping) |",
              f"| backend CPU while traffic runs (max) | **{_f(v['backend_cpu_pct_max'])} %** of a core "
              f"(goal < {goals['backend_cpu_pct_max']:g} %); the device model's threads "
              f"{min(device):.0f}-{max(device):.0f} % | n/a |"]
    return "\n".join(lines)


def _render_sweep(data: dict[str, Any], v: dict[str, Any]) -> str:
    """The data path sweep (bench/datapath.py): one row per mode, frame size and queue size."""
    sweep = v["sweep"]
    goals = sweep["goals"]
    runs = max((s["run"] for s in sweep["samples"]), default=0)
    lines = [_machine_line(data | {"file": BENCH_FILE}, "make bench") + f" Medians of {runs} interleaved run(s).", "",
             "| mode | frame | queue size | ours (Mpps) | net_vhost (Mpps) | ratio | ours ns/packet | "
             "net_vhost ns/packet | device CPU ns/packet |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sweep["table"]:
        mode = r["mode"] if r.get("layout", "split") == "split" else f"{r['mode']} ({r['layout']} rings)"
        lines.append(f"| {mode} | {r['frame']} B | {r['qsize']} | {_f(r['ours_mpps'])} | {_f(r['dpdk_mpps'])} | "
                     f"**{_f(r['ratio'])}** | {r['ours_ns']:.0f} | {r['dpdk_ns']:.0f} | {r['device_ns']:.0f} |")
    ratio_goals = ", ".join(f"≥ {g:g} at {q}" for q, g in goals["ratio_min"].items())
    met = ", ".join(f"{name}: {'met' if ok else 'not met'}" for name, ok in sweep["goals_met"].items())
    mt = v["mem_table_ms"]
    packed = (f"; packed ratio at least {goals['packed_vs_split_min']:g} of the split one"
              if "packed_vs_split_min" in goals else "")
    lines += ["", f"Goals (64-byte txonly): ratio {ratio_goals}; ns/packet at 256 at most {goals['flatness_max']:g}x "
                  f"that at 1024{packed}. {met}.", "",
              "| measure | vdpa-bench serve | DPDK net_vhost |", "|---|---|---|",
              f"| SET_MEM_TABLE 256 MB, median of {len(mt['ours'])} | **{_f(statistics.median(mt['ours']))} ms** "
              f"(goal ≤ {v['goals']['mem_table_ms_max']:g} ms) | {_f(statistics.median(mt['dpdk']), 1)} ms "
              "(it populates the mapping) |",
              f"| backend CPU while traffic runs (max) | **{_f(v['backend_cpu_pct_max'])} %** of a core "
              f"(goal < {v['goals']['backend_cpu_pct_max']:g} %) | n/a |"]
    return "\n".join(lines)


def render_rtl(results_dir: Path) -> str:
    data = _load(results_dir, BENCH_FILE)
    if data is None or "rtl" not in data:
        return "No RTL result is committed yet: run `make bench`."
    r = data["rtl"]
    by_name = {run["name"]: run for run in r["runs"]}
    parts = [f"{_f(run['cycles_per_s'] / 1e6)} M with {label} ({_f(run['clock_cycles_per_s'] / 1e6)} M while the "
             "clock ran)"
             for name, label in (("Python frontend", "the Python frontend"), ("testpmd io loop", "testpmd's io loop"))
             if (run := by_name.get(name)) is not None]
    if parts:
        parts[0] = parts[0].replace(" M with ", " M simulated cycles/s with ", 1)
    text = (f"Full stack {', '.join(parts)}, against {_f(r['plain_cycles_per_s'] / 1e6)} M "
            f"for a plain Verilator C++ loop of the same design (goal ≥ {r['goal_cycles_per_s'] / 1e6:g} M). ")
    if "bridge_loop_cycles_per_s" in r and "legacy_bridge_loop_cycles_per_s" in r:
        generated, legacy = r["bridge_loop_cycles_per_s"], r["legacy_bridge_loop_cycles_per_s"]
        text += (f"The bridge generated from the description file against the hand-written one it replaced, "
                 f"interleaved in the same run (frames streamed in, the bus models stepping): "
                 f"{_f(generated / 1e6)} M against {_f(legacy / 1e6)} M, ratio **{_f(generated / legacy)}**. ")
    text += _machine_line(data | {'file': BENCH_FILE}, 'make bench')
    return text + "".join(f" {note}." for note in r.get("notes", []))


def render_campaign(results_dir: Path) -> str:
    data = _load(results_dir, BENCH_FILE)
    if data is None or not data.get("campaign"):
        return "No campaign throughput is committed yet: run `make bench`."
    c = data["campaign"]
    serial, parallel = c["serial_wall_s"], c["parallel_wall_s"]
    verdict = "met" if c["speedup"] >= c["goal_speedup"] else "not met"
    return "\n".join([
        f"Throughput, the same {c['cells']} cells ({c['checks']}) one after another and on {c['workers']} Dask "
        f"workers: {_machine_line(data | {'file': BENCH_FILE}, 'make bench')}", "",
        "| run | wall (s) | per cell (s) | cell's own run (s, mean) |", "|---|---|---|---|",
        f"| one after another | {serial:.1f} | {serial / c['cells']:.2f} | "
        f"{sum(c['serial_cell_s']) / c['cells']:.2f} |",
        f"| {c['workers']} Dask workers | {parallel:.1f} | {parallel / c['cells']:.2f} | "
        f"{sum(c['parallel_cell_s']) / c['cells']:.2f} |", "",
        f"Speedup **{c['speedup']:.2f}x** (goal ≥ {c['goal_speedup']:g}x: {verdict}); the engine's overhead "
        f"{c['overhead_per_cell_s']:.2f} s per cell; the cluster's start-up, {c['cluster_startup_s']:.1f} s, "
        "is paid once per campaign and not counted."])


def render_suite(results_dir: Path) -> str:
    files = sorted(results_dir.glob(f"{SUITE_PREFIX}*.json"))
    if not files:
        return "No suite result is committed yet: run `make demo`."
    lines = ["| target | ids | " + " | ".join(SUITE_STATUSES) + " | date |",
             "|---|---|" + "---|" * len(SUITE_STATUSES) + "---|"]
    machines: list[str] = []
    for path in files:
        data = _load(results_dir, path.name)
        assert data is not None
        c = data["counts"]
        lines.append(f"| `{data['target']}` | {c['total']} | " + " | ".join(str(c[s]) for s in SUITE_STATUSES)
                     + f" | {data['date']} |")
        machines.append(_machine_line(data | {"file": path.name}, data["command"]))
    return "\n".join([*lines, "", *machines])


#: Marker name → renderer. Every name must appear in the README exactly once.
SECTIONS: dict[str, Callable[[Path], str]] = {
    "bench": render_bench,
    "campaign": render_campaign,
    "rtl": render_rtl,
    "suite": render_suite,
}


def _marker(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- results:{name} -->)(.*?)(<!-- /results:{name} -->)", re.DOTALL)


def readme_sections(text: str) -> dict[str, str]:
    """The content between each pair of markers (without the markers and the newlines next to them)."""
    out: dict[str, str] = {}
    for name in SECTIONS:
        found = _marker(name).findall(text)
        if len(found) != 1:
            raise ResultsError(f"README: expected one <!-- results:{name} --> section, found {len(found)}")
        out[name] = found[0][1].strip("\n")
    return out


def render_readme(text: str, results_dir: Path = RESULTS_DIR) -> str:
    """``text`` with every marked section replaced by what the committed results render."""
    readme_sections(text)  # every marker present once, or a clear error
    for name, render in SECTIONS.items():
        found = _marker(name).search(text)
        assert found is not None  # checked by readme_sections
        text = text[:found.start(2)] + "\n" + render(results_dir) + "\n" + text[found.end(2):]
    return text


# -- command line ------------------------------------------------------------------------------------


def _update_readme(readme: Path, results_dir: Path) -> None:
    text = readme.read_text(encoding="utf-8")
    new = render_readme(text, results_dir)
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"README figures re-rendered from {results_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    first_line = __doc__.splitlines()[0] if __doc__ else None
    ap = argparse.ArgumentParser(prog="python -m bench.results", description=first_line)
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the committed results live")
    ap.add_argument("--readme", type=Path, default=README)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("suite", help="summarise a suite run's results.json into the results dir, then the README")
    s.add_argument("results_json", type=Path)
    sub.add_parser("readme", help="re-render the README's marked sections")
    args = ap.parse_args(argv)
    try:
        if args.command == "suite":
            try:
                results = json.loads(args.results_json.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ResultsError(f"{args.results_json}: {exc}") from exc
            summary = suite_summary(results, machine(), today())
            path = args.results_dir / suite_file_name(summary["target"])
            write_json(path, summary)
            print(f"suite summary: {path}")
        _update_readme(args.readme, args.results_dir)
    except ResultsError as exc:
        print(f"python -m bench.results: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
