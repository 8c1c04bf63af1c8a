"""Driver-side virtio-net rows (5.1.4.2, 5.1.9.2.1, 5.1.9.3.1: NET-DRV) judged on the buffers the driver makes
available, as the ring monitors see them.

Each transmit buffer is judged on its device-readable bytes (the virtio_net_hdr, then the frame) and each receive
buffer on its device-writable size, under the features the driver negotiated and the device configuration it
works with (mtu, mac). One function per row: it returns a :class:`Finding` when the buffer gave the row an
opportunity (held or not), None when it did not, so a row is only claimed when something was really looked at.

The header is read with :mod:`backend.virtio.net_hdr`. Where the frame starts (the header size the driver used,
NET-DRV-15/56) is found from the frame itself: the offset after which the bytes read as an Ethernet frame whose
IPv4/IPv6/ARP header agrees with the frame's length. A frame of another kind judges no header size.

:class:`NetBufferMonitor` gathers the findings of a run; the ring monitors feed it (``SplitRingMonitor.net``,
``PackedRingMonitor.net``). It never writes and never touches the device.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from backend.virtio.features import DeviceStatus, NetF, has
from backend.virtio.net_hdr import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    F_RSC_INFO,
    F_UDP_TUNNEL_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    GSO_UDP_TUNNEL,
    HDR_SIZE,
    HDR_SIZE_HASH,
    HDR_SIZE_OUT_NET,
    HDR_SIZE_TUNNEL,
    NetHdr,
    hdr_size,
)
from backend.virtio.pci_regs import NetCfg
from testbenches.monitor.virtio_pci_rules import Event, Finding, VirtioPciDriverMonitor, verdicts_of

ETH_HLEN = 14
VLAN_HLEN = 4
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
VLAN_TPIDS = (0x8100, 0x88A8)
ETH_ZLEN = 60  # a shorter frame is padded to this: an L3 length may end before the frame does
#: Every header size a driver could have used (10: the legacy header without num_buffers).
CANDIDATE_HDR_SIZES = (10, HDR_SIZE, HDR_SIZE_HASH, HDR_SIZE_TUNNEL, HDR_SIZE_OUT_NET)
#: How much of a transmit buffer is read: the longest header and the longest frame (checksums cover all of it).
TX_PEEK = HDR_SIZE_OUT_NET + ETH_HLEN + VLAN_HLEN * 2 + 0xFFFF
IPPROTO_TCP, IPPROTO_UDP = 6, 17
#: Receive buffer minimums without VIRTIO_NET_F_MRG_RXBUF (5.1.9.3.1): with guest GSO, without; with HASH_REPORT.
RX_MIN_GSO, RX_MIN_GSO_HASH = 65601, 65609
RX_MIN, RX_MIN_HASH = 1526, 1534
HOST_GSO = (NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_USO, NetF.HOST_UFO)
GUEST_GSO = (NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_UFO, NetF.GUEST_USO4, NetF.GUEST_USO6)
#: gso_type values other than NONE and the feature that allows each (NET-DRV-20..23).
GSO_FEATURE = {GSO_TCPV4: (NetF.HOST_TSO4, "NET-DRV-20"), GSO_TCPV6: (NetF.HOST_TSO6, "NET-DRV-21"),
               GSO_UDP: (NetF.HOST_UFO, "NET-DRV-22"), GSO_UDP_L4: (NetF.HOST_USO, "NET-DRV-23")}


@dataclass(frozen=True)
class NetConfig:
    """What the driver works with beyond its features: the device's mtu and mac fields (None where the feature
    was not negotiated, or the field was not read)."""

    mtu: int | None = None
    mac: bytes | None = None


@dataclass(frozen=True)
class TxBuffer:
    """A transmit buffer's device-readable bytes (up to :data:`TX_PEEK`, the longest frame) and their length."""

    head: bytes
    length: int
    features: int
    config: NetConfig
    where: str

    @property
    def hdr_size(self) -> int:
        """The header size the negotiated features give."""
        return hdr_size(self.features)

    @property
    def hdr(self) -> NetHdr | None:
        return NetHdr.unpack(self.head) if len(self.head) >= HDR_SIZE else None

    @property
    def gso(self) -> int:
        """gso_type without its ECN and UDP-tunnel modifier bits."""
        hdr = self.hdr
        return hdr.gso_type & ~(GSO_ECN | GSO_UDP_TUNNEL) if hdr else GSO_NONE

    @property
    def frame_start(self) -> int:
        """Where the frame starts: after the negotiated header, unless the frame reads whole only after another
        size (then that one: a wrong header size is NET-DRV-15/56's, the frame rows judge the frame sent)."""
        found = frame_offsets(self)
        return self.hdr_size if self.hdr_size in found or not found else found[0]

    @property
    def frame_length(self) -> int:
        return self.length - self.frame_start

    @property
    def frame_head(self) -> bytes:
        return self.head[self.frame_start:]


