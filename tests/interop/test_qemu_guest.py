"""The guest harness itself under QEMU: the job's exit code and output reach the host, the shared
host directory is read-only underneath a RAM overlay, the job directory is writable, and an init
failure is reported as such rather than as a job result."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from testbenches.guest.kernel import Kernel
from testbenches.guest.qemu import Guest, GuestError

BOOT_TIMEOUT = 90.0


def test_job_result_shares_and_exit_code(kernel: Kernel, tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "token").write_text(token)
    job = """
        echo "token: $(cat /host/token)"
        echo overlay > /host/written-in-guest || exit 20
        [ "$(cat /host/written-in-guest)" = overlay ] || exit 21
        lsmod | cut -d' ' -f1 | sort > /job/modules
        echo "boot $VDPA_GUEST_BOOT" > /job/out
        exit 7
    """
    with Guest(tmp_path / "guest", kernel=kernel, share_root=shared) as guest:
        result = guest.run(job, BOOT_TIMEOUT)
        console = guest.console()
    assert (result.boot, result.exit_code) == (1, 7), console[-2000:]
    assert f"token: {token}" in console
    assert (guest.job_dir / "out").read_text() == "boot 1\n"
    assert not (shared / "written-in-guest").exists(), "a guest write reached the host through the overlay"
    loaded = set((guest.job_dir / "modules").read_text().split())
    assert {"virtio_net", "9pnet_virtio", "9p", "overlay", "virtio_ring"} <= loaded, loaded


def test_init_failure_is_reported(kernel: Kernel, tmp_path: Path) -> None:
    with Guest(tmp_path / "guest", kernel=kernel, cmdline=["vdpa.job=/nonexistent.sh"]) as guest:
        guest.boot("exit 0")
        with pytest.raises(GuestError, match=r"init failed in boot 1: no job script /nonexistent\.sh"):
            guest.wait_job(BOOT_TIMEOUT)
        assert guest.wait_exit(BOOT_TIMEOUT) == 0, "init powered the guest off after the error"
