"""The work units `make test` hands pytest-xdist's workers (tests/conftest.py's scheduler)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import pytest_xdist_make_scheduler


class Options:
    def __init__(self, dist: str) -> None:
        self.values = {"dist": dist, "loadscopereorder": True, "maxschedchunk": None, "numprocesses": 2,
                       "tx": ["2*popen"], "dist_load_reorder": True}

    def getvalue(self, name: str) -> Any:
        return self.values.get(name)

    @property
    def option(self) -> Any:
        return type("Option", (), self.values)()


class Log:
    def __call__(self, *args: object) -> None:
        pass

    def __getattr__(self, name: str) -> Log:
        return self


def test_interop_modules_are_one_unit_and_other_modules_one_each() -> None:
    sched = pytest_xdist_make_scheduler(Options("loadscope"), Log())  # type: ignore[arg-type]
    units = {sched._split_scope(nodeid) for nodeid in (
        "tests/interop/test_vfio_guest.py::test_a", "tests/interop/test_testpmd_rtl.py::test_b[2]",
        "tests/interop/test_qemu_guest.py::TestX::test_c")}
    assert len(units) == 1
    others = [sched._split_scope(n) for n in ("tests/test_rtl_target.py::test_a", "tests/test_rtl_target.py::test_b",
                                              "tests/test_vfio_user.py::test_a", "tests/rtl/test_rtl.py::test_x[1]")]
    assert others[0] == others[1]
    assert len(set(others)) == 3
    assert not set(others) & units


@pytest.mark.parametrize("dist", ["load", "worksteal", "no"])
def test_other_distributions_keep_xdists_scheduler(dist: str) -> None:
    assert pytest_xdist_make_scheduler(Options(dist), Log()) is None  # type: ignore[arg-type]
