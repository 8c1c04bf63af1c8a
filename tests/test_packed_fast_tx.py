"""The packed transmit bulk path (models/virtio_net/packed_fast.py) against the per-list path with every hook.

The same random workload runs on the stock model (runs of one-descriptor lists in bulk) and on a variant that
overrides a per-list packed hook without changing what it does (so the device takes every list through the
per-list path): the driver must see the same used buffers (Buffer IDs, lengths), the same descriptor ring bytes
(ids, lengths and flags of every used descriptor) when no IN_ORDER batching is in play, and the wire the same
frames, in order. With VIRTIO_NET_F_CSUM negotiated every list takes the per-list path (headers are read there), and
the lists whose header asks for NEEDS_CSUM go on the wire with their UDP checksum complete.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.pci.device import DmaPerm
from backend.virtio.features import DeviceStatus, F, NetF, bits, has
from backend.virtio.net_hdr import F_NEEDS_CSUM, HDR_SIZE, NetHdr
from backend.virtio.packed_ring import DESC, PackedDescriptor, avail_bits
from backend.virtio.pci_regs import CommonCfg
from models.virtio_net import packed_fast
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.packed_engine import PackedHooks
from sim.memory import Allocator, GuestMemory
from testbenches.conformance.checks.test_net_csum import transport_checksum_ok
from testbenches.frames import test_frame
from tests.test_model_device import MEM, Guest
from tests.test_model_packed_device import BASE, PACKED_OFFER, kick, packed_guest

SPEC = f"virtio-net,wire=none,features={PACKED_OFFER | bits(NetF.CSUM):#x}"
#: Where test_frame's UDP checksum is: csum_start (Ethernet + IPv4 headers), csum_offset.
UDP_CSUM_AT = (34, 6)


class PerListHooks(VirtioNetDevice):
    """The stock behaviour through an overridden per-list hook: the bulk path is off for it."""

    def packed_buffer_id(self, descs: Sequence[PackedDescriptor]) -> int:
        return PackedHooks.packed_buffer_id(self, descs)


HOOKED = SPEC + f",model={__name__}:PerListHooks"

#: What one TX list looks like: plain (header and frame in one descriptor: the bulk path's), two descriptors,
#: indirect, or no frame after the header (a TX error on both paths).
KINDS = ("plain", "plain", "plain", "two", "indirect", "empty")


def _needs_csum(n: int) -> bool:
    """Every third list asks for checksum offload (a header the device ignores without CSUM)."""
    return n % 3 == 0


def _offloaded(frame: bytes) -> tuple[bytes, bytes]:
    """(header, frame) as a driver offloading the UDP checksum hands them over: the pseudo-header sum in the field."""
    start, offset = UDP_CSUM_AT
    pseudo = frame[26:34] + b"\0\x11" + (len(frame) - start).to_bytes(2, "big")
    total = sum(int.from_bytes(pseudo[i:i + 2], "big") for i in range(0, len(pseudo), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    at = start + offset
    return (NetHdr(flags=F_NEEDS_CSUM, csum_start=start, csum_offset=offset).pack(),
            frame[:at] + total.to_bytes(2, "big") + frame[at + 2:])


def run(spec: str, features: int, size: int, bursts: list[list[tuple[str, int]]]) \
        -> tuple[list[list[tuple[int, int]]], list[bytes], list[bytes], int, int]:
    """(used (id, len) per burst, frames on the wire, the descriptor ring after each burst, bulk-taken, errors)."""
    used: list[list[tuple[int, int]]] = []
    rings: list[bytes] = []
    with packed_guest(features, size, spec) as (g, _rx, tx):
        col = g.collect()
        for burst in bursts:
            for kind, n in burst:
                frame = test_frame(n, 60 + n % 1400)
                hdr = NetHdr().pack()
                if _needs_csum(n):
                    hdr, frame = _offloaded(frame)
                if kind == "two":
                    tx.add([hdr, frame], [])
                elif kind == "indirect" and has(features, F.INDIRECT_DESC):
                    tx.add([hdr + frame], [], indirect=True)
                elif kind == "empty":
                    tx.add([hdr], [])
                else:
                    tx.add([hdr + frame], [])
            kick(g, tx, features)
            done = tx.used()
            assert not tx.in_flight, f"{tx.in_flight} lists not returned"
            used.append([(u.head, u.len) for u in done])
            rings.append(g.mem.read(tx.desc_addr, 16 * size))
        assert not g.model.errors and not tx.anomalies
        return used, list(col.frames), rings, g.model.stats.tx_bulk, g.model.stats.tx_errors


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, 80),
       extra=st.sets(st.sampled_from([F.INDIRECT_DESC, F.IN_ORDER, F.EVENT_IDX, NetF.CSUM])),
       seed=st.integers(0, 2**32 - 1))
def test_bulk_and_per_list_paths_agree(size: int, extra: set[int], seed: int) -> None:
    rnd = random.Random(seed)
    features = BASE | bits(*extra)
    bursts: list[list[tuple[str, int]]] = []
    n = 0
    for _ in range(rnd.randint(1, 8)):
        burst = []
        room = size
        for _ in range(rnd.randint(1, size)):
            kind = rnd.choice(KINDS)
            need = 2 if kind == "two" else 1
            if need > room:
                break
            room -= need
            burst.append((kind, n))
            n += 1
        bursts.append(burst)
    bulk = run(SPEC, features, size, bursts)
    hooked = run(HOOKED, features, size, bursts)
    assert bulk[0] == hooked[0], "used buffers (ids, lens) differ"
    assert bulk[1] == hooked[1], "frames on the wire differ"
    assert bulk[4] == hooked[4], "TX errors differ"
    if not has(features, F.IN_ORDER):  # IN_ORDER batches may be cut differently; what the driver sees is the same
        assert bulk[2] == hooked[2], "descriptor ring bytes (used ids, lens, flags) differ"
    assert hooked[3] == 0, "the variant with an overridden hook went through the bulk path"
    if has(features, NetF.CSUM):
        assert bulk[3] == 0, "a list went through the bulk path, which reads no header, with CSUM negotiated"
        sent = [n for burst in bursts for kind, n in burst if kind != "empty" and _needs_csum(n)]
        wire = {int.from_bytes(f[42:46], "big"): f for f in bulk[1]}  # by test_frame's sequence number
        bad = [n for n in sent if not transport_checksum_ok(wire[n])]
        assert not bad, f"lists {bad} sent with NEEDS_CSUM went out without a complete UDP checksum"
    elif any(kind == "plain" for burst in bursts for kind, _ in burst[:1]):
        assert bulk[3] > 0, "the stock model took no list in bulk"


def test_bulk_path_is_off_for_a_variant_overriding_a_per_list_hook() -> None:
    assert packed_fast.bulk_ok(VirtioNetDevice(features=PACKED_OFFER))
    assert not packed_fast.bulk_ok(PerListHooks(features=PACKED_OFFER))


def test_a_run_that_wraps_the_ring_in_bulk() -> None:
    """Eleven plain lists on a ring of 8 (two kicks): both wrap counters flip, all frames leave, all in bulk."""
    features = BASE
    frames = [test_frame(i, 64) for i in range(11)]
    with packed_guest(features, 8, SPEC) as (g, _rx, tx):
        col = g.collect()
        for part in (frames[:6], frames[6:]):
            for f in part:
                tx.add([NetHdr().pack() + f], [])
            kick(g, tx, features)
            assert [u.len for u in tx.used()] == [0] * len(part)
        assert col.frames == frames and g.model.stats.tx_bulk == 11
        q = g.model.packed_queues[1]
        assert (q.next_avail, q.avail_wrap, q.next_used, q.used_wrap) == (3, 0, 3, 0)
        assert len(frames[0]) + HDR_SIZE > HDR_SIZE


def test_a_ring_the_device_may_only_write_is_not_read_in_bulk() -> None:
    """transmitq1's descriptor ring in a page mapped write-only: the device's read of it faults (NEEDS_RESET) and
    no frame leaves (the bulk path looks at the head through the checked read first, and takes its array only
    over a mapping it may read as well as write)."""
    iova, page = 0x7E00_0000_0000, 0x1000
    with Guest(SPEC) as g, GuestMemory.single(page, gpa=iova, name="ring-page") as ring:
        assert g.negotiate(BASE)
        g.msix(3)
        col = g.collect()
        alloc = Allocator(0x10000, MEM - 0x10000)
        frame = NetHdr().pack() + test_frame(0, 64)
        buf = alloc.alloc(len(frame))
        g.mem.write(buf, frame)
        events = alloc.alloc(8, 4)
        g.mem.write(events, bytes(8))
        ring.write(iova, DESC.pack(buf, len(frame), 0, avail_bits(1)))
        region = ring.regions[0]
        g.dev.dma_map(iova, page, region.fd, 0, DmaPerm.WRITE)
        g.cw(CommonCfg.QUEUE_SELECT, 1)
        g.cw(CommonCfg.QUEUE_SIZE, 8)
        g.cw(CommonCfg.QUEUE_MSIX_VECTOR, 1)
        g.cw(CommonCfg.QUEUE_DESC, iova)
        g.cw(CommonCfg.QUEUE_DRIVER, events)
        g.cw(CommonCfg.QUEUE_DEVICE, events + 4)
        g.cw(CommonCfg.QUEUE_ENABLE, 1)
        g.driver_ok()
        g.notify(1)
        assert col.frames == [] and g.model.stats.tx_packets == 0
        assert g.status() & DeviceStatus.DEVICE_NEEDS_RESET
