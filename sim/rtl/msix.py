"""MSI-X held by the design: its table and PBA live in a BAR the design decodes, and it signals a
vector with a message write on a DMA master, as a PCIe endpoint does.

The platform plays the part VFIO and the root complex play for a real function: when the user binds
a vector to an eventfd (SET_IRQS), :class:`DesignMsix` programs that table entry with an address in
the MSI window and the vector number as data and unmasks it; the native bridge turns a write into the
window into that vector, whose eventfd is signalled here. Masking and the pending bits are the
design's (the function-mask bit of the capability is an input of the design). The address and data
words a driver writes through the BAR are kept by :class:`MsixTableShim` and read back, not passed on:
the message is the platform's (vfio-pci keeps the host's table to itself the same way).
"""

from __future__ import annotations

import struct

from backend.virtio.pci_regs import MSIX_ENTRY_CTRL_MASKED, MSIX_ENTRY_SIZE
from sim.pci.endpoint import Msix
from sim.rtl.device import AxiLiteBlock

#: The bridge's MSI window (harness/bridge.cpp.j2 MSI_BASE): every vector writes its number here.
MSI_ADDRESS = 0xFEE00000
_CTRL = 12  # vector control dword of an entry


class MsixTableShim:
    """The table window in the BAR: vector control goes to the design, address/data stay here."""

    def __init__(self, design: AxiLiteBlock, vectors: int) -> None:
        self.design = design
        self.size = design.size
        self.shadow = bytearray(MSIX_ENTRY_SIZE * vectors)

    def read(self, offset: int, size: int) -> bytes:
        out = bytearray(self.shadow[offset:offset + size].ljust(size, b"\0"))
        for pos in range(offset, offset + size):
            if pos % MSIX_ENTRY_SIZE >= _CTRL:
                word = pos - pos % 4
                value = self.design.read(word, 4)
                out[pos - offset] = value[pos - word]
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            pos = offset + i
            if pos % MSIX_ENTRY_SIZE >= _CTRL:
                self.design.write(pos, bytes([byte]))
            elif pos < len(self.shadow):
                self.shadow[pos] = byte

    def program(self, vector: int, masked: bool) -> None:
        """The platform's message for ``vector`` into the design's entry (what VFIO does at SET_IRQS)."""
        entry = struct.pack("<IIII", MSI_ADDRESS, 0, vector, MSIX_ENTRY_CTRL_MASKED if masked else 0)
        self.design.write(vector * MSIX_ENTRY_SIZE, entry)


class DesignMsix(Msix):
    """The MSI-X capability of a function whose table and PBA the design holds."""

    def __init__(self, table_size: int, bar: int, table_offset: int, pba_offset: int, table: MsixTableShim) -> None:
        self.shim = table
        super().__init__(table_size, bar, table_offset, pba_offset)

    def masked(self, vector: int) -> bool:
        return False  # the design masks before it writes: what arrives is to be delivered

    def _bound(self, vector: int, live: bool) -> None:
        self.shim.program(vector, masked=not live)  # into the design's entry

    def _deliver_pending(self) -> None:
        return  # the design's PBA: it sends a pending message itself once unmasked
