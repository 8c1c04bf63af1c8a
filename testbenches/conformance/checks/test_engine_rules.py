"""The descriptor walk at its edges: every legal chain length and indirect table size and position is carried,
every chain one step past a limit makes the device ask for a reset (2.7.5, 2.7.5.3).

Legal (SPLIT-DEV-01, SPLIT-DEV-08), on transmitq1 of queue size 8: a head in the last slot, a ``next`` naming
the last slot, a direct chain as long as the queue, and an indirect table of every size 1..8 behind 0 and
behind as many direct descriptors as still fit (the table's entries linked in slot order or backwards). Each
chain must come back and, on a looped wire, its frame arrive intact.

Illegal (STATUS-DEV-02), one step past each limit: ``next`` or the head equal to the queue size, a loop in the
table or inside an indirect table, an indirect ``next`` equal to the table length, a table of 0, 8 or 40
bytes, a table one descriptor too long (alone or behind a direct one), INDIRECT with NEXT, an indirect table
holding an INDIRECT descriptor, INDIRECT without VIRTIO_F_INDIRECT_DESC. Each must leave the register access
returning and DEVICE_NEEDS_RESET set. The driver error a target records is shown as evidence only: its
wording is the device's own (the RTL calls a loop a chain longer than the queue, SPLIT-DRV-08).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from backend.virtio.features import F, has
from backend.virtio.split_ring import DESC_SIZE, DescFlags, Descriptor
from testbenches.conformance.chains import split_at, status_text
from testbenches.conformance.harness import NEEDS_RESET, TX, Bench, Rig, drain, hostile_kick, make_frame
from testbenches.conformance.plugin import Verdict
from testbenches.driver.split_ring import DriverSplitQueue

QSIZE = 8
NEXT, WRITE, INDIRECT = int(DescFlags.NEXT), int(DescFlags.WRITE), int(DescFlags.INDIRECT)


@dataclass(frozen=True)
class Layout:
    """A legal chain: ``direct`` plain descriptors at ``slots`` then (``table`` > 0) one indirect descriptor
    at the next slot pointing at a table of ``table`` entries, walked backwards when ``backwards``."""

    what: str
    slots: tuple[int, ...]
    direct: int
    table: int = 0
    backwards: bool = False


def _layouts(indirect: bool) -> list[Layout]:
    last = QSIZE - 1
    out = [
        Layout("one descriptor in the last slot", (last,), 1),
        Layout("two descriptors, next naming the last slot", (0, last), 2),
        Layout(f"a direct chain of {QSIZE} descriptors (the queue size)", tuple(range(QSIZE)), QSIZE),
        Layout("two descriptors, head in the last slot", (last, 0), 2),
    ]
    if indirect:
        for n in range(1, QSIZE + 1):
            for k in sorted({0, QSIZE - n}):
                out.append(Layout(f"{k} direct descriptor(s) then an indirect table of {n}", tuple(range(k + 1)),
                                  k, n, backwards=n > 2 and k == 0))
    return out


def _build(ring: DriverSplitQueue, layout: Layout, data: bytes) -> tuple[dict[int, Descriptor], list[int]]:
    """Descriptors of ``layout`` carrying ``data`` (all device-readable) and the allocations they use."""
    pieces = layout.direct + layout.table
    step = len(data) // pieces
    parts = split_at(data, [step * i for i in range(1, pieces)])
    bufs = [ring.alloc_buffer(p) for p in parts]
    descs: dict[int, Descriptor] = {}
    k = layout.direct
    for i in range(k):
        last = i + 1 == k and not layout.table
        descs[layout.slots[i]] = Descriptor(bufs[i], len(parts[i]), 0 if last else NEXT,
                                            0 if last else layout.slots[i + 1])
    owned = list(bufs)
    if layout.table:
        n = layout.table
        # The walk starts at entry 0 and then visits the others in slot order or backwards.
        order = [0, *(range(n - 1, 0, -1) if layout.backwards else range(1, n))]
        table: list[Descriptor] = [Descriptor(0, 0, 0, 0)] * n
        for j, slot in enumerate(order):
            more = j + 1 < n
            table[slot] = Descriptor(bufs[k + j], len(parts[k + j]), NEXT if more else 0, order[j + 1] if more else 0)
        gpa = ring.write_indirect(table)
        owned.append(gpa)
        descs[layout.slots[k]] = Descriptor(gpa, DESC_SIZE * n, INDIRECT, 0)
    return descs, owned


@pytest.mark.req("SPLIT-DEV-01", "SPLIT-DEV-08")
def test_chains_at_every_legal_length(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        feats = r.features_for(indirect=None)
        assert feats is not None
        d = r.up(features=feats, exact=True, queue_size=QSIZE, rx_buffers=QSIZE)
        indirect = has(d.features, F.INDIRECT_DESC)
        if not indirect:
            verdict.not_offered("SPLIT-DEV-08", "VIRTIO_F_INDIRECT_DESC not offered: no indirect table to carry")
        looped = r.wire.looped
        ring = r.tx
        for seq, layout in enumerate(_layouts(indirect)):
            frame = make_frame(900 + seq, 60 + 4 * seq)
            descs, owned = _build(ring, layout, r.tx_header() + frame)
            ring.add_raw(descs, layout.slots[0])
            r.publish(TX)
            used = r.wait_used(TX, 1)
            status = r.status()
            received = [f.frame for f in d.receive_raw(1, r.event_wait)] if looped and used else []
            for gpa in owned:
                ring.free_buffer(gpa)
            ok = [u.head for u in used] == [layout.slots[0]] and not status & NEEDS_RESET
            arrived = "" if not looped else (", frame arrived intact" if received == [frame] else
                                             f", {'a different frame' if received else 'no frame'} arrived")
            rid = "SPLIT-DEV-08" if layout.table else "SPLIT-DEV-01"
            verdict.check(rid, ok and (not looped or received == [frame]),
                          f"{layout.what}: used {[u.head for u in used]} (posted head {layout.slots[0]}), status "
                          f"{status_text(status)}{arrived}; device says: {r.device_errors()}")
            if not ok:
                return


# --- one step past a limit ---------------------------------------------------------------------------------

Build = Callable[[Rig, DriverSplitQueue], None]


def _buf(ring: DriverSplitQueue, seq: int) -> tuple[int, int]:
    data = bytes(12) + make_frame(seq)
    return ring.alloc_buffer(data), len(data)


def _table(ring: DriverSplitQueue, entries: list[tuple[int, int]], seq: int = 0) -> int:
    """An indirect table of (flags, next) entries, each over a buffer of its own."""
    descs = []
    for i, (flags, nxt) in enumerate(entries):
        a, n = _buf(ring, seq + i)
        descs.append(Descriptor(a, n, flags, nxt))
    return ring.write_indirect(descs)


def _linked(n: int) -> list[tuple[int, int]]:
    return [(NEXT, i + 1) if i + 1 < n else (0, 0) for i in range(n)]


def next_is_queue_size(r: Rig, ring: DriverSplitQueue) -> None:
    a, n = _buf(ring, 1)
    ring.add_raw({0: Descriptor(a, n, NEXT, QSIZE)}, 0)


def head_is_queue_size(r: Rig, ring: DriverSplitQueue) -> None:
    ring.push_head(QSIZE)


def loop_in_table(r: Rig, ring: DriverSplitQueue) -> None:
    a, n = _buf(ring, 1)
    ring.add_raw({0: Descriptor(a, n, NEXT, QSIZE - 1), QSIZE - 1: Descriptor(a, n, NEXT, 0)}, 0)


def indirect_next_is_table_length(r: Rig, ring: DriverSplitQueue) -> None:
    # The first entry names the slot just past the table, with entries still left to walk.
    ring.add_raw({0: Descriptor(_table(ring, [(NEXT, 3), (0, 0), (0, 0)]), 3 * DESC_SIZE, INDIRECT, 0)}, 0)


def loop_in_indirect_table(r: Rig, ring: DriverSplitQueue) -> None:
    ring.add_raw({0: Descriptor(_table(ring, [(NEXT, 1), (NEXT, 0)]), 2 * DESC_SIZE, INDIRECT, 0)}, 0)


def _table_len(length: int, entries: int) -> Build:
    def build(r: Rig, ring: DriverSplitQueue) -> None:
        ring.add_raw({0: Descriptor(_table(ring, _linked(entries)), length, INDIRECT, 0)}, 0)
    build.__name__ = f"table_len_{length}"
    return build


def table_past_queue_size_behind_one(r: Rig, ring: DriverSplitQueue) -> None:
    a, n = _buf(ring, 1)
    table = _table(ring, _linked(QSIZE), 2)
    ring.add_raw({0: Descriptor(a, n, NEXT, 1), 1: Descriptor(table, QSIZE * DESC_SIZE, INDIRECT, 0)}, 0)


def indirect_with_next(r: Rig, ring: DriverSplitQueue) -> None:
    a, n = _buf(ring, 1)
    table = _table(ring, _linked(1))
    ring.add_raw({0: Descriptor(table, DESC_SIZE, INDIRECT | NEXT, 1), 1: Descriptor(a, n, 0, 0)}, 0)


def indirect_in_indirect(r: Rig, ring: DriverSplitQueue) -> None:
    inner = _table(ring, _linked(2))
    a, n = _buf(ring, 5)
    outer = ring.write_indirect([Descriptor(a, n, NEXT, 1), Descriptor(inner, 2 * DESC_SIZE, INDIRECT, 0)])
    ring.add_raw({0: Descriptor(outer, 2 * DESC_SIZE, INDIRECT, 0)}, 0)


def indirect_not_negotiated(r: Rig, ring: DriverSplitQueue) -> None:
    ring.add_raw({0: Descriptor(_table(ring, _linked(2)), 2 * DESC_SIZE, INDIRECT, 0)}, 0)


@dataclass(frozen=True)
class Breach:
    what: str
    rules: tuple[str, ...]  # the driver requirement(s) the chain breaks (a loop is also a chain too long)
    build: Build
    indirect: bool | None = True  # negotiate INDIRECT_DESC (None: where offered, the case does not use it)


LOOP = ("SPLIT-DRV-04", "SPLIT-DRV-08")
BREACHES = [
    Breach("descriptor next equal to the queue size", ("SPLIT-DRV-04",), next_is_queue_size, None),
    Breach("avail ring head equal to the queue size", ("SPLIT-DRV-04",), head_is_queue_size, None),
    Breach("chain looping through the last slot", LOOP, loop_in_table, None),
    Breach("indirect next equal to the table length", ("SPLIT-DRV-04",), indirect_next_is_table_length),
    Breach("loop inside an indirect table", LOOP, loop_in_indirect_table),
    Breach("indirect table of 0 bytes", ("SPLIT-DRV-08",), _table_len(0, 1)),
    Breach("indirect table of 8 bytes", ("SPLIT-DRV-08",), _table_len(DESC_SIZE // 2, 1)),
    Breach("indirect table of 2.5 descriptors", ("SPLIT-DRV-08",), _table_len(2 * DESC_SIZE + DESC_SIZE // 2, 3)),
    Breach(f"indirect table of {QSIZE + 1} (queue size + 1)", ("SPLIT-DRV-08",),
           _table_len((QSIZE + 1) * DESC_SIZE, QSIZE + 1)),
    Breach(f"one direct descriptor then an indirect table of {QSIZE}", ("SPLIT-DRV-08",),
           table_past_queue_size_behind_one),
    Breach("INDIRECT and NEXT on one descriptor", ("SPLIT-DRV-09",), indirect_with_next),
    Breach("INDIRECT inside an indirect table", ("SPLIT-DRV-07",), indirect_in_indirect),
    Breach("INDIRECT without VIRTIO_F_INDIRECT_DESC", ("SPLIT-DRV-06",), indirect_not_negotiated, False),
]


@pytest.mark.parametrize("burst", [False, True], ids=["alone", "burst"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.build.__name__) for c in BREACHES])
@pytest.mark.req("STATUS-DEV-02")
def test_chain_one_step_past_a_limit(bench: Bench, verdict: Verdict, case: Breach, burst: bool) -> None:
    """The chain alone, or first of a burst with an ordinary two-descriptor chain behind it (a device decoding
    several available chains at once meets it among the others)."""
    with bench.rig() as r:
        feats = r.features_for(indirect=case.indirect)
        if feats is None:
            verdict.not_offered("STATUS-DEV-02", f"{case.what}: VIRTIO_F_INDIRECT_DESC not offered")
            return
        d = r.up(features=feats, exact=True, queue_size=QSIZE)
        rules = " or ".join(case.rules)
        what = f"{case.what} (breaks {rules}){', a good chain behind it' if burst else ''}"
        since = len(r.driver_errors() or [])
        cfg_fd = d.irq_fds["config"]
        drain(cfg_fd)
        case.build(r, r.tx)
        if burst:
            r.tx.add([r.tx_header(), make_frame(77)], [])
        r.tx.publish()
        # and the notification that follows DEVICE_NEEDS_RESET
        kick = hostile_kick(lambda: r.doorbell(TX), cfg_fd, r.event_wait, r.explain())
        status = d.transport.status()
        errors = r.driver_errors()
        said = "" if errors is None else f"; the device recorded {errors[since:][:1] or 'nothing'}"
        verdict.check("STATUS-DEV-02", kick.crash is None and bool(status & NEEDS_RESET) and not r.crashes(),
                      f"{what}: {kick.doorbell}, status "
                      f"{status_text(status)} (DEVICE_NEEDS_RESET expected), device thread errors "
                      f"{r.crashes()[:2]}{said}")
