"""Hypothesis strategies for virtio-net property tests: feature sets, descriptor layouts and chains, ring
workloads, test frames.

These are the strategies the conformance suite's own property checks draw from
(``testbenches/conformance/checks/test_split_properties.py``, ``test_features.py``), published so that a
vendor or user can write property tests of their own device against the same inputs. The module needs
the ``bench`` extra (hypothesis, scapy) but not pytest. Every strategy shrinks towards the simplest case:
fewer feature bits, fewer descriptors, shorter frames, smaller queues.

A property test of your own, on any target the registry opens (here the behavioral model on a loopback
wire): random valid feature sets and ring workloads, every frame must come back whole::

    from hypothesis import given, settings

    from backend.targets import default_registry
    from backend.virtio.features import F, NetF, bits
    from backend.virtio.net_hdr import HDR_SIZE
    from sim.memory import GuestMemory
    from testbenches.conformance.chains import add_chain, written_bytes
    from testbenches.conformance.harness import GUEST_MEMORY_BASE, RING_MEM_SIZE, Rig
    from testbenches.frames import MIN_LEN, test_frame
    from testbenches.strategies import Workload, feature_sets, workloads

    def test_my_device_loops_every_workload() -> None:
        pci = default_registry().open("sim:virtio-net,wire=loopback")
        with GuestMemory.single(RING_MEM_SIZE, gpa=GUEST_MEMORY_BASE) as mem:
            rig = Rig(pci, mem)
            offered = rig.offered & ~bits(F.RING_PACKED, F.IN_ORDER, NetF.HASH_REPORT)

            @settings(max_examples=40, deadline=None)
            @given(features=feature_sets(offered, required=bits(F.VERSION_1, F.ACCESS_PLATFORM)),
                   w=workloads(top=8, can_event=False, can_indirect=True, hdr_len=HDR_SIZE, min_frame=MIN_LEN))
            def run(features: int, w: Workload) -> None:
                rig.bring_up(features & ~bits(F.EVENT_IDX, F.INDIRECT_DESC)
                             | (bits(F.INDIRECT_DESC) if w.indirect else 0), w.size)
                for seq, (length, tx, rx) in enumerate(w.frames):
                    frame = test_frame(seq, length)
                    r = add_chain(rig.rx, [], rx.lengths(), direct=rx.direct)
                    rig.publish(rig.RX)
                    t = add_chain(rig.tx, tx.split(rig.tx_header() + frame), [], direct=tx.direct)
                    rig.publish(rig.TX)
                    [(_, used_len)] = rig.complete(rig.RX, {r.head: r}, 1)
                    rig.complete(rig.TX, {t.head: t}, 1)
                    assert written_bytes(mem, r, used_len)[HDR_SIZE:] == frame
                    rig.release(r)
                    rig.release(t)

            try:
                run()
            finally:
                rig.close()
                pci.close()

``tests/test_strategies.py`` runs this example as written, and a fuller one (event index too, used.len
and sequence numbers checked) that passes on the model and fails on the seeded bugs of
``tests/broken_models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from hypothesis import strategies as st

from backend.virtio.features import DEFINED_NET_PCI, describe, has
from backend.virtio.split_ring import MAX_QUEUE_SIZE, is_valid_split_size
from testbenches.conformance.chains import split_at
from testbenches.driver.virtio_net import choose_features
from testbenches.frames import MAX_LEN, MIN_LEN, SEQ_MAX, test_frame

__all__ = [
    "MAX_FRAME",
    "MIN_FRAME",
    "Chain",
    "Layout",
    "Workload",
    "WorkloadFrame",
    "chains",
    "feature_sets",
    "frames",
    "layouts",
    "workloads",
]

#: The shortest frame a ring workload sends: a bare Ethernet header.
MIN_FRAME = 14
#: The longest frame a ring workload sends by default: a 1500-byte MTU packet with its Ethernet header.
MAX_FRAME = 1514
#: Most descriptors an ordinary drawn chain has; longer ones (up to the queue size) are drawn rarely.
SHORT_CHAIN = 6
#: Chains longer than this get deterministic cut points: drawing 32767 of them would blow hypothesis's
#: example budget for no gain (the device sees the same walk).
DRAWN_CUTS = 64
#: feature bits are 0..127 on the PCI transport (four 32-bit feature select words).
FEATURE_BITS = 128


# --- feature sets ----------------------------------------------------------------------------------------


def feature_sets(offered: int, *, respect_dependencies: bool = True, required: int = 0) -> st.SearchStrategy[int]:
    """Feature sets a driver could acknowledge for a device that offers ``offered``.

    Draws a subset of ``offered`` that always contains ``required``. With ``respect_dependencies`` (the
    default) the set is one the spec lets a driver accept: only bits virtio 1.4 defines for a network
    device over PCI (FEAT-DRV-01/04), closed under the 5.1.3.1 dependency table
    (``backend.virtio.features.NET_DEPENDENCIES``; a drawn bit whose prerequisite was not drawn is
    dropped, FEAT-DRV-02). Without it, any subset of ``offered`` (undefined bits and broken dependencies
    included), for tests of how a device refuses. Shrinks towards ``required`` alone.

    ``ValueError`` when ``required`` is not offered (or, with ``respect_dependencies``, not defined for
    net over PCI or itself breaking a dependency row).
    """
    if not 0 <= offered < 1 << FEATURE_BITS or not 0 <= required < 1 << FEATURE_BITS:
        raise ValueError(f"feature sets are {FEATURE_BITS}-bit masks: offered {offered:#x}, required {required:#x}")
    pool = offered & DEFINED_NET_PCI if respect_dependencies else offered
    if required & ~pool:
        what = "offered and defined for virtio-net over PCI" if respect_dependencies else "offered"
        raise ValueError(f"required features {describe(required & ~pool)} are not {what} ({describe(offered)})")
    if respect_dependencies and choose_features(required, required) != required:
        lost = required & ~choose_features(required, required)
        raise ValueError(f"required features {describe(lost)} lack their prerequisites in {describe(required)}")
    free = [b for b in range(FEATURE_BITS) if has(pool, b) and not has(required, b)]

    def build(picked: list[bool]) -> int:
        chosen = required | sum(1 << b for b, on in zip(free, picked, strict=True) if on)
        # The required bits form a closed set, so closing never drops one of them.
        return choose_features(chosen, chosen) if respect_dependencies else chosen

    return st.lists(st.booleans(), min_size=len(free), max_size=len(free)).map(build)


# --- descriptor layouts and chains ------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How one buffer of ``total`` bytes is cut into descriptors: sorted cut offsets (repeats make
    zero-length descriptors), and where the chain moves into an indirect table.

    ``direct`` is None for a chain of plain descriptors, else the number of pieces placed as plain
    descriptors before one descriptor that points at an indirect table holding the rest (at least one):
    the ``direct`` argument of :func:`testbenches.conformance.chains.add_chain`. A device-readable
    buffer is posted with ``add_chain(ring, layout.split(data), [], direct=layout.direct)``, a
    device-writable one with ``add_chain(ring, [], layout.lengths(), direct=layout.direct)``.
    """

    total: int
    cuts: tuple[int, ...]
    direct: int | None

    def pieces(self) -> int:
        """Buffers in the chain (descriptors, counting those in an indirect table)."""
        return len(self.cuts) + 1

    def descriptors(self) -> int:
        """Entries the chain takes in the queue's descriptor table."""
        return self.pieces() if self.direct is None else self.direct + 1

    def lengths(self) -> list[int]:
        """The byte length of every piece, in chain order."""
        return [len(p) for p in split_at(bytes(self.total), self.cuts)]

    def split(self, data: bytes) -> list[bytes]:
        """``data`` (``total`` bytes) cut into the pieces."""
        if len(data) != self.total:
            raise ValueError(f"layout for {self.total} bytes given {len(data)}")
        return split_at(data, self.cuts)


