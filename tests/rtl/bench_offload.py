"""cocotb bench of virtio_net_top's checksum offload (VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM) and merged receive
buffers (VIRTIO_NET_F_MRG_RXBUF), on the default build beside bench_engine.

The behavioral model is the reference: a transmitted frame with NEEDS_CSUM must leave exactly as
models.virtio_net.offload.complete_checksum makes it (or not at all where it returns None); a received frame gets
DATA_VALID only where offload.checksum_verified vouches for it, and the RTL vouches for untagged IPv4 only, so
it must set it on exactly those; a frame over several receive chains takes them in order, num_buffers in the
first header, every buffer but the last full, one used idx write for the frame.
"""

from __future__ import annotations

import random

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import checksum

from backend.virtio.features import NetF, bits
from backend.virtio.net_hdr import F_DATA_VALID, F_NEEDS_CSUM, HDR_SIZE, NetHdr
from backend.virtio.split_ring import SplitLayout
from models.virtio_net.offload import checksum_verified, complete_checksum
from tests.rtl.bench_common import workload
from tests.rtl.bench_engine import (
    BASE_FEATURES,
    CANARY,
    CANARY_SLACK,
    MTU,
    RXQ,
    SEED,
    NetBench,
    bench_test,
    cuts_for,
    split,
)
from tests.rtl.coverage import Coverage

CSUM = bits(NetF.CSUM)
GUEST_CSUM = bits(NetF.GUEST_CSUM)
MRG_RXBUF = bits(NetF.MRG_RXBUF)
DEV_MAC, PEER_MAC = "02:00:00:00:be:ef", "02:00:00:00:00:02"


def packet(rng: random.Random, v6: bool, tcp: bool, payload: int) -> tuple[bytes, int, int]:
    """(frame as a driver offloading its transport checksum hands it over, csum_start, csum_offset): the
    pseudo-header sum in the checksum field (NET-DRV-36)."""
    l3: Packet = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    l4: Packet = TCP(sport=4000, dport=80, flags="PA") if tcp else UDP(sport=4000, dport=4001)
    full = bytearray(bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / l3 / l4 / rng.randbytes(payload)))
    start, offset = 14 + (40 if v6 else 20), 16 if tcp else 6
    seg = len(full) - start
    proto = 6 if tcp else 17
    pseudo = (full[22:54] + seg.to_bytes(4, "big") + bytes((0, 0, 0, proto)) if v6
              else full[26:34] + bytes((0, proto)) + seg.to_bytes(2, "big"))
    full[start + offset:start + offset + 2] = (~checksum(bytes(pseudo)) & 0xFFFF).to_bytes(2, "big")
    return bytes(full), start, offset


def add_tx_with(bench: NetBench, hdr: NetHdr, frame: bytes, rng: random.Random) -> None:
    """One transmit chain of header + frame cut into 1..3 pieces at random byte offsets."""
    pieces = rng.randint(1, 3)
    data = split(hdr.pack() + frame, cuts_for(rng, HDR_SIZE + len(frame), pieces))
    offsets = [rng.randrange(bench.lanes) for _ in data]
    head = bench.txq.add([bytes(len(p) + o) for p, o in zip(data, offsets, strict=True)], [])
    bench._shift_chain(bench.txq, head, [len(p) for p in data], offsets, data)


@bench_test(SEED + 20, "offload_tx_csum", packet=["ipv4/tcp", "ipv4/udp", "ipv6/tcp", "ipv6/udp", "anywhere"],
            start_parity=["even", "odd"], result=["completed", "sent_as_is", "outside_dropped"])
