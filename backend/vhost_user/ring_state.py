"""SET/GET_VRING_BASE of packed rings: the 32-bit state as a :class:`~backend.device.VqState`, and the position a
stopped packed ring can be read at when the device cannot report its state.

The wire layout (bits 0-14 avail index, 15 avail wrap counter, 16-30 used index, 31 used wrap counter) is
:class:`~backend.vhost_user.payloads.VringState`'s; this module says what the session makes of it.
"""

from __future__ import annotations

from typing import Final

from backend.device import VqState
from backend.vhost_user import messages as m
from backend.virtio.packed_ring import DESC_FLAGS_OFFSET, DESC_SIZE, PackedDescFlags


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


def packed_ring_position(desc_ring: memoryview | bytes, size: int) -> tuple[int, int]:
    """Where the driver stopped making descriptors available: (offset, wrap counter) of the next slot it would use.

    The driver writes slots in order, each with the AVAIL bit of its lap's wrap counter, and a used descriptor
    keeps AVAIL equal to USED equal to that counter, so the ring holds the current lap's AVAIL bit up to the
    driver's position and the previous lap's after it (an untouched ring: all zeros, the first lap not begun).
    After a device that used everything made available it is also the device's position, however many laps
    the ring went round."""
    def avail(slot: int) -> int:
        at = DESC_SIZE * slot + DESC_FLAGS_OFFSET
        return 1 if int.from_bytes(desc_ring[at:at + 2], "little") & _AVAIL_FLAG else 0

    lap = avail(0)
    for slot in range(1, size):
        if avail(slot) != lap:
            return slot, lap
    return 0, lap ^ 1  # a whole lap with one bit: the next slot is the first of the next lap


__all__ = ["packed_num", "packed_ring_position", "packed_state"]
