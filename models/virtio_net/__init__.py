"""Behavioral virtio-net accelerator model: split-ring engine, virtio-pci modern transport, wires."""

from models.virtio_net.device import DEFAULT_FEATURES, NetStats, VirtioNetDevice
from models.virtio_net.split_engine import Chain, Dma, RingError, RingHooks, SplitQueue
from models.virtio_net.transport import EndpointDma, VirtioPciFunction
from models.virtio_net.wire import Collector, FrameBatch, LoopbackWire, NullPort, PairWire, PcapTap, Port, Station, Wire

__all__ = [
    "DEFAULT_FEATURES",
    "Chain",
    "Collector",
    "Dma",
    "EndpointDma",
    "FrameBatch",
    "LoopbackWire",
    "NetStats",
    "NullPort",
    "PairWire",
    "PcapTap",
    "Port",
    "RingError",
    "RingHooks",
    "SplitQueue",
    "Station",
    "VirtioNetDevice",
    "VirtioPciFunction",
    "Wire",
]
