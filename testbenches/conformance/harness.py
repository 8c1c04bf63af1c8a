"""The conformance checks' one bring-up rig, over what the target declares it offers.

A check takes the ``bench`` fixture (:class:`Bench`, from ``checks/conftest.py``): ``bench.open()`` a
fresh device, ``bench.transport()`` a reset register-level transport, ``bench.rig()`` a :class:`Rig`:
one device, guest memory mapped identity into its IOMMU once, and :meth:`Rig.up` to bring it (again)
to DRIVER_OK with the wanted features, queue size, receive buffers and interrupt wiring (MSI-X with
one eventfd per vector and a chosen vector per event, NO_VECTOR allowed, or INTx).

The ring layout is the check's explicit choice: ``Rig.up(layout="split")`` (the default) never negotiates
VIRTIO_F_RING_PACKED, ``layout="packed"`` always does (:meth:`Rig.offers` first says *not offered* where the
target lacks it). Checks that hold for either layout take the ``ring_layout`` fixture (``checks/conftest.py``) and
post through the layout-agnostic helpers (:meth:`Rig.ring`, :meth:`Rig.add_chain`, :meth:`Rig.publish`,
:meth:`Rig.complete`, :meth:`Rig.send`, :meth:`Rig.wait_used`); their verdicts are recorded per layout.

Everything beyond register access comes from ``PciDevice.abilities()``
(:mod:`backend.pci.abilities`): the wire, the bench port (link, frames from the wire), the driver
errors the device recorded, crashes of its thread, DMA observation, the fault list, a synchronous
doorbell. :func:`need` turns a lacking ability into *not applicable* for the ids that need it. A
target whose wire is unknown (a real card) is probed once per target at its first bring-up: frames
out, do they come back? The answer (and why) is :attr:`Rig.wire`; :meth:`Rig.looped` reports the
data-path ids *not applicable* when nothing comes back.

Every wait is a bounded ``select`` on eventfds or a bounded poll of a used index. Every bound is nominal (as on a
target at full speed) and scaled by the session's :class:`~testbenches.conformance.deadlines.Deadlines` (the
``deadlines`` fixture, calibrated once at bring-up by :func:`calibrate`, at least the target's declared slowdown):
the rig's own helpers take nominal seconds and scale them; a check waiting by itself takes :attr:`Rig.event_wait`
(or :meth:`Rig.stretched`) for what must happen and :meth:`Rig.silence` for what must not, and its evidence says
how long that was and why (:meth:`Rig.explain`).
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from backend.drivers.transport import VirtioPciModern
from backend.eventloop import consume_eventfd, new_eventfd, wait_eventfd
from backend.pci.abilities import Abilities, Ability, Lacking, PortControl, WireKind
from backend.pci.device import DmaFault, DmaPerm, IrqIndex, PciDevice
from backend.virtio.features import DeviceStatus, F, NetF, has
from backend.virtio.net_hdr import NetHdr
from backend.virtio.packed_ring import advance, is_used, linear
from backend.virtio.pci_regs import NO_VECTOR
from backend.virtio.split_ring import vring_need_event
from sim.memory import Allocator, GuestMemory
from testbenches.conformance.chains import DmaWatch, Posted, add_chain
from testbenches.conformance.deadlines import (
    DEFAULT_BUDGET,
    FULL_SPEED_ROUND_TRIP,
    Calibration,
    Deadlines,
    declared_scale,
)
from testbenches.conformance.packed_chains import add_packed_chain
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import DriverRing, Layout, PackedDriverRing, layout_features, layout_of
from testbenches.driver.split_ring import DriverQueueError, DriverSplitQueue, UsedBuffer
from testbenches.driver.virtio_net import DEFAULT_FEATURES, DriverInitError, GuestNetDriver, choose_features
from testbenches.frames import MIN_LEN, test_frame

T = TypeVar("T")
OpenTarget = Callable[..., PciDevice]

#: Where the checks' guest memory starts (IOVA = guest-physical address). Not 0: QEMU's virtio device
#: takes a descriptor area at address 0 for "no queue" and ignores it (quirk ``qemu-virtio-net`` in
#: backend/drivers/quirks.py); starting at 1 MiB keeps that one deviation from failing every data-path check.
GUEST_MEMORY_BASE = 0x100000
#: Guest memory of a rig: small where checks snapshot all of it, large for rings of 32768 entries.
MEM_SIZE = 4 << 20
RING_MEM_SIZE = 32 << 20
#: Bound on waiting for an event that must come (only paid in full when the device misbehaves).
EVENT_WAIT = 0.5
#: How long silence is watched for when an event must NOT come (nominal: :meth:`Rig.silence` scales it).
QUIET_WAIT = 0.05
#: The rig's own "no interrupt" window on a target whose doorbell returns before the work is done (nominal).
QUIET_ASYNC = 0.02
#: Longest wait of the ring-level helpers for something that must happen (an interrupt, a used entry).
TIMEOUT = 1.0
#: How long a device reset (device_status written 0) may take to read back 0.
RESET_WAIT = 1.0
#: Once a device has missed one deadline, later ring-level waits on the same rig are this short: a broken
#: device then fails every hypothesis example (and every shrink step) in milliseconds, not seconds.
FAIL_FAST = 0.05
#: Eventfds bound per bring-up at most (a real card may have a large MSI-X table).
MAX_BOUND_VECTORS = 16
#: An IOVA no check ever maps: far above the guest memory, page aligned.
UNMAPPED_IOVA = 0x7F00_0000_0000
#: Wire probe: how long frames are sent and waited for (a real link may take a moment to come up) ...
PROBE_WAIT = 3.0
#: ... and how often one more frame goes out meanwhile.
PROBE_INTERVAL = 0.25
#: Sequence numbers of the probe's frames (a frame that comes back is one of them, not other traffic).
PROBE_SEQ = 0x9B0B_0000
#: Calibration at bring-up (:func:`calibrate`): one-chain round trips timed (after one to warm up), the bound on each
#: (a device that never returns the chain is timed by its register reads instead), and register reads timed.
CALIBRATION_ROUNDS = 8
CALIBRATION_BOUND = 2.0
CALIBRATION_READS = 8
CALIBRATION_SEQ = 0xCA1B_0000

RX = GuestNetDriver.RX
TX = GuestNetDriver.TX
NEEDS_RESET = int(DeviceStatus.DEVICE_NEEDS_RESET)
#: Feature bits the ring-level checks choose themselves.
RING_BITS = (1 << F.EVENT_IDX) | (1 << F.INDIRECT_DESC) | (1 << F.IN_ORDER)

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


def settled(read: Callable[[], T], want: T, limit: float, *, poll: float = 0.002) -> T:
    """``read()`` polled every ``poll`` s until it returns ``want`` or ``limit`` s passed (for a check, the rig's
    :attr:`Rig.event_wait`); the last value read. For a register a device in its own thread or process updates a
    moment after the access that changed it (PCI Status.Interrupt after an ISR read or a reset): one read right
    away races it, a device that never updates it still fails once the bound ran out."""
    deadline = time.monotonic() + limit
    value = read()
    while value != want and time.monotonic() < deadline:
        time.sleep(poll)  # a bounded poll of a value, not synchronisation by sleeping
        value = read()
    return value


def quiesce(fds: Mapping[str, int], *, limit: float, quiet: float) -> list[str]:
    """Consume what the device signals until it stays silent for ``quiet`` s (the rig's :meth:`Rig.silence`; at most
    ``limit`` s in all, the rig's :attr:`Rig.event_wait`: a slow target's work takes that much longer to end);
    returns every name seen. Work a check started (looped frames still arriving, their interrupts on the way
    from a device in its own thread) ends before the check looks at what comes next."""
    seen: set[str] = set()
    deadline = time.monotonic() + limit
    while True:
        fired = signalled(fds, min(quiet, max(0.0, deadline - time.monotonic())))
        seen.update(fired)
        if not fired or time.monotonic() >= deadline:
            return sorted(seen)


@dataclass(frozen=True)
class HostileKick:
    """A doorbell rung on planted input: what the register access raised (it must raise nothing) and whether the
    configuration change notification (STATUS-DEV-03) came within ``waited`` s (the rig's :attr:`Rig.event_wait`;
    ``why`` says how that bound came about, :meth:`Rig.explain`)."""

    crash: Exception | None
    notified: bool
    waited: float
    why: str = ""

    @property
    def doorbell(self) -> str:
        return f"doorbell {'raised ' + repr(self.crash) if self.crash else 'returned'}"

    @property
    def notification(self) -> str:
        return "fired" if self.notified else f"silent for {self.why or f'{self.waited:g}s'}"

    def judge_notified(self, verdict: Verdict, what: str, config_vector: int) -> None:
        """STATUS-DEV-03: the configuration change notification came on ``config_vector``."""
        verdict.check("STATUS-DEV-03", self.notified, f"{what}: config vector {config_vector} {self.notification}")


def hostile_kick(ring: Callable[[], object], config_fd: int, wait: float, why: str = "") -> HostileKick:
    """Ring a doorbell (``ring``) on planted input, then wait up to ``wait`` s (the rig's :attr:`Rig.event_wait`,
    ``why`` its :meth:`Rig.explain`) for the configuration change notification."""
    crash: Exception | None = None
    try:
        ring()
    except Exception as exc:  # the register access itself must not fail
        crash = exc
    return HostileKick(crash, wait_fd(config_fd, wait), wait, why)


def with_features(*extra: int) -> int:
    """The guest driver's default wanted set plus ``extra`` feature bits."""
    wanted = DEFAULT_FEATURES
    for n in extra:
        wanted |= 1 << n
    return wanted


