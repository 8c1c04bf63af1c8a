"""Control virtqueue driver rows (NETCTRL-DRV, 5.1.9.4.4.5, 5.1.9.5) judged on the bench's guest driver by the
control queue monitor (:mod:`testbenches.monitor.ctrl_rules`).

The guest driver (``GuestNetDriver`` with its :class:`~testbenches.driver.net_ctrl.NetControl`) runs on the target
through the register trace, on both ring layouts, with the control features the target offers; a configurable target
is run as two variants:

- "rx_filter_rss": four queue pairs offering CTRL_VQ, CTRL_RX, CTRL_RX_EXTRA, CTRL_VLAN, CTRL_MAC_ADDR, GUEST_ANNOUNCE,
  MQ, RSS, RSS_CONTEXT and HASH_TUNNEL besides its own offer; VIRTIO_NET_F_CTRL_GUEST_OFFLOADS is shown to the
  driver through the offer proxy (:class:`ShownOffer`) without reaching the device. The driver sends frames on
  transmitq1, RX mode commands, a MAC table, a new address (then frames from it), GUEST_OFFLOADS_SET, VQ_PAIRS_SET 2
  (then frames on transmitq1 and 2), an RSS configuration, CAP_GET and an RSS context of the last id it allows,
  HASH_TUNNEL_SET of the supported tunnel types (supported_tunnel_types shown to it with undefined bits too,
  :class:`ShownTunnelTypes`, which it must disregard), and after the link is pulled and plugged (the device then raises
  VIRTIO_NET_S_ANNOUNCE) a gratuitous ARP and ANNOUNCE_ACK;
- "vlan_hash": two queue pairs offering CTRL_VQ, CTRL_VLAN, MQ and HASH_REPORT only: VLAN_ADD, HASH_CONFIG and
  VQ_PAIRS_SET, so the rows "never without CTRL_RX / CTRL_RX_EXTRA / RSS" are judged on a driver without them.

Every command the driver makes available is judged by the monitor from the rings, never from the driver's own
record; the evidence says how many commands and frames were looked at. A row the run gave no opportunity is not
claimed: the feature it needs not offered, or no announcement asked (a target whose link the bench cannot move).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.drivers.transport import VirtioPciModern
from backend.pci.abilities import Ability, Lacking, PortControl
from backend.pci.device import PciDevice
from backend.virtio.features import F, NetF, bits, has
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_RX_ALLMULTI,
    VIRTIO_NET_CTRL_RX_ALLUNI,
    VIRTIO_NET_CTRL_RX_NOBCAST,
    VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_HASH_TUNNEL_TYPES_DEFINED,
    VIRTIO_NET_RSS_HASH_TYPE_IPv4,
    VIRTIO_NET_RSS_HASH_TYPE_TCPv4,
    VIRTIO_NET_RSS_HASH_TYPE_UDPv4,
)
from backend.virtio.pci_regs import NetCfg
from sim.memory import GuestMemory
from testbenches.conformance.checks.test_net_driver_rules import ShownOffer
from testbenches.conformance.checks.test_net_rss import variant_spec
from testbenches.conformance.deadlines import Deadlines
from testbenches.conformance.harness import GUEST_MEMORY_BASE, Bench
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout, layout_features
from testbenches.driver.net_ctrl import ACK_TIMEOUT, NetControl
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.frames import test_frame
from testbenches.monitor import PackedRingMonitor, SplitRingMonitor
from testbenches.monitor.ctrl_rules import NETCTRL_DRV_ROWS, ControlQueueMonitor
from testbenches.monitor.virtio_pci_rules import Layout as PciLayout

MEM = 8 << 20
QSIZE = 64
#: Each variant: what the configurable target offers besides its own offer, its queue pairs, what is only shown.
VARIANTS = {
    "rx_filter_rss": (bits(NetF.CTRL_VQ, NetF.CTRL_RX, NetF.CTRL_RX_EXTRA, NetF.CTRL_VLAN, NetF.CTRL_MAC_ADDR,
                           NetF.GUEST_ANNOUNCE, NetF.MQ, NetF.RSS, NetF.RSS_CONTEXT, NetF.HASH_TUNNEL), 4,
                      bits(NetF.CTRL_GUEST_OFFLOADS)),
    "vlan_hash": (bits(NetF.CTRL_VQ, NetF.CTRL_VLAN, NetF.MQ, NetF.HASH_REPORT), 2, 0),
}
#: What the driver asks for besides its defaults (taken where offered or shown).
CONTROL_FEATURES = bits(NetF.CTRL_VQ, NetF.CTRL_RX, NetF.CTRL_RX_EXTRA, NetF.CTRL_VLAN, NetF.CTRL_MAC_ADDR,
                        NetF.GUEST_ANNOUNCE, NetF.MQ, NetF.RSS, NetF.HASH_REPORT, NetF.CTRL_GUEST_OFFLOADS,
                        NetF.HASH_TUNNEL, NetF.RSS_CONTEXT)
#: Rows that need a feature offered (the rest are judged on any control traffic): the feature each needs.
NEEDS = {"NETCTRL-DRV-02": NetF.HASH_TUNNEL, "NETCTRL-DRV-03": NetF.HASH_TUNNEL, "NETCTRL-DRV-07": NetF.CTRL_MAC_ADDR,
         "NETCTRL-DRV-08": NetF.CTRL_RX, "NETCTRL-DRV-10": NetF.GUEST_ANNOUNCE, "NETCTRL-DRV-11": NetF.GUEST_ANNOUNCE,
         "NETCTRL-DRV-12": NetF.MQ, "NETCTRL-DRV-13": NetF.MQ, "NETCTRL-DRV-14": NetF.MQ, "NETCTRL-DRV-15": NetF.MQ,
         "NETCTRL-DRV-17": NetF.RSS, "NETCTRL-DRV-18": NetF.RSS, "NETCTRL-DRV-19": NetF.RSS,
         "NETCTRL-DRV-20": NetF.RSS, "NETCTRL-DRV-B01": NetF.HASH_REPORT, "NETCTRL-DRV-22": NetF.RSS_CONTEXT,
         "NETCTRL-DRV-23": NetF.RSS_CONTEXT, "NETCTRL-DRV-24": NetF.CTRL_GUEST_OFFLOADS}
KEY = bytes(range(0x41, 0x41 + 40))
#: Shown in supported_tunnel_types on top of the device's: bits past the defined tunnel types (NETCTRL-DRV-03).
UNDEFINED_TUNNEL_TYPES = 0xC0000200 & ~VIRTIO_NET_HASH_TUNNEL_TYPES_DEFINED
NEW_MAC = bytes.fromhex("020000000077")
GARP_IP = "10.0.0.1"
#: Config interrupt wait after the link comes back (the target raises it at once; a slow one within this; nominal).
LINK_WAIT = 2.0


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    with GuestMemory.single(MEM, gpa=GUEST_MEMORY_BASE) as m:
        yield m


class ShownTunnelTypes(ShownOffer):
    """:class:`ShownOffer` that also shows bits this spec does not define in supported_tunnel_types as the driver
    reads it (NETCTRL-DRV-03's directed case); the device's own field, which the monitor reads, is unchanged."""

    def __init__(self, inner: PciDevice, *, add: int, undefined: int) -> None:
        super().__init__(inner, add=add)
        self.device_cfg = PciLayout.discover(self).device
        self.undefined = undefined.to_bytes(4, "little")

    def region_read(self, index: int, offset: int, size: int) -> bytes:
        dev = self.device_cfg
        if dev is None or index != dev.bar or not dev.offset <= offset < dev.offset + dev.length:
            return super().region_read(index, offset, size)
        data = bytearray(self.inner.region_read(index, offset, size))
        for i in range(size):
            k = offset - dev.offset + i - NetCfg.SUPPORTED_TUNNEL_TYPES
            if 0 <= k < len(self.undefined):
                data[i] |= self.undefined[k]
        self._record("r", index, offset, bytes(data))
        return bytes(data)


def _frames(src: bytes, n: int) -> list[bytes]:
    return [test_frame(seq, 60 + 40 * seq, src=src) for seq in range(n)]


def _rx_filter_and_rss(drv: GuestNetDriver, ctl: NetControl, port: Ability[PortControl],
                       deadlines: Deadlines) -> list[str]:
    """The first variant's sequence, each step where its feature was negotiated; what happened, for the evidence.
    Frames and commands wait ``ctl.ack_timeout`` (the session's bound)."""
    did: list[str] = []
    f = drv.features
    drv.send(_frames(drv.mac(), 2), timeout=ctl.ack_timeout)
    drv.wait_tx_done(ctl.ack_timeout)
    if has(f, NetF.CTRL_RX):
        for cmd, on in ((VIRTIO_NET_CTRL_RX_PROMISC, True), (VIRTIO_NET_CTRL_RX_PROMISC, False),
                        (VIRTIO_NET_CTRL_RX_ALLMULTI, True)):
            ctl.rx_mode(cmd, on)
        ctl.mac_table_set([bytes.fromhex("020000000010")], [bytes.fromhex("01005e000001"),
                                                            bytes.fromhex("333300000001")])
    if has(f, NetF.CTRL_RX_EXTRA):
        for cmd, on in ((VIRTIO_NET_CTRL_RX_ALLUNI, True), (VIRTIO_NET_CTRL_RX_ALLUNI, False),
                        (VIRTIO_NET_CTRL_RX_NOBCAST, False)):
            ctl.rx_mode(cmd, on)
    if has(f, NetF.CTRL_RX) and has(f, NetF.CTRL_MAC_ADDR):
        did.append(f"MAC_ADDR_SET ack {ctl.mac_addr_set(NEW_MAC)}")
        drv.send(_frames(ctl.mac(), 2), timeout=ctl.ack_timeout)
        drv.wait_tx_done(ctl.ack_timeout)
    if has(f, NetF.CTRL_GUEST_OFFLOADS):
        did.append(f"GUEST_OFFLOADS_SET ack {ctl.guest_offloads_set(0)}")
    if has(f, NetF.MQ):
        did.append(f"VQ_PAIRS_SET 2 ack {ctl.vq_pairs_set(min(2, ctl.max_virtqueue_pairs))}")
        ctl.send_on(ctl.virtqueue_pairs - 1, _frames(ctl.mac(), 2))
        drv.send(_frames(ctl.mac(), 1), timeout=ctl.ack_timeout)
        drv.wait_tx_done(ctl.ack_timeout)
    if has(f, NetF.RSS):
        (supported,) = drv.transport.read_config_fields([(NetCfg.SUPPORTED_HASH_TYPES, 4)])
        types = supported & (VIRTIO_NET_RSS_HASH_TYPE_IPv4 | VIRTIO_NET_RSS_HASH_TYPE_TCPv4
                             | VIRTIO_NET_RSS_HASH_TYPE_UDPv4)
        table = [k % ctl.max_virtqueue_pairs for k in range(16)]
        did.append(f"RSS_CONFIG ack {ctl.rss_config(types, table, KEY, max_tx_vq=ctl.max_virtqueue_pairs)}")
    if has(f, NetF.RSS_CONTEXT):
        most = ctl.rss_ctx_cap_get()
        did.append(f"CAP_GET: max_rss_contexts {most}")
        if most:
            did.append(f"RSS context {most} ADD ack {ctl.rss_ctx_add(most, types, table[:8], KEY)}")
        if has(f, NetF.CTRL_RX):
            ctl.rx_mode(VIRTIO_NET_CTRL_RX_ALLMULTI, False)  # a command after the context (NETCTRL-DRV-23)
    if has(f, NetF.HASH_TUNNEL):
        (shown,) = drv.transport.read_config_fields([(NetCfg.SUPPORTED_TUNNEL_TYPES, 4)])
        types = ctl.supported_tunnel_types()
        did.append(f"supported_tunnel_types read as {shown:#x} (bits {UNDEFINED_TUNNEL_TYPES:#x} shown, not "
                   f"defined), HASH_TUNNEL_SET {types:#x} ack {ctl.hash_tunnel_set(types)}")
    if has(f, NetF.GUEST_ANNOUNCE) and not isinstance(port, Lacking):
        port.set_link(False)
        port.set_link(True)
        interrupted = drv.config_changed(deadlines.wait(LINK_WAIT))
        did.append(f"link pulled and plugged (config interrupt: "
                   f"{interrupted or f'none within {deadlines.explain(LINK_WAIT)}'}), "
                   f"announcement acked: {ctl.announce_if_asked(GARP_IP)}")
    return did


def _vlan_and_hash(drv: GuestNetDriver, ctl: NetControl) -> list[str]:
    did: list[str] = []
    f = drv.features
    drv.send(_frames(drv.mac(), 2), timeout=ctl.ack_timeout)
    drv.wait_tx_done(ctl.ack_timeout)
    if has(f, NetF.CTRL_VLAN):
        did.append(f"VLAN_ADD ack {ctl.vlan_add(100)}")
    if has(f, NetF.HASH_REPORT):
        (supported,) = drv.transport.read_config_fields([(NetCfg.SUPPORTED_HASH_TYPES, 4)])
        did.append(f"HASH_CONFIG ack {ctl.hash_config(supported & VIRTIO_NET_RSS_HASH_TYPE_IPv4, KEY)}")
    if has(f, NetF.MQ):
        did.append(f"VQ_PAIRS_SET ack {ctl.vq_pairs_set(ctl.max_virtqueue_pairs)}")
        for pair in range(ctl.virtqueue_pairs):
            ctl.send_on(pair, _frames(drv.mac(), 1))
    return did


@pytest.mark.req(*NETCTRL_DRV_ROWS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_guest_driver_control_commands(bench: Bench, verdict: Verdict, mem: GuestMemory, variant: str,
                                       ring_layout: Layout) -> None:
    """The guest driver's control traffic in ``variant`` on rings of ``ring_layout``: every command and transmitted
    frame judged by the control queue monitor; each NETCTRL-DRV id reported (judged, not offered, not applicable)."""
    extra, pairs, shown = VARIANTS[variant]
    name = f"guest driver, {variant} ({ring_layout} rings)"
    dev = bench.open(variant_spec(bench, extra, pairs))
    offer = VirtioPciModern(dev).device_features()
    trace = ShownTunnelTypes(dev, add=shown & ~offer, undefined=UNDEFINED_TUNNEL_TYPES)
    rings = SplitRingMonitor.attach(trace, mem.read) if ring_layout == "split" else \
        PackedRingMonitor.attach(trace, mem.read)
    port = dev.abilities().port
    # Without EVENT_IDX: the model's control queue does not move avail_event, so with it a driver that follows
    # avail_event rings no doorbell for a second command (a device matter, judged elsewhere; here: the commands).
    wanted = layout_features(DEFAULT_FEATURES & ~bits(F.EVENT_IDX) | CONTROL_FEATURES & (extra | shown | offer),
                             ring_layout)
    drv = GuestNetDriver(trace, mem, queue_size=QSIZE, features=wanted)
    try:
        drv.init()
        negotiated = drv.features
        if has(negotiated, F.RING_PACKED) != (ring_layout == "packed") or drv.control is None:
            for rid in NETCTRL_DRV_ROWS:
                verdict.not_offered(rid, f"{name}: the target offers {drv.offered:#x}: no CTRL_VQ or no "
                                         f"{ring_layout} rings")
            return
        ctl = drv.control
        ctl.ack_timeout = bench.deadlines.wait(ACK_TIMEOUT)
        did = _rx_filter_and_rss(drv, ctl, port, bench.deadlines) if variant == "rx_filter_rss" \
            else _vlan_and_hash(drv, ctl)
        rings.inspect()
    finally:
        drv.close()
    assert rings.ctrl is not None, "the ring monitor feeds no control queue monitor"
    _report(verdict, rings.ctrl, name, negotiated, did, port)


def _report(verdict: Verdict, ctrl: ControlQueueMonitor, name: str, negotiated: int, did: list[str],
            port: Ability[PortControl]) -> None:
    verdicts = ctrl.verdicts()
    seen = f"{name}: {ctrl.seen()}; negotiated {negotiated:#x}; {'; '.join(did)}"
    if ctrl.unreadable:
        seen += f"; not judged: {ctrl.unreadable[:3]}"
    for rid in NETCTRL_DRV_ROWS:
        if rid in verdicts:
            ok, evidence = verdicts[rid]
            verdict.check(rid, ok, f"{seen}; {ctrl.opportunities(rid)} judged here; " + "; ".join(evidence[:5]))
        elif rid in NEEDS and not has(negotiated, NEEDS[rid]):
            verdict.not_offered(rid, f"{name}: VIRTIO_NET_F_{NetF(NEEDS[rid]).name} not negotiated "
                                     f"({negotiated:#x})")
        elif rid in ("NETCTRL-DRV-10", "NETCTRL-DRV-11") and isinstance(port, Lacking):
            verdict.not_applicable(rid, f"{name}: the link cannot be changed from the bench: {port.why}")
        else:
            verdict.not_applicable(rid, f"{seen}: the run gave the row no opportunity")