def _check_ring(size: int) -> None:
    if not is_valid_split_size(size):
        raise ValueError(f"queue size {size}: a split queue is a power of two up to {MAX_QUEUE_SIZE}")


def _cut(draw: st.DrawFn, total: int, n: int) -> tuple[int, ...]:
    """``n - 1`` sorted cut points in ``0..total`` (repeats allowed: nothing in 2.7.5 forbids zero-length
    descriptors); beyond :data:`DRAWN_CUTS` pieces a fixed spread."""
    if n <= DRAWN_CUTS:
        return tuple(sorted(draw(st.lists(st.integers(0, total), min_size=n - 1, max_size=n - 1))))
    return tuple(sorted((i * 7919) % (total + 1) for i in range(n - 1)))


@st.composite
def _layouts(draw: st.DrawFn, total: int, size: int, indirect: bool, long_chains: bool) -> Layout:
    most = min(size, SHORT_CHAIN)
    n = draw(st.integers(1, most))
    if long_chains and size > most and draw(st.integers(0, 15)) == 0:
        n = size  # a chain exactly as long as the queue (SPLIT-DRV-08 allows it)
    cuts = _cut(draw, total, n)
    direct = draw(st.integers(0, n - 1)) if indirect and draw(st.booleans()) else None
    return Layout(total, cuts, direct)


