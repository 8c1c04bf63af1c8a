"""The bench designs' build parameters, kept free of cocotb so pytest can collect without the RTL toolchain."""

from __future__ import annotations

from backend.virtio.features import F, NetF, bits

# --- virtio_pci_regs on its own ----------------------------------------------------------------------
REGS_NUM_QUEUES = 2
REGS_MAX_QUEUE_SIZE = 256
REGS_MSIX_VECTORS = 3
REGS_MAC = bytes.fromhex("020000abcdef")
REGS_MTU = 1500
#: what virtio_net_top offers with its default parameters
REGS_FEATURES = bits(F.VERSION_1, F.ACCESS_PLATFORM, F.ORDER_PLATFORM, F.RING_RESET, F.EVENT_IDX, F.RING_PACKED,
                     NetF.MAC, NetF.STATUS, NetF.MTU, NetF.CSUM, NetF.GUEST_CSUM, NetF.MRG_RXBUF)
REGS_PARAMETERS: dict[str, object] = {
    "NUM_QUEUES": REGS_NUM_QUEUES, "MAX_QUEUE_SIZE": REGS_MAX_QUEUE_SIZE, "MSIX_VECTORS": REGS_MSIX_VECTORS,
    "FEATURES": f"64'h{REGS_FEATURES:016x}", "MAC": f"48'h{REGS_MAC.hex()}", "MTU": f"16'd{REGS_MTU}",
    "MAX_VQ_PAIRS": "16'd1",
}

# --- virtio_net_top (ring engine bench) -----------------------------------------------------------------
TOP_DATA_W = 64
TOP_ADDR_W = 48  # narrower than 64 so a descriptor address past it exercises the bus-error path
TOP_MTU = 1500
TOP_MAC = bytes.fromhex("02000000beef")
TOP_PARAMETERS: dict[str, object] = {
    "DATA_W": TOP_DATA_W, "ADDR_W": TOP_ADDR_W, "MAX_QUEUE_SIZE": 256, "BUF_BYTES": 2048, "MAX_BURST": 16,
    "MTU": f"16'd{TOP_MTU}", "MAC": f"48'h{TOP_MAC.hex()}", "EVENT_IDX": 1,
}
TOP_SEED = 20240601

#: The same top with two queue pairs (control queue, MQ) and a 32-bit data path.
TOP_MQ_PAIRS = 2
TOP_MQ_PARAMETERS: dict[str, object] = {**TOP_PARAMETERS, "NUM_PAIRS": TOP_MQ_PAIRS, "DATA_W": 32}

#: The dirty page log bench's bytemap check says this when the bytemap and the device's writes differ
#: (bench_dirty_log.py; test_rtl.py looks for it in the seeded bug's failure).
LOG_BYTEMAP_DIFFERS = "bytemap differs from the pages the device wrote"
