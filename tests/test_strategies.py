"""The public hypothesis strategies (testbenches/strategies.py): every draw stays within its documented
bounds, and a user's own property test written against the public modules passes on the behavioral model
and fails on seeded bugs (tests/broken_models.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from backend.targets import default_registry
from backend.virtio.features import DEFINED_NET_PCI, F, NetF, bits, dependency_violations, has
from backend.virtio.net_hdr import HDR_SIZE
from backend.virtio.split_ring import DESC_SIZE
from sim.memory import Allocator, GuestMemory
from testbenches import strategies
from testbenches.conformance.chains import add_chain, written_bytes
from testbenches.conformance.harness import GUEST_MEMORY_BASE, RING_MEM_SIZE, Rig
from testbenches.driver.split_ring import DriverSplitQueue
from testbenches.driver.virtio_net import choose_features
from testbenches.frames import MAX_LEN, MIN_LEN, SEQ_MAX, seq_of, test_frame
from testbenches.strategies import (
    MAX_FRAME,
    MIN_FRAME,
    Chain,
    Layout,
    Workload,
    chains,
    feature_sets,
    frames,
    layouts,
    workloads,
)

ALL_BITS = (1 << 128) - 1
RingOf = Callable[[int], DriverSplitQueue]
QUICK = settings(max_examples=60, deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def ring_of() -> Iterator[RingOf]:
    """``ring_of(size)``: a driver-side split queue in guest memory; the one made before is closed (the
    fixture serves every hypothesis example of a test)."""
    with GuestMemory.single(RING_MEM_SIZE, gpa=GUEST_MEMORY_BASE) as mem:
        alloc = Allocator(GUEST_MEMORY_BASE, RING_MEM_SIZE)
        made: list[DriverSplitQueue] = []

        def make(size: int) -> DriverSplitQueue:
            while made:
                made.pop().close()
            made.append(DriverSplitQueue(mem, alloc, size))
            return made[-1]

        yield make
        while made:
            made.pop().close()


def test_the_module_docstring_example_runs_as_written() -> None:
    doc = strategies.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n``tests/test_strategies.py``", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(textwrap.dedent(block), "testbenches/strategies.py docstring", "exec"), namespace)
    run = namespace["test_my_device_loops_every_workload"]
    assert callable(run)
    run()


def test_importable_without_pytest() -> None:
    code = ("import sys, testbenches.strategies; "
            "print(sorted(m for m in ('pytest', '_pytest', 'rich') if m in sys.modules))")
    # Without hypothesis's third-party plugins: trio (which selenium brings) registers one that imports pytest.
    env = dict(os.environ, HYPOTHESIS_NO_PLUGINS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env=env)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --- feature sets ----------------------------------------------------------------------------------------


@QUICK
@given(offered=st.integers(0, ALL_BITS), keep=st.integers(0, ALL_BITS), data=st.data())
def test_feature_sets_are_valid_subsets_holding_the_required(offered: int, keep: int, data: st.DataObject) -> None:
    required = choose_features(offered, keep)  # any closed, defined, offered set may be required
    chosen = data.draw(feature_sets(offered, required=required))
    assert chosen & ~offered == 0 and chosen & ~DEFINED_NET_PCI == 0
    assert chosen & required == required
    assert dependency_violations(chosen) == []


@QUICK
@given(offered=st.integers(0, ALL_BITS), required=st.integers(0, ALL_BITS), data=st.data())
def test_feature_sets_ignoring_dependencies_are_any_offered_subset(offered: int, required: int,
                                                                   data: st.DataObject) -> None:
    required &= offered
    chosen = data.draw(feature_sets(offered, respect_dependencies=False, required=required))
    assert chosen & ~offered == 0 and chosen & required == required


def test_feature_sets_reach_dependents_and_shrink_to_the_required() -> None:
    offered = DEFINED_NET_PCI
    v1 = bits(F.VERSION_1)
    # A dependent bit is drawn together with its prerequisite, never without it.
    got = find(feature_sets(offered, required=v1), lambda s: has(s, NetF.GUEST_TSO4))
    assert has(got, NetF.GUEST_CSUM)
    assert find(feature_sets(offered, required=v1), lambda s: True) == v1
    broken = find(feature_sets(offered, respect_dependencies=False), lambda s: bool(dependency_violations(s)))
    assert dependency_violations(broken)


@pytest.mark.parametrize(("offered", "kwargs", "message"), [
    (bits(F.VERSION_1), {"required": bits(F.EVENT_IDX)}, "EVENT_IDX are not offered"),
    (DEFINED_NET_PCI, {"required": bits(NetF.GUEST_TSO4)}, "GUEST_TSO4 lack their prerequisites"),
    (1 << 127, {"required": 1 << 127}, "not offered and defined for virtio-net"),
    (1 << 128, {}, "128-bit masks"),
])
def test_feature_sets_refuse_impossible_requirements(offered: int, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        feature_sets(offered, **kwargs)  # type: ignore[arg-type]


# --- layouts and chains ------------------------------------------------------------------------------------


@QUICK
@given(total=st.integers(0, 3000), exp=st.integers(0, 15), indirect=st.booleans(), long_chains=st.booleans(),
       data=st.data())
def test_layouts_cover_the_buffer_within_the_ring(total: int, exp: int, indirect: bool, long_chains: bool,
                                                  data: st.DataObject) -> None:
    size = 1 << exp
    lay = data.draw(layouts(total, size, indirect, long_chains))
    assert 1 <= lay.pieces() <= size and lay.descriptors() <= size
    assert lay.pieces() <= 6 or (long_chains and lay.pieces() == size)
    assert sum(lay.lengths()) == total and len(lay.lengths()) == lay.pieces()
    assert lay.direct is None or (indirect and 0 <= lay.direct < lay.pieces())
    blob = bytes(i & 0xFF for i in range(total))
    assert b"".join(lay.split(blob)) == blob


def test_layouts_draw_whole_ring_chains_and_indirect_tails() -> None:
    assert find(layouts(100, 64, False), lambda lay: lay.pieces() == 64).pieces() == 64
    got = find(layouts(100, 8, True), lambda lay: lay.direct is not None and lay.direct > 0)
    assert got.direct is not None and got.descriptors() == got.direct + 1
    with pytest.raises(ValueError, match="power of two"):
        layouts(10, 3, False)
    with pytest.raises(ValueError, match="given 3"):
        Layout(4, (), None).split(b"abc")


@QUICK
@given(exp=st.integers(0, 8), indirect=st.booleans(), data=st.data())
def test_layouts_post_as_drawn(ring_of: RingOf, exp: int, indirect: bool, data: st.DataObject) -> None:
    size = 1 << exp
    total = data.draw(st.integers(0, 2000))
    lay = data.draw(layouts(total, size, indirect))
    ring = ring_of(size)
    posted = add_chain(ring, [], lay.lengths(), direct=lay.direct)
    assert [n for _, n in posted.writable] == lay.lengths()
    assert ring.num_free == size - lay.descriptors()
    if lay.direct is not None:
        assert posted.tables[-1][1] == DESC_SIZE * (lay.pieces() - lay.direct)


@QUICK
@given(exp=st.integers(1, 8), indirect=st.booleans(), readable=st.integers(0, 600), writable=st.integers(0, 600),
       data=st.data())
def test_chains_carry_both_sides_within_the_ring(ring_of: RingOf, exp: int, indirect: bool, readable: int,
                                                 writable: int, data: st.DataObject) -> None:
    size = 1 << exp
    if not readable + writable:
        with pytest.raises(ValueError, match="carries nothing"):
            chains(size, indirect)
        return
    chain: Chain = data.draw(chains(size, indirect, readable=readable, writable=writable))
    assert chain.pieces() <= size and chain.descriptors() <= size
    assert sum(chain.readable) == readable and sum(chain.writable) == writable
    assert (len(chain.readable) > 0) == (readable > 0) and (len(chain.writable) > 0) == (writable > 0)
    assert chain.direct is None or (indirect and 0 <= chain.direct < chain.pieces())
    blob = bytes(i & 0xFF for i in range(readable))
    ring = ring_of(size)
    posted = add_chain(ring, chain.split(blob), list(chain.writable), direct=chain.direct)
    assert [n for _, n in posted.readable] == list(chain.readable)
    assert [n for _, n in posted.writable] == list(chain.writable)
    assert b"".join(ring.mem.read(a, n) for a, n in posted.readable if n) == blob


def test_chains_need_room_for_both_sides() -> None:
    with pytest.raises(ValueError, match="queue of 1"):
        chains(1, False, readable=4, writable=4)
    assert find(chains(1, False, readable=4), lambda c: True) == Chain((4,), (), None)


# --- workloads ---------------------------------------------------------------------------------------------


@QUICK
@given(top=st.integers(0, 15), can_event=st.booleans(), can_indirect=st.booleans(),
       hdr_len=st.sampled_from([10, 12, 20]), data=st.data())
def test_workloads_stay_within_their_bounds(top: int, can_event: bool, can_indirect: bool, hdr_len: int,
                                            data: st.DataObject) -> None:
    lo = data.draw(st.integers(MIN_FRAME, 200))
    hi = data.draw(st.integers(lo, 9000))
    most = data.draw(st.integers(1, 12))
    w = data.draw(workloads(top, can_event, can_indirect, hdr_len, min_frame=lo, max_frame=hi, max_frames=most))
    assert 0 <= w.exp <= top and w.size == 1 << w.exp
    assert (not w.event_idx or can_event) and (not w.indirect or can_indirect)
    assert 1 <= len(w.frames) <= most
    for length, tx, rx in w.frames:
        assert lo <= length <= hi
        assert tx.total == hdr_len + length and rx.total == hdr_len + hi
        for lay in (tx, rx):
            assert lay.pieces() <= min(w.size, 6)
            assert lay.direct is None or w.indirect


def test_workload_defaults_and_refusals() -> None:
    w = find(workloads(4, True, True, HDR_SIZE), lambda w: len(w.frames) == 10)
    assert all(MIN_FRAME <= f.length <= MAX_FRAME for f in w.frames)
    for kwargs, message in [({"top": 16}, "queue sizes"), ({"min_frame": 13}, "frame lengths"),
                            ({"max_frame": MAX_LEN + 1}, "frame lengths"), ({"max_frames": 0}, "at most 0")]:
        args = {"top": 4, "can_event": True, "can_indirect": True, "hdr_len": HDR_SIZE, **kwargs}
        with pytest.raises(ValueError, match=message):
            workloads(**args)  # type: ignore[arg-type]


# --- frames ---------------------------------------------------------------------------------------------------


@QUICK
@given(data=st.data(), lo=st.integers(MIN_LEN, 3000))
def test_frames_parse_and_carry_their_seq(data: st.DataObject, lo: int) -> None:
    hi = data.draw(st.integers(lo, MAX_LEN))
    frame = data.draw(frames(lo, hi))
    assert lo <= len(frame) <= hi
    pkt = Ether(frame)
    assert pkt.haslayer(IP) and pkt.haslayer(UDP) and pkt[IP].len == len(frame) - 14
    assert frame == test_frame(seq_of(frame), len(frame))
    assert seq_of(data.draw(frames(lo, hi, seq=SEQ_MAX))) == SEQ_MAX


def test_frames_refuse_lengths_no_test_frame_has() -> None:
    assert len(find(frames(), lambda f: True)) == MIN_LEN
    with pytest.raises(ValueError, match="make_frame"):
        frames(MIN_LEN - 1)
    with pytest.raises(ValueError, match="sequence number"):
        frames(seq=SEQ_MAX + 1)


# --- a user's own property test, written only against the public modules -------------------------------


def loop_every_workload(spec: str, examples: int) -> None:
    """What a user writes: random valid feature sets and ring workloads through a device on a loopback
    wire; every frame must come back whole, with its sequence number, and used.len exact."""
    pci = default_registry().open(spec)
    try:
        with GuestMemory.single(RING_MEM_SIZE, gpa=GUEST_MEMORY_BASE) as mem:
            rig = Rig(pci, mem)
            # Ring options come from the workload; packed rings, in-order batching and the hash report
            # header are left to tests of their own.
            offered = rig.offered & ~bits(F.RING_PACKED, F.IN_ORDER, NetF.HASH_REPORT)
            required = bits(F.VERSION_1, F.ACCESS_PLATFORM) & offered
            ring_bits = bits(F.EVENT_IDX, F.INDIRECT_DESC)

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate, Phase.shrink])
            @given(features=feature_sets(offered, required=required),
                   w=workloads(top=min(rig.max_queue_size.bit_length() - 1, 8), can_event=has(offered, F.EVENT_IDX),
                               can_indirect=has(offered, F.INDIRECT_DESC), hdr_len=HDR_SIZE, min_frame=MIN_LEN))
            def run(features: int, w: Workload) -> None:
                chosen = (features & ~ring_bits | (bits(F.EVENT_IDX) if w.event_idx else 0)
                          | (bits(F.INDIRECT_DESC) if w.indirect else 0))
                rig.bring_up(chosen, w.size)
                for seq, (length, tx, rx) in enumerate(w.frames):
                    frame = test_frame(seq, length)
                    r = add_chain(rig.rx, [], rx.lengths(), direct=rx.direct)
                    rig.publish(rig.RX)
                    t = add_chain(rig.tx, tx.split(rig.tx_header() + frame), [], direct=tx.direct)
                    rig.publish(rig.TX)
                    got = rig.complete(rig.RX, {r.head: r}, 1)
                    sent = rig.complete(rig.TX, {t.head: t}, 1)
                    back = written_bytes(mem, r, got[0][1]) if got else b""
                    rig.release(r)
                    rig.release(t)
                    assert got and sent, f"frame {seq}: {'not received' if not got else 'transmit buffer not used'}"
                    assert got[0][1] == HDR_SIZE + length, f"frame {seq}: used.len {got[0][1]}, wrote {length}"
                    assert back[HDR_SIZE:] == frame and seq_of(back[HDR_SIZE:]) == seq, f"frame {seq} differs"

            try:
                run()
            finally:
                rig.close()
    finally:
        pci.close()


def test_user_property_passes_on_the_model() -> None:
    loop_every_workload("sim:virtio-net,wire=loopback", examples=40)


@pytest.mark.parametrize("variant", ["NextIgnored", "UsedLenOffByOne"])
def test_user_property_fails_on_a_broken_model(variant: str) -> None:
    # Hypothesis reports one shrunk failure, or a group when it found distinct ones: all must be the
    # property's assertions, not errors of the harness.
    with pytest.raises((AssertionError, ExceptionGroup)) as info:
        loop_every_workload(f"sim:virtio-net,wire=loopback,model=tests.broken_models:{variant}", examples=40)
    failures = info.value.exceptions if isinstance(info.value, ExceptionGroup) else (info.value,)
    assert all(isinstance(f, AssertionError) and str(f).startswith("frame ") for f in failures), failures
