"""The MSI-X table and Pending Bit Array as the PCI specification defines them (PCI-DEV-01, PCI-DEV-54).

Per-vector masking of queue and configuration events is judged with the vector mapping in
test_interrupts.py (PCI-DEV-56); here: the table's entries at the access widths the PCI specification
allows (aligned dword and qword), every entry masked out of reset, the PBA read-only and sized for the
table, and the Function Mask holding every vector's message as a pending bit until it is cleared.
"""

from __future__ import annotations

import time

import pytest

from backend.drivers.transport import MsixInfo
from backend.pci.device import IrqIndex, PciDevice, config_read, config_write, read_int, write_int
from backend.virtio.features import F, bit
from backend.virtio.pci_regs import (
    MSIX_CONTROL_ENABLE,
    MSIX_CONTROL_FUNCTION_MASK,
    MSIX_ENTRY_CTRL_MASKED,
    MSIX_ENTRY_SIZE,
    MSIX_ENTRY_VECTOR_CTRL,
)
from testbenches.conformance.harness import (
    EVENT_WAIT,
    NEEDS_RESET,
    TX,
    Bench,
    BenchDriver,
    Rig,
    drain,
    make_frame,
    wait_fd,
)
from testbenches.conformance.plugin import Verdict
from testbenches.driver.virtio_net import DEFAULT_FEATURES

#: Without EVENT_IDX and with avail.flags 0 every used buffer is due its notification.
ROUTING_FEATURES = DEFAULT_FEATURES & ~bit(F.EVENT_IDX)


