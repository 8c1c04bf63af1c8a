"""A short reconnect storm (see :mod:`bench.reconnect_storm`, which runs the 100-cycle figures): testpmd restarted
ten times against one ``vdpa-bench serve``, each way round. Every cycle moves traffic, loses at most what the
rings hold in flight, and leaves serve's open fds at their idle count; serve's RSS stays level.

It extends ``test_frontend_restarts_three_times`` (tests/interop/test_testpmd_virtio_user.py) with counted
frames per cycle and serve's fds and RSS after each."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.reconnect_storm import IN_FLIGHT, storm
from testbenches.peers.process import require_program
from testbenches.peers.testpmd import INSTALL_HINT

CYCLES = 10


@pytest.mark.parametrize("way", ["listen", "client"], ids=["backend-listens", "backend-connects"])
def test_reconnect_storm(sock_dir: Path, way: str) -> None:
    require_program("dpdk-testpmd", INSTALL_HINT)
    result = storm(CYCLES, way, sock_dir)
    print(result.summary())
    assert len(result.cycles) == CYCLES
    for c in result.cycles:
        assert c.received > 0, f"cycle {c.number} moved no traffic"
        assert 0 <= c.lost <= IN_FLIGHT, f"cycle {c.number}: sent {c.sent}, received {c.received}"
    assert not result.problems(), result.problems()
