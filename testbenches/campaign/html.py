"""The campaign page a person opens: self-contained HTML (Jinja2, inline SVG and script, nothing fetched).

Per-area pass rates over the campaign history as small line charts, the id-by-cell matrix as a heat map,
filters by area, level, status and cell, and the failures grouped by id whose evidence, seed and
reproduction command expand on a click.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from testbenches.campaign.history import AreaPoint, History
from testbenches.campaign.merge import Merged

CHART_W, CHART_H, PAD = 220, 70, 6
#: Statuses in the order the status filter lists them ("error": the cell produced no results).
STATUSES = ("failed", "deviation", "passed", "not offered", "not applicable", "not covered", "not testable", "error")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("testbenches.campaign", "templates"), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["css"] = lambda s: str(s).replace(" ", "-")
    return env


def chart(points: Sequence[AreaPoint]) -> dict[str, Any]:
    """SVG coordinates of one area's pass rates (x: campaign, y: 0..100 %); gaps where nothing was judged."""
    n = len(points)
    step = (CHART_W - 2 * PAD) / max(1, n - 1)
    dots = [{"x": round(PAD + i * step, 1), "y": round(CHART_H - PAD - p.rate * (CHART_H - 2 * PAD), 1),
             "label": f"#{p.campaign} {p.started}: {100 * p.rate:.1f} %"}
            for i, p in enumerate(points) if p.rate is not None]
    last = next((p.rate for p in reversed(points) if p.rate is not None), None)
    return {"w": CHART_W, "h": CHART_H, "dots": dots, "line": " ".join(f"{d['x']},{d['y']}" for d in dots),
            "last": None if last is None else f"{100 * last:.1f} %"}


def render(merged: Merged, hist: History, trends: dict[str, list[AreaPoint]], path: Path) -> Path:
    rows = list(merged.rows.values())
    html = _environment().get_template("campaign.html.j2").render(
        title=f"campaign {merged.name}",
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        merged=merged,
        cells=merged.cells,
        rows=rows,
        failed=merged.failed_rows(),
        areas=sorted({r.area for r in rows}),
        levels=sorted({r.level for r in rows}),
        statuses=STATUSES,
        charts={area: chart(points) for area, points in sorted(trends.items())},
        changes={i: c.label() for i, c in hist.changes.items()},
        changed=hist.changed(),
        previous=hist.previous,
        campaign_id=hist.campaign,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
