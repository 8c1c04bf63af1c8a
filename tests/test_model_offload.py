"""The model's checksum offload functions (models/virtio_net/offload.py) against scapy: the checksum completed
from the pseudo-header sum is scapy's, a verified packet is one scapy finds correct, a header pointing outside the
frame is dropped (never an exception), and without NEEDS_CSUM nothing changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from backend.virtio.net_hdr import F_NEEDS_CSUM, NetHdr
from models.virtio_net import offload
from testbenches.conformance.checks.test_net_csum import (
    RX_PARTIAL_IDS,
    corrupted,
    judge_receive_partial,
    make_packet,
    transport_checksum_ok,
)
from testbenches.conformance.plugin import Verdict


@given(v6=st.booleans(), tcp=st.booleans(), payload=st.binary(max_size=1440), extra=st.integers(0, 0xFE))
@settings(max_examples=60, deadline=None)
def test_completed_checksum_is_the_full_one(v6: bool, tcp: bool, payload: bytes, extra: int) -> None:
    f = make_packet(v6, tcp, payload)
    out = offload.complete_checksum(F_NEEDS_CSUM | extra << 1, f.csum_start, f.csum_offset, f.partial)
    assert out is not None and transport_checksum_ok(out)
    assert out[:f.field] == f.full[:f.field] and out[f.field + 2:] == f.full[f.field + 2:]
    assert offload.checksum_verified(out)


@given(v6=st.booleans(), tcp=st.booleans(), payload=st.binary(max_size=600), where=st.floats(0, 1))
@settings(max_examples=60, deadline=None)
def test_a_corrupted_checksum_is_never_verified(v6: bool, tcp: bool, payload: bytes, where: float) -> None:
    f = make_packet(v6, tcp, payload)
    assert offload.checksum_verified(f.full)
    bad = corrupted(f.full, f.field + int(where * (len(f.full) - f.field - 1)))
    assert not transport_checksum_ok(bad)
    assert not offload.checksum_verified(bad)


@given(start=st.integers(0, 0xFFFF), offset=st.integers(0, 0xFFFF), flags=st.integers(0, 0xFF),
       frame=st.binary(min_size=1, max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_header_is_handled(start: int, offset: int, flags: int, frame: bytes) -> None:
    out = offload.complete_checksum(flags, start, offset, frame)
    if not flags & F_NEEDS_CSUM:
        assert out == frame  # csum_start/csum_offset unused (NET-DEV-16)
    elif start + offset + 2 > len(frame):
        assert out is None  # the driver's error: dropped
    else:
        assert out is not None and len(out) == len(frame)
    offload.checksum_verified(frame)  # any bytes: an answer, never an exception


def test_udp_without_checksum_and_fragments_are_not_vouched_for() -> None:
    f = make_packet(False, False, b"x" * 40)
    at = f.field
    assert not offload.checksum_verified(f.full[:at] + b"\0\0" + f.full[at + 2:])
    frag = bytearray(f.full)
    frag[20] |= 0x20  # IPv4 MF: the header checksum is now wrong too, and the datagram incomplete
    assert not offload.checksum_verified(bytes(frag))


def test_the_check_judges_a_partial_checksum_on_receive() -> None:
    """The check's reference for NET-DEV-47..49 (a device delivering NEEDS_CSUM): the pseudo-header sum with the
    right csum_start/csum_offset passes, a complete checksum in its place is no partial one."""
    for v6 in (False, True):
        for tcp in (False, True):
            f = make_packet(v6, tcp, b"abc" * 33)
            hdr = NetHdr(flags=F_NEEDS_CSUM, csum_start=f.csum_start, csum_offset=f.csum_offset)
            v = Verdict("partial", RX_PARTIAL_IDS)
            judge_receive_partial(v, hdr, f.partial, f.what)
            assert not v.failures() and all(v.recorded(i) for i in RX_PARTIAL_IDS)
            v = Verdict("full", RX_PARTIAL_IDS)
            judge_receive_partial(v, hdr, f.full, f.what)
            assert set(v.failures()) == {"NET-DEV-48", "NET-DEV-49"}
