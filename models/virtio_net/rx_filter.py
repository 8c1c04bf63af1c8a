"""virtio-net receive filtering through the control virtqueue (virtio 1.4, 5.1.6.5 and 5.1.9.5.1-5.1.9.5.4).

:class:`RxFilter` holds what the driver set with the control commands of classes VIRTIO_NET_CTRL_RX,
VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_VLAN and VIRTIO_NET_CTRL_ANNOUNCE (the primary MAC, the RX modes, the MAC
filter table, the VLAN filter table, the announce request), answers those commands (:meth:`RxFilter.command`)
and says whether a frame from the wire is delivered (:meth:`RxFilter.accept`). A command whose feature was not
negotiated is answered VIRTIO_NET_ERR and changes nothing. Device reset clears everything (:meth:`RxFilter.reset`).

Without VIRTIO_NET_F_CTRL_RX nothing is filtered by address; without VIRTIO_NET_F_CTRL_VLAN nothing by VLAN
(NETCTRL-DEV-21). The device checks :data:`FILTER_FEATURES` once per frame or burst before calling :meth:`accept`.
"""

from __future__ import annotations

import struct

from backend.virtio.features import NetF, bits, has
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_ANNOUNCE,
    VIRTIO_NET_CTRL_ANNOUNCE_ACK,
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI,
    VIRTIO_NET_CTRL_RX_ALLUNI,
    VIRTIO_NET_CTRL_RX_NOBCAST,
    VIRTIO_NET_CTRL_RX_NOMULTI,
    VIRTIO_NET_CTRL_RX_NOUNI,
    VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_CTRL_VLAN_ADD,
    VIRTIO_NET_CTRL_VLAN_DEL,
    VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
)

#: The control classes this module answers.
CLASSES = frozenset((VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_ANNOUNCE))
#: Negotiating either of these makes the receive path ask :meth:`RxFilter.accept`.
FILTER_FEATURES = bits(NetF.CTRL_RX, NetF.CTRL_VLAN)
#: Every feature of this module; each depends on VIRTIO_NET_F_CTRL_VQ (NETFEAT-DEV-09).
RX_FILTER_FEATURES = bits(NetF.CTRL_VQ, NetF.CTRL_RX, NetF.CTRL_RX_EXTRA, NetF.CTRL_VLAN, NetF.CTRL_MAC_ADDR,
                          NetF.GUEST_ANNOUNCE)

#: RX-class command -> (attribute it sets, feature it needs): PROMISC/ALLMULTI with CTRL_RX (NETCTRL-DEV-04),
#: the rest with CTRL_RX_EXTRA (NETCTRL-DEV-08).
RX_MODES: dict[int, tuple[str, int]] = {
    VIRTIO_NET_CTRL_RX_PROMISC: ("promisc", NetF.CTRL_RX),
    VIRTIO_NET_CTRL_RX_ALLMULTI: ("allmulti", NetF.CTRL_RX),
    VIRTIO_NET_CTRL_RX_ALLUNI: ("alluni", NetF.CTRL_RX_EXTRA),
    VIRTIO_NET_CTRL_RX_NOMULTI: ("nomulti", NetF.CTRL_RX_EXTRA),
    VIRTIO_NET_CTRL_RX_NOUNI: ("nouni", NetF.CTRL_RX_EXTRA),
    VIRTIO_NET_CTRL_RX_NOBCAST: ("nobcast", NetF.CTRL_RX_EXTRA),
}
BROADCAST = b"\xff" * 6
ETH_ALEN = 6
ETH_P_8021Q = b"\x81\x00"
VLAN_VID_MASK = 0x0FFF
MAX_VID = 4095


def parse_mac_table(data: bytes) -> tuple[list[bytes], list[bytes]] | None:
    """A VIRTIO_NET_CTRL_MAC_TABLE_SET payload: le32 entries and that many 6-byte MACs, unicast then multicast,
    nothing after; None when the counts and the length disagree (answered VIRTIO_NET_ERR)."""
    tables: list[list[bytes]] = []
    pos = 0
    for _ in range(2):
        if len(data) < pos + 4:
            return None
        (entries,) = struct.unpack_from("<I", data, pos)
        pos += 4
        end = pos + entries * ETH_ALEN
        if end > len(data):
            return None
        tables.append([data[p:p + ETH_ALEN] for p in range(pos, end, ETH_ALEN)])
        pos = end
    if pos != len(data):
        return None
    return tables[0], tables[1]


