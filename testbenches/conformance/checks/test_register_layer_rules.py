"""The backend's register layer (``backend.drivers.transport.VirtioPciModern``) held to the whole rule of each
access it makes, on any target (3.1.1, 4.1.3.1, 4.1.4.3, 4.1.5.2, 2.5, 2.9).

Each check drives the register layer the way the vDPA driver does and judges what reaches the function: every
register access is seen through :class:`~testbenches.conformance.checks.register_view.RegisterView`, which can
also show one common-config answer changed (queue_notif_config_data, queue_notify_off) with the rest of the
target live. The expected values are computed here from the spec's text, not with the layer's own helpers.
The vDPA driver above it is judged in test_vdpa_driver_rules.py.
"""

from __future__ import annotations

import pytest

from backend.drivers.quirks import PciIds
from backend.drivers.transport import NET_CONFIG_FIELDS, VirtioPciModern, config_field_exists
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.virtio.features import DeviceStatus, F, bits, has
from backend.virtio.pci_regs import CommonCfg
from testbenches.conformance.checks.register_view import UP, RegisterView, common_accesses, refusal
from testbenches.conformance.checks.test_vdpa_paths import NOT_IMPLEMENTED
from testbenches.conformance.harness import Bench
from testbenches.conformance.plugin import Verdict
from testbenches.monitor import TracingPciDevice

# --- driver features: both halves of every window, the record the frontend reads back (3.1.1) --------------


@pytest.mark.req("INIT-DRV-03", "INIT-DRV-07")
def test_register_layer_writes_every_feature_window_and_the_driver_keeps_its_record(bench: Bench,
                                                                                     verdict: Verdict) -> None:
    """Each 32-bit window of driver_feature is written after selecting it, with exactly that slice of the
    features, low window first; a value that does not fit the windows is refused with nothing written. The vDPA
    driver reports the features the device holds: none before a negotiation and after a reset, the frontend's
    selection after it."""
    trace = TracingPciDevice(bench.open())
    problems: list[str] = []
    for windows in (1, 2, 4):
        t = VirtioPciModern(trace, feature_windows=windows)
        t.reset()
        common = t.common
        for value in (0, (1 << 32 * windows) - 1, 0x0123456789ABCDEF_FEDCBA9876543210 & ((1 << 32 * windows) - 1),
                      1 << (32 * windows - 1)):
            start = len(trace.accesses)
            t.write_driver_features(value)
            got = [(a.rel, a.value) for a in common_accesses(trace, common.bar, common.offset, start) if a.op == "w"]
            want = [x for sel in range(windows) for x in ((CommonCfg.DRIVER_FEATURE_SELECT, sel),
                                                          (CommonCfg.DRIVER_FEATURE, value >> 32 * sel & 0xFFFFFFFF))]
            if got != want:
                problems.append(f"{windows} windows, {value:#x}: wrote {got}, expected {want}")
            if t.negotiated != value:
                problems.append(f"{windows} windows, {value:#x}: recorded as {t.negotiated:#x}")
        for value in (1 << 32 * windows, 1 << (33 * windows), (1 << 32 * windows) | 1):
            start = len(trace.accesses)
            outcome = refusal(lambda t=t, value=value: t.write_driver_features(value))
            if not outcome.startswith("refused: VirtioPciError") or len(trace.accesses) != start:
                problems.append(f"{windows} windows, {value:#x} does not fit: {outcome}, "
                                f"{len(trace.accesses) - start} accesses")
        t.reset()
    vdpa = VirtioPciVdpaDevice(trace, owns_pci=False)
    try:
        fresh = (vdpa.get_driver_features(), vdpa.transport.driver_features())
        wanted = vdpa.get_device_features() & ~NOT_IMPLEMENTED
        vdpa.set_status(DeviceStatus.ACKNOWLEDGE)
        vdpa.set_status(UP)
        vdpa.set_driver_features(wanted)
        negotiated = (vdpa.get_driver_features(), vdpa.transport.driver_features())
        vdpa.set_status(UP | DeviceStatus.FEATURES_OK)
        late = refusal(lambda: vdpa.set_driver_features(wanted & ~bits(F.EVENT_IDX)))
        after_late = vdpa.get_driver_features()
        vdpa.reset()
        after_reset = vdpa.get_driver_features()
    finally:
        vdpa.close()
    verdict.check("INIT-DRV-03", not problems and fresh == (0, 0) and negotiated == (wanted, wanted)
                  and after_reset == 0,
                  f"register layer: {problems[:4] or 'every window written as asked, oversize values refused'}; "
                  f"vDPA driver features (record, device) fresh {fresh}, after the frontend's {wanted:#x}: "
                  f"{negotiated}, after reset {after_reset:#x}")
    verdict.check("INIT-DRV-07", late.startswith("refused") and "INIT-DRV-07" in late and after_late == wanted,
                  f"features changed after FEATURES_OK: {late}; the driver then reports {after_late:#x}")


