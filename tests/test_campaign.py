"""``vdpa-bench campaign`` (issue 17): the campaign file's errors, a campaign through a real ``dask
scheduler`` and two ``dask worker`` processes with one killed mid-run, and a seeded broken model whose new
failures come with reproduction commands that do reproduce them, then "no change" on a rerun.

Cells select a few fast checks so the whole module stays near a minute.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from sim.child_process import ChildProcess
from testbenches.campaign.matrix import CampaignError, load_campaign
from testbenches.peers.process import require_program

ROOT = Path(__file__).resolve().parents[1]
FAST = "test_features"
BROKEN = "tests.broken_models:FeaturesOkForUnoffered"
BROKEN_ID = "FEAT-DEV-03"  # tests/test_broken_models.py: the id this model breaks
START_TIMEOUT = 60.0
CAMPAIGN_TIMEOUT = 300.0


def _campaign(path: Path, name: str, spec: str, seeds: list[int], *, checks: str = FAST, extra: str = "") -> Path:
    path.write_text(f"""
[campaign]
name = "{name}"
checks = "{checks}"
timeout = 120
seeds = {seeds}
profiles = ["short"]
out = "{path.parent / name}"
history = "{path.parent / 'history.sqlite'}"

[profiles.short]
max_examples = 5

[[target]]
name = "sim"
spec = "{spec}"
{extra}