def _pba(dev: PciDevice, info: MsixInfo) -> list[int]:
    """The vectors whose Pending Bit is set."""
    raw = dev.region_read(info.pba_bar, info.pba_offset, (info.table_size + 63) // 64 * 8)
    return [v for v in range(info.table_size) if raw[v // 8] >> (v % 8) & 1]


def _pba_settled(dev: PciDevice, info: MsixInfo, expected: list[int], timeout: float) -> list[int]:
    """The Pending Bits once they read ``expected``, or as they read when ``timeout`` (the rig's
    :attr:`~testbenches.conformance.harness.Rig.event_wait`) ran out.

    A device in its own process (vfio-user, a real card) sets a Pending Bit after the used index or status write
    the check waited for, and nothing orders the driver's read of the PBA after it; a single read races the
    device. The wait is bounded, so a device that never sets (or never clears) the bit still fails."""
    deadline = time.monotonic() + timeout
    pending = _pba(dev, info)
    while pending != expected and time.monotonic() < deadline:
        time.sleep(0.002)  # polling a register the device updates from its own thread, bounded
        pending = _pba(dev, info)
    return pending


def _address(v: int) -> int:
    """A message address unlike every other entry's, with both halves non-zero."""
    return 0xFEE0_0000 | (v << 12) | 0x5A5A_0000_0000_0000 | (v << 2)


def _swapped(address: int) -> int:
    return (address & 0xFFFFFFFF) << 32 | address >> 32


@pytest.mark.req("PCI-DEV-01", "PCI-DEV-54")
def test_msix_table_entries_and_pba(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    dev = t.pci
    info = t.msix
    if info is None:
        for rid in ("PCI-DEV-01", "PCI-DEV-54"):
            verdict.not_applicable(rid, "no MSI-X capability")
        return
    masking = dev.abilities().msix_masking
    if masking is not None:
        for rid in ("PCI-DEV-01", "PCI-DEV-54"):
            verdict.not_applicable(rid, f"the platform owns the MSI-X table: {masking.why}")
        return
    n = info.table_size
    pba_len = (n + 63) // 64 * 8
    bar_size = dev.region_info(info.pba_bar).size
    verdict.check("PCI-DEV-54", info.pba_offset + pba_len <= bar_size,
                  f"PBA of {n} vectors ({pba_len} bytes) at BAR{info.pba_bar}+{info.pba_offset:#x} vs BAR size "
                  f"{bar_size:#x}")
    entry = [info.table_offset + v * MSIX_ENTRY_SIZE for v in range(n)]
    ctrls = [read_int(dev, info.table_bar, e + MSIX_ENTRY_VECTOR_CTRL, 4) for e in entry]
    odd = {v: hex(c) for v, c in enumerate(ctrls) if c != MSIX_ENTRY_CTRL_MASKED}
    verdict.check("PCI-DEV-01", not odd, f"Vector Control out of reset reads {odd} (the Mask bit set, the reserved "
                                         f"bits 0)")
    # Message address and data of every entry: a qword write reads back as dwords, dword writes as a qword.
    for v, e in enumerate(entry):
        address = _address(v)
        data = 0x4000 | v
        write_int(dev, info.table_bar, e, 8, address)
        write_int(dev, info.table_bar, e + 8, 4, data)
        lo, hi = read_int(dev, info.table_bar, e, 4), read_int(dev, info.table_bar, e + 4, 4)
        got_data = read_int(dev, info.table_bar, e + 8, 4)
        verdict.check("PCI-DEV-54", lo | hi << 32 == address and got_data == data,
                      f"MSI-X entry {v}: address {address:#x} and data {data:#x} written read {hi << 32 | lo:#x}, "
                      f"{got_data:#x}")
        write_int(dev, info.table_bar, e, 4, address >> 32)  # dword writes, read back as one qword
        write_int(dev, info.table_bar, e + 4, 4, address & 0xFFFFFFFF)
        swapped = read_int(dev, info.table_bar, e, 8)
        want = _swapped(address)
        verdict.check("PCI-DEV-54", swapped == want, f"MSI-X entry {v}: dword writes {want:#x} read as qword "
                                                      f"{swapped:#x}")
        for ctrl in (0, MSIX_ENTRY_CTRL_MASKED):
            write_int(dev, info.table_bar, e + MSIX_ENTRY_VECTOR_CTRL, 4, ctrl)
            got = read_int(dev, info.table_bar, e + MSIX_ENTRY_VECTOR_CTRL, 4) & MSIX_ENTRY_CTRL_MASKED
            verdict.check("PCI-DEV-01", got == ctrl, f"MSI-X entry {v}: Mask bit written {ctrl} reads {got}")
    # Each entry is its own registers: once all are written, every one still holds its own last values (a write
    # that reached a neighbouring entry or field, or moved the table, shows here and not in the entry's read-back).
    final = {v: (_swapped(_address(v)), 0x4000 | v, MSIX_ENTRY_CTRL_MASKED) for v in range(n)}
    held = {v: (read_int(dev, info.table_bar, e, 8), read_int(dev, info.table_bar, e + 8, 4),
                read_int(dev, info.table_bar, e + MSIX_ENTRY_VECTOR_CTRL, 4) & MSIX_ENTRY_CTRL_MASKED)
            for v, e in enumerate(entry)}
    moved = {v: tuple(hex(x) for x in held[v]) for v in range(n) if held[v] != final[v]}
    verdict.check("PCI-DEV-54", not moved, f"after writing all {n} entries, entries not holding their own last "
                                           f"address, data and Mask bit: {moved}")
    pending = _pba(dev, info)
    verdict.check("PCI-DEV-01", not pending, f"pending bits {pending} with no event raised")
    dev.region_write(info.pba_bar, info.pba_offset, b"\xff" * pba_len)
    pending = _pba(dev, info)
    verdict.check("PCI-DEV-01", not pending, f"the PBA is read-only, but writing ones set pending bits {pending}")


def _msix_up(r: Rig, verdict: Verdict, vector_each: bool = False) -> tuple[BenchDriver, MsixInfo] | None:
    """The device up on MSI-X whose masking the device itself honours; None with PCI-DEV-01 not applicable where
    the platform owns masking or there is no MSI-X (with ``vector_each``: or config and transmitq1 share a
    vector)."""
    masking = r.abilities.msix_masking
    if masking is not None:
        verdict.not_applicable("PCI-DEV-01", f"the platform owns MSI-X masking: {masking.why}")
        return None
    d = r.up(features=ROUTING_FEATURES, queue_size=8, rx_buffers=0)
    info = d.transport.msix
    if info is None or d.intx or (vector_each and d.vectors["config"] == d.vector_of(TX)):
        verdict.not_applicable("PCI-DEV-01", "no MSI-X capability, or too few vectors for config and transmitq1 to "
                                             "have one each" if vector_each else "no MSI-X capability")
        return None
    return d, info


@pytest.mark.req("PCI-DEV-01")
def test_msix_function_mask_holds_messages(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        up = _msix_up(r, verdict)
        if up is None:
            return
        d, info = up
        vector = d.vector_of(TX)
        fd = r.irq_fd(TX)
        r.drain_irqs()
        control = config_read(r.pci, info.cap_offset + 2, 2)
        config_write(r.pci, info.cap_offset + 2, 2, control | MSIX_CONTROL_FUNCTION_MASK)
        ring = d.queues[TX]
        heads = [ring.add([bytes(d.hdr_len) + make_frame(seq, 80)], []) for seq in range(2)]
        ring.publish()
        r.doorbell(TX)
        # nominal seconds: the rig's own helpers stretch their timeouts (Rig.stretched)
        used, seen = r.wait_used_idx(TX, len(heads), EVENT_WAIT)
        early = wait_fd(fd, r.silence(r.quiet)) if not seen else True
        pending = _pba_settled(r.pci, info, [vector], r.event_wait)
        entry = read_int(r.pci, info.table_bar, info.table_offset + vector * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CTRL,
                         4)
        verdict.check("PCI-DEV-01", used and not early and pending == [vector] and not entry & MSIX_ENTRY_CTRL_MASKED,
                      f"Function Mask set: TX buffers {'used' if used else 'not used'}, vector {vector} "
                      f"{'signalled' if early else 'silent'}, pending bits {pending} (expected [{vector}]), its own "
                      f"Mask bit {entry & MSIX_ENTRY_CTRL_MASKED}")
        config_write(r.pci, info.cap_offset + 2, 2, control & ~MSIX_CONTROL_FUNCTION_MASK | MSIX_CONTROL_ENABLE)
        fired = wait_fd(fd, r.event_wait)
        after = _pba_settled(r.pci, info, [], r.event_wait)
        verdict.check("PCI-DEV-01", fired and not after,
                      f"Function Mask cleared: vector {vector} "
                      f"{'signalled' if fired else f'silent for {r.explain()}'}, pending bits {after} (expected none)")
        d.queues[TX].used()


@pytest.mark.req("PCI-DEV-01")
def test_msix_function_mask_holds_every_vectors_message(bench: Bench, verdict: Verdict) -> None:
    """Messages for two vectors while the Function Mask is set: a transmit completion (transmitq1's vector) and the
    configuration change the device owes when it sets DEVICE_NEEDS_RESET (a transmit chain naming a descriptor
    past the queue size, STATUS-DEV-03). Each sets its own Pending Bit and neither clears the other's; clearing
    the Function Mask sends each message on its own vector and clears every Pending Bit."""
    with bench.rig() as r:
        up = _msix_up(r, verdict, vector_each=True)
        if up is None:
            return
        d, info = up
        config_vector, tx_vector = d.vectors["config"], d.vector_of(TX)
        config_fd, tx_fd = d.irq_fds["config"], r.irq_fd(TX)
        d.transport.read_isr()
        r.drain_irqs()
        drain(config_fd)
        control = config_read(r.pci, info.cap_offset + 2, 2)
        config_write(r.pci, info.cap_offset + 2, 2, control | MSIX_CONTROL_FUNCTION_MASK)
        ring = d.queues[TX]
        ring.add([bytes(d.hdr_len) + make_frame(0, 80)], [])
        ring.publish()
        r.doorbell(TX)
        used, seen = r.wait_used_idx(TX, 1, EVENT_WAIT)
        after_tx = _pba_settled(r.pci, info, [tx_vector], r.event_wait)
        ring.push_head(ring.size + 5)  # the device refuses the ring: DEVICE_NEEDS_RESET and a config change
        ring.publish()
        r.doorbell(TX)
        deadline = time.monotonic() + r.event_wait
        while not d.transport.status() & NEEDS_RESET and time.monotonic() < deadline:
            time.sleep(0.005)  # polling a register the device sets from its own thread, bounded
        needs_reset = bool(d.transport.status() & NEEDS_RESET)
        early = bool(seen) or wait_fd(tx_fd, 0) or wait_fd(config_fd, r.silence(r.quiet))
        held = _pba_settled(r.pci, info, sorted((config_vector, tx_vector)), r.event_wait)
        config_write(r.pci, info.cap_offset + 2, 2, control & ~MSIX_CONTROL_FUNCTION_MASK | MSIX_CONTROL_ENABLE)
        fired = {"config": wait_fd(config_fd, r.event_wait), "transmitq1": wait_fd(tx_fd, r.event_wait)}
        after = _pba_settled(r.pci, info, [], r.event_wait)
        both = sorted((config_vector, tx_vector))
        verdict.check("PCI-DEV-01", used and after_tx == [tx_vector] and needs_reset and not early and held == both
                      and all(fired.values()) and not after,
                      f"Function Mask set: transmit completion {'used' if used else 'not used'}, pending bits "
                      f"{after_tx} (expected [{tx_vector}]); DEVICE_NEEDS_RESET "
                      f"{'set' if needs_reset else 'not set'}, pending bits {held} (expected {both}), a message sent "
                      f"while masked: {early}; mask cleared: {fired}, pending bits then {after}")


@pytest.mark.req("PCI-DEV-01")
def test_msix_vector_without_eventfd_holds_its_message(bench: Bench, verdict: Verdict) -> None:
    """transmitq1's vector loses its eventfd (SET_IRQS with none for that vector, as VFIO's user does when it
    withdraws a trigger): the platform masks the vector, so a transmit completion sets its Pending Bit and sends
    nothing; binding an eventfd again unmasks it and the held message arrives, the Pending Bit cleared."""
    with bench.rig() as r:
        up = _msix_up(r, verdict)
        if up is None:
            return
        d, info = up
        vector, fd = d.vector_of(TX), r.irq_fd(TX)
        r.drain_irqs()
        r.pci.set_irqs(IrqIndex.MSIX, vector, [None])
        ctrl = read_int(r.pci, info.table_bar, info.table_offset + vector * MSIX_ENTRY_SIZE + MSIX_ENTRY_VECTOR_CTRL, 4)
        ring = d.queues[TX]
        ring.add([bytes(d.hdr_len) + make_frame(0, 80)], [])
        ring.publish()
        r.doorbell(TX)
        used, seen = r.wait_used_idx(TX, 1, EVENT_WAIT)
        early = bool(seen) or wait_fd(fd, r.silence(r.quiet))
        held = _pba_settled(r.pci, info, [vector], r.event_wait)
        r.pci.set_irqs(IrqIndex.MSIX, vector, [fd])
        fired = wait_fd(fd, r.event_wait)
        after = _pba_settled(r.pci, info, [], r.event_wait)
        ring.used()
        verdict.check("PCI-DEV-01", bool(ctrl & MSIX_ENTRY_CTRL_MASKED) and used and not early and held == [vector]
                      and fired and not after,
                      f"vector {vector} without an eventfd: Mask bit {ctrl & MSIX_ENTRY_CTRL_MASKED}, transmit "
                      f"completion {'used' if used else 'not used'}, a message sent {early}, pending bits {held} "
                      f"(expected [{vector}]); eventfd bound again: "
                      f"{'signalled' if fired else f'silent for {r.explain()}'}, pending bits {after}")
