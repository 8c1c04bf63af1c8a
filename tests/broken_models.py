"""Deliberately broken virtio-net models: each seeds one realistic accelerator bug.

Loaded by the suite through the target spec's extension point, e.g.
``sim:virtio-net,model=tests.broken_models:UsedIdxNoWrap``; ``tests/test_broken_models.py``
asserts that the conformance suite fails on each, naming the right requirement ids.
"""

from __future__ import annotations

from backend.virtio.net_hdr import NetHdr
from backend.virtio.split_ring import U16, Descriptor, SplitLayout
from models.virtio_net.device import VirtioNetDevice
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

    def fail(self, err: object) -> None:  # type: ignore[override]
        self.errors.append(err)  # type: ignore[arg-type]
