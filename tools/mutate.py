"""Mutation testing of the conformance suite (``make mutate``).

The suite is only worth what it catches: mutmut changes the device model
(``models/virtio_net``), the PCI endpoint (``sim/pci``) and the backend's
drivers (``backend/drivers``) one small edit at a time, and the conformance
checks run against ``--target sim`` built from the mutated code. A mutant is
*killed* when a check fails, *survived* when every check still passes.

How a run fits in an hour on a small machine:

* per-function test selection: mutmut runs the suite once with trampolines
  that record which checks call which function, then runs only those checks
  (with ``-x``) for a mutant of that function, each in a forked child;
* sampling: ``--sample N`` draws N mutants, spread over the three packages in
  proportion to their size, with a fixed ``--seed`` so a run can be repeated;
* a wall-clock ``--budget`` (minutes): what is not reached is reported
  *not checked*, never counted as killed.

Everything happens in a scratch copy (``reports/mutation/work``): mutmut
writes its mutants there, the working tree is never touched.

Survivors that no test can kill, because the mutant behaves exactly like the
original, are listed with the reason in ``docs/mutation-equivalents.toml``::

    [[equivalent]]
    mutant = "models.virtio_net.split_engine.xǁRingHooksǁmax_chain_len__mutmut_1"
    line = "return queue_size + 1"     # the mutated line, so a stale entry is noticed
    reason = "why no device behaviour can tell it from the original"

The report (``reports/mutation/mutation.json`` and ``mutation.md``) counts
killed, survived, equivalent, timeout, no tests (no check calls the function)
and not checked per package, and shows the diff of every survivor.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fnmatch
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The packages whose mutants the suite has to kill.
PACKAGES: tuple[str, ...] = ("models/virtio_net", "sim/pci", "backend/drivers")
#: Files of those packages mutmut must leave alone: numba compiles their functions, and a mutmut trampoline
#: (``**kwargs`` forwarding, the DICT_MERGE opcode) is not something numba can compile. The kernels judge
#: nothing; tests/test_model_fast_tx.py and tests/test_packed_fast_tx.py hold them to the checked paths they
#: shortcut.
NOT_MUTATED: tuple[str, ...] = ("models/virtio_net/fast_tx.py", "models/virtio_net/packed_fast.py")
#: Every package copied into mutmut's tree, so that nothing is imported from the original.
CODE: tuple[str, ...] = ("backend", "sim", "models", "testbenches")
CHECKS = "testbenches/conformance/checks"
EQUIVALENTS = ROOT / "docs" / "mutation-equivalents.toml"
DEFAULT_OUT = ROOT / "reports" / "mutation"
#: Mutant names mutmut's first pass is asked for: none match, it only generates mutants and the per-test stats.
NO_MUTANT = "__generate_only__*"
NO_MATCH = "Filtered for specific mutants, but nothing matches"

# mutmut's exit codes (mutmut.stats.status_by_exit_code) folded into the statuses this report counts.
_KILLED = {1, 3}
_SURVIVED = {0}
_TIMEOUT = {-24, 24, 36, 152, 255}
_NO_TESTS = {5, 33}
_NOT_CHECKED: set[int | None] = {None, 2, 34}


class MutateError(Exception):
    """A usage or set-up problem, reported as one line."""


@dataclass(frozen=True)
class Equivalent:
    """A surviving mutant that behaves like the original, with the reason."""

    mutant: str
    line: str
    reason: str


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, Equivalent]:
    """Entries of the equivalents file by mutant name; every entry needs ``mutant``, ``line`` and ``reason``."""
    if not path.exists():
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    unknown = set(data) - {"equivalent"}
    if unknown:
        raise MutateError(f"{path}: unknown table(s) {sorted(unknown)}, expected only [[equivalent]]")
    out: dict[str, Equivalent] = {}
    for i, entry in enumerate(data.get("equivalent", [])):
        missing = [k for k in ("mutant", "line", "reason") if not str(entry.get(k, "")).strip()]
        if missing:
            raise MutateError(f"{path}: equivalent #{i + 1} lacks {', '.join(missing)}")
        name = str(entry["mutant"])
        if name in out:
            raise MutateError(f"{path}: {name} is listed twice")
        out[name] = Equivalent(name, str(entry["line"]).strip(), str(entry["reason"]).strip())
    return out


def status_of(exit_code: int | None) -> str:
    """Report status of one mutmut exit code."""
    if exit_code in _KILLED:
        return "killed"
    if exit_code in _SURVIVED:
        return "survived"
    if exit_code in _TIMEOUT:
        return "timeout"
    if exit_code in _NO_TESTS:
        return "no tests"
    if exit_code in _NOT_CHECKED:
        return "not checked"
    return "suspicious"  # crashed worker, segfault: neither a kill nor a pass


def package_of(source: str) -> str:
    for package in PACKAGES:
        if source.startswith(package + "/"):
            return package
    raise MutateError(f"mutant in {source}, outside {', '.join(PACKAGES)}")


# -- the scratch tree -------------------------------------------------------------


def mutmut_config() -> str:
    """mutmut's ``[mutmut]`` section: all code copied, only the three packages mutated, the suite on sim."""
    def lines(values: Sequence[str]) -> str:
        return "".join(f"\n    {v}" for v in values)

    return (
        "[mutmut]\n"
        f"source_paths ={lines(CODE)}\n"
        f"only_mutate ={lines([p + '/*' for p in PACKAGES])}\n"
        f"do_not_mutate ={lines(NOT_MUTATED)}\n"
        f"pytest_add_cli_args_test_selection ={lines([CHECKS])}\n"
        f"pytest_add_cli_args ={lines(['--target', 'sim', '-p', 'no:cacheprovider', '-p', 'no:randomly'])}\n"
        # the scratch copy is no git checkout: decide from file contents only
        "use_git_change_detection = false\n"
    )


