"""Control virtqueue and multiqueue receive steering (5.1.9.5, 5.1.9.5.6).

One device with several queue pairs (``queues=4`` where the target is configurable), CTRL_VQ and MQ
negotiated, every receiveq stocked. Frames of many IPv4 flows go out on a transmit queue and come back
over the loopback wire; the receive queue each one lands on is the observation:

- after initialization, and again after a reset, only receiveq1 (NETCTRL-DEV-25), also after commands
  that are not VQ_PAIRS_SET (another class, another command) and after refused ones;
- a VQ_PAIRS_SET of 1..max_virtqueue_pairs is acknowledged VIRTIO_NET_OK and from then on frames land
  only on receiveq1..virtqueue_pairs (NETCTRL-DEV-26), each flow on one queue, spread over more than one
  queue once several pairs are enabled (NETCTRL-DEV-B01);
- each command, in every chain layout (one readable descriptor, class/command apart from the data, an
  indirect table), gets its ack in the first device-writable byte, with a used len no larger than what the
  device wrote (SPLIT-DEV-16), and a used buffer notification follows the avail.flags rule of the control
  queue like any other queue (SPLIT-DEV-10/11).
"""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from backend.virtio.features import F, NetF, has
from backend.virtio.net_ctrl import VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK
from backend.virtio.pci_regs import NetCfg
from backend.virtio.split_ring import VRING_AVAIL_F_NO_INTERRUPT
from testbenches.conformance.chains import Posted, poison
from testbenches.conformance.harness import NEEDS_RESET, QUIET_WAIT, Bench, Rig, drain
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import DriverRing, Layout, PackedDriverRing, new_ring, ring_addresses, ring_size
from testbenches.driver.split_ring import DriverSplitQueue, UsedBuffer

#: Queue pairs of the device where the target is configurable (the behavioral model).
PAIRS = 4
QSIZE = 64
RX_BUF = 2048
#: Distinct IPv4 flows per traffic round, two frames each (different lengths and payloads).
FLOWS = 24
#: A class and a command this spec version does not define.
UNKNOWN_CLASS = 0x7E
UNKNOWN_MQ_COMMAND = 0x7F
ACK_POISON = 0xA5
IDS = ("NETCTRL-DEV-25", "NETCTRL-DEV-26", "NETCTRL-DEV-B01", "SPLIT-DEV-16", "SPLIT-DEV-10", "SPLIT-DEV-11",
       "SPLIT-DEV-13", "SPLIT-DEV-14")
#: The ids judged by steering traffic over several queue pairs (VIRTIO_NET_F_MQ, frames that come back).
STEERING_IDS = ("NETCTRL-DEV-25", "NETCTRL-DEV-26", "NETCTRL-DEV-B01")
CTRL_FEATURES = (1 << NetF.CTRL_VQ) | (1 << NetF.MQ)


def flow_frame(flow: int, k: int) -> bytes:
    """Frame ``k`` of IPv4/UDP flow ``flow``: addresses and ports fixed per flow, length and payload per frame."""
    pkt = (Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
           / IP(src=f"10.{flow >> 8}.{flow & 0xFF}.1", dst=f"10.200.{flow & 0xFF}.{2 + (flow >> 8)}")
           / UDP(sport=1000 + flow, dport=2000 + 3 * flow)
           / (struct.pack(">II", flow, k) + bytes([(flow + k) & 0xFF]) * (20 + 37 * k)))
    return bytes(pkt)


@dataclass
class Ack:
    """What came back for one control command."""

    what: str
    used: bool
    ack: int | None  # the first device-writable byte (None: never returned)
    used_len: int
    ack_room: int  # device-writable bytes of the chain
    waited: str = ""  # how long the ack was waited for, and why (Rig.explain)

    def describe(self) -> str:
        if not self.used:
            return f"{self.what}: never returned in the used ring" + (f" (waited {self.waited})" if self.waited else "")
        return f"{self.what}: ack byte {self.ack:#04x}, used len {self.used_len} ({self.ack_room} writable)" \
            if self.ack is not None else f"{self.what}: used len {self.used_len}"


