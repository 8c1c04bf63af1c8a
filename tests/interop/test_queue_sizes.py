"""DPDK testpmd ``net_virtio_user`` with large rings (``queue_size=``) through ``vdpa-bench serve --device
sim:virtio-net``: the default simulated device takes every size a frontend may use, like DPDK's net_vhost,
and traffic comes back intact; a device built with a smaller maximum refuses a larger ring naming the limit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testbenches.peers.process import require_program
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import INSTALL_HINT, Testpmd, virtio_user_vdev
from tests.interop.test_testpmd_virtio_user import loopback_session, negotiated

#: The serve log's DRIVER_OK line: rings ready and the size the frontend gave each.
SIZES = re.compile(r"DRIVER_OK: device running \(driver features 0x[0-9a-f]+, rings \[0, 1\] ready, "
                   r"sizes \[(\d+), (\d+)\]\)")


@pytest.fixture(autouse=True)
def _testpmd_installed() -> None:
    require_program("dpdk-testpmd", INSTALL_HINT)


@pytest.mark.parametrize("queue_size", [1024, 2048, 4096])
def test_large_rings_move_traffic(tmp_path: Path, sock: str, queue_size: int) -> None:
    with loopback_session(tmp_path, sock, "sim:virtio-net", virtio_user_vdev(sock, queue_size=queue_size)) as serve:
        assert len(negotiated(serve)) == 1
        assert SIZES.findall(serve.proc.output()) == [(str(queue_size), str(queue_size))]


def test_smaller_device_names_its_limit(tmp_path: Path, sock: str) -> None:
    """``queue_size_max=256`` and a frontend asking for 1024: refused, and the serve log names the limit."""
    with ServeProcess(sock, "sim:virtio-net,wire=loopback,queue_size_max=256", log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        with Testpmd(virtio_user_vdev(sock, queue_size=1024), log=tmp_path / "testpmd.log", cpu=1) as tp:
            serve.proc.wait_for(r"size 1024 exceeds the device's maximum queue size 256", 30.0)
            tp.stop()
        assert serve.stop() == 0
