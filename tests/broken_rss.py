"""Seeded bugs in the behavioral model's RSS and hash reporting (:mod:`models.virtio_net.rss`), one override each,
which the checks of ``testbenches/conformance/checks/test_net_rss.py`` must catch with the right ids
(``tests/test_broken_rss.py``). Loaded through the target spec, e.g.
``sim:virtio-net,model=tests.broken_rss:IndirectionIgnored``; the check module adds the features and queue pairs."""

from __future__ import annotations

from backend.virtio.net_ctrl import VIRTIO_NET_HASH_REPORT_TCPv4, VIRTIO_NET_HASH_REPORT_UDPv4
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.rss import Rss, hash_fields


class _ModuloPairs(Rss):
    def pair_for(self, frame: bytes) -> int:
        h = self.hash_of(frame)
        if h is None:
            return self.unclassified_queue
        return h[0] % (max(self.table) + 1)  # the hash spread over the queues, the indirection table not read


class IndirectionIgnored(VirtioNetDevice):
    """A hashed packet goes to queue (hash mod queues named) instead of indirection_table[hash & mask]."""

    rss_class = _ModuloPairs


class _NoUnclassified(Rss):
    def pair_for(self, frame: bytes) -> int:
        if self.hash_of(frame) is None:
            return 0  # receiveq1, whatever unclassified_queue says
        return super().pair_for(frame)


class UnclassifiedIgnored(VirtioNetDevice):
    """A packet without a hash goes to receiveq1 instead of unclassified_queue."""

    rss_class = _NoUnclassified


class _UdpReportedTcp(Rss):
    def header_fields(self, frame: bytes) -> bytes:
        h = self.hash_of(frame)
        if h is not None and h[1] == VIRTIO_NET_HASH_REPORT_UDPv4:
            return hash_fields(h[0], VIRTIO_NET_HASH_REPORT_TCPv4)  # the right hash, the wrong type
        return super().header_fields(frame)


class UdpReportedAsTcp(VirtioNetDevice):
    """With HASH_REPORT, a UDPv4 hash is reported as VIRTIO_NET_HASH_REPORT_TCPv4."""

    rss_class = _UdpReportedTcp


class _NoReport(Rss):
    def header_fields(self, frame: bytes) -> bytes:
        return hash_fields(0, 0)  # hash_value 0, VIRTIO_NET_HASH_REPORT_NONE: the hash is steered by, never reported


class HashReportMissing(VirtioNetDevice):
    """With HASH_REPORT negotiated, every packet's header says VIRTIO_NET_HASH_REPORT_NONE (no hash reported)."""

    rss_class = _NoReport