[cluster]
n_workers = 2
""")
    return path


def _cli(*args: str, timeout: float = CAMPAIGN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "testbenches.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


# -- the campaign file ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    ('[campaign]\nname = "x"\ncolour = 1\n[[target]]\nspec = "sim:virtio-net"\n', "unknown key(s) 'colour'"),
    ('[[target]]\nspec = "qemu:virtio-net"\n', "expected SCHEME:DEVICE"),
    ('[[target]]\nspec = "sim:virtio-net,speed=9"\n', "unknown option 'speed'"),
    ('[[target]]\nspec = "rtl:virtio-net"\noptions = [{data_w = 48}]\n', "data_w=48"),
    ('[[target]]\nspec = "vfio-user:"\n', "needs device ="),
    ('[campaign]\nprofiles = ["fast"]\n[[target]]\nspec = "sim"\n', "profile 'fast' is not defined"),
    ('[profiles.p]\nmax_examples = -1\n[[target]]\nspec = "sim"\n', "[profiles.p]"),
    ('[campaign]\nseeds = []\n[[target]]\nspec = "sim"\n', "seeds: expected a non-empty list"),
    ('[campaign]\nname = "x"\n', "no [[target]] tables"),
    ('[[target]]\nspec = "sim"\nfrobs = 2\n', "unknown key(s) 'frobs'"),
])
def test_bad_campaign_file_is_one_clear_error(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(CampaignError) as err:
        load_campaign(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_bad_campaign_file_exits_2_before_any_cell(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[target]]\nspec = "sim:virtio-net,speed=9"\n')
    proc = _cli("campaign", str(path), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown option 'speed'" in proc.stderr and "cells" not in proc.stdout


def test_matrix_crosses_features_options_profiles_and_seeds(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("""
[campaign]
seeds = [1, 2]
profiles = ["a", "b"]
[profiles.a]
max_examples = 3
[profiles.b]
max_examples = 7
[[target]]
spec = "sim:virtio-net"
features = ["0x100000000", 4294967328]
options = [{}, {qsize = 1024}]
[[target]]
name = "dev"
spec = "vfio-user:"
device = "virtio-net"
seeds = [5]
profiles = ["a"]
""")
    c = load_campaign(path)
    assert len(c.cells) == 2 * 2 * 2 * 2 + 1
    assert len({cell.key for cell in c.cells}) == len(c.cells)
    assert c.cell("sim:virtio-net/qsize=1024,features=0x100000020/b/s2").target == \
        "sim:virtio-net,qsize=1024,features=0x100000020"
    dev = c.cell("dev/base/a/s5")
    assert (dev.target, dev.device, dict(dev.settings)) == ("vfio-user:", "virtio-net", {"max_examples": 3})


# -- an external scheduler, two workers, one killed --------------------------------------------------------


@pytest.fixture
def scheduler(tmp_path: Path) -> Iterator[tuple[str, ChildProcess]]:
    dask = require_program(str(Path(sys.executable).parent / "dask"), "pip install 'vdpa-bench[campaign]'")
    with ChildProcess([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                       "--no-show"], log=tmp_path / "scheduler.log", name="dask-scheduler",
                      ready=r"Scheduler at:\s+(tcp://\S+)", ready_timeout=START_TIMEOUT) as sched:
        yield sched.wait_for(r"Scheduler at:\s+(tcp://\S+)", 1).group(1), sched


def _worker(address: str, name: str, log: Path) -> ChildProcess:
    dask = str(Path(sys.executable).parent / "dask")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    # no nanny: the PID is the worker itself, so killing it loses the worker (a nanny would restart it)
    return ChildProcess([dask, "worker", address, "--nthreads", "1", "--no-nanny", "--name", name,
                         "--no-dashboard"], log=log, name=name, env=env, cwd=ROOT,
                        ready=r"Registered to", ready_timeout=START_TIMEOUT)


def _running_cell(worker: ChildProcess, stop: threading.Event, timeout: float) -> bool:
    """Wait (bounded) until ``worker`` has a cell process running."""
    deadline = time.monotonic() + timeout
    proc = psutil.Process(worker.pid)
    while time.monotonic() < deadline and not stop.is_set():
        if any("testbenches.campaign.cell" in " ".join(c.cmdline()) for c in proc.children()):
            return True
        stop.wait(0.05)  # a bounded poll of the process table: the worker announces nothing
    return False


@pytest.mark.timeout(900)
def test_external_scheduler_survives_a_killed_worker(tmp_path: Path, scheduler: tuple[str, ChildProcess]) -> None:
    address, _ = scheduler
    path = _campaign(tmp_path / "ext.toml", "ext", "sim:virtio-net", [1, 2, 3, 4, 5, 6])
    with _worker(address, "w-keep", tmp_path / "w1.log") as keep, \
            _worker(address, "w-kill", tmp_path / "w2.log") as victim:
        env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
        with ChildProcess([sys.executable, "-m", "testbenches.cli", "campaign", str(path), "--scheduler", address],
                          log=tmp_path / "campaign.log", name="campaign", env=env, cwd=ROOT) as run:
            stop = threading.Event()
            assert _running_cell(victim, stop, 90), f"no cell started on the victim:\n{run.tail()}"
            victim.stop(signum=signal.SIGKILL)
            code = run.wait_exit(CAMPAIGN_TIMEOUT)
        assert keep.returncode is None  # the survivor ran the rest
    out = run.output()
    assert code == 0, out
    doc = json.loads((tmp_path / "ext" / "campaign.json").read_text())
    assert [c["verdict"] for c in doc["cells"]] == ["passed"] * 6
    workers = {c["worker"] for c in doc["cells"]}
    assert len(workers) >= 1 and all(w.startswith("tcp://127.0.0.1") for w in workers)
    with sqlite3.connect(tmp_path / "history.sqlite") as db:
        rows = db.execute("SELECT cell_id, COUNT(*) FROM cell GROUP BY cell_id").fetchall()
    assert len(rows) == 6 and {n for _, n in rows} == {1}, rows
    assert "Dask dashboard:" in out


# -- a seeded broken model: new failures, a reproduction that reproduces, then no change -------------------------


@pytest.mark.timeout(900)
def test_broken_model_new_failures_reproduce_and_no_change(tmp_path: Path) -> None:
    good = _campaign(tmp_path / "good.toml", "bm", "sim:virtio-net", [1])
    first = _cli("campaign", str(good))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "first campaign of this name" in first.stdout

    broken = _campaign(tmp_path / "broken.toml", "bm", f"sim:virtio-net,model={BROKEN}", [3])
    second = _cli("campaign", str(broken))
    assert second.returncode == 1, second.stdout + second.stderr
    assert re.search(rf"^\s*{BROKEN_ID}: new failure in 1 cell\(s\)", second.stdout, re.M), second.stdout
    commands = re.findall(r"(vdpa-bench campaign \S+ --cell \S+)$", second.stdout, re.M)
    assert commands, second.stdout
    doc = json.loads((tmp_path / "bm" / "campaign.json").read_text())
    assert doc["changes"][BROKEN_ID].startswith("new failure") and doc["previous"] is not None
    failure = doc["failures"][BROKEN_ID][0]
    assert failure["reproduce"] in commands and failure["seed"] == 3

    # the printed command, as a user pastes it, reruns that cell alone and fails the same id
    rerun = _cli(*failure["reproduce"].split()[1:])
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    assert re.search(rf"{BROKEN_ID} .* in 1 of 1 cell", rerun.stdout), rerun.stdout

    third = _cli("campaign", str(broken))
    assert third.returncode == 1
    assert re.search(r"since campaign #\d+: no change in any of \d+ ids", third.stdout), third.stdout
    junit = (tmp_path / "bm" / "junit.xml").read_text()
    assert junit.count("<testsuite ") == 1 and f'name="{BROKEN_ID}"' in junit and "<failure" in junit
    with sqlite3.connect(tmp_path / "history.sqlite") as db:
        verdicts = db.execute("SELECT c.name, v.status FROM verdict v JOIN campaign c ON c.id = v.campaign "
                              "WHERE v.req_id = ? ORDER BY c.id", (BROKEN_ID,)).fetchall()
    assert [s for _, s in verdicts] == ["passed", "failed", "failed"]


# -- a cell's timeout and retries ----------------------------------------------------------------------------


def test_a_cell_over_its_timeout_is_stopped_retried_and_an_error(tmp_path: Path) -> None:
    from testbenches.campaign.cell import run_cell
    from testbenches.campaign.matrix import Cell
    from testbenches.campaign.merge import CellRun

    cell = Cell(id="slow", target="sim:virtio-net", seed=1, profile="default", settings={}, checks=FAST,
                timeout=0.5, retries=1)
    record = run_cell(cell, str(tmp_path))
    assert (record["outcome"], record["attempts"], record["results"]) == ("timeout", 2, None)
    assert len(list((tmp_path / "cells" / cell.slug).iterdir())) == 2  # each attempt its own directory
    assert CellRun.from_record(record).verdict == "error"
    assert not [p for p in psutil.process_iter(["cmdline"])
                if "testbenches.campaign.cell" in " ".join(p.info["cmdline"] or []) and str(tmp_path) in
                " ".join(p.info["cmdline"] or [])]


# -- what the history calls new, fixed, flaky --------------------------------------------------------------


def _record(cell_id: str, statuses: dict[str, str], seed: int = 1) -> dict[str, object]:
    from testbenches.campaign.matrix import Cell

    cell = Cell(id=cell_id, target="sim:virtio-net", seed=seed, profile="default", settings={})
    ids = {i: {"status": s, "area": i.split("-")[0], "level": "MUST", "role": "device", "checks": ["t"],
               "evidence": [f"t: {i} evidence"] if s == "failed" else []} for i, s in statuses.items()}
    return {"cell": cell.to_json(), "outcome": "ran", "attempts": 1, "duration": 1.0, "worker": "w", "log_tail": "",
            "results": {"ids": ids}}


def test_history_tells_new_fixed_flaky_and_no_change(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from testbenches.campaign import history
    from testbenches.campaign.merge import Merged

    def run(rev: str, *records: dict[str, object]) -> history.History:
        merged = Merged.build("h", tmp_path / "h.toml", list(records))
        with history.connect(tmp_path / "h.sqlite") as db:
            cid = history.record(db, merged, started=datetime.now(UTC), duration=1.0, rev=rev, report=tmp_path)
            return history.changes(db, cid)

    first = run("a", _record("c1", {"FEAT-DEV-03": "passed", "PCI-DEV-19": "failed"}))
    assert first.previous is None and first.changed() == {}
    same = run("a", _record("c1", {"FEAT-DEV-03": "passed", "PCI-DEV-19": "failed"}))
    assert same.previous is not None and same.changed() == {}
    flaky = run("a", _record("c1", {"FEAT-DEV-03": "failed", "PCI-DEV-19": "failed"}))
    assert {i: c.label() for i, c in flaky.changed().items()} == {"FEAT-DEV-03": "flaky in 1 cell(s)"}
    code = run("b", _record("c1", {"FEAT-DEV-03": "failed", "PCI-DEV-19": "passed"}),
               _record("c2", {"FEAT-DEV-03": "failed", "SPLIT-DEV-15": "failed"}, seed=2))
    assert {i: c.label() for i, c in code.changed().items()} == {
        "PCI-DEV-19": "fixed in 1 cell(s)", "SPLIT-DEV-15": "new failure in 1 cell(s)"}