def layouts(total: int, size: int, indirect: bool, long_chains: bool = True) -> st.SearchStrategy[Layout]:
    """A descriptor layout for one buffer of ``total`` bytes on a queue of ``size`` entries.

    Draws 1 to min(``size``, 6) pieces with cut points anywhere in ``0..total`` (zero-length pieces
    included); with ``long_chains``, one draw in sixteen is a chain of exactly ``size`` pieces (the
    longest a driver may post, SPLIT-DRV-08). With ``indirect``, half the draws put the tail of the
    chain (at least one piece) in an indirect table after 0 to pieces-1 plain descriptors. A layout
    never has more pieces than ``size``, so it never takes more than ``size`` descriptor table entries.
    """
    if total < 0:
        raise ValueError(f"a buffer of {total} bytes")
    _check_ring(size)
    return _layouts(total, size, indirect, long_chains)


@dataclass(frozen=True)
class Chain:
    """One descriptor chain as :func:`testbenches.conformance.chains.add_chain` posts it: the lengths of
    its device-readable pieces, then of its device-writable ones (readable first, SPLIT-DRV-02), and
    ``direct`` as in :class:`Layout` (counted over the whole chain).

    Post it with ``add_chain(ring, chain.split(data), chain.writable, direct=chain.direct)``.
    """

    readable: tuple[int, ...]
    writable: tuple[int, ...]
    direct: int | None

    def pieces(self) -> int:
        return len(self.readable) + len(self.writable)

    def descriptors(self) -> int:
        """Entries the chain takes in the queue's descriptor table."""
        return self.pieces() if self.direct is None else self.direct + 1

    def split(self, data: bytes) -> list[bytes]:
        """``data`` (the sum of :attr:`readable` bytes) cut into the readable pieces."""
        if len(data) != sum(self.readable):
            raise ValueError(f"chain reads {sum(self.readable)} bytes, given {len(data)}")
        out, pos = [], 0
        for n in self.readable:
            out.append(data[pos:pos + n])
            pos += n
        return out


@st.composite
def _chains(draw: st.DrawFn, size: int, indirect: bool, readable: int, writable: int, long_chains: bool) -> Chain:
    need = (readable > 0) + (writable > 0)
    most = min(size, max(SHORT_CHAIN, need))
    n = draw(st.integers(need, most))
    if long_chains and size > most and draw(st.integers(0, 15)) == 0:
        n = size
    n_read = 0 if not readable else n if not writable else draw(st.integers(1, n - 1))
    n_write = n - n_read
    reads = split_at(bytes(readable), _cut(draw, readable, n_read)) if n_read else []
    writes = split_at(bytes(writable), _cut(draw, writable, n_write)) if n_write else []
    direct = draw(st.integers(0, n - 1)) if indirect and draw(st.booleans()) else None
    return Chain(tuple(len(p) for p in reads), tuple(len(p) for p in writes), direct)


def chains(size: int, indirect: bool, *, readable: int = 0, writable: int = 0,
           long_chains: bool = True) -> st.SearchStrategy[Chain]:
    """A chain that carries ``readable`` device-readable bytes then ``writable`` device-writable bytes on a
    queue of ``size`` entries (a request with its reply room, as block or control queues use).

    Draws as :func:`layouts` does: at least one piece for each non-zero side, at most
    max(min(``size``, 6), sides) pieces in all, one draw in sixteen exactly ``size`` pieces with
    ``long_chains``, half the draws with an indirect tail when ``indirect``. Never more pieces than
    ``size``. ``ValueError`` when both sides are empty or the queue cannot hold one piece per side.
    """
    if readable < 0 or writable < 0 or not readable + writable:
        raise ValueError(f"a chain of {readable} readable and {writable} writable bytes carries nothing")
    _check_ring(size)
    if (readable > 0) + (writable > 0) > size:
        raise ValueError(f"a queue of {size} cannot hold a chain with both readable and writable pieces")
    return _chains(size, indirect, readable, writable, long_chains)


# --- ring workloads ---------------------------------------------------------------------------------------


class WorkloadFrame(NamedTuple):
    """One frame of a workload: its length, how its transmit buffer (virtio-net header and frame) is cut,
    and how the receive buffer posted for it (header and :attr:`Workload.max_frame` bytes) is cut."""

    length: int
    tx: Layout
    rx: Layout


