"""Quirk table: per-device deviations from plain virtio-pci, keyed by PCI ids.

The generic driver looks its function up here once (vendor, device,
subsystem vendor, subsystem device; ``None`` matches anything) and honours
what the matching record says. Every record carries a ``why``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from backend.pci.device import PciDevice, config_read
from backend.providers import QUIRKS_GROUP, ProviderError, describe, group, load
from backend.virtio.pci_regs import PciCfg


@dataclass(frozen=True)
class PciIds:
    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int

    @classmethod
    def read(cls, pci: PciDevice) -> PciIds:
        return cls(config_read(pci, PciCfg.VENDOR_ID, 2), config_read(pci, PciCfg.DEVICE_ID, 2),
                   config_read(pci, PciCfg.SUBSYSTEM_VENDOR_ID, 2), config_read(pci, PciCfg.SUBSYSTEM_ID, 2))

    def __str__(self) -> str:
        return (f"{self.vendor:04x}:{self.device:04x} "
                f"(subsystem {self.subsystem_vendor:04x}:{self.subsystem_device:04x})")


@dataclass(frozen=True)
class IdMatch:
    """A key of the table; ``None`` in any position is a wildcard."""

    vendor: int | None = None
    device: int | None = None
    subsystem_vendor: int | None = None
    subsystem_device: int | None = None

    def matches(self, ids: PciIds) -> bool:
        return all(want is None or want == got for want, got in (
            (self.vendor, ids.vendor), (self.device, ids.device),
            (self.subsystem_vendor, ids.subsystem_vendor), (self.subsystem_device, ids.subsystem_device)))

    @property
    def specificity(self) -> int:
        return sum(x is not None for x in (self.vendor, self.device, self.subsystem_vendor, self.subsystem_device))


class QueueStop(enum.Enum):
    """How the driver stops a running queue before reading its ring position (GET_VRING_BASE)."""

    #: Nothing stops it: the field is read while the queue runs, so the device may move on right after.
    NONE = "none"
    #: A VIRTIO_F_RING_RESET queue reset (queue_reset 1, wait for 0). The device finishes the chain in service
    #: (used element and used idx written) before the reset completes, and its field keeps the position the
    #: queue stopped at until the queue is enabled again: the read is exact.
    QUEUE_RESET = "queue_reset"


@dataclass(frozen=True)
class VqStateBlock:
    """A vendor register block that holds each queue's last_avail_idx (split rings).

    Queue ``q``'s field sits at ``offset + q * stride`` in BAR ``bar`` and is
    ``width`` bytes wide; the device loads it when the queue is enabled and
    keeps it current while the queue runs. ``stop`` says how a running queue is
    stopped so that the field holds where it stopped. With ``packed``, a packed
    ring's state is the slot's whole 32-bit word in vhost-user's layout (bits
    0-14 avail index, 15 avail wrap counter, 16-30 used index, 31 used wrap
    counter); without it the block knows split rings only.
    """

    bar: int
    offset: int
    stride: int
    width: int = 2
    stop: QueueStop = QueueStop.NONE
    packed: bool = False

    def field_offset(self, queue: int) -> int:
        return self.offset + queue * self.stride


class DirtyLogReg(enum.IntEnum):
    """Offsets inside a :class:`DirtyLogBlock` (32-bit registers)."""

    BASE_LO = 0x00
    BASE_HI = 0x04
    PAGES = 0x08
    CTRL = 0x0C
    STATUS = 0x10


class DirtyLogCtrl(enum.IntFlag):
    ENABLE = 1 << 0
    BUSY = 1 << 1  # read-only: a log write is in flight


class DirtyLogStatus(enum.IntFlag):
    """Write 1 to clear; both cleared when ENABLE goes 0 -> 1."""

    OVERFLOW = 1 << 0  # the device wrote a page the bytemap does not cover: that write is in no log
    FAULT = 1 << 1  # the host refused a log write


#: Bytes of the block.
DIRTY_LOG_BLOCK_SIZE = 0x14


@dataclass(frozen=True)
class DirtyLogBlock:
    """A vendor register block through which the device logs the pages it writes by DMA (live migration).

    The driver gives it a *bytemap*: one byte per 4 KiB page of IOVA space, byte ``p`` for IOVA
    ``[p * 4096, (p + 1) * 4096)``, ``pages`` bytes at IOVA ``base``. While ENABLE is set, after each DMA write to
    host memory has been accepted, the device writes 0x01 to the byte of every page the write touched, and goes on
    (publishes a used index, finishes a chain for a queue reset) only once those log writes completed. A byte per
    page, not a bit: a device setting a bit would have to read-modify-write a byte others write too, and could
    lose their bits; a whole byte written is never lost. The backend folds the bytemap into vhost-user's bitmap
    (atomic exchange of each word, atomic OR of the bits). ``LOG_PAGES`` pages beyond the bytemap are reported
    (OVERFLOW), never written. Registers: :class:`DirtyLogReg` at ``offset`` in BAR ``bar``.
    """

    bar: int
    offset: int

    def reg(self, which: DirtyLogReg) -> int:
        return self.offset + which


@dataclass(frozen=True)
class Deviation:
    """One way the device departs from the spec, as the conformance suite found it on the device itself.

    ``req_ids`` are the requirement ids the suite reports failed because of it (empty when the suite
    works around it); ``evidence`` is what was observed, and where. ``checks`` names the check functions
    whose failures of those ids it explains; empty, a failure of those ids in any check. A failure it does
    not explain stays a failure.
    """

    what: str
    evidence: str
    req_ids: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()

    def explains(self, req_id: str, nodeid: str) -> bool:
        """Whether the failure of ``req_id`` in the check ``nodeid`` (``path::name[params]``) is this one."""
        if req_id not in self.req_ids:
            return False
        return not self.checks or nodeid.rpartition("::")[2].partition("[")[0] in self.checks


@dataclass(frozen=True)
class Quirk:
    """What the driver does differently for one device. The default record changes nothing."""

    name: str = "none"
    why: str = ""
    vq_state: VqStateBlock | None = None
    #: The device logs its own DMA writes there (live migration without the backend's used-ring relay).
    dirty_log: DirtyLogBlock | None = None
    #: Feature bits the driver must not offer upward although the device lists them.
    hide_features: int = 0
    #: Known deviations: a conformance run that applies this entry reports the failures they explain as
    #: *deviation* (with the entry named), apart from *failed* (testbenches/conformance/deviations.py).
    deviations: tuple[Deviation, ...] = ()

    def deviation_ids(self) -> frozenset[str]:
        return frozenset(rid for d in self.deviations for rid in d.req_ids)

    def deviation_for(self, req_id: str, nodeid: str) -> Deviation | None:
        """The recorded deviation that explains the failure of ``req_id`` in the check ``nodeid``, if any."""
        return next((d for d in self.deviations if d.explains(req_id, nodeid)), None)


NO_QUIRK = Quirk()


@dataclass(frozen=True)
class QuirkTable:
    """Immutable; :meth:`extended` returns a new table with one more entry."""

    entries: tuple[tuple[IdMatch, Quirk], ...] = ()

    def extended(self, match: IdMatch, quirk: Quirk) -> QuirkTable:
        return QuirkTable((*self.entries, (match, quirk)))

    def lookup(self, ids: PciIds) -> Quirk:
        """The most specific matching record (first one on a tie), or :data:`NO_QUIRK`."""
        best: tuple[int, Quirk] | None = None
        for match, quirk in self.entries:
            if match.matches(ids) and (best is None or match.specificity > best[0]):
                best = (match.specificity, quirk)
        return best[1] if best is not None else NO_QUIRK


INTEL_VENDOR_ID = 0x8086
IFCVF_SUBSYSTEM_DEVICE_ID = 0x001A

#: Intel IFC VF (FPGA N3000 virtio-net VF, driven by Linux's ``ifcvf`` vDPA driver).
IFCVF = Quirk(
    name="intel-ifcvf",
    why=("Intel IFC VF keeps each queue's last_avail_idx in its live-migration register block "
         "(BAR4, ring state region at 0x20, one 32-bit slot per queue whose low 16 bits are "
         "last_avail_idx); plain virtio-pci has no such register, so vq state is read and "
         "restored there."),
    vq_state=VqStateBlock(bar=4, offset=0x20, stride=4, width=2),
)


#: The project's RTL virtio-net function (models/rtl) under its own subsystem ids: the vendor id of its vendor
#: data capability, and a subsystem device id of its own (>= 0x40: non-transitional, PCI-DEV-07).
VDPA_BENCH_VENDOR_ID = 0x1DB5
VDPA_BENCH_RTL_SUBSYSTEM_ID = 0x0501
#: BAR0 0x3800 + 4q: {used_idx[31:16], last_avail_idx[15:0]} of queue q (models/rtl/README.md).
VDPA_BENCH_RTL_VQ_STATE = VqStateBlock(bar=0, offset=0x3800, stride=4, width=2, stop=QueueStop.QUEUE_RESET,
                                       packed=True)

#: BAR0 0x3F00: the dirty page log block (models/rtl/README.md).
VDPA_BENCH_RTL_DIRTY_LOG = DirtyLogBlock(bar=0, offset=0x3F00)

VDPA_BENCH_RTL = Quirk(
    name="vdpa-bench-rtl-vq-state",
    why=("vdpa-bench RTL virtio-net (subsystem 1db5:0501) keeps each queue's ring position in a vendor block in "
         "BAR0 at 0x3800, one 32-bit word per queue {used_idx, last_avail_idx}. A write of the low half while the "
         "queue is disabled sets both indices (an in-order ring resumed there has used everything before it) and "
         "is loaded when queue_enable is written 1; a queue enabled without such a write starts at 0. Reads are "
         "live while the queue runs. A running queue is stopped with a queue reset (VIRTIO_F_RING_RESET): the "
         "device finishes the chain in service, and the word keeps the stop position until the next enable, so "
         "GET_VRING_BASE is exact with buffers in flight. With packed rings (the behavioral model's variant with "
         "these registers; the RTL itself has split rings only) the word is the packed state in vhost-user's "
         "layout, written whole. At BAR0 0x3F00 a dirty page log block: given a bytemap (one byte per 4 KiB page) "
         "and enabled, the device writes 0x01 to the byte of every page it writes by DMA, so live migration needs "
         "no used-ring relay in the backend."),
    vq_state=VDPA_BENCH_RTL_VQ_STATE,
    dirty_log=VDPA_BENCH_RTL_DIRTY_LOG,
)
VDPA_BENCH_RTL_IDS = IdMatch(0x1AF4, 0x1041, VDPA_BENCH_VENDOR_ID, VDPA_BENCH_RTL_SUBSYSTEM_ID)

#: The ACME VNET design (models/rtl/acme: a vendor's shell around the same virtio core), under subsystem 1db5:0a01.
#: Its vendor block is in BAR0 at 0x0000: the vq state words at 0x100 + 4q, the dirty page log block at 0x800
#: (the virtio structures are in BAR2).
ACME_VNET_SUBSYSTEM_ID = 0x0A01
ACME_VNET = Quirk(
    name="acme-vnet",
    why=("ACME VNET (models/rtl/acme, subsystem 1db5:0a01) has the vdpa-bench RTL's vendor blocks at other places: "
         "BAR0 0x100 + 4q holds queue q's {used_idx, last_avail_idx} (packed rings: vhost-user's packed state), "
         "with the same rules as vdpa-bench-rtl-vq-state (low-half write while disabled sets both indices, loaded "
         "on enable; live while running; stopped exactly by a VIRTIO_F_RING_RESET queue reset), and BAR0 0x800 "
         "the dirty page log block (bytemap of 4 KiB pages written by DMA). Its virtio structures are in BAR2."),
    vq_state=VqStateBlock(bar=0, offset=0x100, stride=4, width=2, stop=QueueStop.QUEUE_RESET, packed=True),
    dirty_log=DirtyLogBlock(bar=0, offset=0x800),
)
ACME_VNET_IDS = IdMatch(0x1AF4, 0x1041, VDPA_BENCH_VENDOR_ID, ACME_VNET_SUBSYSTEM_ID)

#: The behavioral model's variant with the RTL's ring-state block but no dirty page log
#: (models/virtio_net/vq_state_block.py): a device whose dirty logging the backend does with its used-ring relay.
VDPA_BENCH_VQ_STATE_SUBSYSTEM_ID = 0x0502
VDPA_BENCH_VQ_STATE = Quirk(
    name="vdpa-bench-vq-state",
    why=("vdpa-bench behavioral model variant (subsystem 1db5:0502) with the RTL's vendor vq-state block (BAR0 "
         "0x3800, the same rules as vdpa-bench-rtl-vq-state) and no dirty page log: GET_VRING_BASE is exact with "
         "buffers in flight, and dirty logging goes through the backend's used-ring relay."),
    vq_state=VDPA_BENCH_RTL_VQ_STATE,
)
VDPA_BENCH_VQ_STATE_IDS = IdMatch(0x1AF4, 0x1041, VDPA_BENCH_VENDOR_ID, VDPA_BENCH_VQ_STATE_SUBSYSTEM_ID)


QEMU_SUBSYSTEM_VENDOR_ID = 0x1AF4
QEMU_SUBSYSTEM_DEVICE_ID = 0x1100

#: Where the evidence below comes from: the suite run on the function through Linux VFIO in a guest.
_QEMU_RUN = ("tests/interop/test_vfio_guest.py: QEMU 7.2 virtio-net-pci (iommu_platform=on, disable-legacy=on) "
             "behind intel-iommu, driven through Linux VFIO in the guest")

#: QEMU's emulated virtio-net-pci, the bench's stand-in for a real card under VFIO. No register
#: differs from virtio-pci; the record carries what the suite found QEMU doing differently.
QEMU_VIRTIO_NET = Quirk(
    name="qemu-virtio-net",
    why=("QEMU 7.2 virtio-net-pci (1af4:1041, subsystem 1af4:1100): plain virtio-pci registers; its deviations "
         "from virtio 1.4 are listed so that a failure in the report can be told from a new one."),
    deviations=(
        Deviation("A queue whose descriptor area is at IOVA 0 is taken as not set up: notifications for it "
                  "are dropped and its buffers are never used (QEMU keeps the legacy meaning of address 0).",
                  f"{_QEMU_RUN}: receiveq1 at IOVA 0, TX completed but no RX buffer ever used, QEMU trace shows "
                  "no virtio_queue_notify for queue 0; the same rings at 1 MiB work. The checks' guest memory "
                  "starts at 1 MiB for this reason (GUEST_MEMORY_BASE)."),
        Deviation("VIRTIO_F_ORDER_PLATFORM is not offered next to VIRTIO_F_ACCESS_PLATFORM.",
                  f"{_QEMU_RUN}: device features 0x10330bf8024 (bit 33 set, bit 36 clear).",
                  ("FEAT-DEV-13",), checks=("test_offered_features",)),
        Deviation("Feature bits it did not offer are dropped silently and FEATURES_OK is kept, instead of "
                  "FEATURES_OK being refused.",
                  f"{_QEMU_RUN}: 'FEATURES_OK stuck with unoffered bit 0' (and bits 11, 30, 42, 51, 60, 69...).",
                  ("FEAT-DEV-03",), checks=("test_unsupported_subset_is_refused",)),
        Deviation("Malformed rings do not set DEVICE_NEEDS_RESET: an indirect descriptor inside an indirect "
                  "table is used as a plain buffer, INDIRECT is honoured without VIRTIO_F_INDIRECT_DESC, an "
                  "indirect table longer than the queue is walked, a queue size that is not a power of two and a "
                  "ring part off its alignment are enabled, and a DMA the IOMMU refuses (buffer or ring outside "
                  "the maps) is served as zeros (the buffer completes, the guest logs the DMAR fault).",
                  f"{_QEMU_RUN}: status 0x0f after each of these inputs, config vector silent for 0.5 s, ISR 0x1 "
                  "(the chain completed); 'DMA read of 4096 bytes at IOVA 0x7f0000000000: IOMMU (VT-d) fault "
                  "reason 0x04: Access beyond MGAW' with status 0x0f; 'queue_size 255 (maximum 256) then "
                  "queue_enable=1: queue_enable reads 1, status 0x0b'; 'queue_driver 1 bytes off its alignment "
                  "then queue_enable=1: queue_enable reads 1, status 0x0b'.",
                  ("STATUS-DEV-02", "STATUS-DEV-03"),
                  checks=("test_hostile_ring_input", "test_queue_size_not_power_of_two", "test_ring_part_misaligned",
                          "test_receive_buffer_outside_the_maps", "test_rings_outside_the_maps")),
        Deviation("Without VIRTIO_NET_F_MRG_RXBUF num_buffers is not written (a 10-byte header is stored in the "
                  "12-byte VERSION_1 header, bytes 10-11 keep what the buffer held).",
                  f"{_QEMU_RUN}: 'frame 0 (60 bytes) in buffer 0: num_buffers 42405, expected 1' (0xa5a5, the "
                  "check's poison).",
                  ("NET-DEV-28", "NET-DEV-30"), checks=("test_receive_header_without_offloads",)),
        Deviation("A received packet larger than the posted buffers is held until more buffers come (the "
                  "receive queue stalls behind it) instead of being dropped; nothing partial is delivered.",
                  f"{_QEMU_RUN}: '6 buffers of 768 bytes in all posted, a 868-byte then a 60-byte frame sent: "
                  "0 used entries'. The check expects the drop; the requirement text only forbids a partial packet.",
                  ("NET-DEV-33",), checks=("test_receive_merged_buffers",)),
        Deviation("Zero-length descriptors are refused ('zero sized buffers are not allowed'): "
                  "DEVICE_NEEDS_RESET, and the device ignores the queue from then on.",
                  f"{_QEMU_RUN}: TX 'zero-length pieces between' (6 readable descriptors): nothing received, then "
                  "'device_status 0x4f (DEVICE_NEEDS_RESET) after a valid chain'.",
                  ("SPLIT-DEV-01",), checks=("test_descriptor_layout_does_not_change_the_frame",)),
        Deviation("An indirect descriptor after direct ones in a chain is not followed: on TX the table bytes "
                  "are sent as data, on RX the chain is refused with DEVICE_NEEDS_RESET (QEMU only honours "
                  "INDIRECT on the head descriptor). Later used entries of the check then never come.",
                  f"{_QEMU_RUN}: '1 direct + indirect (TX): frame of 500 received, used len 44 (expected 512)'; "
                  "'2 direct + indirect (RX): device_status 0x4f'; 'used idx rx=3 tx=6 after 6 frames "
                  "looped back'. (The order of the used writes, SPLIT-DEV-15, is not observable through VFIO.)",
                  ("SPLIT-DEV-08", "SPLIT-DEV-16"),
                  checks=("test_indirect_write_flag_and_mixed_chains",
                          "test_device_writes_only_writable_buffers_and_used_ring")),
        Deviation("queue_msix_vector of a queue the device does not have takes the vector written to it "
                  "(any queue_select below QEMU's 1024 queues keeps a vector, present or not), and a "
                  "queue_select at or above 1024 is ignored, so the next read shows the previously selected "
                  "queue's vector instead of NO_VECTOR.",
                  f"{_QEMU_RUN}: 'num_queues 3: queue_msix_vector of absent queues (read, then read after "
                  "writing 0) {3: ('0xffff', '0x0'), 4: ('0xffff', '0x0'), 32767: ('0x0', '0x0'), "
                  "65535: ('0x0', '0x0')} (NO_VECTOR expected)'; queue 0 mapped to vector 0 reads 0x0.",
                  ("PCI-DEV-58",), checks=("test_absent_queue_has_no_vector",)),
        Deviation("With VIRTIO_F_EVENT_IDX the first used buffer notification after a queue is set up is sent "
                  "whatever used_event says (QEMU's signalled_used_valid starts false).",
                  f"{_QEMU_RUN}: 'used idx 0->1 (1 buffer(s)), used_event 1 (used idx+1), avail.flags=0: 1 "
                  "interrupt(s), expected 0'; 'used idx 0->250: TX used_event 249 gave 2 interrupt(s), expected "
                  "1'. The hypothesis check of the thresholds fails as a whole, naming all of its ids.",
                  ("SPLIT-DEV-12", "SPLIT-DEV-13", "SPLIT-DEV-14"),
                  checks=("test_event_idx_thresholds", "test_used_idx_wraps_at_16_bits")),
    ),
)


#: QEMU's ids. Not in :func:`default_quirks`: the bench's behavioral model presents the same ids, and
#: the record changes nothing the driver does; the VFIO guest test looks it up here by these ids.
QEMU_VIRTIO_NET_IDS = IdMatch(0x1AF4, 0x1041, QEMU_SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_DEVICE_ID)


def builtin_quirks() -> QuirkTable:
    """This project's own entries."""
    return QuirkTable((
        (IdMatch(0x1AF4, 0x1041, INTEL_VENDOR_ID, IFCVF_SUBSYSTEM_DEVICE_ID), IFCVF),
        (VDPA_BENCH_RTL_IDS, VDPA_BENCH_RTL),
        (ACME_VNET_IDS, ACME_VNET),
        (VDPA_BENCH_VQ_STATE_IDS, VDPA_BENCH_VQ_STATE),
    ))


