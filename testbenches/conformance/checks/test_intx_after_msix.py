"""INTx once MSI-X is disabled again (4.1.4.5, 4.1.5.1.2).

A driver that gives MSI-X up (a guest falling back to INTx, or a VFIO user closing its MSI-X eventfds) clears
the MSI-X Enable bit; from then on the device is a function with MSI-X disabled and signals through ISR status
and INTx. :mod:`test_interrupts` judges INTx on a function whose MSI-X was never enabled; here MSI-X is enabled
with every vector bound first, then disabled, and only then is the device brought up on INTx: a used buffer
notification must set the queue bit of ISR status and assert INTx (PCI-DEV-39).
"""

from __future__ import annotations

import os

import pytest

from backend.drivers.transport import VirtioPciModern
from backend.eventloop import new_eventfd
from backend.pci.device import IrqIndex
from testbenches.conformance.checks.test_interrupts import ROUTING_FEATURES
from testbenches.conformance.harness import TX, Bench, drain, make_frame, wait_fd
from testbenches.conformance.plugin import Verdict

ISR_QUEUE = 0x1


@pytest.mark.req("PCI-DEV-39")
def test_intx_after_msix_was_disabled(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        table = VirtioPciModern(r.pci).msix_table_size()
        if table == 0:
            verdict.not_applicable("PCI-DEV-39", "the function has no MSI-X capability to enable and disable")
            return
        fds = [new_eventfd() for _ in range(table)]
        try:
            r.pci.set_irqs(IrqIndex.MSIX, 0, fds)  # MSI-X enabled, every vector bound
            r.pci.set_irqs(IrqIndex.MSIX, 0, [])  # and disabled again
        finally:
            for fd in fds:
                os.close(fd)
        d = r.up(features=ROUTING_FEATURES, irq_mode="intx", queue_size=64, rx_buffers=8)
        intx = d.irq_fds["intx"]
        t = d.transport
        drain(intx)
        t.read_isr()
        r.send([make_frame(1)])
        fired = wait_fd(intx, r.event_wait)
        used = len(r.wait_used(TX, 1))
        isr = t.read_isr()
        verdict.check("PCI-DEV-39", fired and bool(isr & ISR_QUEUE) and used == 1,
                      f"MSI-X enabled with {table} vectors bound, then disabled; brought up on INTx, one frame sent: "
                      f"INTx {'asserted' if fired else f'not seen within {r.explain()}'}, ISR read afterwards {isr:#x} "
                      f"(queue bit 0 expected set), {used}/1 transmit buffer used")
