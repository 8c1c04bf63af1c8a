"""``rtl:`` targets: an RTL PCI function described by a design description file, simulated in process.

Spec: ``DESIGN[,key=value...]`` where DESIGN is a description file (``path/to/design.toml``, see
docs/design-description.md) or the short name of one shipped here (:data:`DESIGNS`: ``virtio-net``, the
project's function, and ``acme-vnet``, a vendor-style one); ``rtl`` alone means ``rtl:virtio-net``. Keys are
the design's own options (its ``[options]`` table: ``queues=``, ``mtu=``, ...) and the bench's:

- ``wire=loopback|none``  (default loopback), ``pcap=PATH`` capture the wire
- ``sim=verilator|icarus``  the simulator (default verilator). ``icarus`` runs the design under cocotb
  on Icarus Verilog in a device process of its own, reached over vfio-user (:mod:`sim.rtl.icarus`):
  ~15x slower, no ``waves``, ``pcap`` or ``define``
- ``waves=PATH`` write an FST of the device's whole life to PATH (a tracing build variant)
- ``define=NAME[+NAME...]``  Verilog defines of the build (the seeded-bug variants of the tests)

The description is validated, its ports checked against the design as Verilator elaborates it, and a
native bridge generated for it (:mod:`sim.rtl.generate`), all before the first check runs; each distinct
variant is its own Verilator build, cached under ``build/rtl/`` (the first open builds it, tens of seconds).
The PCI side (configuration space, capabilities, MSI-X) comes from the description too
(:mod:`sim.rtl.endpoint`). What the design does not implement it does not offer (its feature bits come
from the design itself), so the suite reports those requirement ids "not offered".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from backend.pci.abilities import Abilities
from backend.targets import parse_spec
from models.rtl import RTL_DIR
from models.targets import wired_abilities
from models.virtio_net.rss_context import AutoSteering
from models.virtio_net.wire import FrameBatch, LoopbackWire, PcapTap, Wire
from sim.iommu import Iommu
from sim.rtl.bridge import Events, NativeBridge
from sim.rtl.build import Built, build
from sim.rtl.description import BENCH_KEYS, Description, DescriptionError, Variant
from sim.rtl.device import RtlEndpoint, RtlPciDevice
from sim.rtl.endpoint import build_endpoint
from sim.rtl.generate import bridge_design, status_fields
from sim.rtl.icarus import IcarusDevice, IcarusError, build_icarus
from sim.rtl.runner import RtlRunner, Runner

LOG = logging.getLogger(__name__)

SIMULATORS = ("verilator", "icarus")
#: Short names of the descriptions shipped with the project.
DESIGNS: Mapping[str, Path] = {
    "virtio-net": RTL_DIR / "virtio_net.toml",
    "acme-vnet": RTL_DIR / "acme" / "acme_vnet.toml",
}
#: Bound on letting in-flight work finish before a stimulus (only paid under continuous traffic).
SETTLE_TIMEOUT = 2.0


def description_path(name: str) -> Path:
    """The description file a spec's DESIGN names (a short name or a path)."""
    if name in DESIGNS:
        return DESIGNS[name]
    if name.endswith(".toml") or "/" in name:
        return Path(name).expanduser()
    raise ValueError(f"rtl:{name}: unknown design {name!r} (a description file path.toml, or one of: "
                     f"{', '.join(DESIGNS)})")


