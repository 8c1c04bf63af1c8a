"""The virtio-pci function's registers around resets, INTx and the PCI configuration access window.

- A device reset leaves no interrupt behind: ISR status reads 0, the PCI Status Interrupt bit is clear and
  INTx is not signalled by the reset (RESET-DEV-02, PCI-DEV-40); every queue field reads what a fresh device
  reads (RESET-DEV-04, PCI-DEV-19, PCI-DEV-59); the next used buffer notification asserts INTx anew (PCI-DEV-39).
- A fresh device reads as a reset one: device_status 0, nothing pending, no queue enabled, nothing mapped
  (RESET-DEV-01, PCI-DEV-19, PCI-DEV-40, PCI-DEV-59).
- Interrupt Disable in the PCI Command register holds INTx while the PCI Status Interrupt bit still mirrors
  ISR status; clearing ISR status by a read deasserts without a new interrupt (PCI-DEV-40, PCI-DEV-41).
- Reading the bar, offset and length fields of the PCI_CFG capability reads nothing from the BAR: only a read
  of pci_cfg_data does (PCI-DEV-52), here seen on ISR status, whose read has a side effect.
- Only a write of 1 to queue_reset resets the queue: a 0 leaves it running; after the reset every field of the
  queue reads its default again (PCI-DEV-22, PCI-DEV-24, RESET-DEV-04).
- Available buffer notifications that name no queue are harmless, also with VIRTIO_F_NOTIF_CONFIG_DATA and
  VIRTIO_F_NOTIFICATION_DATA where the target offers them (or can be built to), and the queue a notification
  names in its low 16 bits is processed whatever the upper bits carry (SPLIT-DEV-22).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from backend.drivers.transport import VirtioPciModern
from backend.pci.device import PciDevice, RegionIndex, config_read, config_write
from backend.virtio.features import F, has
from backend.virtio.pci_regs import (
    ISR_QUEUE,
    NO_VECTOR,
    PCI_CFG_DATA,
    PCI_COMMAND_INTX_DISABLE,
    PCI_STATUS_INTERRUPT,
    CommonCfg,
    PciCfg,
)
from testbenches.conformance.chains import status_text
from testbenches.conformance.harness import (
    NEEDS_RESET,
    QUIET_WAIT,
    RX,
    TX,
    Bench,
    Rig,
    drain,
    make_frame,
    settled,
    wait_fd,
    with_features,
)
from testbenches.conformance.plugin import Verdict

QSIZE = 16


def _int_status(pci: PciDevice) -> bool:
    """The Interrupt Status bit of the PCI Status register."""
    return bool(config_read(pci, PciCfg.STATUS, 2) & PCI_STATUS_INTERRUPT)


@dataclass(frozen=True)
class QueueFields:
    size: int
    desc: int
    driver: int
    device: int
    vector: int
    enabled: int
    notify_off: int

    def differ(self, other: QueueFields) -> list[str]:
        return [f"{k} {getattr(self, k):#x} (a fresh device reads {getattr(other, k):#x})"
                for k in self.__dataclass_fields__ if getattr(self, k) != getattr(other, k)]


def _queue_fields(t: VirtioPciModern, q: int) -> QueueFields:
    t.select_queue(q)
    return QueueFields(t.read_common(CommonCfg.QUEUE_SIZE), t.read_common(CommonCfg.QUEUE_DESC),
                       t.read_common(CommonCfg.QUEUE_DRIVER), t.read_common(CommonCfg.QUEUE_DEVICE),
                       t.read_common(CommonCfg.QUEUE_MSIX_VECTOR), t.read_common(CommonCfg.QUEUE_ENABLE),
                       t.read_common(CommonCfg.QUEUE_NOTIFY_OFF))


def _intx_pending(r: Rig, verdict: Verdict, rid: str) -> bool:
    """INTx mode, one frame sent and its TX buffer back, ISR status left unread; False when nothing came back."""
    r.send([make_frame(7)])
    if not r.wait_used(TX, 1):
        verdict.check(rid, False, f"the frame's transmit buffer did not come back within {r.explain()}")
        return False
    if r.wire.looped:
        r.wait_used(RX, 1)
    return True


@pytest.mark.req("RESET-DEV-02", "RESET-DEV-04", "PCI-DEV-19", "PCI-DEV-39", "PCI-DEV-40", "PCI-DEV-59")
def test_device_reset_leaves_nothing_behind(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        t = r.drv.transport
        nq = t.num_queues()
        fresh = [_queue_fields(t, q) for q in range(nq)]
        d = r.up(irq_mode="intx", queue_size=QSIZE, rx_buffers=4)
        intx = d.irq_fds["intx"]
        if not _intx_pending(r, verdict, "RESET-DEV-02"):
            return
        # Every queue moved away from its defaults (the data queues by the bring-up, the others here).
        for q in range(nq):
            if q not in d.queues:
                t.select_queue(q)
                t.write_common(CommonCfg.QUEUE_SIZE, 2)
                t.set_queue_addresses(q, 0x4000, 0x5000, 0x6000)
        drain(intx)
        pending_before = settled(lambda: _int_status(r.pci), True, r.event_wait)
        t.reset()
        signalled = wait_fd(intx, r.silence())
        status_bit = settled(lambda: _int_status(r.pci), False, r.event_wait)  # the device may lower it a moment late
        verdict.check("RESET-DEV-02", not status_bit and not signalled,
                      f"INTx mode, a used buffer notification pending before the reset (PCI Status.Interrupt="
                      f"{int(pending_before)}): after it PCI Status.Interrupt={int(status_bit)}, INTx "
                      f"{'signalled' if signalled else 'quiet'} (0 and quiet expected, "
                      f"watched for {r.explain(QUIET_WAIT)})")
        for q in range(nq):
            now = _queue_fields(t, q)
            verdict.check("PCI-DEV-19", not now.enabled, f"queue {q}: queue_enable reads {now.enabled} after reset")
            verdict.check("PCI-DEV-59", now.vector == NO_VECTOR,
                          f"queue {q}: queue_msix_vector reads {now.vector:#x} after reset")
            diff = now.differ(fresh[q])
            verdict.check("RESET-DEV-04", not diff, f"queue {q} after a device reset: {', '.join(diff) or 'defaults'}")
        # The reset lowered the INTx line too (ISR status was never read): the next used buffer notification is a
        # new assertion.
        d = r.up(irq_mode="intx", queue_size=QSIZE, rx_buffers=4)
        drain(intx := d.irq_fds["intx"])
        r.send([make_frame(8)])
        fired = wait_fd(intx, r.event_wait)
        verdict.check("PCI-DEV-39", fired, f"brought up again after that reset, one frame sent: INTx "
                                           f"{'signalled' if fired else f'silent for {r.explain()}'}")
        # Reset once more with that notification pending: ISR status reads 0 afterwards, and reading it signals
        # nothing.
        r.wait_used(TX, 1)
        drain(intx)
        t.reset()
        isr = t.read_isr()
        status_bit = settled(lambda: _int_status(r.pci), False, r.event_wait)
        signalled = wait_fd(intx, r.silence())
        verdict.check("RESET-DEV-02", not isr and not status_bit and not signalled,
                      f"a second reset with a notification pending: ISR status then reads {isr:#x}, PCI "
                      f"Status.Interrupt={int(status_bit)}, INTx {'signalled' if signalled else 'quiet'}")
        verdict.check("PCI-DEV-40", status_bit == bool(isr),
                      f"after the reset PCI Status.Interrupt={int(status_bit)} while ISR status reads {isr:#x}")


@pytest.mark.req("RESET-DEV-01", "PCI-DEV-19", "PCI-DEV-40", "PCI-DEV-59")
def test_fresh_device_reads_as_reset(bench: Bench, verdict: Verdict) -> None:
    """Power-on is a reset: before any driver write (memory decoding aside) device_status reads 0, ISR status and
    the PCI Status Interrupt bit are clear, no queue is enabled and no event is mapped to a vector."""
    t = VirtioPciModern(bench.open())
    t.enable_device()
    status = t.status()
    status_bit = _int_status(t.pci)
    isr = t.read_isr()
    verdict.check("RESET-DEV-01", status == 0, f"a fresh device reads device_status {status:#x}")
    verdict.check("PCI-DEV-40", not isr and not status_bit,
                  f"a fresh device: ISR status {isr:#x}, PCI Status.Interrupt={int(status_bit)} (nothing happened yet)")
    config_vector = t.config_msix_vector() if t.msix_table_size() else NO_VECTOR
    verdict.check("PCI-DEV-59", config_vector == NO_VECTOR, f"a fresh device maps config to vector {config_vector:#x}")
    for q in range(t.num_queues()):
        now = _queue_fields(t, q)
        verdict.check("PCI-DEV-19", not now.enabled, f"a fresh device: queue {q} enabled ({now.enabled})")
        verdict.check("PCI-DEV-59", now.vector == NO_VECTOR, f"a fresh device: queue {q} mapped to vector "
                                                             f"{now.vector:#x}")


@pytest.mark.req("PCI-DEV-40", "PCI-DEV-41")
def test_interrupt_disable_holds_intx(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        lack = r.abilities.config_header
        if lack is not None:
            for rid in ("PCI-DEV-40", "PCI-DEV-41"):
                verdict.not_applicable(rid, f"the PCI Command register is not the function's own: {lack.why}")
            return
        d = r.up(irq_mode="intx", queue_size=QSIZE, rx_buffers=4)
        t = d.transport
        intx = d.irq_fds["intx"]
        command = config_read(r.pci, PciCfg.COMMAND, 2)
        config_write(r.pci, PciCfg.COMMAND, 2, command | PCI_COMMAND_INTX_DISABLE)
        drain(intx)
        if not _intx_pending(r, verdict, "PCI-DEV-40"):
            return
        held = not wait_fd(intx, r.silence())
        status_bit = settled(lambda: _int_status(r.pci), True, r.event_wait)
        isr = t.read_isr()
        after = settled(lambda: _int_status(r.pci), False, r.event_wait)
        quiet = not wait_fd(intx, r.silence())
        config_write(r.pci, PciCfg.COMMAND, 2, command)
        isr_again = t.read_isr()
        quiet_again = not wait_fd(intx, r.silence())
        verdict.check("PCI-DEV-40", held and status_bit and bool(isr & ISR_QUEUE),
                      f"Interrupt Disable set, a used buffer notification: INTx {'held' if held else 'signalled'}, "
                      f"PCI Status.Interrupt={int(status_bit)}, ISR status {isr:#x} (held, 1, queue bit expected)")
        verdict.check("PCI-DEV-40", not after and quiet,
                      f"after reading ISR status: PCI Status.Interrupt={int(after)}, INTx "
                      f"{'quiet' if quiet else 'signalled by the deassertion'}")
        verdict.check("PCI-DEV-41", isr != 0 and isr_again == 0 and quiet_again,
                      f"ISR status read {isr:#x}, then {isr_again:#x} after Interrupt Disable was cleared again, "
                      f"INTx {'quiet' if quiet_again else 'signalled'} (nothing was pending any more)")


@pytest.mark.req("PCI-DEV-52")
def test_window_fields_read_nothing_from_the_bar(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        d = r.up(irq_mode="intx", queue_size=QSIZE, rx_buffers=4)
        t = d.transport
        cap = t.pci_cfg_cap
        isr_cap = t.isr_cap
        if cap is None or isr_cap is None:
            pytest.fail("no PCI_CFG or ISR capability (PCI-DEV-50 and PCI-DEV-37 report it)")
        if not _intx_pending(r, verdict, "PCI-DEV-52"):
            return
        settled(lambda: _int_status(r.pci), True, r.event_wait)  # the notification pending shows in PCI Status
        base = cap.cap_offset
        # The window on ISR status: bar, offset and length written field by field, pci_cfg_data untouched.
        config_write(r.pci, base + 4, 1, isr_cap.bar)
        config_write(r.pci, base + 8, 4, isr_cap.offset)
        config_write(r.pci, base + 12, 4, 1)
        reads = [(o, 1) for o in range(base, base + PCI_CFG_DATA)] + [(base, 4), (base + 4, 4), (base + 8, 4),
                                                                       (base + 12, 4), (base + 8, 8), (base, 16)]
        still = []
        for off, width in reads:
            r.pci.region_read(RegionIndex.CONFIG, off, width)
            still.append(_int_status(r.pci))
        via = config_read(r.pci, base + PCI_CFG_DATA, 1)
        cleared = not settled(lambda: _int_status(r.pci), False, r.event_wait)
        verdict.check("PCI-DEV-52", all(still),
                      f"ISR status pending, the window on it: reads of the capability's fields before pci_cfg_data "
                      f"left PCI Status.Interrupt at {[int(s) for s in still]} (a read of a field must not read ISR "
                      "status through the window, which would clear it)")
        verdict.check("PCI-DEV-52", bool(via & ISR_QUEUE) and cleared,
                      f"then a read of pci_cfg_data returned {via:#x} (ISR queue bit expected) and PCI "
                      f"Status.Interrupt {'cleared' if cleared else 'stayed set'} (the ISR read through the window "
                      "clears it)")


@pytest.mark.req("PCI-DEV-22", "PCI-DEV-24", "RESET-DEV-04")
def test_queue_reset_takes_only_a_one(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        t = r.drv.transport
        fresh = _queue_fields(t, TX)
        if not has(r.offered, F.RING_RESET):
            for rid in ("PCI-DEV-22", "PCI-DEV-24", "RESET-DEV-04"):
                verdict.not_offered(rid, "VIRTIO_F_RING_RESET not offered")
            return
        d = r.up(features=with_features(F.RING_RESET), queue_size=QSIZE, rx_buffers=4)
        t = d.transport
        t.select_queue(TX)
        t.write_common(CommonCfg.QUEUE_RESET, 0)
        enabled = t.queue_enabled(TX)
        r.send([make_frame(11)])
        used = r.wait_used(TX, 1)
        status = t.status()
        verdict.check("PCI-DEV-22", enabled and len(used) == 1 and not status & NEEDS_RESET,
                      f"0 written to queue_reset of transmitq1: queue_enable reads {int(enabled)}, a frame sent "
                      f"afterwards came back {len(used)} time(s), status {status_text(status)} (the queue keeps "
                      "running: only 1 asks for a reset)")
        t.reset_queue(TX)
        t.select_queue(TX)
        reset_reads = t.read_common(CommonCfg.QUEUE_RESET)
        now = _queue_fields(t, TX)
        verdict.check("PCI-DEV-24", reset_reads == 0 and not now.enabled,
                      f"after the queue reset queue_reset reads {reset_reads}, queue_enable {now.enabled}")
        diff = now.differ(fresh)
        verdict.check("RESET-DEV-04", not diff, f"transmitq1 after its reset: {', '.join(diff) or 'defaults'}")


@pytest.mark.req("SPLIT-DEV-22")
def test_notifications_naming_no_queue(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as probe:
        offered = probe.offered
    extra = (1 << F.NOTIF_CONFIG_DATA) | (1 << F.NOTIFICATION_DATA)
    spec = bench.variant(features=hex(offered | extra)) if bench.configurable else None
    for wanted in (0, 1 << F.NOTIF_CONFIG_DATA, extra):
        with bench.rig(spec) as r:
            if wanted & ~r.offered:
                verdict.not_offered("SPLIT-DEV-22", f"features {wanted:#x} not offered: notifications in that "
                                                    "format not tried")
                continue
            d = r.up(features=with_features(*(b for b in (F.NOTIF_CONFIG_DATA, F.NOTIFICATION_DATA)
                                              if wanted >> b & 1)), queue_size=QSIZE, rx_buffers=4)
            t = d.transport
            bar, off, width = t.notify_location(TX)
            ident = t.notify_value(TX)
            nq = t.num_queues()
            known = {t.notify_value(q) & 0xFFFF for q in range(nq)}
            strangers = [v for v in (nq, nq + 1, 0x7FFF, 0xFFFF, ident ^ 0x8000) if v not in known]
            crash = None
            try:
                for v in strangers:
                    r.pci.region_write(bar, off, v.to_bytes(width, "little"))
            except Exception as exc:  # a register access must not fail
                crash = exc
            status = t.status()
            # Then a real one: with NOTIFICATION_DATA its upper half carries next_off (the new avail idx), not zero.
            r.add_tx([make_frame(21)])
            value = t.notify_value(TX, r.tx.published)
            r.pci.region_write(bar, off, value.to_bytes(width, "little"))
            used = r.wait_used(TX, 1)
            fmt = {0: "queue index", 1 << F.NOTIF_CONFIG_DATA: "queue_notif_config_data",
                   extra: "queue_notif_config_data with next_off/next_wrap"}[wanted]
            verdict.check("SPLIT-DEV-22", crash is None and not status & NEEDS_RESET and len(used) == 1,
                          f"{fmt} notifications ({width}-byte) naming no queue {[hex(v) for v in strangers]}: "
                          f"{'raised ' + repr(crash) if crash else 'accepted'}, status {status_text(status)}; then "
                          f"transmitq1 notified with {value:#x}: {len(used)} buffer(s) used (1 expected)")
