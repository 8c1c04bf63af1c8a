"""Campaign history in one SQLite file: each campaign, its cells and every id's verdict per cell.

What changed per id since the previous campaign of the same name (:func:`changes`), comparing cells by
their key (:attr:`testbenches.campaign.matrix.Cell.key`: target, settings, seed, checks):

* new failure: fails now in a cell where it did not fail before, or in a new cell while it failed in no
  cell of the previous campaign;
* fixed: failed before in a cell where it passes now;
* flaky: the identical cell on the identical code (same revision) gave a different verdict;
* changed: another status change (passed to not covered, say), or "no change".
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from testbenches.campaign.matrix import CampaignError
from testbenches.campaign.merge import FAILED, PASSED, Merged

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaign (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, file TEXT NOT NULL, started TEXT NOT NULL, duration REAL NOT NULL,
    revision TEXT NOT NULL, cells INTEGER NOT NULL, failed_cells INTEGER NOT NULL, report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cell (
    campaign INTEGER NOT NULL REFERENCES campaign(id), cell_id TEXT NOT NULL, cell_key TEXT NOT NULL,
    target TEXT NOT NULL, seed INTEGER NOT NULL, profile TEXT NOT NULL, verdict TEXT NOT NULL,
    outcome TEXT NOT NULL, attempts INTEGER NOT NULL, duration REAL NOT NULL, worker TEXT NOT NULL,
    PRIMARY KEY (campaign, cell_id)
);
CREATE TABLE IF NOT EXISTS verdict (
    campaign INTEGER NOT NULL REFERENCES campaign(id), cell_id TEXT NOT NULL, req_id TEXT NOT NULL,
    area TEXT NOT NULL, level TEXT NOT NULL, status TEXT NOT NULL,
    PRIMARY KEY (campaign, cell_id, req_id)
);
CREATE INDEX IF NOT EXISTS verdict_req ON verdict (req_id);
"""


def revision(root: Path) -> str:
    """The code a campaign ran: ``git`` HEAD, plus a hash of the uncommitted diff when the tree is dirty."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60, check=False)
        return proc.stdout if proc.returncode == 0 else ""

    head = git("rev-parse", "HEAD").strip()[:12] or "unknown"
    diff = git("diff", "HEAD")
    return f"{head}+{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else head


SCHEMA_VERSION = 2


class HistoryError(CampaignError):
    """The history file is not one this version writes."""


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        tables = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if tables and version != SCHEMA_VERSION:
            raise HistoryError(f"{path}: a campaign history of schema {version}, this version writes "
                               f"{SCHEMA_VERSION}: start a new file (--history)")
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        yield db


def record(db: sqlite3.Connection, merged: Merged, *, started: datetime, duration: float, rev: str,
           report: Path) -> int:
    """Store the campaign, its cells and verdicts in one transaction; the campaign's row id."""
    with db:
        cur = db.execute(
            "INSERT INTO campaign (name, file, started, duration, revision, cells, failed_cells, report) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (merged.name, str(merged.file), started.astimezone(UTC).isoformat(timespec="seconds"), duration, rev,
             len(merged.cells), sum(c.verdict != PASSED for c in merged.cells), str(report)))
        cid = int(cur.lastrowid or 0)
        db.executemany(
            "INSERT INTO cell VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(cid, c.id, c.key, c.target, c.seed, c.profile, c.verdict, c.outcome, c.attempts, c.duration, c.worker)
             for c in merged.cells])
        db.executemany(
            "INSERT INTO verdict VALUES (?, ?, ?, ?, ?, ?)",
            [(cid, c.id, row.id, row.area, row.level, row.statuses[c.id])
             for c in merged.cells for row in merged.rows.values()])
    return cid


@dataclass
class Change:
    """What happened to one id since the previous campaign (cell ids in each list)."""

    new_failures: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    flaky: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def label(self) -> str:
        parts = [f"{name} in {len(cells)} cell(s)" for name, cells in (
            ("new failure", self.new_failures), ("fixed", self.fixed), ("flaky", self.flaky),
            ("changed", self.changed)) if cells]
        return "; ".join(parts) or "no change"


@dataclass
class History:
    campaign: int
    previous: int | None
    changes: dict[str, Change]

    def changed(self) -> dict[str, Change]:
        return {i: c for i, c in self.changes.items() if c.label() != "no change"}


def _previous(db: sqlite3.Connection, campaign: int) -> tuple[int, str] | None:
    row = db.execute("SELECT id, revision FROM campaign WHERE name = (SELECT name FROM campaign WHERE id = ?) "
                     "AND id < ? ORDER BY id DESC LIMIT 1", (campaign, campaign)).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _verdicts(db: sqlite3.Connection, campaign: int) -> dict[str, dict[str, tuple[str, str]]]:
    """req id -> cell key -> (status, cell id); cells of one key in a campaign are one experiment."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    rows = db.execute("SELECT v.req_id, c.cell_key, v.status, c.cell_id FROM verdict v JOIN cell c "
                      "ON c.campaign = v.campaign AND c.cell_id = v.cell_id WHERE v.campaign = ?", (campaign,))
    for req_id, key, status, cell_id in rows:
        out.setdefault(req_id, {})[key] = (status, cell_id)
    return out


def changes(db: sqlite3.Connection, campaign: int) -> History:
    """Per id, what changed between ``campaign`` and the previous campaign of the same name."""
    prev = _previous(db, campaign)
    now = _verdicts(db, campaign)
    if prev is None:
        return History(campaign, None, {i: Change() for i in now})
    (rev_now,) = db.execute("SELECT revision FROM campaign WHERE id = ?", (campaign,)).fetchone()
    before = _verdicts(db, prev[0])
    same_code = rev_now == prev[1]
    out: dict[str, Change] = {}
    for req_id, cells in now.items():
        change = Change()
        old = before.get(req_id, {})
        failed_before = any(s == FAILED for s, _ in old.values())
        for key, (status, cell_id) in cells.items():
            if key not in old:
                if status == FAILED and not failed_before:
                    change.new_failures.append(cell_id)
                continue
            was = old[key][0]
            if was == status:
                continue
            if same_code:
                change.flaky.append(cell_id)
            elif status == FAILED:
                change.new_failures.append(cell_id)
            elif was == FAILED and status == PASSED:
                change.fixed.append(cell_id)
            else:
                change.changed.append(cell_id)
        out[req_id] = change
    return History(campaign, prev[0], out)


@dataclass
class AreaPoint:
    campaign: int
    started: str
    rate: float | None  # passed / (passed + failed) over every cell; None: nothing judged


def area_trends(db: sqlite3.Connection, name: str, last: int = 30) -> dict[str, list[AreaPoint]]:
    """Per area, the pass rate of each of the last ``last`` campaigns named ``name`` (oldest first)."""
    campaigns = db.execute("SELECT id, started FROM campaign WHERE name = ? ORDER BY id DESC LIMIT ?",
                           (name, last)).fetchall()[::-1]
    out: dict[str, list[AreaPoint]] = {}
    for cid, started in campaigns:
        counts = db.execute("SELECT area, SUM(status = ?), SUM(status = ?) FROM verdict WHERE campaign = ? "
                            "GROUP BY area ORDER BY area", (PASSED, FAILED, cid)).fetchall()
        for area, passed, failed in counts:
            judged = (passed or 0) + (failed or 0)
            out.setdefault(area, []).append(AreaPoint(cid, started, (passed or 0) / judged if judged else None))
    return out