@dataclass(frozen=True)
class RxBuffer:
    """A receive buffer: the device-writable bytes of one chain (or list)."""

    size: int
    features: int
    config: NetConfig
    where: str


def _l3_fits(eth: bytes, length: int) -> bool:
    """Whether ``eth`` (the start of a frame of ``length`` bytes) reads as Ethernet with an IPv4, IPv6 or ARP header
    whose own length agrees with the frame's (a frame of the minimum size may be padded past it)."""
    off = 12
    while len(eth) >= off + 2 and struct.unpack_from("!H", eth, off)[0] in VLAN_TPIDS:
        off += VLAN_HLEN
    if len(eth) < off + 2:
        return False
    ethertype = struct.unpack_from("!H", eth, off)[0]
    l3, room = eth[off + 2:], length - off - 2

    def agrees(l3_len: int) -> bool:
        return l3_len == room or (length <= ETH_ZLEN and l3_len < room)

    if ethertype == ETH_P_IP and len(l3) >= 20:
        return l3[0] >> 4 == 4 and l3[0] & 0xF >= 5 and agrees(struct.unpack_from("!H", l3, 2)[0])
    if ethertype == ETH_P_IPV6 and len(l3) >= 40:
        return l3[0] >> 4 == 6 and agrees(40 + struct.unpack_from("!H", l3, 4)[0])
    if ethertype == ETH_P_ARP and len(l3) >= 8:
        return l3[:6] == b"\x00\x01\x08\x00\x06\x04" and agrees(28)
    return False


def frame_offsets(tx: TxBuffer) -> list[int]:
    """The header sizes after which the buffer's bytes read as a whole frame (see :func:`_l3_fits`)."""
    return [n for n in CANDIDATE_HDR_SIZES if n < len(tx.head) and _l3_fits(tx.head[n:], tx.length - n)]