class RxFilter:
    """The receive filter of one device and the announce request, as the control commands set them."""

    def __init__(self, mac: bytes) -> None:
        #: the MAC the device is built with; the primary MAC goes back to it at reset
        self.default_mac = mac
        self.reset()

    def reset(self) -> None:
        """Device reset: the configured MAC, every mode off, both tables empty (NETCTRL-DEV-17), no announce."""
        self.mac = self.default_mac
        self.promisc = False
        self.allmulti = False
        self.alluni = False
        self.nomulti = False
        self.nouni = False
        self.nobcast = False
        self.unicast: set[bytes] = set()
        self.multicast: set[bytes] = set()
        self.vlans: set[int] = set()
        #: VIRTIO_NET_S_ANNOUNCE in the status field, until VIRTIO_NET_CTRL_ANNOUNCE_ACK
        self.announce = False

    # --- the control commands --------------------------------------------------------------------

    def command(self, cls: int, cmd: int, data: bytes, negotiated: int) -> int:
        """One command of a class in :data:`CLASSES`; returns the ack byte. The state changes before the
        device marks the buffer used (NETCTRL-DEV-18/19/24): it returns the ack only after."""
        if cls == VIRTIO_NET_CTRL_RX:
            return self._rx_mode(cmd, data, negotiated)
        if cls == VIRTIO_NET_CTRL_MAC:
            if cmd == VIRTIO_NET_CTRL_MAC_TABLE_SET and has(negotiated, NetF.CTRL_RX):
                return self.mac_table_set(data)
            if cmd == VIRTIO_NET_CTRL_MAC_ADDR_SET and has(negotiated, NetF.CTRL_MAC_ADDR) and len(data) == ETH_ALEN:
                self.mac = bytes(data)
                return VIRTIO_NET_OK
            return VIRTIO_NET_ERR
        if cls == VIRTIO_NET_CTRL_VLAN:
            if not has(negotiated, NetF.CTRL_VLAN) or len(data) != 2:
                return VIRTIO_NET_ERR
            (vid,) = struct.unpack("<H", data)
            if vid > MAX_VID:
                return VIRTIO_NET_ERR
            return self.vlan_command(cmd, vid)
        if cls == VIRTIO_NET_CTRL_ANNOUNCE:
            if cmd == VIRTIO_NET_CTRL_ANNOUNCE_ACK and has(negotiated, NetF.GUEST_ANNOUNCE) and not data:
                self.announce = False
                return VIRTIO_NET_OK
            return VIRTIO_NET_ERR
        return VIRTIO_NET_ERR

    def _rx_mode(self, cmd: int, data: bytes, negotiated: int) -> int:
        mode = RX_MODES.get(cmd)
        if mode is None or not has(negotiated, mode[1]) or len(data) != 1 or data[0] > 1:
            return VIRTIO_NET_ERR
        self.set_mode(mode[0], bool(data[0]))
        return VIRTIO_NET_OK

    def set_mode(self, name: str, on: bool) -> None:
        """One RX mode (``promisc``, ``allmulti``, ...) on or off."""
        setattr(self, name, on)

    def mac_table_set(self, data: bytes) -> int:
        """Replace both MAC tables; a malformed payload changes nothing."""
        tables = parse_mac_table(data)
        if tables is None:
            return VIRTIO_NET_ERR
        self.unicast, self.multicast = set(tables[0]), set(tables[1])
        return VIRTIO_NET_OK

    def vlan_command(self, cmd: int, vid: int) -> int:
        if cmd == VIRTIO_NET_CTRL_VLAN_ADD:
            self.vlans.add(vid)
        elif cmd == VIRTIO_NET_CTRL_VLAN_DEL:
            self.vlans.discard(vid)
        else:
            return VIRTIO_NET_ERR
        return VIRTIO_NET_OK

    # --- the receive path ------------------------------------------------------------------------

    def accept(self, frame: bytes, negotiated: int) -> bool:
        """Whether ``frame`` from the wire is delivered, by 5.1.9.5.1-5.1.9.5.3: promiscuous mode delivers
        everything (NETCTRL-DEV-05/06); a tagged frame needs its VID in the VLAN table with CTRL_VLAN
        (NETCTRL-DEV-21..23); then by destination with CTRL_RX."""
        if self.promisc:
            return True
        if (has(negotiated, NetF.CTRL_VLAN) and frame[12:14] == ETH_P_8021Q
                and int.from_bytes(frame[14:16], "big") & VLAN_VID_MASK not in self.vlans):
            return False
        if not has(negotiated, NetF.CTRL_RX):
            return True
        return self.accept_address(bytes(frame[:ETH_ALEN]))

    def accept_address(self, dst: bytes) -> bool:
        if len(dst) < ETH_ALEN:
            return False  # no destination to match
        if dst == BROADCAST:
            return not self.nobcast  # NOMULTI never filters broadcast (NETCTRL-DEV-12), NOBCAST does (15/16)
        if dst[0] & 1:
            if self.nomulti:  # NOMULTI wins over ALLMULTI (NETCTRL-DEV-10/11)
                return False
            return self.allmulti or dst in self.multicast  # NETCTRL-DEV-07/20
        if self.nouni:  # NOUNI wins over ALLUNI (NETCTRL-DEV-13/14)
            return False
        return self.alluni or dst == self.mac or dst in self.unicast  # NETCTRL-DEV-09/20


__all__ = [
    "CLASSES",
    "FILTER_FEATURES",
    "RX_FILTER_FEATURES",
    "RxFilter",
    "parse_mac_table",
]
