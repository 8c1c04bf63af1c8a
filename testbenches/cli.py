"""``vdpa-bench``: command line of the bench.

Subcommands:

* ``run``: run the conformance checks against one target (pytest in
  process) with a progress bar, print the per-area table and write
  ``report.html``, ``junit.xml``, ``requirements-junit.xml`` and
  ``results.json``. Exit status 0 only when no requirement id failed.
* ``report``: render several ``results.json`` side by side in one page.

``serve`` and ``device`` are added by :func:`build_parser` callers later
(each subcommand is one ``_add_*`` function that sets ``func``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from rich.console import Console

from testbenches.conformance.plugin import (
    DEFAULT_TARGET,
    ENTRY_POINT,
    ProgressPlugin,
    RichProgress,
    normalize_target,
    target_name,
)
from testbenches.conformance.report import Results, render_html, render_terminal

#: The checks package, located next to this module (works from a checkout and when installed).
CHECKS_DIR = Path(__file__).resolve().parent / "conformance" / "checks"


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
    if args.progress:
        argv += ["-p", "no:terminal"]
    else:
        argv.append("-q")
    return argv + list(args.pytest_args)


def cmd_run(args: argparse.Namespace) -> int:
    console = Console()
    args.target = normalize_target(args.target)
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
    console.print(f"reports: {out}/report.html, {out}/junit.xml, {results_path}", highlight=False)
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        return int(code)
    return 1 if results.failed() or code == pytest.ExitCode.TESTS_FAILED else 0


def cmd_report(args: argparse.Namespace) -> int:
    results = [Results.load(Path(p)) for p in args.results]
    out = Path(args.out)
    path = render_html(results, out / "report.html")
    console = Console()
    for res in results:
        render_terminal(res, console, max_evidence=1)
    console.print(f"report: {path}", highlight=False)
    return 0


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the conformance checks against a target")
    p.add_argument("--target", default=DEFAULT_TARGET, metavar="SPEC", help=f"default {DEFAULT_TARGET}; 'sim' is short")
    p.add_argument("--out", metavar="DIR", help="report directory (default reports/<target-name>)")
    p.add_argument("-k", metavar="EXPR", help="only checks matching the pytest -k expression")
    p.add_argument("--sim", choices=("verilator", "icarus"), help="RTL simulator (rtl: target)")
    p.add_argument("--waves", action="store_true", help="dump waveforms (rtl: target)")
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="plain pytest output instead of the progress bar",
    )
    p.add_argument("pytest_args", nargs="*", metavar="-- PYTEST_ARG", help="extra pytest arguments after --")
    p.set_defaults(func=cmd_run)


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="render results.json files side by side")
    p.add_argument("results", nargs="+", metavar="RESULTS_JSON")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdpa-bench", description="userspace vDPA backend and virtio-net test bench")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_report(sub)
    # serve (vhost-user backend) and device (vfio-user device server) are added here by their owners.
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