def ones_sum(data: bytes) -> int:
    """The folded 16-bit ones' complement sum of ``data`` (0xffff over a field holding its own checksum)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _l3(eth: bytes) -> tuple[int, bytes]:
    """(ethertype, the bytes after the Ethernet header and any VLAN tags)."""
    off = 12
    while len(eth) >= off + 2 and struct.unpack_from("!H", eth, off)[0] in VLAN_TPIDS:
        off += VLAN_HLEN
    if len(eth) < off + 2:
        return 0, b""
    ethertype: int = struct.unpack_from("!H", eth, off)[0]
    return ethertype, eth[off + 2:]


def checksum_errors(eth: bytes) -> list[str] | None:
    """The checksums of an IPv4 or IPv6 frame that are not complete and correct (the IPv4 header's, a TCP or UDP
    one over its pseudo-header; a zero UDP checksum over IPv4 means none); None for a frame of another kind."""
    ethertype, l3 = _l3(eth)
    if ethertype == ETH_P_IP and len(l3) >= 20 and l3[0] >> 4 == 4:
        ihl, total = (l3[0] & 0xF) * 4, struct.unpack_from("!H", l3, 2)[0]
        errors = [] if ones_sum(l3[:ihl]) == 0xFFFF else [f"IPv4 header checksum {l3[10:12].hex()}"]
        fragment = struct.unpack_from("!H", l3, 6)[0] & 0x3FFF
        proto, seg = l3[9], l3[ihl:total]
        pseudo = l3[12:20] + bytes([0, proto]) + struct.pack("!H", len(seg))
        if not fragment and not (proto == IPPROTO_UDP and seg[6:8] == b"\0\0"):
            errors += _l4_errors(proto, pseudo, seg)
        return errors
    if ethertype == ETH_P_IPV6 and len(l3) >= 40 and l3[0] >> 4 == 6:
        proto, seg = l3[6], l3[40:40 + struct.unpack_from("!H", l3, 4)[0]]
        return _l4_errors(proto, l3[8:40] + struct.pack("!I", len(seg)) + bytes([0, 0, 0, proto]), seg)
    return None


def _l4_errors(proto: int, pseudo: bytes, seg: bytes) -> list[str]:
    at = {IPPROTO_TCP: 16, IPPROTO_UDP: 6}.get(proto)
    if at is None or len(seg) < at + 2:
        return []
    if ones_sum(pseudo + seg) == 0xFFFF:
        return []
    return [f"{'TCP' if proto == IPPROTO_TCP else 'UDP'} checksum {seg[at:at + 2].hex()}"]


def _vlan_tagged(tx: TxBuffer) -> bool:
    eth = tx.frame_head
    return len(eth) >= 14 and struct.unpack_from("!H", eth, 12)[0] in VLAN_TPIDS


# --- transmit header rows (5.1.9.2.1) -------------------------------------------------------------------------


def net_drv_15(tx: TxBuffer) -> Finding | None:
    """The transmit header has the size of the receive header under the negotiated features."""
    found = frame_offsets(tx)
    if not found:
        return None
    return Finding("NET-DRV-15", tx.hdr_size in found,
                   f"{tx.where}: the frame starts after {found} header bytes; the receive header under the "
                   f"negotiated features is {tx.hdr_size}")


def net_drv_56(tx: TxBuffer) -> Finding | None:
    """The driver sizes struct virtio_net_hdr by the negotiated features (32 / 24 / 20 / 12 bytes)."""
    found = frame_offsets(tx)
    if not found:
        return None
    return Finding("NET-DRV-56", tx.hdr_size in found,
                   f"{tx.where}: header of {found} bytes before the frame, {tx.hdr_size} by the negotiated features")


def net_drv_16(tx: TxBuffer) -> Finding | None:
    """num_buffers is 0 in every transmit header."""
    hdr = tx.hdr
    if hdr is None:
        return None
    return Finding("NET-DRV-16", hdr.num_buffers == 0, f"{tx.where}: num_buffers {hdr.num_buffers}")


def net_drv_17(tx: TxBuffer) -> Finding | None:
    """Without VIRTIO_NET_F_CSUM, flags is 0."""
    hdr = tx.hdr
    if hdr is None or has(tx.features, NetF.CSUM):
        return None
    return Finding("NET-DRV-17", hdr.flags == 0, f"{tx.where}: flags {hdr.flags:#x} without VIRTIO_NET_F_CSUM")


def _gso_allowed(tx: TxBuffer, gso: int) -> Finding | None:
    feature, rid = GSO_FEATURE[gso]
    if tx.hdr is None or has(tx.features, feature):
        return None
    return Finding(rid, tx.gso != gso, f"{tx.where}: gso_type {tx.hdr.gso_type:#x} without "
                   f"VIRTIO_NET_F_{NetF(feature).name}")


def net_drv_20(tx: TxBuffer) -> Finding | None:
    """GSO_TCPV4 only with VIRTIO_NET_F_HOST_TSO4."""
    return _gso_allowed(tx, GSO_TCPV4)


def net_drv_21(tx: TxBuffer) -> Finding | None:
    """GSO_TCPV6 only with VIRTIO_NET_F_HOST_TSO6."""
    return _gso_allowed(tx, GSO_TCPV6)


def net_drv_22(tx: TxBuffer) -> Finding | None:
    """GSO_UDP only with VIRTIO_NET_F_HOST_UFO."""
    return _gso_allowed(tx, GSO_UDP)


def net_drv_23(tx: TxBuffer) -> Finding | None:
    """GSO_UDP_L4 only with VIRTIO_NET_F_HOST_USO."""
    return _gso_allowed(tx, GSO_UDP_L4)


def net_drv_26(tx: TxBuffer) -> Finding | None:
    """The UDP-tunnel gso_type bits only with VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO."""
    hdr = tx.hdr
    if hdr is None or has(tx.features, NetF.HOST_UDP_TUNNEL_GSO):
        return None
    return Finding("NET-DRV-26", not hdr.gso_type & GSO_UDP_TUNNEL,
                   f"{tx.where}: gso_type {hdr.gso_type:#x} has a UDP-tunnel bit without HOST_UDP_TUNNEL_GSO")


def net_drv_31(tx: TxBuffer) -> Finding | None:
    """A tunnel bit is never combined with GSO_UDP."""
    hdr = tx.hdr
    if hdr is None:
        return None
    return Finding("NET-DRV-31", not (hdr.gso_type & GSO_UDP_TUNNEL and tx.gso == GSO_UDP),
                   f"{tx.where}: gso_type {hdr.gso_type:#x} combines a UDP-tunnel bit with GSO_UDP")


def net_drv_32(tx: TxBuffer) -> Finding | None:
    """TUNNEL_IPV4 and TUNNEL_IPV6 are never set together."""
    hdr = tx.hdr
    if hdr is None:
        return None
    return Finding("NET-DRV-32", hdr.gso_type & GSO_UDP_TUNNEL != GSO_UDP_TUNNEL,
                   f"{tx.where}: gso_type {hdr.gso_type:#x} has both UDP_TUNNEL_IPV4 and UDP_TUNNEL_IPV6")


def net_drv_33(tx: TxBuffer) -> Finding | None:
    """VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM only together with a tunnel bit."""
    hdr = tx.hdr
    if hdr is None:
        return None
    return Finding("NET-DRV-33", not hdr.flags & F_UDP_TUNNEL_CSUM or bool(hdr.gso_type & GSO_UDP_TUNNEL),
                   f"{tx.where}: flags {hdr.flags:#x} has UDP_TUNNEL_CSUM, gso_type {hdr.gso_type:#x} no tunnel bit")


def net_drv_38(tx: TxBuffer) -> Finding | None:
    """Without HOST_TSO4, HOST_TSO6, HOST_USO and HOST_UFO, gso_type is GSO_NONE."""
    hdr = tx.hdr
    if hdr is None or any(has(tx.features, f) for f in HOST_GSO):
        return None
    return Finding("NET-DRV-38", hdr.gso_type == GSO_NONE,
                   f"{tx.where}: gso_type {hdr.gso_type:#x} with no host GSO feature negotiated")


def net_drv_39(tx: TxBuffer) -> Finding | None:
    """Whenever gso_type is not NONE, NEEDS_CSUM is set too."""
    hdr = tx.hdr
    if hdr is None or tx.gso == GSO_NONE:
        return None
    return Finding("NET-DRV-39", bool(hdr.flags & F_NEEDS_CSUM),
                   f"{tx.where}: gso_type {hdr.gso_type:#x} with flags {hdr.flags:#x} (no NEEDS_CSUM)")


def net_drv_49(tx: TxBuffer) -> Finding | None:
    """DATA_VALID and RSC_INFO are never set in a transmit header."""
    hdr = tx.hdr
    if hdr is None:
        return None
    return Finding("NET-DRV-49", not hdr.flags & (F_DATA_VALID | F_RSC_INFO),
                   f"{tx.where}: flags {hdr.flags:#x} has DATA_VALID or RSC_INFO")


def net_drv_50(tx: TxBuffer) -> Finding | None:
    """DATA_VALID is never combined with a UDP-tunnel gso_type bit."""
    hdr = tx.hdr
    if hdr is None:
        return None
    return Finding("NET-DRV-50", not (hdr.flags & F_DATA_VALID and hdr.gso_type & GSO_UDP_TUNNEL),
                   f"{tx.where}: flags {hdr.flags:#x} has DATA_VALID with gso_type {hdr.gso_type:#x}")


def net_drv_18(tx: TxBuffer) -> Finding | None:
    """Without VIRTIO_NET_F_CSUM, transmitted packets carry complete, correct checksums (SHOULD)."""
    if tx.hdr is None or has(tx.features, NetF.CSUM) or len(tx.head) < tx.length:
        return None
    errors = checksum_errors(tx.frame_head)
    if errors is None:
        return None
    return Finding("NET-DRV-18", not errors, f"{tx.where}: without VIRTIO_NET_F_CSUM, {', '.join(errors)} "
                   "not complete")


def net_drv_09(tx: TxBuffer) -> Finding | None:
    """With VIRTIO_NET_F_MTU, no non-GSO frame is longer than mtu plus the link-layer header."""
    mtu = tx.config.mtu
    if tx.hdr is None or mtu is None or not has(tx.features, NetF.MTU) or tx.gso != GSO_NONE:
        return None
    limit = mtu + ETH_HLEN + (VLAN_HLEN if _vlan_tagged(tx) else 0)
    return Finding("NET-DRV-09", tx.frame_length <= limit,
                   f"{tx.where}: {tx.frame_length}-byte frame, mtu {mtu} allows {limit}")


def net_drv_03(tx: TxBuffer) -> Finding | None:
    """With VIRTIO_NET_F_MAC the driver's hardware address is the mac field: the source of what it sends."""
    mac = tx.config.mac
    src = tx.frame_head[6:12]
    if mac is None or not has(tx.features, NetF.MAC) or len(src) < 6:
        return None
    return Finding("NET-DRV-03", src == mac, f"{tx.where}: source MAC {src.hex(':')}, the mac field is "
                   f"{mac.hex(':')}")


