"""The receive filter checks find bugs: each seeded bug of tests/broken_rx_filter.py fails exactly the ids of the
rule it breaks when ``test_net_rx_filter.py`` runs on it, and the stock model passes every id the module judges.
Also the model's receive filter itself: every receive path (per frame, burst, packed rings) filters, the commands
answer VIRTIO_NET_ERR without their feature or with a malformed payload."""

from __future__ import annotations

import pytest

from backend.virtio.features import F, NetF, bits
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_ANNOUNCE,
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI,
    VIRTIO_NET_CTRL_RX_NOBCAST,
    VIRTIO_NET_CTRL_RX_NOMULTI,
    VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_CTRL_VLAN_ADD,
    VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
)
from models.virtio_net.rx_filter import RX_FILTER_FEATURES, RxFilter, parse_mac_table
from tests.suite_runner import CHECKS, seeded_bug_proof

MODULE = CHECKS / "test_net_rx_filter.py"
#: variant class in tests/broken_rx_filter.py -> the ids its bug breaks: the module must fail exactly these
EXPECTED: dict[str, set[str]] = {
    "AllMultiBeatsNoMulti": {"NETCTRL-DEV-11"},
    "MacTableKeptAtReset": {"NETCTRL-DEV-17"},
    "VlanDelIgnored": {"NETCTRL-DEV-23"},
    "AnnounceNotCleared": {"NETCTRL-DEV-24"},
    "PromiscIgnored": {"NETCTRL-DEV-05", "NETCTRL-DEV-06"},
    # the MAC table never consulted: every row that needs it to filter (ALLUNI off, empty at reset, applied before the
    # command is used, the drop of other destinations)
    "MacFilterNotApplied": {"NETCTRL-DEV-08", "NETCTRL-DEV-17", "NETCTRL-DEV-18", "NETCTRL-DEV-20"},
    "VlanFilterInverted": {"NETCTRL-DEV-22", "NETCTRL-DEV-23"},
    "VlanAddAckedWithErr": {"NETCTRL-DEV-22"},
}
#: The ids the module judges on the stock model; all pass.
JUDGED = {f"NETCTRL-DEV-{n:02d}" for n in range(4, 25)} | {"NETFEAT-DEV-09", "NET-DEV-14"}

pytestmark = pytest.mark.timeout(300)


seeded_runs, test_stock_model_passes, test_seeded_bug_fails_exactly_its_ids = seeded_bug_proof(
    MODULE, "tests.broken_rx_filter", EXPECTED, JUDGED)


# --- the model's filter itself ---------------------------------------------------------------------------------

OWN = bytes.fromhex("020000000001")
ALL = RX_FILTER_FEATURES


def frame(dst: bytes, vid: int | None = None) -> bytes:
    tag = b"\x81\x00" + vid.to_bytes(2, "big") if vid is not None else b""
    return dst + OWN + tag + b"\x08\x00" + bytes(46)


def test_commands_need_their_feature_and_a_wellformed_payload() -> None:
    f = RxFilter(OWN)
    ctrl_vq = bits(NetF.CTRL_VQ)
    assert f.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\x01", ctrl_vq) == VIRTIO_NET_ERR
    assert f.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOBCAST, b"\x01",
                     bits(NetF.CTRL_VQ, NetF.CTRL_RX)) == VIRTIO_NET_ERR  # CTRL_RX_EXTRA missing
    assert f.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\x02", ALL) == VIRTIO_NET_ERR
    assert f.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"", ALL) == VIRTIO_NET_ERR
    assert f.command(VIRTIO_NET_CTRL_RX, 9, b"\x01", ALL) == VIRTIO_NET_ERR
    assert not f.promisc and not f.nobcast
    other = bytes.fromhex("02aa00000001")
    good = (1).to_bytes(4, "little") + other + (0).to_bytes(4, "little")
    assert parse_mac_table(good) == ([other], [])
    for bad in (good[:-1], good + b"\0", (2).to_bytes(4, "little") + other + bytes(4), b""):
        assert parse_mac_table(bad) is None
        assert f.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, bad, ALL) == VIRTIO_NET_ERR
    assert f.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, good, ctrl_vq) == VIRTIO_NET_ERR
    assert not f.unicast
    assert f.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, good, ALL) == VIRTIO_NET_OK
    assert f.unicast == {other}
    assert f.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, other, ctrl_vq) == VIRTIO_NET_ERR
    assert f.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, other[:5], ALL) == VIRTIO_NET_ERR
    assert f.command(VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, (4096).to_bytes(2, "little"), ALL) \
        == VIRTIO_NET_ERR
    assert f.command(VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, (7).to_bytes(2, "little"), ctrl_vq) \
        == VIRTIO_NET_ERR
    assert f.command(VIRTIO_NET_CTRL_ANNOUNCE, 0, b"", ctrl_vq) == VIRTIO_NET_ERR
    f.reset()
    assert not f.unicast and f.mac == OWN