class RtlOptions:
    """A parsed ``rtl:`` spec: the description, its variant for the options, and the bench's keys."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        head = spec.split(",", 1)[0].strip() if spec.strip() else "virtio-net"
        path = description_path(head)
        try:
            self.description = Description.load(path)
        except DescriptionError as exc:
            raise ValueError(str(exc)) from None
        keys = (*self.description.options, *BENCH_KEYS)
        _, opts = parse_spec("rtl", spec, keys) if spec.strip() else ("", {})
        self.wire = opts.get("wire", "loopback")
        if self.wire not in ("loopback", "none"):
            raise ValueError(f"rtl:{spec}: wire={self.wire!r} (known: loopback, none)")
        if self.description.stream_rx is None and self.wire != "none" and "wire" in opts:
            raise ValueError(f"rtl:{spec}: the design has no stream ports: wire=none")
        if self.description.stream_rx is None:
            self.wire = "none"
        self.pcap = opts.get("pcap")
        if self.pcap is not None and self.wire == "none":
            raise ValueError(f"rtl:{spec}: pcap needs a wire (wire=loopback)")
        self.sim = opts.get("sim", "verilator")
        if self.sim not in SIMULATORS:
            raise ValueError(f"rtl:{spec}: sim={self.sim!r} (known: {', '.join(SIMULATORS)})")
        self.waves = Path(opts["waves"]) if opts.get("waves") else None
        defines = tuple(d for d in opts.get("define", "").split("+") if d)
        for d in defines:
            if not d.replace("_", "").isalnum():
                raise ValueError(f"rtl:{spec}: define {d!r} is not a Verilog identifier")
        design_opts = {k: v for k, v in opts.items() if k not in BENCH_KEYS}
        try:
            self.variant: Variant = self.description.configure(spec, design_opts, defines)
        except DescriptionError as exc:
            raise ValueError(str(exc)) from None

    @property
    def name(self) -> str:
        return f"rtl:{self.spec or 'virtio-net'}"

    @property
    def mac(self) -> bytes:
        return self.variant.mac

    @property
    def pairs(self) -> int:
        return self.variant.queue_pairs

    @property
    def num_queues(self) -> int:
        return self.variant.num_queues

    @property
    def defines(self) -> tuple[str, ...]:
        return self.variant.defines


def build_variant(opts: RtlOptions) -> Built:
    """The cached Verilator build for ``opts`` (ports checked and the bridge generated first)."""
    try:
        design = bridge_design(opts.variant)
    except DescriptionError as exc:
        raise ValueError(str(exc)) from None
    return build(design, waves=opts.waves is not None)


#: The device process of ``sim=icarus`` builds its function with this (``module:function``).
ICARUS_FACTORY = f"{__name__}:icarus_function"


def open_icarus(opts: RtlOptions) -> IcarusDevice:
    """``sim=icarus``: the design under cocotb on Icarus in its own process, exported over vfio-user
    (:mod:`sim.rtl.icarus`); returned is the vfio-user client, whose ``model`` is the bench port."""
    if opts.waves is not None:
        raise ValueError(f"rtl:{opts.spec}: waves= needs sim=verilator (the Icarus path writes no FST)")
    if opts.pcap is not None or opts.defines:
        raise ValueError(f"rtl:{opts.spec}: pcap= and define= need sim=verilator")
    d = opts.description
    try:
        vvp = build_icarus(d.top, d.sources, opts.variant.parameters)
    except IcarusError as exc:
        raise ValueError(f"rtl:{opts.spec}: sim=icarus is not available: {exc}") from None
    spec = ",".join(p for p in opts.spec.split(",") if not p.strip().startswith("sim="))
    return IcarusDevice(vvp, d.top, spec, ICARUS_FACTORY, name=f"rtl:{opts.spec}", description=d.path)


def icarus_function(spec: str, runner: Runner, iommu: Iommu) -> RtlNetDevice:
    """In the Icarus device process: the PCI function around the design (the same as in process)."""
    opts = RtlOptions(spec)
    name = f"rtl:{spec or 'virtio-net'},sim=icarus"
    endpoint = build_endpoint(opts.variant, runner, iommu)
    dev = RtlNetDevice(endpoint, name, RtlNetModel(runner, opts), opts.wire, opts.pcap)
    dev.start(frames=dev._transmit, status=dev.model.status_changed)
    return dev


class RtlNetModel:
    """What the bench may do to the function from outside the bus: the ``model`` the conformance checks
    use on simulated targets (link input, frames from the wire, the driver errors it reported)."""

    def __init__(self, runner: Runner, opts: RtlOptions) -> None:
        self._runner = runner
        self.mac = opts.mac
        self.pairs = opts.pairs
        self._codes = opts.description.error_codes
        #: automatic receive steering's flow table, fed with the frames the design transmits
        self._steering = AutoSteering()
        self._steering_lock = threading.Lock()  # frames leave on the delivery thread, arrive on any
        self.link_up = True
        #: one line per driver error the function reported (last_err_code at each err_count step)
        self.errors: list[str] = []
        self._err_count = 0

    def set_link(self, up: bool) -> None:
        # A bench stimulus lands between activities: what the function has in flight (frames on the
        # loopback wire included) completes first, as the behavioral model's synchronous calls do.
        self._runner.settle(SETTLE_TIMEOUT)
        self.link_up = bool(up)
        self._runner.set_link(self.link_up)

    def learn(self, frames: Sequence[tuple[bytes, int]]) -> None:
        """Frames the design transmitted, each with its transmit queue's pair (m_axis tdest): the flows whose
        incoming packets belong to that pair's receive queue (NETCTRL-DEV-B02)."""
        if self.pairs <= 1:
            return
        with self._steering_lock:
            for frame, pair in frames:
                self._steering.tx_pair = pair
                self._steering.learn(frame)

    def steer(self, frame: bytes) -> int:
        """The queue pair a frame from the wire asks for (s_axis tdest), as the port in front of the design
        steers (the design has no flow table of its own): the pair whose transmit queue last sent the packet's
        flow (its ends reversed), else a hash of its addresses, so one flow stays on one pair. The design
        honours it only for pairs VQ_PAIRS_SET enabled, else it uses receiveq1; a receive queue being reset
        hands the frame to another enabled one (NETCTRL-DEV-27)."""
        if self.pairs <= 1:
            return 0
        with self._steering_lock:
            pair = self._steering.pair_for(frame, self.pairs, lambda _pair: True)
        return pair if pair is not None else 0

    def receive(self, frame: bytes) -> None:
        self._runner.push_frames([(bytes(frame), self.steer(frame))])

    def receive_batch(self, frames: FrameBatch) -> None:
        self._runner.push_frames([(f, self.steer(f)) for f in frames])

    def status_changed(self, status: dict[str, int], events: Events) -> None:
        count = status["err_count"]
        if events & Events.ERRORS and count != self._err_count:
            rid, text = self._codes.get(status["last_err_code"], ("?", f"error code {status['last_err_code']}"))
            # err_count is a 16-bit counter that only a function-level reset clears
            new = count - self._err_count if count > self._err_count else count
            for _ in range(new):
                self.errors.append(f"{rid}: {text} (queue {status['last_err_queue']}; DEVICE_NEEDS_RESET)")
            self._err_count = count


