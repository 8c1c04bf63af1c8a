"""Split virtqueue properties (hypothesis): random chains, ring sizes, indirect tables, event-idx thresholds,
and a thousand random ring workloads through driver and device with every frame checked byte for byte.

Each property shares one device across its examples (reset and re-initialised per example or workload),
is derandomized so CI sees the same examples every run, and fails with a shrunk counterexample (plain
asserts) so the evidence is the smallest failing workload.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.virtio.features import DeviceStatus, F, NetF, has
from backend.virtio.net_hdr import GSO_NONE, NetHdr
from backend.virtio.split_ring import VRING_AVAIL_F_NO_INTERRUPT
from testbenches.conformance.chains import Posted, add_chain, poison, written_bytes
from testbenches.conformance.falsify import falsified
from testbenches.conformance.harness import RING_MEM_SIZE, Bench, Rig, fitting_round, make_frame
from testbenches.conformance.plugin import Verdict
from testbenches.strategies import Workload, layouts, workloads

MIN_WORKLOADS = 1000
WORKLOADS_PER_EXAMPLE = 4
GUEST_OFFLOADS = sum(1 << f for f in (NetF.GUEST_CSUM, NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_UFO,
                                      NetF.GUEST_USO4, NetF.GUEST_USO6, NetF.GUEST_ECN, NetF.MRG_RXBUF))
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def _dead(rig: Rig) -> str:
    st_ = rig.status()
    if st_ & (DeviceStatus.DEVICE_NEEDS_RESET | DeviceStatus.FAILED):
        return f"device_status {st_:#x} after valid chains; device says: {rig.device_errors() or 'nothing'}"
    return ""



def _judge(verdict: Verdict, ids: tuple[str, ...], run: Callable[[], None], what: str) -> None:
    """Run a property and judge ``ids`` on it (those not already judged, e.g. not offered): a failing example,
    shrunk by hypothesis, is the evidence."""
    failure = "".join(falsified(run))
    for rid in ids:
        if not verdict.recorded(rid):
            verdict.check(rid, not failure, failure or what)


# --- random chains on random ring sizes ---------------------------------------------------------------


@pytest.mark.req("SPLIT-DEV-01", "SPLIT-DEV-08")
def test_random_chains_deliver_the_same_frame(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(bench.variant(qsize=32768, wire="loopback"), mem_size=RING_MEM_SIZE) as rig:
        feats = rig.features_for(indirect=True) or rig.features_for(indirect=False)
        assert feats is not None
        rig.bring_up(feats, 8)
        if not rig.looped(verdict, "SPLIT-DEV-01", "SPLIT-DEV-08"):
            return
        indirect = has(feats, F.INDIRECT_DESC)
        if not indirect:
            verdict.not_offered("SPLIT-DEV-08", "VIRTIO_F_INDIRECT_DESC not offered")
        top = rig.max_queue_size.bit_length() - 1
        hl = rig.hdr_len

        @settings(max_examples=60, **SETTINGS)  # type: ignore[arg-type]
        @given(data=st.data(), exp=st.integers(0, top), length=st.integers(14, 1514))
        def run(data: st.DataObject, exp: int, length: int) -> None:
            size = 1 << exp
            rig.bring_up(feats, size)
            frame = make_frame(length, length)
            total = hl + length
            tx_layout = data.draw(layouts(total, size, indirect), label="tx")
            rx_total = total + data.draw(st.integers(0, 64), label="rx slack")
            rx_layout = data.draw(layouts(rx_total, size, indirect), label="rx")
            r = add_chain(rig.rx, [], rx_layout.lengths(), direct=rx_layout.direct)
            poison(rig.mem, r)
            rig.publish(rig.RX)
            t = add_chain(rig.tx, tx_layout.split(rig.tx_header() + frame), [], direct=tx_layout.direct)
            rig.publish(rig.TX)
            got = rig.complete(rig.RX, {r.head: r}, 1)
            sent = rig.complete(rig.TX, {t.head: t}, 1)
            rig.release(r)
            rig.release(t)
            assert not _dead(rig), _dead(rig)
            assert got and sent, f"queue size {size}: frame {'not received' if not got else 'TX not used'}"
            n = got[0][1]
            back = written_bytes(rig.mem, r, n)[hl:] if n <= rx_total else b""
            assert n == total and back == frame, (
                f"queue size {size}, TX {tx_layout.pieces()} descriptors (indirect after {tx_layout.direct}), "
                f"RX {rx_layout.pieces()} descriptors (indirect after {rx_layout.direct}): used len {n} "
                f"(expected {total}), data {'intact' if back == frame else 'differs'}")

        _judge(verdict, ("SPLIT-DEV-01", "SPLIT-DEV-08"), run, "60 random chains on random ring sizes came back intact")


# --- event-idx thresholds -------------------------------------------------------------------------------


@pytest.mark.req("SPLIT-DEV-12", "SPLIT-DEV-13", "SPLIT-DEV-14")
def test_event_idx_thresholds(bench: Bench, verdict: Verdict) -> None:
    ids = ("SPLIT-DEV-12", "SPLIT-DEV-13", "SPLIT-DEV-14")
    with bench.rig(mem_size=RING_MEM_SIZE) as rig:
        feats = rig.up_offered(verdict, ids, rig.features_for(event_idx=True, indirect=False),
                               "VIRTIO_F_EVENT_IDX not offered", queue_size=64)
        if feats is None:
            return
        steps = st.lists(st.tuples(st.integers(1, 8),  # buffers made used in one go
                                   st.one_of(st.integers(-3, 10), st.integers(0, 0xFFFF)),  # used_event - used idx
                                   st.sampled_from([0, VRING_AVAIL_F_NO_INTERRUPT])),
                         min_size=1, max_size=6)

        @settings(max_examples=60, **SETTINGS)  # type: ignore[arg-type]
        @given(plan=steps)
        def run(plan: list[tuple[int, int, int]]) -> None:
            rig.bring_up(feats, 64)
            tx = rig.tx
            tx.auto_used_event = False
            pending: dict[int, Posted] = {}
            for _ in range(sum(b for b, _, _ in plan)):
                p = add_chain(rig.rx, [], [rig.rx_buf_size])
                pending[p.head] = p
            rig.publish(rig.RX)
            rig.drain_irqs()
            seq = 0
            for batch, offset, flags in plan:
                step = rig.event_idx_step(seq, offset, flags, batch, 64)
                seq += batch
                assert step.done, f"used idx stuck at {step.new}, expected {(step.start + batch) & 0xFFFF}"
                assert step.got == int(step.want), step.describe()
            rig.complete(rig.RX, pending, seq)

        _judge(verdict, ids, run, "every used idx step notified exactly as vring_need_event says")


# --- a thousand random workloads --------------------------------------------------------------------------


def _run_workload(rig: Rig, w: Workload, seq0: int) -> str:
    """Run one workload; returns what went wrong ('' if every frame came back intact and in order)."""
    size = w.size
    feats = rig.features_for(event_idx=w.event_idx, indirect=w.indirect, drop=GUEST_OFFLOADS)
    if feats is None:
        return f"features for {w} not available"
    rig.bring_up(feats, size)
    hl = rig.hdr_len
    frames = [make_frame(seq0 + i, n) for i, (n, _, _) in enumerate(w.frames)]
    needs = [(tl.descriptors(), rl.descriptors()) for _, tl, rl in w.frames]
    i = 0
    while i < len(frames):
        batch = fitting_round(needs, i, rig.tx.num_free, rig.rx.num_free)
        if not batch:
            return f"frame {i} does not fit a queue of {size}"
        rx_pending: dict[int, Posted] = {}
        tx_pending: dict[int, Posted] = {}
        for k in batch:
            _, tl, rl = w.frames[k]
            r = add_chain(rig.rx, [], rl.lengths(), direct=rl.direct, token=k)
            poison(rig.mem, r)
            rx_pending[r.head] = r
        rig.publish(rig.RX)
        for k in batch:
            _, tl, _ = w.frames[k]
            t = add_chain(rig.tx, tl.split(rig.tx_header() + frames[k]), [], direct=tl.direct, token=k)
            tx_pending[t.head] = t
        rig.publish(rig.TX)
        got = rig.complete(rig.RX, rx_pending, len(batch))
        sent = rig.complete(rig.TX, tx_pending, len(batch))
        for p, _ in sent:
            rig.release(p)
        if len(got) != len(batch) or len(sent) != len(batch):
            return (f"queue size {size}: {len(batch)} frames sent, {len(got)} received, {len(sent)} TX used"
                    f"{'; ' + _dead(rig) if _dead(rig) else ''}")
        for j, (p, n) in enumerate(got):
            k = batch[j]
            data = written_bytes(rig.mem, p, n)
            rig.release(p)
            h = NetHdr.unpack(data.ljust(12, b"\0"))
            if n != hl + len(frames[k]) or data[hl:] != frames[k]:
                return (f"queue size {size}: receive #{j} of the round should be frame {k} ({len(frames[k])} bytes): "
                        f"used len {n}, data {'intact' if data[hl:] == frames[k] else 'differs or out of order'}")
            if h.num_buffers != 1 or h.flags or h.gso_type != GSO_NONE:
                return f"frame {k}: receive header {h} (expected flags 0, gso NONE, num_buffers 1)"
        for ring in (rig.rx, rig.tx):
            flags = ring.used_flags()
            if flags not in ((0,) if w.event_idx else (0, 1)):
                return f"queue {ring.index}: used.flags {flags:#x} (event_idx={w.event_idx})"
        i = batch[-1] + 1
    return _dead(rig)


@pytest.mark.req("SPLIT-DEV-01", "SPLIT-DEV-08", "SPLIT-DEV-16", "SPLIT-DEV-18", "SPLIT-DEV-20",
                 "NET-DEV-29", "NET-DEV-30", "NET-DEV-34", "NET-DEV-55")
def test_thousand_random_ring_workloads(bench: Bench, verdict: Verdict) -> None:
    ids = ("SPLIT-DEV-01", "SPLIT-DEV-08", "SPLIT-DEV-16", "SPLIT-DEV-18", "SPLIT-DEV-20",
           "NET-DEV-29", "NET-DEV-30", "NET-DEV-34", "NET-DEV-55")
    with bench.rig(bench.variant(qsize=32768, wire="loopback"), mem_size=RING_MEM_SIZE) as rig:
        base = rig.features_for(indirect=False)
        assert base is not None
        rig.bring_up(base, 8)
        if not rig.looped(verdict, *ids):
            return
        can_event = rig.features_for(event_idx=True, indirect=False) is not None
        can_indirect = rig.features_for(indirect=True) is not None
        if not can_indirect:
            verdict.not_offered("SPLIT-DEV-08", "VIRTIO_F_INDIRECT_DESC not offered")
        if not can_event:
            verdict.not_offered("SPLIT-DEV-20", "VIRTIO_F_EVENT_IDX not offered")
        top = min(rig.max_queue_size.bit_length() - 1, 15)
        done = {"workloads": 0, "frames": 0}

        @settings(max_examples=MIN_WORKLOADS // WORKLOADS_PER_EXAMPLE, **SETTINGS)  # type: ignore[arg-type]
        @given(ws=st.lists(workloads(top, can_event, can_indirect, rig.hdr_len),
                           min_size=WORKLOADS_PER_EXAMPLE, max_size=WORKLOADS_PER_EXAMPLE))
        def run(ws: list[Workload]) -> None:
            for w in ws:
                problem = _run_workload(rig, w, done["frames"])
                assert not problem, f"{problem}\nworkload: {w}"
                done["workloads"] += 1
                done["frames"] += len(w.frames)

        def run_all() -> None:
            run()
            assert done["workloads"] >= MIN_WORKLOADS, \
                f"only {done['workloads']} random workloads ran, at least {MIN_WORKLOADS} wanted"

        # A failing workload, shrunk by hypothesis, fails every id it bears on (a wrong frame, used len or
        # receive header, used.flags out of range).
        _judge(verdict, ids, run_all, f"{MIN_WORKLOADS}+ random workloads came back intact and in order")