class MqRig:
    """Every queue of the device set up by hand: receiveq/transmitq 1..pairs and the control queue, as rings of
    ``layout`` (packed rings of ``qsize`` entries, any size; split ones of the power of two at most that)."""

    def __init__(self, rig: Rig, features: int, layout: Layout = "split", qsize: int = QSIZE,
                 ctrl_qsize: int = QSIZE) -> None:
        self.rig = rig
        self.layout = layout
        d = rig.up(features=features, exact=True, queues=False, driver_ok=False, layout=layout)
        t = d.transport
        self.mq = has(d.features, NetF.MQ)
        # 5.1.2: the queue pairs (and the control queue at 2N) count max_virtqueue_pairs with MQ or RSS, else one
        self.max_pairs = int.from_bytes(t.read_device_config(NetCfg.MAX_VIRTQUEUE_PAIRS, 2, 2), "little") \
            if self.mq or has(d.features, NetF.RSS) else 1
        self.pairs = self.max_pairs
        self.ctrl = 2 * self.pairs
        self.indirect = has(d.features, F.INDIRECT_DESC)
        bound = d.bound_vectors
        #: the control queue's own vector where there are enough of them, so its interrupts can be counted
        self.ctrl_vector = 3 if bound > 3 else None
        self.ctrl_fd = d.irq_fds[f"v{self.ctrl_vector}"] if self.ctrl_vector is not None else None
        #: interrupts of the control queue's vector consumed while waiting for something else
        self.ctrl_irqs = 0
        for q in range(self.ctrl + 1):
            size = ring_size(layout, ctrl_qsize if q == self.ctrl else qsize, t.queue_size(q))
            # no EVENT_IDX on these rings: the checks that want it write used_event / the driver event themselves
            ring = new_ring(layout, rig.mem, rig.alloc, size, index=q, features=d.features & ~(1 << F.EVENT_IDX))
            if isinstance(ring, PackedDriverRing):
                d.packed[q] = ring
            else:
                d.queues[q] = ring
            t.set_queue_size(q, size)
            if not d.intx:
                vec = self.ctrl_vector if q == self.ctrl and self.ctrl_vector is not None else d.vector_of(q % 2)
                t.set_queue_msix_vector(q, vec)
            t.set_queue_addresses(q, *ring_addresses(ring))
            t.enable_queue(q)
        d.driver_ok()
        self.rx_posted: dict[int, int] = {}
        for q in self.rx_queues:
            self.stock(q)

    @property
    def rx_queues(self) -> list[int]:
        return [2 * p for p in range(self.pairs)]

    def ring(self, q: int) -> DriverRing:
        return self.rig.drv.ring(q)

    def split(self, q: int) -> DriverSplitQueue:
        """Queue ``q`` as the split ring it is (the checks of avail.flags and used_event)."""
        return self.rig.drv.queues[q]

    def packed(self, q: int) -> PackedDriverRing:
        """Queue ``q`` as the packed ring it is (the checks of the driver event suppression structure)."""
        return self.rig.drv.packed[q]

    def stock(self, q: int) -> None:
        """Fill receive queue ``q`` with buffers up to its size."""
        ring = self.ring(q)
        while ring.num_free:
            ring.add([], [RX_BUF])
        ring.publish()
        self.rig.doorbell(q)

    # --- traffic ---------------------------------------------------------------------------------------

    def traffic(self, frames: Sequence[bytes], txq: int = 1) -> dict[int, list[bytes]]:
        """Send ``frames`` on transmit queue ``txq``; the frames (after the header) that came back, per receive
        queue, waiting until all came back or the rig's :attr:`~Rig.event_wait` passed."""
        hdr = self.rig.tx_header()
        tx = self.ring(txq)
        tx.used()
        for f in frames:
            tx.add([hdr + f], [])  # one descriptor each: a burst of plain chains
        tx.publish()
        self.rig.doorbell(txq)
        got: dict[int, list[bytes]] = {q: [] for q in self.rx_queues}
        deadline = time.monotonic() + self.rig.event_wait
        while True:
            for q in self.rx_queues:
                for u in self.ring(q).used():
                    got[q].append(u.data[self.rig.hdr_len:])
            if sum(len(v) for v in got.values()) >= len(frames):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.wait_irqs(min(left, QUIET_WAIT))
        tx.used()
        for q in self.rx_queues:
            self.stock(q)
        return got

    def wait_irqs(self, timeout: float) -> None:
        """Wait up to ``timeout`` for any interrupt and consume what came, counting the control queue's."""
        ready, _, _ = select.select(list(set(self.rig.drv.vector_fds().values())), [], [], timeout)
        for fd in ready:
            n = drain(fd)
            if fd == self.ctrl_fd:
                self.ctrl_irqs += n

    # --- control queue ---------------------------------------------------------------------------------

    def command(self, what: str, cls: int, cmd: int, data: bytes, *, layout: str = "one",
                ack_room: int = 1) -> Ack:
        """One command on the control queue, in ``layout``: "one" readable descriptor, "split" (class and
        command apart from the data, as 5.1.9.5 draws it) or "indirect" (all in an indirect table)."""
        head = bytes([cls, cmd])
        out = [head + data] if layout == "one" or not data else [head, data]
        p = self.rig.add_chain(self.ctrl, out, [ack_room], direct=0 if layout == "indirect" else None)
        poison(self.rig.mem, p, ACK_POISON)
        self.ring(self.ctrl).publish()
        self.rig.doorbell(self.ctrl)
        return self._wait_ack(what, p)

    def _wait_ack(self, what: str, p: Posted) -> Ack:
        ring = self.ring(self.ctrl)
        deadline = time.monotonic() + self.rig.event_wait
        used: list[UsedBuffer] = []
        while not used and time.monotonic() < deadline:
            used = ring.used()
            if not used:
                self.wait_irqs(QUIET_WAIT)  # a polling slice of the bound above
        gpa, room = p.writable[0]
        ack = self.rig.mem.read(gpa, 1)[0] if used else None
        self.rig.release(p)
        return Ack(what, bool(used), ack, used[0].len if used else -1, room, self.rig.explain())

    def vq_pairs_set(self, n: int, layout: str = "one") -> Ack:
        return self.command(f"VQ_PAIRS_SET {n} ({layout})", VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                            struct.pack("<H", n), layout=layout)


