"""Deliberately broken virtio-net models: each seeds one realistic accelerator bug.

Loaded by the suite through the target spec's extension point, e.g.
``sim:virtio-net,model=tests.broken_models:UsedIdxNoWrap``; ``tests/test_broken_models.py``
asserts that the conformance suite fails on each, naming the right requirement ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.virtio.net_hdr import NetHdr
from backend.virtio.packed_ring import DESC_FLAGS_OFFSET, PackedDescriptor
from backend.virtio.split_ring import U16, Descriptor, SplitLayout
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.packed_engine import PackedQueue, Position
from models.virtio_net.split_engine import Chain, SplitQueue


class UsedIdxNoWrap(VirtioNetDevice):
    """The used idx counter is 15 bits wide: it wraps at 0x8000 instead of 2^16."""

    def next_used_idx(self, used_idx: int, count: int) -> int:
        return (used_idx + count) % 0x8000


class UsedIdxBeforeElement(VirtioNetDevice):
    """used idx is bumped as soon as a chain's length is known, before its used element is written."""

    def used_len_for(self, q: SplitQueue, chain: Chain, written: int) -> int:
        self.dma.write(q.device + SplitLayout.USED_IDX, U16.pack((q.used_idx + 1) & 0xFFFF))
        return written


class NextIgnored(VirtioNetDevice):
    """The chain walker ignores VIRTQ_DESC_F_NEXT: every chain is its head descriptor only."""

    def chain_continues(self, desc: Descriptor) -> bool:
        return False


class FeaturesOkForUnoffered(VirtioNetDevice):
    """FEATURES_OK sticks whatever the driver acknowledged, offered or not."""

    def features_acceptable(self, features: int) -> bool:
        return True


class NoInterruptAfterUsed(VirtioNetDevice):
    """The used ring is updated but the used buffer notification is never sent."""

    def needs_notification(self, q: SplitQueue, old_idx: int, new_idx: int) -> bool:
        return False


class UsedLenOffByOne(VirtioNetDevice):
    """used.len reports one byte more than the device wrote into receive buffers."""

    def used_len_for(self, q: SplitQueue, chain: Chain, written: int) -> int:
        return written + 1 if written else 0


class EventIdxOffByOne(VirtioNetDevice):
    """EVENT_IDX: notifies only once used idx passes used_event + 1 (threshold one late)."""

    def used_event_crossed(self, used_event: int, new_idx: int, old_idx: int) -> bool:
        return super().used_event_crossed((used_event + 1) & 0xFFFF, new_idx, old_idx)


class ResetLeavesQueueEnabled(VirtioNetDevice):
    """Device reset forgets to clear queue_enable (and keeps the ring configuration)."""

    def reset_queue(self, q: SplitQueue) -> None:
        enabled = q.enabled
        super().reset_queue(q)
        q.enabled = enabled


class IndirectNextHonoured(VirtioNetDevice):
    """A descriptor with both INDIRECT and NEXT is accepted and NEXT is followed after the table."""

    def indirect_next_is_error(self, desc: Descriptor) -> bool:
        return False


class VectorOutOfRangeAccepted(VirtioNetDevice):
    """queue_msix_vector / config_msix_vector accept vectors beyond the MSI-X table size."""

    def _valid_vector(self, v: int) -> int:
        return v


class NumBuffersZero(VirtioNetDevice):
    """Receive header carries num_buffers = 0 (a classic firmware bug without MRG_RXBUF)."""

    def rx_header(self, frame: bytes, num_buffers: int = 1) -> bytes:
        return NetHdr(num_buffers=0).pack()


class NoNeedsResetOnLoop(VirtioNetDevice):
    """A looping descriptor chain is silently dropped: no DEVICE_NEEDS_RESET, no config interrupt."""

    def fail(self, err: object) -> None:
        self.errors.append(err)  # type: ignore[arg-type]


# --- packed rings (run on a target offering VIRTIO_F_RING_PACKED: see PACKED_SPEC in tests/test_broken_models.py) --


class PackedUsedWrapNotFlipped(VirtioNetDevice):
    """The Device Ring Wrap Counter is not toggled at the ring's end: the second lap's used flags carry wrap 1."""

    def packed_advance_used(self, off: int, wrap: int, n: int, size: int) -> Position:
        return (off + n) % size, wrap


class PackedBufferIdOfFirst(VirtioNetDevice):
    """A list's Buffer ID is read from its first descriptor instead of its last (2.8.6)."""

    def packed_buffer_id(self, descs: Sequence[PackedDescriptor]) -> int:
        return descs[0].id


class PackedUsedLenOffByOne(VirtioNetDevice):
    """The used descriptor's len counts one byte more than the device wrote."""

    def packed_used_stores(self, buffer_id: int, length: int, flags: int) -> list[tuple[int, bytes]]:
        return super().packed_used_stores(buffer_id, length + 1 if length else 0, flags)


class PackedUsedFlagsFirst(VirtioNetDevice):
    """The used flags are stored before the id and len: the descriptor changes after its USED flag flipped."""

    def packed_used_stores(self, buffer_id: int, length: int, flags: int) -> list[tuple[int, bytes]]:
        return [(DESC_FLAGS_OFFSET, U16.pack(flags)),
                (8, (length & 0xFFFFFFFF).to_bytes(4, "little") + (buffer_id & 0xFFFF).to_bytes(2, "little"))]


class PackedInOrderFirstId(VirtioNetDevice):
    """IN_ORDER: a batch's used descriptor names the first buffer of the batch, not the last (2.8.8)."""

    def packed_in_order_id(self, ids: Sequence[int]) -> int:
        return ids[0]


class PackedSuppressionIgnored(VirtioNetDevice):
    """The driver event suppression structure is never read: every used update notifies (DISABLE ignored)."""

    def packed_needs_notification(self, q: PackedQueue, old: Position, new: Position) -> bool:
        return True


class PackedDescWrapIgnored(VirtioNetDevice):
    """RING_EVENT_FLAGS_DESC: desc_event_wrap is ignored, the offset taken in the lap the used index is in."""

    def packed_event_crossed(self, event: Position, new: Position, count: int, size: int) -> bool:
        return super().packed_event_crossed((event[0], new[1]), new, count, size)


class PackedNestedIndirectFollowed(VirtioNetDevice):
    """An INDIRECT entry inside an indirect table is taken as a plain buffer: no DEVICE_NEEDS_RESET."""

    def packed_indirect_entry_ok(self, flags: int) -> bool:
        return True


class PackedNextIgnored(VirtioNetDevice):
    """The list walker ignores VIRTQ_DESC_F_NEXT on packed rings: every list is its first descriptor."""

    def packed_chain_continues(self, desc: PackedDescriptor) -> bool:
        return False
