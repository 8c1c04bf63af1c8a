"""backend.virtio.packed_ring: codecs, wrap-counter arithmetic, and agreement with the scapy views."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.scapy_layers import PackedDesc, PackedEventSuppress
from backend.virtio.packed_ring import (
    DESC_SIZE,
    EVENT_SIZE,
    EventFlags,
    EventSuppress,
    PackedDescFlags,
    PackedDescriptor,
    PackedLayout,
    advance,
    avail_bits,
    decode_notification_data,
    is_avail,
    is_used,
    is_valid_packed_size,
    notification_data,
    pack_off_wrap,
    pack_ring,
    packed_need_event,
    unpack_events,
    unpack_off_wrap,
    unpack_ring,
    used_bits,
)

u16 = st.integers(0, 0xFFFF)
descriptors = st.builds(PackedDescriptor, st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 32) - 1), u16, u16)
events = st.builds(EventSuppress, st.integers(0, 0x7FFF), st.integers(0, 1), st.integers(0, 3),
                   st.integers(0, (1 << 14) - 1))
sizes = st.integers(1, 32768)


@settings(max_examples=400, deadline=None)
@given(descs=st.lists(descriptors, max_size=12))
def test_descriptor_batch_codec_and_scapy_agree(descs: list[PackedDescriptor]) -> None:
    raw = pack_ring(descs)
    assert len(raw) == DESC_SIZE * len(descs)
    assert unpack_ring(raw) == descs
    for i, d in enumerate(descs):
        chunk = raw[DESC_SIZE * i:DESC_SIZE * (i + 1)]
        assert d.pack() == chunk == bytes(PackedDesc(addr=d.addr, len=d.len, id=d.id, flags=d.flags))
        view = PackedDesc(chunk)
        assert (view.addr, view.len, view.id, int(view.flags)) == (d.addr, d.len, d.id, d.flags)
        assert PackedDescriptor.unpack(raw, DESC_SIZE * i) == d
        assert d.has_next == ("NEXT" in view.flags) and d.is_write == ("WRITE" in view.flags)
        assert d.is_indirect == ("INDIRECT" in view.flags)


@settings(max_examples=400, deadline=None)
@given(raw=st.binary(min_size=EVENT_SIZE, max_size=EVENT_SIZE), ev=events)
def test_event_suppression_codec_and_scapy_agree(raw: bytes, ev: EventSuppress) -> None:
    # any 4 bytes decode the same both ways and encode back unchanged
    decoded = EventSuppress.unpack(raw)
    view = PackedEventSuppress(raw)
    assert (view.off, view.wrap, view.flags, view.reserved) == (decoded.off, decoded.wrap, decoded.flags,
                                                                decoded.reserved)
    assert decoded.pack() == raw == bytes(view)
    # any structure encodes the same both ways
    assert ev.pack() == bytes(PackedEventSuppress(off=ev.off, wrap=ev.wrap, flags=ev.flags, reserved=ev.reserved))
    assert unpack_off_wrap(pack_off_wrap(ev.off, ev.wrap)) == (ev.off, ev.wrap)


@given(evs=st.lists(events, max_size=8))
def test_event_batch_codec(evs: list[EventSuppress]) -> None:
    assert unpack_events(b"".join(e.pack() for e in evs)) == evs


def test_event_flag_values_and_off_range() -> None:
    assert (EventFlags.ENABLE, EventFlags.DISABLE, EventFlags.DESC) == (0, 1, 2)
    assert EventSuppress(5, 1, EventFlags.DESC).pack() == bytes([5, 0x80, 2, 0])
    with pytest.raises(ValueError, match="15 bits"):
        pack_off_wrap(0x8000, 0)


def test_ownership_bits_truth_table() -> None:
    A, U = int(PackedDescFlags.AVAIL), int(PackedDescFlags.USED)
    assert (A, U) == (0x80, 0x8000)
    for wrap in (0, 1):
        assert is_avail(avail_bits(wrap), wrap) and not is_used(avail_bits(wrap), wrap)
        assert is_used(used_bits(wrap), wrap) and not is_avail(used_bits(wrap), wrap)
        # the all-zero ring is neither available nor used for the first lap (wrap 1), and used for wrap 0
        assert not is_avail(0, 1) and not is_used(0, 1)
        # a slot made available in one lap looks used (or nothing) to the other
        assert not is_avail(avail_bits(wrap), wrap ^ 1)
    assert avail_bits(1) == A and avail_bits(0) == U and used_bits(1) == A | U and used_bits(0) == 0


@given(size=sizes, data=st.data())
def test_advance_flips_wrap_once_per_lap(size: int, data: st.DataObject) -> None:
    off = data.draw(st.integers(0, size - 1))
    wrap = data.draw(st.integers(0, 1))
    n = data.draw(st.integers(0, size))
    new_off, new_wrap = advance(off, wrap, n, size)
    assert new_off == (off + n) % size
    assert new_wrap == wrap ^ (off + n >= size)
    assert is_valid_packed_size(size) and not is_valid_packed_size(0) and not is_valid_packed_size(32769)
    assert PackedLayout(size).desc_bytes == DESC_SIZE * size
    assert PackedLayout(size).desc_flags(off + size) == DESC_SIZE * off + 14


@settings(max_examples=500, deadline=None)
@given(size=st.integers(1, 300), data=st.data())
def test_need_event_matches_a_slot_by_slot_walk(size: int, data: st.DataObject) -> None:
    """packed_need_event is true exactly when one of the ``count`` slots stepped over is the event slot."""
    off = data.draw(st.integers(0, size - 1))
    wrap = data.draw(st.integers(0, 1))
    count = data.draw(st.integers(1, size))
    event = (data.draw(st.integers(0, size - 1)), data.draw(st.integers(0, 1)))
    pos = (off, wrap)
    crossed = False
    for _ in range(count):
        crossed |= pos == event
        pos = advance(pos[0], pos[1], 1, size)
    assert packed_need_event(event[0], event[1], pos[0], pos[1], count, size) == crossed


@given(vq=u16, off=st.integers(0, 0x7FFF), wrap=st.integers(0, 1))
def test_notification_data_round_trip(vq: int, off: int, wrap: int) -> None:
    value = notification_data(vq, off, wrap)
    assert value < 1 << 32 and decode_notification_data(value) == (vq, off, wrap)
