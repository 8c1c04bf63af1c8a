"""Running cells on Dask distributed: which cluster, the shared RTL builds, the progress bar.

* default: a :class:`distributed.LocalCluster` sized to the machine (one single-threaded worker process
  per CPU: each runs one cell's suite process at a time);
* ``--scheduler ADDRESS``: an existing cluster (``dask scheduler`` and ``dask worker`` processes);
* ``--cluster slurm|lsf|sge|pbs``: dask-jobqueue, its options from the campaign file's ``[cluster.KIND]``
  table (``jobs = N`` is how many batch jobs to submit).

Each distinct RTL design variant is one build task; the cells that need it depend on it, so a variant is
built once (cached under the key :mod:`sim.rtl.build` computes) and a worker whose cache lacks it builds it
when its cell opens the target. A worker lost mid-campaign is Dask's business: the scheduler reruns its
cells elsewhere; a cell whose workers keep dying ends as an error of that cell only.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from testbenches.campaign.cell import OUTCOME_ERROR, build_rtl, run_cell
from testbenches.campaign.matrix import CLUSTER_KINDS, Campaign, CampaignError, Cell

LOCAL_KEYS = {"n_workers", "threads_per_worker", "memory_limit", "dashboard_address"}
CONNECT_TIMEOUT = "30s"


def _jobqueue_class(kind: str) -> Any:
    try:
        import dask_jobqueue
    except ImportError:
        raise CampaignError("--cluster needs dask-jobqueue: pip install 'vdpa-bench[campaign]'") from None
    return getattr(dask_jobqueue, {"slurm": "SLURMCluster", "lsf": "LSFCluster", "sge": "SGECluster",
                                   "pbs": "PBSCluster"}[kind])


def local_options(campaign: Campaign) -> dict[str, Any]:
    """LocalCluster keyword arguments: the ``[cluster]`` top-level keys over the machine-sized defaults."""
    opts = {k: v for k, v in campaign.cluster.items() if k not in CLUSTER_KINDS}
    unknown = sorted(set(opts) - LOCAL_KEYS)
    if unknown:
        raise CampaignError(f"{campaign.path}: [cluster]: unknown key(s) {', '.join(map(repr, unknown))} "
                            f"(LocalCluster: {', '.join(sorted(LOCAL_KEYS))}; farms: [cluster.slurm] etc.)")
    return {"n_workers": os.cpu_count() or 1, "threads_per_worker": 1, "processes": True,
            "dashboard_address": ":0", **opts}


@contextlib.contextmanager
def client_for(campaign: Campaign, scheduler: str | None = None, cluster: str | None = None) -> Iterator[Any]:
    """A connected :class:`distributed.Client` (and the cluster it started, closed on exit)."""
    from distributed import Client, LocalCluster

    if scheduler is not None and cluster is not None:
        raise CampaignError("--scheduler and --cluster exclude each other")
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError) as exc:
            raise CampaignError(f"--scheduler {scheduler}: cannot connect: {exc}") from None
        with client:
            yield client
        return
    if cluster is not None:
        if cluster not in CLUSTER_KINDS:
            raise CampaignError(f"--cluster {cluster!r}: expected one of {', '.join(CLUSTER_KINDS)}")
        table = campaign.cluster.get(cluster)
        if not isinstance(table, dict):
            raise CampaignError(f"{campaign.path}: --cluster {cluster} needs a [cluster.{cluster}] table "
                                "(dask-jobqueue options: cores, memory, queue, walltime, ...; jobs = N)")
        opts = dict(table)
        jobs = int(opts.pop("jobs", 1))
        try:
            farm = _jobqueue_class(cluster)(**opts)
        except (TypeError, ValueError) as exc:
            raise CampaignError(f"{campaign.path}: [cluster.{cluster}]: {exc}") from None
        with farm, Client(farm) as client:  # type: ignore[no-untyped-call]
            farm.scale(jobs=jobs)
            yield client
        return
    with LocalCluster(**local_options(campaign)) as local, Client(local) as client:  # type: ignore[no-untyped-call]
        yield client


def rtl_variant(cell: Cell) -> str | None:
    """The design variant an ``rtl:`` cell needs built (its parameters, defines, tracing), None otherwise."""
    if cell.scheme != "rtl":
        return None
    from models.rtl.targets import RtlOptions

    opts = RtlOptions(cell.target.partition(":")[2])
    if opts.sim != "verilator":
        return None
    variant = opts.variant
    return json.dumps({"description": str(opts.description.path), "params": dict(sorted(variant.parameters.items())),
                       "defines": list(variant.defines), "waves": opts.waves is not None}, sort_keys=True)


def _lost(cell: Cell, exc: BaseException) -> dict[str, Any]:
    """A cell Dask gave up on (its workers kept dying): an error of that cell."""
    return {"cell": cell.to_json(), "worker": "", "attempts": 0, "exit": None, "results": None, "dir": "",
            "rtl_build": None, "outcome": OUTCOME_ERROR, "duration": 0.0,
            "log_tail": f"{type(exc).__name__}: {exc}"}


def run_cells(client: Any, cells: Sequence[Cell], out_root: str, console: Console,
              on_done: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Submit every cell (after the RTL builds it needs) and gather one record per cell, in cell order."""
    from distributed import as_completed

    builds: dict[str, Any] = {}
    for cell in cells:
        variant = rtl_variant(cell)
        if variant is not None and variant not in builds:
            builds[variant] = client.submit(build_rtl, cell.target, pure=False, key=f"rtl-build-{len(builds)}")
    futures = {}
    for n, cell in enumerate(cells):
        variant = rtl_variant(cell)
        fut = client.submit(run_cell, cell, out_root, builds[variant] if variant is not None else None,
                            pure=False, key=f"cell-{n}-{cell.slug}")
        futures[fut] = cell
    records: dict[str, dict[str, Any]] = {}
    columns = (TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("cells", total=len(cells), failed="")
        bad = 0
        for fut in as_completed(list(futures)):  # type: ignore[no-untyped-call]
            cell = futures.pop(fut)
            try:
                record = fut.result()
            except Exception as exc:  # KilledWorker and the like: that cell's error, the others go on
                record = _lost(cell, exc)
            # let go of the result: else a worker lost later would have Dask rerun cells already gathered
            fut.release()
            records[cell.id] = record
            failed = record["results"] is None or any(
                r["status"] == "failed" for r in record["results"]["ids"].values())
            bad += failed
            progress.update(task, advance=1, failed=f"[red]{bad} failed[/]" if bad else "")
            if on_done is not None:
                on_done(record)
    return [records[c.id] for c in cells]


def dashboard(client: Any) -> str:
    link = client.dashboard_link
    return str(link) if link else "(no dashboard: pip install bokeh)"