def _flows(first: int, count: int = FLOWS) -> tuple[list[bytes], list[int]]:
    frames: list[bytes] = []
    flow_of: list[int] = []
    for fl in range(first, first + count):
        for k in range(2):
            frames.append(flow_frame(fl, k))
            flow_of.append(fl)
    return frames, flow_of


def _placement(got: dict[int, list[bytes]], frames: Sequence[bytes], flow_of: Sequence[int]) -> tuple[
        dict[int, set[int]], int, int]:
    """Receive queues per flow, frames that came back intact, frames that came back changed."""
    index = {f: i for i, f in enumerate(frames)}
    where: dict[int, set[int]] = {}
    intact = strange = 0
    for q, datas in got.items():
        for data in datas:
            i = index.get(data)
            if i is None:
                strange += 1
                continue
            intact += 1
            where.setdefault(flow_of[i], set()).add(q)
    return where, intact, strange


def _judge_steering(verdict: Verdict, m: MqRig, enabled: int, phase: str, first_flow: int, txq: int = 1) -> None:
    """Traffic of :data:`FLOWS` flows: only receiveq1..``enabled`` used (NETCTRL-DEV-25 when ``enabled`` is 1
    before any VQ_PAIRS_SET, else NETCTRL-DEV-26), and with several pairs each flow on one queue, the flows
    on more than one queue (NETCTRL-DEV-B01)."""
    frames, flow_of = _flows(first_flow)
    got = m.traffic(frames, txq)
    where, intact, strange = _placement(got, frames, flow_of)
    counts = {q // 2 + 1: len(v) for q, v in got.items() if v}
    text = (f"{phase}: {len(frames)} frames of {FLOWS} flows sent on queue {txq}, {intact} came back intact "
            f"({strange} changed), per receiveq {counts or 'none'}")
    beyond = {q: len(v) for q, v in got.items() if v and q // 2 >= enabled}
    rid = "NETCTRL-DEV-25" if phase.startswith("before") or phase.startswith("after reset") else "NETCTRL-DEV-26"
    verdict.check(rid, intact == len(frames) and not beyond and not strange,
                  text + f"; only receiveq1..{enabled} may be used")
    if enabled > 1:
        split = sorted(fl for fl, qs in where.items() if len(qs) > 1)
        verdict.check("NETCTRL-DEV-B01", intact == len(frames) and not split and len(counts) > 1,
                      text + f"; flows on more than one queue: {split or 'none'}; receive queues used: "
                             f"{len(counts)} of {enabled} enabled (steering spreads flows)")


def _judge_ack(verdict: Verdict, a: Ack, want: int | None) -> None:
    """SPLIT-DEV-16 for any command: returned, used len within the ack byte the device wrote; ``want``: the ack
    a valid VQ_PAIRS_SET must get (NETCTRL-DEV-B01: multiqueue is enabled with it)."""
    wrote = a.ack is not None and a.ack != ACK_POISON
    verdict.check("SPLIT-DEV-16", a.used and a.used_len <= a.ack_room and (a.used_len == 0 or wrote)
                  and a.ack in (VIRTIO_NET_OK, VIRTIO_NET_ERR),
                  a.describe() + " (expected the ack, VIRTIO_NET_OK or ERR, in the first writable byte and a used "
                                 "len no larger than the bytes written)")
    if want is not None:
        verdict.check("NETCTRL-DEV-B01", a.used and a.ack == want,
                      a.describe() + f" (expected {'VIRTIO_NET_OK' if want == VIRTIO_NET_OK else 'VIRTIO_NET_ERR'})")


def _truncated_command(verdict: Verdict, m: MqRig) -> None:
    """A chain holding only the class byte (breaks the command layout of 5.1.9.5): whatever the device does
    with it, used len counts no byte it did not write (SPLIT-DEV-16)."""
    p = m.rig.add_chain(m.ctrl, [bytes([VIRTIO_NET_CTRL_MQ])], [1])
    poison(m.rig.mem, p, ACK_POISON)
    m.ring(m.ctrl).publish()
    m.rig.doorbell(m.ctrl)
    a = m._wait_ack("a command of one byte (class only)", p)
    wrote = 0 if a.ack in (None, ACK_POISON) else 1
    status = m.rig.status()
    verdict.check("SPLIT-DEV-16", (a.used and a.used_len <= wrote) or bool(status & NEEDS_RESET),
                  a.describe() + f" (bytes written: {wrote}; device_status {status:#x})")


def event_idx_control(rig: Rig, verdict: Verdict, layout: Layout, qsize: int = QSIZE,
                      ctrl_qsize: int = QSIZE) -> MqRig | None:
    """The queues set up (:class:`MqRig`) with VIRTIO_F_EVENT_IDX in ``layout`` and the control queue on a vector of
    its own; None with SPLIT-DEV-13/14 reported not offered or not applicable."""
    feats = rig.features_for(event_idx=True, extra=CTRL_FEATURES, layout=layout)
    if feats is None or not has(feats, F.EVENT_IDX):
        why = "VIRTIO_F_EVENT_IDX not offered" + (" with RING_PACKED" if layout == "packed" else "")
        for rid in ("SPLIT-DEV-13", "SPLIT-DEV-14"):
            verdict.not_offered(rid, why)
        return None
    m = MqRig(rig, feats, layout, qsize, ctrl_qsize)
    if m.ctrl_fd is None:
        for rid in ("SPLIT-DEV-13", "SPLIT-DEV-14"):
            verdict.not_applicable(rid, "fewer than 4 MSI-X vectors bound: the control queue has no vector of its own")
        return None
    return m


def _event_idx_notifications(verdict: Verdict, rig: Rig, feats: int) -> None:
    """With VIRTIO_F_EVENT_IDX the control queue notifies when the slot it fills is used_event (SPLIT-DEV-13)
    and not when used_event lies ahead (SPLIT-DEV-14)."""
    m = event_idx_control(rig, verdict, "split")
    if m is None or m.ctrl_fd is None:
        return
    ring = m.split(m.ctrl)
    ring.auto_used_event = False
    for ahead, rid in ((0, "SPLIT-DEV-13"), (5, "SPLIT-DEV-14"), (0, "SPLIT-DEV-13")):
        ring.set_used_event((ring.used_idx() + ahead) & 0xFFFF)
        drain(m.ctrl_fd)
        before = m.ctrl_irqs
        a = m.vq_pairs_set(1)
        if m.ctrl_irqs == before:
            wait = m.rig.event_wait if not ahead else m.rig.silence(max(m.rig.quiet, QUIET_WAIT))
            ready, _, _ = select.select([m.ctrl_fd], [], [], wait)
            if ready:
                m.ctrl_irqs += drain(m.ctrl_fd)
        fired = m.ctrl_irqs > before
        verdict.check(rid, a.used and fired == (not ahead),
                      f"control queue with EVENT_IDX, used_event = used idx + {ahead}: {a.describe()}; interrupt "
                      f"{'came' if fired else 'did not come'} (expected {'one' if not ahead else 'none'})")


def _ctrl_notifications(verdict: Verdict, m: MqRig) -> None:
    """The control queue follows avail.flags like any queue: an interrupt after a used command with flags 0
    (SPLIT-DEV-11), none with VRING_AVAIL_F_NO_INTERRUPT (SPLIT-DEV-10)."""
    if m.ctrl_vector is None:
        for rid in ("SPLIT-DEV-10", "SPLIT-DEV-11"):
            verdict.not_applicable(rid, "fewer than 4 MSI-X vectors bound: the control queue has no vector of its own")
        return
    fd = m.ctrl_fd
    assert fd is not None
    ring = m.split(m.ctrl)
    for flags in (0, VRING_AVAIL_F_NO_INTERRUPT, 0):
        ring.write_avail_flags(flags)
        drain(fd)
        before = m.ctrl_irqs
        a = m.vq_pairs_set(1)
        if m.ctrl_irqs == before:  # not already seen while the used entry was awaited
            ready, _, _ = select.select([fd], [], [],
                                        m.rig.event_wait if not flags else m.rig.silence(max(m.rig.quiet, QUIET_WAIT)))
            if ready:
                m.ctrl_irqs += drain(fd)
        fired = m.ctrl_irqs > before
        what = f"control queue, avail.flags={flags}: {a.describe()}; interrupt {'came' if fired else 'did not come'}"
        if flags:
            verdict.check("SPLIT-DEV-10", a.used and not fired, what + " (expected none)")
        else:
            verdict.check("SPLIT-DEV-11", a.used and fired, what + " (expected one)")
    ring.write_avail_flags(0)


def judge_mq_commands(verdict: Verdict, m: MqRig, note: str = "") -> None:
    """The MQ command sequence on either ring layout (``note`` says which in the evidence): receiveq1 only
    before any VQ_PAIRS_SET, also after commands that are not a valid one (unknown command, unknown class,
    pairs out of range, a truncated command); then, with MQ, every valid VQ_PAIRS_SET in every command layout
    acknowledged and steering within the pairs it enabled, and a larger ack buffer's first byte the ack."""
    n = m.max_pairs
    if m.mq:
        _judge_steering(verdict, m, 1, f"before VQ_PAIRS_SET{note}", 0)
    for what, cls, cmd, data in (
            (f"unknown MQ command {UNKNOWN_MQ_COMMAND:#x} carrying {n}", VIRTIO_NET_CTRL_MQ, UNKNOWN_MQ_COMMAND,
             struct.pack("<H", n)),
            (f"unknown class {UNKNOWN_CLASS:#x} command 0 carrying {n}", UNKNOWN_CLASS,
             VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", n)),
            (f"unknown class {UNKNOWN_CLASS:#x}, no data", UNKNOWN_CLASS, 1, b"")):
        _judge_ack(verdict, m.command(what, cls, cmd, data), None)
    for a in (m.vq_pairs_set(0), m.vq_pairs_set(n + 1)):  # NETCTRL-DRV-13 broken: the device may refuse
        _judge_ack(verdict, a, None)
    if m.mq:
        _judge_steering(verdict, m, 1, f"before VQ_PAIRS_SET, after other commands and refused ones{note}", 100)
    _truncated_command(verdict, m)
    if not m.mq:
        return
    layouts = ["one", "split", *(["indirect"] if m.indirect else [])]
    for i, pairs in enumerate(sorted({1, min(2, n), n})):
        for layout in layouts:
            _judge_ack(verdict, m.vq_pairs_set(pairs, layout), VIRTIO_NET_OK)
        # frames go out on the last transmit queue now enabled: every pair carries traffic
        _judge_steering(verdict, m, pairs, f"after VQ_PAIRS_SET {pairs}{note}", 200 + 100 * i, txq=2 * pairs - 1)
    big = m.command("VQ_PAIRS_SET with a 4-byte ack buffer", VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                    struct.pack("<H", n), ack_room=4)
    _judge_ack(verdict, big, VIRTIO_NET_OK)


def control_features(rig: Rig, verdict: Verdict, layout: Layout) -> int | None:
    """The features of the control queue checks in ``layout``: CTRL_VQ, MQ where offered, no EVENT_IDX. None with
    :data:`IDS` reported not offered, or the steering ids not applicable where frames do not come back; without
    MQ the steering ids read not offered."""
    feats = rig.features_for(event_idx=False, extra=CTRL_FEATURES, layout=layout)
    if feats is None or not has(feats, NetF.CTRL_VQ):
        why = "VIRTIO_NET_F_CTRL_VQ not offered" + (" with RING_PACKED" if layout == "packed" else "")
        for rid in IDS:
            verdict.not_offered(rid, why)
        return None
    if not has(feats, NetF.MQ):
        for rid in STEERING_IDS:
            verdict.not_offered(rid, "VIRTIO_NET_F_MQ not offered")
    return feats if rig.looped(verdict, *STEERING_IDS) else None


@pytest.mark.req(*IDS)
def test_control_queue_and_receive_steering(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(bench.variant(queues=PAIRS)) as rig:
        feats = control_features(rig, verdict, "split")
        if feats is None:
            return
        m = MqRig(rig, feats)
        judge_mq_commands(verdict, m)
        if not m.mq:
            _ctrl_notifications(verdict, m)
            _event_idx_notifications(verdict, rig, feats)
            return
        _ctrl_notifications(verdict, m)
        # After a reset and a new initialization: receiveq1 only again.
        m = MqRig(rig, feats)
        _judge_steering(verdict, m, 1, "after reset and a new initialization", 600)
        _event_idx_notifications(verdict, rig, feats)
