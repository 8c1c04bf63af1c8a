"""The data path sweep's arithmetic and its README rendering (bench/datapath.py, bench/results.py), on made-up
samples: medians per cell, ratios of the same run, per-packet cost, and issue 16's goals."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import datapath
from bench import results as committed
from bench.datapath import Sample

FLAT = "ns per packet at 256 / at 1024"


def _samples() -> list[Sample]:
    out: list[Sample] = []
    for run, load in ((1, 1.0), (2, 0.5)):  # run 2 on a busier machine: both peers slower, the ratio the same
        for q, ours in ((256, 8.0), (1024, 12.0)):
            out.append(Sample("ours", run, q, "txonly", 64, ours * load, backend_cpu_pct=0.0, device_cpu_pct=90.0,
                              device_ns_per_pkt=1e3 / ours))
            out.append(Sample("dpdk", run, q, "txonly", 64, 20.0 * load))
    return out


def test_rows_take_the_median_and_the_ratio_of_the_same_run() -> None:
    rows = {r.qsize: r for r in datapath.rows(_samples())}
    assert set(rows) == {256, 1024}
    assert rows[256].ratio == pytest.approx(0.4) and rows[1024].ratio == pytest.approx(0.6)
    assert rows[1024].ours_mpps == pytest.approx(9.0) and rows[1024].ours_ns == pytest.approx(1e3 / 9.0)
    assert rows[256].device_ns == pytest.approx(125.0)


def test_goals_of_issue_16() -> None:
    verdicts = {name: met for name, _, _, met in datapath.goals(datapath.rows(_samples()))}
    assert verdicts["ratio to net_vhost, queue size 1024"] and verdicts["ratio to net_vhost, queue size 256"]
    assert verdicts[FLAT]  # (1000/6) / (1000/9) = 1.5
    slow = [s if (s.peer, s.qsize) != ("ours", 256) else Sample("ours", s.run, 256, "txonly", 64, s.mpps / 2,
                                                                 backend_cpu_pct=2.0)
            for s in _samples()]
    verdicts = {name: met for name, _, _, met in datapath.goals(datapath.rows(slow))}
    assert not verdicts["ratio to net_vhost, queue size 256"]
    assert not verdicts[FLAT]
    assert not verdicts["backend CPU during traffic (max)"]


def test_flatness_figures() -> None:
    """A machine twice as slow during the 1024 cells moves the wall-clock figure, not the peer-relative one."""
    skewed = [Sample(s.peer, s.run, s.qsize, s.mode, s.frame, s.mpps / 2 if s.qsize == 1024 else s.mpps,
                     backend_cpu_pct=s.backend_cpu_pct) for s in _samples()]
    rows = {r.qsize: r for r in datapath.rows(skewed)}
    assert datapath.peer_relative_flatness(rows[256], rows[1024]) == pytest.approx(1.5)
    assert datapath.wall_clock_flatness(rows[256], rows[1024]) == pytest.approx(0.75)


def test_every_cell_of_a_run() -> None:
    cells = datapath.cells()
    # txonly both sizes on one pair, io one pair per size; 64-byte txonly on packed rings at 256 and 1024 too
    assert len(cells) == len(datapath.QSIZES) * 3 + 2
    assert (64, "txonly", (64, 1500), "split") in cells and (4096, "io", (1500,), "split") in cells
    assert [c for c in cells if c[3] == "packed"] == [(256, "txonly", (64,), "packed"),
                                                      (1024, "txonly", (64,), "packed")]
    assert cells.index((256, "txonly", (64,), "packed")) < cells.index((1024, "txonly", (64, 1500), "split"))
    assert not [c for c in datapath.cells(modes=("io",)) if c[3] == "packed"]


def _with_packed(share: float) -> list[Sample]:
    """The split samples plus packed ones whose ratio to net_vhost is ``share`` of the split ratio in each run."""
    out = _samples()
    for s in list(out):
        if s.peer == "ours":
            dpdk = next(d for d in out if (d.peer, d.run, d.qsize) == ("dpdk", s.run, s.qsize))
            out.append(Sample("ours", s.run, s.qsize, "txonly", 64, s.mpps * share * 0.5, backend_cpu_pct=0.0,
                              layout="packed"))
            out.append(Sample("dpdk", s.run, s.qsize, "txonly", 64, dpdk.mpps * 0.5, layout="packed"))
    return out


def test_packed_rows_and_issue_11_goal() -> None:
    table = datapath.rows(_with_packed(0.9))
    split_rows = [r for r in table if r.layout == "split"]
    assert {r.qsize for r in split_rows} == {256, 1024} and len(table) == 4
    pairs = datapath.packed_vs_split(table)
    assert set(pairs) == {256, 1024}
    assert pairs[256][1].ratio == pytest.approx(0.9 * pairs[256][0].ratio)
    verdicts = {name: met for name, _, _, met in datapath.goals(table)}
    assert verdicts["packed ratio / split ratio, queue size 256"]
    assert verdicts["packed ratio / split ratio, queue size 1024"]
    assert verdicts["ratio to net_vhost, queue size 256"]  # split goals judge split rows only
    verdicts = {name: met for name, _, _, met in datapath.goals(datapath.rows(_with_packed(0.7)))}
    assert not verdicts["packed ratio / split ratio, queue size 1024"]


def _readme_bench(tmp_path: Path, samples: list[Sample]) -> str:
    """The README's bench section rendered from a committed results file holding the sweep of ``samples``."""
    table = datapath.rows(samples)
    data = {"date": "2030-01-02", "command": "make bench",
            "machine": {"cpu_model": "Test CPU", "cores": 2, "load_average": [1.0, 1.0, 1.0], "kernel": "Linux",
                        "python": "3.11"},
            "vhost": {"sweep": datapath.summary(samples, table, datapath.goals(table)),
                      "mem_table_ms": {"ours": [0.4], "dpdk": [45.0]}, "backend_cpu_pct_max": 0.0,
                      "goals": {"mem_table_ms_max": 10.0, "backend_cpu_pct_max": 1.0}}}
    committed.write_json(tmp_path / committed.BENCH_FILE, data)
    return committed.render_bench(tmp_path)


def test_packed_rows_render_in_the_readme(tmp_path: Path) -> None:
    text = _readme_bench(tmp_path, _with_packed(0.9))
    assert "| txonly (packed rings) | 64 B | 1024 |" in text
    assert "packed ratio at least 0.8 of the split one" in text
    assert "packed ratio / split ratio, queue size 256: met" in text


def test_sweep_renders_in_the_readme(tmp_path: Path) -> None:
    text = _readme_bench(tmp_path, _samples())
    assert "| txonly | 64 B | 1024 | 9.00 | 15.00 | **0.60** | 111 | 67 | 83 |" in text
    assert "Medians of 2 interleaved run(s)." in text
    assert "ratio to net_vhost, queue size 256: met" in text
    assert "**0.00 %** of a core" in text