#: The built-in table alone (no installed providers consulted).
DEFAULT_QUIRKS = builtin_quirks()


def installed_quirks() -> tuple[tuple[IdMatch, Quirk], ...]:
    """The entries of every ``vdpa_bench.quirks`` entry point (vendor packages), checked.

    An entry point names an iterable of ``(IdMatch, Quirk)`` pairs; one that does not load or holds
    anything else raises :class:`~backend.providers.ProviderError`.
    """
    entries: list[tuple[IdMatch, Quirk]] = []
    for ep in group(QUIRKS_GROUP).values():
        loaded = load(ep)
        pairs = list(loaded) if isinstance(loaded, Iterable) else None
        if pairs is None or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], IdMatch)
                                    and isinstance(p[1], Quirk) for p in pairs):
            raise ProviderError(f"{QUIRKS_GROUP}: {describe(ep)} is not an iterable of (IdMatch, Quirk) pairs")
        entries += pairs
    return tuple(entries)


def named_quirks() -> dict[str, Quirk]:
    """Every record known by name: the built-in ones, QEMU's (not matched by ids, see
    :data:`QEMU_VIRTIO_NET_IDS`) and every installed provider's. A conformance run can be told which one
    describes its device (``vdpa-bench run --quirk NAME``) where the ids do not tell."""
    quirks = [q for _, q in (*builtin_quirks().entries, *installed_quirks())]
    return {q.name: q for q in (*quirks, QEMU_VIRTIO_NET)}


def default_quirks() -> QuirkTable:
    """The built-in entries plus every installed provider's (callers extend it with their own)."""
    return QuirkTable((*builtin_quirks().entries, *installed_quirks()))
