"""``vdpa-bench run`` and ``vdpa-bench report``: the conformance suite through pytest in process.

``run`` opens the target once before any check (:func:`probe_target`): a spec that cannot be parsed,
a scheme nobody provides, a broken provider or a device that cannot be reached is one line and exit
status 2, and no report is written. Then the checks run with a progress bar, the per-area table is
printed and ``report.html``, ``junit.xml``, ``requirements-junit.xml`` and ``results.json`` are
written. Exit status 0 only when no requirement id failed.

Both take ``--real-drivers DIR``: the findings files ``serve --judge-driver`` wrote during interop runs
(the interop tests keep theirs in ``reports/real-drivers/findings``); the report then ends with a
section per real driver, and ``real-drivers.json``/``.html`` are written next to it. A directory
without a findings file is an error before anything runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from rich.console import Console

from backend.device import VdpaError
from backend.pci.device import PciError
from backend.providers import ProviderError
from backend.targets import TargetRegistry, default_registry
from testbenches.conformance.deviations import KnownDeviations, UnknownQuirkError
from testbenches.conformance.plugin import (
    ENTRY_POINT,
    ProgressPlugin,
    RichProgress,
    TargetOptions,
    normalize_target,
    target_name,
)
from testbenches.conformance.real_drivers import RealDriverRun, driver_sections, load_runs, write_real_drivers_report
from testbenches.conformance.report import Results, render_html, render_terminal

#: The checks package, located next to this module (works from a checkout and when installed).
CHECKS_DIR = Path(__file__).resolve().parent / "checks"
#: What opening a target raises for a bad spec or an unreachable device.
OPEN_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, PciError, VdpaError, ProviderError)


class _FailureLog:
    """Keeps collection errors and failed test reports to print after the progress bar."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed_calls: dict[str, str] = {}

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.lines.append(f"collection error in {report.nodeid or '.'}:\n{report.longreprtext}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed and report.when != "call":
            self.lines.append(f"{report.when} error in {report.nodeid}:\n{report.longreprtext}")
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            message = crash.message if crash is not None else report.longreprtext
            self.failed_calls[report.nodeid] = message.strip().splitlines()[0] if message.strip() else "failed"

    def unrelated_failures(self, results: Results) -> dict[str, str]:
        """Failed tests that carry no requirement id (they show up in no per-id evidence)."""
        covered = {check for r in results.ids.values() for check in r.checks}
        return {n: m for n, m in self.failed_calls.items() if n not in covered}


def _plugin_args() -> list[str]:
    """``-p`` for the conformance plugin unless the installed entry point already loads it."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return ["-p", "testbenches.conformance.plugin"]
    installed = any(ep.name == ENTRY_POINT for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "testbenches.conformance.plugin"]


def pytest_args(args: argparse.Namespace, out: Path) -> list[str]:
    argv = [
        str(CHECKS_DIR),
        *_plugin_args(),
        "--rootdir",
        str(CHECKS_DIR.parent),
        "--target",
        args.target,
        "--report-dir",
        str(out),
        f"--junitxml={out / 'junit.xml'}",
        "-o",
        "junit_family=xunit2",
    ]
    if args.k:
        argv += ["-k", args.k]
    if args.sim:
        argv += ["--sim", args.sim]
    if args.waves:
        argv.append("--waves")
    if getattr(args, "quirk", None):
        argv += ["--quirk", args.quirk]
    if getattr(args, "check_budget", None) is not None:
        argv += ["--check-budget", str(args.check_budget)]
    if args.progress:
        argv += ["-p", "no:terminal"]
    else:
        argv.append("-q")
    return argv + list(args.pytest_args)


def probe_target(spec: str, sim: str | None = None, registry: TargetRegistry | None = None) -> str | None:
    """Open ``spec`` once and close it: None when that worked, else one line saying what is wrong."""
    try:
        registry = registry if registry is not None else default_registry()
        registry.open(TargetOptions(spec, sim=sim).device_spec(spec)).close()
    except OPEN_ERRORS as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text if text.startswith((spec, repr(spec))) else f"{spec}: {text}"
    return None


def _real_driver_runs(command: str, directory: str | None) -> list[RealDriverRun] | None:
    """The findings files of ``--real-drivers`` ([] without the option); None (after one error line) when the
    directory holds none."""
    if directory is None:
        return []
    runs = load_runs(Path(directory)) if Path(directory).is_dir() else []
    if not runs:
        print(f"vdpa-bench {command}: error: --real-drivers {directory}: no findings file of "
              "'vdpa-bench serve --judge-driver' in it", file=sys.stderr, flush=True)
        return None
    return runs


def cmd_run(args: argparse.Namespace) -> int:
    args.target = normalize_target(args.target)
    real_drivers = _real_driver_runs("run", args.real_drivers)
    if real_drivers is None:
        return 2
    if args.quirk:
        try:
            KnownDeviations.named(args.quirk)
        except UnknownQuirkError as exc:
            print(f"vdpa-bench run: error: {exc}", file=sys.stderr, flush=True)
            return 2
    problem = probe_target(args.target, args.sim)
    if problem is not None:
        print(f"vdpa-bench run: error: --target {problem}", file=sys.stderr, flush=True)
        return 2
    console = Console()
    out = Path(args.out) if args.out else Path("reports") / target_name(args.target)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results_path.unlink(missing_ok=True)
    failures = _FailureLog()
    plugins: list[object] = [failures]
    if args.progress:
        plugins.append(ProgressPlugin(RichProgress(console)))
    code = pytest.main(pytest_args(args, out), plugins=plugins)
    if args.progress:
        for line in failures.lines:
            console.print(line, markup=False, highlight=False)
    if not results_path.exists():
        console.print(f"[red]no results written (pytest exit status {int(code)})[/]")
        return int(code) or 2
    results = Results.load(results_path)
    if args.progress:
        render_terminal(results, console)
        for nodeid, message in failures.unrelated_failures(results).items():
            console.print(f"failed (no requirement id): {nodeid}: {message}", markup=False, highlight=False)
    if real_drivers:
        write_real_drivers_report(Path(args.real_drivers), out, console)
        render_html([results], out / "report.html", driver_sections=driver_sections(real_drivers))
    console.print(f"reports: {out}/report.html, {out}/junit.xml, {results_path}", highlight=False)
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return int(code)
    return 1 if results.failed() or code == pytest.ExitCode.TESTS_FAILED else 0


def cmd_report(args: argparse.Namespace) -> int:
    real_drivers = _real_driver_runs("report", args.real_drivers)
    if real_drivers is None:
        return 2
    results = [Results.load(Path(p)) for p in args.results]
    out = Path(args.out)
    path = render_html(results, out / "report.html", driver_sections=driver_sections(real_drivers))
    console = Console()
    for res in results:
        render_terminal(res, console, max_evidence=1)
    if real_drivers:
        write_real_drivers_report(Path(args.real_drivers), out, console)
    console.print(f"report: {path}", highlight=False)
    return 0