def net_drv_04(tx: TxBuffer) -> Finding | None:
    """Without VIRTIO_NET_F_MAC the driver's address is locally administered (and unicast)."""
    src = tx.frame_head[6:12]
    if has(tx.features, NetF.MAC) or len(src) < 6:
        return None
    return Finding("NET-DRV-04", src[0] & 0x03 == 0x02,
                   f"{tx.where}: source MAC {src.hex(':')} without VIRTIO_NET_F_MAC is not a locally administered "
                   "unicast address")


TX_RULES: tuple[Callable[[TxBuffer], Finding | None], ...] = (
    net_drv_03, net_drv_04, net_drv_09, net_drv_15, net_drv_16, net_drv_17, net_drv_18, net_drv_20, net_drv_21,
    net_drv_22, net_drv_23, net_drv_26, net_drv_31, net_drv_32, net_drv_33, net_drv_38, net_drv_39, net_drv_49,
    net_drv_50, net_drv_56)


# --- receive buffer rows (5.1.4.2, 5.1.9.3.1) -----------------------------------------------------------------


def net_drv_08(rx: RxBuffer) -> Finding | None:
    """With VIRTIO_NET_F_MTU (and without MRG_RXBUF, where one buffer holds one packet), a receive buffer holds a
    non-GSO packet of mtu plus link-layer header behind the header."""
    mtu = rx.config.mtu
    if mtu is None or not has(rx.features, NetF.MTU) or has(rx.features, NetF.MRG_RXBUF):
        return None
    need = hdr_size(rx.features) + mtu + ETH_HLEN
    return Finding("NET-DRV-08", rx.size >= need, f"{rx.where}: {rx.size}-byte receive buffer, mtu {mtu} needs {need}")


