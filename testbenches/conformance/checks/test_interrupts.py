"""Interrupts (4.1.4.5, 4.1.5.1.2, 4.1.5.3, 4.1.5.4) and config_generation (4.1.4.3).

INTx checks leave MSI-X disabled and bind the INTx eventfd; MSI-X checks bind
one eventfd per vector. A configuration change is provoked through the
target's port (``set_link``, declared in its abilities); targets without one
report the config-change rows not applicable here. With a loopback wire the
frames sent come back, and the receive side is counted too. The checks whose
interrupts come from used buffers run on both ring layouts (``ring_layout``).
"""

from __future__ import annotations

import struct
import time

import pytest

from backend.drivers.transport import VirtioPciModern
from backend.pci.abilities import Lacking, PortControl
from backend.pci.device import config_read
from backend.virtio.features import F, bit
from backend.virtio.pci_regs import (
    ISR_CONFIG,
    ISR_QUEUE,
    MSIX_ENTRY_CTRL_MASKED,
    MSIX_ENTRY_SIZE,
    NO_VECTOR,
    PCI_STATUS_INTERRUPT,
    VIRTIO_NET_S_LINK_UP,
    NetCfg,
    PciCfg,
)
from testbenches.conformance.harness import (
    MAX_BOUND_VECTORS,
    RX,
    TX,
    Bench,
    Rig,
    acknowledge,
    drain,
    make_frame,
    need,
    settled,
    signalled,
    wait_fd,
)
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout
from testbenches.driver.virtio_net import DEFAULT_FEATURES

#: Interrupt routing is checked without EVENT_IDX: with avail.flags 0 every used buffer is then due a
#: notification, so these checks do not depend on the notification suppression logic (SPLIT-DEV rows).
ROUTING_FEATURES = DEFAULT_FEATURES & ~bit(F.EVENT_IDX)


def pci_int_status(r: Rig) -> bool:
    """The Interrupt Status bit of the PCI Status register."""
    return bool(config_read(r.pci, PciCfg.STATUS, 2) & PCI_STATUS_INTERRUPT)


#: Offset of the Vector Control dword in an MSI-X table entry (after the message address and data).
MSIX_VECTOR_CONTROL = 12


def mask_vector(r: Rig, vector: int, masked: bool) -> bool:
    """Set or clear the Mask bit of ``vector``'s MSI-X table entry; True if it reads back so (a target whose
    table the platform owns, as VFIO does, may not let the driver mask)."""
    info = r.drv.transport.msix
    assert info is not None
    off = info.table_offset + MSIX_ENTRY_SIZE * vector + MSIX_VECTOR_CONTROL
    r.pci.region_write(info.table_bar, off, struct.pack("<I", MSIX_ENTRY_CTRL_MASKED if masked else 0))
    (ctrl,) = struct.unpack("<I", r.pci.region_read(info.table_bar, off, 4))
    if ctrl == 0xFFFFFFFF:  # an access the platform refused, not a Mask bit that stuck
        return False
    return bool(ctrl & MSIX_ENTRY_CTRL_MASKED) == masked


