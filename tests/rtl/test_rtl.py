"""The SystemVerilog virtio-net function: lint, and the cocotb unit benches under Verilator and Icarus.

Each bench design is built once into build/rtl/<design>/ and reused while its
sources and parameters are unchanged (see simulate.py). The cocotb tests record
functional coverage; the pytest side checks every record is closed and prints
the numbers.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from models.rtl import SOURCES, TOP, source_paths
from tests.rtl import designs
from tests.rtl.coverage import COVERAGE_DIR_ENV, load
from tests.rtl.simulate import SIMULATORS, run_cocotb, verilator_bin

#: Parameter sets the design must lint clean with (the defaults first).
LINT_VARIANTS: list[dict[str, str]] = [
    {},
    {"DATA_W": "32"},
    {"DATA_W": "128", "MAX_BURST": "256"},
    {"DATA_W": "512", "BUF_BYTES": "4096", "ADDR_W": "48"},
    {"EVENT_IDX": "0", "ACCESS_PLATFORM": "0", "RING_PACKED": "0", "MAX_QUEUE_SIZE": "32768"},
    {"NUM_PAIRS": "2"},
    {"NUM_PAIRS": "5", "DATA_W": "32"},
]


@pytest.mark.parametrize("params", LINT_VARIANTS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "default")
def test_lint_clean(params: dict[str, str]) -> None:
    """verilator --lint-only -Wall reports nothing on the top and everything below it."""
    verilator = verilator_bin() / "verilator"
    cmd = [str(verilator), "--lint-only", "-Wall", "--top-module", TOP,
           *(f"-G{k}={v}" for k, v in params.items()), *map(str, source_paths())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("%")]
    assert proc.returncode == 0 and not warnings, "\n".join(warnings) or proc.stderr


def _report(design: str, results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = load(results)
    assert records, "the bench wrote no coverage records"
    with capsys.disabled():
        for rec in records:
            print(f"\n  coverage {design}/{rec['bench']}: {rec['covered']}/{rec['bins']} bins", end="")
    for rec in records:
        assert rec["covered"] == rec["bins"], f"{rec['bench']}: missing {rec['missing']}"


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_register_block(simulator: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    """virtio_pci_regs alone: feature windows, status and reset, queues, ISR, MSI-X, doorbells, queue reset."""
    sources = [p for p in source_paths() if p.name in ("virtio_pkg.sv", "virtio_pci_regs.sv")]
    run_cocotb(design="virtio_pci_regs", toplevel="virtio_pci_regs", sources=sources,
               parameters=designs.REGS_PARAMETERS, test_module="tests.rtl.bench_regs", results_dir=tmp_path,
               monkeypatch=monkeypatch, extra_env={COVERAGE_DIR_ENV: str(tmp_path)},
               build_args=["-Wno-UNUSEDPARAM"], simulator=simulator)  # package constants only the engine uses
    _report(f"virtio_pci_regs[{simulator}]", tmp_path, capsys)


#: (build directory, parameters, cocotb modules): the default top, and two pairs on a 32-bit data path
ENGINE_DESIGNS = [
    ("virtio_net_top", designs.TOP_PARAMETERS,
     ["tests.rtl.bench_engine", "tests.rtl.bench_packed", "tests.rtl.bench_dirty_log", "tests.rtl.bench_offload"]),
    ("virtio_net_top_mq", designs.TOP_MQ_PARAMETERS, ["tests.rtl.bench_engine", "tests.rtl.bench_mq"]),
]


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize(("design", "parameters", "modules"), ENGINE_DESIGNS, ids=[d[0] for d in ENGINE_DESIGNS])
def test_ring_engine(design: str, parameters: dict[str, object], modules: list[str], simulator: str,
                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """virtio_net_top with guest memory on its AXI4 master: TX, RX, suppression, wrap, hostile rings (and MQ), on
    split rings and (default build) packed rings, checksum offload and merged receive buffers."""
    assert SOURCES[-1] == f"{TOP}.sv"
    run_cocotb(design=design, toplevel=TOP, sources=source_paths(), parameters=parameters,
               test_module=modules, results_dir=tmp_path, monkeypatch=monkeypatch,
               extra_env={COVERAGE_DIR_ENV: str(tmp_path)}, seed=designs.TOP_SEED, simulator=simulator)
    _report(f"{design}[{simulator}]", tmp_path, capsys)


#: The dirty page log bench on a build with a seeded bug: used ring writes are not logged (models/rtl README).
LOG_BUG = "VNET_BUG_LOG_SKIP_USED"


def test_dirty_log_seeded_bug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dirty log bench catches a device that does not log its used ring writes: on split and on packed rings
    its bytemap check fails, naming the rings' page as written but not logged."""
    with pytest.raises(SystemExit):
        run_cocotb(design="virtio_net_top_bug_log_skip_used", toplevel=TOP, sources=source_paths(),
                   parameters=designs.TOP_PARAMETERS, test_module="tests.rtl.bench_dirty_log",
                   results_dir=tmp_path, monkeypatch=monkeypatch, seed=designs.TOP_SEED, defines={LOG_BUG: 1})
    failures = {case.get("name"): [f.get("message", "") for f in case.iter("failure")]
                for xml in tmp_path.glob("*.result.xml") for case in ET.parse(xml).getroot().iter("testcase")}
    assert set(failures) == {"dirty_log_tracks_device_writes", "dirty_log_packed_rings"}, failures
    for name, messages in failures.items():
        assert len(messages) == 1, f"{name} passed on the seeded bug"
        # the rings sit on the allocator's first page (0x1000) alone; transmit writes nothing else
        assert designs.LOG_BYTEMAP_DIFFERS in messages[0], messages[0]
        assert "written but not logged ['0x1000']" in messages[0], messages[0]
