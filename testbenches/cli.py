"""``vdpa-bench``: command line of the bench. It parses arguments and calls the module that does the work.

Subcommands:

* ``run``: the conformance checks against one target (:mod:`testbenches.conformance.run`).
* ``report``: several ``results.json`` side by side in one page (same module).
* ``serve``: the vhost-user backend, one fresh ``--device`` per connection (:mod:`backend.daemon`,
  also the console script ``vdpa-backend``).
* ``device``: a simulated device served over vfio-user (:mod:`sim.vfio_user.daemon`); other
  processes open it as ``vfio-user:PATH``.
* ``design``: a design description checked against its RTL (ports, widths, directions), optionally built
  (:mod:`sim.rtl.check_design`).
* ``campaign``: a matrix of targets, profiles and seeds on Dask, one merged report and a history
  (:mod:`testbenches.campaign.run`; needs the ``campaign`` extra).

Each subcommand's module is imported only when it runs, so ``serve`` works in an install without the
``bench`` extra; there ``run``, ``report`` and ``device`` exit 2 with one line naming the extra.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from backend.daemon import DEFAULT_DEVICE, SERVE_DESCRIPTION, add_serve_arguments, positive_float, run_serve

#: ``run`` and ``report``: where the real drivers' findings come from.
REAL_DRIVERS_HELP = ("findings files of 'serve --judge-driver' (the interop tests keep theirs in "
                     "reports/real-drivers/findings): the report ends with a section per real driver")
#: Distributions of the ``bench`` extra that the bench's own subcommands import (top-level module names).
BENCH_MODULES = ("pytest", "rich", "jinja2", "hypothesis", "scapy", "numpy")


def missing_bench_module() -> str | None:
    """The first module of the ``bench`` extra that is not installed (found without importing it)."""
    return next((name for name in BENCH_MODULES if importlib.util.find_spec(name) is None), None)


def _needs_bench(command: str) -> int | None:
    missing = missing_bench_module()
    if missing is None:
        return None
    print(f"vdpa-bench {command}: error: needs the bench extra ({missing} is not installed): "
          "pip install 'vdpa-bench[bench]'", file=sys.stderr, flush=True)
    return 2


def cmd_run(args: argparse.Namespace) -> int:
    if (code := _needs_bench("run")) is not None:
        return code
    from testbenches.conformance.run import cmd_run as run

    return run(args)


def cmd_report(args: argparse.Namespace) -> int:
    if (code := _needs_bench("report")) is not None:
        return code
    from testbenches.conformance.run import cmd_report as report

    return report(args)


def cmd_serve(args: argparse.Namespace) -> int:
    if args.judge_driver is None:
        return run_serve(args, "vdpa-bench serve")
    if (code := _needs_bench("serve --judge-driver")) is not None:
        return code
    from backend.lifecycle import run_until_signal
    from testbenches.monitor.live import serve_judged

    return run_until_signal("vdpa-bench serve", lambda stop_fd: serve_judged(args, stop_fd), verbose=args.verbose)


def cmd_device(args: argparse.Namespace) -> int:
    if (code := _needs_bench("device")) is not None:
        return code
    from sim.vfio_user.daemon import run_device

    return run_device(args, "vdpa-bench device")


def cmd_campaign(args: argparse.Namespace) -> int:
    if (code := _needs_bench("campaign")) is not None:
        return code
    if importlib.util.find_spec("distributed") is None:
        print("vdpa-bench campaign: error: needs the campaign extra (distributed is not installed): "
              "pip install 'vdpa-bench[campaign]'", file=sys.stderr, flush=True)
        return 2
    from testbenches.campaign.run import cmd_campaign as campaign

    return campaign(args)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the conformance checks against a target",
                       description="Open the target once (a bad or unreachable one: exit 2, no report), run the "
                                   "checks, print the per-area table and write report.html, junit.xml, "
                                   "requirements-junit.xml and results.json. Exit 0 only when no id failed.")
    p.add_argument("--target", default=DEFAULT_DEVICE, metavar="SPEC", help=f"default {DEFAULT_DEVICE}; 'sim' is short")
    p.add_argument("--out", metavar="DIR", help="report directory (default reports/<target-name>)")
    p.add_argument("-k", metavar="EXPR", help="only checks matching the pytest -k expression")
    p.add_argument("--sim", choices=("verilator", "icarus"), help="RTL simulator (rtl: target)")
    p.add_argument("--waves", action="store_true", help="dump waveforms (rtl: target)")
    p.add_argument("--quirk", metavar="NAME",
                   help="quirk entry whose recorded deviations describe the device; its failures are reported "
                        "as 'deviation' (default: the entry the device's PCI ids match)")
    p.add_argument("--check-budget", type=float, metavar="SECONDS",
                   help="on a slow target (an RTL on Icarus), a check expected to take longer is reported not "
                        "applicable with its estimate (default 600)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="plain pytest output instead of the progress bar")
    p.add_argument("--real-drivers", metavar="DIR", help=REAL_DRIVERS_HELP)
    p.add_argument("pytest_args", nargs="*", metavar="-- PYTEST_ARG", help="extra pytest arguments after --")
    p.set_defaults(func=cmd_run)


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("report", help="render results.json files side by side")
    p.add_argument("results", nargs="+", metavar="RESULTS_JSON")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--real-drivers", metavar="DIR", help=REAL_DRIVERS_HELP)
    p.set_defaults(func=cmd_report)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="vhost-user backend: a fresh device per frontend connection",
                       description=SERVE_DESCRIPTION)
    add_serve_arguments(p)
    p.add_argument("--judge-driver", metavar="PATH",
                   help="judge the frontend's driver on its rings and headers (split/packed ring and virtio-net "
                        "driver rows) and write each session's verdicts to PATH (JSON) when it ends; kicks are "
                        "then relayed and register windows not mapped, so the data path is slower")
    p.set_defaults(func=cmd_serve)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _add_device(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("device", help="serve a simulated device over vfio-user (target vfio-user:PATH)",
                       description="Run a simulated device in this process and serve it over vfio-user on a "
                                   "unix socket until SIGINT/SIGTERM. Prints 'listening on PATH' on stdout once "
                                   "ready; client events are logged on stderr. Clients come one after the other "
                                   "(the device is reset between them); a client connecting while the device is "
                                   "in use gets another instance, up to --max-devices.")
    p.add_argument("--model", default="virtio-net", metavar="SPEC",
                   help="device model and options as in sim: targets, e.g. virtio-net,queues=2,wire=loopback "
                        "(model=NAME: an installed model variant), or a target spec simulated in process "
                        "(rtl:virtio-net, a vendor's scheme)")
    p.add_argument("--vfio-user", required=True, metavar="PATH", help="unix socket to listen on")
    p.add_argument("--max-devices", type=_positive_int, default=8, metavar="N",
                   help="device instances served at the same time (default 8)")
    p.add_argument("--close-timeout", type=positive_float, default=5.0, metavar="SECONDS",
                   help="bound on waiting for each client thread at shutdown (default 5)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log lines")
    p.set_defaults(func=cmd_device)


def _add_campaign(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("campaign", help="run a matrix of targets, profiles and seeds on Dask (docs/campaigns.md)",
                       description="Run every cell of the campaign file (each the suite in its own process) on "
                                   "Dask distributed, merge the cells into one report (report.html, junit.xml, "
                                   "campaign.json) and add the campaign to the SQLite history. Exit 0 only when "
                                   "every cell ran and no id failed; 2 for a bad campaign file.")
    p.add_argument("file", metavar="FILE.toml", help="the campaign file")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="use a running Dask scheduler (tcp://host:8786)")
    where.add_argument("--cluster", choices=("slurm", "lsf", "sge", "pbs"),
                       help="submit workers to a farm with dask-jobqueue ([cluster.KIND] in the campaign file)")
    p.add_argument("--out", metavar="DIR", help="report directory (default: the file's out, or reports/campaigns/NAME)")
    p.add_argument("--history", metavar="SQLITE", help="history file (default: the file's history, or "
                                                        "reports/campaigns/history.sqlite)")
    p.add_argument("--cell", action="append", metavar="ID",
                   help="rerun only this cell, here and without Dask, recording nothing (repeatable)")
    p.set_defaults(func=cmd_campaign)


def cmd_design(args: argparse.Namespace) -> int:
    if (code := _needs_bench("design")) is not None:
        return code
    from sim.rtl.check_design import cmd_design as design

    return design(args)


def _add_design(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("design", help="check a design description against its RTL (no check runs)")
    p.add_argument("spec", metavar="SPEC", help="path/to/design.toml[,option=value...] or a shipped name "
                                                "(virtio-net, acme-vnet)")
    p.add_argument("--build", action="store_true", help="also generate the bridge and build the library")
    p.set_defaults(func=cmd_design)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdpa-bench", description="userspace vDPA backend and virtio-net test bench")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_report(sub)
    _add_serve(sub)
    _add_device(sub)
    _add_design(sub)
    _add_campaign(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
