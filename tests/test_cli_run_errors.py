"""``vdpa-bench run`` fails fast on a target it cannot use: exit 2, one line, little processor time, no report."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

#: The processor time the command may take (Python start-up and imports included: about 1 s; a run that opened the
#: target's checks would take far longer). Processor time, not wall-clock time: with every core busy (pytest-xdist
#: workers beside a simulation) the same answer can take several seconds to arrive.
FAST = 5.0


def run_cli(args: list[str], cwd: Path, timeout: float = 30.0) -> tuple[subprocess.CompletedProcess[str], float]:
    """The command's result and the processor time (user + system) it took."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "testbenches.cli", *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


@pytest.mark.parametrize(("target", "message"), [
    ("bogus", "--target 'bogus': expected SCHEME:DEVICE"),
    ("nosuch:virtio-net", "unknown target scheme 'nosuch'"),
    ("sim:virtio-net,foo=1", "unknown option 'foo'"),
    ("sim:virtio-net,model=no-such-model", "unknown model 'no-such-model'"),
    ("vfio-user:{tmp}/missing.sock", "cannot connect"),
    ("vfio-user:{tmp}/dev.sock,slowdown=0.5", "slowdown='0.5' (a number from 1 to 1000)"),
    ("vfio-user:{tmp}/dev.sock,slowdown=fast", "slowdown='fast'"),
    ("vfio-user:{tmp}/dev.sock,speed=2", "unknown option 'speed' (known: wire, slowdown, bench)"),
])
def test_run_rejects_a_target_it_cannot_use(target: str, message: str, tmp_path: Path) -> None:
    target = target.format(tmp=tmp_path)
    out = tmp_path / "out"
    proc, took = run_cli(["run", "--target", target, "--out", str(out)], tmp_path)
    assert proc.returncode == 2, f"exit status {proc.returncode}; stdout {proc.stdout!r} stderr {proc.stderr!r}"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vdpa-bench run: error: --target "), proc.stderr
    assert message in lines[0], f"{message!r} not in {lines[0]!r}"
    assert proc.stdout == "", f"stdout {proc.stdout!r}"
    assert took < FAST, f"took {took:.2f} s of processor time"
    assert not out.exists(), "a report directory was written"
    assert not (tmp_path / "reports").exists(), "a report directory was written"


def test_run_probes_before_the_checks(tmp_path: Path) -> None:
    """A target that opens is opened once, then the checks run and write their report."""
    out = tmp_path / "out"
    proc, _ = run_cli(["run", "--target", "sim", "--out", str(out), "-k", "test_pci_identity", "--no-progress"],
                      tmp_path, timeout=120.0)
    assert proc.returncode in (0, 1), f"exit status {proc.returncode}; stderr {proc.stderr[-2000:]}"
    assert (out / "results.json").exists(), f"no results; stdout {proc.stdout[-2000:]}"
