"""Generic driver rows judged on the bench's drivers: feature acknowledgement (FEAT-DRV-12/13/14/20), the order of
the stores that publish a split ring entry (SPLIT-DRV-26), exposed buffers left alone until a reset (RESET-DRV-05/06),
vendor data capabilities (PCI-DRV-27/28), speed and duplex (NET-DRV-11/12) and the processing of received headers
(NET-DRV-58/61/63/64).

Each rule is a function returning :class:`Finding` objects (one per opportunity); the check module
(``checks/test_driver_rows.py``) feeds them what it observed: the register trace, the driver's stores into its guest
memory (:class:`StoreWatch`), the frames the driver delivered. A rule never looks at the driver's own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from backend.virtio.features import F, has
from backend.virtio.net_hdr import F_DATA_VALID, F_NEEDS_CSUM, NetHdr
from backend.virtio.split_ring import DESC_SIZE, U16, USED_ELEM, DescFlags, SplitLayout, unpack_table
from sim.memory import GuestMemory
from testbenches.monitor.pci_trace import Access
from testbenches.monitor.virtio_pci_rules import Finding

# --- feature acknowledgement -------------------------------------------------------------------------

#: SHOULD-acknowledge bits of 6.1, by row.
ACK_ROWS = (("FEAT-DRV-13", F.RING_PACKED), ("FEAT-DRV-14", F.ORDER_PLATFORM), ("FEAT-DRV-20", F.NOTIF_CONFIG_DATA))


def feature_ack_findings(negotiations: Iterable[tuple[int, int]], rows: Iterable[str] | None = None) -> list[Finding]:
    """FEAT-DRV-13/14/20 on every negotiation (offer as the driver read it, driver_feature at FEATURES_OK): a bit
    offered is acknowledged. ``rows`` limits the rows judged."""
    wanted = None if rows is None else set(rows)
    out = []
    for offered, acked in negotiations:
        for rid, bit in ACK_ROWS:
            if (wanted is None or rid in wanted) and has(offered, bit):
                out.append(Finding(rid, has(acked, bit), f"{F(bit).name} offered ({offered:#x}) but not "
                                                          f"acknowledged ({acked:#x})"))
    return out


def physical_address_findings(areas: Iterable[tuple[str, int, int]], ram: Sequence[tuple[int, int]],
                              negotiated: int) -> list[Finding]:
    """FEAT-DRV-12: without VIRTIO_F_ACCESS_PLATFORM every address the driver gives the device (``areas`` as
    (what, address, length)) lies inside guest physical memory (``ram`` as (gpa, size))."""
    if has(negotiated, F.ACCESS_PLATFORM):
        return []
    out = []
    for what, addr, length in areas:
        inside = any(base <= addr and addr + max(length, 1) <= base + size for base, size in ram)
        out.append(Finding("FEAT-DRV-12", inside, f"{what} at {addr:#x}+{length} lies outside guest memory "
                                                   f"{[(hex(b), s) for b, s in ram]}"))
    return out


# --- stores into the rings --------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitRingPlace:
    """Where a split ring lives in guest memory."""

    index: int
    size: int
    desc: int
    avail: int
    used: int

    @property
    def layout(self) -> SplitLayout:
        return SplitLayout(self.size)

    def desc_slots(self, gpa: int, length: int) -> set[int]:
        """Descriptor table slots a store of ``length`` bytes at ``gpa`` touches."""
        end = self.desc + DESC_SIZE * self.size
        lo, hi = max(gpa, self.desc), min(gpa + length, end)
        return set(range((lo - self.desc) // DESC_SIZE, (hi - 1 - self.desc) // DESC_SIZE + 1)) if lo < hi else set()

    def ring_slots(self, gpa: int, length: int) -> set[int]:
        """avail.ring slots a store touches."""
        start = self.avail + self.layout.avail_ring_entry(0)
        lo, hi = max(gpa, start), min(gpa + length, start + 2 * self.size)
        return set(range((lo - start) // 2, (hi - 1 - start) // 2 + 1)) if lo < hi else set()

    def touches_idx(self, gpa: int, length: int) -> bool:
        return gpa < self.avail + 4 and self.avail + 2 < gpa + length


def chain_slots(read: Callable[[int, int], bytes], ring: SplitRingPlace, head: int) -> list[int]:
    """The descriptor table slots of the chain at ``head`` (an indirect table counts as its one slot)."""
    table = unpack_table(read(ring.desc, DESC_SIZE * ring.size))
    slots: list[int] = []
    i = head
    while i < ring.size and i not in slots:
        slots.append(i)
        d = table[i]
        if not d.flags & DescFlags.NEXT or d.flags & DescFlags.INDIRECT:
            break
        i = d.next
    return slots


def avail_idx_order_findings(stores: Sequence[tuple[int, bytes]], ring: SplitRingPlace) -> list[Finding]:
    """SPLIT-DRV-26 replayed over the driver's stores in program order (from ring creation): each avail idx store
    publishes ring entries stored since their slot was last published, alone (not in one store with an entry),
    over chains whose descriptors were all stored before it. A store that covers a whole table or ring (its
    zeroing at creation) stores no entry."""
    shadow = bytearray(DESC_SIZE * ring.size)
    ring_shadow = bytearray(2 * ring.size)
    desc_stored: set[int] = set()
    ring_stored: set[int] = set()
    published = 0
    out: list[Finding] = []
    entry0 = ring.avail + ring.layout.avail_ring_entry(0)
    for n, (gpa, data) in enumerate(stores):
        length = len(data)
        descs, entries = ring.desc_slots(gpa, length), ring.ring_slots(gpa, length)
        # A store over the whole table or ring is its initialisation, not the store of an entry.
        desc_stored |= descs if len(descs) < ring.size else set()
        ring_stored |= entries if len(entries) < ring.size else set()
        _overlay(shadow, ring.desc, gpa, data)
        _overlay(ring_shadow, entry0, gpa, data)
        if not ring.touches_idx(gpa, length):
            continue
        where = f"queue {ring.index}: store {n} ({length} bytes at {gpa:#x})"
        new = U16.unpack_from(ring_shadow_idx(data, gpa, ring.avail + 2, published), 0)[0]
        if new == published:
            continue  # nothing published (the ring's zeroing, an idx stored again)
        if gpa != ring.avail + 2 or length != 2:
            alone = not ring.ring_slots(gpa, length) and not ring.desc_slots(gpa, length)
            out.append(Finding("SPLIT-DRV-26", alone, f"{where}: avail idx stored together with ring entries"))
        for k in range((new - published) & 0xFFFF):
            slot = (published + k) % ring.size
            head = U16.unpack_from(ring_shadow, 2 * slot)[0]
            missing = [] if slot in ring_stored else [f"avail.ring[{slot}]"]
            chain = chain_slots(lambda a, s: bytes(shadow[a - ring.desc:a - ring.desc + s]), ring, head) \
                if head < ring.size else []
            missing += [f"descriptor {d}" for d in chain if d not in desc_stored]
            out.append(Finding("SPLIT-DRV-26", not missing,
                               f"{where}: avail idx {new} publishes head {head} before {', '.join(missing)} "
                               f"was stored"))
            ring_stored.discard(slot)
        published = new
    return out


def ring_shadow_idx(data: bytes, gpa: int, at: int, old: int) -> bytes:
    """The avail idx after a store of ``data`` at ``gpa`` that touches it (``old`` for bytes it leaves)."""
    idx = bytearray(U16.pack(old))
    _overlay(idx, at, gpa, data)
    return bytes(idx)


def _overlay(image: bytearray, base: int, gpa: int, data: bytes) -> None:
    lo, hi = max(gpa, base), min(gpa + len(data), base + len(image))
    if lo < hi:
        image[lo - base:hi - base] = data[lo - gpa:hi - gpa]


@dataclass
class _Exposed:
    """The buffers of one ring made available and not yet used: head -> (descriptor slots, avail ring slot)."""

    ring: SplitRingPlace
    heads: dict[int, tuple[list[int], int]] = field(default_factory=dict)
    published: int = 0
    used_seen: int = 0
    live: bool = True


class StoreWatch(GuestMemory):
    """Guest memory that judges every store the driver side makes through it against the split rings registered
    with :meth:`watch` (RESET-DRV-05/06), and keeps the stores in order (:attr:`stores`, for SPLIT-DRV-26).

    At each store the watch first reads the used ring as the device left it (buffers used since are no longer
    exposed) and then looks whether the store touches a descriptor or avail ring entry of a buffer still exposed
    (the entries of an indirect table are not followed: its descriptor is).
    While the queue is live that breaks RESET-DRV-05; once the driver writes device_status 0 (:meth:`on_access`
    sees the register trace) the exposed buffers may be reclaimed only after the reset has completed (device_status
    read back 0): RESET-DRV-06."""

    def __init__(self) -> None:
        super().__init__()
        self.stores: list[tuple[int, bytes]] = []
        self.findings: list[Finding] = []
        self.checked = 0  # stores made while some buffer was exposed
        self.reclaimed_at_reset = 0  # buffers still exposed when the driver reset the device
        self.reused_after_reset = 0  # stores into their entries once the reset had completed
        self._rings: list[_Exposed] = []
        self._retired: list[_Exposed] = []  # rings reset with buffers exposed
        self._resetting = False  # device_status 0 written, not yet read back as 0
        self._status_offset: tuple[int, int] | None = None

    def watch(self, ring: SplitRingPlace) -> None:
        """Follow ``ring`` from now: every entry published so far and not in the used ring counts as exposed."""
        ex = _Exposed(ring)
        self._rings.append(ex)
        self._refresh(ex)

    def status_register(self, bar: int, offset: int) -> None:
        """Where device_status lives (BAR, offset), for :meth:`on_access`."""
        self._status_offset = (bar, offset)

    def on_access(self, a: Access) -> None:
        """A register access by the driver (a :class:`TracingPciDevice` listener): device_status 0 written starts
        a reset, read back as 0 completes it."""
        if self._status_offset is None or (a.region, a.offset) != self._status_offset or a.size != 1:
            return
        if a.op == "w" and a.value == 0:
            for ex in self._rings:
                if ex.live:
                    self._refresh(ex)
                    self.reclaimed_at_reset += len(ex.heads)
                    ex.live = False
            self._resetting = True
        elif a.op == "r" and a.value == 0 and self._resetting:
            self._resetting = False
            self._retired += [ex for ex in self._rings if not ex.live and ex.heads]
            self._rings = [ex for ex in self._rings if ex.live]

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        raw = bytes(data)
        self.stores.append((gpa, raw))
        for ex in self._rings:
            self._judge_store(ex, gpa, raw)
        self.reused_after_reset += sum(bool(self._hits(ex, gpa, len(raw))) for ex in self._retired)
        super().write(gpa, raw)
        for ex in self._rings:
            if ex.live and ex.ring.touches_idx(gpa, len(raw)):
                self._refresh(ex)

    def _judge_store(self, ex: _Exposed, gpa: int, raw: bytes) -> None:
        if ex.live:
            self._refresh(ex)
        if not ex.heads:
            return
        self.checked += 1
        hit = self._hits(ex, gpa, len(raw))
        if not hit:
            return
        where = f"queue {ex.ring.index}: a {len(raw)}-byte store at {gpa:#x} rewrites the entries of exposed " \
                f"buffer(s) {hit}"
        if ex.live:
            self.findings.append(Finding("RESET-DRV-05", False, f"{where} while the queue is live"))
            self.findings.append(Finding("RESET-DRV-06", False, f"{where}: reclaimed without a reset"))
        else:
            self.findings.append(Finding("RESET-DRV-06", not self._resetting,
                                         f"{where} before the reset completed (device_status not read back 0)"))

    @staticmethod
    def _hits(ex: _Exposed, gpa: int, length: int) -> list[int]:
        """The exposed buffers of ``ex`` whose descriptors or avail ring entry a store touches."""
        descs, slots = ex.ring.desc_slots(gpa, length), ex.ring.ring_slots(gpa, length)
        return [h for h, (chain, slot) in ex.heads.items() if descs & set(chain) or slot in slots]

    def _refresh(self, ex: _Exposed) -> None:
        """Heads newly published join the exposed set; heads in the used ring since the last look leave it."""
        r = ex.ring
        idx = U16.unpack(self.read(r.avail + 2, 2))[0]
        for k in range((idx - ex.published) & 0xFFFF):
            slot = (ex.published + k) % r.size
            head = U16.unpack(self.read(r.avail + r.layout.avail_ring_entry(slot), 2))[0]
            if head < r.size:
                ex.heads[head] = (chain_slots(self.read, r, head), slot)
        ex.published = idx
        used = U16.unpack(self.read(r.used + SplitLayout.USED_IDX, 2))[0]
        for k in range((used - ex.used_seen) & 0xFFFF):
            uid, _ = USED_ELEM.unpack(self.read(r.used + r.layout.used_ring_entry(ex.used_seen + k), USED_ELEM.size))
            ex.heads.pop(uid, None)
        ex.used_seen = used


# --- vendor data capabilities -----------------------------------------------------------------------


def vendor_data_findings(cap_range: range, config_writes: Iterable[tuple[int, bytes]],
                         with_cap: Sequence[tuple[str, int, int, bytes]],
                         without_cap: Sequence[tuple[str, int, int, bytes]]) -> list[Finding]:
    """PCI-DRV-28: no config write lands in a vendor data capability of a foreign vendor_id (``cap_range``).
    PCI-DRV-27: the driver's register writes (op, region, offset, data) are the same with the capability present
    and without it: it changes nothing the driver does."""
    wrote = [(off, data.hex()) for off, data in config_writes if cap_range.start <= off < cap_range.stop
             or off < cap_range.start < off + len(data)]
    out = [Finding("PCI-DRV-28", not wrote, f"config writes into the foreign vendor data capability at "
                                              f"{cap_range.start:#x}: {wrote}")]
    differ = next((i for i, (a, b) in enumerate(zip(with_cap, without_cap, strict=False)) if a != b), None)
    if differ is None and len(with_cap) != len(without_cap):
        differ = min(len(with_cap), len(without_cap))
    detail = ""
    if differ is not None:
        one = with_cap[differ] if differ < len(with_cap) else None
        other = without_cap[differ] if differ < len(without_cap) else None
        detail = f"write {differ}: {one} with the capability, {other} without"
    out.append(Finding("PCI-DRV-27", differ is None, f"the driver's {len(with_cap)} register writes with the vendor "
                                                     f"data capability differ from its {len(without_cap)} without: "
                                                     f"{detail}"))
    return out


# --- speed and duplex --------------------------------------------------------------------------------

SPEED_UNKNOWN_ABOVE = 0x7FFFFFFF
DUPLEX_KNOWN = (0x00, 0x01)


def speed_duplex_findings(shown: Sequence[tuple[int, int, tuple[int | None, int | None]]]) -> list[Finding]:
    """NET-DRV-11 on each (speed, duplex) shown to the driver and what it then reported: a speed above 0x7fffffff
    and a duplex other than 0/1 come back as unknown (None), the others as shown."""
    out = []
    for speed, duplex, (got_speed, got_duplex) in shown:
        want = (None if speed > SPEED_UNKNOWN_ABOVE else speed, duplex if duplex in DUPLEX_KNOWN else None)
        out.append(Finding("NET-DRV-11", (got_speed, got_duplex) == want,
                           f"speed {speed:#x} duplex {duplex:#x} shown: the driver reports {got_speed}/{got_duplex}, "
                           f"not {want[0]}/{want[1]}"))
    return out


def refresh_findings(interrupts: Sequence[tuple[int, int, tuple[int | None, int | None], bool, bool]]
                     ) -> list[Finding]:
    """NET-DRV-12 on each config interrupt: (speed, duplex shown since, what the driver reports after handling it,
    whether it read speed, whether it read duplex from device config after the interrupt)."""
    out = []
    for speed, duplex, reported, read_speed, read_duplex in interrupts:
        ok = read_speed and read_duplex and reported == (speed, duplex)
        out.append(Finding("NET-DRV-12", ok, f"config interrupt with speed {speed} duplex {duplex}: read speed "
                                             f"{read_speed}, read duplex {read_duplex}, reports {reported}"))
    return out


# --- processing of received packets ------------------------------------------------------------------


@dataclass(frozen=True)
class RxCase:
    """A header and frame the bench writes into a receive buffer, the row it judges, and the checksum states the
    driver may report for it."""

    rid: str
    what: str
    hdr: NetHdr
    frame: bytes
    allowed: frozenset[str]


def rx_trusts(hdr: NetHdr) -> bool:
    """The header lets the driver take the checksum as good (DATA_VALID) or to be completed (NEEDS_CSUM)."""
    return bool(hdr.flags & (F_NEEDS_CSUM | F_DATA_VALID))


def rx_findings(cases: Sequence[RxCase], delivered: Sequence[tuple[bytes, str] | None]) -> list[Finding]:
    """NET-DRV-58/61/63/64: each case's frame is delivered byte for byte (no flag, csum field or hdr_len changed
    it), with a checksum state among those allowed (without NEEDS_CSUM and DATA_VALID: checked by the driver)."""
    out = []
    for case, got in zip(cases, delivered, strict=True):
        if got is None:
            out.append(Finding(case.rid, False, f"{case.what}: the frame was not delivered"))
            continue
        frame, state = got
        intact = frame == case.frame
        diff = "" if intact else f"delivered {len(frame)} bytes differing from the {len(case.frame)} written"
        ok = intact and state in case.allowed
        out.append(Finding(case.rid, ok, f"{case.what}: {diff or 'intact'}, checksum {state!r} (allowed "
                                         f"{sorted(case.allowed)})"))
    return out


# --- receive queues with VIRTIO_NET_F_MQ --------------------------------------------------------------


def stocked_findings(outstanding: dict[int, int], virtqueue_pairs: int) -> list[Finding]:
    """NET-DRV-57 after VQ_PAIRS_SET of ``virtqueue_pairs``: each receive queue the device may now use
    (receiveq1..receiveqN, virtqueue index 2(N-1)) has buffers available and not yet used (``outstanding``: virtqueue
    index -> avail idx minus used idx as read from the rings)."""
    return [Finding("NET-DRV-57", outstanding.get(2 * pair, 0) > 0,
                    f"receiveq{pair + 1} (virtqueue {2 * pair}) has {outstanding.get(2 * pair, 0)} buffers available "
                    f"after VQ_PAIRS_SET {virtqueue_pairs}")
            for pair in range(virtqueue_pairs)]