def test_accept_rules() -> None:
    f = RxFilter(OWN)
    bcast, mcast, other = b"\xff" * 6, bytes.fromhex("01005e000001"), bytes.fromhex("02aa00000001")
    rx = bits(NetF.CTRL_VQ, NetF.CTRL_RX)
    assert all(f.accept(frame(d), 0) for d in (OWN, bcast, mcast, other))  # nothing negotiated: no filtering
    assert [f.accept(frame(d), rx) for d in (OWN, bcast, mcast, other)] == [True, True, False, False]
    f.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOMULTI, b"\x01", ALL)
    f.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI, b"\x01", ALL)
    assert not f.accept(frame(mcast), rx) and f.accept(frame(bcast), rx)
    f.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_NOBCAST, b"\x01", ALL)
    assert not f.accept(frame(bcast), rx)
    vlan = bits(NetF.CTRL_VQ, NetF.CTRL_VLAN)
    assert f.accept(frame(other), vlan)  # CTRL_RX not negotiated: addresses not filtered
    assert not f.accept(frame(other, 7), vlan) and f.accept(frame(OWN, 7), rx)
    f.command(VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, (7).to_bytes(2, "little"), ALL)
    assert f.accept(frame(other, 0x3007), vlan)  # priority bits are not the VID
    f.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\x01", ALL)
    assert all(f.accept(frame(d, 9), ALL) for d in (OWN, bcast, mcast, other))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("burst", [1, 8])
def test_every_receive_path_filters(packed: bool, burst: int) -> None:
    """Frames the filter rejects take no receive buffer, frame by frame, in a burst (the bulk path) and on packed
    rings; the accepted ones arrive."""
    from models.targets import loopback_device
    from models.virtio_net.device import DEFAULT_FEATURES, VirtioNetDevice
    from models.virtio_net.wire import FrameBatch
    from sim.memory import GuestMemory
    from testbenches.conformance.harness import Rig

    feats = DEFAULT_FEATURES | RX_FILTER_FEATURES
    if not packed:
        feats &= ~(1 << F.RING_PACKED)
    model = VirtioNetDevice(features=feats, max_queue_size=64)
    dev = loopback_device(model, "rx-filter")
    with GuestMemory.single(4 << 20, gpa=0x1_0000_0000) as mem:
        rig = Rig(dev, mem)
        try:
            rig.up(features=feats, exact=True, queue_size=64, rx_buffers=32,
                   layout="packed" if packed else "split")
            other = bytes.fromhex("02aa00000001")
            frames = [frame(OWN if i % 2 else other) for i in range(2 * burst)]
            batch = FrameBatch.of(frames)
            if burst == 1:
                for f in frames:
                    model.receive(f)
            else:
                model.receive_batch(batch)
            assert model.stats.rx_filtered == burst
            assert model.stats.rx_packets == burst
            assert model.stats.rx_bulk == (burst if burst > 1 and not packed else 0)  # the path meant
        finally:
            rig.close()
            dev.close()
