"""Run the conformance suite on a target in a child process and return its per-id results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ROOT / "testbenches" / "conformance" / "checks"


def run_suite(target: str, out: Path, *extra: str, timeout: float = 600) -> dict[str, Any]:
    """``pytest <checks> --target T --report-dir out``; returns the parsed results.json."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS), "--target", target,
           "--report-dir", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    results = out / "results.json"
    if not results.exists():
        raise AssertionError(f"suite produced no results (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
                             f"\n{proc.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(results.read_text())
    data["_exit"] = proc.returncode
    data["_stdout"] = proc.stdout
    return data


def ids_with(data: dict[str, Any], status: str) -> set[str]:
    return {i for i, r in data["ids"].items() if r["status"] == status}
