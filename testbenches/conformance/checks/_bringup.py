"""Shared set-up for the interrupt, status, reset and hostile-input checks.

:class:`Rig` owns one device of ``--target``, a guest memory mapped identity
into its IOMMU once, and an allocator shared by every bring-up, so a check can
bring the device up several times (different features, queue sizes, vector
maps, INTx) on the same memory. Bring-up reuses the public steps of
:class:`~testbenches.driver.virtio_net.GuestNetDriver`; :class:`BenchDriver`
only changes how interrupts are wired: MSI-X with one eventfd per vector and a
chosen vector per event (NO_VECTOR allowed), or MSI-X left disabled and INTx
bound instead.

Every wait is a bounded ``select`` on eventfds. :class:`DmaRecorder` watches
device memory accesses where the target exposes its IOMMU (the simulator);
:func:`changed_outside` compares guest memory snapshots on any target.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from backend.eventloop import consume_eventfd, new_eventfd, wait_eventfd
from backend.pci.device import DmaFault, DmaPerm, IrqIndex, PciDevice
from backend.virtio.features import DeviceStatus, F, bit
from backend.virtio.net_hdr import NetHdr
from backend.virtio.pci_regs import NO_VECTOR
from sim.memory import Allocator, GuestMemory
from testbenches.conformance.checks._support import GUEST_MEMORY_BASE
from testbenches.driver.split_ring import DriverQueueError, DriverSplitQueue, UsedBuffer
from testbenches.driver.virtio_net import DEFAULT_FEATURES, DriverInitError, GuestNetDriver

OpenTarget = Callable[..., PciDevice]

MEM_SIZE = 4 << 20
#: Bound on waiting for an event that must come (only paid in full when the device misbehaves).
EVENT_WAIT = 0.5
#: How long silence is watched for when an event must NOT come.
QUIET_WAIT = 0.05
#: Eventfds bound per bring-up at most (a real card may have a large MSI-X table).
MAX_BOUND_VECTORS = 16
#: An IOVA no check ever maps: far above the guest memory, page aligned.
UNMAPPED_IOVA = 0x7F00_0000_0000

RX = GuestNetDriver.RX
TX = GuestNetDriver.TX
NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)


drain = consume_eventfd
wait_fd = wait_eventfd


def signalled(fds: Mapping[str, int], timeout: float) -> list[str]:
    """Names whose eventfd is signalled within ``timeout`` s (all consumed); [] if silence held."""
    by_fd: dict[int, list[str]] = {}
    for name, fd in fds.items():
        by_fd.setdefault(fd, []).append(name)
    ready, _, _ = select.select(list(by_fd), [], [], max(0.0, timeout))
    out: list[str] = []
    for fd in ready:
        if drain(fd):
            out.extend(by_fd[fd])
    return sorted(out)


def frame(i: int = 0, size: int = 60) -> bytes:
    """A small UDP frame, distinct per ``i``."""
    pkt = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
           / UDP(sport=1000 + i, dport=2000) / bytes((i + k) & 0xFF for k in range(max(0, size - 42))))
    return bytes(pkt)


class BenchDriver(GuestNetDriver):
    """GuestNetDriver with explicit interrupt wiring.

    ``irq_mode`` "msix": every vector up to :data:`MAX_BOUND_VECTORS` gets its
    own eventfd (``irq_fds["v<n>"]``) and ``vectors`` maps "config", "rx" and
    "tx" to a vector or NO_VECTOR (default 0, 1, 2 modulo the table).
    ``irq_mode`` "intx": MSI-X stays disabled, one eventfd on INTx
    (``irq_fds["intx"]``), and no vector is ever written.
    """

    def __init__(self, pci: PciDevice, mem: GuestMemory, *, alloc: Allocator, queue_size: int, features: int,
                 rx_buffers: int, irq_mode: str = "msix", vectors: Mapping[str, int] | None = None) -> None:
        super().__init__(pci, mem, alloc=alloc, queue_size=queue_size, features=features, rx_buffers=rx_buffers)
        if irq_mode not in ("msix", "intx"):
            raise ValueError(f"irq_mode {irq_mode!r}")
        self.irq_mode = irq_mode
        self.wanted_vectors = dict(vectors or {})
        self.vectors: dict[str, int] = {}
        self.bound_vectors = 0

    def setup_irqs(self) -> None:
        table = self.transport.msix_table_size()
        if self.irq_mode == "intx" or table == 0:
            fd = new_eventfd()
            self.irq_fds = {"config": fd, "rx": fd, "tx": fd, "intx": fd}
            self.pci.set_irqs(IrqIndex.INTX, 0, [fd])
            self.intx = True
            self.vectors = {"config": NO_VECTOR, "rx": NO_VECTOR, "tx": NO_VECTOR}
            return
        n = min(table, MAX_BOUND_VECTORS)
        self.bound_vectors = n
        defaults = {"config": 0, "rx": 1 % n, "tx": 2 % n}
        self.vectors = {k: self.wanted_vectors.get(k, v) for k, v in defaults.items()}
        fds = [new_eventfd() for _ in range(n)]
        self.irq_fds = {f"v{i}": fd for i, fd in enumerate(fds)}
        for name, vec in self.vectors.items():
            if vec == NO_VECTOR:
                self.irq_fds[name] = self.irq_fds.setdefault("unbound", new_eventfd())  # never signalled
            elif 0 <= vec < n:
                self.irq_fds[name] = fds[vec]
            else:
                raise ValueError(f"{name} vector {vec} outside the {n} bound vectors")
        self.pci.set_irqs(IrqIndex.MSIX, 0, list(fds))
        got = self.transport.set_config_msix_vector(self.vectors["config"])
        if got != self.vectors["config"]:
            self.fail()
            raise DriverInitError(f"config_msix_vector {self.vectors['config']:#x} read back as {got:#x}")

    def vector_of(self, queue: int) -> int:
        if self.intx:
            return NO_VECTOR
        return self.vectors["rx" if queue == self.RX else "tx"]

    def vector_fds(self) -> dict[str, int]:
        """Every bound MSI-X vector's eventfd by name ("v0", ...), or {"intx": fd}."""
        return {k: v for k, v in self.irq_fds.items() if k.startswith("v") or k == "intx"}


