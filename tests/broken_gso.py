"""Seeded bugs in the behavioral model's host GSO (:mod:`models.virtio_net.gso`), one override each, which the
check ``testbenches/conformance/checks/test_net_gso.py`` must catch with the right ids (``tests/test_broken_gso.py``).
Loaded through the target spec, e.g. ``sim:virtio-net,model=tests.broken_gso:TsoSequenceNotAdvanced``; the check
module adds the host GSO features."""

from __future__ import annotations

from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.gso import CSUM_OFFSET, Gso, Headers


class _SameSequence(Gso):
    def finish(self, out: bytearray, h: Headers, k: int, count: int, offset: int) -> bytes:
        return super().finish(out, h, k, count, 0)  # the payload offset never reaches the sequence number


class TsoSequenceNotAdvanced(VirtioNetDevice):
    """Every TSO segment carries the packet's sequence number."""

    gso_class = _SameSequence


class _OneChecksum(Gso):
    def segments(self, frame: bytes, h: Headers, mss: int) -> list[bytes]:
        at = h.l4 + CSUM_OFFSET[h.proto]
        whole = self.transport_checksum(bytearray(frame[:h.end]), h)
        return [seg[:at] + whole[at:at + 2] + seg[at + 2:] for seg in super().segments(frame, h, mss)]


class ChecksumNotPerSegment(VirtioNetDevice):
    """The transport checksum is completed once over the whole packet and copied into every segment."""

    gso_class = _OneChecksum


class _LargeSegments(Gso):
    def segments(self, frame: bytes, h: Headers, mss: int) -> list[bytes]:
        return super().segments(frame, h, mss + mss // 2)


class SegmentsOverGsoSize(VirtioNetDevice):
    """TSO and USO segments carry half as much payload again as gso_size."""

    gso_class = _LargeSegments
