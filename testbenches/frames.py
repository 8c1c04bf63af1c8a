"""The bench's one test frame: Ethernet/IPv4/UDP, deterministic, its sequence number in the payload.

Every test and benchmark that moves frames builds them here, so a frame that comes back can be told
apart from any other (:func:`seq_of`) and a corrupted one does not pass as another.

The UDP checksum is zero ("no checksum", allowed for UDP over IPv4 by RFC 768), so the headers depend
only on the length and the addresses: scapy builds them once per shape and each frame only adds its
payload (building a frame with scapy costs about a millisecond; benchmarks build thousands).
"""

from __future__ import annotations

import functools
import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import str2mac

__all__ = ["HEADER_LEN", "MAX_LEN", "MIN_LEN", "SEQ_MAX", "seq_of", "test_frame"]

ETHER_LEN, IP_LEN, UDP_LEN = 14, 20, 8
HEADER_LEN = ETHER_LEN + IP_LEN + UDP_LEN
SEQ = struct.Struct("!I")
MIN_LEN = HEADER_LEN + SEQ.size
MAX_LEN = ETHER_LEN + 0xFFFF  # the IPv4 total length field is 16 bits
SEQ_MAX = 0xFFFFFFFF
SRC_IP, DST_IP = "10.0.0.1", "10.0.0.2"
SPORT, DPORT = 49152, 9  # from an ephemeral port to discard
MAC_LEN = 6
_RAMP = bytes(range(256)) * 2  # every 256-byte rotation of 0..255 is a slice of it


@functools.lru_cache(maxsize=4096)
def _headers(length: int, dst: bytes, src: bytes) -> bytes:
    pkt = (Ether(dst=str2mac(dst), src=str2mac(src)) / IP(src=SRC_IP, dst=DST_IP, id=0)
           / UDP(sport=SPORT, dport=DPORT, chksum=0) / bytes(length - HEADER_LEN))
    return bytes(pkt)[:HEADER_LEN]


def test_frame(seq: int = 0, length: int = 60, *, dst: bytes = b"\x02\x00\x00\x00\x00\x02",
               src: bytes = b"\x02\x00\x00\x00\x00\x01") -> bytes:
    """An Ethernet/IPv4/UDP frame of ``length`` bytes (no FCS) from ``src`` to ``dst``.

    The UDP payload starts with ``seq`` (32-bit, network order) and is filled with bytes that depend
    on ``seq``, so two frames of the same length with different ``seq`` differ in every payload byte
    run, and the same arguments always give the same bytes.
    """
    if not MIN_LEN <= length <= MAX_LEN:
        raise ValueError(f"test frame length {length}: an Ethernet/IPv4/UDP frame with a sequence number "
                         f"is {MIN_LEN} to {MAX_LEN} bytes")
    if not 0 <= seq <= SEQ_MAX:
        raise ValueError(f"test frame sequence number {seq}: must be 0 to {SEQ_MAX}")
    if len(dst) != MAC_LEN or len(src) != MAC_LEN:
        raise ValueError(f"test frame MAC addresses are {MAC_LEN} bytes, got dst {dst.hex()} src {src.hex()}")
    fill = length - MIN_LEN
    start = (seq * 7) & 0xFF
    pattern = _RAMP[start:start + 256]
    filler = (pattern * (fill // 256 + 1))[:fill]
    return _headers(length, bytes(dst), bytes(src)) + SEQ.pack(seq) + filler


test_frame.__test__ = False  # type: ignore[attr-defined]  # a builder, not a test, in modules that import it


def seq_of(frame: bytes) -> int:
    """The sequence number :func:`test_frame` put in ``frame``; ValueError if it is not such a frame."""
    if not MIN_LEN <= len(frame) <= MAX_LEN:
        raise ValueError(f"{len(frame)}-byte frame: a test frame is {MIN_LEN} to {MAX_LEN} bytes")
    if frame[MAC_LEN * 2:HEADER_LEN] != _headers(len(frame), frame[:MAC_LEN], frame[MAC_LEN:MAC_LEN * 2])[
            MAC_LEN * 2:]:
        raise ValueError(f"frame is not a test frame: headers {frame[:HEADER_LEN].hex()}")
    seq: int = SEQ.unpack_from(frame, HEADER_LEN)[0]
    return seq