RING_RESET_FEATURES = with_features(F.RING_RESET)


def need(ability: Ability[T], verdict: Verdict, *ids: str) -> T | None:
    """The ability, or None after reporting ``ids`` *not applicable* with the reason the target gave."""
    if isinstance(ability, Lacking):
        for rid in ids:
            verdict.not_applicable(rid, ability.why)
        return None
    return ability


# --- frames --------------------------------------------------------------------------------------------------


def fitting_round(needs: Sequence[tuple[int, int]], start: int, tx_free: int, rx_free: int) -> list[int]:
    """The frames from ``start`` on that go in one round: as many as the transmit and receive rings have free
    descriptors for, ``needs`` being each frame's (transmit, receive) descriptors."""
    batch: list[int] = []
    for k in range(start, len(needs)):
        need_tx, need_rx = needs[k]
        if need_tx > tx_free or need_rx > rx_free:
            break
        tx_free -= need_tx
        rx_free -= need_rx
        batch.append(k)
    return batch


def make_frame(seq: int = 0, length: int = 60) -> bytes:
    """The bench's test frame (:func:`testbenches.frames.test_frame`); below its minimum length (ring checks
    send frames down to a bare Ethernet header) the first ``length`` bytes of one."""
    if length >= MIN_LEN:
        return test_frame(seq, length)
    return test_frame(seq, MIN_LEN)[:length]


# --- the driver the rig brings the device up with --------------------------------------------------------


