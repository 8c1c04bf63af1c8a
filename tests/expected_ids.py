"""The exact set of requirement ids a target passes, committed as a floor (tests/data/expected-ids-*.txt).

A run that loses an id fails with the lost ids named; one that gains ids fails too, naming them, so that the
committed file is rewritten from a run on purpose (and reviewed):

    python -m tests.expected_ids <results.json> tests/data/expected-ids-sim.txt
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def expected_path(name: str) -> Path:
    return DATA / f"expected-ids-{name}.txt"


def read_expected(name: str) -> set[str]:
    """Ids of ``tests/data/expected-ids-<name>.txt`` (one a line; ``#`` starts a comment)."""
    path = expected_path(name)
    ids = {line.split("#", 1)[0].strip() for line in path.read_text().splitlines()}
    return ids - {""}


def difference(expected: set[str], passed: set[str], what: str, file: Path) -> str:
    """A readable account of how ``passed`` differs from ``expected`` ("" when equal)."""
    lost, gained = sorted(expected - passed), sorted(passed - expected)
    if not lost and not gained:
        return ""
    lines = [f"{what}: {len(passed)} ids passed, {len(expected)} expected ({file.name})"]
    if lost:
        lines.append(f"lost ({len(lost)}), no longer passed: " + ", ".join(lost))
    if gained:
        lines.append(f"gained ({len(gained)}), passed but not expected: " + ", ".join(gained)
                     + f" (rewrite the file from the run: python -m tests.expected_ids <results.json> {file})")
    return "\n".join(lines)


def write_expected(results: Path, out: Path) -> int:
    """Write the passed ids of ``results`` (a results.json) to ``out``; returns how many."""
    data = json.loads(results.read_text())
    passed = sorted(i for i, r in data["ids"].items() if r["status"] == "passed")
    header = (f"# Requirement ids passed on {data['target']} (written from a run by tests/expected_ids.py;\n"
              "# tests compare the exact set: a lost id fails the run, a gained one asks for this file anew).\n")
    out.write_text(header + "".join(f"{i}\n" for i in passed))
    return len(passed)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.expected_ids <results.json> <expected-ids file>", file=sys.stderr)
        return 2
    n = write_expected(Path(argv[0]), Path(argv[1]))
    print(f"{n} passed ids written to {argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
