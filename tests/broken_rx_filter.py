"""Seeded bugs in the behavioral model's receive filter (:mod:`models.virtio_net.rx_filter`), one override each,
which the checks of ``testbenches/conformance/checks/test_net_rx_filter.py`` must catch with the right ids
(``tests/test_broken_rx_filter.py``). Loaded through the target spec, e.g.
``sim:virtio-net,model=tests.broken_rx_filter:AllMultiBeatsNoMulti``; the check module adds the features."""

from __future__ import annotations

from backend.virtio.features import NetF, has
from backend.virtio.net_ctrl import VIRTIO_NET_CTRL_VLAN_ADD, VIRTIO_NET_ERR, VIRTIO_NET_OK
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


class _PromiscIgnored(RxFilter):
    def accept(self, frame: bytes, negotiated: int) -> bool:
        promisc, self.promisc = self.promisc, False
        try:
            return super().accept(frame, negotiated)  # filtered as if promiscuous mode were off
        finally:
            self.promisc = promisc


class PromiscIgnored(VirtioNetDevice):
    """VIRTIO_NET_CTRL_RX_PROMISC is acknowledged but frames are still filtered by MAC and VLAN."""

    rx_filter_class = _PromiscIgnored


class _MacTableIgnored(RxFilter):
    def accept_address(self, dst: bytes) -> bool:
        if len(dst) == 6 and not dst[0] & 1 and not self.nouni:
            return True  # any unicast destination delivered: neither the primary MAC nor the table consulted
        return super().accept_address(dst)


class MacFilterNotApplied(VirtioNetDevice):
    """With CTRL_RX, unicast frames to addresses neither the primary MAC nor in the MAC table are delivered."""

    rx_filter_class = _MacTableIgnored


class _VlanInverted(RxFilter):
    def accept(self, frame: bytes, negotiated: int) -> bool:
        if not self.promisc and has(negotiated, NetF.CTRL_VLAN) and frame[12:14] == b"\x81\x00":
            vid = int.from_bytes(frame[14:16], "big") & 0xFFF
            return vid not in self.vlans  # the table read the wrong way round
        return super().accept(frame, negotiated)


class VlanFilterInverted(VirtioNetDevice):
    """With CTRL_VLAN, tagged frames are delivered when their VID is *not* in the VLAN table, dropped when it is."""

    rx_filter_class = _VlanInverted


class _VlanAddAckedErr(RxFilter):
    def vlan_command(self, cmd: int, vid: int) -> int:
        ack = super().vlan_command(cmd, vid)
        return VIRTIO_NET_ERR if cmd == VIRTIO_NET_CTRL_VLAN_ADD else ack  # the VID added, the command said failed


class VlanAddAckedWithErr(VirtioNetDevice):
    """VIRTIO_NET_CTRL_VLAN_ADD takes effect but is acknowledged VIRTIO_NET_ERR."""

    rx_filter_class = _VlanAddAckedErr
