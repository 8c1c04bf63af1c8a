"""Receive filtering through the control virtqueue (5.1.9.5.1 - 5.1.9.5.4).

A configurable target is run as a variant offering VIRTIO_NET_F_CTRL_VQ, CTRL_RX, CTRL_RX_EXTRA, CTRL_VLAN,
CTRL_MAC_ADDR and GUEST_ANNOUNCE besides its own offer; another target is run as it is, and the rows of what it
does not offer read "not offered". Frames go out on transmitq1 and come back over the loopback wire; which of
them reach receiveq1 is the observation. Each round ends with a marker frame the state in force must deliver,
so a round waits for the marker instead of for frames that must not come:

- the RX modes: each command acknowledged VIRTIO_NET_OK with 0 and 1 (NETCTRL-DEV-04/08), promiscuous mode
  delivers everything, also with NOUNI, NOMULTI and NOBCAST on (05/06), all-multicast and all-unicast (07/09),
  NOMULTI, NOUNI and NOBCAST and what each wins over or not (10-16);
- the MAC filter table (PROMISC and ALLMULTI stated off first: the spec gives them no value at reset): empty
  after reset (17), in force as soon as MAC_TABLE_SET is used (18), frames matching
  neither the primary MAC nor the table dropped (20), the mac field already new when MAC_ADDR_SET is used (19);
- the VLAN filter table: every tagged frame delivered without CTRL_VLAN (21), with it only the VIDs in the table
  (22/23), also after VLAN_DEL;
- the announce request: VIRTIO_NET_S_ANNOUNCE, raised when the link comes back, is clear when ANNOUNCE_ACK is
  used (24).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

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
    VIRTIO_NET_OK,
)
from backend.virtio.pci_regs import VIRTIO_NET_S_ANNOUNCE, NetCfg
from testbenches.conformance.checks.test_net_ctrl_mq import Ack, MqRig
from testbenches.conformance.harness import QUIET_WAIT, Bench, Rig, need
from testbenches.conformance.offers import judge_offer
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout

RX_MODE_NAMES = {VIRTIO_NET_CTRL_RX_PROMISC: "PROMISC", VIRTIO_NET_CTRL_RX_ALLMULTI: "ALLMULTI",
                 VIRTIO_NET_CTRL_RX_ALLUNI: "ALLUNI", VIRTIO_NET_CTRL_RX_NOMULTI: "NOMULTI",
                 VIRTIO_NET_CTRL_RX_NOUNI: "NOUNI", VIRTIO_NET_CTRL_RX_NOBCAST: "NOBCAST"}

#: What the variant of a configurable target offers besides its own offer (each needs CTRL_VQ, NETFEAT-DEV-09).
RX_FILTER_FEATURES = bits(NetF.CTRL_VQ, NetF.CTRL_RX, NetF.CTRL_RX_EXTRA, NetF.CTRL_VLAN, NetF.CTRL_MAC_ADDR,
                          NetF.GUEST_ANNOUNCE)
MODE_IDS = ("NETCTRL-DEV-04", "NETCTRL-DEV-05", "NETCTRL-DEV-06", "NETCTRL-DEV-07", "NETCTRL-DEV-08",
            "NETCTRL-DEV-09", "NETCTRL-DEV-10", "NETCTRL-DEV-11", "NETCTRL-DEV-12", "NETCTRL-DEV-13",
            "NETCTRL-DEV-14", "NETCTRL-DEV-15", "NETCTRL-DEV-16")
#: The modes of VIRTIO_NET_F_CTRL_RX_EXTRA and the rows only they judge.
EXTRA_IDS = ("NETCTRL-DEV-06", "NETCTRL-DEV-08", "NETCTRL-DEV-09", "NETCTRL-DEV-10", "NETCTRL-DEV-11",
             "NETCTRL-DEV-12", "NETCTRL-DEV-13", "NETCTRL-DEV-14", "NETCTRL-DEV-15", "NETCTRL-DEV-16")
TABLE_IDS = ("NETCTRL-DEV-17", "NETCTRL-DEV-18", "NETCTRL-DEV-19", "NETCTRL-DEV-20")
VLAN_IDS = ("NETCTRL-DEV-21", "NETCTRL-DEV-22", "NETCTRL-DEV-23")
#: Judged on the offer the checks run with (testbenches/conformance/offers.py).
OFFER_IDS = ("NETFEAT-DEV-09", "NET-DEV-14")
ANNOUNCE_IDS = ("NETCTRL-DEV-24",)

#: Addresses the frames go to besides the device's own MAC: unicast ones nobody set, multicast ones, broadcast.
SRC = bytes.fromhex("02aa00000001")
OTHER_A = bytes.fromhex("02aa0000a001")
OTHER_B = bytes.fromhex("02aa0000b001")
NEW_MAC = bytes.fromhex("02aa0000c001")
MCAST_A = bytes.fromhex("01005e0000fb")
MCAST_B = bytes.fromhex("333300000001")
BROADCAST = b"\xff" * 6


def mac_str(mac: bytes) -> str:
    return mac.hex(":")


def mac_table(unicast: list[bytes], multicast: list[bytes]) -> bytes:
    """A VIRTIO_NET_CTRL_MAC_TABLE_SET payload: le32 entries + MACs, unicast table then multicast table."""
    return b"".join(struct.pack("<I", len(t)) + b"".join(t) for t in (unicast, multicast))


class FilterRig:
    """Every queue set up (:class:`MqRig`, one queue pair and the control queue) and frames of known destination
    sent round by round through the loopback wire."""

    def __init__(self, rig: Rig, features: int, layout: Layout = "split") -> None:
        self.rig = rig
        self.m = MqRig(rig, features, layout)
        self.features = rig.features
        self.seq = 0
        # The spec gives the RX modes no value at reset (QEMU's device starts promiscuous, for drivers that predate
        # CTRL_RX), so like a driver bringing its interface up the check states the modes it judges under.
        if has(self.features, NetF.CTRL_RX):
            for cmd in (VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_CTRL_RX_ALLMULTI):
                a = self.rx_mode(cmd, False)
                if not (a.used and a.ack == VIRTIO_NET_OK):
                    raise AssertionError(f"stating the receive modes after reset: {a.describe()}")

    def config_mac(self) -> bytes:
        return self.rig.drv.transport.read_device_config(NetCfg.MAC, 6)

    def net_status(self) -> int:
        return int.from_bytes(self.rig.drv.transport.read_device_config(NetCfg.STATUS, 2, 2), "little")

    def command(self, what: str, cls: int, cmd: int, data: bytes) -> Ack:
        return self.m.command(what, cls, cmd, data)

    def rx_mode(self, cmd: int, on: bool) -> Ack:
        return self.command(f"{RX_MODE_NAMES[cmd]} {int(on)}", VIRTIO_NET_CTRL_RX, cmd, bytes([int(on)]))

    def frame(self, dst: bytes, vid: int | None = None) -> bytes:
        """A UDP frame to ``dst`` (802.1Q-tagged with ``vid``), unique by its sequence number."""
        self.seq += 1
        eth = Ether(src=mac_str(SRC), dst=mac_str(dst))
        body = IP(src="10.7.0.1", dst="10.7.0.2") / UDP(sport=4000, dport=4001) / (
            struct.pack(">I", self.seq) + b"rx-filter" * 3)
        return bytes(eth / Dot1Q(vlan=vid) / body if vid is not None else eth / body)

    def deliver(self, frames: Mapping[str, bytes], marker_dst: bytes) -> tuple[set[str], bool]:
        """Send ``frames`` then a marker frame to ``marker_dst`` (one the state in force must deliver); the names
        of the frames that reached receiveq1 once the marker did (or the rig's event wait passed), and whether
        the marker came."""
        marker = self.frame(marker_dst)
        hdr = self.rig.tx_header()
        tx = self.m.ring(1)
        tx.used()
        for f in (*frames.values(), marker):
            tx.add([hdr + f], [])
        tx.publish()
        self.rig.doorbell(1)
        got: list[bytes] = []
        deadline = time.monotonic() + self.rig.event_wait
        while marker not in got:
            got += [u.data[self.rig.hdr_len:] for u in self.m.ring(0).used()]
            left = deadline - time.monotonic()
            if marker in got or left <= 0:
                break
            self.m.wait_irqs(min(left, QUIET_WAIT))
        tx.used()
        self.m.stock(0)
        return {name for name, f in frames.items() if f in got}, marker in got


def judge(verdict: Verdict, rid: str, step: str, got: tuple[set[str], bool], want: set[str],
          names: set[str]) -> None:
    """``rid`` holds when, of the frames ``names``, exactly ``want`` came back (and the marker did)."""
    came, marker = got
    ok = came & names == want & names and marker
    verdict.check(rid, ok, f"{step}: of {sorted(names)} delivered {sorted(came & names) or 'none'}, expected "
                           f"{sorted(want & names) or 'none'}" + ("" if marker else "; the marker frame never came"))


def judge_ack(verdict: Verdict, rid: str, a: Ack) -> bool:
    return verdict.check(rid, a.used and a.ack == VIRTIO_NET_OK, a.describe() + " (expected VIRTIO_NET_OK)")


def filter_spec(bench: Bench) -> str | None:
    """The target spec offering :data:`RX_FILTER_FEATURES` too where the target is configurable, else None (the
    target as it is)."""
    if not bench.configurable:
        return None
    with bench.rig() as probe:
        offered = probe.offered
    return bench.variant(features=hex(offered | RX_FILTER_FEATURES))


def features_with(rig: Rig, verdict: Verdict, ids: tuple[str, ...], need_bits: tuple[int, ...],
                  drop: int = 0, layout: Layout = "split") -> int | None:
    """The features for these checks (CTRL_VQ and the filter features where offered, less ``drop``) on rings of
    ``layout``, or None with ``ids`` not offered when the layout or a bit of ``need_bits`` is missing, or not
    applicable when frames do not come back."""
    if not rig.offers(layout, verdict, *ids):
        return None
    feats = rig.features_for(extra=RX_FILTER_FEATURES, drop=drop, layout=layout)
    missing = [b for b in (NetF.CTRL_VQ, *need_bits) if feats is None or not has(feats, b)]
    if missing:
        why = (f"{', '.join('VIRTIO_NET_F_' + NetF(b).name for b in missing)} not offered (device features "
               f"{rig.offered:#x})")
        for rid in ids:
            verdict.not_offered(rid, why)
        return None
    return feats if rig.looped(verdict, *ids) else None


@pytest.mark.req(*MODE_IDS, "NETCTRL-DEV-17", "NETCTRL-DEV-20", *OFFER_IDS)
def test_rx_modes(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """On both ring layouts: the filter sits before the receive queue, whichever layout it has. The offer of the
    device the filter checks run on: the control classes with CTRL_VQ (NETFEAT-DEV-09, NET-DEV-14)."""
    with bench.rig(filter_spec(bench)) as rig:
        judge_offer(verdict, rig.offered, OFFER_IDS)
        feats = features_with(rig, verdict, (*MODE_IDS, "NETCTRL-DEV-17", "NETCTRL-DEV-20"), (NetF.CTRL_RX,),
                              layout=ring_layout)
        if feats is None:
            return
        r = FilterRig(rig, feats, ring_layout)
        own = r.config_mac()

        def four() -> dict[str, bytes]:
            return {"own unicast": r.frame(own), "other unicast": r.frame(OTHER_A), "multicast": r.frame(MCAST_A),
                    "broadcast": r.frame(BROADCAST)}

        every = set(four())
        got = r.deliver(four(), BROADCAST)
        judge(verdict, "NETCTRL-DEV-17", "after reset (PROMISC 0, ALLMULTI 0), no MAC table set", got,
              {"own unicast"}, {"other unicast"})
        judge(verdict, "NETCTRL-DEV-20", "no mode on, no MAC table set", got, {"own unicast"}, every - {"broadcast"})

        judge_ack(verdict, "NETCTRL-DEV-04", r.rx_mode(VIRTIO_NET_CTRL_RX_PROMISC, True))
        judge(verdict, "NETCTRL-DEV-05", "PROMISC 1", r.deliver(four(), BROADCAST), every, every)
        judge_ack(verdict, "NETCTRL-DEV-04", r.rx_mode(VIRTIO_NET_CTRL_RX_PROMISC, False))
        judge_ack(verdict, "NETCTRL-DEV-04", r.rx_mode(VIRTIO_NET_CTRL_RX_ALLMULTI, True))
        judge(verdict, "NETCTRL-DEV-07", "ALLMULTI 1", r.deliver(four(), BROADCAST), {"multicast"}, {"multicast"})
        judge_ack(verdict, "NETCTRL-DEV-04", r.rx_mode(VIRTIO_NET_CTRL_RX_ALLMULTI, False))
        if not has(feats, NetF.CTRL_RX_EXTRA):
            for rid in EXTRA_IDS:
                verdict.not_offered(rid, f"VIRTIO_NET_F_CTRL_RX_EXTRA not offered (device features {rig.offered:#x})")
            return
        _extra_modes(verdict, r, four, every)


def _extra_modes(verdict: Verdict, r: FilterRig, four: Callable[[], dict[str, bytes]], every: set[str]) -> None:
    """The CTRL_RX_EXTRA modes, each set on and off again (NETCTRL-DEV-08), alone and against the mode it beats
    or not."""

    def mode(cmd: int, on: bool) -> None:
        judge_ack(verdict, "NETCTRL-DEV-08" if cmd not in (VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_CTRL_RX_ALLMULTI)
                  else "NETCTRL-DEV-04", r.rx_mode(cmd, on))

    unicast = {"own unicast", "other unicast"}
    mode(VIRTIO_NET_CTRL_RX_ALLUNI, True)
    judge(verdict, "NETCTRL-DEV-09", "ALLUNI 1", r.deliver(four(), BROADCAST), unicast, unicast)
    mode(VIRTIO_NET_CTRL_RX_NOUNI, True)
    judge(verdict, "NETCTRL-DEV-14", "ALLUNI 1, NOUNI 1", r.deliver(four(), BROADCAST), set(), unicast)
    mode(VIRTIO_NET_CTRL_RX_ALLUNI, False)
    judge(verdict, "NETCTRL-DEV-13", "NOUNI 1", r.deliver(four(), BROADCAST), set(), unicast)
    mode(VIRTIO_NET_CTRL_RX_NOUNI, False)

    # NOMULTI alone, with the multicast address listed in the MAC table: still dropped
    table = r.command(f"MAC_TABLE_SET [] [{mac_str(MCAST_A)}]", VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET,
                      mac_table([], [MCAST_A]))
    mode(VIRTIO_NET_CTRL_RX_NOMULTI, True)
    got = r.deliver(four(), BROADCAST)
    if table.ack == VIRTIO_NET_OK:
        judge(verdict, "NETCTRL-DEV-10", "NOMULTI 1, the multicast address in the MAC table", got, set(),
              {"multicast"})
    judge(verdict, "NETCTRL-DEV-12", "NOMULTI 1", got, {"broadcast"}, {"broadcast"})
    r.command("MAC_TABLE_SET [] []", VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, mac_table([], []))
    mode(VIRTIO_NET_CTRL_RX_ALLMULTI, True)
    got = r.deliver(four(), BROADCAST)
    judge(verdict, "NETCTRL-DEV-11", "ALLMULTI 1, NOMULTI 1", got, set(), {"multicast"})
    judge(verdict, "NETCTRL-DEV-12", "ALLMULTI 1, NOMULTI 1", got, {"broadcast"}, {"broadcast"})
    mode(VIRTIO_NET_CTRL_RX_NOMULTI, False)
    mode(VIRTIO_NET_CTRL_RX_ALLMULTI, False)

    mode(VIRTIO_NET_CTRL_RX_NOBCAST, True)
    own = r.config_mac()
    judge(verdict, "NETCTRL-DEV-15", "NOBCAST 1", r.deliver(four(), own), set(), {"broadcast"})
    mode(VIRTIO_NET_CTRL_RX_ALLMULTI, True)
    judge(verdict, "NETCTRL-DEV-16", "ALLMULTI 1, NOBCAST 1", r.deliver(four(), own), set(), {"broadcast"})
    mode(VIRTIO_NET_CTRL_RX_ALLMULTI, False)

    # promiscuous mode beats every suppression
    mode(VIRTIO_NET_CTRL_RX_NOUNI, True)
    mode(VIRTIO_NET_CTRL_RX_NOMULTI, True)
    mode(VIRTIO_NET_CTRL_RX_PROMISC, True)
    judge(verdict, "NETCTRL-DEV-06", "PROMISC 1 with NOUNI 1, NOMULTI 1, NOBCAST 1", r.deliver(four(), BROADCAST),
          every, every)
    for cmd in (VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_CTRL_RX_NOUNI, VIRTIO_NET_CTRL_RX_NOMULTI,
                VIRTIO_NET_CTRL_RX_NOBCAST):
        mode(cmd, False)
    judge(verdict, "NETCTRL-DEV-08", "every mode off again", r.deliver(four(), BROADCAST),
          {"own unicast", "broadcast"}, every)


@pytest.mark.req(*TABLE_IDS)
def test_mac_filter_table(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(filter_spec(bench)) as rig:
        feats = features_with(rig, verdict, TABLE_IDS, (NetF.CTRL_RX,))
        if feats is None:
            return
        r = FilterRig(rig, feats)
        own = r.config_mac()

        def frames() -> dict[str, bytes]:
            return {"listed unicast A": r.frame(OTHER_A), "unicast B": r.frame(OTHER_B),
                    "multicast A": r.frame(MCAST_A), "multicast B": r.frame(MCAST_B), "own unicast": r.frame(own)}

        every = set(frames())
        for uni, multi, want in (([OTHER_A], [MCAST_A], {"listed unicast A", "multicast A", "own unicast"}),
                                 ([OTHER_B], [], {"unicast B", "own unicast"}),
                                 ([], [MCAST_B, MCAST_A], {"multicast A", "multicast B", "own unicast"}),
                                 ([], [], {"own unicast"})):
            what = f"MAC_TABLE_SET [{', '.join(map(mac_str, uni))}] [{', '.join(map(mac_str, multi))}]"
            a = r.command(what, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, mac_table(uni, multi))
            if not judge_ack(verdict, "NETCTRL-DEV-18", a):
                continue
            got = r.deliver(frames(), own)  # right after the used entry (the ack was awaited)
            judge(verdict, "NETCTRL-DEV-18", f"right after {what} was used", got, want, every)
            judge(verdict, "NETCTRL-DEV-20", f"{what}, no mode on", got, want, every)

        if not has(feats, NetF.CTRL_MAC_ADDR) or not has(feats, NetF.MAC):
            verdict.not_offered("NETCTRL-DEV-19", f"VIRTIO_NET_F_CTRL_MAC_ADDR with VIRTIO_NET_F_MAC not offered "
                                                  f"(device features {rig.offered:#x})")
        else:
            a = r.command(f"MAC_ADDR_SET {mac_str(NEW_MAC)}", VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET,
                          NEW_MAC)
            now = r.config_mac()  # read as soon as the used entry was seen
            verdict.check("NETCTRL-DEV-19", a.used and a.ack == VIRTIO_NET_OK and now == NEW_MAC,
                          f"{a.describe()}; mac config field right after: {mac_str(now)} (expected {mac_str(NEW_MAC)})")
            got = r.deliver({"new primary MAC": r.frame(NEW_MAC), "old primary MAC": r.frame(own)}, NEW_MAC)
            judge(verdict, "NETCTRL-DEV-20", "after MAC_ADDR_SET, empty MAC table", got, {"new primary MAC"},
                  {"new primary MAC", "old primary MAC"})

        # A table set before a reset is gone after it (and a new initialization).
        r.command(f"MAC_TABLE_SET [{mac_str(OTHER_A)}] [{mac_str(MCAST_A)}]", VIRTIO_NET_CTRL_MAC,
                  VIRTIO_NET_CTRL_MAC_TABLE_SET, mac_table([OTHER_A], [MCAST_A]))
        r = FilterRig(rig, feats)
        own = r.config_mac()
        judge(verdict, "NETCTRL-DEV-17", "after a table of one unicast and one multicast address, then reset",
              r.deliver({"unicast A": r.frame(OTHER_A), "multicast A": r.frame(MCAST_A)}, own), set(),
              {"unicast A", "multicast A"})


#: VIDs of the tagged frames: in the VLAN table (ADD), out of it, and the extremes of the 12-bit field.
LISTED_VIDS = (100, 4095)
UNLISTED_VIDS = (0, 5, 101)


@pytest.mark.req(*VLAN_IDS)
def test_vlan_filter(bench: Bench, verdict: Verdict) -> None:
    spec = filter_spec(bench)
    with bench.rig(spec) as rig:
        # NETCTRL-DEV-21 with receive filtering by address on (CTRL_RX), CTRL_VLAN not negotiated
        feats = features_with(rig, verdict, ("NETCTRL-DEV-21",), (NetF.CTRL_RX,), drop=1 << NetF.CTRL_VLAN)
        if feats is not None:
            r = FilterRig(rig, feats)
            own = r.config_mac()
            tagged = {f"VID {v}": r.frame(own, v) for v in (*LISTED_VIDS, *UNLISTED_VIDS)}
            judge(verdict, "NETCTRL-DEV-21", "CTRL_VLAN not negotiated, frames to the own MAC",
                  r.deliver(tagged, own), set(tagged), set(tagged))
        feats = features_with(rig, verdict, ("NETCTRL-DEV-22", "NETCTRL-DEV-23"), (NetF.CTRL_VLAN,))
        if feats is None:
            return
        r = FilterRig(rig, feats)
        own = r.config_mac()

        def frames() -> dict[str, bytes]:
            return {f"VID {v}": r.frame(own, v) for v in (*LISTED_VIDS, *UNLISTED_VIDS)}

        every = set(frames())
        for vid in LISTED_VIDS:
            judge_ack(verdict, "NETCTRL-DEV-22", r.command(f"VLAN_ADD {vid}", VIRTIO_NET_CTRL_VLAN,
                                                           VIRTIO_NET_CTRL_VLAN_ADD, struct.pack("<H", vid)))
        listed = {f"VID {v}" for v in LISTED_VIDS}
        got = r.deliver(frames(), own)  # the marker untagged: the VLAN table filters tagged frames only
        judge(verdict, "NETCTRL-DEV-22", f"VLAN table {list(LISTED_VIDS)}", got, listed, listed)
        judge(verdict, "NETCTRL-DEV-23", f"VLAN table {list(LISTED_VIDS)}", got, listed, every - listed)
        gone = LISTED_VIDS[0]
        judge_ack(verdict, "NETCTRL-DEV-23", r.command(f"VLAN_DEL {gone}", VIRTIO_NET_CTRL_VLAN,
                                                       VIRTIO_NET_CTRL_VLAN_DEL, struct.pack("<H", gone)))
        left = {f"VID {v}" for v in LISTED_VIDS[1:]}
        got = r.deliver(frames(), own)
        judge(verdict, "NETCTRL-DEV-23", f"VLAN table {list(LISTED_VIDS)} then VLAN_DEL {gone}", got, left,
              every - left)
        judge(verdict, "NETCTRL-DEV-22", f"VLAN table {list(LISTED_VIDS)} then VLAN_DEL {gone}", got, left, left)


@pytest.mark.req(*ANNOUNCE_IDS)
def test_announce_ack(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(filter_spec(bench)) as rig:
        feats = features_with(rig, verdict, ANNOUNCE_IDS, (NetF.GUEST_ANNOUNCE,))
        if feats is None:
            return
        port = need(rig.port, verdict, *ANNOUNCE_IDS)  # the link comes back through the bench's port
        if port is None:
            return
        r = FilterRig(rig, feats)
        port.set_link(False)
        port.set_link(True)
        raised = r.net_status()
        if not raised & VIRTIO_NET_S_ANNOUNCE:
            verdict.not_applicable("NETCTRL-DEV-24", f"status {raised:#06x} after the link came back: the device "
                                                     "asked for no announcement, there is nothing to acknowledge")
            return
        a = r.command("ANNOUNCE_ACK", VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK, b"")
        after = r.net_status()  # read as soon as the used entry was seen
        verdict.check("NETCTRL-DEV-24", a.used and a.ack == VIRTIO_NET_OK and not after & VIRTIO_NET_S_ANNOUNCE,
                      f"status {raised:#06x} after the link came back; {a.describe()}; status right after: "
                      f"{after:#06x} (expected VIRTIO_NET_S_ANNOUNCE clear)")
