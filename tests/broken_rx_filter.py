"""Seeded bugs in the behavioral model's receive filter (:mod:`models.virtio_net.rx_filter`), one override each,
which the checks of ``testbenches/conformance/checks/test_net_rx_filter.py`` must catch with the right ids
(``tests/test_broken_rx_filter.py``). Loaded through the target spec, e.g.
``sim:virtio-net,model=tests.broken_rx_filter:AllMultiBeatsNoMulti``; the check module adds the features."""

from __future__ import annotations

from backend.virtio.net_ctrl import VIRTIO_NET_OK
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.rx_filter import RxFilter


class _AllMultiFirst(RxFilter):
    def accept_address(self, dst: bytes) -> bool:
        if dst[0] & 1 and dst != b"\xff" * 6 and self.allmulti:
            return True  # ALLMULTI looked at before NOMULTI
        return super().accept_address(dst)


class AllMultiBeatsNoMulti(VirtioNetDevice):
    """With ALLMULTI and NOMULTI both on, multicast frames are delivered (NOMULTI must win)."""

    rx_filter_class = _AllMultiFirst


class _TableKept(RxFilter):
    def reset(self) -> None:
        kept = (getattr(self, "unicast", set()), getattr(self, "multicast", set()))
        super().reset()
        self.unicast, self.multicast = kept


class MacTableKeptAtReset(VirtioNetDevice):
    """Device reset clears the RX modes and the VLAN table but not the MAC filter table."""

    rx_filter_class = _TableKept


class _VlanDelIgnored(RxFilter):
    def vlan_command(self, cmd: int, vid: int) -> int:
        if cmd == 1:  # VIRTIO_NET_CTRL_VLAN_DEL acknowledged, the VID left in the table
            return VIRTIO_NET_OK
        return super().vlan_command(cmd, vid)


class VlanDelIgnored(VirtioNetDevice):
    """VLAN_DEL is acknowledged but the VID stays in the VLAN filter table."""

    rx_filter_class = _VlanDelIgnored


class _AnnounceKept(RxFilter):
    def command(self, cls: int, cmd: int, data: bytes, negotiated: int) -> int:
        announce = self.announce
        ack = super().command(cls, cmd, data, negotiated)
        self.announce = announce  # ANNOUNCE_ACK acknowledged, VIRTIO_NET_S_ANNOUNCE left set
        return ack


class AnnounceNotCleared(VirtioNetDevice):
    """ANNOUNCE_ACK is acknowledged VIRTIO_NET_OK but VIRTIO_NET_S_ANNOUNCE stays set in the status field."""

    rx_filter_class = _AnnounceKept
