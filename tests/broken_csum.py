"""Seeded bugs in the behavioral model's checksum offload (one override each), which
testbenches/conformance/checks/test_net_csum.py must catch naming the right ids (tests/test_broken_csum.py).

Loaded as ``sim:virtio-net,features=...,model=tests.broken_csum:NAME``.
"""

from __future__ import annotations

from backend.virtio.features import NetF, has
from backend.virtio.net_hdr import F_DATA_VALID, F_NEEDS_CSUM, HDR, NetHdr
from models.virtio_net import offload
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.split_engine import Chain


def _tx_hdr(dev: VirtioNetDevice, chain: Chain) -> NetHdr:
    """The transmit header of ``chain`` (its first descriptor holds it whole in the checks' chains)."""
    addr, _ = chain.readable[0]
    return NetHdr.unpack(dev.dma.read(addr, HDR.size))


class CsumStoredPastField(VirtioNetDevice):
    """The completed checksum lands two bytes past csum_start + csum_offset (an off-by-one-word field address)."""

    def tx_offload(self, chain: Chain, frame: bytes) -> bytes | None:
        if not has(self.negotiated, NetF.CSUM):
            return frame
        h = _tx_hdr(self, chain)
        return offload.complete_checksum(h.flags, h.csum_start, h.csum_offset + 2, frame)


class DataValidUnverified(VirtioNetDevice):
    """With GUEST_CSUM every TCP/UDP packet is marked DATA_VALID, its checksum never computed."""

    def rx_header(self, frame: bytes, num_buffers: int = 1) -> bytes:
        transport = len(frame) > 23 and ((frame[12:14] == b"\x08\x00" and frame[23] in (6, 17))
                                         or (frame[12:14] == b"\x86\xdd" and frame[20] in (6, 17)))
        valid = has(self.negotiated, NetF.GUEST_CSUM) and transport
        return NetHdr(flags=F_DATA_VALID if valid else 0, num_buffers=num_buffers).pack()


class CsumWithoutNeedsCsum(VirtioNetDevice):
    """Any header whose csum_start/csum_offset fall inside the frame gets its checksum filled, NEEDS_CSUM or not."""

    def tx_offload(self, chain: Chain, frame: bytes) -> bytes | None:
        if not has(self.negotiated, NetF.CSUM):
            return frame
        h = _tx_hdr(self, chain)
        out = offload.complete_checksum(h.flags | F_NEEDS_CSUM, h.csum_start, h.csum_offset, frame)
        return out if out is not None or h.flags & F_NEEDS_CSUM else frame


class DataValidWithoutGuestCsum(VirtioNetDevice):
    """Checksums are verified and DATA_VALID reported whether or not the driver accepted GUEST_CSUM."""

    def rx_header(self, frame: bytes, num_buffers: int = 1) -> bytes:
        valid = offload.checksum_verified(frame)
        return NetHdr(flags=F_DATA_VALID if valid else 0, num_buffers=num_buffers).pack()
