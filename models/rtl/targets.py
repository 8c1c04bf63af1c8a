"""``rtl:`` targets: the SystemVerilog virtio-net function (``models/rtl``) simulated in process.

Spec: ``virtio-net[,key=value...]`` (``rtl`` alone means ``rtl:virtio-net``) with keys

- ``queues=N``   queue pairs (NUM_PAIRS, default 1)
- ``mac=aa:bb:cc:dd:ee:ff``, ``mtu=N`` (default 02:00:00:00:00:01, 1500)
- ``qsize=N``    MAX_QUEUE_SIZE, a power of two up to 32768 (default 256)
- ``event_idx=0|1``  offer VIRTIO_F_EVENT_IDX (default 1)
- ``data_w=N``   AXI4 / AXI4-Stream data width in bits, 32..512 (default 64)
- ``wire=loopback|none``  (default loopback), ``pcap=PATH`` capture the wire
- ``sim=verilator|icarus``  the simulator (default verilator). ``icarus`` runs the design under cocotb
  on Icarus Verilog in a device process of its own, reached over vfio-user (:mod:`sim.rtl.icarus`):
  ~15x slower, no ``waves``, ``pcap`` or ``define``
- ``waves=PATH`` write an FST of the device's whole life to PATH (a tracing build variant)
- ``define=NAME[+NAME...]``  Verilog defines of the build (the seeded-bug variants of the tests)

Each distinct parameter set is its own Verilator build, cached under ``build/rtl/``
(:mod:`sim.rtl.build`); the first open of a variant builds it (tens of seconds).

The PCI side is built here as the behavioral model's transport builds its own: configuration
header, virtio vendor capabilities naming the BAR0 structures the design decodes (models/rtl
README: common 0x0000, ISR 0x1000, device 0x2000, notify 0x3000), the PCI configuration access
window, a vendor data capability and MSI-X with its table and PBA at 0x4000/0x5000 served in
Python. What the design does not implement it does not offer (its feature bits come from the
design itself), so the suite reports those requirement ids "not offered".
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from backend.drivers.quirks import VDPA_BENCH_RTL_SUBSYSTEM_ID, VDPA_BENCH_VENDOR_ID
from backend.pci.abilities import Abilities
from backend.targets import parse_spec, spec_int
from backend.virtio.pci_regs import (
    COMMON_CFG_SIZE,
    MSIX_ENTRY_SIZE,
    NOTIFY_CAP_LEN,
    PCI_CAP_ID_VNDR,
    PCI_CFG_CAP_LEN,
    PCI_CFG_DATA,
    PCI_CLASS_NETWORK_ETHERNET,
    VENDOR_DATA_CAP_HDR_LEN,
    VIRTIO_ID_NET,
    VIRTIO_PCI_DEVICE_ID_BASE,
    VIRTIO_PCI_VENDOR_ID,
    CapType,
    VirtioPciCap,
)
from backend.virtio.split_ring import MAX_QUEUE_SIZE
from models.rtl import (
    AXIL_SPAN,
    BAR0_SIZE,
    COMMON_CFG_OFF,
    DEVICE_CFG_LEN,
    DEVICE_CFG_OFF,
    ERROR_CODES,
    ISR_LEN,
    ISR_OFF,
    MSIX_PBA_OFF,
    MSIX_TABLE_OFF,
    NOTIFY_OFF,
    NOTIFY_OFF_MULTIPLIER,
    RTL_DIR,
    TOP,
    notify_len,
    source_paths,
)
from models.targets import wired_abilities
from models.virtio_net.wire import FrameBatch, LoopbackWire, PcapTap, Wire
from sim.iommu import Iommu
from sim.pci.endpoint import Bar, Capability, ConfigSpace, Msix
from sim.rtl.bridge import Events, NativeBridge
from sim.rtl.build import Built, Design, build
from sim.rtl.device import AxiLiteBlock, RtlEndpoint, RtlPciDevice
from sim.rtl.icarus import IcarusDevice, IcarusError, build_icarus
from sim.rtl.runner import RtlRunner, Runner

LOG = logging.getLogger(__name__)

KEYS = ("queues", "mac", "mtu", "qsize", "event_idx", "data_w", "wire", "pcap", "sim", "waves", "define")
SIMULATORS = ("verilator", "icarus")
HARNESS_DIR = RTL_DIR / "harness"
VLT = HARNESS_DIR / "virtio_net.vlt"
#: The function's own subsystem ids (not the behavioral model's 1af4:1100): the vDPA driver's quirk table knows
#: its vendor vq-state block by them (backend/drivers/quirks.py, VDPA_BENCH_RTL). >= 0x40: non-transitional
#: (PCI-DEV-07).
SUBSYSTEM_VENDOR_ID = VDPA_BENCH_VENDOR_ID
SUBSYSTEM_ID = VDPA_BENCH_RTL_SUBSYSTEM_ID
REVISION = 1
VENDOR_DATA_ID = VDPA_BENCH_VENDOR_ID
VENDOR_DATA = b"VDPABENCH-RTL\0"
DEFAULT_MAC = "02:00:00:00:00:01"
#: Bound on letting in-flight work finish before a stimulus (only paid under continuous traffic).
SETTLE_TIMEOUT = 2.0


class RtlOptions:
    """A parsed ``rtl:virtio-net`` spec."""

    def __init__(self, spec: str) -> None:
        kind, opts = parse_spec("rtl", spec, KEYS) if spec.strip() else ("virtio-net", {})
        if kind not in ("virtio-net", ""):
            raise ValueError(f"rtl:{spec}: unknown device {kind!r} (known: virtio-net)")
        self.spec = spec
        self.pairs = self._int(opts, "queues", 1)
        if not 1 <= self.pairs <= 256:
            raise ValueError(f"rtl:{spec}: queues={self.pairs} (1..256)")
        mac = opts.get("mac", DEFAULT_MAC)
        try:
            self.mac = bytes(int(x, 16) for x in mac.split(":"))
        except ValueError:
            self.mac = b""
        if len(self.mac) != 6:
            raise ValueError(f"rtl:{spec}: mac={mac!r} is not aa:bb:cc:dd:ee:ff")
        self.mtu = self._int(opts, "mtu", 1500)
        if not 68 <= self.mtu <= 9000:
            raise ValueError(f"rtl:{spec}: mtu={self.mtu} (68..9000)")
        self.qsize = self._int(opts, "qsize", 256)
        if self.qsize <= 0 or self.qsize & (self.qsize - 1) or self.qsize > MAX_QUEUE_SIZE:
            raise ValueError(f"rtl:{spec}: qsize={self.qsize} must be a power of two <= {MAX_QUEUE_SIZE}")
        self.event_idx = self._int(opts, "event_idx", 1)
        if self.event_idx not in (0, 1):
            raise ValueError(f"rtl:{spec}: event_idx={self.event_idx} (0 or 1)")
        self.data_w = self._int(opts, "data_w", 64)
        if self.data_w not in (32, 64, 128, 256, 512):
            raise ValueError(f"rtl:{spec}: data_w={self.data_w} (32, 64, 128, 256 or 512)")
        self.wire = opts.get("wire", "loopback")
        if self.wire not in ("loopback", "none"):
            raise ValueError(f"rtl:{spec}: wire={self.wire!r} (known: loopback, none)")
        self.pcap = opts.get("pcap")
        if self.pcap is not None and self.wire == "none":
            raise ValueError(f"rtl:{spec}: pcap needs a wire (wire=loopback)")
        self.sim = opts.get("sim", "verilator")
        if self.sim not in SIMULATORS:
            raise ValueError(f"rtl:{spec}: sim={self.sim!r} (known: {', '.join(SIMULATORS)})")
        self.waves = Path(opts["waves"]) if opts.get("waves") else None
        self.defines = tuple(d for d in opts.get("define", "").split("+") if d)
        for d in self.defines:
            if not d.replace("_", "").isalnum():
                raise ValueError(f"rtl:{spec}: define {d!r} is not a Verilog identifier")

    def _int(self, opts: dict[str, str], key: str, default: int) -> int:
        return spec_int("rtl", self.spec, key, opts[key]) if key in opts else default

    @property
    def num_queues(self) -> int:
        return 2 * self.pairs + (1 if self.pairs > 1 else 0)

    @property
    def msix_vectors(self) -> int:
        return self.num_queues + 1  # the design's MSIX_VECTORS default

    @property
    def buf_bytes(self) -> int:
        need = 12 + self.mtu + 18
        p = 2048
        while p < need:
            p <<= 1
        return p

    def design(self) -> Design:
        params = {
            "NUM_PAIRS": str(self.pairs), "DATA_W": str(self.data_w), "MAX_QUEUE_SIZE": str(self.qsize),
            "BUF_BYTES": str(self.buf_bytes), "MAC": f"48'h{self.mac.hex()}", "MTU": f"16'd{self.mtu}",
            "EVENT_IDX": str(self.event_idx),
        }
        return Design("virtio_net", TOP, tuple(source_paths()), HARNESS_DIR, (VLT,), params, self.defines)


def build_variant(opts: RtlOptions) -> Built:
    """The cached Verilator build for ``opts`` (built now when missing)."""
    return build(opts.design(), waves=opts.waves is not None)


#: The device process of ``sim=icarus`` builds its function with this (``module:function``).
ICARUS_FACTORY = f"{__name__}:icarus_function"


def open_icarus(opts: RtlOptions) -> IcarusDevice:
    """``sim=icarus``: the design under cocotb on Icarus in its own process, exported over vfio-user
    (:mod:`sim.rtl.icarus`); returned is the vfio-user client, whose ``model`` is the bench port."""
    if opts.waves is not None:
        raise ValueError(f"rtl:{opts.spec}: waves= needs sim=verilator (the Icarus path writes no FST)")
    if opts.pcap is not None or opts.defines:
        raise ValueError(f"rtl:{opts.spec}: pcap= and define= need sim=verilator")
    try:
        vvp = build_icarus(TOP, source_paths(), opts.design().parameters)
    except IcarusError as exc:
        raise ValueError(f"rtl:{opts.spec}: sim=icarus is not available: {exc}") from None
    spec = ",".join(p for p in opts.spec.split(",") if not p.strip().startswith("sim="))
    return IcarusDevice(vvp, TOP, spec, ICARUS_FACTORY, name=f"rtl:{opts.spec}")


def icarus_function(spec: str, runner: Runner, iommu: Iommu) -> RtlNetDevice:
    """In the Icarus device process: the PCI function around the design (the same as in process)."""
    opts = RtlOptions(spec)
    name = f"rtl:{spec or 'virtio-net'},sim=icarus"
    endpoint = _endpoint(opts, runner, iommu)
    dev = RtlNetDevice(endpoint, name, RtlNetModel(runner, opts.mac, opts.pairs), opts.wire, opts.pcap)
    dev.start(frames=dev._transmit, status=dev.model.status_changed)
    return dev


class RtlNetModel:
    """What the bench may do to the function from outside the bus: the ``model`` the conformance checks
    use on simulated targets (link input, frames from the wire, the driver errors it reported)."""

    def __init__(self, runner: Runner, mac: bytes, pairs: int) -> None:
        self._runner = runner
        self.mac = mac
        self.pairs = pairs
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

    def steer(self, frame: bytes) -> int:
        """The queue pair a frame from the wire asks for (s_axis tdest): a hash of its addresses and the
        next 8 bytes (IPv4 addresses or the start of the payload), so one flow stays on one pair. The
        design honours it only for pairs VQ_PAIRS_SET enabled, else it uses receiveq1."""
        return zlib.crc32(frame[:12] + frame[26:34]) % self.pairs if self.pairs > 1 else 0

    def receive(self, frame: bytes) -> None:
        self._runner.push_frames([(bytes(frame), self.steer(frame))])

    def receive_batch(self, frames: FrameBatch) -> None:
        self._runner.push_frames([(f, self.steer(f)) for f in frames])

    def status_changed(self, status: dict[str, int], events: Events) -> None:
        count = status["err_count"]
        if events & Events.ERRORS and count != self._err_count:
            rid, text = ERROR_CODES.get(status["last_err_code"], ("?", f"error code {status['last_err_code']}"))
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


def _virtio_cap(config: ConfigSpace, cfg_type: int, offset: int, length: int, extra: bytes = b"",
                cap_len: int = VirtioPciCap.SIZE) -> Capability:
    raw = VirtioPciCap(PCI_CAP_ID_VNDR, 0, cap_len, cfg_type, 0, 0, offset, length).pack() + extra
    cap = Capability(PCI_CAP_ID_VNDR, bytearray(raw[2:]))
    config.add_capability(cap)
    return cap


def _pci_cfg_window(config: ConfigSpace, bars: dict[int, Bar]) -> None:
    """The PCI configuration access capability (4.1.4.9): bar/offset/length and pci_cfg_data written by
    the driver; accesses through pci_cfg_data go to the BAR (PCI-DEV-51/52)."""
    cap = _virtio_cap(config, CapType.PCI_CFG, 0, 0, bytes(4), PCI_CFG_CAP_LEN)
    w = bytearray(len(cap.body))
    for i in [4 - 2, *range(8 - 2, 16 - 2), *range(PCI_CFG_DATA - 2, PCI_CFG_DATA + 2)]:
        w[i] = 0xFF
    cap.writable = w
    data_lo = PCI_CFG_DATA - 2

    def target() -> tuple[Bar | None, int, int]:
        bar = cap.body[4 - 2]
        offset, length = struct.unpack_from("<II", cap.body, 8 - 2)
        b = bars.get(bar)
        ok = b is not None and length in (1, 2, 4) and offset + length <= b.size
        return (b if ok else None), offset, length

    def written(lo: int, size: int) -> None:
        if lo + size <= data_lo:
            return
        b, offset, length = target()
        if b is not None:
            b.write(offset, bytes(cap.body[data_lo:data_lo + length]))

    def read(lo: int, size: int) -> None:
        if lo + size <= data_lo:
            return
        b, offset, length = target()
        if b is not None:
            cap.body[data_lo:data_lo + length] = b.read(offset, length)

    cap.on_write = written
    cap.on_read = read


def _endpoint(opts: RtlOptions, runner: Runner, iommu: Iommu) -> RtlEndpoint:
    bar = Bar(0, BAR0_SIZE, is64=True)
    msix = Msix(opts.msix_vectors, bar=0, table_offset=MSIX_TABLE_OFF, pba_offset=MSIX_PBA_OFF)
    if opts.msix_vectors * MSIX_ENTRY_SIZE > MSIX_PBA_OFF - MSIX_TABLE_OFF:
        raise ValueError(f"rtl:{opts.spec}: {opts.msix_vectors} MSI-X vectors do not fit the table window")
    bar.mount(0, AxiLiteBlock(runner, AXIL_SPAN))
    bar.mount(MSIX_TABLE_OFF, msix.table_block)
    bar.mount(MSIX_PBA_OFF, msix.pba_block)
    config = ConfigSpace(vendor_id=VIRTIO_PCI_VENDOR_ID, device_id=VIRTIO_PCI_DEVICE_ID_BASE + VIRTIO_ID_NET,
                         revision=REVISION, class_code=PCI_CLASS_NETWORK_ETHERNET,
                         subsystem_vendor_id=SUBSYSTEM_VENDOR_ID, subsystem_id=SUBSYSTEM_ID, bars=[bar],
                         interrupt_status=runner.intx)
    _virtio_cap(config, CapType.COMMON_CFG, COMMON_CFG_OFF, COMMON_CFG_SIZE)
    _virtio_cap(config, CapType.NOTIFY_CFG, NOTIFY_OFF, notify_len(opts.num_queues),
                struct.pack("<I", NOTIFY_OFF_MULTIPLIER), NOTIFY_CAP_LEN)
    _virtio_cap(config, CapType.ISR_CFG, ISR_OFF, ISR_LEN)
    _virtio_cap(config, CapType.DEVICE_CFG, DEVICE_CFG_OFF, DEVICE_CFG_LEN)
    _pci_cfg_window(config, {0: bar})
    total = (VENDOR_DATA_CAP_HDR_LEN + len(VENDOR_DATA) + 3) // 4 * 4
    body = bytearray(total - 2)
    struct.pack_into("<BBH", body, 0, total, CapType.VENDOR_CFG, VENDOR_DATA_ID)
    body[VENDOR_DATA_CAP_HDR_LEN - 2:VENDOR_DATA_CAP_HDR_LEN - 2 + len(VENDOR_DATA)] = VENDOR_DATA
    config.add_capability(Capability(PCI_CAP_ID_VNDR, body))
    return RtlEndpoint(config, [bar], msix, runner, iommu)


def open_virtio_net(spec: str) -> RtlNetDevice | IcarusDevice:
    opts = RtlOptions(spec)
    if opts.sim == "icarus":
        return open_icarus(opts)
    built = build_variant(opts)
    name = f"rtl:{spec or 'virtio-net'}"
    if opts.waves is not None:
        opts.waves.parent.mkdir(parents=True, exist_ok=True)
    bridge = NativeBridge(built.library, opts.waves)
    iommu = Iommu()
    runner = RtlRunner(bridge, name, iommu.observers)
    try:
        bridge.reset()
        endpoint = _endpoint(opts, runner, iommu)
        dev = RtlNetDevice(endpoint, name, RtlNetModel(runner, opts.mac, opts.pairs), opts.wire, opts.pcap)
    except BaseException:
        runner.close()
        raise
    dev.start(frames=dev._transmit, status=dev.model.status_changed)
    return dev
