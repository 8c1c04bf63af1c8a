"""SystemVerilog virtio-net accelerator: where its sources are and the constants a bridge needs.

The RTL itself is in the ``*.sv`` files next to this module (see README.md for the
register map and the engine's state machines); this module only names them in
compile order so benches and the simulator bridge build the same design.
"""

from __future__ import annotations

import re
from pathlib import Path

RTL_DIR = Path(__file__).resolve().parent

#: Compile order: the package first, then leaves before the modules that instantiate them.
SOURCES: tuple[str, ...] = (
    "virtio_pkg.sv",
    "vnet_buf.sv",
    "vnet_dma.sv",
    "virtio_pci_regs.sv",
    "vnet_rx_in.sv",
    "vnet_rx_csum.sv",
    "vnet_ring_engine.sv",
    "virtio_net_top.sv",
)
TOP = "virtio_net_top"

#: BAR0 layout served by the AXI4-Lite slave (offsets inside BAR0) and the parts the bridge serves.
COMMON_CFG_OFF, COMMON_CFG_LEN = 0x0000, 0x40
ISR_OFF, ISR_LEN = 0x1000, 0x4
DEVICE_CFG_OFF, DEVICE_CFG_LEN = 0x2000, 0xC
NOTIFY_OFF = 0x3000
NOTIFY_OFF_MULTIPLIER = 4
VQ_STATE_OFF, VQ_STATE_STRIDE = 0x3800, 4  # vendor block: {used_idx, last_avail_idx} per queue (README)
VQ_STATE_MAX_QUEUES = (0x3F00 - VQ_STATE_OFF) // VQ_STATE_STRIDE  # queues the vq state block reaches (448)
#: Vendor dirty page log block (README "Vendor dirty page log block (0x3F00)"): 32-bit registers at these offsets.
DIRTY_LOG_OFF = 0x3F00
LOG_BASE_LO, LOG_BASE_HI, LOG_PAGES, LOG_CTRL, LOG_STATUS = (DIRTY_LOG_OFF + 4 * i for i in range(5))
LOG_CTRL_ENABLE, LOG_CTRL_BUSY = 0x1, 0x2  # ENABLE (RW), BUSY (RO: a log write is in flight)
LOG_STATUS_OVERFLOW, LOG_STATUS_FAULT = 0x1, 0x2  # write 1 to clear; both cleared when ENABLE goes 0->1
LOG_PAGE_SHIFT = 12  # byte p of the bytemap stands for IOVA [p << 12, (p + 1) << 12)
MSIX_TABLE_OFF, MSIX_PBA_OFF = 0x4000, 0x5000  # served by the bridge, not the RTL
BAR0_SIZE = 0x8000
AXIL_SPAN = 0x4000  # what the AXI4-Lite slave decodes


def _error_codes() -> dict[int, tuple[str, str]]:
    """The ``err_e`` codes of virtio_pkg.sv, whose comments say ``REQ-ID: what the driver did``."""
    item = re.compile(r"^\s*ERR_\w+\s*=\s*4'd(\d+),?\s*//\s*([A-Z]+-[A-Z]+-\d+): (.+)$", re.MULTILINE)
    source = (RTL_DIR / "virtio_pkg.sv").read_text()
    return {int(code): (rid, text.rstrip()) for code, rid, text in item.findall(source)}


#: ``last_err_code`` values: the driver error that made the device set DEVICE_NEEDS_RESET, with the
#: requirement the driver broke (read from the ``err_e`` enum of virtio_pkg.sv, said there once).
ERROR_CODES: dict[int, tuple[str, str]] = _error_codes()


def notify_len(num_queues: int) -> int:
    """Length of the notification structure: one 2-byte doorbell per queue, NOTIFY_OFF_MULTIPLIER apart."""
    return NOTIFY_OFF_MULTIPLIER * (num_queues - 1) + 2


def source_paths() -> list[Path]:
    """Absolute paths of :data:`SOURCES`, in compile order."""
    return [RTL_DIR / name for name in SOURCES]