@dataclass(frozen=True)
class Workload:
    """Frames through one queue pair with drawn ring options: queue size ``2**exp``, VIRTIO_F_EVENT_IDX
    and VIRTIO_F_INDIRECT_DESC on or off, and per frame its length and both chains' layouts."""

    exp: int
    event_idx: bool
    indirect: bool
    frames: tuple[WorkloadFrame, ...]

    @property
    def size(self) -> int:
        """The queue size."""
        return 1 << self.exp


@st.composite
def _workloads(draw: st.DrawFn, top: int, can_event: bool, can_indirect: bool, hdr_len: int, min_frame: int,
               max_frame: int, max_frames: int) -> Workload:
    exp = draw(st.integers(0, top))
    size = 1 << exp
    event_idx = can_event and draw(st.booleans())
    indirect = can_indirect and draw(st.booleans())
    out = []
    for _ in range(draw(st.integers(1, max_frames))):
        length = draw(st.integers(min_frame, max_frame))
        tx = draw(_layouts(hdr_len + length, size, indirect, False))
        rx = draw(_layouts(hdr_len + max_frame, size, indirect, False))
        out.append(WorkloadFrame(length, tx, rx))
    return Workload(exp, event_idx, indirect, tuple(out))


def workloads(top: int, can_event: bool, can_indirect: bool, hdr_len: int, *, min_frame: int = MIN_FRAME,
              max_frame: int = MAX_FRAME, max_frames: int = 10) -> st.SearchStrategy[Workload]:
    """A ring workload: queue size 2**0 to 2**``top``, EVENT_IDX drawn only when ``can_event`` and
    INDIRECT_DESC only when ``can_indirect``, and 1 to ``max_frames`` frames of ``min_frame`` to
    ``max_frame`` bytes.

    Each frame's transmit layout cuts ``hdr_len`` + its length bytes, its receive layout ``hdr_len`` +
    ``max_frame`` (room for any frame of the workload); both have 1 to min(size, 6) pieces and, when
    indirect is on, half of them an indirect tail. No layout has more pieces than the queue size.
    Frames shorter than :data:`testbenches.frames.MIN_LEN` cannot carry a sequence number: send the
    first ``length`` bytes of a longer test frame (``testbenches.conformance.harness.make_frame``).
    """
    if not 0 <= top <= MAX_QUEUE_SIZE.bit_length() - 1:
        raise ValueError(f"top {top}: queue sizes are 2**0 to 2**{MAX_QUEUE_SIZE.bit_length() - 1}")
    if hdr_len < 0:
        raise ValueError(f"virtio-net header of {hdr_len} bytes")
    if not MIN_FRAME <= min_frame <= max_frame <= MAX_LEN:
        raise ValueError(f"frame lengths {min_frame}..{max_frame}: must lie in {MIN_FRAME}..{MAX_LEN}")
    if max_frames < 1:
        raise ValueError(f"a workload of at most {max_frames} frames")
    return _workloads(top, can_event, can_indirect, hdr_len, min_frame, max_frame, max_frames)


# --- frames -----------------------------------------------------------------------------------------------


def frames(min_len: int = MIN_LEN, max_len: int = MAX_FRAME, *, seq: int | None = None) -> st.SearchStrategy[bytes]:
    """Test frames (:func:`testbenches.frames.test_frame`: Ethernet/IPv4/UDP, no FCS) of ``min_len`` to
    ``max_len`` bytes, within :data:`~testbenches.frames.MIN_LEN` (46) to
    :data:`~testbenches.frames.MAX_LEN`, carrying sequence number ``seq`` (default: drawn from 0 to
    :data:`~testbenches.frames.SEQ_MAX`). :func:`testbenches.frames.seq_of` reads it back; scapy parses
    every frame. Shrinks towards ``min_len`` and sequence number 0.
    """
    if not MIN_LEN <= min_len <= max_len <= MAX_LEN:
        raise ValueError(f"test frames are {MIN_LEN} to {MAX_LEN} bytes, asked {min_len}..{max_len} "
                         f"(shorter ones: the first bytes of a test frame, harness.make_frame)")
    if seq is not None and not 0 <= seq <= SEQ_MAX:
        raise ValueError(f"sequence number {seq}: must be 0 to {SEQ_MAX}")
    seqs = st.just(seq) if seq is not None else st.integers(0, SEQ_MAX)
    return st.builds(test_frame, seqs, st.integers(min_len, max_len))
