"""DPDK testpmd ``net_virtio_user`` → ``vdpa-bench serve --device rtl:virtio-net`` → the SystemVerilog
function under Verilator with a loopback wire: testpmd's frames come back intact.

virtio_user asks for MRG_RXBUF and IN_ORDER by default; the RTL offers MRG_RXBUF, which is negotiated, and not
IN_ORDER (nor INDIRECT_DESC), which testpmd then runs without. With ``packed_vq=1`` the RTL runs packed
rings (it offers VIRTIO_F_RING_PACKED). Frames are checked on the wire (a pcap
tap on the RTL's loopback wire) and in testpmd's counters; the serve log says the doorbells reached the
design from the kick eventfds (no relay) and how many cycles were simulated.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.virtio.features import F, NetF
from models.rtl.targets import RtlOptions, build_variant
from testbenches.peers.process import require_program
from testbenches.peers.testpmd import INSTALL_HINT, virtio_user_vdev
from tests.interop.test_testpmd_virtio_user import loopback_session, negotiated, two_queue_pairs
from tests.rtl_build import require_rtl_build

CYCLES_LINE = re.compile(r"(\d+) cycles simulated, ([\d.]+) s with the clock running, (\d+) doorbells")


@pytest.fixture(autouse=True)
def _peers() -> None:
    require_program("dpdk-testpmd", INSTALL_HINT)
    require_rtl_build("virtio-net")  # serve then finds it cached instead of building at startup


def test_testpmd_traffic_through_rtl(tmp_path: Path, sock: str) -> None:
    """One queue pair; the RTL's MRG_RXBUF carries it, IN_ORDER and INDIRECT_DESC (not offered) are not
    negotiated."""
    with loopback_session(tmp_path, sock, "rtl:virtio-net", virtio_user_vdev(sock)) as serve:
        [features] = negotiated(serve)
        for bit in (F.IN_ORDER, F.INDIRECT_DESC):
            assert not features & (1 << bit), f"{bit.name} negotiated with a device that does not offer it"
        assert features & (1 << F.VERSION_1) and features & (1 << NetF.MRG_RXBUF), f"{features:#x}"
    # serve's output, once it stopped: the probe device at startup, then the session's device, whose kicks came
    # from testpmd's eventfds
    runs = [(int(c), float(s), int(k)) for c, s, k in CYCLES_LINE.findall(serve.proc.output())]
    cycles, _, kicks = runs[-1]
    assert cycles > 0 and kicks > 0, runs


def test_testpmd_packed_rings_through_rtl(tmp_path: Path, sock: str) -> None:
    """``packed_vq=1``: the RTL's packed rings carry testpmd's io loopback; RING_PACKED is in the features the
    design negotiated with MRG_RXBUF, IN_ORDER is not (not offered), frames intact on the wire, no errors."""
    with loopback_session(tmp_path, sock, "rtl:virtio-net", virtio_user_vdev(sock, packed_vq=True)) as serve:
        [features] = negotiated(serve)
        assert features & (1 << F.RING_PACKED), f"driver features {features:#x} without RING_PACKED"
        assert features & (1 << NetF.MRG_RXBUF), f"driver features {features:#x} without MRG_RXBUF"
        for bit in (F.IN_ORDER, F.INDIRECT_DESC):
            assert not features & (1 << bit), f"{bit.name} negotiated with a device that does not offer it"


def test_testpmd_two_queue_pairs_through_rtl(tmp_path: Path, sock: str) -> None:
    """``queues=2,cq=1``: the backend sets the RTL's pairs through the RTL's control queue
    (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET); both transmit queues carry traffic and it comes back."""
    build_variant(RtlOptions("virtio-net,queues=2"))
    two_queue_pairs("rtl:virtio-net,queues=2,wire=loopback", sock, tmp_path)
