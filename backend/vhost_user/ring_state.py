"""SET/GET_VRING_BASE of packed rings: the 32-bit state as a :class:`~backend.device.VqState`, and the position a
stopped packed ring can be read at when the device cannot report its state.

The wire layout (bits 0-14 avail index, 15 avail wrap counter, 16-30 used index, 31 used wrap counter) is
:class:`~backend.vhost_user.payloads.VringState`'s; this module says what the session makes of it.
"""

from __future__ import annotations

from typing import Final

from backend.device import VqState
from backend.vhost_user import messages as m
from backend.virtio.packed_ring import DESC_FLAGS_OFFSET, DESC_SIZE, PackedDescFlags, advance


def packed_state(st: m.VringState) -> VqState:
    """A packed SET_VRING_BASE as a ring state; bits 16-31 all zero (DPDK 22.11's virtio_user sends only the avail
    half) mean the used index and wrap counter equal the avail ones."""
    if st.num >> 16 == 0:
        return VqState(st.packed_avail_idx, int(st.packed_avail_wrap), st.packed_avail_idx, int(st.packed_avail_wrap))
    return VqState(st.packed_avail_idx, int(st.packed_avail_wrap), st.packed_used_idx, int(st.packed_used_wrap))


def packed_num(index: int, state: VqState) -> m.VringState:
    """GET_VRING_BASE's reply for a packed ring."""
    return m.VringState.packed_base(index, state.avail_idx, bool(state.avail_wrap), state.used_idx,
                                    bool(state.used_wrap))


_AVAIL_FLAG: Final = int(PackedDescFlags.AVAIL)


def packed_ring_position(desc_ring: memoryview | bytes, size: int, start: tuple[int, int]) -> tuple[int, int]:
    """The first slot from ``start`` (offset, wrap counter) whose AVAIL bit is not that of its lap: where the
    driver stopped making descriptors available. Slots the device used keep AVAIL equal to their lap's wrap
    counter (used descriptors set AVAIL and USED alike), so after a device that used everything made available
    it is also the device's position. A full lap of available slots ends one lap on (the ring was full)."""
    off, wrap = start
    for _ in range(size):
        at = DESC_SIZE * off + DESC_FLAGS_OFFSET
        flags = int.from_bytes(desc_ring[at:at + 2], "little")
        if bool(flags & _AVAIL_FLAG) != bool(wrap):
            break
        off, wrap = advance(off, wrap, 1, size)
    return off, wrap


__all__ = ["packed_num", "packed_ring_position", "packed_state"]
