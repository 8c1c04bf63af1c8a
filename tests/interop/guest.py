"""What the QEMU guest checks need: QEMU, a static busybox and the cached Debian kernel (fetched
with apt-get on first use). Missing ones skip on a user's machine and fail when ``CI=true``."""

from __future__ import annotations

import pytest

from testbenches.guest.kernel import GuestKernelError, Kernel, fetch_kernel
from testbenches.guest.qemu import QEMU, QEMU_HINT
from testbenches.peers.process import MissingPeer
from tests.interop.peers import in_ci, require_program


def require_guest_kernel() -> Kernel:
    require_program(QEMU, QEMU_HINT)
    require_program("busybox", "apt-get install busybox-static")
    require_program("apt-get", "apt-get download needs apt (Debian)")
    try:
        return fetch_kernel()
    except (MissingPeer, GuestKernelError) as exc:
        if in_ci():
            pytest.fail(f"guest kernel: {exc} (CI=true: a missing peer fails the run)")
        pytest.skip(f"guest kernel: {exc}")