async def tx_checksum_completed(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """VIRTIO_NET_F_CSUM: NEEDS_CSUM frames leave as the model completes them (the sum from csum_start folded into
    csum_start + csum_offset), IPv4/IPv6 TCP/UDP and arbitrary (even odd) csum_start; without NEEDS_CSUM the frame
    leaves as it is; a field placed outside the frame drops the frame (a driver error), counted in tx_dropped."""
    await bench.init(BASE_FEATURES | CSUM)
    dropped = 0
    for i in range(workload(60, 16)):
        kind = i % 6
        if kind < 4:
            v6, tcp = bool(kind & 2), bool(kind & 1)
            frame, start, offset = packet(rng, v6, tcp, rng.randint(0, MTU - 60))
            what = f"{'ipv6' if v6 else 'ipv4'}/{'tcp' if tcp else 'udp'}"
        else:  # any csum_start / csum_offset inside a random frame
            frame = rng.randbytes(rng.randint(16, MTU + 14))
            start = rng.randrange(len(frame) - 1)
            offset = rng.randint(0, len(frame) - start - 2)
            what = "anywhere"
        flags = F_NEEDS_CSUM if kind != 5 or rng.random() < 0.5 else 0
        if kind == 5 and flags and rng.random() < 0.5:  # the field (or csum_start) outside the frame
            start, offset = (len(frame), 0) if rng.random() < 0.5 else (start, len(frame) - start - 1)
        want = complete_checksum(flags, start, offset, frame)
        add_tx_with(bench, NetHdr(flags=flags, csum_start=start, csum_offset=offset), frame, rng)
        await bench.publish(bench.txq)
        if want is None:
            await bench.wait_used(bench.txq, bench.txq.published)
            dropped += 1
            assert bench.stat("tx_dropped") == dropped, "a frame with its checksum field outside it was counted"
            cov.hit("result", "outside_dropped")
        else:
            got = await bench.recv_frame()
            assert got == want, f"frame {i} ({what}, csum_start {start}, csum_offset {offset}): sent differently " \
                                f"from the model's (field {got[start + offset:start + offset + 2].hex()} vs " \
                                f"{want[start + offset:start + offset + 2].hex()})"
            cov.hit("result", "completed" if flags else "sent_as_is")
            cov.hit("packet", what)
            if flags:
                cov.hit("start_parity", "odd" if start % 2 else "even")
        for used in bench.txq.used():
            assert used.len == 0
    assert bench.sink.empty(), "a dropped frame reached the wire"


def received_variants(rng: random.Random) -> list[tuple[str, bytes]]:
    """Frames for the receive side: sound IPv4 TCP/UDP, and ones the device must not vouch for."""
    def sound(v6: bool, tcp: bool, payload: int) -> bytes:
        l3: Packet = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
        l4: Packet = TCP(sport=1, dport=2) if tcp else UDP(sport=1, dport=2)
        return bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / l3 / l4 / rng.randbytes(payload))

    def flip(frame: bytes, at: int) -> bytes:
        return frame[:at] + bytes((frame[at] ^ 0x04,)) + frame[at + 1:]

    n = rng.randint(0, 1400)
    tcp4, udp4 = sound(False, True, n), sound(False, False, rng.randint(1, 1400))
    no_csum = bytearray(udp4)
    no_csum[40:42] = b"\0\0"
    frag = bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF")
                 / UDP(sport=1, dport=2) / rng.randbytes(64))
    return [("ipv4_tcp_good", tcp4), ("ipv4_udp_good", udp4),
            ("ipv4_tcp_options", bytes(Ether(src=PEER_MAC, dst=DEV_MAC) / IP(src="10.0.0.1", dst="10.0.0.2",
                                                                             options=b"\x01\x01\x01\x00")
                                         / TCP() / rng.randbytes(33))),
            ("bad_l4", flip(tcp4, rng.randrange(34, len(tcp4)))), ("bad_ip_hdr", flip(udp4, 22)),
            ("udp_no_csum", bytes(no_csum)), ("fragment", frag), ("ipv6", sound(True, rng.random() < 0.5, n)),
            ("not_ip", bytes(Ether(src=PEER_MAC, dst=DEV_MAC, type=0x88B5) / rng.randbytes(50))),
            ("truncated", tcp4[:-1] if len(tcp4) > 60 else tcp4[:40])]


@bench_test(SEED + 21, "offload_rx_csum",
            kind=["ipv4_tcp_good", "ipv4_udp_good", "ipv4_tcp_options", "bad_l4", "bad_ip_hdr", "udp_no_csum",
                  "fragment", "ipv6", "not_ip", "truncated"], data_valid=[True, False])
