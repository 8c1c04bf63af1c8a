"""Run the conformance suite on a target in a child process and return its per-id results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ROOT / "testbenches" / "conformance" / "checks"


def run_suite(target: str, out: Path, *extra: str, timeout: float = 600,
              modules: Sequence[Path] | None = None) -> dict[str, Any]:
    """``pytest <checks> --target T --report-dir out`` (only ``modules`` of the checks when given); returns the
    parsed results.json."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    paths = [str(m) for m in modules] if modules else [str(CHECKS)]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths, "--target", target,
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


def module_on_variants(module: Path, variants_module: str, variants: Iterable[str], out: Path,
                       timeout: float = 300) -> dict[str, dict[str, Any]]:
    """The check ``module`` on the stock model (key '') and on each seeded-bug class of ``variants_module`` (a
    ``model=`` spec), two child processes at a time (two cores); results under ``out``."""
    names = ["", *variants]
    for name in names:
        (out / (name or "stock")).mkdir(parents=True, exist_ok=True)

    def one(variant: str) -> tuple[str, dict[str, Any]]:
        spec = "sim:virtio-net" + (f",model={variants_module}:{variant}" if variant else "")
        return variant, run_suite(spec, out / (variant or "stock"), modules=[module], timeout=timeout)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, names))


def assert_fails_exactly(data: dict[str, Any], expected: Collection[str], what: str) -> None:
    """The run ``data`` on the variant ``what`` failed exactly ``expected`` and exited non-zero."""
    failed = ids_with(data, "failed")
    assert failed == set(expected), (f"{what}: failed {sorted(failed)}, expected {sorted(expected)}: "
                                     f"{ {i: data['ids'][i]['evidence'] for i in sorted(failed)} }")
    assert data["_exit"] != 0, f"{what}: the run exited 0 despite failed ids"


def ids_with(data: dict[str, Any], status: str) -> set[str]:
    return {i for i, r in data["ids"].items() if r["status"] == status}


def assert_bug_caught(data: dict[str, Any], expected: Collection[str], what: str) -> None:
    """The suite run ``data`` on a target seeded with the bug ``what`` failed every id of ``expected`` and exited
    non-zero."""
    failed = ids_with(data, "failed")
    missing = set(expected) - failed
    assert not missing, f"{what}: the suite did not fail {sorted(missing)}; it failed {sorted(failed)}"
    assert data["_exit"] != 0, f"{what}: the suite run exited 0 despite failed ids"


def judging_modules(data: dict[str, Any], ids: Collection[str]) -> list[Path]:
    """The check modules that judged ``ids`` in the run ``data`` (a whole-suite run on a sound target): running
    only those on a variant seeded with a bug against ``ids`` asks the same checks the same questions."""
    modules: set[Path] = set()
    for rid in ids:
        checks = data["ids"][rid]["checks"]
        if not checks:
            raise AssertionError(f"{rid}: no check judged it in the reference run")
        # node ids are relative to where pytest ran (``checks/...`` or ``testbenches/conformance/checks/...``)
        modules.update(CHECKS / Path(c.split("::", 1)[0]).name for c in checks)
    missing = [m for m in modules if not m.is_file()]
    if missing:
        raise AssertionError(f"check modules named in the reference run are gone: {missing}")
    return sorted(modules)


#: What :func:`seeded_bug_proof` gives a test module: its fixture and its two tests, to assign at module level.
Proof = tuple[Callable[..., Any], Callable[..., None], Callable[..., None]]


def seeded_bug_proof(module: Path, variants_module: str, expected: Mapping[str, Collection[str]],
                     judged: Collection[str] | None = None, timeout: float = 240) -> Proof:
    """The proof that a check module finds the seeded bugs of ``variants_module``: the fixture ``seeded_runs`` (the
    module on the stock model and on each variant, :func:`module_on_variants`), a test that the stock model fails
    nothing and passes ``judged`` exactly (every expected id at least, when None), and one test per variant that it
    fails exactly its ``expected`` ids (and, with ``judged``, passes the rest). A test module assigns them::

        seeded_runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids = seeded_bug_proof(...)
    """

    @pytest.fixture(scope="module", name="seeded_runs")
    def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
        return module_on_variants(module, variants_module, sorted(expected), tmp_path_factory.mktemp("runs"),
                                  timeout=timeout)

    def test_stock_model_passes(seeded_runs: dict[str, dict[str, Any]]) -> None:
        data = seeded_runs[""]
        assert not ids_with(data, "failed"), {i: data["ids"][i]["evidence"] for i in ids_with(data, "failed")}
        assert data["_exit"] == 0, data["_stdout"][-3000:]
        want = set(judged) if judged is not None else set().union(*map(set, expected.values()))
        passed = ids_with(data, "passed")
        assert (passed == want) if judged is not None else want <= passed, \
            {"not passed": {i: data["ids"][i] for i in sorted(want - passed)}, "passed beyond": sorted(passed - want)}

    @pytest.mark.parametrize("variant", sorted(expected))
    def test_seeded_bug_fails_exactly_its_ids(variant: str, seeded_runs: dict[str, dict[str, Any]]) -> None:
        data = seeded_runs[variant]
        assert_fails_exactly(data, expected[variant], variant)
        if judged is not None:
            assert ids_with(data, "passed") == set(judged) - set(expected[variant])

    return runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids
