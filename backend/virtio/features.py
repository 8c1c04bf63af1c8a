"""Feature bits, device status bits and the feature dependency tables (virtio 1.4 2.1, 2.2, 6, 5.1.3)."""

from __future__ import annotations

from enum import IntEnum, IntFlag


class DeviceStatus(IntFlag):
    """device_status bits (2.1)."""

    RESET = 0
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    SUSPEND = 16
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


class F(IntEnum):
    """Transport-independent (reserved) feature bits, chapter 6."""

    INDIRECT_DESC = 28
    EVENT_IDX = 29
    VERSION_1 = 32
    ACCESS_PLATFORM = 33
    RING_PACKED = 34
    IN_ORDER = 35
    ORDER_PLATFORM = 36
    SR_IOV = 37
    NOTIFICATION_DATA = 38
    NOTIF_CONFIG_DATA = 39
    RING_RESET = 40
    ADMIN_VQ = 41
    DEVICE_STATS = 42
    SUSPEND = 43


class NetF(IntEnum):
    """virtio-net feature bits (5.1.3)."""

    CSUM = 0
    GUEST_CSUM = 1
    CTRL_GUEST_OFFLOADS = 2
    MTU = 3
    MAC = 5
    GUEST_TSO4 = 7
    GUEST_TSO6 = 8
    GUEST_ECN = 9
    GUEST_UFO = 10
    HOST_TSO4 = 11
    HOST_TSO6 = 12
    HOST_ECN = 13
    HOST_UFO = 14
    MRG_RXBUF = 15
    STATUS = 16
    CTRL_VQ = 17
    CTRL_RX = 18
    CTRL_VLAN = 19
    CTRL_RX_EXTRA = 20
    GUEST_ANNOUNCE = 21
    MQ = 22
    CTRL_MAC_ADDR = 23
    DEVICE_STATS = 50
    HASH_TUNNEL = 51
    VQ_NOTF_COAL = 52
    NOTF_COAL = 53
    GUEST_USO4 = 54
    GUEST_USO6 = 55
    HOST_USO = 56
    HASH_REPORT = 57
    GUEST_HDRLEN = 59
    RSS = 60
    RSC_EXT = 61
    STANDBY = 62
    SPEED_DUPLEX = 63
    RSS_CONTEXT = 64
    GUEST_UDP_TUNNEL_GSO = 65
    GUEST_UDP_TUNNEL_GSO_CSUM = 66
    HOST_UDP_TUNNEL_GSO = 67
    HOST_UDP_TUNNEL_GSO_CSUM = 68
    OUT_NET_HEADER = 69
    IPSEC = 70


def bit(n: int) -> int:
    return 1 << int(n)


def bits(*ns: int) -> int:
    mask = 0
    for n in ns:
        mask |= 1 << int(n)
    return mask


def has(features: int, n: int) -> bool:
    return bool(features >> int(n) & 1)


#: Reserved/transport bits this spec version defines for a PCI device (chapter 6).
TRANSPORT_BITS_PCI = bits(*F)
#: virtio-net device-type bits this spec version defines (5.1.3).
NET_BITS = bits(*NetF)
#: Every bit a virtio-net device over PCI may offer (FEAT-DEV-04).
DEFINED_NET_PCI = TRANSPORT_BITS_PCI | NET_BITS


class Requires:
    """One dependency row: ``feature`` needs all of ``all_of`` and at least one of ``any_of``."""

    __slots__ = ("all_of", "any_of", "feature", "req_id")

    def __init__(self, feature: int, all_of: tuple[int, ...] = (), any_of: tuple[int, ...] = (),
                 req_id: str = "") -> None:
        self.feature = int(feature)
        self.all_of = tuple(int(x) for x in all_of)
        self.any_of = tuple(int(x) for x in any_of)
        self.req_id = req_id

    def violated_by(self, features: int) -> bool:
        if not has(features, self.feature):
            return False
        if any(not has(features, b) for b in self.all_of):
            return True
        return bool(self.any_of) and not any(has(features, b) for b in self.any_of)


def _each(features: tuple[int, ...], **kw: object) -> list[Requires]:
    return [Requires(f, **kw) for f in features]  # type: ignore[arg-type]


#: 5.1.3.1 dependency table; ``req_id`` is the device-side row (NETFEAT-DEV-nn).
NET_DEPENDENCIES: tuple[Requires, ...] = tuple(
    _each((NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_UFO, NetF.GUEST_USO4, NetF.GUEST_USO6),
          all_of=(NetF.GUEST_CSUM,), req_id="NETFEAT-DEV-01")
    + [Requires(NetF.GUEST_ECN, any_of=(NetF.GUEST_TSO4, NetF.GUEST_TSO6), req_id="NETFEAT-DEV-02"),
       Requires(NetF.GUEST_UDP_TUNNEL_GSO,
                all_of=(NetF.GUEST_TSO4, NetF.GUEST_TSO6, NetF.GUEST_USO4, NetF.GUEST_USO6),
                req_id="NETFEAT-DEV-03"),
       Requires(NetF.GUEST_UDP_TUNNEL_GSO_CSUM, all_of=(NetF.GUEST_UDP_TUNNEL_GSO,), req_id="NETFEAT-DEV-04")]
    + _each((NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_UFO, NetF.HOST_USO),
            all_of=(NetF.CSUM,), req_id="NETFEAT-DEV-05")
    + [Requires(NetF.HOST_ECN, any_of=(NetF.HOST_TSO4, NetF.HOST_TSO6), req_id="NETFEAT-DEV-06"),
       Requires(NetF.HOST_UDP_TUNNEL_GSO, all_of=(NetF.HOST_TSO4, NetF.HOST_TSO6, NetF.HOST_USO),
                req_id="NETFEAT-DEV-07"),
       Requires(NetF.HOST_UDP_TUNNEL_GSO_CSUM, all_of=(NetF.HOST_UDP_TUNNEL_GSO,), req_id="NETFEAT-DEV-08")]
    + _each((NetF.CTRL_RX, NetF.CTRL_VLAN, NetF.GUEST_ANNOUNCE, NetF.MQ, NetF.CTRL_MAC_ADDR,
             NetF.NOTF_COAL, NetF.VQ_NOTF_COAL, NetF.RSS), all_of=(NetF.CTRL_VQ,), req_id="NETFEAT-DEV-09")
    + [Requires(NetF.RSC_EXT, any_of=(NetF.HOST_TSO4, NetF.HOST_TSO6), req_id="NETFEAT-DEV-10"),
       Requires(NetF.HASH_TUNNEL, all_of=(NetF.CTRL_VQ,), any_of=(NetF.RSS, NetF.HASH_REPORT),
                req_id="NETFEAT-DEV-11"),
       Requires(NetF.RSS_CONTEXT, all_of=(NetF.CTRL_VQ, NetF.RSS), req_id="NETFEAT-DEV-12")]
)

#: Generic dependencies (chapter 6): NOTIF_CONFIG_DATA is meaningless without a notify mechanism, etc.
GENERIC_DEPENDENCIES: tuple[Requires, ...] = ()


#: Device-configuration rows (5.1.4.1) that constrain an offer as the dependency table does: these features only with
#: VIRTIO_NET_F_CTRL_VQ.
NEEDS_CTRL_VQ: dict[str, NetF] = {"NET-DEV-13": NetF.HASH_REPORT, "NET-DEV-14": NetF.CTRL_RX_EXTRA}


def offer_violations(features: int) -> list[str]:
    """What a device offering ``features`` breaks: the dependency tables' rows and :data:`NEEDS_CTRL_VQ`, each as
    'FEATURE (row id)'. A device must not make such an offer (FEAT-DEV-01, NETFEAT-DEV-01..12, NET-DEV-13/14)."""
    out = [f"{NetF(r.feature).name} ({r.req_id})" for r in dependency_violations(features)]
    return out + [f"{f.name} without CTRL_VQ ({rid})" for rid, f in NEEDS_CTRL_VQ.items()
                  if has(features, f) and not has(features, NetF.CTRL_VQ)]


def dependency_violations(features: int) -> list[Requires]:
    """Rows of the dependency tables that ``features`` breaks (FEAT-DEV-01 / FEAT-DRV-02)."""
    return [r for r in NET_DEPENDENCIES + GENERIC_DEPENDENCIES if r.violated_by(features)]


def describe(features: int) -> str:
    """Human-readable list of set bits, e.g. ``VERSION_1|EVENT_IDX|MAC``."""
    names = []
    for n in range(128):
        if has(features, n):
            try:
                names.append(F(n).name)
            except ValueError:
                try:
                    names.append(NetF(n).name)
                except ValueError:
                    names.append(f"bit{n}")
    return "|".join(names) or "0"
