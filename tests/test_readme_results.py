"""The README's figures are the committed results, its layout table is the tree, and it points nowhere
outside the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import results as committed

ROOT = committed.ROOT
README = ROOT / "README.md"

MACHINE = {"cpu_model": "Test CPU @ 1.00GHz", "cores": 2, "load_average": [3.5, 2.0, 1.0],
           "load_average_end": [4.25, 2.5, 1.5], "kernel": "Linux 6.1.0", "python": "3.11.2"}


def _bench_json() -> dict[str, Any]:
    rates = [
        {"peer": "ours", "run": 1, "mpps": 2.0, "device_cpu_pct": 40.0, "backend_cpu_pct": 0.0},
        {"peer": "dpdk", "run": 1, "mpps": 8.0},
        {"peer": "ours", "run": 2, "mpps": 3.0, "device_cpu_pct": 70.0, "backend_cpu_pct": 0.01},
        {"peer": "dpdk", "run": 2, "mpps": 6.0},
        {"peer": "ours", "run": 3, "mpps": 1.0, "device_cpu_pct": 55.0, "backend_cpu_pct": 0.0},
        {"peer": "dpdk", "run": 3, "mpps": 4.0},
    ]
    return {
        "date": "2030-01-02", "command": "make bench", "machine": MACHINE,
        "vhost": {"rates": rates, "pair_ratios": [0.25, 0.5, 0.25], "ratio_median": 0.25,
                  "mem_table_ms": {"ours": [0.3, 0.5, 0.4], "dpdk": [40.0, 50.0, 45.0]},
                  "backend_cpu_pct_max": 0.01,
                  "goals": {"ratio_min": 0.1, "mem_table_ms_max": 10.0, "backend_cpu_pct_max": 1.0}},
        "rtl": {"plain_cycles_per_s": 5.1e6, "goal_cycles_per_s": 1e6, "notes": [],
                "bridge_loop_cycles_per_s": 3.3e6, "legacy_bridge_loop_cycles_per_s": 3.0e6,
                "runs": [{"name": "Python frontend", "cycles_per_s": 1.25e6, "clock_cycles_per_s": 3e6},
                         {"name": "testpmd io loop", "cycles_per_s": 2.5e6, "clock_cycles_per_s": 4e6}]},
        "campaign": {"cells": 4, "workers": 2, "checks": "test_features", "serial_wall_s": 20.0,
                     "parallel_wall_s": 12.5, "speedup": 1.6, "overhead_per_cell_s": 0.5, "cluster_startup_s": 1.5,
                     "serial_cell_s": [5.0, 5.0, 5.0, 5.0], "parallel_cell_s": [5.5, 5.5, 5.5, 5.5],
                     "goal_speedup": 1.7, "goal_met": False},
    }


def _suite_results() -> dict[str, Any]:
    counts = {"total": 490, "passed": 300, "failed": 1, "not offered": 100, "not applicable": 9,
              "not covered": 70, "not testable": 10}
    return {"target": "sim:virtio-net", "started": "2030-01-02T10:00:00+00:00", "duration": 12.5, "ids": {},
            "summary": {**counts, "areas": {"SPLIT": {**counts, "total": 490}}}}


def test_readme_figures_are_what_the_committed_results_render() -> None:
    text = README.read_text(encoding="utf-8")
    assert committed.render_readme(text) == text, (
        "README figures differ from docs/results/*.json: run `.venv/bin/python -m bench.results readme`")


def test_every_figure_section_is_in_the_readme() -> None:
    sections = committed.readme_sections(README.read_text(encoding="utf-8"))
    assert set(sections) == set(committed.SECTIONS)


def test_bench_rendering_carries_every_figure_and_the_machine(tmp_path: Path) -> None:
    committed.write_json(tmp_path / committed.BENCH_FILE, _bench_json())
    bench = committed.render_bench(tmp_path)
    assert "| 2 | 3.00 | 6.00 | 0.50 |" in bench
    assert "| median | 2.00 | 6.00 | **0.25** (goal ≥ 0.1) |" in bench
    assert "**0.40 ms** (goal ≤ 10 ms) | 45.0 ms" in bench
    assert "**0.01 %** of a core" in bench and "threads 40-70 %" in bench
    assert "Measured 2030-01-02 by `make bench` on Test CPU @ 1.00GHz (2 cores, load average 3.50 at the start, " \
        "4.25 at the end; Linux 6.1.0, Python 3.11.2)" in bench
    rtl = committed.render_rtl(tmp_path)
    assert "Full stack 1.25 M simulated cycles/s with the Python frontend (3.00 M while the clock ran), " \
        "2.50 M with testpmd's io loop (4.00 M while the clock ran), against 5.10 M" in rtl
    assert "for a plain Verilator C++ loop of the same design (goal ≥ 1 M)" in rtl
    assert "3.30 M against 3.00 M, ratio **1.10**" in rtl
    campaign = committed.render_campaign(tmp_path)
    assert "| one after another | 20.0 | 5.00 | 5.00 |" in campaign
    assert "| 2 Dask workers | 12.5 | 3.12 | 5.50 |" in campaign
    assert "Speedup **1.60x** (goal ≥ 1.7x: not met)" in campaign and "0.50 s per cell" in campaign


def test_missing_results_render_as_the_command_to_run(tmp_path: Path) -> None:
    assert "run `make bench`" in committed.render_bench(tmp_path)
    assert "run `make bench`" in committed.render_rtl(tmp_path)
    assert "run `make demo`" in committed.render_suite(tmp_path)
    assert "run `make bench`" in committed.render_campaign(tmp_path)


def test_suite_summary_cli_records_counts_and_rerenders_the_readme(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_suite_results()), encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:suite -->\nold\n<!-- /results:suite -->\n"
                      "<!-- results:bench --><!-- /results:bench -->\n<!-- results:rtl -->\n<!-- /results:rtl -->\n"
                      "<!-- results:campaign --><!-- /results:campaign -->\n",
                      encoding="utf-8")
    out = tmp_path / "results"
    assert committed.main(["--results-dir", str(out), "--readme", str(readme), "suite", str(results)]) == 0
    summary = json.loads((out / "suite-sim-virtio-net.json").read_text(encoding="utf-8"))
    assert summary["counts"]["passed"] == 300 and summary["areas"]["SPLIT"]["failed"] == 1
    assert set(summary["machine"]) >= {"cpu_model", "cores", "load_average", "kernel", "python"}
    text = readme.read_text(encoding="utf-8")
    assert "old" not in text
    assert "| `sim:virtio-net` | 490 | 300 | 1 | 100 | 9 | 70 | 10 |" in text
    assert committed.render_readme(text, out) == text


def test_a_file_that_is_no_suite_result_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "results.json"
    bogus.write_text(json.dumps({"target": "sim"}), encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("", encoding="utf-8")
    assert committed.main(["--results-dir", str(tmp_path), "--readme", str(readme), "suite", str(bogus)]) == 2
    assert "not a suite results.json: no 'summary'" in capsys.readouterr().err


def test_a_readme_without_the_markers_is_a_clear_error() -> None:
    with pytest.raises(committed.ResultsError, match=r"one <!-- results:bench --> section, found 0"):
        committed.render_readme("no markers here")


def _tracked() -> set[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the layout table is checked against `git ls-files`")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30)
    return set(out.stdout.splitlines())


def _layout_paths(text: str) -> list[str]:
    table = text[text.index("## Layout"):]
    table = table[:table.index("\n## ", 1)]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [p for row in rows for p in re.findall(r"`([^`]+)`", row.split("|")[1])]


def test_the_layout_table_is_the_tree() -> None:
    tracked = _tracked()
    paths = _layout_paths(README.read_text(encoding="utf-8"))
    assert paths
    missing = [p for p in paths if not (p in tracked or any(t.startswith(p) for t in tracked if p.endswith("/")))]
    assert not missing, f"README layout rows for paths git does not track: {missing}"
    top = {t.split("/")[0] + "/" for t in tracked if "/" in t and not t.startswith(".")}
    uncovered = sorted(d for d in top if not any(p.startswith(d) for p in paths))
    assert not uncovered, f"top-level folders with no README layout row: {uncovered}"


@pytest.mark.parametrize("doc", ["README.md", "docs/design.md"])
def test_the_docs_point_nowhere_outside_the_repository(doc: str) -> None:
    path = ROOT / doc
    text = path.read_text(encoding="utf-8")
    assert "../" not in text and "/work/" not in text, f"{doc} names a path outside the repository"
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        assert (path.parent / target.split("#")[0]).exists(), f"{doc} links to {target}, not in the repository"


def test_the_readme_examples_are_the_files_the_tests_run() -> None:
    """Each ``<!-- example:PATH -->`` block in the README is that file, byte for byte."""
    text = README.read_text()
    blocks = re.findall(r"<!-- example:(\S+) -->\n```python\n(.*?)```\n<!-- /example -->", text, re.S)
    assert blocks, "the README embeds no example program"
    for path, body in blocks:
        assert (ROOT / path).read_text() == body, f"README's copy of {path} differs from the file: re-paste it"
