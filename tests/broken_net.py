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
