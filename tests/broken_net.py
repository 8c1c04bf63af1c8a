"""Seeded bugs in the behavioral model's virtio-net device functions outside the receive filter and RSS, one override
each, which the suite must catch with the right ids (``tests/test_broken_net.py``). Loaded through the target spec,
e.g. ``sim:virtio-net,model=tests.broken_net:MtuNotEnforced``."""

from __future__ import annotations

from models.virtio_net.device import VirtioNetDevice


class MtuNotEnforced(VirtioNetDevice):
    """With VIRTIO_NET_F_MTU negotiated, received frames longer than mtu plus the link-layer header are delivered."""

    def _oversize(self, frame: bytes) -> bool:
        return False


class LinkChangeUnannounced(VirtioNetDevice):
    """A link status change updates the status field but bumps no config_generation and sends no configuration change
    notification."""

    def set_link(self, up: bool) -> None:
        with self.endpoint.lock:
            self.link_up = up


class NumBuffersShortMerged(VirtioNetDevice):
    """With VIRTIO_NET_F_MRG_RXBUF, a packet over several receive buffers says one buffer fewer in num_buffers."""

    def rx_header(self, frame: bytes, num_buffers: int = 1) -> bytes:
        return super().rx_header(frame, num_buffers - 1 if num_buffers > 1 else num_buffers)
