"""Passive monitors: record what crosses a seam and judge the driver side against the DRV rows."""

from testbenches.monitor.packed_ring_rules import PACKED_DRV_MONITORED, PackedRingMonitor
from testbenches.monitor.pci_trace import Access, TracingPciDevice
from testbenches.monitor.split_ring_rules import SplitRingMonitor
from testbenches.monitor.virtio_pci_rules import Finding, VirtioPciDriverMonitor

__all__ = ["PACKED_DRV_MONITORED", "Access", "Finding", "PackedRingMonitor", "SplitRingMonitor", "TracingPciDevice",
           "VirtioPciDriverMonitor"]