class Rig:
    """One device of the target plus guest memory; :meth:`up` brings it (again) to DRIVER_OK."""

    def __init__(self, pci: PciDevice, mem: GuestMemory) -> None:
        self.pci = pci
        self.mem = mem
        region = mem.regions[0]
        self.alloc = Allocator(region.gpa, region.size)
        self.mapped: list[tuple[int, int]] = []
        for r in mem.regions:
            pci.dma_map(r.gpa, r.size, r.fd, 0, DmaPerm.RW)
            self.mapped.append((r.gpa, r.size))
        self.drv: BenchDriver | None = None
        self.fired: list[str] = []  # interrupt eventfds seen signalled while waiting in wait_used
        self.protocol_errors: list[str] = []  # used-ring breaches the driver side noticed in wait_used

    # --- what the target exposes beyond PciDevice (the simulator) ------------------------------

    @property
    def model(self) -> Any:
        """The behavioral model behind a ``sim:`` target (``set_link``, ``errors``...), else None."""
        return getattr(self.pci, "model", None)

    @property
    def iommu(self) -> Any:
        endpoint = getattr(self.pci, "endpoint", None)
        return getattr(endpoint, "iommu", None)

    @property
    def has_loopback(self) -> bool:
        """Frames the device transmits come back to its receive side (sim loopback wire)."""
        return type(getattr(self.pci, "wire", None)).__name__ == "LoopbackWire"

    def handler_errors(self) -> list[BaseException]:
        """Exceptions the device's event loop caught (a crash in the simulator's device thread)."""
        loop = getattr(self.pci, "loop", None)
        return list(getattr(loop, "errors", []))

    # --- bring-up ------------------------------------------------------------------------------

    def up(self, *, features: int = DEFAULT_FEATURES, queue_size: int = 256, rx_buffers: int = 0,
           irq_mode: str = "msix", vectors: Mapping[str, int] | None = None, queues: bool = True,
           driver_ok: bool = True) -> BenchDriver:
        """Reset and initialise: ACK, DRIVER, features (``features`` is the wanted mask), FEATURES_OK,
        interrupts, then (``queues``) receiveq1/transmitq1 with ``rx_buffers`` receive buffers posted,
        then (``driver_ok``) DRIVER_OK."""
        if self.drv is not None:
            self.drv.reset()
        drv = BenchDriver(self.pci, self.mem, alloc=self.alloc, queue_size=queue_size, features=features,
                          rx_buffers=rx_buffers, irq_mode=irq_mode, vectors=vectors)
        self.drv = drv
        drv.transport.enable_device()
        drv.reset()
        drv.acknowledge()
        drv.negotiate()
        drv.features_ok()
        drv.setup_irqs()
        if queues:
            drv.setup_queues()
        if driver_ok:
            drv.driver_ok()
        return drv

    @property
    def d(self) -> BenchDriver:
        if self.drv is None:
            raise RuntimeError("device not brought up")
        return self.drv

    def status(self) -> int:
        return self.d.transport.status()

    # --- data path helpers -----------------------------------------------------------------------

    def doorbell(self, q: int, avail_idx: int | None = None) -> None:
        """Available buffer notification for queue ``q``, whatever the driver state."""
        t = self.d.transport
        ring = self.d.queues.get(q)
        idx = avail_idx if avail_idx is not None else (ring.published if ring is not None else 0)
        t.notify(q, avail_idx=idx, location=t.notify_location(q))

    def tx_room(self, want: int) -> int:
        """How many of ``want`` frames transmitq1 can take now (two descriptors each)."""
        return max(1, min(want, self.d.queues[TX].num_free // 2))

    def add_tx(self, frames: Sequence[bytes]) -> list[int]:
        """Add ``frames`` (header + frame, two descriptors each) to transmitq1 and publish; no doorbell."""
        ring = self.d.queues[TX]
        hdr = NetHdr().pack().ljust(self.d.hdr_len, b"\0")
        heads = [ring.add([hdr, f], []) for f in frames]
        ring.publish()
        return heads

    def send(self, frames: Sequence[bytes]) -> list[int]:
        heads = self.add_tx(frames)
        self.doorbell(TX)
        return heads

    def wait_used(self, q: int, count: int, timeout: float = EVENT_WAIT) -> list[UsedBuffer]:
        """Collect used buffers of ``q`` until ``count`` arrived or ``timeout``.

        Waits on every bound interrupt eventfd in slices of :data:`QUIET_WAIT` (so a queue mapped to
        NO_VECTOR is still collected); the names of the eventfds seen signalled go to :attr:`fired`,
        a used ring the driver side cannot accept stops the wait and is noted in :attr:`protocol_errors`.
        """
        ring = self.d.queues[q]
        wait_on = self.d.vector_fds()
        got: list[UsedBuffer] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                got += ring.used()
            except DriverQueueError as exc:
                self.protocol_errors.append(f"queue {q}: {exc}")
                return got
            left = deadline - time.monotonic()
            if len(got) >= count or left <= 0:
                return got
            self.fired += signalled(wait_on, min(left, QUIET_WAIT))

    # --- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            if self.drv is not None:
                self.drv.close()
        finally:
            for gpa, size in self.mapped:
                self.pci.dma_unmap(gpa, size)
            self.mapped.clear()


@contextmanager
def rig(open_target: OpenTarget, mem_size: int = MEM_SIZE) -> Iterator[Rig]:
    pci = open_target()
    mem = GuestMemory.single(mem_size, gpa=GUEST_MEMORY_BASE)
    r: Rig | None = None
    try:
        r = Rig(pci, mem)
        yield r
    finally:
        try:
            if r is not None:
                r.close()
        finally:
            mem.close()


def with_features(*extra: int) -> int:
    """The guest driver's default wanted set plus ``extra`` feature bits."""
    wanted = DEFAULT_FEATURES
    for n in extra:
        wanted |= bit(n)
    return wanted


RING_RESET_FEATURES = with_features(F.RING_RESET)


# --- memory and DMA observation --------------------------------------------------------------


class DmaRecorder:
    """Records every device access the IOMMU serves while active; inert where the target has no IOMMU model."""

    def __init__(self, iommu: Any) -> None:
        self.iommu = iommu
        self.accesses: list[tuple[DmaPerm, int, int]] = []

    @property
    def available(self) -> bool:
        return self.iommu is not None

    def _observe(self, access: DmaPerm, iova: int, size: int) -> None:
        self.accesses.append((access, iova, size))

    def __enter__(self) -> DmaRecorder:
        if self.iommu is not None:
            self.iommu.observers.append(self._observe)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.iommu is not None:
            self.iommu.observers.remove(self._observe)

    def outside(self, allowed: Sequence[tuple[int, int]], access: DmaPerm | None = None) -> list[str]:
        """Accesses (of kind ``access``, or any) not inside one of the ``allowed`` (start, length) ranges."""
        out = []
        for kind, iova, size in list(self.accesses):
            if access is not None and not kind & access:
                continue
            if not any(a <= iova and iova + size <= a + n for a, n in allowed):
                out.append(f"{'write' if kind & DmaPerm.WRITE else 'read'} {size}B at {iova:#x}")
        return out

    def describe(self, limit: int = 6) -> str:
        items = [f"{'W' if k & DmaPerm.WRITE else 'R'} {s}B@{i:#x}" for k, i, s in self.accesses[:limit]]
        more = len(self.accesses) - limit
        return ", ".join(items) + (f" (+{more} more)" if more > 0 else "") if items else "none"


def snapshot(mem: GuestMemory) -> bytes:
    r = mem.regions[0]
    return mem.read(r.gpa, r.size)


def changed_outside(mem: GuestMemory, before: bytes, after: bytes,
                    allowed: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(gpa, length) runs whose bytes changed between the snapshots outside the ``allowed`` ranges."""
    base = mem.regions[0].gpa
    step = 4096
    runs: list[tuple[int, int]] = []
    b, a = memoryview(before), memoryview(after)
    for off in range(0, min(len(b), len(a)), step):
        if b[off:off + step] == a[off:off + step]:
            continue
        for i in range(off, min(off + step, len(b))):
            if b[i] == a[i]:
                continue
            gpa = base + i
            if any(s <= gpa < s + n for s, n in allowed):
                continue
            if runs and runs[-1][0] + runs[-1][1] == gpa:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((gpa, 1))
    return runs


def fmt_runs(runs: Sequence[tuple[int, int]], limit: int = 4) -> str:
    if not runs:
        return "nowhere"
    text = ", ".join(f"{gpa:#x}+{n}" for gpa, n in runs[:limit])
    return text + (f" (+{len(runs) - limit} more runs)" if len(runs) > limit else "")


def ring_ranges(ring: DriverSplitQueue) -> dict[str, tuple[int, int]]:
    lay = ring.layout
    return {"desc": (ring.desc_addr, lay.desc_bytes), "avail": (ring.avail_addr, lay.avail_bytes),
            "used": (ring.used_addr, lay.used_bytes)}


def fmt_faults(faults: Sequence[DmaFault], limit: int = 4) -> str:
    if not faults:
        return "no DMA faults"
    text = "; ".join(str(f) for f in faults[:limit])
    return text + (f" (+{len(faults) - limit} more)" if len(faults) > limit else "")


def status_text(status: int) -> str:
    names = [s.name for s in DeviceStatus if s and status & s and s.name]
    return f"{status:#04x} ({'|'.join(names) or 'RESET'})"