def _tree_files() -> list[str]:
    """The code files of the working tree as git sees them (tracked or new, not ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *CODE],
                         cwd=ROOT, capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def prepare_tree(work: Path, rev: str | None) -> Path:
    """A fresh copy of the code (the working tree, or ``rev``) with the mutmut config, under ``work``."""
    tree = work / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    if rev is not None:
        archive = subprocess.run(["git", "archive", "--format=tar", rev, "pyproject.toml", *CODE], cwd=ROOT,
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            raise MutateError(f"git archive {rev}: {archive.stderr.decode().strip()}")
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    else:
        for name in [*_tree_files(), "pyproject.toml"]:
            target = tree / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)
    (tree / "setup.cfg").write_text(mutmut_config(), encoding="utf-8")
    return tree


def run_mutmut(tree: Path, args: Sequence[str], log: Path, deadline: float | None = None,
               expected_error: str | None = None) -> bool:
    """``mutmut ARGS`` in ``tree``, output to ``log``; False when stopped at ``deadline`` (results so far kept).

    A non-zero exit is an error unless the log ends with ``expected_error``."""
    mutmut = Path(sys.executable).with_name("mutmut")
    if not mutmut.exists():
        raise MutateError(f"{mutmut} not found: install mutmut into this venv (pip install 'mutmut==3.8.1')")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CI")}
    with log.open("ab") as out:
        out.write(f"\n$ mutmut {' '.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen([str(mutmut), *args], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # mutmut stops its workers and keeps the results it has
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return False
    tail = log.read_text(errors="replace")[-3000:]
    if code != 0 and not (expected_error is not None and expected_error in tail):
        raise MutateError(f"mutmut {args[0]} exited with {code}; see {log}\n{tail}")
    return True


def read_results(tree: Path) -> dict[str, tuple[str, int | None]]:
    """Every generated mutant: name -> (source file, mutmut exit code or None when not run)."""
    out: dict[str, tuple[str, int | None]] = {}
    mutants = tree / "mutants"
    for meta in sorted(mutants.rglob("*.py.meta")):
        source = meta.relative_to(mutants).as_posix().removesuffix(".meta")
        data = json.loads(meta.read_text(encoding="utf-8"))
        for name, code in data["exit_code_by_key"].items():
            out[name] = (source, code)
    return out


def draw_sample(mutants: dict[str, tuple[str, int | None]], size: int | None, seed: int) -> list[str]:
    """``size`` mutant names, each package in proportion to its share of all mutants; all when ``size`` is None."""
    names = sorted(mutants)
    if size is None or size >= len(names):
        return names
    by_package: dict[str, list[str]] = {}
    for name in names:
        by_package.setdefault(package_of(mutants[name][0]), []).append(name)
    # largest-remainder shares, so the sample has exactly ``size`` names and each package its proportion
    exact = {p: size * len(m) / len(names) for p, m in by_package.items()}
    share = {p: int(v) for p, v in exact.items()}
    for p in sorted(exact, key=lambda p: exact[p] - share[p], reverse=True)[: size - sum(share.values())]:
        share[p] += 1
    rng = random.Random(seed)
    return sorted(n for p, members in sorted(by_package.items()) for n in rng.sample(members, share[p]))


def mutant_diff(tree: Path, name: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).with_name("mutmut")), "show", name], cwd=tree,
                          capture_output=True, text=True, timeout=120, check=False)
    return "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("# "))


def mutated_lines(diff: str) -> list[str]:
    return [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]


# -- the report -------------------------------------------------------------------

STATUSES = ("killed", "survived", "equivalent", "timeout", "no tests", "suspicious", "not checked")


@dataclass
class MutantResult:
    name: str
    package: str
    source: str
    status: str
    diff: str = ""
    reason: str = ""


@dataclass
class Report:
    started: str
    minutes: float
    sample: int
    seed: int
    generated: int
    complete: bool
    results: list[MutantResult] = field(default_factory=list)
    #: Problems with the equivalents file: entries whose mutant is gone, changed or killed.
    equivalent_problems: list[str] = field(default_factory=list)

    def counts(self, package: str | None = None) -> Counter[str]:
        return Counter(r.status for r in self.results if package is None or r.package == package)

    @staticmethod
    def score(c: Counter[str]) -> float | None:
        """Killed (timeouts count as killed) over the mutants that were run and are not equivalent."""
        judged = c["killed"] + c["timeout"] + c["survived"] + c["no tests"] + c["suspicious"]
        return None if judged == 0 else (c["killed"] + c["timeout"]) / judged

    def mutants_per_minute(self) -> float:
        ran = sum(1 for r in self.results if r.status != "not checked")
        return ran / self.minutes if self.minutes > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        per = {p: {**{s: self.counts(p)[s] for s in STATUSES}, "score": self.score(self.counts(p))}
               for p in PACKAGES}
        total = {**{s: self.counts()[s] for s in STATUSES}, "score": self.score(self.counts())}
        return {
            "started": self.started, "minutes": round(self.minutes, 2), "sample": self.sample, "seed": self.seed,
            "generated": self.generated, "complete": self.complete,
            "mutants_per_minute": round(self.mutants_per_minute(), 2),
            "packages": per, "total": total, "equivalent_problems": self.equivalent_problems,
            "mutants": [asdict(r) for r in self.results],
        }


def build_report(tree: Path, names: Sequence[str], equivalents: dict[str, Equivalent], **meta: Any) -> Report:
    mutants = read_results(tree)
    report = Report(generated=len(mutants), **meta)
    for name in names:
        source, code = mutants[name]
        result = MutantResult(name, package_of(source), source, status_of(code))
        listed = equivalents.get(name)
        if result.status in ("survived", "suspicious") or listed is not None:
            result.diff = mutant_diff(tree, name)
        if listed is not None:
            if result.status == "survived" and listed.line in mutated_lines(result.diff):
                result.status, result.reason = "equivalent", listed.reason
            elif result.status == "survived":
                report.equivalent_problems.append(f"{name}: listed line {listed.line!r} is not what it mutates now")
            elif result.status != "not checked":
                report.equivalent_problems.append(f"{name}: listed as equivalent but {result.status}")
        report.results.append(result)
    report.equivalent_problems += [f"{n}: listed as equivalent but no such mutant any more"
                                   for n in sorted(equivalents) if n not in mutants]
    return report


def render_markdown(report: Report) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f} %"

    head = ["package", *STATUSES, "score"]
    rows = [[p, *(str(report.counts(p)[s]) for s in STATUSES), pct(report.score(report.counts(p)))]
            for p in PACKAGES]
    rows.append(["all", *(str(report.counts()[s]) for s in STATUSES), pct(report.score(report.counts()))])
    lines = [
        "# Mutation testing of the conformance suite (target sim)",
        "",
        f"Started {report.started}, {report.minutes:.1f} min, {report.sample} of {report.generated} mutants "
        f"(seed {report.seed}), {report.mutants_per_minute():.1f} mutants/min"
        + ("" if report.complete else ", stopped at the time budget"),
        "",
        "score = killed (timeouts included) / (run and not equivalent)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
    if report.equivalent_problems:
        lines += ["", "## Equivalents file problems", "", *(f"- {p}" for p in report.equivalent_problems)]
    for status in ("survived", "no tests", "suspicious", "equivalent"):
        members = [r for r in report.results if r.status == status]
        if not members:
            continue
        lines += ["", f"## {status} ({len(members)})", ""]
        for r in members:
            lines.append(f"### `{r.name}`" + (f": {r.reason}" if r.reason else ""))
            if r.diff:
                lines += ["", "```diff", r.diff.strip(), "```", ""]
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    as_json, as_md = out / "mutation.json", out / "mutation.md"
    as_json.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    as_md.write_text(render_markdown(report), encoding="utf-8")
    return as_json, as_md


# -- command line -------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/mutate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=360, help="mutants to run (0: all of them; default 360)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sample (default 1)")
    parser.add_argument("--budget", type=float, default=55.0, help="minutes for running mutants (default 55)")
    parser.add_argument("--max-children", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--rev", default=None, help="mutate this git revision instead of the working tree")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report directory (default {DEFAULT_OUT})")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the scratch tree of the last run (its mutants, stats and results) if there is one")
    parser.add_argument("--equivalents", type=Path, default=EQUIVALENTS, help="equivalent mutants file")
    parser.add_argument("--only", nargs="+", metavar="PATTERN", default=None,
                        help="run the mutants whose names match these shell patterns instead of a sample")
    parser.add_argument("--paths", nargs="+", metavar="PATTERN", default=None,
                        help="draw the sample only from the mutants of the files matching these shell patterns "
                             "(e.g. 'models/virtio_net/split_engine.py' 'sim/pci/*'), each package in proportion")
    parser.add_argument("--check-equivalents", action="store_true",
                        help="only check the equivalents file against the code (--rev, default HEAD): every entry "
                             "names a mutant mutmut still makes, with the line it changes; exit 1 if not")
    parser.add_argument("--replay", type=Path, metavar="REPORT", default=None,
                        help="run the mutants that survived in REPORT (a mutation.json) instead of a sample, "
                             "to see whether new checks kill them; a name gone since is an error")
    return parser


def in_paths(mutants: dict[str, tuple[str, int | None]], patterns: Sequence[str]) -> dict[str, tuple[str, int | None]]:
    """The mutants whose source file matches any of ``patterns`` (fnmatch on the path, ``sim/pci/*``); an error
    when a pattern matches no file that has mutants."""
    sources = {source for source, _code in mutants.values()}
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(s, pattern) for s in sources):
            raise MutateError(f"--paths {pattern!r} matches no mutated file")
    return {n: v for n, v in mutants.items() if any(fnmatch.fnmatchcase(v[0], p) for p in patterns)}


def survivors_of(report: Path) -> list[str]:
    """The mutants a report left *survived* or *suspicious* (to see whether new checks kill them now)."""
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
        return sorted(m["name"] for m in data["mutants"] if m["status"] in ("survived", "suspicious"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MutateError(f"--replay {report}: not a mutation report ({exc})") from exc


def mutants_of_source(tree: Path, source: str, code: str) -> dict[str, list[str]]:
    """Every mutant mutmut makes of ``code`` (the file ``source`` of the packages), by full name, with the lines it
    adds (as ``mutmut show`` would show them); mutmut reads its configuration from ``tree``, nothing is run."""
    from mutmut.mutation.file_mutation import mutate_file_contents  # the pinned mutmut of the dev extra

    with contextlib.chdir(tree):
        mutated = mutate_file_contents(source, code)
    lines = mutated.code.splitlines()
    spans = mutated.line_span_by_function_name

    def body(name: str) -> list[str]:
        span = spans[name]
        return lines[span.start - 1:span.end]

    module = source.removesuffix(".py").replace("/", ".")
    out: dict[str, list[str]] = {}
    for name in mutated.mutant_names:
        orig = name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"
        mutant = [line.replace(name, orig, 1) for line in body(name)]
        diff = difflib.unified_diff(body(orig), mutant, lineterm="", n=0)
        out[f"{module}.{name}"] = mutated_lines("\n".join(diff))
    return out


def stale_equivalents(tree: Path, rev: str, equivalents: dict[str, Equivalent]) -> list[str]:
    """Entries of the equivalents file that no longer name a mutant of ``rev``, or whose listed line is not what
    that mutant changes now: a check of the file against the code, without running a mutant."""
    generated: dict[str, list[str]] = {}
    for name in _rev_files(rev):
        if name.endswith(".py") and name not in NOT_MUTATED and any(name.startswith(p + "/") for p in PACKAGES):
            code = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout
            generated.update(mutants_of_source(tree, name, code))
    problems = []
    for name, entry in sorted(equivalents.items()):
        if name not in generated:
            problems.append(f"{name}: listed as equivalent but no such mutant in {rev}")
        elif entry.line not in generated[name]:
            problems.append(f"{name}: listed line {entry.line!r} is not what it mutates in {rev} "
                            f"({generated[name]})")
    return problems


def _rev_files(rev: str) -> list[str]:
    out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", *PACKAGES], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise MutateError(f"git ls-tree {rev}: {out.stderr.strip()}")
    return out.stdout.split()


def select_only(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The mutant names matching any of ``patterns`` (fnmatch, case-sensitive); an error when one matches none."""
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise MutateError(f"--only {pattern!r} matches no mutant")
        chosen.update(hits)
    return sorted(chosen)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sample < 0 or args.budget <= 0 or args.max_children < 1:
        print("mutate: --sample >= 0, --budget > 0 and --max-children >= 1", file=sys.stderr)
        return 2
    if sum(x is not None for x in (args.only, args.replay, args.paths)) > 1:
        print("mutate: --only, --replay and --paths choose the mutants differently: give one", file=sys.stderr)
        return 2
    try:
        equivalents = load_equivalents(args.equivalents)
        if args.check_equivalents:
            scratch = args.out / "check"
            scratch.mkdir(parents=True, exist_ok=True)
            (scratch / "setup.cfg").write_text(mutmut_config(), encoding="utf-8")
            for package in CODE:  # mutmut's configuration wants its source paths to exist
                (scratch / package).mkdir(exist_ok=True)
            problems = stale_equivalents(scratch, args.rev or "HEAD", equivalents)
            print("\n".join(problems) or f"mutate: all {len(equivalents)} equivalents name a mutant of "
                                          f"{args.rev or 'HEAD'} with its line")
            return 1 if problems else 0
        work = args.out / "work"
        log = args.out / "mutmut.log"
        args.out.mkdir(parents=True, exist_ok=True)
        log.write_text("", encoding="utf-8")
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        tree = work / "tree"
        if not (args.reuse and (tree / "mutants").is_dir()):
            tree = prepare_tree(work, args.rev)
        print(f"mutate: generating mutants and per-check stats in {tree} (log: {log})", flush=True)
        # mutmut has no "generate only": asked for a mutant that does not exist it generates every mutant,
        # records which check calls which function, and then stops with NO_MATCH.
        run_mutmut(tree, ["run", "--max-children", str(args.max_children), NO_MUTANT], log, expected_error=NO_MATCH)
        generated = read_results(tree)
        if args.replay is not None:
            names = survivors_of(args.replay)
            gone = [n for n in names if n not in generated]
            if gone:
                raise MutateError(f"--replay: {len(gone)} survivor(s) no longer generated, e.g. {gone[0]}")
        elif args.only:
            names = select_only(sorted(generated), args.only)
        else:
            population = generated if args.paths is None else in_paths(generated, args.paths)
            names = draw_sample(population, args.sample or None, args.seed)
        print(f"mutate: running {len(names)} mutants, budget {args.budget:g} min", flush=True)
        clock = time.monotonic()
        complete = run_mutmut(tree, ["run", "--max-children", str(args.max_children), *names], log,
                              deadline=clock + 60 * args.budget)
        minutes = (time.monotonic() - clock) / 60
        report = build_report(tree, names, equivalents, started=started, minutes=minutes, sample=len(names),
                              seed=args.seed, complete=complete)
    except MutateError as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    as_json, as_md = write_report(report, args.out)
    c = report.counts()
    print(f"mutate: {', '.join(f'{c[s]} {s}' for s in STATUSES if c[s])}; "
          f"score {100 * (report.score(c) or 0):.1f} %, {report.mutants_per_minute():.1f} mutants/min")
    print(f"mutate: report {as_md} and {as_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
