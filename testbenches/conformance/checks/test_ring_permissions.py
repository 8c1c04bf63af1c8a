"""Rings the IOMMU maps without the access the device needs (2.1.2, 2.7; VIRTIO_F_ACCESS_PLATFORM, 6.1).

The driver maps each part of transmitq1's split ring in a page of its own: the part under test without the
permission the device's access to it needs (the descriptor table and the available ring write-only, the used
ring read-only), the other two read-write. One frame is made available. The device may not use a part it cannot
access as the part says: its access faults, it sets DEVICE_NEEDS_RESET (STATUS-DEV-02) and sends a
configuration change notification (STATUS-DEV-03), and a used ring it could not write reads as the driver left
it. A device that reads through a mapping it was granted write access to only (an array over the mapping, say)
takes the descriptors and sends the frame.
"""

from __future__ import annotations

import struct

import pytest

from backend.pci.device import DmaPerm
from backend.virtio.split_ring import SplitLayout
from sim.memory import GuestMemory
from testbenches.conformance.chains import fmt_faults, status_text
from testbenches.conformance.harness import NEEDS_RESET, TX, Bench, drain, hostile_kick, make_frame
from testbenches.conformance.plugin import Verdict

QSIZE = 8
PAGE = 0x1000
#: Where the check maps its ring pages: far from the guest memory and from UNMAPPED_IOVA, page aligned.
RING_IOVA = 0x7E00_0000_0000
#: Each part in its own page: descriptor table, available ring, used ring.
PARTS = ("desc", "avail", "used")
#: The permission a part is mapped with when it is the one under test.
SHORT_OF = {"desc": DmaPerm.WRITE, "avail": DmaPerm.WRITE, "used": DmaPerm.READ}


@pytest.mark.req("STATUS-DEV-02", "STATUS-DEV-03")
@pytest.mark.parametrize("part", PARTS)
def test_ring_part_mapped_without_the_access_it_needs(bench: Bench, verdict: Verdict, part: str) -> None:
    with bench.rig() as r, GuestMemory.single(len(PARTS) * PAGE, gpa=RING_IOVA, name="ring-pages") as pages:
        d = r.up(queue_size=QSIZE, rx_buffers=0, queues=False, driver_ok=False)
        t = d.transport
        size = min(QSIZE, t.queue_size(TX))
        desc, avail, used = (RING_IOVA + i * PAGE for i in range(len(PARTS)))
        frame = make_frame(0, 80)
        buf = r.alloc.alloc(d.hdr_len + len(frame))
        r.mem.write(buf, bytes(d.hdr_len) + frame)
        pages.write(desc, struct.pack("<QIHH", buf, d.hdr_len + len(frame), 0, 0))
        pages.write(avail, struct.pack("<HHH", 0, 1, 0))  # flags 0, idx 1, ring[0] = descriptor 0
        region = pages.regions[0]
        mapped: list[int] = []
        try:
            for i, name in enumerate(PARTS):
                perm = SHORT_OF[name] if name == part else DmaPerm.RW
                r.pci.dma_map(RING_IOVA + i * PAGE, PAGE, region.fd, i * PAGE, perm)
                mapped.append(RING_IOVA + i * PAGE)
            d.enable_queue_at(TX, size, desc, avail, used)
            d.driver_ok()
            cfg_fd = d.irq_fds["config"]
            drain(cfg_fd)
            r.faults()
            kick = hostile_kick(lambda: r.doorbell(TX, 1), cfg_fd, r.event_wait, r.explain())
            status = t.status()
            faults = r.faults()
            used_idx = struct.unpack("<H", pages.read(used + SplitLayout.USED_IDX, 2))[0]
            t.reset()
        finally:
            for iova in mapped:
                r.pci.dma_unmap(iova, PAGE)
        what = (f"transmitq1's {part} mapped {SHORT_OF[part].name} only (the other parts RW), one frame made "
                f"available")
        verdict.check("STATUS-DEV-02", kick.crash is None and bool(status & NEEDS_RESET) and used_idx == 0,
                      f"{what}: {kick.doorbell}, status "
                      f"{status_text(status)} (DEVICE_NEEDS_RESET expected), used idx {used_idx} (0 expected); "
                      f"{fmt_faults(faults)}")
        kick.judge_notified(verdict, what, d.vectors["config"])
