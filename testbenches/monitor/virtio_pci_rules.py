"""Judge a driver's virtio-pci register traffic against the driver-side (DRV) requirement rows.

The monitor is passive: it decodes a :class:`TracingPciDevice` trace into
virtio events (status writes, feature windows, queue programming, doorbells,
device-config accesses) and evaluates each rule over the whole sequence. A
rule that the trace gave no opportunity to break reports nothing, so an id is
only claimed when it was really exercised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from backend.drivers.transport import NET_CONFIG_FIELDS
from backend.pci.device import RegionIndex
from backend.virtio.features import DEFINED_NET_PCI, DeviceStatus, F, NetF, dependency_violations, has
from backend.virtio.pci_regs import (
    COMMON_CFG_SIZE,
    COMMON_CFG_WIDTH,
    MSIX_CONTROL_TABLE_SIZE_MASK,
    NO_VECTOR,
    NOTIFY_OFF_MULTIPLIER,
    PCI_CAP_ID_MSIX,
    CapType,
    CommonCfg,
    walk_capabilities,
)
from testbenches.monitor.pci_trace import Access, TracingPciDevice


@dataclass(frozen=True)
class Finding:
    req_id: str
    ok: bool
    evidence: str


def verdicts_of(findings: Iterable[Finding]) -> dict[str, tuple[bool, list[str]]]:
    """Per id: (every finding held, evidence of the failing ones in their order)."""
    result: dict[str, tuple[bool, list[str]]] = {}
    for f in findings:
        ok, evidence = result.get(f.req_id, (True, []))
        result[f.req_id] = (ok and f.ok, evidence if f.ok else [*evidence, f.evidence])
    return result


@dataclass(frozen=True)
class Window:
    bar: int
    offset: int
    length: int

    def contains(self, a: Access) -> bool:
        return a.region == self.bar and self.offset <= a.offset and a.offset + a.size <= self.offset + self.length


@dataclass
class Layout:
    """Where the virtio structures live, read once from config space (not recorded)."""

    common: Window
    notify: Window
    notify_off_multiplier: int
    isr: Window | None
    device: Window | None
    cap_ranges: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, cfg_type)
    msix_table_size: int = 0

    @classmethod
    def discover(cls, trace: TracingPciDevice) -> Layout:
        def cfg(off: int, size: int) -> bytes:
            return trace.inner.region_read(RegionIndex.CONFIG, off, size)

        found: dict[int, tuple[Window, int]] = {}
        ranges: list[tuple[int, int, int]] = []
        msix = 0
        for cap in walk_capabilities(cfg):
            if cap.cap_id == PCI_CAP_ID_MSIX:
                msix = (int.from_bytes(cap.data[2:4], "little") & MSIX_CONTROL_TABLE_SIZE_MASK) + 1
            v = cap.virtio
            if v is None:
                continue
            ranges.append((cap.offset, cap.offset + v.cap_len, v.cfg_type))
            if v.cfg_type not in found:
                mult = 0
                if v.cfg_type == CapType.NOTIFY_CFG:
                    mult = int.from_bytes(cap.data[NOTIFY_OFF_MULTIPLIER:NOTIFY_OFF_MULTIPLIER + 4], "little")
                found[v.cfg_type] = (Window(v.bar, v.offset, v.length), mult)
        common = found[CapType.COMMON_CFG][0]
        notify, mult = found[CapType.NOTIFY_CFG]
        return cls(common, notify, mult, found.get(CapType.ISR_CFG, (None, 0))[0],
                   found.get(CapType.DEVICE_CFG, (None, 0))[0], ranges, msix)


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str  # status_w, status_r, common_w, common_r, notify, devcfg_w, devcfg_r, isr_r, gen_r, capcfg_w
    field: CommonCfg | None
    value: int
    size: int
    offset: int
    queue: int  # queue_select in force for queue fields, else -1


_QUEUE_FIELDS = {CommonCfg.QUEUE_SIZE, CommonCfg.QUEUE_MSIX_VECTOR, CommonCfg.QUEUE_ENABLE,
                 CommonCfg.QUEUE_NOTIFY_OFF, CommonCfg.QUEUE_DESC, CommonCfg.QUEUE_DRIVER,
                 CommonCfg.QUEUE_DEVICE, CommonCfg.QUEUE_NOTIF_CONFIG_DATA, CommonCfg.QUEUE_RESET}
_READ_ONLY = {CommonCfg.DEVICE_FEATURE, CommonCfg.NUM_QUEUES, CommonCfg.CONFIG_GENERATION,
              CommonCfg.QUEUE_NOTIFY_OFF, CommonCfg.QUEUE_NOTIF_CONFIG_DATA}
def _common_field(offset: int) -> CommonCfg | None:
    for f in CommonCfg:
        w = COMMON_CFG_WIDTH[f]
        if f <= offset < f + w:
            return f
    return None


class Decoder:
    """Turns raw accesses into virtio events, one at a time (keeps queue_select state)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.qsel = 0

    def feed(self, a: Access) -> Event | None:
        lay = self.layout
        if a.region == RegionIndex.CONFIG:
            return Event(a.seq, "capcfg_w", None, a.value, a.size, a.offset, -1) if a.op == "w" else None
        if lay.common.contains(a):
            rel = a.offset - lay.common.offset
            f = _common_field(rel)
            if f is None or rel >= COMMON_CFG_SIZE:
                return None
            if f == CommonCfg.QUEUE_SELECT and a.op == "w":
                self.qsel = a.value
            if f == CommonCfg.DEVICE_STATUS:
                kind = "status_w" if a.op == "w" else "status_r"
            elif f == CommonCfg.CONFIG_GENERATION and a.op == "r":
                kind = "gen_r"
            else:
                kind = "common_w" if a.op == "w" else "common_r"
            return Event(a.seq, kind, f, a.value, a.size, rel, self.qsel if f in _QUEUE_FIELDS else -1)
        if lay.notify.contains(a) and a.op == "w":
            return Event(a.seq, "notify", None, a.value, a.size, a.offset - lay.notify.offset, -1)
        if lay.isr is not None and lay.isr.contains(a) and a.op == "r":
            return Event(a.seq, "isr_r", None, a.value, a.size, 0, -1)
        if lay.device is not None and lay.device.contains(a):
            kind = "devcfg_w" if a.op == "w" else "devcfg_r"
            return Event(a.seq, kind, None, a.value, a.size, a.offset - lay.device.offset, -1)
        return None


