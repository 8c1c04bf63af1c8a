"""The virtio-net data path on packed queues (2.8): transmit, receive (with and without MRG_RXBUF), control.

The model's split data path lives in :mod:`models.virtio_net.device`, with its bulk numpy paths; this is the
packed counterpart, chain by chain through :class:`~models.virtio_net.packed_engine.PackedQueue` with every
check of the engine, except the transmit queue's runs of one-descriptor lists, taken in bulk by
:mod:`models.virtio_net.packed_fast` when the device keeps every per-list hook as it is. The device's per-chain
hooks ``tx_frame``, ``tx_offload``, ``rx_header`` and ``control_command`` apply here too; ``used_len_for`` and
``notify_used`` take a split queue, so this path writes the bytes written and signals the queue's vector itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from backend.pci.device import DmaFaultError
from backend.virtio.features import NetF, has
from backend.virtio.packed_ring import EventFlags, advance
from models.virtio_net import packed_fast
from models.virtio_net.packed_engine import PackedChain, PackedQueue, UsedElem
from models.virtio_net.split_engine import RingError, full_barrier

if TYPE_CHECKING:
    from models.virtio_net.device import VirtioNetDevice

#: Rounds of taking every available list before the device lets go of the lock (as the split TX path).
MAX_ROUNDS = 64
_CTRL_MAX_COMMAND = 4096
#: What to do with one list; returns the bytes written into it (the used length).
_ChainFn = Callable[["VirtioNetDevice", PackedQueue, PackedChain], int]


def process(dev: VirtioNetDevice, q: PackedQueue) -> None:
    """An available buffer notification on packed queue ``q``: TX and control queues are served, an RX kick only
    says buffers were added (they are used when frames arrive)."""
    if dev.is_ctrl(q):
        _serve(dev, q, _ctrl_chain)
    elif q.index % 2:
        _serve(dev, q, _tx_chain)


def _publish(dev: VirtioNetDevice, q: PackedQueue, elems: list[UsedElem], batch: bool) -> None:
    old, new = q.push_used(elems, in_order_batch=batch)
    if q.needs_notification(old, new):
        dev.signal_queue(q.msix_vector)


def _serve(dev: VirtioNetDevice, q: PackedQueue, one: _ChainFn) -> None:
    """Take every available list, round after round, with available buffer notifications off while busy; then
    ask for one at the next slot and look once more (a list made available while they were off came without)."""
    quiet = False
    batch_ok = q.in_order and dev.in_order_batch and one is _tx_chain
    bulk = one is _tx_chain and dev.packed_bulk_tx and dev.tx_bulk_now()
    maps = dev.packed_tx_maps(q)
    runs = 0
    try:
        for _ in range(MAX_ROUNDS):
            # After two runs a producer is at work: look at the ring a little longer before waiting for a kick.
            if bulk and (q.head_available() or (runs > 1 and packed_fast.poll_head(q))):
                if not quiet:
                    q.write_device_event(EventFlags.DISABLE)
                    quiet = True
                taken, old, new = packed_fast.tx_run(dev, q, maps)
                if taken:
                    runs += 1
                    if q.needs_notification(old, new):
                        dev.signal_queue(q.msix_vector)
                    continue
            chain = q.chain_at()
            if chain is None:
                if not quiet:
                    return
                q.want_kick_at_next()
                quiet = False
                full_barrier()
                if not q.head_available():
                    return
                continue
            if not quiet:
                q.write_device_event(EventFlags.DISABLE)  # no kicks while the device is at work anyway
                quiet = True
            # One list at a time, as far as the ring went when this round began: a malformed one stops the
            # device after the lists before it were served, as on a split ring.
            elems = []
            slots = 0
            while chain is not None:
                q.consume(chain.slots)
                slots += chain.slots
                elems.append(UsedElem(chain.head, one(dev, q, chain), chain.slots))
                chain = q.chain_at() if slots < q.size else None
                if bulk and chain is not None and _plain(chain):
                    break  # the rest of the run goes in bulk, next round
            _publish(dev, q, elems, batch_ok and all(e.len == 0 for e in elems))
        # Out of rounds: kicks are wanted again, and what is already there is taken once the lock is released.
        q.want_kick_at_next()
        quiet = False
        full_barrier()
        if q.head_available():
            index = q.index
            dev.defer(lambda: dev.kick_packed_locked(index, None))
    except (RingError, DmaFaultError):
        if quiet:  # the device stops until reset; the driver must not be left believing it need not kick
            with contextlib.suppress(DmaFaultError):
                q.want_kick_at_next()
        raise


def _plain(chain: PackedChain) -> bool:
    """A list the bulk path would take (one device-readable descriptor; its buffer checks are the bulk path's)."""
    return chain.slots == 1 and chain.ndesc == 1 and not chain.writable


def _tx_chain(dev: VirtioNetDevice, q: PackedQueue, chain: PackedChain) -> int:
    frame = dev.tx_frame(chain)
    if frame is not None:
        frame = dev.tx_offload(chain, frame)
    if frame is None:
        dev.stats.tx_errors += 1
    else:
        dev._transmit(frame)  # the device's own path to the wire (stats, link state, deferred delivery)
    return 0  # nothing written into a TX buffer


def _ctrl_chain(dev: VirtioNetDevice, q: PackedQueue, chain: PackedChain) -> int:
    if chain.writable_len >= 1 and 2 <= chain.readable_len <= _CTRL_MAX_COMMAND:
        cmd = b"".join(dev.dma.read(a, n) for a, n in chain.readable if n)
        reply = dev.control_reply(cmd, chain.writable_len)  # the ack, then any command-specific-result
        dev._scatter(chain.writable, reply)
        return len(reply)
    return 0


def receive(dev: VirtioNetDevice, q: PackedQueue, frame: bytes) -> None:
    """One frame from the wire into packed RX queue ``q``: one buffer holding the whole packet, or with
    MRG_RXBUF as many as it needs (num_buffers in the header), all used at once."""
    need = dev.hdr_len + len(frame)
    chains: list[PackedChain] = []
    room = 0
    pos = (q.next_avail, q.avail_wrap)
    slots = 0
    merge = has(dev.negotiated, NetF.MRG_RXBUF)
    while room < need and slots < q.size and (merge or not chains):
        chain = q.chain_at(pos)
        if chain is None:
            break
        chains.append(chain)
        room += chain.writable_len
        slots += chain.slots
        pos = advance(pos[0], pos[1], chain.slots, q.size)
    if not chains or (merge and room < need):
        dev.stats.rx_no_buffer += 1  # dropped, no buffer used (no partial packet)
        return
    if room < need:
        # Without MRG_RXBUF one buffer holds the whole packet (NET-DEV-29); leave this one for later.
        dev.stats.rx_buffer_too_small += 1
        return
    data = memoryview(dev.rx_header(frame, len(chains) if merge else 1) + frame)
    elems = []
    at = 0
    for chain in chains:
        take = min(chain.writable_len, need - at)  # all but the last filled to their length (NET-DEV-32)
        dev._scatter(chain.writable, data[at:at + take])
        elems.append(UsedElem(chain.head, take, chain.slots))
        at += take
    q.consume(slots)
    _publish(dev, q, elems, False)  # every buffer of the packet in one update, each with its own length
    dev.stats.rx_packets += 1
    dev.stats.rx_bytes += len(frame)


__all__ = ["MAX_ROUNDS", "process", "receive"]
