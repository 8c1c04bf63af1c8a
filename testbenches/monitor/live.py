"""The driver-row monitors on a live vhost-user session: ``vdpa-bench serve --judge-driver PATH``.

The backend drives each session's device with the generic virtio-pci vendor driver, programming the rings the
frontend (DPDK virtio_user, QEMU for a Linux guest) gave it; the device then works on the frontend's memory. Here the
device is wrapped in :class:`JudgingPciDevice`, a register trace that feeds the split and packed ring monitors
(:mod:`.split_ring_rules`, :mod:`.packed_ring_rules`) and, through them, the virtio-net buffer and control queue rows
(:mod:`.net_hdr_rules`, :mod:`.ctrl_rules`). The monitors read the frontend's memory through their own read-only
mappings of the regions the backend maps for the device (:class:`GuestView`); they never write.

What judging costs the data path: the device's doorbell eventfds are refused, so the backend relays each kick as a
register write the monitors see (the relay is the backend's ordinary fallback), register windows are not mapped
directly, and on a target with a DMA observer the packed ring monitor follows the device's used writes. Without
``--judge-driver`` none of this is in place.

Only the rows a frontend's rings and headers show are reported: those the backend's own register writes decide
(notification data, doorbells after the relay) are listed as not judged in :data:`BACKEND_ROWS`. When each session
ends its verdicts are added to the findings file (JSON, rewritten whole): per row passed or failed, its
opportunities and the evidence of the failing ones.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.daemon import SessionDevice, VdpaBackend, serve_client
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.lifecycle import listen_until_signal
from backend.pci.device import DmaPerm, PciDevice
from backend.virtio.features import F, has
from backend.virtio.pci_regs import CommonCfg
from testbenches.monitor.packed_ring_rules import PackedRingMonitor
from testbenches.monitor.pci_trace import Access, TracingPciDevice
from testbenches.monitor.split_ring_rules import SplitRingMonitor
from testbenches.monitor.virtio_pci_rules import Finding

LOG = logging.getLogger("vdpa_backend.judge")
#: Rows the ring monitors judge on what the backend, not the frontend, writes: not reported for a real driver.
BACKEND_ROWS = {
    "NOTIF-DRV-B01": "notification data is written by the backend's kick relay, not by the frontend",
    "PACKED-DRV-04": "notification data is written by the backend's kick relay, not by the frontend",
    "PACKED-DRV-17": "doorbells reach the device through the backend's relay, later than the frontend rang them",
}
#: Seconds between two looks at the rings besides those at doorbells: a driver told not to notify (used.flags,
#: EVENT_IDX, packed event suppression) rings rarely, and a packed ring is walked only at looks.
LOOK_INTERVAL = 0.005
#: Evidence lines kept per failed row.
MAX_EVIDENCE = 5
#: Alignments tried for a mapping's file offset (pages, then huge pages of 2 MiB and 1 GiB).
_ALIGNMENTS = (mmap.ALLOCATIONGRANULARITY, 1 << 21, 1 << 30)


@dataclass
class _Region:
    iova: int
    size: int
    view: mmap.mmap
    skip: int  # bytes of the mapping before the region (its file offset aligned down)


class GuestView:
    """The frontend's memory as the device sees it: each region the backend maps for the device (iova, size, fd,
    offset), mapped again here read-only; :meth:`read` at an iova."""

    def __init__(self) -> None:
        self._regions: list[_Region] = []
        self._lock = threading.Lock()

    def map(self, iova: int, size: int, fd: int, offset: int) -> None:
        error: OSError | None = None
        for align in _ALIGNMENTS:
            skip = offset % align
            try:
                view = mmap.mmap(fd, size + skip, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset - skip)
            except OSError as exc:
                error = exc
                continue
            with self._lock:
                self._regions.append(_Region(iova, size, view, skip))
            return
        LOG.warning("judge: region at iova %#x (%d bytes) not readable by the monitors: %s", iova, size, error)

    def unmap(self, iova: int, size: int) -> None:
        with self._lock:
            gone = [r for r in self._regions if r.iova == iova]
            self._regions = [r for r in self._regions if r.iova != iova]
        for r in gone:
            r.view.close()

    def read(self, addr: int, size: int) -> bytes:
        with self._lock:
            for r in self._regions:
                if r.iova <= addr and addr + size <= r.iova + r.size:
                    start = r.skip + addr - r.iova
                    return r.view[start:start + size]
        raise ValueError(f"{size} byte(s) at {addr:#x} lie outside the frontend's mapped memory")

    def close(self) -> None:
        with self._lock:
            regions, self._regions = self._regions, []
        for r in regions:
            r.view.close()


class JudgingPciDevice(TracingPciDevice):
    """The session's device, traced for the ring monitors; keeps no access list (a session may be long), refuses
    doorbell eventfds (kicks are relayed as register writes) and hands its verdicts to ``judge`` when closed."""

    def __init__(self, inner: PciDevice, judge: Judge, label: str) -> None:
        super().__init__(inner)
        self.judge, self.label = judge, label
        self.view = GuestView()
        self.notes: list[str] = []
        self._seq = 0
        self._lost: set[int] = set()
        self.features = 0  # the driver features last written, kept across the device reset that ends a session
        self._judging = threading.Lock()
        self.split = SplitRingMonitor.attach(self, self.view.read)
        self.packed = PackedRingMonitor.attach(self, self.view.read)
        self._closing = threading.Event()
        self._looker = threading.Thread(target=self._look_on, name=f"judge-{label}", daemon=True)
        self._looker.start()

    def _look_on(self) -> None:
        """Look at the live rings every :data:`LOOK_INTERVAL` until the device closes."""
        while not self._closing.wait(LOOK_INTERVAL):
            self._look()

    def _look(self) -> None:
        with self._judging:
            for mon in (self.split, self.packed):
                try:
                    mon.inspect()
                except Exception as exc:  # a monitor never disturbs the data path
                    if len(self.notes) < MAX_EVIDENCE:
                        self.notes.append(f"monitor error at a look: {exc!r}")
            self._note_lost()

    def _record(self, op: str, region: int, offset: int, data: bytes) -> None:
        if op == "w" and data == b"\0" and self._status_offset() == (region, offset):
            self._look()  # a device reset: the last look at the rings before the monitors forget them
        with self._judging:
            self._seq += 1
            access = Access(self._seq, op, region, offset, len(data), data)
            for listener in self.listeners:
                try:
                    listener(access)
                except Exception as exc:  # a monitor never disturbs the data path
                    if len(self.notes) < MAX_EVIDENCE:
                        self.notes.append(f"monitor error at access {self._seq}: {exc!r}")
            self.features = self.split._features or self.features
            self._note_lost()

    def ioeventfd(self, index: int, offset: int, width: int, value: int | None, fd: int) -> bool:
        return False  # relayed by the backend as a doorbell write the monitors see

    def dma_map(self, iova: int, size: int, fd: int, offset: int, perm: DmaPerm) -> None:
        super().dma_map(iova, size, fd, offset, perm)
        self.view.map(iova, size, fd, offset)

    def dma_unmap(self, iova: int, size: int) -> None:
        self.inner.dma_unmap(iova, size)
        self.view.unmap(iova, size)

    def _status_offset(self) -> tuple[int, int]:
        """Where device_status is: (bar, offset)."""
        common = self.split.layout.common
        return common.bar, common.offset + CommonCfg.DEVICE_STATUS

    def close(self) -> None:
        self._closing.set()
        self._looker.join()
        try:
            self.judge.add(self.session())
        finally:
            self.view.close()
            super().close()

    def session(self) -> dict[str, Any]:
        """This session's verdicts per row, in the findings file's form."""
        with self._judging:
            findings: list[Finding] = [*self.split.findings, *self.packed.findings]
            packed_verdicts = self.packed.verdicts()  # judges what is judged only at the end
            for mon in (self.split, self.packed):
                if mon.net is not None:
                    findings += mon.net.findings
                if mon.ctrl is not None:
                    findings += mon.ctrl.findings
            mon = self.packed if has(self.features, F.RING_PACKED) else self.split
            seen = [m.seen() for m in (mon.net, mon.ctrl) if m is not None]
            return session_record(self.label, self.features, findings, packed_verdicts, [*seen, *self.notes],
                                  [*self.packed.given_up, *self.packed.unreadable,
                                   *(self.split.net.unreadable if self.split.net else []),
                                   *(self.packed.net.unreadable if self.packed.net else [])])

    def _note_lost(self) -> None:
        """A packed queue the monitor stopped following (a used descriptor naming no list it saw made available, a
        list it could not place): noted once per queue and reset, its rows judged up to there."""
        for i, q in self.packed._queues.items():
            if q.lost and i not in self._lost:
                self._lost.add(i)
                dma = "device DMA observed" if self.packed._observed else "device DMA not observed"
                self.notes.append(f"packed queue {i} ({dma}): no longer followed from slot {q.next_avail} "
                                  f"(wrap {q.avail_wrap}) after access {self._seq}")
        if not self.packed._queues:
            self._lost.clear()


def session_record(label: str, features: int, findings: list[Finding], extra: dict[str, tuple[bool, list[str]]],
                   notes: list[str], given_up: list[str]) -> dict[str, Any]:
    """Per row: ``verdict`` (passed/failed), ``opportunities`` (findings that judged it) and ``evidence`` (the first
    failing ones); rows of :data:`BACKEND_ROWS` left out. ``extra`` adds verdicts judged at the end of the run."""
    count = Counter(f.req_id for f in findings)
    rows: dict[str, dict[str, Any]] = {}
    for f in findings:
        if f.req_id in BACKEND_ROWS:
            continue
        row = rows.setdefault(f.req_id, {"verdict": "passed", "opportunities": count[f.req_id], "evidence": []})
        if not f.ok:
            row["verdict"] = "failed"
            if len(row["evidence"]) < MAX_EVIDENCE:
                row["evidence"].append(f.evidence)
    for rid, (ok, evidence) in extra.items():
        if rid not in rows and rid not in BACKEND_ROWS:
            rows[rid] = {"verdict": "passed" if ok else "failed", "opportunities": max(1, len(evidence)),
                         "evidence": evidence[:MAX_EVIDENCE]}
    return {"session": label, "driver_features": f"{features:#x}",
            "ring": "packed" if has(features, F.RING_PACKED) else "split",
            "rows": dict(sorted(rows.items())), "not_judged": BACKEND_ROWS, "notes": [*notes, *given_up]}


@dataclass
class Judge:
    """The findings file of one ``serve``: every ended session's record, the file rewritten whole each time."""

    path: Path
    sessions: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.sessions.append(record)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"sessions": self.sessions}, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        LOG.info("judge: %s: %d driver row(s) judged, written to %s", record["session"], len(record["rows"]),
                 self.path)


