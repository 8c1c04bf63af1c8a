"""Seeded bugs in the behavioral model's inner header hash (:mod:`models.virtio_net.inner_hash`), RSS contexts and
automatic receive steering (:mod:`models.virtio_net.rss_context`), one override each, which the checks of
``testbenches/conformance/checks/test_net_rss_context.py`` must catch with the right ids
(``tests/test_broken_rss_context.py``). Loaded through the target spec, e.g.
``sim:virtio-net,model=tests.broken_rss_context:ContextsKeptAfterReset``; the check module adds the features and
queue pairs."""

from __future__ import annotations

import struct
from collections.abc import Callable

from backend.virtio.net_ctrl import VIRTIO_NET_CTRL_HASH_TUNNEL_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.inner_hash import InnerHash, encapsulation
from models.virtio_net.rss import Rss
from models.virtio_net.rss_context import AutoSteering, RssContexts


class _EveryTunnelInner(InnerHash):
    def hashed_frame(self, frame: bytes) -> bytes:
        if not self.enabled_tunnel_types:
            return frame
        found = encapsulation(frame)
        return frame if found is None else found[1]  # enabled_tunnel_types not looked at: any known encapsulation


class _EveryTunnelRss(Rss):
    inner_class = _EveryTunnelInner


class InnerHashIgnoresEnabledTypes(VirtioNetDevice):
    """Once any tunnel type is enabled, every encapsulation it knows is hashed over the inner header."""

    rss_class = _EveryTunnelRss


class _InnerKept(InnerHash):
    def reset(self) -> None:
        if not hasattr(self, "enabled_tunnel_types"):
            self.enabled_tunnel_types = 0  # set once, at construction: a device reset keeps what the driver enabled


class _InnerKeptRss(Rss):
    inner_class = _InnerKept


class InnerHashKeptAfterReset(VirtioNetDevice):
    """enabled_tunnel_types survives a device reset."""

    rss_class = _InnerKeptRss


class _AnyTunnelTypes(InnerHash):
    def command(self, cmd: int, data: bytes, negotiated: int) -> int:
        if cmd != VIRTIO_NET_CTRL_HASH_TUNNEL_SET or len(data) != 4:
            return VIRTIO_NET_ERR
        self.enabled_tunnel_types = struct.unpack("<I", data)[0]  # supported_tunnel_types not checked
        return VIRTIO_NET_OK


class _AnyTunnelRss(Rss):
    inner_class = _AnyTunnelTypes


class UnsupportedTunnelTypesTaken(VirtioNetDevice):
    """HASH_TUNNEL_SET with types outside supported_tunnel_types is acknowledged VIRTIO_NET_OK."""

    rss_class = _AnyTunnelRss


class _KeptContexts(RssContexts):
    def reset(self) -> None:
        pass  # the contexts outlive the device reset


class ContextsKeptAfterReset(VirtioNetDevice):
    """RSS contexts configured before a device reset are still there after it."""

    rss_contexts_class = _KeptContexts


class _NoLearning(AutoSteering):
    def learn(self, frame: bytes) -> None:
        pass  # the transmit queue of a flow is never remembered: replies are spread by hash only


class SteeringIgnoresTransmitQueue(VirtioNetDevice):
    """Automatic steering spreads received flows by a hash, whatever transmit queue each flow was sent on."""

    steering_class = _NoLearning


class _ResetChosen(AutoSteering):
    def pair_for(self, frame: bytes, active_pairs: int, ready: Callable[[int], bool]) -> int | None:
        return super().pair_for(frame, active_pairs, lambda p: True)  # a queue being reset is chosen as any other


class QueueInResetStillChosen(VirtioNetDevice):
    """A receive queue being reset is still chosen by automatic steering (its packets are then dropped)."""

    steering_class = _ResetChosen


__all__ = ["ContextsKeptAfterReset", "InnerHashIgnoresEnabledTypes", "InnerHashKeptAfterReset",
           "QueueInResetStillChosen", "SteeringIgnoresTransmitQueue", "UnsupportedTunnelTypesTaken"]
