"""One cell of a campaign: the conformance suite on one target in a process of its own.

:func:`run_cell` runs where Dask puts it (a worker): it starts ``python -m testbenches.campaign.cell``
as a child (:class:`~sim.child_process.ChildProcess`: output in the cell's log, stopped by PID) under
the cell's timeout, retries a cell that crashed or timed out, and returns the ``results.json`` content
by value (a farm's workers need not share a file system with the client). A crashing cell fails that
cell only.

The child (:func:`main`) registers the cell's hypothesis profile, passes its seed, starts the
``vfio-user:`` device process a cell asks for, and runs pytest in process as ``vdpa-bench run`` does.
It dies with the worker that started it (``PR_SET_PDEATHSIG``), stopping its device process first, so a
worker killed mid-campaign leaves no orphans behind while Dask reruns the cell elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from sim.child_process import ChildError, ChildProcess
from testbenches.campaign.matrix import Cell

#: The project checkout (so ``model=tests.broken_models:...`` and the checks import in the child).
ROOT = Path(__file__).resolve().parents[2]
PROFILE = "vdpa-campaign-cell"
PR_SET_PDEATHSIG = 1
#: Room for the device process to come up before the cell's own timeout counts.
DEVICE_READY_TIMEOUT = 30.0

OUTCOME_RAN = "ran"
OUTCOME_CRASHED = "crashed"
OUTCOME_TIMEOUT = "timeout"
OUTCOME_ERROR = "error"
#: pytest exit statuses that carry verdicts: all passed, some failed.
VERDICT_EXITS = (0, 1)


def cell_from_json(data: Mapping[str, Any]) -> Cell:
    return Cell(id=str(data["id"]), target=str(data["target"]), seed=int(data["seed"]), profile=str(data["profile"]),
                settings=dict(data["settings"]), checks=data.get("checks"),
                pytest_args=tuple(data.get("pytest_args", ())), device=data.get("device"),
                timeout=float(data.get("timeout", 600.0)), retries=int(data.get("retries", 0)))


def _where() -> str:
    """The Dask worker running this (its address), else this host and process."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _child_env(seed: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.getcwd(), env.get("PYTHONPATH", "")) if p)
    env["PYTHONHASHSEED"] = str(seed)  # set iteration order too follows the seed
    return env


def run_cell(cell: Cell, out_root: str, build: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run ``cell`` (retrying crashes and timeouts ``cell.retries`` times); never raises for a cell's failure.

    ``build``: what the shared RTL build task returned; a failed build fails the cell without running it.
    """
    started = time.monotonic()
    record: dict[str, Any] = {"cell": cell.to_json(), "worker": _where(), "attempts": 0, "exit": None,
                              "results": None, "log_tail": "", "dir": "",
                              "rtl_build": None if build is None else dict(build)}
    if build is not None and not build.get("ok"):
        record.update(outcome=OUTCOME_ERROR, log_tail=f"RTL build failed: {build.get('error')}",
                      duration=time.monotonic() - started)
        return record
    for attempt in range(1, cell.retries + 2):
        # each attempt its own directory: a rescheduled cell never reads a lost attempt's half-written files
        out = Path(out_root) / "cells" / cell.slug / f"attempt-{attempt}-{uuid.uuid4().hex[:8]}"
        out.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "testbenches.campaign.cell", "--cell-json", json.dumps(cell.to_json()),
                "--out", str(out)]
        record.update(attempts=attempt, dir=str(out))
        child = ChildProcess(argv, log=out / "cell.log", name=f"cell {cell.id}", env=_child_env(cell.seed),
                             cwd=Path.cwd())
        try:
            code: int | None = child.wait_exit(cell.timeout + (DEVICE_READY_TIMEOUT if cell.device else 0.0))
            outcome = OUTCOME_RAN
        except ChildError:
            code, outcome = None, OUTCOME_TIMEOUT
        finally:
            child.stop()
        record.update(exit=code, log_tail=child.tail(30))
        results = out / "results.json"
        # pytest's 0 (no failure) and 1 (tests failed) are verdicts; anything else (a collection error, an
        # internal error, a signal) leaves results that judged nothing, so the cell is retried, then an error
        if outcome == OUTCOME_RAN and code in VERDICT_EXITS and results.is_file():
            record.update(outcome=OUTCOME_RAN, results=json.loads(results.read_text(encoding="utf-8")))
            break
        record["outcome"] = OUTCOME_CRASHED if outcome == OUTCOME_RAN else OUTCOME_TIMEOUT
    record["duration"] = time.monotonic() - started
    return record


def build_rtl(spec: str) -> dict[str, Any]:
    """The Verilator build of an ``rtl:`` spec's design variant (cached under the project's build key)."""
    from models.rtl.targets import RtlOptions, build_variant
    from sim.rtl.build import RtlBuildError

    started = time.monotonic()
    try:
        built = build_variant(RtlOptions(spec.partition(":")[2]))
    except (RtlBuildError, OSError, ValueError) as exc:
        return {"ok": False, "error": str(exc)[-2000:], "worker": _where()}
    return {"ok": True, "variant": built.directory.name, "fresh": built.fresh, "worker": _where(),
            "seconds": round(time.monotonic() - started, 1)}


# -- the child -------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """SIGTERM when the process that started us (the Dask worker) dies, whatever killed it."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(143)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbenches.campaign.cell",
                                 description="one campaign cell: the suite with the cell's profile and seed")
    ap.add_argument("--cell-json", required=True, help="the cell (Cell.to_json)")
    ap.add_argument("--out", required=True, type=Path, help="report directory (results.json)")
    args = ap.parse_args(argv)
    cell = cell_from_json(json.loads(args.cell_json))
    _die_with_parent()

    import pytest
    from hypothesis import settings

    from testbenches.conformance.run import pytest_args
    from testbenches.peers.serve import DeviceProcess

    # no example database unless the profile asks: a cell's examples follow from its seed alone
    settings.register_profile(PROFILE, **{"database": None, **cell.settings})
    with contextlib.ExitStack() as stack:
        device: list[DeviceProcess] = []

        def on_term(signum: int, frame: FrameType | None) -> None:
            for d in device:
                d.stop()
            os._exit(128 + signum)

        signal.signal(signal.SIGTERM, on_term)
        target = cell.target
        if cell.device is not None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vdpa-cell-")))
            sock = tmp / "device.sock"  # short: unix socket paths are limited to 108 bytes
            device.append(stack.enter_context(DeviceProcess(str(sock), cell.device, log=args.out / "device.log")))
            device[0].wait_listening(DEVICE_READY_TIMEOUT)
            target = f"vfio-user:{sock}{cell.target.partition(':')[2]}"
        ns = argparse.Namespace(target=target, k=cell.checks, sim=None, waves=False, progress=False,
                                pytest_args=[*cell.pytest_args, f"--hypothesis-profile={PROFILE}",
                                             f"--hypothesis-seed={cell.seed}"])
        return int(pytest.main(pytest_args(ns, args.out)))


if __name__ == "__main__":
    sys.exit(main())