class JudgingBackend(VdpaBackend):
    """A :class:`VdpaBackend` whose session devices are judged by ``judge``."""

    def __init__(self, spec: str, judge: Judge) -> None:
        super().__init__(spec)
        self.judge = judge

    def open_device(self, label: str | None = None) -> VirtioPciVdpaDevice:
        if label == "probe":
            return super().open_device(label)
        pci = JudgingPciDevice(self.registry.open(self.spec), self.judge, label or self.spec)
        try:
            return SessionDevice(pci, pci.label, self.quirks)
        except BaseException:
            pci.close()
            raise


def serve_judged(args: Any, stop_fd: int) -> int:
    """The ``serve`` command's body with ``--judge-driver PATH``: as :func:`backend.daemon.serve`, every session's
    device judged and its verdicts written to PATH when it ends."""
    judge = Judge(Path(args.judge_driver))
    backend = JudgingBackend(args.device, judge)
    if args.client:
        return serve_client(backend, args.socket, stop_fd, reconnect=args.reconnect, close_timeout=args.close_timeout)
    server = backend.listen(args.socket)
    return listen_until_signal(LOG, args.socket, f"a fresh {backend.spec} per connection, driver rows judged into "
                               f"{judge.path}", server.close, args.close_timeout, stop_fd)


def label_findings(path: Path, driver: str, run: str) -> dict[str, Any]:
    """The findings file at ``path`` with the real driver's name and what the run did added (for the report)."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    data.update(driver=driver, run=run)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return data


__all__ = ["BACKEND_ROWS", "GuestView", "Judge", "JudgingBackend", "JudgingPciDevice", "label_findings",
           "serve_judged", "session_record"]
