"""``VhostUserFrontend.stream``: the rings kept stocked as the device returns slots.

Through the in-process backend and the behavioral model on a loopback wire: many times the ring's
size in frames of varied lengths come back intact and in order in both ring layouts, every slot is
returned (the rings' bases count every frame), and with nothing on the other end of the wire the
call returns what arrived once the device made no progress for the timeout, instead of waiting on.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backend.vhost_user.server import VhostUserServer
from sim.memory import GuestMemory
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend
from tests.vhost_user_rig import Devices

GPA = 0x1_0000_0000
MEM_SIZE = 8 << 20


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_stream_moves_many_rings_worth_intact(tmp_path: Path, packed: bool) -> None:
    path = str(tmp_path / "vu.sock")
    srv = VhostUserServer(path, Devices("sim:virtio-net,wire=loopback"))
    try:
        with GuestMemory.single(MEM_SIZE, gpa=GPA) as mem:
            fe = VhostUserFrontend.connect(path, mem)
            try:
                fe.start(size=16, packed=packed)
                sent = [test_frame(i, 60 + (i * 37) % 1400) for i in range(700)]
                got = fe.stream(sent, timeout=5.0)
                assert len(got) == len(sent), f"{len(got)} of {len(sent)} frames came back"
                bad = [i for i, (a, b) in enumerate(zip(sent, got, strict=True)) if a != b]
                assert not bad, f"frames {bad[:10]} came back altered or out of order"
                assert not fe.rings[0].in_flight and not fe.rings[1].in_flight
                bases = fe.stop()
                if not packed:  # split: last_avail_idx counts every buffer made available
                    assert bases == {0: len(sent), 1: len(sent)}, bases
            finally:
                fe.close()
    finally:
        srv.close()


def test_stream_without_a_wire_returns_after_the_timeout(tmp_path: Path) -> None:
    path = str(tmp_path / "vu.sock")
    srv = VhostUserServer(path, Devices("sim:virtio-net,wire=none"))
    try:
        with GuestMemory.single(MEM_SIZE, gpa=GPA) as mem:
            fe = VhostUserFrontend.connect(path, mem)
            try:
                fe.start(size=16)
                t0 = time.monotonic()
                got = fe.stream([test_frame(i, 64) for i in range(40)], timeout=0.3)
                waited = time.monotonic() - t0
                assert got == []
                assert waited < 5.0, f"stream waited {waited:.1f} s with a 0.3 s timeout"
                # the transmitted frames were all taken (sent into the unplugged port), the receive buffers wait
                assert not fe.rings[1].in_flight and fe.rings[0].in_flight == 16
            finally:
                fe.close()
    finally:
        srv.close()