class RtlNetDevice(RtlPciDevice):
    """The function as a PciDevice, with its ``model`` (stimulus) and ``wire`` (None when unplugged)."""

    model: RtlNetModel
    wire: Wire | None

    def __init__(self, endpoint: RtlEndpoint, name: str, model: RtlNetModel, wire_kind: str,
                 pcap: str | None) -> None:
        super().__init__(endpoint, name)
        self.model = model
        self.wire = None
        if wire_kind == "loopback":
            self.wire = LoopbackWire(model)
            if pcap is not None:
                self.wire.add_tap(PcapTap(pcap))
        self.dropped_tx = 0

    def abilities(self) -> Abilities:
        return wired_abilities(super().abilities(), f"{self.name}: the design's stream ports are", self.wire,
                               self.model, self.model.errors)

    def _transmit(self, frames: Sequence[tuple[bytes, int]]) -> None:
        self.model.learn(frames)
        if isinstance(self.wire, LoopbackWire):
            self.wire.port.transmit_batch(FrameBatch.of(f for f, _ in frames))
        else:
            self.dropped_tx += len(frames)

    def close(self) -> None:
        if self._closed:
            return
        stats = self.runner.stats() if not self.runner.errors else None
        super().close()
        if self.wire is not None:
            self.wire.close()
        if stats is not None:
            LOG.info("%s: %d cycles simulated, %.3f s with the clock running, %d doorbells taken from eventfds",
                     self.name, stats.cycles, stats.busy_seconds, stats.kicks)


def open_rtl(spec: str) -> RtlNetDevice | IcarusDevice:
    """The ``rtl:`` scheme's factory."""
    opts = RtlOptions(spec)
    if opts.sim == "icarus":
        return open_icarus(opts)
    built = build_variant(opts)
    name = opts.name
    if opts.waves is not None:
        opts.waves.parent.mkdir(parents=True, exist_ok=True)
    bridge = NativeBridge(built.library, opts.waves, status_fields(opts.variant))
    bridge.reset_cycles = opts.description.reset_cycles
    iommu = Iommu()
    runner = RtlRunner(bridge, name, iommu.observers)
    try:
        bridge.reset()
        endpoint = build_endpoint(opts.variant, runner, iommu)
        check_alive(endpoint, opts)
        dev = RtlNetDevice(endpoint, name, RtlNetModel(runner, opts), opts.wire, opts.pcap)
    except BaseException:
        runner.close()
        raise
    dev.start(frames=dev._transmit, status=dev.model.status_changed)
    return dev


#: The old name of the factory (entry points and embedding code written against it).
open_virtio_net = open_rtl


def check_alive(endpoint: RtlEndpoint, opts: RtlOptions) -> None:
    """Before any check: the design answers on the slave holding the common configuration, and reads a
    sane device_status (0) and device_feature (VERSION_1 at select 1). A design held in reset (the reset
    polarity declared wrong) or with its slave ports swapped is named here, not by a hundred failed checks."""
    from sim.rtl.bridge import BridgeError

    d = opts.description
    common = next(c for c in opts.variant.caps if c.cfg_type == "common")
    bar = endpoint.bars[common.bar]
    polarity = "low" if d.reset_active_low else "high"
    try:
        bar.write(common.offset, (1).to_bytes(4, "little"))  # device_feature_select = 1
        feature_hi = int.from_bytes(bar.read(common.offset + 4, 4), "little")
        status = bar.read(common.offset + 0x14, 1)[0]
        bar.write(common.offset, bytes(4))
    except BridgeError as exc:
        raise ValueError(
            f"{opts.name}: the design does not answer on its BAR {common.bar} slave after reset ({exc}). Is the "
            f"reset {d.reset!r} really active-{polarity} (reset.active in {d.path.name})? A design held in reset "
            "never completes a transfer") from None
    if status != 0 or not feature_hi & 1:
        raise ValueError(
            f"{opts.name}: after reset the common configuration at BAR {common.bar} offset {common.offset:#x} reads "
            f"device_status {status:#x} and device_feature[63:32] {feature_hi:#x} (expected 0 and VERSION_1 set): "
            f"is the common capability placed right in {d.path.name}, and is reset {d.reset!r} active-{polarity}?")