def net_drv_53(rx: RxBuffer) -> Finding | None:
    """Without MRG_RXBUF but with guest GSO, each receive buffer is at least 65601 bytes (65609 with HASH_REPORT)."""
    if has(rx.features, NetF.MRG_RXBUF) or not any(has(rx.features, f) for f in GUEST_GSO):
        return None
    need = RX_MIN_GSO_HASH if has(rx.features, NetF.HASH_REPORT) else RX_MIN_GSO
    return Finding("NET-DRV-53", rx.size >= need, f"{rx.where}: {rx.size}-byte receive buffer with guest GSO, "
                   f"{need} needed")


def net_drv_54(rx: RxBuffer) -> Finding | None:
    """Without MRG_RXBUF and guest GSO, each receive buffer is at least 1526 bytes (1534 with HASH_REPORT)."""
    if has(rx.features, NetF.MRG_RXBUF) or any(has(rx.features, f) for f in GUEST_GSO):
        return None
    need = RX_MIN_HASH if has(rx.features, NetF.HASH_REPORT) else RX_MIN
    return Finding("NET-DRV-54", rx.size >= need, f"{rx.where}: {rx.size}-byte receive buffer, {need} needed")


def net_drv_55(rx: RxBuffer) -> Finding | None:
    """With MRG_RXBUF, every receive buffer is at least as large as struct virtio_net_hdr."""
    if not has(rx.features, NetF.MRG_RXBUF):
        return None
    need = hdr_size(rx.features)
    return Finding("NET-DRV-55", rx.size >= need, f"{rx.where}: {rx.size}-byte receive buffer, header is {need}")


RX_RULES: tuple[Callable[[RxBuffer], Finding | None], ...] = (net_drv_08, net_drv_53, net_drv_54, net_drv_55)