class VirtioPciDriverMonitor:
    """Decode a trace and evaluate the driver-side rules. Use :meth:`findings` after the driver ran."""

    def __init__(self, trace: TracingPciDevice, layout: Layout | None = None) -> None:
        self.trace = trace
        self.layout = layout if layout is not None else Layout.discover(trace)

    # --- decoding ------------------------------------------------------------------------------

    def events(self) -> list[Event]:
        dec = Decoder(self.layout)
        return [e for a in list(self.trace.accesses) if (e := dec.feed(a)) is not None]

    # --- evaluation ----------------------------------------------------------------------------

    def findings(self) -> list[Finding]:
        ev = self.events()
        out: list[Finding] = []
        for rule in self.RULES:
            out.extend(rule(self, ev))
        return out

    def verdicts(self) -> dict[str, tuple[bool, list[str]]]:
        """Per id: (all findings ok, evidence of the failing ones)."""
        return verdicts_of(self.findings())

    # features seen on the wire: offered (device_feature reads per select) and acked (driver_feature writes)
    def feature_timeline(self, ev: list[Event]) -> tuple[int, list[int], list[tuple[int, int]]]:
        """(offer, acked value in force at each event, (offer, acked) at each FEATURES_OK write)."""
        dsel = drsel = offered = acked = 0
        in_force: list[int] = []
        negotiations: list[tuple[int, int]] = []
        status = 0
        for e in ev:
            if e.kind == "common_w" and e.field == CommonCfg.DEVICE_FEATURE_SELECT:
                dsel = e.value
            elif e.kind == "common_w" and e.field == CommonCfg.DRIVER_FEATURE_SELECT:
                drsel = e.value
            elif e.kind == "common_r" and e.field == CommonCfg.DEVICE_FEATURE:
                offered |= e.value << (32 * dsel)
            elif e.kind == "common_w" and e.field == CommonCfg.DRIVER_FEATURE:
                acked = acked & ~(0xFFFFFFFF << (32 * drsel)) | e.value << (32 * drsel)
            elif e.kind == "status_w":
                if e.value == 0:
                    acked = 0
                elif e.value & DeviceStatus.FEATURES_OK and not status & DeviceStatus.FEATURES_OK:
                    negotiations.append((offered, acked))
                status = e.value
            in_force.append(acked)
        return offered, in_force, negotiations

    def _status_runs(self, ev: list[Event]) -> Iterator[list[Event]]:
        """Split the trace into initialisation runs, each starting at a reset write."""
        run: list[Event] = []
        for e in ev:
            if e.kind == "status_w" and e.value == 0 and run:
                yield run
                run = []
            run.append(e)
        if run:
            yield run

    def _rule_status(self, ev: list[Event]) -> Iterator[Finding]:
        writes = [e for e in ev if e.kind == "status_w"]
        if not writes:
            return
        yield Finding("INIT-DRV-01", writes[0].value == 0,
                      f"first device_status write was {writes[0].value:#x}, not a reset (0)")
        prev = 0
        failed = False
        for w in writes:
            if w.value == 0:
                prev, failed = 0, False
                continue
            yield Finding("STATUS-DRV-02", w.value & prev == prev,
                          f"access #{w.seq}: device_status {w.value:#x} drops bits of {prev:#x}")
            if failed:
                yield Finding("STATUS-DRV-03", False,
                              f"access #{w.seq}: wrote {w.value:#x} after FAILED without a reset first")
            if w.value & DeviceStatus.FAILED:
                failed = True
            prev = w.value
        for run in self._status_runs(ev):
            steps = [e.value for e in run if e.kind == "status_w" and e.value]
            if not steps:
                continue
            if not steps[0] & DeviceStatus.FAILED:
                ok = steps[0] == DeviceStatus.ACKNOWLEDGE and (
                    len(steps) < 2 or steps[1] == DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)
                yield Finding("INIT-DRV-02", ok, f"status steps after reset: {[hex(s) for s in steps[:3]]}")
            order = [DeviceStatus.ACKNOWLEDGE, DeviceStatus.DRIVER, DeviceStatus.FEATURES_OK, DeviceStatus.DRIVER_OK]
            seen_bits: list[int] = []
            for s in steps:
                for b in order:
                    if s & b and b not in seen_bits:
                        seen_bits.append(b)
            yield Finding("STATUS-DRV-01", seen_bits == order[:len(seen_bits)],
                          f"status bits were set in the order {[DeviceStatus(b).name for b in seen_bits]}")

    def _rule_reset_poll(self, ev: list[Event]) -> Iterator[Finding]:
        for i, e in enumerate(ev):
            if e.kind != "status_w" or e.value != 0:
                continue
            confirmed = False
            for later in ev[i + 1:]:
                if later.kind == "status_r" and later.value == 0:
                    confirmed = True
                    break
                if later.kind.endswith("_w") or later.kind == "notify":
                    break
            yield Finding("PCI-DRV-19", confirmed,
                          f"access #{e.seq}: reset written, then re-initialised without reading device_status 0")
            yield Finding("RESET-DRV-01", confirmed,
                          f"access #{e.seq}: reset treated as done before device_status read back 0")

    def _rule_init_order(self, ev: list[Event]) -> Iterator[Finding]:
        for run in self._status_runs(ev):
            status = 0
            read_offer = False
            wrote_features = False
            for e in run:
                if e.kind == "status_w":
                    if e.value & DeviceStatus.FEATURES_OK and not status & DeviceStatus.FEATURES_OK:
                        yield Finding("INIT-DRV-03", read_offer and wrote_features,
                                      f"access #{e.seq}: FEATURES_OK set (offer read: {read_offer}, "
                                      f"driver_feature written: {wrote_features})")
                        yield Finding("INIT-DRV-06", wrote_features,
                                      f"access #{e.seq}: FEATURES_OK set before any driver_feature write")
                    if e.value & DeviceStatus.DRIVER_OK and not status & DeviceStatus.DRIVER_OK:
                        yield Finding("INIT-DRV-10", bool(e.value & DeviceStatus.FEATURES_OK),
                                      f"access #{e.seq}: DRIVER_OK set without FEATURES_OK ({e.value:#x})")
                    status = e.value
                elif e.kind == "common_r" and e.field == CommonCfg.DEVICE_FEATURE:
                    read_offer = True
                elif e.kind == "common_w" and e.field == CommonCfg.DRIVER_FEATURE:
                    wrote_features = True
                    if status & DeviceStatus.FEATURES_OK:
                        yield Finding("INIT-DRV-07", False,
                                      f"access #{e.seq}: driver_feature written after FEATURES_OK")
                elif e.kind == "devcfg_w" and not status & DeviceStatus.FEATURES_OK and status:
                    yield Finding("INIT-DRV-05", False,
                                  f"access #{e.seq}: device config written during feature negotiation")
                elif e.kind == "common_w" and e.field in _QUEUE_FIELDS - {CommonCfg.QUEUE_RESET}:
                    ok = bool(status & DeviceStatus.FEATURES_OK) and not status & DeviceStatus.DRIVER_OK
                    if status & DeviceStatus.DRIVER_OK and self._ring_reset_in(run):
                        ok = True  # re-enabling a reset queue on a live device (2.6.1)
                    yield Finding("INIT-DRV-09", ok,
                                  f"access #{e.seq}: {e.field.name if e.field else '?'} written with status "
                                  f"{status:#x}")
                elif e.kind == "notify":
                    yield Finding("INIT-DRV-13", bool(status & DeviceStatus.DRIVER_OK),
                                  f"access #{e.seq}: doorbell written with status {status:#x}")
            if status & DeviceStatus.FEATURES_OK:
                yield Finding("INIT-DRV-07", True, "")
                yield Finding("INIT-DRV-05", True, "")

    def _ring_reset_in(self, run: list[Event]) -> bool:
        return any(e.kind == "common_w" and e.field == CommonCfg.QUEUE_RESET and e.value == 1 for e in run)

    def _rule_features(self, ev: list[Event]) -> Iterator[Finding]:
        for offered, acked in self.feature_timeline(ev)[2]:
            yield Finding("FEAT-DRV-01", acked & ~offered == 0,
                          f"acknowledged {acked:#x} outside the offer {offered:#x}")
            broken = dependency_violations(acked)
            yield Finding("FEAT-DRV-02", not broken,
                          "acknowledged features missing prerequisites: " + ", ".join(r.req_id for r in broken))
            yield Finding("FEAT-DRV-04", acked & ~DEFINED_NET_PCI == 0,
                          f"acknowledged undefined/reserved bits {acked & ~DEFINED_NET_PCI:#x}")
            if has(offered, F.VERSION_1):
                yield Finding("FEAT-DRV-08", has(acked, F.VERSION_1), "VERSION_1 offered but not acknowledged")
            if has(offered, F.ACCESS_PLATFORM):
                yield Finding("FEAT-DRV-10", has(acked, F.ACCESS_PLATFORM),
                              "ACCESS_PLATFORM offered but not acknowledged")
            yield Finding("FEAT-DRV-17", not has(acked, F.SR_IOV),
                          "SR_IOV acknowledged without an SR-IOV capability")

    def _rule_common_writes(self, ev: list[Event]) -> Iterator[Finding]:
        acked_at = self.feature_timeline(ev)[1]
        programmed: dict[int, set[CommonCfg]] = {}
        pending_vector: list[Event] = []
        for i, e in enumerate(ev):
            if e.kind == "common_r" and pending_vector and e.field == pending_vector[0].field:
                pending_vector.clear()
                yield Finding("PCI-DRV-35", True, "")
            if e.kind != "common_w" or e.field is None:
                continue
            if pending_vector and e.field not in (CommonCfg.QUEUE_SELECT,):
                p = pending_vector.pop()
                yield Finding("PCI-DRV-35", False, f"access #{p.seq}: {p.field.name if p.field else '?'} "
                              "mapped without reading the vector back")
            yield Finding("PCI-DRV-15", e.field not in _READ_ONLY,
                          f"access #{e.seq}: driver wrote read-only field {e.field.name}")
            if e.field == CommonCfg.QUEUE_SIZE and not has(acked_at[i], F.RING_PACKED):
                yield Finding("PCI-DRV-17", e.value > 0 and e.value & (e.value - 1) == 0,
                              f"access #{e.seq}: queue_size {e.value} is not a power of two")
            if e.field == CommonCfg.QUEUE_ENABLE:
                yield Finding("PCI-DRV-20", e.value != 0, f"access #{e.seq}: wrote 0 to queue_enable")
                need = {CommonCfg.QUEUE_DESC, CommonCfg.QUEUE_DRIVER, CommonCfg.QUEUE_DEVICE}
                have = programmed.get(e.queue, set())
                yield Finding("PCI-DRV-18", need <= have,
                              f"access #{e.seq}: queue {e.queue} enabled before "
                              f"{sorted(f.name for f in need - have)} were written")
            if e.field in (CommonCfg.QUEUE_MSIX_VECTOR, CommonCfg.CONFIG_MSIX_VECTOR):
                size = self.layout.msix_table_size
                yield Finding("PCI-DRV-34", e.value == NO_VECTOR or e.value < size,
                              f"access #{e.seq}: vector {e.value} beyond MSI-X table size {size}")
                pending_vector[:] = [e]
            if e.field in _QUEUE_FIELDS:
                programmed.setdefault(e.queue, set()).add(e.field)
                if e.field in (CommonCfg.QUEUE_DESC, CommonCfg.QUEUE_DRIVER, CommonCfg.QUEUE_DEVICE):
                    programmed[e.queue].add(e.field)
        if pending_vector:
            p = pending_vector[0]
            yield Finding("PCI-DRV-35", False, f"access #{p.seq}: vector mapping never read back")

    def _rule_notify(self, ev: list[Event]) -> Iterator[Finding]:
        acked_at = self.feature_timeline(ev)[1]
        notify_off: dict[int, int] = {}
        config_data_of: dict[int, int] = {}
        for i, e in enumerate(ev):
            if e.kind == "common_r" and e.field == CommonCfg.QUEUE_NOTIFY_OFF:
                notify_off[e.queue] = e.value
            if e.kind == "common_r" and e.field == CommonCfg.QUEUE_NOTIF_CONFIG_DATA:
                config_data_of[e.queue] = e.value
            if e.kind != "notify":
                continue
            notify_data = has(acked_at[i], F.NOTIFICATION_DATA)
            config_data = has(acked_at[i], F.NOTIF_CONFIG_DATA)
            if not notify_data:
                yield Finding("NOTIF-DRV-01", e.size == 2, f"access #{e.seq}: {e.size}-byte doorbell write")
            else:
                yield Finding("NOTIF-DRV-02", e.size == 4, f"access #{e.seq}: {e.size}-byte doorbell write")
            mult = self.layout.notify_off_multiplier
            queues = [q for q, off in notify_off.items() if off * mult == e.offset]
            if queues and not notify_data and not config_data:
                yield Finding("NOTIF-DRV-03", e.value in queues,
                              f"access #{e.seq}: doorbell of queue(s) {queues} carried {e.value}")
            if queues and notify_data and not config_data:
                yield Finding("NOTIF-DRV-04", e.value & 0xFFFF in queues,
                              f"access #{e.seq}: vq_index {e.value & 0xFFFF} at doorbell of {queues}")
            expected = {config_data_of[q] for q in queues if q in config_data_of}
            if config_data and not expected and queues:
                yield Finding("NOTIF-DRV-05" if not notify_data else "NOTIF-DRV-06", False,
                              f"access #{e.seq}: doorbell of queue(s) {queues} rung without ever reading "
                              "queue_notif_config_data")
            elif config_data and not notify_data:
                yield Finding("NOTIF-DRV-05", e.value in expected,
                              f"access #{e.seq}: wrote {e.value:#x}, queue_notif_config_data is {sorted(expected)}")
            elif config_data and notify_data:
                yield Finding("NOTIF-DRV-06", e.value & 0xFFFF in expected,
                              f"access #{e.seq}: vq_notif_config_data {e.value & 0xFFFF:#x}, "
                              f"queue_notif_config_data is {sorted(expected)}")

    def _rule_devcfg(self, ev: list[Event]) -> Iterator[Finding]:
        offered = self.feature_timeline(ev)[0]
        for i, e in enumerate(ev):
            if e.kind not in ("devcfg_r", "devcfg_w"):
                continue
            for off, width, feats in NET_CONFIG_FIELDS:
                if off <= e.offset < off + width:
                    natural = e.size == width and e.offset % width == 0 if width > 1 else e.size == 1
                    yield Finding("PCI-DRV-05", natural,
                                  f"access #{e.seq}: {e.size}-byte access at device config {e.offset:#x}")
                    if e.kind == "devcfg_r":
                        yield Finding("CFG-DRV-03", any(has(offered, f) for f in feats),
                                      f"access #{e.seq}: read field at {e.offset:#x} whose feature "
                                      f"{' or '.join(NetF(f).name for f in feats)} was not offered")
            if e.kind == "devcfg_r":
                before = next((p for p in reversed(ev[:i]) if p.kind != "devcfg_r"), None)
                after = next((p for p in ev[i + 1:] if p.kind != "devcfg_r"), None)
                yield Finding("CFG-DRV-02", bool(before and before.kind == "gen_r" and after
                                                 and after.kind == "gen_r"),
                              f"access #{e.seq}: device config read not bracketed by config_generation reads")
        for e in ev:
            if e.kind == "isr_r" and self._msix_enabled(ev, e.seq):
                yield Finding("PCI-DRV-26", False, f"access #{e.seq}: ISR read while MSI-X is enabled")

    def _msix_enabled(self, ev: list[Event], seq: int) -> bool:
        return any(e.kind == "common_w" and e.field == CommonCfg.QUEUE_MSIX_VECTOR and e.value != NO_VECTOR
                   and e.seq < seq for e in ev)

    def _rule_capabilities(self, ev: list[Event]) -> Iterator[Finding]:
        for e in ev:
            if e.kind != "capcfg_w":
                continue
            for start, end, cfg_type in self.layout.cap_ranges:
                if start <= e.offset < end:
                    # The PCI_CFG window's bar/offset/length and pci_cfg_data are the only writable fields.
                    allowed = cfg_type == CapType.PCI_CFG and e.offset - start >= 4
                    yield Finding("PCI-DRV-14", allowed,
                                  f"access #{e.seq}: wrote {e.size} bytes into virtio capability at {start:#x}")

    RULES: list[Callable[[VirtioPciDriverMonitor, list[Event]], Iterator[Finding]]] = [
        _rule_status, _rule_reset_poll, _rule_init_order, _rule_features, _rule_common_writes, _rule_notify,
        _rule_devcfg, _rule_capabilities,
    ]
