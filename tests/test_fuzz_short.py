"""A short coverage-guided run of every fuzz target (tests/fuzz), the way ``make fuzz`` runs its long ones.

Each target runs in its own process under atheris/libFuzzer from its committed seed corpus for a few
thousand inputs or FUZZ_SECONDS, whichever comes first (working corpus and artifacts in a temporary
directory, so the committed corpus is never changed). A crash, a hang beyond -timeout, memory beyond
-rss_limit_mb or a run that executed nothing beyond its seeds fails the test; the log says why.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.fuzz.targets import CORPUS, NUMBA, TARGETS, numba_modules
from tests.rtl_build import require_rtl_build

ROOT = Path(__file__).resolve().parent.parent
RUNS = 3000
FUZZ_SECONDS = 15
#: The RTL simulates clock cycles for every input: fewer of them.
RTL_RUNS = 1000

pytestmark = pytest.mark.timeout(300)


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vdpa_fuzz_tool", ROOT / "tools" / "fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_tool_and_registry_name_the_same_targets() -> None:
    assert set(_tool().TARGETS) == set(TARGETS)
    for name in TARGETS:
        assert any((CORPUS / name).iterdir()), f"no seeds committed for {name}"


def test_numba_modules_are_found_by_their_source() -> None:
    found = numba_modules()
    assert set(NUMBA) <= set(found), f"compiled modules not found by numba_modules(): {set(NUMBA) - set(found)}"
    assert "models.virtio_net.split_engine" not in found


def test_parse_reads_libfuzzer_output() -> None:
    tool = _tool()
    text = ("#2\tINITED cov: 10 ft: 12 corp: 2/30b exec/s: 0 rss: 60Mb\n"
            "#512\tpulse  cov: 40 ft: 90 corp: 9/300b lim: 40 exec/s: 256 rss: 80Mb\n"
            "==77== ERROR: libFuzzer: timeout after 20 seconds\n"
            "artifact_prefix='out/'; Test unit written to out/timeout-abc\n"
            "stat::number_of_executed_units: 600\nstat::peak_rss_mb: 81\n")
    res = tool.parse(text, tool.Result("x"))
    assert (res.inputs, res.cov, res.ft, res.corpus, res.hangs, res.crashes, res.libfuzzer_rss_mb) == \
        (600, 40, 90, 9, 1, 0, 81)
    assert res.artifacts == ["out/timeout-abc"] and not res.ok
    crash = tool.parse("=== Uncaught Python exception: ===\nTest unit written to ./crash-1f\n", tool.Result("y"))
    assert crash.crashes == 1 and not crash.ok


@pytest.mark.parametrize("name", list(TARGETS))
def test_short_fuzz_run(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris is in the dev extra: .venv/bin/pip install -e '.[bench,dev]'")
    if name == "rtl-ring":
        require_rtl_build("virtio-net")
    res = _tool().run_target(name, runs=RTL_RUNS if name == "rtl-ring" else RUNS, max_total_time=FUZZ_SECONDS,
                             rss_limit_mb=1024, timeout=60, max_len=8192, out=tmp_path, work=tmp_path / "corpus")
    log = Path(res.log).read_text(errors="replace")
    assert res.ok, f"{name}: {res}\n{log[-4000:]}"
    seeds = len(list((CORPUS / name).iterdir()))
    assert res.inputs > seeds, f"{name}: only {res.inputs} inputs ({seeds} seeds)\n{log[-2000:]}"
    assert res.cov > 0, f"{name}: no coverage reported: is the code instrumented?\n{log[-2000:]}"