#: The rows this module judges on buffers (the offload rows of :mod:`.net_offload_rules` are judged with them, and
#: listed there: NET_DRV_OFFLOAD_ROWS).
NET_DRV_BUFFER_ROWS = tuple(sorted({f.__name__.replace("net_drv_", "NET-DRV-") for f in (*TX_RULES, *RX_RULES)}))


def judge_tx(tx: TxBuffer) -> list[Finding]:
    """Every transmit row: the header and frame rows here, the offload rows of :mod:`.net_offload_rules` (which
    builds on this module, hence imported here)."""
    from testbenches.monitor.net_offload_rules import judge_offload

    return [f for rule in TX_RULES if (f := rule(tx)) is not None] + judge_offload(tx)


def judge_rx(rx: RxBuffer) -> list[Finding]:
    return [f for rule in RX_RULES if (f := rule(rx)) is not None]


# --- register rows: the device configuration and the feature choices (5.1.4.2) ---------------------------------


def _runs(ev: list[Event]) -> list[list[Event]]:
    """The trace's initialisation runs, each from a reset write on."""
    runs: list[list[Event]] = []
    for e in ev:
        if not runs or (e.kind == "status_w" and e.value == 0):
            runs.append([])
        runs[-1].append(e)
    return runs


def net_drv_01(ev: list[Event]) -> list[Finding]:
    """The driver never writes a field of the network device configuration: every initialisation run that reached
    DRIVER_OK is an opportunity, every device-config write a failure."""
    out: list[Finding] = []
    for run in _runs(ev):
        writes = [e for e in run if e.kind == "devcfg_w"]
        out += [Finding("NET-DRV-01", False, f"access #{e.seq}: wrote {e.value:#x} ({e.size} bytes) at device "
                        f"config {e.offset:#x}") for e in writes]
        if not writes and any(e.kind == "status_w" and e.value & DeviceStatus.DRIVER_OK for e in run):
            out.append(Finding("NET-DRV-01", True, ""))
    return out


def _taken_when_offered(rid: str, feature: NetF, offered: int, acked: int) -> Finding | None:
    if not has(offered, feature):
        return None
    return Finding(rid, has(acked, feature), f"VIRTIO_NET_F_{feature.name} offered, not acknowledged "
                   f"(acked {acked:#x})")


def _not_without_ctrl_vq(rid: str, feature: NetF, offered: int, acked: int) -> Finding | None:
    if not has(offered, feature):
        return None
    return Finding(rid, not has(acked, feature) or has(acked, NetF.CTRL_VQ),
                   f"VIRTIO_NET_F_{feature.name} acknowledged without VIRTIO_NET_F_CTRL_VQ (acked {acked:#x})")


def net_drv_02(offered: int, acked: int) -> Finding | None:
    """The driver negotiates VIRTIO_NET_F_MAC when the device offers it (SHOULD)."""
    return _taken_when_offered("NET-DRV-02", NetF.MAC, offered, acked)


def net_drv_07(offered: int, acked: int) -> Finding | None:
    """The driver negotiates VIRTIO_NET_F_MTU when the device offers it (SHOULD)."""
    return _taken_when_offered("NET-DRV-07", NetF.MTU, offered, acked)


def net_drv_10(offered: int, acked: int) -> Finding | None:
    """The driver negotiates VIRTIO_NET_F_STANDBY when the device offers it (SHOULD)."""
    return _taken_when_offered("NET-DRV-10", NetF.STANDBY, offered, acked)


def net_drv_13(offered: int, acked: int) -> Finding | None:
    """No VIRTIO_NET_F_HASH_REPORT without VIRTIO_NET_F_CTRL_VQ (SHOULD NOT)."""
    return _not_without_ctrl_vq("NET-DRV-13", NetF.HASH_REPORT, offered, acked)


def net_drv_14(offered: int, acked: int) -> Finding | None:
    """No VIRTIO_NET_F_CTRL_RX_EXTRA without VIRTIO_NET_F_CTRL_VQ (SHOULD NOT)."""
    return _not_without_ctrl_vq("NET-DRV-14", NetF.CTRL_RX_EXTRA, offered, acked)


FEATURE_RULES: tuple[Callable[[int, int], Finding | None], ...] = (net_drv_02, net_drv_07, net_drv_10, net_drv_13,
                                                                   net_drv_14)
NET_DRV_REGISTER_ROWS = ("NET-DRV-01", *(f.__name__.replace("net_drv_", "NET-DRV-") for f in FEATURE_RULES))


