"""Fixtures the test modules share: guest memory, short socket paths, the processes a test starts
(stopped at its end, also when it fails), the QEMU guest kernel and the whole suite's run on the model."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.memory import GuestMemory
from testbenches.guest.kernel import GuestKernelError, Kernel, fetch_kernel
from testbenches.guest.qemu import QEMU, QEMU_HINT
from testbenches.peers.process import MissingPeer, peer_missing, require_program
from tests.suite_runner import run_suite

#: Guest memory above 4 GiB: every address a driver writes needs the high half of its register.
GPA = 0x1_0000_0000
MEM_SIZE = 4 << 20


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    """4 MiB of shared guest memory at :data:`GPA`."""
    with GuestMemory.single(MEM_SIZE, gpa=GPA) as memory:
        yield memory


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short, private directory for unix sockets: ``tmp_path`` can exceed the 107 bytes a socket
    path may have."""
    path = Path(tempfile.mkdtemp(prefix="vb-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock(sock_dir: Path) -> str:
    """A socket path nobody listens on yet."""
    return str(sock_dir / "vu.sock")


@pytest.fixture
def started() -> Iterator[contextlib.ExitStack]:
    """What the test starts (``started.enter_context(ServeProcess(...))``), stopped in reverse order at its
    end, also when it fails."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    """The QEMU guest's kernel (fetched once with apt-get) and what booting it needs; missing ones skip on
    a user's machine and fail when ``CI=true``."""
    require_program(QEMU, QEMU_HINT)
    require_program("busybox", "apt-get install busybox-static")
    require_program("apt-get", "apt-get download needs apt (Debian)")
    try:
        return fetch_kernel()
    except (MissingPeer, GuestKernelError) as exc:
        peer_missing(f"guest kernel: {exc}")


@pytest.fixture(scope="session")
def sim_suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole conformance suite on ``sim:virtio-net`` in a child process, once per session: the model's own
    test judges it, and the broken-model and RTL tests take it as their reference. ``_dir`` is its report.

    Under pytest-xdist the workers share one run: the first to take the lock in the run's common temporary
    directory runs it, the others wait for it and read its results."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp("sim-suite")
        data = run_suite("sim:virtio-net", out)
    else:
        out = tmp_path_factory.getbasetemp().parent / "sim-suite"
        out.mkdir(exist_ok=True)
        shared = out / "fixture.json"
        with open(out / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if shared.exists():
                data = json.loads(shared.read_text())
            else:
                data = run_suite("sim:virtio-net", out)
                shared.write_text(json.dumps(data))
    data["_dir"] = out
    return data


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``pytest -n N --dist loadscope`` (the Makefile's) with the interop tests as one work unit: they pin testpmd's
    busy-polling lcores to one CPU and boot QEMU guests, so two of them must not run at once. Every other module is
    a unit of its own, as loadscope makes it, so a module's whole-suite fixture runs on one worker, once.
    (``xdist_group`` marks would say the same, but pytest-xdist 3.8 renames the node ids through an attribute
    pytest 9 no longer reads, so ``--dist loadgroup`` ignores them.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class InteropAsOneUnit(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "tests/interop" if path.startswith("tests/interop/") else path

    return InteropAsOneUnit(config, log)
