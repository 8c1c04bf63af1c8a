"""Control virtqueue and multiqueue receive steering on packed rings (5.1.9.5, 5.1.9.5.6 over 2.8).

The rules of :mod:`test_net_ctrl_mq` on a device whose every queue is a packed ring (``queues=4`` where the target is
configurable), CTRL_VQ and MQ negotiated with VIRTIO_F_RING_PACKED. The receive and transmit rings have a size that
is not a power of two; the control queue's ring is small, so its lists cross the ring's end and both wrap counters
flip several times over the commands:

- after initialization, after commands that are not a valid VQ_PAIRS_SET and after refused ones, and again after a
  reset: frames land only on receiveq1 (NETCTRL-DEV-25);
- a VQ_PAIRS_SET of 1..max_virtqueue_pairs, in every list layout (one readable descriptor, class and command apart
  from the data, an indirect table), is acknowledged VIRTIO_NET_OK, and from then on frames land only on
  receiveq1..virtqueue_pairs (NETCTRL-DEV-26), each flow on one queue, spread over more than one (NETCTRL-DEV-B01);
- every command gets its ack in the first device-writable byte with a used len no larger than the bytes the device
  wrote (SPLIT-DEV-16, the layout-independent row, shown under packed);
- the control queue's used buffer notifications follow the driver event suppression structure like any packed
  queue: RING_EVENT_FLAGS_DISABLE none (SPLIT-DEV-10), ENABLE one (SPLIT-DEV-11), and with VIRTIO_F_EVENT_IDX,
  RING_EVENT_FLAGS_DESC at the slot the command's used descriptor fills one (SPLIT-DEV-13), a slot ahead none
  (SPLIT-DEV-14); the packed forms of those rows, as in :mod:`test_packed_ring`.
"""

from __future__ import annotations

import select

import pytest

from backend.virtio.packed_ring import EventFlags, advance
from testbenches.conformance.checks.test_net_ctrl_mq import (
    IDS,
    PAIRS,
    Ack,
    MqRig,
    _judge_steering,
    control_features,
    event_idx_control,
    judge_mq_commands,
)
from testbenches.conformance.harness import QUIET_WAIT, Bench, Rig, drain
from testbenches.conformance.plugin import Verdict

pytestmark = pytest.mark.ring_layout("packed")

#: Receive and transmit rings: not a power of two.
QSIZE = 61
#: The control queue's ring: a command takes up to three slots, so every second or third one crosses the end.
CTRL_QSIZE = 5


def _mq_rig(rig: Rig, features: int) -> MqRig:
    return MqRig(rig, features, "packed", QSIZE, CTRL_QSIZE)


def _command_irq(m: MqRig, expect: bool) -> tuple[Ack, bool]:
    """A VQ_PAIRS_SET 1 on the control queue: its ack and whether the control queue's vector fired for it."""
    fd = m.ctrl_fd
    assert fd is not None
    drain(fd)
    before = m.ctrl_irqs
    a = m.vq_pairs_set(1)
    if m.ctrl_irqs == before:  # not already seen while the used descriptor was awaited
        wait = m.rig.event_wait if expect else m.rig.silence(max(m.rig.quiet, QUIET_WAIT))
        ready, _, _ = select.select([fd], [], [], wait)
        if ready:
            m.ctrl_irqs += drain(fd)
    return a, m.ctrl_irqs > before


def _ctrl_enable_disable(verdict: Verdict, m: MqRig) -> None:
    """DISABLE: no used buffer notification for the control queue (SPLIT-DEV-10); ENABLE: one (SPLIT-DEV-11)."""
    if m.ctrl_vector is None:
        for rid in ("SPLIT-DEV-10", "SPLIT-DEV-11"):
            verdict.not_applicable(rid, "fewer than 4 MSI-X vectors bound: the control queue has no vector of its own")
        return
    ring = m.packed(m.ctrl)
    for flags in (EventFlags.ENABLE, EventFlags.DISABLE, EventFlags.ENABLE, EventFlags.DISABLE):
        ring.set_driver_event(flags)
        a, fired = _command_irq(m, flags == EventFlags.ENABLE)
        what = (f"packed control queue of {ring.size}, driver event {flags.name}: {a.describe()}; interrupt "
                f"{'came' if fired else 'did not come'}")
        if flags == EventFlags.DISABLE:
            verdict.check("SPLIT-DEV-10", a.used and not fired, what + " (expected none)")
        else:
            verdict.check("SPLIT-DEV-11", a.used and fired, what + " (expected one)")
    ring.set_driver_event(EventFlags.ENABLE)


def _ctrl_event_desc(verdict: Verdict, rig: Rig) -> None:
    """With EVENT_IDX: RING_EVENT_FLAGS_DESC at the slot the next used descriptor fills gives one notification
    (SPLIT-DEV-13), at a slot ahead of it none (SPLIT-DEV-14), over commands that cross the ring's end."""
    m = event_idx_control(rig, verdict, "packed", QSIZE, CTRL_QSIZE)
    if m is None or m.ctrl_fd is None:
        return
    ring = m.packed(m.ctrl)
    # VQ_PAIRS_SET 1 is a list of two slots (command, ack) and one used descriptor in the first: the event at that
    # slot is crossed, one at the slot after the list (or further) is not
    for ahead in (0, 2, 0, 3, 0, 2, 0):
        off, wrap = advance(ring.next_used, ring.used_wrap, ahead, ring.size)
        ring.set_driver_event(EventFlags.DESC, off, wrap)
        a, fired = _command_irq(m, not ahead)
        rid = "SPLIT-DEV-14" if ahead else "SPLIT-DEV-13"
        verdict.check(rid, a.used and fired == (not ahead),
                      f"packed control queue of {ring.size}, driver event DESC at {off}/wrap {wrap} ({ahead} slot(s) "
                      f"after the one the command's used descriptor fills, the list takes 2): {a.describe()}; "
                      f"interrupt "
                      f"{'came' if fired else 'did not come'} (expected {'none' if ahead else 'one'})")


@pytest.mark.req(*IDS)
def test_packed_control_queue_and_receive_steering(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(bench.variant(queues=PAIRS)) as rig:
        if not rig.offers("packed", verdict, *IDS):
            return
        feats = control_features(rig, verdict, "packed")
        if feats is None:
            return
        m = _mq_rig(rig, feats)
        judge_mq_commands(verdict, m, " (packed rings)")
        _ctrl_enable_disable(verdict, m)
        if m.mq:
            m = _mq_rig(rig, feats)
            _judge_steering(verdict, m, 1, "after reset and a new initialization (packed rings)", 600)
        _ctrl_event_desc(verdict, rig)