async def rx_data_valid(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """VIRTIO_NET_F_GUEST_CSUM: DATA_VALID on exactly the untagged IPv4 TCP/UDP packets the model's validation
    vouches for (NET-DEV-62: never on a wrong checksum); the frame itself is delivered unchanged."""
    await bench.init(BASE_FEATURES | GUEST_CSUM)
    for _ in range(workload(4, 1)):
        for kind, frame in received_variants(rng):
            head = bench.post_rx([HDR_SIZE + len(frame) + rng.randrange(64)], [rng.randrange(bench.lanes)])
            await bench.publish(bench.rxq)
            before = bench.rxq.used_idx()
            await bench.source.send(frame)
            await bench.wait_used(bench.rxq, before + 1)
            [used] = bench.rxq.used()
            got = bench.rx_data(head, used.len)
            hdr = NetHdr.unpack(got[:HDR_SIZE])
            want = checksum_verified(frame) and frame[12:14] == b"\x08\x00"
            assert kind.endswith("good") == want or kind == "ipv4_tcp_options", f"{kind}: the model says {want}"
            assert hdr.flags == (F_DATA_VALID if want else 0), f"{kind}: flags {hdr.flags:#x}, validated {want}"
            assert hdr.num_buffers == 1 and got[HDR_SIZE:] == frame, f"{kind}: header or frame changed"
            cov.hit("kind", kind)
            cov.hit("data_valid", bool(hdr.flags & F_DATA_VALID))


@bench_test(SEED + 22, "offload_mrg_rxbuf", buffers=["1", "2", "3..7", ">=8"], desc_per_chain=[1, 2],
            outcome=["placed", "no_room_dropped"])
async def mrg_rxbuf_spreads_frames(bench: NetBench, rng: random.Random, cov: Coverage) -> None:
    """VIRTIO_NET_F_MRG_RXBUF: a frame larger than a receive chain continues in the next ones, in order;
    num_buffers in the first header counts them, all but the last are full, and used idx is written once per
    frame. A frame the posted chains cannot hold is dropped with the ring untouched: the next frame starts in
    the first chain it would have used."""
    await bench.init(BASE_FEATURES | MRG_RXBUF)
    idx_writes: list[int] = []
    used_idx_addr = bench.rxq.used_addr + SplitLayout.USED_IDX

    def gate(addr: int, data: bytes) -> None:
        if addr <= used_idx_addr < addr + len(data):
            idx_writes.append(addr)

    bench.ram.write_if.gate = gate
    posted: list[tuple[int, int]] = []  # (head, writable bytes) in ring order

    def room() -> int:
        return sum(n for _, n in posted)

    async def place(frame: bytes) -> None:
        need, total = 0, 0
        while total < HDR_SIZE + len(frame):
            total += posted[need][1]
            need += 1
        before, writes = bench.rxq.used_idx(), len(idx_writes)
        await bench.source.send(frame)
        await bench.wait_used(bench.rxq, before + need)
        used = bench.rxq.used()
        assert [u.head for u in used] == [h for h, _ in posted[:need]], "chains not taken in ring order"
        data = b"".join(bench.rx_data(u.head, u.len) for u in used)
        assert all(u.len == n for u, (_, n) in zip(used[:-1], posted, strict=False)), "a buffer but the last not full"
        hdr = NetHdr.unpack(data[:HDR_SIZE])
        assert hdr.num_buffers == need, f"num_buffers {hdr.num_buffers} for {need} chains"
        assert data[HDR_SIZE:] == frame, "frame changed"
        assert len(idx_writes) == writes + 1, f"{len(idx_writes) - writes} used idx writes for one frame"
        del posted[:need]
        cov.hit("outcome", "placed")
        cov.hit("buffers", "1" if need == 1 else "2" if need == 2 else "3..7" if need < 8 else ">=8")

    for i in range(workload(40, 12)):
        no_room = i % 4 == 3
        target = 600 if no_room else rng.randint(100, 1600)
        while bench.rxq.num_free >= 2 and len(posted) < 12 and room() < target:
            ndesc = rng.randint(1, 2)
            lens = [rng.randint(8, 160) for _ in range(ndesc)]
            posted.append((bench.post_rx(lens, [rng.randrange(bench.lanes) for _ in lens]), sum(lens)))
            cov.hit("desc_per_chain", ndesc)
        await bench.publish(bench.rxq)
        if no_room:
            while room() - HDR_SIZE >= MTU + 14:  # leftovers too large to run out of: use them up first
                await place(rng.randbytes(MTU + 14))
            before, writes = bench.rxq.used_idx(), len(idx_writes)
            await bench.source.send(rng.randbytes(rng.randint(room() - HDR_SIZE + 1, MTU + 14)))
            await bench.source.wait()
            await bench.quiet(400)
            assert bench.rxq.used_idx() == before and len(idx_writes) == writes, "a frame without room was placed"
            # the device may have written into the chains it gathered before running out: canaries back for rx_data
            for head, _ in posted:
                for base, addr, n in bench.rx_posted[RXQ, head]:
                    bench.mem.write(base, CANARY * (addr - base + n + CANARY_SLACK))
            cov.hit("outcome", "no_room_dropped")
            continue
        top = min(MTU + 14, room() - HDR_SIZE)
        length = rng.choice([rng.randint(14, 60), rng.randint(14, top), top])
        await place(rng.randbytes(min(length, top)))
    assert bench.rxq.anomalies == []
