"""Inputs kept from fuzzing, replayed through their target in process (no atheris needed).

``tests/fuzz/regressions/<target>/`` holds inputs that crashed a target (from reports/fuzz/artifacts, with
the fix in the code they crashed) and hostile inputs written by hand for a defect class the fuzzer should
never find again. Each must now be a handled outcome: ``one_input`` returns.

* vfio-user-client/region-mmap-beyond-file: the server offers region 0 (32 KiB) for mmap with a 4 KiB
  memfd; touching the mapping beyond the file's end would kill the process with SIGBUS, so the client
  must refuse the mapping (it keeps the region trapped) and the script then reads the region's views.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

REGRESSIONS = Path(__file__).resolve().parent / "fuzz" / "regressions"
CASES = sorted((d.name, f) for d in REGRESSIONS.iterdir() if d.is_dir() for f in sorted(d.iterdir()))

pytestmark = pytest.mark.timeout(120)


def test_every_case_names_a_target() -> None:
    assert CASES, "no regression inputs committed"
    assert {name for name, _ in CASES} <= set(TARGETS)


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_regression_input_is_handled(name: str, path: Path) -> None:
    target = TARGETS[name]()
    try:
        target.one_input(path.read_bytes())
    finally:
        target.close()