# --- notifications through the register layer (4.1.5.2, 2.9) -----------------------------------------------

NOTIF_COMBOS = {
    "plain": 0,
    "notification_data": bits(F.NOTIFICATION_DATA),
    "notif_config_data": bits(F.NOTIF_CONFIG_DATA),
    "both": bits(F.NOTIFICATION_DATA, F.NOTIF_CONFIG_DATA),
}
AVAIL_IDXS = (0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x1234)


@pytest.mark.req("NOTIF-DRV-01", "NOTIF-DRV-02", "NOTIF-DRV-03", "NOTIF-DRV-04", "NOTIF-DRV-05", "NOTIF-DRV-06",
                 "NOTIF-DRV-B01")
def test_register_layer_notification_values(bench: Bench, verdict: Verdict) -> None:
    """For each combination of VIRTIO_F_NOTIFICATION_DATA and VIRTIO_F_NOTIF_CONFIG_DATA written as the driver's
    features, a notification of each queue for each available idx is one write at the queue's doorbell (notify
    base + queue_notify_off * multiplier): 16 bits holding the queue index or its queue_notif_config_data, or 32
    bits holding that identifier, next_off (avail idx bits 0-14) and next_wrap (bit 15). The device shows
    queue_notif_config_data values unlike the queue index; the doorbells are recorded, not rung. A doorbell
    beyond the notification structure is refused."""
    view = RegisterView(bench.open(), sink_doorbells=True)
    t = VirtioPciModern(view)
    count = t.num_queues()
    config_data = {q: 0x5A00 | (q * 0x11 + 3) & 0xFF for q in range(count)}  # unlike any queue index
    view.notif_config_data = config_data
    t.reset()
    n = t.notify_cap
    wrong: dict[str, list[str]] = {name: [] for name in NOTIF_COMBOS}
    for name, extra in NOTIF_COMBOS.items():
        t.write_driver_features(bits(F.VERSION_1) | extra)
        data, config = has(extra, F.NOTIFICATION_DATA), has(extra, F.NOTIF_CONFIG_DATA)
        for q in range(count):
            ident = config_data[q] if config else q
            at = n.offset + t.queue_notify_off(q) * n.notify_off_multiplier
            for avail in (*AVAIL_IDXS, None):
                want = ident | ((avail or 0) & 0x7FFF) << 16 | ((avail or 0) >> 15 & 1) << 31 if data else ident
                width = 4 if data else 2
                # a doorbell that would end past the notification structure is refused, not written
                expected = [(n.bar, at, width, want)] if at + width <= n.offset + n.length else []
                start = len(view.accesses)
                if avail is None:
                    value = t.notify_value(q)  # nothing made available since reset: avail idx 0
                    rung = refusal(lambda q=q: t.notify(q))
                else:
                    value = t.notify_value(q, avail)
                    rung = refusal(lambda q=q, avail=avail: t.notify(q, avail_idx=avail))
                bells = [(a.region, a.offset, a.size, a.value) for a in view.accesses[start:]
                         if a.op == "w" and a.region == n.bar and a.offset >= n.offset]
                refused_right = rung == "accepted" if expected else rung.startswith("refused: VirtioPciError")
                if bells != expected or value != want or not refused_right:
                    wrong[name].append(f"q{q} avail {avail}: {bells} value {value:#x} ({rung}), expected "
                                       f"{expected or 'a refusal'} value {want:#x}")
    t.write_driver_features(bits(F.VERSION_1))
    view.notify_off = {0: n.length // max(n.notify_off_multiplier, 1) + 1}
    start = len(view.accesses)
    beyond = refusal(lambda: t.notify(0))
    beyond_writes = [a for a in view.accesses[start:] if a.op == "w" and a.region == n.bar
                     and n.offset <= a.offset]
    t.reset()
    view.close()
    refused = beyond.startswith("refused: VirtioPciError") and not beyond_writes
    ids = {"NOTIF-DRV-01": ["plain", "notif_config_data"], "NOTIF-DRV-02": ["notification_data", "both"],
           "NOTIF-DRV-03": ["plain"], "NOTIF-DRV-04": ["notification_data"], "NOTIF-DRV-05": ["notif_config_data"],
           "NOTIF-DRV-06": ["both"], "NOTIF-DRV-B01": ["notification_data", "both"]}
    for rid, combos in ids.items():
        bad = [w for c in combos for w in wrong[c]]
        verdict.check(rid, not bad and (rid != "NOTIF-DRV-01" or refused),
                      f"{count} queues x {len(AVAIL_IDXS) + 1} avail idx under {combos}: wrong {bad[:4]}; doorbell "
                      f"beyond the structure: {beyond}, {len(beyond_writes)} writes")


# --- device configuration at every width (4.1.3.1, 2.5) -----------------------------------------------------


def _width_groups(device_id: int, size: int, offered: int) -> list[tuple[int, int, int]]:
    """(offset, size, width) runs of adjacent existing fields of one natural width, each run written in one call."""
    fields = sorted((o, w) for o, w, _f in NET_CONFIG_FIELDS if o + w <= size and config_field_exists(device_id, o,
                                                                                                          offered))
    runs: list[tuple[int, int, int]] = []
    for o, w in fields:
        if runs and runs[-1][2] == w and runs[-1][0] + runs[-1][1] == o:
            runs[-1] = (runs[-1][0], runs[-1][1] + w, w)
        else:
            runs.append((o, w, w))
    return runs


@pytest.mark.req("PCI-DRV-05", "PCI-DRV-06", "CFG-DRV-02")
def test_register_layer_device_config_accesses_of_every_width(bench: Bench, verdict: Verdict) -> None:
    """The register layer reads device configuration as exactly the accesses asked for: ``width``-byte accesses
    at each aligned offset of the span (8-byte ones as the low then the high 32-bit half), inside one
    config_generation bracket, the bytes matching the device's; it writes existing fields as runs of their natural
    width, each access carrying its own bytes. Requests not whole or not aligned to the width are refused before
    any access, and so are accesses past the structure."""
    trace = TracingPciDevice(bench.open())
    t = VirtioPciModern(trace)
    ref = VirtioPciModern(trace.inner)  # past the trace: the checker's own reads
    dev = t.device_cap
    problems: list[str] = []
    if dev is None:
        for rid in ("PCI-DRV-05", "PCI-DRV-06", "CFG-DRV-02"):
            verdict.not_applicable(rid, "the function has no device configuration structure")
        return
    size = dev.length
    image = b"".join(ref.read_device_config(o, 1, 1) for o in range(size))
    gen = (t.common.bar, t.common.offset + CommonCfg.CONFIG_GENERATION)
    for width in (1, 2, 4, 8):
        for off in range(0, size - width + 1, width):
            for span in (width, 2 * width, 3 * width):
                if off + span > size:
                    continue
                start = len(trace.accesses)
                got = t.read_device_config(off, span, width)
                acc = trace.accesses[start:]
                dev_reads = [(a.offset - dev.offset, a.size) for a in acc if a.region == dev.bar
                             and dev.offset <= a.offset < dev.offset + size]
                want = [(off + i + h, 4) for i in range(0, span, width) for h in (0, 4)] if width == 8 \
                    else [(off + i, width) for i in range(0, span, width)]
                gens = [a.seq for a in acc if (a.region, a.offset) == gen]
                inside = all(gens and gens[0] < a.seq < gens[-1] for a in acc if a.region == dev.bar
                             and dev.offset <= a.offset < dev.offset + size)
                if got != image[off:off + span] or dev_reads != want or len(gens) != 2 or not inside:
                    problems.append(f"read {off:#x}+{span}/{width}: {got.hex()} (device {image[off:off + span].hex()})"
                                    f", accesses {dev_reads}, generation reads {len(gens)}")
    for off, span, width in ((1, 2, 2), (2, 4, 4), (0, 3, 2), (4, 4, 8), (0, 6, 4)):
        start = len(trace.accesses)
        for what, step in (("read", lambda o=off, s=span, w=width: t.read_device_config(o, s, w)),
                           ("write", lambda o=off, s=span, w=width: t.write_device_config(o, bytes(s), w))):
            outcome = refusal(step)
            if not outcome.startswith("refused: ValueError") or len(trace.accesses) != start:
                problems.append(f"{what} {off:#x}+{span}/{width}: {outcome}, {len(trace.accesses) - start} accesses")
    start = len(trace.accesses)
    past = refusal(lambda: t.read_device_config(size, 4, 4)), refusal(lambda: t.write_device_config(size, b"\0"))
    if not all(p.startswith("refused: VirtioPciError") for p in past) or \
            any(a.region == dev.bar and a.offset >= dev.offset + size - 4 for a in trace.accesses[start:]):
        problems.append(f"past the structure: {past}")
    offered = t.device_features()
    device_id = PciIds.read(trace).device
    writes_ok = True
    for off, span, width in _width_groups(device_id, size, offered):
        start = len(trace.accesses)
        t.write_device_config(off, image[off:off + span], width)
        wrote = [(a.offset - dev.offset, a.size, a.data) for a in trace.accesses[start:] if a.op == "w"]
        want_w = [(off + i, width, image[off + i:off + i + width]) for i in range(0, span, width)]
        if wrote != want_w:
            writes_ok = False
            problems.append(f"write {off:#x}+{span}/{width}: {wrote}, expected {want_w}")
    after = b"".join(ref.read_device_config(o, 1, 1) for o in range(size))
    trace.close()
    head = f"{size}-byte device config: {problems[:5] or 'every access as asked'}; config unchanged {after == image}"
    verdict.check("PCI-DRV-05", not problems and writes_ok, head)
    verdict.check("PCI-DRV-06", not [p for p in problems if "/8" in p], head)
    verdict.check("CFG-DRV-02", not [p for p in problems if "generation" in p], head)
