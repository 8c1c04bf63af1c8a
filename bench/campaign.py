"""The campaign section of ``make bench``: the same cells one after another in this process, then on a
two-worker Dask LocalCluster, side by side; the speedup and what Dask adds per cell.

Each cell is the suite (a few fast checks, a short hypothesis profile) in a process of its own, as in
``vdpa-bench campaign``. Serial: :func:`run_cell` in a loop. Parallel: :func:`engine.run_cells` on two
single-threaded worker processes. Per-cell overhead = (parallel wall time x workers - the cells' own
run time) / cells: scheduling, result transfer and idle tail, the price of the engine per cell.
The cluster's start-up is measured apart (it is paid once per campaign, not per cell).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from testbenches.campaign.cell import run_cell
from testbenches.campaign.matrix import Cell

GOAL_SPEEDUP = 1.7
WORKERS = 2
CHECKS = "test_features or test_status_reset"
SETTINGS = {"max_examples": 10, "deadline": None}


def cells(n: int) -> list[Cell]:
    return [Cell(id=f"bench/s{seed}", target="sim:virtio-net", seed=seed, profile="bench", settings=SETTINGS,
                 checks=CHECKS, timeout=300.0) for seed in range(1, n + 1)]


def _serial(work: Path, batch: list[Cell]) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    durations = [float(run_cell(c, str(work / "serial"))["duration"]) for c in batch]
    return time.perf_counter() - t0, durations


def _parallel(work: Path, batch: list[Cell], console: Console) -> tuple[float, float, list[float], list[str]]:
    from distributed import Client, LocalCluster

    from testbenches.campaign.engine import run_cells

    t0 = time.perf_counter()
    local = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                         dashboard_address=":0")
    with local, Client(local) as client:  # type: ignore[no-untyped-call]
        client.wait_for_workers(WORKERS)
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        records = run_cells(client, batch, str(work / "dask"), console)
        wall = time.perf_counter() - t1
    return startup, wall, [float(r["duration"]) for r in records], [str(r["outcome"]) for r in records]


def section(console: Console, out: Path, n_cells: int = 8) -> tuple[int, dict[str, Any] | None]:
    """Run both, print the table, write ``out/campaign.json``; (0 unless a cell did not run, the result)."""
    console.rule(f"campaign: {n_cells} cells, serial vs {WORKERS} Dask workers")
    if (os.cpu_count() or 1) < WORKERS:
        console.print(f"[yellow]{os.cpu_count()} CPU: {WORKERS} workers share it; the speedup cannot reach "
                      f"{GOAL_SPEEDUP}x here[/]")
    batch = cells(n_cells)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vdpa-bench-campaign-") as tmp:
        work = Path(tmp)
        serial_wall, serial_cells = _serial(work, batch)
        startup, par_wall, par_cells, outcomes = _parallel(work, batch, console)
    if any(o != "ran" for o in outcomes):
        console.print(f"[red]cells did not run: {outcomes}[/]")
        return 2, None
    speedup = serial_wall / par_wall
    overhead = (par_wall * WORKERS - sum(par_cells)) / n_cells
    table = Table(title=f"campaign throughput ({n_cells} cells, checks: {CHECKS})")
    for col in ("run", "wall s", "per cell s", "cell run s (mean)", "overhead/cell s"):
        table.add_column(col, justify="right")
    table.add_row("serial (one after another)", f"{serial_wall:.1f}", f"{serial_wall / n_cells:.2f}",
                  f"{sum(serial_cells) / n_cells:.2f}", f"{(serial_wall - sum(serial_cells)) / n_cells:.2f}")
    table.add_row(f"Dask, {WORKERS} workers", f"{par_wall:.1f}", f"{par_wall / n_cells:.2f}",
                  f"{sum(par_cells) / n_cells:.2f}", f"{overhead:.2f}")
    console.print(table)
    met = speedup >= GOAL_SPEEDUP
    console.print(f"speedup {speedup:.2f}x (goal >= {GOAL_SPEEDUP}x: {'[green]met' if met else '[red]not met'}[/]); "
                  f"LocalCluster start-up {startup:.1f} s (once per campaign, not counted); load average "
                  f"{load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end", highlight=False)
    result = {"cells": n_cells, "workers": WORKERS, "checks": CHECKS, "serial_wall_s": serial_wall,
              "parallel_wall_s": par_wall, "speedup": speedup, "overhead_per_cell_s": overhead,
              "cluster_startup_s": startup, "serial_cell_s": serial_cells, "parallel_cell_s": par_cells,
              "goal_speedup": GOAL_SPEEDUP, "goal_met": met, "load_average": [load_start[0], os.getloadavg()[0]]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "campaign.json").write_text(json.dumps(result, indent=2))
    return 0, result


def main() -> int:
    return section(Console(), Path("reports/bench"))[0]


if __name__ == "__main__":
    raise SystemExit(main())
