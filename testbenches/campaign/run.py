"""``vdpa-bench campaign FILE.toml``: run the matrix on Dask, merge, record the history, report.

Writes into the campaign's ``out`` directory: ``report.html``, ``junit.xml``, ``matrix.csv``,
``campaign.json`` (the merged report) and ``cells/`` (each attempt's suite reports and log), and adds one
campaign to the history file. ``--cell ID`` reruns chosen cells alone, in this process and without Dask,
recording nothing: the reproduction command the report prints for a failure. Exit status 0 when every
cell ran and no id failed, 1 otherwise, 2 for a bad campaign file or cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from testbenches.campaign import engine, history, html
from testbenches.campaign.cell import ROOT, run_cell
from testbenches.campaign.matrix import Campaign, CampaignError, load_campaign, select
from testbenches.campaign.merge import ERROR, FAILED, Merged

MAX_FAILED_SHOWN = 40


def _cell_table(merged: Merged) -> Table:
    table = Table(title=f"campaign {merged.name}: {len(merged.cells)} cell(s)", title_justify="left")
    table.add_column("cell", overflow="fold")
    for col in ("verdict", "passed", "failed", "s", "tries", "worker"):
        table.add_column(col, justify="right" if col in ("passed", "failed", "s", "tries") else "left")
    style = {"passed": "green", "failed": "bold red", ERROR: "bold magenta"}
    for c in merged.cells:
        counts = c.counts()
        table.add_row(c.id, f"[{style[c.verdict]}]{c.verdict}[/]", str(counts["passed"]), str(counts[FAILED]),
                      f"{c.duration:.1f}", str(c.attempts), c.worker.removeprefix("tcp://"))
    return table


def print_report(merged: Merged, hist: history.History | None, console: Console) -> None:
    console.print(_cell_table(merged))
    for c in merged.errors():
        console.print(f"[bold magenta]cell {c.id}: {c.outcome}[/] after {c.attempts} attempt(s); log tail:",
                      highlight=False)
        console.print("\n".join(c.log_tail.splitlines()[-8:]), markup=False, highlight=False)
    failed = merged.failed_rows()
    if failed:
        console.print(f"[bold red]{len(failed)} requirement id(s) failed:[/]", highlight=False)
    for row in failed[:MAX_FAILED_SHOWN]:
        console.print(f"  [bold red]{row.id}[/] ({row.area}, {row.level}) in {len(row.failures)} of "
                      f"{len(merged.cells)} cell(s)", highlight=False)
        example = row.smallest_example()
        if example:
            console.print(f"    smallest failing example: {example}", markup=False, highlight=False)
        for f in row.failures[:3]:
            console.print(f"    cell {f.cell.id} (seed {f.cell.seed}): {f.reproduce}", markup=False, highlight=False)
        if len(row.failures) > 3:
            console.print(f"    ... {len(row.failures) - 3} more cell(s), see report.html", highlight=False)
    if hist is None:
        return
    if hist.previous is None:
        console.print("history: first campaign of this name, nothing to compare with")
        return
    changed = hist.changed()
    console.print(f"since campaign #{hist.previous}: "
                  + (f"{len(changed)} id(s) changed" if changed else f"no change in any of {len(hist.changes)} ids"),
                  highlight=False)
    for req_id, change in sorted(changed.items()):
        console.print(f"  {req_id}: {change.label()}", highlight=False)


def _reproduce(campaign: Campaign, cell_ids: list[str], console: Console) -> int:
    """``--cell``: the chosen cells, one after another in this process; nothing recorded."""
    cells = select(campaign.cells, cell_ids)
    records = []
    for cell in cells:
        console.print(f"cell {cell.id}: {cell.target}, profile {cell.profile}, seed {cell.seed}", highlight=False)
        build = None
        if engine.rtl_variant(cell) is not None:
            from testbenches.campaign.cell import build_rtl

            build = build_rtl(cell.target)
        records.append(run_cell(cell, str(campaign.out / "reproduce"), build))
    merged = Merged.build(campaign.name, campaign.path, records)
    print_report(merged, None, console)
    for rec in records:
        console.print(f"reports: {rec['dir']}", highlight=False)
    return 0 if merged.ok() else 1


def cmd_campaign(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)  # reproduction commands stay one line, to copy and paste
    try:
        campaign = load_campaign(Path(args.file), out=args.out, history=args.history)
        if args.cell:
            return _reproduce(campaign, list(args.cell), console)
        with history.connect(campaign.history):
            pass  # a history this version cannot extend is an error now, not after the cells ran
        started, t0 = datetime.now(UTC), time.monotonic()
        campaign.out.mkdir(parents=True, exist_ok=True)
        with engine.client_for(campaign, scheduler=args.scheduler, cluster=args.cluster) as client:
            workers = len(client.scheduler_info().get("workers", {}))
            console.print(f"campaign {campaign.name}: {len(campaign.cells)} cells on {workers} worker(s); "
                          f"Dask dashboard: {engine.dashboard(client)}", highlight=False)
            records = engine.run_cells(client, campaign.cells, str(campaign.out.resolve()), console)
    except CampaignError as exc:
        print(f"vdpa-bench campaign: error: {exc}", file=sys.stderr, flush=True)
        return 2
    duration = time.monotonic() - t0
    merged = Merged.build(campaign.name, campaign.path, records)
    report = campaign.out / "report.html"
    with history.connect(campaign.history) as db:
        cid = history.record(db, merged, started=started, duration=duration, rev=history.revision(ROOT),
                             report=report.resolve())
        hist = history.changes(db, cid)
        trends = history.area_trends(db, campaign.name)
    doc: dict[str, Any] = {**merged.to_json(), "campaign_id": cid, "previous": hist.previous,
                           "duration": round(duration, 3),
                           "changes": {i: c.label() for i, c in hist.changes.items()}}
    (campaign.out / "campaign.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    merged.write_matrix_csv(campaign.out / "matrix.csv")
    merged.write_junit(campaign.out / "junit.xml")
    html.render(merged, hist, trends, report)
    print_report(merged, hist, console)
    console.print(f"campaign #{cid} in {campaign.history} ({duration:.1f} s); reports: {report}, "
                  f"{campaign.out / 'junit.xml'}, {campaign.out / 'campaign.json'}", highlight=False)
    return 0 if merged.ok() else 1