class BenchDriver(GuestNetDriver):
    """GuestNetDriver with explicit interrupt wiring.

    ``irq_mode`` "msix": every vector up to :data:`MAX_BOUND_VECTORS` gets its
    own eventfd (``irq_fds["v<n>"]``) and ``vectors`` maps "config", "rx" and
    "tx" to a vector or NO_VECTOR (default 0, 1, 2 modulo the table).
    ``irq_mode`` "intx": MSI-X stays disabled, one eventfd on INTx
    (``irq_fds["intx"]``), and no vector is ever written.
    """

    def __init__(self, pci: PciDevice, mem: GuestMemory, *, alloc: Allocator,
                 reset_timeout: float = RESET_WAIT) -> None:
        super().__init__(pci, mem, alloc=alloc, rx_buffers=0, reset_timeout=reset_timeout)
        self.irq_mode = "msix"
        self.wanted_vectors: dict[str, int] = {}
        self.vectors: dict[str, int] = {}
        self.bound_vectors = 0

    def configure(self, *, alloc: Allocator, queue_size: int, features: int, rx_buffers: int, irq_mode: str,
                  vectors: Mapping[str, int] | None) -> None:
        if irq_mode not in ("msix", "intx"):
            raise ValueError(f"irq_mode {irq_mode!r}")
        self.alloc = alloc
        self.queue_size = queue_size
        self.wanted = features
        self.rx_target = rx_buffers
        self.irq_mode = irq_mode
        self.wanted_vectors = dict(vectors or {})

    def setup_irqs(self) -> None:
        self.intx = False
        self.bound_vectors = 0
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

    def enable_queue_at(self, queue: int, size: int, desc: int, avail: int, used: int) -> None:
        """Program ``queue`` by hand (``size``, its vector, the three ring parts at these IOVAs) and enable it."""
        t = self.transport
        t.set_queue_size(queue, size)
        t.set_queue_msix_vector(queue, self.vector_of(queue))
        t.set_queue_addresses(queue, desc, avail, used)
        t.enable_queue(queue)

    def vector_fds(self) -> dict[str, int]:
        """Every bound MSI-X vector's eventfd by name ("v0", ...), or {"intx": fd}."""
        return {k: v for k, v in self.irq_fds.items() if k.startswith("v") or k == "intx"}


@dataclass(frozen=True)
class EventIdxStep:
    """One EVENT_IDX notification experiment: used idx start -> new with used_event ``event``."""

    start: int
    new: int
    event: int
    flags: int
    batch: int
    want: bool
    got: int
    done: bool

    def describe(self) -> str:
        return (f"used idx {self.start}->{self.new} ({self.batch} buffer(s)), used_event {self.event} "
                f"(used idx{(self.event - self.start + 0x8000) % 0x10000 - 0x8000:+d}), avail.flags={self.flags}: "
                f"{self.got} interrupt(s), expected {int(self.want)} (vring_need_event)")


# --- the wire ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wire:
    """What the device's port is connected to for this run, and how the bench knows."""

    kind: WireKind
    why: str

    @property
    def looped(self) -> bool:
        return self.kind is WireKind.LOOPBACK


@dataclass
class WireProbes:
    """Wire probe results per target spec, kept for the session: a real port is probed once."""

    results: dict[str, Wire] = field(default_factory=dict)


def probe_wire(r: Rig) -> Wire:
    """Bring the device up, send frames for up to :data:`PROBE_WAIT` s and see whether one of them comes back."""
    d = r.up(queue_size=64, rx_buffers=16)
    sent: list[bytes] = []
    strangers = 0
    probe_wait = r.stretched(PROBE_WAIT)
    deadline = time.monotonic() + probe_wait
    while (left := deadline - time.monotonic()) > 0:
        if d.queues[TX].num_free >= 2:
            f = make_frame(PROBE_SEQ + len(sent), 64)
            sent.append(f)
            r.send([f])
        for u in r.wait_used(RX, 1, timeout=min(PROBE_INTERVAL, left / r.time_scale)):  # nominal, as it takes
            data = u.data[d.hdr_len:]
            if any(data[:len(f)] == f for f in sent):
                r.up(queue_size=64)  # leave the device as if freshly brought up
                return Wire(WireKind.LOOPBACK, f"{r.pci.name}: probed at bring-up, a transmitted frame came back "
                                               f"({len(sent)} sent)")
            strangers += 1
        d.queues[TX].used()
    r.up(queue_size=64)
    return Wire(WireKind.NONE, f"{r.pci.name}: probed at bring-up: {len(sent)} frames sent over "
                               f"{r.explain(PROBE_WAIT)}, none "
                               f"came back ({strangers} other frames received): the port is not looped back, "
                               "transmitted frames cannot be observed (give wire=loopback to insist)")


# --- the rig -----------------------------------------------------------------------------------------------