def judge_negotiation(offered: int, acked: int) -> list[Finding]:
    """The feature choice rows on one negotiation: the offer the driver read, the bits it wrote at FEATURES_OK."""
    return [f for rule in FEATURE_RULES if (f := rule(offered, acked)) is not None]


def register_findings(monitor: VirtioPciDriverMonitor) -> list[Finding]:
    """The NET-DRV rows of a driver's register trace: no device-config writes, and the feature choices at every
    FEATURES_OK (the offer as the driver read it, what it wrote to driver_feature)."""
    ev = monitor.events()
    out = net_drv_01(ev)
    for offered, acked in monitor.feature_timeline(ev)[2]:
        out += judge_negotiation(offered, acked)
    return out


ConfigRead = Callable[[int, int], bytes]


@dataclass
class NetBufferMonitor:
    """The NET-DRV findings of a run, fed by a ring monitor with each buffer made available: a chain's
    (address, length, device-writable) segments on a queue, under the driver's features. Which queue is which:
    transmitq N is 2N+1, receiveq N is 2N, the control queue (with CTRL_VQ) comes after the queue pairs."""

    read: Callable[[int, int], bytes]
    #: The device configuration as the device shows it (not through the trace): mtu, mac, max_virtqueue_pairs.
    read_config: ConfigRead | None = None
    findings: list[Finding] = field(default_factory=list)
    tx_buffers: int = 0
    rx_buffers: int = 0
    #: Buffers that could not be read (planted addresses): not judged.
    unreadable: list[str] = field(default_factory=list)
    _config: NetConfig | None = None
    _control_queue: int | None = None

    def reset(self) -> None:
        """A device reset: the configuration is read again under the next features."""
        self._config = None
        self._control_queue = None

    def verdicts(self) -> dict[str, tuple[bool, list[str]]]:
        return verdicts_of(self.findings)

    def seen(self) -> str:
        return f"{self.tx_buffers} transmit and {self.rx_buffers} receive buffer(s) looked at"

    def _cfg(self, offset: int, size: int) -> int | None:
        if self.read_config is None:
            return None
        return int.from_bytes(self.read_config(offset, size), "little")

    def config(self, features: int) -> NetConfig:
        if self._config is None:
            mtu = self._cfg(NetCfg.MTU, 2) if has(features, NetF.MTU) else None
            mac = None
            if has(features, NetF.MAC) and self.read_config is not None:
                mac = bytes(self.read_config(NetCfg.MAC + i, 1)[0] for i in range(6))
            self._config = NetConfig(mtu, mac)
            pairs = 1
            if has(features, NetF.MQ) or has(features, NetF.RSS):
                pairs = self._cfg(NetCfg.MAX_VIRTQUEUE_PAIRS, 2) or 1
            self._control_queue = 2 * pairs if has(features, NetF.CTRL_VQ) else None
        return self._config

    def buffer(self, queue: int, segments: Sequence[tuple[int, int, bool]], features: int, where: str) -> None:
        """One buffer made available on ``queue``: judged as a transmit or a receive buffer by the queue's role."""
        try:
            config = self.config(features)
            if queue == self._control_queue:
                return
            if queue % 2:
                self._tx(segments, features, config, where)
            else:
                size = sum(n for _a, n, w in segments if w)
                self.rx_buffers += 1
                self.findings.extend(judge_rx(RxBuffer(size, features, config, where)))
        except Exception as exc:  # never disturb the ring monitor: a planted buffer may be unreadable
            self.unreadable.append(f"{where}: not judged: {exc}")

    def _tx(self, segments: Sequence[tuple[int, int, bool]], features: int, config: NetConfig, where: str) -> None:
        readable = [(a, n) for a, n, w in segments if not w]
        head = b""
        for addr, n in readable:
            if len(head) >= TX_PEEK:
                break
            head += self.read(addr, min(n, TX_PEEK - len(head)))
        self.tx_buffers += 1
        self.findings.extend(judge_tx(TxBuffer(head, sum(n for _a, n in readable), features, config, where)))


__all__ = ["NET_DRV_BUFFER_ROWS", "NET_DRV_REGISTER_ROWS", "NetBufferMonitor", "NetConfig", "RxBuffer", "TxBuffer",
           "checksum_errors", "judge_negotiation", "judge_rx", "judge_tx", "ones_sum", "register_findings"]
