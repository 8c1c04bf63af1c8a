"""Functional coverage for the RTL benches: named bins, hit counts, a closure check and a JSON record.

A bench declares the bins it must reach (``Coverage(name, point=bins)``, ``Coverage.expect``), records what it
observed (``hit``) and ends with :meth:`Coverage.close`, which fails the test
if a bin stayed empty and writes the counts where the pytest side collects them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Hashable, Iterable
from pathlib import Path

COVERAGE_DIR_ENV = "VDPA_RTL_COVERAGE_DIR"


class CoverageError(AssertionError):
    """A bench ended with expected bins that were never hit."""


class Coverage:
    def __init__(self, name: str, /, **bins: Iterable[Hashable]) -> None:
        """A record ``name`` expecting ``bins`` (point name: its bins), as :meth:`expect` for each."""
        self.name = name
        self.expected: dict[str, set[str]] = {}
        self.hits: dict[str, Counter[str]] = {}
        for point, values in bins.items():
            self.expect(point, values)

    def expect(self, point: str, bins: Iterable[Hashable]) -> None:
        self.expected.setdefault(point, set()).update(str(b) for b in bins)
        self.hits.setdefault(point, Counter())

    def hit(self, point: str, value: Hashable) -> None:
        self.hits.setdefault(point, Counter())[str(value)] += 1

    def missing(self) -> dict[str, list[str]]:
        return {p: sorted(b for b in bins if not self.hits[p][b])
                for p, bins in self.expected.items() if any(not self.hits[p][b] for b in bins)}

    def summary(self) -> dict[str, object]:
        total = sum(len(b) for b in self.expected.values())
        covered = total - sum(len(m) for m in self.missing().values())
        return {"bench": self.name, "bins": total, "covered": covered,
                "points": {p: dict(sorted(c.items())) for p, c in self.hits.items()},
                "missing": self.missing()}

    def close(self) -> None:
        """Write the record (if the runner asked for one) and fail on any empty expected bin."""
        folder = os.environ.get(COVERAGE_DIR_ENV)
        if folder:
            Path(folder, f"{self.name}.json").write_text(json.dumps(self.summary(), indent=1))
        missing = self.missing()
        if missing:
            raise CoverageError(f"{self.name}: bins never hit: {missing}")


def load(folder: Path) -> list[dict[str, object]]:
    """Every coverage record written into ``folder``."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