class Rig:
    """One device of the target plus guest memory; :meth:`up` brings it (again) to DRIVER_OK.

    The ring-level helpers (:meth:`publish`, :meth:`complete`, :meth:`irqs`, :meth:`wait_used_idx`,
    :meth:`event_idx_step`) drive receiveq1/transmitq1 directly, for checks that post their own chains.
    """

    RX = RX
    TX = TX

    def __init__(self, pci: PciDevice, mem: GuestMemory, wire: Wire | None = None,
                 deadlines: Deadlines | None = None) -> None:
        self.pci = pci
        self.mem = mem
        self.abilities: Abilities = pci.abilities()
        region = mem.regions[0]
        self.alloc = Allocator(region.gpa, region.size)
        self.mapped: list[tuple[int, int]] = []
        for r in mem.regions:
            pci.dma_map(r.gpa, r.size, r.fd, 0, DmaPerm.RW)
            self.mapped.append((r.gpa, r.size))
        #: The session's deadlines (calibrated at bring-up), at least the slowdown this device declares; without
        #: them (a rig built outside the suite) the declared slowdown alone.
        base = deadlines if deadlines is not None else Deadlines(target=pci.name)
        self.deadlines = base.at_least(declared_scale(pci))
        self.drv = BenchDriver(pci, mem, alloc=self.alloc, reset_timeout=self.deadlines.wait(RESET_WAIT))
        t = self.drv.transport
        t.enable_device()
        t.reset()
        self.offered = t.device_features()
        self.max_queue_size = t.queue_size(RX)
        self.wire = wire if wire is not None else Wire(self.abilities.wire, self.abilities.wire_why)
        self.brought_up = False
        self.fired: list[str] = []  # interrupt eventfds seen signalled while waiting in wait_used
        self.protocol_errors: list[str] = []  # used-ring breaches the driver side noticed in wait_used
        #: How long "no interrupt" is waited for by the ring-level helpers (nominal seconds, which they scale):
        #: nothing where a doorbell write returns after the work and its MSI-X message are done.
        self.quiet = 0.0 if self.abilities.synchronous_doorbell else QUIET_ASYNC
        #: Every bound of this rig is this many times its nominal value (:meth:`stretched`, :meth:`silence`).
        self.time_scale = self.deadlines.scale
        self.doorbells = 0
        self.patience = self.stretched(TIMEOUT)  # drops to FAIL_FAST (scaled) after the first missed deadline

    # --- how long things take on this target ---------------------------------------------------------------

    def stretched(self, seconds: float) -> float:
        """How long a wait of ``seconds`` (as on a device at full speed) for what must happen is on this target
        (:meth:`Deadlines.wait`), so a slow simulator is given the time it needs, not judged non-conformant."""
        return self.deadlines.wait(seconds)

    def silence(self, seconds: float = QUIET_WAIT) -> float:
        """How long "nothing arrives" is watched for on this target where ``seconds`` do at full speed
        (:meth:`Deadlines.silence`): a late interrupt of a slow target must not pass for silence."""
        return self.deadlines.silence(seconds)

    def explain(self, seconds: float = EVENT_WAIT) -> str:
        """A bound of ``seconds`` nominal as the evidence says it: how long it is here and why."""
        return self.deadlines.explain(seconds)

    def bounded(self, seconds: float = TIMEOUT) -> float:
        """A ring-level wait for what must happen: ``seconds`` nominal, scaled, cut to the rig's :attr:`patience`."""
        return min(self.stretched(seconds), self.patience)

    def explain_bounded(self, seconds: float = TIMEOUT) -> str:
        """:meth:`bounded` as the evidence says it, naming the shortened patience after a missed deadline."""
        if self.patience < self.stretched(seconds):
            return (f"{self.deadlines.explain(FAIL_FAST)}, the rig's patience once the device had missed a "
                    "deadline")
        return self.deadlines.explain(seconds)

    @property
    def event_wait(self) -> float:
        """:data:`EVENT_WAIT` on this target: the bound on waiting for an event that must come."""
        return self.stretched(EVENT_WAIT)

    @property
    def port(self) -> Ability[PortControl]:
        return self.abilities.port

    def looped(self, verdict: Verdict, *ids: str) -> bool:
        """True when transmitted frames come back; otherwise ``ids`` are reported not applicable, with why."""
        if self.wire.looped:
            return True
        for rid in ids:
            verdict.not_applicable(rid, f"transmitted frames cannot be observed: {self.wire.why}")
        return False

    def driver_errors(self) -> list[str] | None:
        """The driver errors the device recorded, oldest first; None where the target does not report them."""
        errors = self.abilities.errors
        return None if isinstance(errors, Lacking) else errors.driver_errors()

    def device_errors(self) -> str:
        """The driver errors the device recorded, as evidence text."""
        errors = self.driver_errors()
        return "; ".join(errors) if errors is not None else "(the target does not report them)"

    def crashes(self) -> list[str]:
        """Failures of the device's own thread ([] where the target has none to report, see abilities)."""
        log = self.abilities.crashes
        return [] if isinstance(log, Lacking) else log.crashes()

    def faults(self) -> list[DmaFault]:
        """DMA faults since the last call (drained); [] where the target cannot report them (see abilities)."""
        faults = self.abilities.faults
        return [] if isinstance(faults, Lacking) else faults.dma_faults()

    def dma_watch(self, rings: Mapping[int, DriverSplitQueue] | None = None) -> DmaWatch:
        return DmaWatch(self.abilities.dma_observer, self.mem, rings)

    # --- bring-up ----------------------------------------------------------------------------------------

    def offers(self, layout: Layout, verdict: Verdict, *ids: str) -> bool:
        """True when the target offers ``layout``; otherwise ``ids`` read *not offered* (once per test, so a
        hypothesis test does not say it for every example). Split rings need no feature bit."""
        if layout == "split" or has(self.offered, F.RING_PACKED):
            return True
        for rid in ids:
            if not verdict.recorded(rid):
                verdict.not_offered(rid, f"packed ring layout: VIRTIO_F_RING_PACKED (bit 34) not offered (device "
                                         f"features {self.offered:#x})")
        return False

    def up(self, *, features: int = DEFAULT_FEATURES, exact: bool = False, queue_size: int = 256,
           rx_buffers: int = 0, irq_mode: str = "msix", vectors: Mapping[str, int] | None = None,
           queues: bool = True, driver_ok: bool = True, layout: Layout = "split") -> BenchDriver:
        """Reset and initialise: ACK, DRIVER, features (``features`` is the wanted mask, or with ``exact``
        the set written verbatim), FEATURES_OK, interrupts, then (``queues``) receiveq1/transmitq1 with
        ``rx_buffers`` receive buffers posted, then (``driver_ok``) DRIVER_OK. Guest memory is allocated
        afresh: the previous rings and buffers are gone with the reset.

        ``layout`` chooses the rings: "packed" adds VIRTIO_F_RING_PACKED to the features (the target must offer
        it: :meth:`offers`), "split" never negotiates it (an exact set holding it is refused)."""
        if exact and layout == "split" and has(features, F.RING_PACKED):
            raise ValueError(f"features {features:#x} choose packed rings: ask for them with layout='packed'")
        features = layout_features(features, layout)
        d = self.drv
        d.reset()
        region = self.mem.regions[0]
        self.alloc = Allocator(region.gpa, region.size)
        d.configure(alloc=self.alloc, queue_size=queue_size, features=features, rx_buffers=rx_buffers,
                    irq_mode=irq_mode, vectors=vectors)
        d.transport.enable_device()
        d.acknowledge()
        d.negotiate(features if exact else None)
        if layout_of(d.features) != layout:
            d.fail()
            raise DriverInitError(f"{layout} rings asked for, features {d.features:#x} negotiated (device offers "
                                  f"{d.offered:#x})")
        d.features_ok()
        d.setup_irqs()
        if queues:
            d.setup_queues()
        if driver_ok:
            d.driver_ok()
        self.brought_up = True
        self.doorbells = 0
        return d

    def up_packed(self, features: int, *, queue_size: int, irq_mode: str = "msix") -> dict[int, PackedDriverRing]:
        """Bring-up with VIRTIO_F_RING_PACKED: ``features`` (bit 34 included) written verbatim, receiveq1 and
        transmitq1 as packed rings of ``queue_size`` (any size 1..32768), no receive buffers, DRIVER_OK last.
        The rings are also :attr:`packed`; :meth:`kick_packed` notifies with the packed notification data."""
        if not has(features, F.RING_PACKED):
            raise ValueError(f"features {features:#x} lack VIRTIO_F_RING_PACKED")
        self.up(features=features, exact=True, queue_size=queue_size, irq_mode=irq_mode, layout="packed")
        return self.packed

    @property
    def packed(self) -> dict[int, PackedDriverRing]:
        """receiveq1/transmitq1 when the last bring-up chose packed rings ({} on split rings)."""
        return self.drv.packed

    @property
    def layout(self) -> Layout:
        """The ring layout of the last bring-up."""
        return layout_of(self.features)

    def ring(self, q: int) -> DriverRing:
        """Queue ``q`` of either layout, for the layout-agnostic helpers."""
        return self.drv.ring(q)

    def used_mark(self, q: int) -> int:
        """How far the device has marked buffers used on queue ``q``, read without consuming anything: the used
        idx of a split ring; on a packed ring the driver's next used position (counted over two laps, like the
        wrap counter) plus the slots from there that read as used, so a device that marks one moves it."""
        packed = self.drv.packed.get(q)
        if packed is None:
            return self._split(q).used_idx()
        off, wrap = packed.next_used, packed.used_wrap
        ahead = 0
        while ahead < packed.size and is_used(packed.read_desc(off).flags, wrap):
            off, wrap = advance(off, wrap, 1, packed.size)
            ahead += 1
        return (linear(packed.next_used, packed.used_wrap, packed.size) + ahead) % (2 * packed.size)

    def kick_packed(self, q: int) -> None:
        """Available buffer notification for packed queue ``q``: with VIRTIO_F_NOTIFICATION_DATA the next slot and
        wrap counter (PACKED-DRV-04), else the queue's identifier alone (its index, or its notif_config_data with
        VIRTIO_F_NOTIF_CONFIG_DATA)."""
        t = self.drv.transport
        ring = self.packed[q]
        t.notify(q, avail_idx=ring.next_avail | ring.avail_wrap << 15, location=t.notify_location(q))
        self.doorbells += 1

    def bring_up(self, features: int, queue_size: int = 256) -> None:
        """The 3.1.1 steps to DRIVER_OK with exactly ``features``, rings of ``queue_size`` in the layout the
        features choose (:meth:`features_for`'s ``layout``), no receive buffers."""
        self.up(features=features, exact=True, queue_size=queue_size, layout=layout_of(features))

    def up_offered(self, verdict: Verdict, ids: Sequence[str], features: int | None, why: str, *,
                   queue_size: int = 256, needs: int | None = None) -> int | None:
        """:meth:`bring_up` with ``features`` (from :meth:`features_for`), returned when frames come back; None
        with ``ids`` reported not offered (``why``) when ``features`` is None or lacks bit ``needs``, or not
        applicable when nothing comes back (:meth:`looped`)."""
        if features is None or (needs is not None and not has(features, needs)):
            for rid in ids:
                verdict.not_offered(rid, why)
            return None
        self.bring_up(features, queue_size)
        return features if self.looped(verdict, *ids) else None

    def features_for(self, *, event_idx: bool = False, indirect: bool | None = None, in_order: bool = False,
                     extra: int = 0, drop: int = 0, layout: Layout = "split") -> int | None:
        """The feature set for the wanted ring options and ``layout``, or None if the device does not offer one of
        them (``indirect=None``: INDIRECT_DESC where offered, for checks that do not depend on it)."""
        if indirect is None:
            indirect = has(self.offered, F.INDIRECT_DESC)
        want = {F.EVENT_IDX: event_idx, F.INDIRECT_DESC: indirect, F.IN_ORDER: in_order,
                F.RING_PACKED: layout == "packed"}
        extra &= ~(1 << F.RING_PACKED)  # the layout says it
        for bit, on in want.items():
            if on and not has(self.offered, bit):
                return None
        base = DEFAULT_FEATURES & ~RING_BITS | extra
        base |= sum(1 << bit for bit, on in want.items() if on)
        chosen = choose_features(self.offered, base & ~drop)
        return chosen if all(has(chosen, b) == on for b, on in want.items()) else None

    @property
    def features(self) -> int:
        return self.drv.features

    def _split(self, q: int) -> DriverSplitQueue:
        ring = self.drv.queues.get(q)
        if ring is None:
            raise ValueError(f"queue {q}: a split-ring helper on {self.layout} rings (use ring(q), add_chain)")
        return ring

    @property
    def rx(self) -> DriverSplitQueue:
        """receiveq1 on split rings (split-only helpers: used_idx, used_event, raw avail writes)."""
        return self._split(RX)

    @property
    def tx(self) -> DriverSplitQueue:
        """transmitq1 on split rings."""
        return self._split(TX)

    @property
    def hdr_len(self) -> int:
        return self.drv.hdr_len

    @property
    def rx_buf_size(self) -> int:
        return self.drv.rx_buf_size

    def tx_header(self, hdr: NetHdr | None = None) -> bytes:
        return (hdr or NetHdr()).pack().ljust(self.hdr_len, b"\0")

    def status(self) -> int:
        return self.drv.transport.status()

    # --- buffers through the driver's rings -----------------------------------------------------------

    def doorbell(self, q: int, avail_idx: int | None = None) -> None:
        """Available buffer notification for queue ``q``, whatever the driver state."""
        t = self.drv.transport
        ring = self.drv.queues.get(q) or self.drv.packed.get(q)
        idx = avail_idx if avail_idx is not None else (ring.published if ring is not None else 0)
        t.notify(q, avail_idx=idx, location=t.notify_location(q))
        self.doorbells += 1

    def tx_room(self, want: int) -> int:
        """How many of ``want`` frames transmitq1 can take now (two descriptors each)."""
        return max(1, min(want, self.ring(TX).num_free // 2))

    def add_tx(self, frames: Sequence[bytes]) -> list[int]:
        """Add ``frames`` (header + frame, two descriptors each) to transmitq1 and publish; no doorbell."""
        hdr = self.tx_header()
        tx = self.ring(TX)
        heads = [tx.add([hdr, f], []) for f in frames]
        tx.publish()
        return heads

    def send(self, frames: Sequence[bytes]) -> list[int]:
        heads = self.add_tx(frames)
        self.doorbell(TX)
        return heads

    def wait_used(self, q: int, count: int, timeout: float = EVENT_WAIT) -> list[UsedBuffer]:
        """Collect used buffers of ``q`` until ``count`` arrived or ``timeout`` (nominal seconds, :meth:`stretched`).

        Waits on every bound interrupt eventfd in slices of :data:`QUIET_WAIT` (so a queue mapped to
        NO_VECTOR is still collected); the names of the eventfds seen signalled go to :attr:`fired`,
        a used ring the driver side cannot accept stops the wait and is noted in :attr:`protocol_errors`.
        """
        ring = self.ring(q)
        wait_on = self.drv.vector_fds()
        got: list[UsedBuffer] = []
        deadline = time.monotonic() + self.stretched(timeout)
        while True:
            try:
                got += ring.used()
            except DriverQueueError as exc:
                self.protocol_errors.append(f"queue {q}: {exc}")
                return got
            left = deadline - time.monotonic()
            if len(got) >= count or left <= 0:
                return got
            self.fired += signalled(wait_on, min(left, QUIET_WAIT))  # a polling slice, not a bound

    # --- chains the check posts itself -------------------------------------------------------------------

    def add_chain(self, q: int, out: Sequence[bytes], in_lens: Sequence[int], *, direct: int | None = None,
                  token: object = None) -> Posted:
        """One chain on queue ``q`` of either layout (:func:`~testbenches.conformance.chains.add_chain` on split
        rings, :func:`~testbenches.conformance.packed_chains.add_packed_chain` on packed ones, where a list with an
        indirect table is that one descriptor: ``direct=k`` puts every piece in the table)."""
        packed = self.drv.packed.get(q)
        if packed is not None:
            return add_packed_chain(packed, out, in_lens, indirect=direct is not None, token=token)
        return add_chain(self._split(q), out, in_lens, direct=direct, token=token)

    def publish(self, q: int) -> None:
        """Make added entries visible and ring the doorbell whatever the suppression state says."""
        self.ring(q).publish()
        self.kick(q)

    def kick(self, q: int) -> None:
        self.doorbell(q, self.ring(q).published)

    def irq_fd(self, q: int) -> int:
        return self.drv.irq_fds["rx" if q == RX else "tx"]

    def missed_deadline(self) -> None:
        """A wait for what must happen ran out: from now on every such wait is short (:data:`FAIL_FAST`, scaled like
        every bound), so a broken device fails each later step (and hypothesis shrink step) quickly instead of
        waiting the full bound again."""
        self.patience = self.stretched(FAIL_FAST)

    def irqs(self, q: int, timeout: float) -> int:
        """Interrupts signalled on the queue's eventfd, waiting up to ``timeout`` (nominal, scaled) for the first (0 if
        none). A plain wait: no deadline is missed here (see :meth:`notified` for an interrupt that must come)."""
        return self._irqs_for(q, min(self.stretched(timeout), self.patience))

    def _irqs_for(self, q: int, wait: float) -> int:
        """:meth:`irqs` waiting ``wait`` s as they are (already scaled)."""
        fd = self.irq_fd(q)
        ready, _, _ = select.select([fd], [], [], max(0.0, wait))
        if not ready:
            return 0
        try:
            return os.eventfd_read(fd)
        except BlockingIOError:
            return 0

    def notified(self, q: int, seen: int, want: bool, timeout: float = TIMEOUT) -> int:
        """The interrupts of ``q`` for a step whose waits already saw ``seen``: when one is ``want``-ed and none came
        yet, the wait for it (``timeout``, a missed deadline if it never comes); otherwise only the quiet window,
        for an extra or unwanted one. An interrupt that already came is never waited for again, so a conformant
        asynchronous device never costs the rig its patience."""
        if want and not seen:
            got = self.irqs(q, timeout)
            if not got:
                self.missed_deadline()
            return got
        return seen + self._irqs_for(q, min(self.silence(self.quiet), self.patience))

    def drain_irqs(self) -> None:
        for q in (RX, TX):
            self.irqs(q, 0)

    def _batch_bound(self, nominal: float, due: int) -> float:
        """The bound of one step of a batch wait with ``due`` elements still to come: ``nominal`` plus a full-speed
        round trip per element (a device may write the used idx once for a whole batch), scaled, within patience."""
        return min(self.stretched(nominal + due * FULL_SPEED_ROUND_TRIP), self.patience)

    def wait_used_idx(self, q: int, target: int, timeout: float | None = None, *,
                      expected: bool = True) -> tuple[bool, int]:
        """Wait until :meth:`used_mark` of ``q`` reads ``target`` (a split used idx, 16-bit; a packed position,
        modulo two laps); interrupts seen meanwhile are returned. Nothing is consumed. Not reaching it is a missed
        deadline unless it was not ``expected`` (a look for a used index that must not move).

        An expected wait bounds each step, not the whole batch: every move of the mark starts the bound again, so
        a batch of hundreds of chains on a slow or loaded target is judged by whether the device keeps going, not
        by how long the batch is; a bound passing with no move toward ``target`` is the miss. A device may also
        write the used idx once for a whole batch, so the bound is ``timeout`` plus a full-speed round trip
        (:data:`FULL_SPEED_ROUND_TRIP`) per element still due, scaled."""
        packed = self.drv.packed.get(q)
        modulo = 2 * packed.size if packed is not None else 0x10000
        size = packed.size if packed is not None else self._split(q).size
        nominal = timeout if timeout is not None else TIMEOUT

        fd = self.irq_fd(q)
        seen = 0
        last = self.used_mark(q)
        due = (target - last) % modulo
        deadline = time.monotonic() + self._batch_bound(nominal, due if expected and due < size else 0)
        while last != target % modulo:
            left = deadline - time.monotonic()
            if left <= 0:
                if expected:
                    self.missed_deadline()
                return False, seen
            ready, _, _ = select.select([fd], [], [], min(left, 0.005))
            if ready:
                try:
                    seen += os.eventfd_read(fd)
                except BlockingIOError:
                    pass
            mark = self.used_mark(q)
            # a step is a move toward the target from at most a ring's worth of elements short of it (no device
            # has more in flight): a mark running past the target or back never extends the wait, which so ends
            # after at most one bound per element still due
            due = (target - mark) % modulo
            if expected and due < (target - last) % modulo and due < size:
                deadline = time.monotonic() + self._batch_bound(nominal, due)
            last = mark
        return True, seen

    def event_idx_step(self, first_seq: int, event: int, flags: int, batch: int, length: int) -> EventIdxStep:
        """With EVENT_IDX: set avail.flags and used_event = used idx + ``event``, transmit ``batch`` frames,
        wait for them and count the TX interrupts; ``want`` is what vring_need_event says should happen."""
        tx = self.tx
        tx.write_avail_flags(flags)
        start = tx.used_idx()
        ev = (start + event) & 0xFFFF
        tx.set_used_event(ev)
        for k in range(batch):
            add_chain(tx, [self.tx_header() + make_frame(first_seq + k, length)], [])
        self.publish(TX)
        done, seen = self.wait_used_idx(TX, start + batch)
        new = tx.used_idx()
        want = vring_need_event(ev, new, start)
        got = self.notified(TX, seen, want)
        tx.used()
        return EventIdxStep(start, new, ev, flags, batch, want, got, done)

    def complete(self, q: int, pending: dict[int, Posted], count: int, timeout: float | None = None, *,
                 expected: bool = True) -> list[tuple[Posted, int]]:
        """Consume used entries of ``q`` until ``count`` came back (or ``timeout``), in used-ring order; fewer is a
        missed deadline unless they were not ``expected`` (a look for entries that must not come). As in
        :meth:`wait_used_idx`, an expected wait bounds each step: every entry that comes starts the bound again."""
        ring = self.ring(q)
        got: list[tuple[Posted, int]] = []
        nominal = timeout if timeout is not None else TIMEOUT

        deadline = time.monotonic() + self._batch_bound(nominal, count if expected else 0)
        while len(got) < count:
            before = len(got)
            for u in ring.used():
                p = pending.pop(u.head, None)
                if p is None:
                    raise AssertionError(f"queue {q}: used id {u.head} is not a chain in flight")
                got.append((p, u.len))
            if expected and len(got) != before:
                deadline = time.monotonic() + self._batch_bound(nominal, count - len(got))
            if len(got) >= count:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                if expected:
                    self.missed_deadline()
                break
            self._irqs_for(q, min(left, QUIET_WAIT))  # a polling slice of the bound above
        return got

    def release(self, posted: Posted) -> None:
        for gpa in posted.owned:
            self.drv.alloc.free(gpa)
        posted.owned = []

    # --- teardown ----------------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            self.drv.close()
        finally:
            for gpa, size in self.mapped:
                self.pci.dma_unmap(gpa, size)
            self.mapped.clear()


# --- the bench fixture ---------------------------------------------------------------------------------------


class Bench:
    """What a check gets to reach the target: fresh devices, transports and rigs of ``--target``."""

    def __init__(self, open_target: OpenTarget, spec: str, probes: WireProbes,
                 deadlines: Deadlines | None = None) -> None:
        self.open_target = open_target
        self.spec = spec
        self.probes = probes
        #: The session's deadlines (the ``deadlines`` fixture); nominal where none were given.
        self.deadlines = deadlines if deadlines is not None else Deadlines(target=spec)

    def open(self, spec: str | None = None) -> PciDevice:
        """A fresh device of ``spec`` (default the session's target); closed at teardown."""
        return self.open_target(spec) if spec else self.open_target()

    def transport(self) -> VirtioPciModern:
        """A fresh device, reset, with memory decoding and bus mastering on."""
        t = VirtioPciModern(self.open(), reset_timeout=self.deadlines.wait(RESET_WAIT))
        t.enable_device()
        t.reset()
        return t

    @property
    def configurable(self) -> bool:
        """The target builds its device from spec options a check may vary (the behavioral model, ``sim:``)."""
        return self.spec.startswith("sim:")

    def offering(self, verdict: Verdict, wanted: int, ids: Sequence[str], also: int = 0) -> str | None:
        """A target spec offering the feature bits ``wanted``: the target as it is when it offers them, else, where
        :attr:`configurable`, a variant offering ``wanted`` and ``also`` besides its own offer (one device for all
        of a module's checks); None, with ``ids`` not offered, when neither can."""
        with self.rig() as probe:
            offered = probe.offered
        if offered & wanted == wanted:
            return self.spec
        if not self.configurable:
            names = ", ".join(f"VIRTIO_NET_F_{f.name}" for f in NetF if wanted >> f & 1 and not offered >> f & 1)
            for rid in ids:
                verdict.not_offered(rid, f"the target does not offer {names} (device features {offered:#x})")
            return None
        return self.variant(replace=True, features=f"{offered | wanted | also:#x}")

    def variant(self, *, replace: bool = False, **opts: object) -> str:
        """The target spec with ``key=value`` options (``replace``: also over the ones it has) where the
        target is :attr:`configurable`; other targets are run as they are."""
        if not self.configurable:
            return self.spec
        have = set() if replace else {p.split("=", 1)[0] for p in self.spec.split(",")[1:]}
        extra = [f"{k}={v}" for k, v in opts.items() if k not in have]
        return ",".join([self.spec, *extra])

    def wire(self) -> Wire:
        """What the target's port is connected to: as declared, or probed once (a device is opened for it)."""
        known = self.probes.results.get(self.spec)
        if known is not None:
            return known
        with self.rig() as r:
            return r.wire

    @contextmanager
    def rig(self, spec: str | None = None, mem_size: int = MEM_SIZE) -> Iterator[Rig]:
        """A :class:`Rig` on a fresh device; a wire the target does not know is probed once per spec."""
        key = spec or self.spec
        pci = self.open(spec)
        with GuestMemory.single(mem_size, gpa=GUEST_MEMORY_BASE) as mem:
            r = Rig(pci, mem, self.probes.results.get(key), self.deadlines)
            try:
                if r.wire.kind is WireKind.UNKNOWN:
                    r.wire = probe_wire(r)
                self.probes.results[key] = r.wire
                yield r
            finally:
                try:
                    r.close()
                finally:
                    pci.close()  # a real function has one owner at a time: free it for the next open


# --- calibration ----------------------------------------------------------------------------------------------


def calibrate(pci: PciDevice, target: str, budget: float = DEFAULT_BUDGET) -> Deadlines:
    """The session's deadlines for ``target``, measured on ``pci`` (a fresh device of it, left for the caller to
    close): :func:`measure`, at least the slowdown the device declares; ``budget``: seconds one check may take on a
    slow target (:meth:`Deadlines.unaffordable`)."""
    return Deadlines.calibrated(target, measure(pci), declared_scale(pci), budget)


def measure(pci: PciDevice) -> Calibration:
    """Time what the checks wait for, on a fresh device: :data:`CALIBRATION_READS` common-cfg reads (device_features)
    and, with the device up, :data:`CALIBRATION_ROUNDS` one-chain round trips on transmitq1 (a frame, the doorbell,
    until the used index moves; polled, so a device that never interrupts is timed all the same). A chain not used
    within :data:`CALIBRATION_BOUND` s, or a device that cannot be brought up, leaves the register reads alone."""
    reads: list[float] = []
    trips: list[float] = []
    note = ""
    with GuestMemory.single(MEM_SIZE, gpa=GUEST_MEMORY_BASE) as mem:
        try:
            r = Rig(pci, mem, Wire(WireKind.NONE, "calibration"))
        except Exception as exc:  # a device that cannot even be reset: nothing to time, the checks will say why
            return Calibration(None, None, note=f"no measurement, the device could not be set up: {exc!r}")
        try:
            t = r.drv.transport
            for _ in range(CALIBRATION_READS):
                start = time.perf_counter()
                t.device_features()
                reads.append(time.perf_counter() - start)
            trips, note = _round_trips(r)
        except Exception as exc:  # a broken device is judged by the checks, not here
            note = f"no round trip timed: {exc!r}"
        finally:
            r.close()
    return Calibration.of(trips, reads, note)


def _round_trips(r: Rig) -> tuple[list[float], str]:
    """One-chain round trips on transmitq1 (the first, warming up, not kept); the note says why none were timed."""
    r.up(queue_size=16)
    tx = r.tx
    trips: list[float] = []
    for k in range(CALIBRATION_ROUNDS + 1):
        before = tx.used_idx()
        r.add_tx([make_frame(CALIBRATION_SEQ + k, 64)])
        start = time.perf_counter()
        r.kick(TX)
        while tx.used_idx() == before:
            if time.perf_counter() - start > CALIBRATION_BOUND:
                return [], (f"no round trip timed: the calibration chain was not used within "
                            f"{CALIBRATION_BOUND:g} s")
            time.sleep(0.0001)
        trips.append(time.perf_counter() - start)
        tx.used()
    return trips[1:], ""


# --- register-level helpers --------------------------------------------------------------------------------


def acknowledge(t: VirtioPciModern) -> None:
    t.set_status(DeviceStatus.ACKNOWLEDGE)
    t.set_status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER)


def negotiate(t: VirtioPciModern, features: int) -> bool:
    """Reset, ACK, DRIVER, write ``features``, set FEATURES_OK; True if it stuck."""
    t.reset()
    acknowledge(t)
    t.write_driver_features(features)
    t.add_status(DeviceStatus.FEATURES_OK)
    return bool(t.status() & DeviceStatus.FEATURES_OK)


def usable_features(offered: int, layout: Layout = "split") -> int:
    """Every offered bit for rings of ``layout``: RING_PACKED is the layout's choice, never a side effect of
    negotiating "everything" (split unless packed rings are asked for and offered)."""
    return layout_features(offered, layout)
