"""Run the conformance suite on a target in a child process and return its per-id results.

Each run is a pytest session of its own (the plugin's one target per session) in a process forked from a forkserver
that imported the suite's heavy modules once (numpy, scapy, hypothesis, numba's compiled kernels, the model and the
checks' harness): the seeded-bug proofs start dozens of short runs, and a fresh interpreter spent more on imports
than most of them spend judging.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.context import ForkServerContext
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ROOT / "testbenches" / "conformance" / "checks"
#: Imported once by the forkserver, so every run forked from it starts with them.
PRELOAD = ["numpy", "scapy.all", "hypothesis", "pytest", "models.targets", "backend.targets",
           "testbenches.conformance.plugin", "testbenches.conformance.harness"]


def _forkserver() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _pytest_session(args: list[str], log: str) -> None:
    """A forked child: ``pytest args`` from the repository root, its output into ``log``, exit with its code."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(ROOT)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    code = pytest.main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def run_suite(target: str, out: Path, *extra: str, timeout: float = 600,
              modules: Sequence[Path] | None = None) -> dict[str, Any]:
    """``pytest <checks> --target T --report-dir out`` (only ``modules`` of the checks when given); returns the
    parsed results.json."""
    paths = [str(m) for m in modules] if modules else [str(CHECKS)]
    out.mkdir(parents=True, exist_ok=True)
    log = out / "pytest.log"
    child = _forkserver().Process(target=_pytest_session, args=(
        ["-q", "-p", "no:cacheprovider", *paths, "--target", target, "--report-dir", str(out), *extra], str(log)))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        raise AssertionError(f"suite on {target} did not finish within {timeout:g} s:\n{_tail(log)}")
    results = out / "results.json"
    if not results.exists():
        raise AssertionError(f"suite produced no results (exit {child.exitcode}):\n{_tail(log)}")
    data: dict[str, Any] = json.loads(results.read_text())
    data["_exit"] = child.exitcode
    data["_stdout"] = log.read_text(errors="replace")
    return data


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-6000:] if log.exists() else "(no output)"


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


def assert_one_override_each(variants_module: ModuleType, expected: Collection[str], part: str | None = None) -> None:
    """Every seeded-bug variant (a VirtioNetDevice subclass) of ``variants_module`` is filed in ``expected`` and
    seeds one bug: it overrides exactly one method, of the device or (``part``, a class attribute such as
    ``coalescer_class``) of that part, and nothing else."""
    from models.virtio_net.device import VirtioNetDevice  # the model, only for the proofs that need it

    variants = {name: cls for name, cls in vars(variants_module).items()
                if isinstance(cls, type) and issubclass(cls, VirtioNetDevice) and cls is not VirtioNetDevice}
    assert set(variants) == set(expected)
    plumbing = {"__module__", "__doc__", "__qualname__", "__firstlineno__", "__static_attributes__"}
    for name, cls in variants.items():
        owner: type = cls
        if part is not None:
            assert set(vars(cls)) - plumbing == {part}, name
            owner = getattr(cls, part)
        own = [k for k, v in vars(owner).items() if callable(v) and not k.startswith("__")]
        assert len(own) == 1, f"{name}: overrides {own}: one seeded bug is one override"
