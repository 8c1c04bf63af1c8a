"""The backend never copies packets: after DRIVER_OK the device works on the frontend's memory.

Watched from the device's IOMMU: it reads the frontend's TX buffer at the address the frontend
put in the descriptor, writes the received frame straight into the frontend's RX buffer, touches
nothing outside the frontend's memory table (no bounce buffer), and the backend's session handles
no message while the packets move.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.eventloop import wait_eventfd
from backend.pci.device import DmaPerm
from backend.vhost_user.server import VhostUserServer
from backend.virtio.net_hdr import HDR_SIZE
from models.targets import SimNetDevice
from sim.memory import GuestMemory
from testbenches.frontend.vhost_user import VhostUserFrontend
from tests.vhost_user_rig import Devices

GPA = 0x1_0000_0000
MEM_SIZE = 4 << 20


@pytest.fixture
def started(tmp_path: Path) -> Iterator[tuple[Devices, VhostUserServer, VhostUserFrontend, GuestMemory]]:
    devices = Devices("sim:virtio-net,wire=loopback")
    path = str(tmp_path / "vu.sock")
    srv = VhostUserServer(path, devices)
    mem = GuestMemory.single(MEM_SIZE, gpa=GPA)
    fe = VhostUserFrontend.connect(path, mem, uva_offset=0x7F00_0000_0000)
    fe.start(size=64)
    yield devices, srv, fe, mem
    fe.close()
    srv.close()
    mem.close()


def test_device_reads_and_writes_the_frontends_buffers_in_place(
        started: tuple[Devices, VhostUserServer, VhostUserFrontend, GuestMemory]) -> None:
    devices, srv, fe, mem = started
    pci = devices.made[0].pci
    assert isinstance(pci, SimNetDevice)
    accesses: list[tuple[DmaPerm, int, int]] = []
    pci.endpoint.iommu.observers.append(lambda access, iova, size: accesses.append((access, iova, size)))
    session = srv.sessions[0].session
    assert session is not None
    messages_before = session.stats.messages

    frames = [bytes([0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]) + bytes([i]) * (50 + 100 * i)
              for i in range(8)]
    rxq, txq = fe.rings[0], fe.rings[1]
    rx_bufs = {rxq.add([], [2048]): None for _ in frames}
    tx_heads = [txq.add([bytes(HDR_SIZE) + f], []) for f in frames]
    rx_addr = {head: rxq.read_desc(head).addr for head in rx_bufs}
    tx_desc = {head: txq.read_desc(head) for head in tx_heads}
    fe.kick(0)
    fe.kick(1)
    got: list[tuple[int, bytes]] = []
    while len(got) < len(frames):
        assert wait_eventfd(fe.calls[0], 5.0), f"only {len(got)} of {len(frames)} frames came back"
        got.extend((u.head, u.data) for u in rxq.used())
    assert [data[HDR_SIZE:] for _, data in got] == frames

    reads = [(iova, size) for access, iova, size in accesses if access & DmaPerm.READ]
    writes = [(iova, size) for access, iova, size in accesses if access & DmaPerm.WRITE]

    def covered(ranges: list[tuple[int, int]], addr: int, length: int) -> bool:
        return any(iova <= addr and addr + length <= iova + size for iova, size in ranges)

    for head, desc in tx_desc.items():  # the device read each frame where the frontend wrote it (after the header)
        assert covered(reads, desc.addr + HDR_SIZE, desc.len - HDR_SIZE), \
            f"TX buffer {head} at {desc.addr:#x} not read in place"
    for head, data in got:  # ... and wrote each frame into the frontend's RX buffer, read back from its memfd
        assert covered(writes, rx_addr[head], len(data)), f"RX buffer {head} at {rx_addr[head]:#x} not written"
        assert mem.read(rx_addr[head], len(data)) == data
    outside = [(a, i, s) for a, i, s in accesses if not (i >= GPA and i + s <= GPA + MEM_SIZE)]
    assert not outside, f"device accesses outside the frontend's memory (a bounce buffer?): {outside[:5]}"
    assert session.stats.messages == messages_before, "the backend handled messages while packets moved"


def test_device_sees_the_frontends_memory_live(
        started: tuple[Devices, VhostUserServer, VhostUserFrontend, GuestMemory]) -> None:
    """What the frontend writes after DRIVER_OK the device reads at once through its IOMMU, and the other
    way round: one memory, shared (a snapshot or a copy made at SET_MEM_TABLE would not see it)."""
    devices, _, _, mem = started
    pci = devices.made[0].pci
    assert isinstance(pci, SimNetDevice)
    iommu = pci.endpoint.iommu
    addr = GPA + MEM_SIZE - 4096
    for value in (b"frontend wrote this", b"and then this"):
        mem.write(addr, value)
        assert iommu.read(addr, len(value)) == value
    iommu.write(addr + 100, b"device wrote this")
    assert mem.read(addr + 100, 17) == b"device wrote this"
