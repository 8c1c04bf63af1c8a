"""Descriptor lists a check posts on a packed ring, described like split chains (:class:`~chains.Posted`).

:func:`add_packed_chain` is the packed counterpart of :func:`testbenches.conformance.chains.add_chain`: the same
two allocations (readable pieces, writable pieces), the same :class:`Posted` (head = Buffer ID), so a check that
judges what the device read and wrote runs unchanged on either layout. A packed list holds an indirect descriptor
only alone (PACKED-DRV-15), so an indirect list is one INDIRECT descriptor whose table holds every piece.
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.virtio.packed_ring import DESC_SIZE, PackedDescFlags, PackedDescriptor, advance, avail_bits
from testbenches.conformance.chains import Posted, lay_out_pieces
from testbenches.driver.packed import DriverPackedQueue

_NEXT = int(PackedDescFlags.NEXT)
_WRITE = int(PackedDescFlags.WRITE)
_INDIRECT = int(PackedDescFlags.INDIRECT)


def add_packed_chain(ring: DriverPackedQueue, out: Sequence[bytes], in_lens: Sequence[int], *,
                     indirect: bool = False, token: object = None) -> Posted:
    """Make one list available at next_avail: readable ``out`` then writable ``in_lens``, head flags written last.

    ``indirect``: one INDIRECT descriptor pointing at a table of every piece (entries carry WRITE only). The list
    is the device's as soon as this returns (a packed ring has no separate publish step)."""
    pieces = len(out) + len(in_lens)
    if pieces == 0:
        raise ValueError("a list needs at least one descriptor")
    slots = 1 if indirect else pieces
    if ring.num_free < slots or not ring._free_ids:  # a raw list takes a Buffer ID like add() does
        raise ValueError(f"{slots} ring slots needed, {ring.num_free} free")
    owned, parts = lay_out_pieces(ring, out, in_lens, _WRITE)
    buffer_id = ring._free_ids.popleft()  # back on the free list once the list is used
    posted = Posted(buffer_id, token=token)
    posted.readable = [(g, n) for g, n, w in parts if not w]
    posted.writable = [(g, n) for g, n, w in parts if w]
    if indirect:
        table = ring.write_indirect([PackedDescriptor(g, n, 0, w) for g, n, w in parts])
        owned.append(table)
        posted.tables.append((table, DESC_SIZE * pieces))
        parts = [(table, DESC_SIZE * pieces, _INDIRECT)]
    pos = (ring.next_avail, ring.avail_wrap)
    descs: list[PackedDescriptor] = []
    for i, (gpa, n, flags) in enumerate(parts):
        # Each descriptor carries the wrap counter of its own slot: a list may cross the ring's end.
        descs.append(PackedDescriptor(gpa, n, buffer_id, flags | (_NEXT if i + 1 < len(parts) else 0)
                                      | avail_bits(pos[1])))
        posted.tables.append((ring.desc_addr + DESC_SIZE * pos[0], DESC_SIZE))
        pos = advance(pos[0], pos[1], 1, ring.size)
    ring.expose_raw(descs, buffer_id, token=token)
    posted.owned = owned
    return posted


__all__ = ["add_packed_chain"]