def pending_vectors(r: Rig, count: int) -> list[int]:
    """The vectors below ``count`` whose Pending Bit is set in the PBA."""
    info = r.drv.transport.msix
    assert info is not None
    pba = r.pci.region_read(info.pba_bar, info.pba_offset, (count + 7) // 8)
    return [v for v in range(count) if pba[v // 8] >> (v % 8) & 1]


def wait_pending(r: Rig, count: int, vector: int) -> list[int]:
    """Poll the PBA (bounded by the rig's :attr:`~Rig.event_wait`) until ``vector``'s bit is set; the pending
    vectors then."""
    deadline = time.monotonic() + r.event_wait
    while True:
        got = pending_vectors(r, count)
        if vector in got or time.monotonic() >= deadline:
            return got
        time.sleep(0.002)  # a bounded poll of a register, not synchronisation by sleeping


def toggle_link(port: PortControl) -> bool:
    """Flip the port's link; returns the new state."""
    up = not port.link_up
    port.set_link(up)
    return up


@pytest.mark.req("PCI-DEV-39", "PCI-DEV-40", "PCI-DEV-41")
def test_intx_used_buffer_isr(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    with bench.rig() as r:
        if not r.offers(ring_layout, verdict, "PCI-DEV-39", "PCI-DEV-40", "PCI-DEV-41"):
            return
        d = r.up(features=ROUTING_FEATURES, irq_mode="intx", queue_size=64, rx_buffers=8, layout=ring_layout)
        t = d.transport
        intx = d.irq_fds["intx"]
        drain(intx)
        idle_status, idle_isr = pci_int_status(r), t.read_isr()
        verdict.check("PCI-DEV-40", idle_status == bool(idle_isr),
                      f"idle: PCI Status.Interrupt={int(idle_status)} while ISR status reads {idle_isr:#x}")
        r.send([make_frame(1)])
        fired = wait_fd(intx, r.event_wait)
        # Let every event of this exchange land (TX completion, and the looped-back frame) before sampling.
        used_tx = len(r.wait_used(TX, 1))
        used_rx = len(r.wait_used(RX, 1)) if r.wire.looped else 0
        # The line is asserted (it fired) and drops once ISR status is read: the bit follows a moment later on a
        # device in its own process, so each sample waits (bounded) for the value the rule expects.
        status_before = settled(lambda: pci_int_status(r), True, r.event_wait)
        isr = t.read_isr()
        status_after = settled(lambda: pci_int_status(r), False, r.event_wait)
        isr_again = t.read_isr()
        verdict.check("PCI-DEV-39", fired and bool(isr & ISR_QUEUE),
                      f"MSI-X disabled, one frame sent: INTx "
                      f"{'asserted' if fired else f'not seen within {r.explain()}'}, "
                      f"ISR read afterwards {isr:#x} (queue bit 0 expected set); used TX {used_tx}, RX {used_rx}")
        if r.looped(verdict, "PCI-DEV-39"):
            verdict.check("PCI-DEV-39", used_tx == 1 and used_rx == 1,
                          f"MSI-X disabled, one frame sent on a loopback wire: used TX {used_tx}, RX {used_rx} "
                          f"(1 each expected within {r.explain()})")
        verdict.check("PCI-DEV-40", status_before == bool(isr),
                      f"PCI Status.Interrupt={int(status_before)} sampled right before ISR read {isr:#x}")
        verdict.check("PCI-DEV-40", status_after == bool(isr_again),
                      f"after the ISR read: PCI Status.Interrupt={int(status_after)} while ISR next reads "
                      f"{isr_again:#x}")
        verdict.check("PCI-DEV-41", isr != 0 and isr_again == 0,
                      f"ISR reads {isr:#x} then {isr_again:#x} with no new event in between (expected non-zero, 0)")


@pytest.mark.parametrize("irq_mode", ["intx", "msix"])
@pytest.mark.req("PCI-DEV-38", "PCI-DEV-40", "PCI-DEV-41")
def test_config_change_sets_isr_bit1(bench: Bench, verdict: Verdict, irq_mode: str) -> None:
    with bench.rig() as r:
        port = need(r.port, verdict, "PCI-DEV-38", "PCI-DEV-40", "PCI-DEV-41")
        if port is None:
            return
        d = r.up(irq_mode=irq_mode, rx_buffers=0)
        t = d.transport
        t.read_isr()  # start from a clear ISR
        fd = d.irq_fds["config"]
        drain(fd)
        up = toggle_link(port)
        fired = wait_fd(fd, r.event_wait)
        settle = r.event_wait if d.intx else 0.0  # the mirror is judged with INTx only
        status_before = settled(lambda: pci_int_status(r), True, settle)
        isr = t.read_isr()
        status_after = settled(lambda: pci_int_status(r), False, settle)
        isr_again = t.read_isr()
        how = "INTx" if d.intx else f"config vector {d.vectors['config']}"
        verdict.check("PCI-DEV-38", fired and bool(isr & ISR_CONFIG),
                      f"link set {'up' if up else 'down'}: {how} "
                      f"{'fired' if fired else f'silent for {r.explain()}'}, "
                      f"ISR then reads {isr:#x} (config bit 1 expected set)")
        if d.intx:
            verdict.check("PCI-DEV-40", status_before == bool(isr) and status_after == bool(isr_again),
                          f"PCI Status.Interrupt {int(status_before)} then ISR reads {isr:#x}; Interrupt "
                          f"{int(status_after)} then ISR reads {isr_again:#x} (the bit must mirror ISR)")
        else:
            verdict.not_applicable("PCI-DEV-40", "MSI-X enabled: the PCI Status mirror applies with MSI-X disabled")
        verdict.check("PCI-DEV-41", isr != 0 and isr_again == 0,
                      f"ISR reads {isr:#x} then {isr_again:#x} after one config change (expected non-zero, 0)")


@pytest.mark.req("PCI-DEV-62", "PCI-DEV-63")
def test_no_vector_raises_nothing(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    with bench.rig() as r:
        if not r.offers(ring_layout, verdict, "PCI-DEV-62", "PCI-DEV-63"):
            return
        if not VirtioPciModern(r.pci).msix_table_size():
            for rid in ("PCI-DEV-62", "PCI-DEV-63"):
                verdict.not_applicable(rid, "no MSI-X capability")
            return
        d = r.up(features=ROUTING_FEATURES, vectors={"config": NO_VECTOR, "rx": NO_VECTOR, "tx": NO_VECTOR},
                 queue_size=64, rx_buffers=8, layout=ring_layout)
        t = d.transport
        read_back = {q: t.queue_msix_vector(q) for q in (RX, TX)}
        vecs = d.vector_fds()
        for fd in vecs.values():
            drain(fd)
        n = r.tx_room(4)
        r.send([make_frame(i) for i in range(n)])
        used_tx = len(r.wait_used(TX, n))
        used_rx = len(r.wait_used(RX, min(n, r.ring(RX).size))) if r.wire.looped else 0
        late = signalled(vecs, r.silence())
        fired = sorted(set(r.fired + late))
        if used_tx == 0:
            verdict.not_applicable("PCI-DEV-62", "the device completed no transmit buffer, nothing to observe")
        else:
            verdict.check("PCI-DEV-62", not fired,
                          f"queue vectors read back {read_back} (NO_VECTOR {NO_VECTOR:#x}); {used_tx} TX and "
                          f"{used_rx} RX buffers used, yet MSI-X eventfds fired: {fired}")
        # Every bound vector masked: an unmapped event must not leave a pending bit on any of them either.
        bound = d.bound_vectors
        masked = r.abilities.msix_masking is None and all([mask_vector(r, v, True) for v in range(bound)])
        if masked:
            more = r.tx_room(2)
            r.send([make_frame(0x200 + i) for i in range(more)])
            used = len(r.wait_used(TX, more))
            if r.wire.looped:
                r.wait_used(RX, more)
            held = pending_vectors(r, bound)
            verdict.check("PCI-DEV-62", used == more and not held,
                          f"every vector masked, queues on NO_VECTOR: {used} of {more} TX buffers used, pending bits "
                          f"set: {held or 'none'}")
        else:
            verdict.not_applicable("PCI-DEV-62", "the MSI-X Mask bits do not stick: pending bits of masked vectors "
                                                 "cannot be exercised on this target")
        if r.looped(verdict, "PCI-DEV-62"):
            verdict.check("PCI-DEV-62", used_tx == n and used_rx == n,
                          f"{n} frames sent on a loopback wire with every vector NO_VECTOR: used TX {used_tx}, "
                          f"RX {used_rx} ({n} each expected within {r.explain()})")
        port = need(r.port, verdict, "PCI-DEV-63")
        if port is None:
            return
        gen = t.config_generation()
        up = toggle_link(port)
        fired = signalled(vecs, r.silence())
        (status,) = t.read_config_fields([(NetCfg.STATUS, 2)])
        changed = t.config_generation() != gen or bool(status & VIRTIO_NET_S_LINK_UP) == up
        held = pending_vectors(r, bound)  # every vector still masked where the target lets them be
        for v in range(bound):
            mask_vector(r, v, False)
        late = signalled(vecs, r.silence())
        verdict.check("PCI-DEV-63", not fired and changed and not held and not late,
                      f"config_msix_vector {t.config_msix_vector():#x}; link set {'up' if up else 'down'} "
                      f"(status now {status:#x}, generation {gen} -> {t.config_generation()}); "
                      f"MSI-X eventfds fired: {fired or 'none'}; "
                      + (f"with every vector masked, pending bits {held or 'none'}, fired once unmasked: "
                         f"{late or 'none'}" if masked else "(masking not possible on this target)"))


@pytest.mark.req("PCI-DEV-56")
def test_vector_mapping_end_to_end(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    with bench.rig() as r:
        if not r.offers(ring_layout, verdict, "PCI-DEV-56"):
            return
        table = VirtioPciModern(r.pci).msix_table_size()
        if not table:
            verdict.not_applicable("PCI-DEV-56", "no MSI-X capability")
            return
        n = min(table, MAX_BOUND_VECTORS)
        for v in sorted({0, 1, n // 2, n - 1} & set(range(n))):
            cfg_v = (v + 1) % n
            d = r.up(features=ROUTING_FEATURES, vectors={"tx": v, "rx": NO_VECTOR, "config": cfg_v}, queue_size=32,
                     rx_buffers=0, layout=ring_layout)
            fds = d.vector_fds()
            for fd in fds.values():
                drain(fd)
            r.send([make_frame(v)])
            fired = wait_fd(fds[f"v{v}"], r.event_wait)
            others = signalled({k: f for k, f in fds.items() if k != f"v{v}"}, r.silence())
            used = len(r.wait_used(TX, 1))
            left = pending_vectors(r, n)
            verdict.check("PCI-DEV-56", fired and not others and not left,
                          f"transmitq1 mapped to vector {v} of {table}: that vector "
                          f"{'fired' if fired else f'silent for {r.explain()}'}, others fired: {others or 'none'} "
                          f"({used} TX buffer used), pending bits left set: {left or 'none'}")
            # The same event with the vector masked: held as its pending bit, sent once unmasked.
            if r.abilities.msix_masking is not None:
                verdict.not_applicable("PCI-DEV-56", r.abilities.msix_masking.why)
            elif not mask_vector(r, v, True):
                verdict.not_applicable("PCI-DEV-56", f"vector {v}'s Mask bit does not stick: masked vectors and "
                                                     "their pending bits cannot be exercised on this target")
            else:
                r.send([make_frame(v + 0x100)])
                used = len(r.wait_used(TX, 1))
                held = wait_pending(r, n, v)
                quiet = signalled(fds, r.silence())
                mask_vector(r, v, False)
                fired = wait_fd(fds[f"v{v}"], r.event_wait)
                others = signalled({k: f for k, f in fds.items() if k != f"v{v}"}, r.silence())
                after = pending_vectors(r, n)
                verdict.check("PCI-DEV-56", held == [v] and not quiet and fired and not others and not after,
                              f"transmitq1 on masked vector {v}: {used} TX buffer used, pending bits {held or 'none'} "
                              f"(expected [{v}]), eventfds fired while masked: {quiet or 'none'}; unmasked: vector "
                              f"{v} {'fired' if fired else f'silent for {r.explain()}'}, "
                              f"others {others or 'none'}, "
                              f"pending bits then {after or 'none'}")
            port = r.port
            if n > 1 and not isinstance(port, Lacking):
                toggle_link(port)
                fired = wait_fd(fds[f"v{cfg_v}"], r.event_wait)
                others = signalled({k: f for k, f in fds.items() if k != f"v{cfg_v}"}, r.silence())
                verdict.check("PCI-DEV-56", fired and not others,
                              f"config changes mapped to vector {cfg_v}: that vector "
                              f"{'fired' if fired else f'silent for {r.explain()}'}, "
                              f"others fired: {others or 'none'}")


@pytest.mark.req("PCI-DEV-17")
def test_config_generation_moves_with_config(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    model = need(t.pci.abilities().port, verdict, "PCI-DEV-17")
    if model is None:
        return
    acknowledge(t)
    start = t.config_generation()
    wrapped = False
    for i in range(300):  # more than 256 changes: a counting generation wraps its 8 bits on the way
        before = t.config_generation()
        model.set_link(not model.link_up)
        (status,) = t.read_config_fields([(NetCfg.STATUS, 2)])
        after = t.config_generation()
        wrapped |= after < before
        ok = verdict.check("PCI-DEV-17", after != before,
                           f"change {i} (generation started at {start}, wrapped past 255: {wrapped}): status now "
                           f"{status:#x} but config_generation stayed {before}")
        link_ok = verdict.check("PCI-DEV-17", bool(status & VIRTIO_NET_S_LINK_UP) == bool(model.link_up),
                                f"change {i}: status {status:#x} does not show the link "
                                f"{'up' if model.link_up else 'down'}")
        if not (ok and link_ok):
            break
