"""The compiled TX reader (models/virtio_net/fast_tx.py) against the hooked per-chain path: same frames on the
wire, same used ring, same errors and faults, on random rings whose buffers lie in two mappings, outside
them, or across an edge, from any ring position; with VIRTIO_NET_F_CSUM negotiated too (then every chain takes the
per-chain path, which reads its header: the buffers' bytes there ask for NEEDS_CSUM now and then)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.pci.device import DmaPerm
from backend.virtio.features import F, NetF, bits
from backend.virtio.net_hdr import HDR_SIZE, NetHdr
from backend.virtio.split_ring import U16, DescFlags
from models.virtio_net.device import DEFAULT_FEATURES
from models.virtio_net.fast_tx import take_plain_tx, take_plain_tx_used
from sim.memory import GuestMemory
from testbenches.frames import test_frame
from tests.test_model_datapath import BASE, BUF, PER_CHAIN, _stats, tx_used_as_read
from tests.test_model_device import MEM, Guest, fired

FAR = 0x4000_0000  # IOVA of a second mapping that holds frames only
FAR_SIZE = 0x4000
SIZE = 16
#: The default offer and VIRTIO_NET_F_CSUM (negotiated or not by each example).
OFFER = f"features={DEFAULT_FEATURES | bits(NetF.CSUM):#x}"

#: Where a chain's one buffer lies: the first mapping, the second, a hole, across the first mapping's end,
#: across the second's end.
PLACES = st.sampled_from([BUF, BUF + 0x300, FAR, FAR + 0x1000, MEM + 0x1000, MEM - 40, FAR + FAR_SIZE - 40])
CHAINS = st.tuples(
    PLACES,
    st.sampled_from([0, 5, HDR_SIZE, HDR_SIZE + 1, 60, HDR_SIZE + 64, 200]),
    # mostly plain readable; now and then NEXT, WRITE, INDIRECT (each for parse_chain to judge)
    st.sampled_from([0, 0, 0, 0, 0, DescFlags.NEXT, DescFlags.WRITE, DescFlags.INDIRECT]),
    st.integers(0, SIZE + 1),  # next
)


def _run(spec: str, features: int, chains: list[tuple[int, int, int, int]], heads: list[int], pre: int,
         far_perm: DmaPerm) -> tuple[object, ...]:
    with Guest(f"virtio-net,wire=none,qsize={SIZE},{OFFER}" + (f",{spec}" if spec else "")) as g, \
            GuestMemory.single(FAR_SIZE) as far:
        fd, off = far.fd_offset(0)
        g.dev.dma_map(FAR, FAR_SIZE, fd, off, far_perm)
        col = g.collect()
        _rx, tx = g.bring_up(features)
        g.mem.write(BUF, bytes(range(256)) * 8)
        far.write(0, bytes(range(255, -1, -1)) * (FAR_SIZE // 256))
        # Move the ring position first (the reader's slots wrap): ``pre`` plain chains taken and returned.
        for i in range(pre):
            tx.put_desc(i, BUF + 0x800, HDR_SIZE + 64, 0, 0)
        if pre:
            g.mem.write(BUF + 0x800, NetHdr().pack() + test_frame(0, 64))
            tx.add(list(range(pre)))
            tx.kick()
        for i, (addr, length, flags, nxt) in enumerate(chains):
            tx.put_desc(i, addr, length, flags, nxt)
        tx.add(heads)
        tx.kick()
        used = tx_used_as_read(g.mem.read(tx.used, 4 + 8 * tx.size), tx.size, features, g.status())
        return (col.take(), used, g.status(), [e.req_id for e in g.model.errors],
                [(f.iova, f.size) for f in g.dev.dma_faults()], _stats(g.model), fired(g.calls[1])), \
            g.model.stats.tx_bulk


@given(chains=st.lists(CHAINS, min_size=SIZE, max_size=SIZE),
       heads=st.lists(st.integers(0, SIZE + 1), min_size=1, max_size=SIZE),
       pre=st.integers(0, SIZE - 1), in_order=st.booleans(), event_idx=st.booleans(),
       far_perm=st.sampled_from([DmaPerm.RW, DmaPerm.READ, DmaPerm.WRITE]), csum=st.booleans())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_compiled_tx_agrees_with_the_hooked_path(chains: list[tuple[int, int, int, int]], heads: list[int],
                                                 pre: int, in_order: bool, event_idx: bool,
                                                 far_perm: DmaPerm, csum: bool) -> None:
    features = BASE | (bits(F.IN_ORDER) if in_order else 0) | (bits(F.EVENT_IDX) if event_idx else 0) \
        | (bits(NetF.CSUM) if csum else 0)
    fast, taken = _run("", features, chains, heads, pre, far_perm)
    hooked, hooked_taken = _run(PER_CHAIN, features, chains, heads, pre, far_perm)
    assert fast == hooked
    assert hooked_taken == 0  # a variant overriding a per-chain hook never reaches the compiled reader
    first = chains[heads[0]] if heads[0] < SIZE else None
    if csum:
        assert taken == 0  # headers are read on the per-chain path only
    elif first is not None and first[2] == 0 and first[1] > HDR_SIZE and first[0] in (BUF, BUF + 0x300):
        assert taken >= 1 + pre  # a plain first chain in the ring's mapping goes through the compiled reader


def _reference(avail: list[int], start: int, n: int, table: list[tuple[int, int, int, int]], mem: bytes,
               first: int, hdr: int) -> tuple[int, bytes, list[int], list[int]]:
    """What the reader must take, written out by the rule in its docstring."""
    frames: list[bytes] = []
    lens: list[int] = []
    heads: list[int] = []
    last = first + len(mem) - 1
    for k in range(n):
        head = avail[(start + k) % len(avail)]
        if head >= len(avail):
            break
        addr, length, flags, _ = table[head]
        if flags or length <= hdr or not first <= addr <= last or addr + length - 1 > last:
            break
        frames.append(mem[addr - first + hdr:addr - first + length])
        lens.append(length - hdr)
        heads.append(head)
    return len(heads), b"".join(frames), lens, heads


@given(size=st.sampled_from([1, 2, 8, 64]), data=st.data(), readonly=st.booleans())
@settings(max_examples=200, deadline=None)
def test_reader_takes_exactly_the_plain_prefix(size: int, data: st.DataObject, readonly: bool) -> None:
    first = data.draw(st.sampled_from([0, 0x1000, (1 << 64) - 0x1000]))
    mem = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).integers(0, 256, 0x1000, dtype=np.uint8).tobytes()
    addr = st.one_of(st.integers(first - 64, first + 0x1000 + 64).filter(lambda a: 0 <= a < 1 << 64),
                     st.just(first + 0x100))
    table = data.draw(st.lists(st.tuples(addr, st.integers(0, 300), st.sampled_from([0, 0, 0, 1, 2, 4]),
                                         st.integers(0, 0xFFFF)), min_size=size, max_size=size))
    avail = data.draw(st.lists(st.integers(0, size + 2), min_size=size, max_size=size))
    start = data.draw(st.integers(0, size - 1))
    n = data.draw(st.integers(0, size))
    words = np.array([[a, ln | f << 32 | nx << 48] for a, ln, f, nx in table], dtype=np.uint64)
    ring = np.array(avail, dtype=np.uint16)
    arr = np.frombuffer(mem, dtype=np.uint8).copy()
    for a in (words, ring, arr):
        a.flags.writeable = not readonly
    heads, lens = np.empty(n, np.uint32), np.empty(n, np.int64)
    k, out, uniform = take_plain_tx(ring, start, n, words, arr, np.uint64(first), np.uint64(first + 0xFFF),
                                    np.uint64(HDR_SIZE), heads, lens)
    want = _reference(avail, start, n, table, mem, first, HDR_SIZE)
    assert (k, out.tobytes(), lens[:k].tolist(), heads[:k].tolist()) == want
    assert uniform == (want[2][0] if want[2] and len(set(want[2])) == 1 else -1)
    # the publishing reader: the same chains and frames, and the used ring written chunk by chunk
    chunk, in_order = data.draw(st.sampled_from([1, 3, 32])), data.draw(st.booleans())
    used_idx = data.draw(st.sampled_from([0, 5, 0xFFFF - 2]))
    elems, used_words = np.full((size, 2), 0xEEEE, np.uint32), np.array([0, used_idx, 0], np.uint16)
    heads2, lens2 = np.empty(n, np.uint32), np.empty(n, np.int64)
    k2, out2, uniform2, new_idx = take_plain_tx_used(ring, start, n, words, arr, np.uint64(first),
                                                     np.uint64(first + 0xFFF), np.uint64(HDR_SIZE), heads2, lens2,
                                                     elems, used_words, used_idx, in_order, chunk)
    assert (k2, out2.tobytes(), lens2[:k2].tolist(), heads2[:k2].tolist(), uniform2) == (*want, uniform)
    assert new_idx == int(used_words[1]) == (used_idx + k2) & 0xFFFF
    written = {(used_idx + j) % size: want[3][j] for j in range(k2)
               if not in_order or j % chunk == chunk - 1 or j == k2 - 1}
    for slot in range(size):
        expect = [written[slot], 0] if slot in written else [0xEEEE, 0xEEEE]
        assert elems[slot].tolist() == expect, (slot, written)


def test_a_ring_moved_or_unmapped_is_read_again() -> None:
    """The cached ring arrays follow the mappings: after unmap and a new map the device reads the new memory."""
    with Guest(f"virtio-net,wire=none,qsize={SIZE}") as g:
        col = g.collect()
        _rx, tx = g.bring_up(BASE)
        for k in range(2):
            g.mem.write(BUF, NetHdr().pack() + test_frame(k, 64))
            tx.put_desc(k, BUF, HDR_SIZE + 64, 0, 0)
            tx.add([k])
            tx.kick()
            assert col.take() == [test_frame(k, 64)]
            fd, off = g.mem.fd_offset(0)
            g.dev.dma_unmap(0, MEM)  # the same memory mapped anew: the arrays over the old mapping are dropped
            g.dev.dma_map(0, MEM, fd, off, DmaPerm.RW)
        assert g.model.stats.tx_bulk == 2
        g.dev.dma_unmap(0, MEM)
        g.mem.write(tx.avail + 2, U16.pack(3))  # a chain made available with nothing mapped: a fault, not a read
        tx.kick()
        assert col.take() == [] and g.dev.dma_faults()
