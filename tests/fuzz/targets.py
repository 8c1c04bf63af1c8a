"""The fuzz targets by name, and the process entry point that runs one under atheris/libFuzzer.

``python -m tests.fuzz.targets NAME [libFuzzer options] [corpus dirs]`` (``tools/fuzz.py`` and ``make fuzz``
call it). The project's packages are imported under atheris' instrumentation, so libFuzzer's coverage
(``cov``/``ft``) counts their Python branches; the RTL target's design runs in Verilator's C++, which is
not instrumented (its coverage is the Python side around it). Logging is limited to errors: a fuzzed
session refuses nearly every message and says so at warning level.

This module imports nothing of the project at import time, so that everything it runs is imported
after ``atheris.instrument_imports`` is entered.
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final, Protocol

#: Packages whose code is instrumented for coverage.
INSTRUMENTED: Final = ["backend", "sim", "models", "testbenches", "tests.fuzz"]
ROOT: Final = Path(__file__).resolve().parent.parent.parent


def numba_modules(root: Path = ROOT) -> list[str]:
    """The instrumented packages' modules that use numba: it reads their bytecode itself and cannot compile
    atheris' probes, so they stay uninstrumented (found by their source, so a new compiled module cannot
    stop every target at start)."""
    out = []
    for package in INSTRUMENTED:
        base = root.joinpath(*package.split("."))
        for path in sorted(base.rglob("*.py")) if base.is_dir() else []:
            if re.search(r"^\s*(import numba|from numba)", path.read_text(errors="replace"), re.MULTILINE):
                out.append(".".join(path.relative_to(root).with_suffix("").parts))
    return out


#: Modules compiled by numba (with numba_modules(): the ones known when this was written).
NUMBA: Final = ["models.virtio_net.fast_tx", "models.virtio_net.packed_fast", "backend.sigbus_guard"]
#: The register plumbing between a driver and a simulated function (PCI endpoint, virtio-pci transport):
#: every input of the device-side targets runs through it thousands of times, but it is not what they
#: fuzz, and left uninstrumented the runs go about twice as fast (atheris excludes exact module names).
PLUMBING: Final = ["sim.pci.endpoint", "sim.pci_device", "backend.drivers.transport", "backend.pci.device",
                   "backend.virtio.pci_regs"]
CORPUS: Final = Path(__file__).resolve().parent / "corpus"


class Target(Protocol):
    def one_input(self, data: bytes) -> None: ...

    def close(self) -> None: ...


def _vhost_user_session() -> Target:
    from tests.fuzz.vhost_user import VhostUserSessionTarget

    return VhostUserSessionTarget()


def _vfio_user_server() -> Target:
    from tests.fuzz.vfio_user import VfioUserServerTarget

    return VfioUserServerTarget()


def _vfio_user_client() -> Target:
    from tests.fuzz.vfio_user import VfioUserClientTarget

    return VfioUserClientTarget()


def _split_ring() -> Target:
    from tests.fuzz.ring import RingTarget

    return RingTarget("sim:virtio-net,wire=loopback")


def _packed_ring() -> Target:
    from tests.fuzz.ring import PackedRingTarget

    return PackedRingTarget()


def _rtl_ring() -> Target:
    from tests.fuzz.ring import RingTarget

    return RingTarget("rtl:virtio-net,wire=loopback")


#: Modules left uninstrumented per target (the vfio-user server keeps the endpoint: client messages reach
#: its config space and BARs directly).
NOT_INSTRUMENTED: Final = {
    "vhost-user-session": NUMBA + PLUMBING,
    "vfio-user-server": NUMBA + ["backend.drivers.transport"],
    "vfio-user-client": NUMBA,
    "split-ring": NUMBA + PLUMBING,
    "packed-ring": NUMBA + PLUMBING,
    "rtl-ring": NUMBA + PLUMBING,
}

#: name -> factory; the name is also the corpus directory (tests/fuzz/corpus/<name>).
TARGETS: Final[dict[str, Callable[[], Target]]] = {
    "vhost-user-session": _vhost_user_session,
    "vfio-user-server": _vfio_user_server,
    "vfio-user-client": _vfio_user_client,
    "split-ring": _split_ring,
    "packed-ring": _packed_ring,
    "rtl-ring": _rtl_ring,
}


def main(argv: list[str]) -> None:
    import atheris  # type: ignore[import-untyped]  # no stubs published

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    name = argv[1]
    logging.basicConfig(level=logging.ERROR)
    exclude = sorted(set(NOT_INSTRUMENTED[name]) | set(numba_modules()))
    with atheris.instrument_imports(include=INSTRUMENTED, exclude=exclude):
        target = TARGETS[name]()
    atexit.register(target.close)
    atheris.Setup([argv[0], *argv[2:]], target.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
