"""Inner header hash, RSS contexts and automatic receive steering (5.1.9.4.4, 5.1.9.5.6, 5.1.9.5.8).

A configurable target is run as variants offering what each test needs besides its own offer (four queue pairs);
another target is run as it is, and the rows of what it does not offer read "not offered". Frames go out on a
transmit queue and come back over the loopback wire; the receive queue each lands on, and with HASH_REPORT its
hash_value / hash_report, are the observations. Hashes are computed here (the reference Toeplitz function of
``test_net_rss.py``) from the addresses and ports the frames were built with (scapy), never from the device's code:

- VIRTIO_NET_F_HASH_TUNNEL: encapsulated frames (GRE of RFC 2784 / 2890 / 7676, GRE in UDP, VXLAN, VXLAN-GPE, GENEVE,
  IP in IP, NVGRE, as supported_tunnel_types lists them) are hashed over the outer header while no type is enabled:
  after a reset (NETCTRL-DEV-03), for the supported types left out of enabled_tunnel_types (every other supported type
  enabled, then the rest: each type judged left out once; NETCTRL-DEV-01, also for random flows in random tunnels: a
  hypothesis property, in which the copies of one inner flow in enabled tunnels must share the inner hash and its
  queue), and after HASH_TUNNEL_SET 0 (NETCTRL-DEV-03); HASH_TUNNEL_SET of types outside supported_tunnel_types is
  answered VIRTIO_NET_ERR (NETCTRL-DEV-02); HASH_TUNNEL offered only with CTRL_VQ and RSS or HASH_REPORT
  (NETFEAT-DEV-11);
- VIRTIO_NET_F_RSS_CONTEXT: VIRTNET_RSS_CTX_CTRL_CAP_GET answers max_rss_contexts of at least 1 in its
  command-specific-result (NETCTRL-DEV-32); contexts added (and then modifiable) are gone after a device reset: a
  MOD or DEL of them is refused, an ADD of their ids taken again (NETCTRL-DEV-33); RSS_CONTEXT offered only with
  CTRL_VQ and RSS (NETFEAT-DEV-12);
- VIRTIO_NET_F_MQ without RSS (VQ_PAIRS_SET): the reply traffic of a flow last transmitted on transmitqX lands on
  receiveqX (NETCTRL-DEV-B02); with that receive queue being reset (VIRTIO_F_RING_RESET) it lands on another
  enabled one (NETCTRL-DEV-27); with every receive queue being reset nothing is delivered, not even once they are
  enabled again, and nothing is written to their rings (NETCTRL-DEV-28); the same reply steering with RSS
  negotiated but no RSS_CONFIG since the last device reset: VQ_PAIRS_SET is automatic steering then too, no
  indirection table in force (NETCTRL-DEV-B02).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from backend.virtio.features import F, NetF, bits, has
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_HASH_TUNNEL,
    VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    VIRTIO_NET_ERR,
    VIRTIO_NET_HASH_REPORT_NONE,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GENEVE,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2784,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2890,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_7676,
    VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_UDP,
    VIRTIO_NET_HASH_TUNNEL_TYPE_IPIP,
    VIRTIO_NET_HASH_TUNNEL_TYPE_NVGRE,
    VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN,
    VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN_GPE,
    VIRTIO_NET_OK,
    VIRTNET_RSS_CTX_CTRL,
    VIRTNET_RSS_CTX_CTRL_ADD,
    VIRTNET_RSS_CTX_CTRL_CAP_GET,
    VIRTNET_RSS_CTX_CTRL_DEL,
    VIRTNET_RSS_CTX_CTRL_MOD,
)
from backend.virtio.pci_regs import NetCfg
from testbenches.conformance.chains import poison
from testbenches.conformance.checks.test_net_ctrl_mq import ACK_POISON, QSIZE, Ack, MqRig
from testbenches.conformance.checks.test_net_rss import (
    BASIC_TYPES,
    MS_KEY,
    OTHER_KEY,
    SETTINGS,
    Flow,
    Received,
    offered_or_not,
    rss_config,
    table_for,
    variant_spec,
)
from testbenches.conformance.harness import QUIET_WAIT, Bench, Rig
from testbenches.conformance.offers import judge_offer
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import new_ring, ring_addresses, ring_size
from testbenches.driver.split_ring import DriverSplitQueue

PAIRS = 4
TUNNEL_FEATURES = bits(NetF.CTRL_VQ, NetF.MQ, NetF.RSS, NetF.HASH_REPORT, NetF.HASH_TUNNEL)
CONTEXT_FEATURES = bits(NetF.CTRL_VQ, NetF.MQ, NetF.RSS, NetF.RSS_CONTEXT)
STEERING_FEATURES = bits(NetF.CTRL_VQ, NetF.MQ, F.RING_RESET)
TUNNEL_IDS = ("NETCTRL-DEV-01", "NETCTRL-DEV-02", "NETCTRL-DEV-03", "NETFEAT-DEV-11")
CONTEXT_IDS = ("NETCTRL-DEV-32", "NETCTRL-DEV-33", "NETFEAT-DEV-12")
STEERING_IDS = ("NETCTRL-DEV-B02", "NETCTRL-DEV-27", "NETCTRL-DEV-28")
#: Every documented encapsulation type (5.1.9.4.4.3).
TUNNEL_TYPES = (VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2784, VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2890,
                VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_7676, VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_UDP,
                VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN, VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN_GPE,
                VIRTIO_NET_HASH_TUNNEL_TYPE_GENEVE, VIRTIO_NET_HASH_TUNNEL_TYPE_IPIP,
                VIRTIO_NET_HASH_TUNNEL_TYPE_NVGRE)
TUNNEL_NAMES = dict(zip(TUNNEL_TYPES, ("GRE_2784", "GRE_2890", "GRE_7676", "GRE_UDP", "VXLAN", "VXLAN_GPE", "GENEVE",
                                       "IPIP", "NVGRE"), strict=True))
#: The outer UDP destination port of the UDP encapsulations.
UDP_PORTS = {VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_UDP: 4754, VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN: 4789,
             VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN_GPE: 4790, VIRTIO_NET_HASH_TUNNEL_TYPE_GENEVE: 6081}
INNER_MAC = ("02:00:00:00:00:0a", "02:00:00:00:00:0b")
ETH_P_TEB = 0x6558


# --- encapsulated frames ----------------------------------------------------------------------------------------

def _inner_l3(f: Flow, k: int) -> Packet:
    ip = IP(src=f.src, dst=f.dst) if f.version == 4 else IPv6(src=f.src, dst=f.dst)
    l4 = TCP(sport=f.sport, dport=f.dport) if f.proto == "tcp" else UDP(sport=f.sport, dport=f.dport)
    return ip / l4 / Raw(struct.pack(">I", k) + b"inner" * (1 + k % 3))


@dataclass(frozen=True)
class Tunnelled:
    """A packet of flow ``inner`` encapsulated as ``kind`` in an outer packet of flow ``outer`` (UDP to the
    tunnel's port for the UDP encapsulations, protocol "gre" or "ipip" otherwise)."""

    kind: int
    outer: Flow
    inner: Flow

    @staticmethod
    def make(kind: int, version: int, src: str, dst: str, sport: int, inner: Flow) -> Tunnelled:
        if kind in UDP_PORTS:
            outer = Flow(version, "udp", src, dst, sport, UDP_PORTS[kind])
        else:
            outer = Flow(6 if kind == VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_7676 else version,
                         "ipip" if kind == VIRTIO_NET_HASH_TUNNEL_TYPE_IPIP else "gre", src, dst)
        return Tunnelled(kind, outer, inner)

    def frame(self, k: int, dst_mac: str) -> bytes:
        o, kind = self.outer, self.kind
        inner = _inner_l3(self.inner, k)
        ethertype = 0x0800 if self.inner.version == 4 else 0x86DD
        inner_eth = Ether(src=INNER_MAC[0], dst=INNER_MAC[1]) / inner
        ip: Packet = IP(src=o.src, dst=o.dst) if o.version == 4 else IPv6(src=o.src, dst=o.dst)
        body: Packet
        if kind == VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN:
            body = UDP(sport=o.sport, dport=o.dport) / VXLAN(flags=0x08, vni=k & 0xFFFFFF) / inner_eth
        elif kind == VIRTIO_NET_HASH_TUNNEL_TYPE_VXLAN_GPE:  # flags I|P, next protocol 1 IPv4 / 2 IPv6 / 3 Ethernet
            eth = k % 2 == 1  # every other frame carries the inner packet with its Ethernet header
            gpe = bytes([0x0C, 0, 0, 3 if eth else 1 if self.inner.version == 4 else 2]) + \
                struct.pack(">I", (k & 0xFFFFFF) << 8)
            body = UDP(sport=o.sport, dport=o.dport) / Raw(gpe + bytes(inner_eth if eth else inner))
        elif kind == VIRTIO_NET_HASH_TUNNEL_TYPE_GENEVE:
            body = UDP(sport=o.sport, dport=o.dport) / GENEVE(vni=k & 0xFFFFFF, proto=ETH_P_TEB) / inner_eth
        elif kind == VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_UDP:
            body = UDP(sport=o.sport, dport=o.dport) / GRE(proto=ethertype) / inner
        elif kind == VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_2890:
            body = GRE(key_present=1, key=k, seqnum_present=1, sequence_number=k, proto=ethertype) / inner
        elif kind == VIRTIO_NET_HASH_TUNNEL_TYPE_NVGRE:
            body = GRE(key_present=1, key=(k & 0xFFFFFF) << 8, proto=ETH_P_TEB) / inner_eth
        elif kind == VIRTIO_NET_HASH_TUNNEL_TYPE_IPIP:
            body = inner
        else:  # GRE_2784 over IPv4, GRE_7676 over IPv6
            body = GRE(proto=ethertype) / inner
        return bytes(Ether(src="02:00:00:00:00:02", dst=dst_mac) / ip / body)

    def expected(self, enabled: int, hash_types: int, key: bytes) -> tuple[int, int] | None:
        """By 5.1.9.4.4.2: over the inner headers when ``kind`` is enabled, over the outer ones otherwise."""
        return (self.inner if self.kind & enabled else self.outer).expected(hash_types, key)

    def __str__(self) -> str:
        return f"{TUNNEL_NAMES[self.kind]} [{self.outer}] carrying [{self.inner}]"


def tunnel_set(enabled: int) -> bytes:
    """struct virtnet_hash_tunnel."""
    return struct.pack("<I", enabled)


def fixed_tunnels(kinds: Sequence[int]) -> list[Tunnelled]:
    out = []
    for n, kind in enumerate(kinds):
        for i in range(3):
            j = 3 * n + i
            inner = Flow(4, "tcp", f"10.7.{j}.1", f"10.8.{j}.2", 3000 + 11 * j, 80) if i != 1 else \
                Flow(6, "udp", f"fd20::{j + 1:x}", f"fd21::{j + 5:x}", 7000 + j, 53)
            v6 = kind == VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_7676 or (i == 2 and kind in UDP_PORTS)
            src, dst = (f"fd30::{j + 1:x}", f"fd31::{j + 1:x}") if v6 else (f"192.0.2.{j + 1}", f"198.51.100.{j + 1}")
            out.append(Tunnelled.make(kind, 6 if v6 else 4, src, dst, 40000 + 97 * j, inner))
    return out


# --- sending and receiving ----------------------------------------------------------------------------------------

class Exchange:
    """Every queue set up (:class:`MqRig`); frames sent on a chosen transmit queue, gathered per receive queue with
    their header's hash fields; receive queues in :attr:`down` (being reset) neither polled nor stocked."""

    def __init__(self, rig: Rig, features: int) -> None:
        self.rig = rig
        self.features = features
        self.m = MqRig(rig, features)
        self.report = has(rig.features, NetF.HASH_REPORT)
        self.dst_mac = rig.drv.transport.read_device_config(NetCfg.MAC, 6).hex(":") \
            if has(rig.features, NetF.MAC) else "02:00:00:00:00:01"
        self.down: set[int] = set()
        self.seq = 0

    def command(self, what: str, cls: int, cmd: int, data: bytes) -> Ack:
        return self.m.command(what, cls, cmd, data)

    def command_result(self, what: str, cls: int, cmd: int, data: bytes, room: int) -> tuple[Ack, bytes]:
        """A command with ``room`` device-writable bytes after the ack byte; the ack and those bytes (written as 0
        before, so a device that writes nothing there leaves 0)."""
        p = self.rig.add_chain(self.m.ctrl, [bytes([cls, cmd]) + data], [1 + room])
        poison(self.rig.mem, p, 0)
        gpa = p.writable[0][0]
        self.rig.mem.write(gpa, bytes([ACK_POISON]))
        self.m.ring(self.m.ctrl).publish()
        self.rig.doorbell(self.m.ctrl)
        ring = self.m.ring(self.m.ctrl)
        deadline = time.monotonic() + self.rig.event_wait
        used = ring.used()
        while not used and time.monotonic() < deadline:
            self.m.wait_irqs(QUIET_WAIT)
            used = ring.used()
        data_back = self.rig.mem.read(gpa, 1 + room)
        self.rig.release(p)
        return (Ack(what, bool(used), data_back[0] if used else None, used[0].len if used else -1, 1 + room,
                    self.rig.explain()),
                bytes(data_back[1:]))

    def frames(self, packets: Sequence[Tunnelled | Flow]) -> list[bytes]:
        out = []
        for p in packets:
            self.seq += 1
            out.append(p.frame(self.seq, self.dst_mac))
        return out

    def send(self, frames: Sequence[bytes], tx_pair: int = 0, expect: int | None = None,
             watch: Sequence[bytes] = ()) -> dict[int, Received]:
        """``frames`` out on transmitq(``tx_pair`` + 1); what came back, by index in ``frames`` + ``watch`` (frames
        sent before, looked for too), waiting until ``expect`` (default: all of ``frames``) came or the rig's event
        wait passed, and until the transmit queue gave every chain back."""
        want = len(frames) if expect is None else expect
        index = {fr: i for i, fr in enumerate([*frames, *watch])}
        hdr = self.rig.tx_header()
        txq = 2 * tx_pair + 1
        tx = self.m.ring(txq)
        tx.used()
        for fr in frames:
            tx.add([hdr + fr], [])
        tx.publish()
        self.rig.doorbell(txq)
        hl = self.rig.hdr_len
        got: dict[int, Received] = {}
        live = [q for q in self.m.rx_queues if q // 2 not in self.down]
        sent = 0
        deadline = time.monotonic() + self.rig.event_wait
        while True:
            sent += len(tx.used())
            for q in live:
                for u in self.m.ring(q).used():
                    data = bytes(u.data)
                    value, report = struct.unpack_from("<IH", data, 12) if self.report and len(data) >= 20 else (0, 0)
                    i = index.get(data[hl:])
                    if i is not None:
                        got[i] = Received(q // 2, value, report, data[hl:])
            if (len(got) >= want and sent >= len(frames)) or time.monotonic() > deadline:
                break
            self.m.wait_irqs(QUIET_WAIT)
        for q in live:
            self.m.stock(q)
        return got

    def reset_rx(self, pair: int) -> None:
        self.rig.drv.transport.reset_queue(2 * pair)
        self.down.add(pair)

    def enable_rx(self, pair: int) -> None:
        """receiveq(``pair`` + 1) set up again on a fresh ring, stocked."""
        q = 2 * pair
        d = self.rig.drv
        t = d.transport
        size = ring_size("split", QSIZE, t.queue_size(q))
        ring = new_ring("split", self.rig.mem, self.rig.alloc, size, index=q,
                        features=self.features & ~(1 << F.EVENT_IDX))
        assert isinstance(ring, DriverSplitQueue)
        d.queues[q] = ring
        t.set_queue_size(q, size)
        if not d.intx:
            t.set_queue_msix_vector(q, d.vector_of(0))
        t.set_queue_addresses(q, *ring_addresses(ring))
        t.enable_queue(q)
        self.down.discard(pair)
        self.m.stock(q)




# --- inner header hash ------------------------------------------------------------------------------------------

def judge_tunnels(verdict: Verdict, x: Exchange, packets: Sequence[Tunnelled], enabled: int, types: int, key: bytes,
                  table: Sequence[int], phase: str, rids: Sequence[str]) -> list[str]:
    """Each packet's queue (the table entry of its reference hash) and hash fields; packets of kinds not enabled
    judge ``rids``; returns what was wrong for the packets of enabled kinds (inner hash), for the caller."""
    came = x.send(x.frames(packets))
    mask = len(table) - 1
    outer_wrong: list[str] = []
    inner_wrong: list[str] = []
    for i, p in enumerate(packets):
        exp = p.expected(enabled, types, key)
        want_q = 0 if exp is None else table[exp[0] & mask]
        wrong = inner_wrong if p.kind & enabled else outer_wrong
        rx = came.get(i)
        if rx is None:
            wrong.append(f"{p}: never came")
            continue
        if rx.queue != want_q:
            wrong.append(f"{p}: receiveq{rx.queue + 1}, expected receiveq{want_q + 1}")
        want = (0, VIRTIO_NET_HASH_REPORT_NONE) if exp is None else exp
        if x.report and (rx.hash_value, rx.hash_report) != want:
            wrong.append(f"{p}: hash {rx.hash_value:#010x}/{rx.hash_report}, expected {want[0]:#010x}/{want[1]}"
                         f" ({'inner' if p.kind & enabled else 'outer'} header)")
    outer_n = sum(1 for p in packets if not p.kind & enabled)
    for rid in rids:
        if outer_n:
            verdict.check(rid, not outer_wrong,
                          f"{phase}: enabled_tunnel_types {enabled:#x}; {outer_n} encapsulated frames of types not "
                          f"enabled, hashed over the outer header; wrong: {outer_wrong[:4] or 'none'}")
    return inner_wrong


@pytest.mark.req(*TUNNEL_IDS)
def test_inner_header_hash(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(variant_spec(bench, TUNNEL_FEATURES, PAIRS)) as rig:
        judge_offer(verdict, rig.offered, ("NETFEAT-DEV-11",))
        rows = ("NETCTRL-DEV-01", "NETCTRL-DEV-02", "NETCTRL-DEV-03")
        if not offered_or_not(verdict, rig, rows, (NetF.CTRL_VQ, NetF.RSS, NetF.HASH_TUNNEL)):
            return
        feats = rig.features_for(extra=TUNNEL_FEATURES)
        if feats is None or not rig.looped(verdict, "NETCTRL-DEV-01", "NETCTRL-DEV-03"):
            return
        t = rig.drv.transport
        supported = int.from_bytes(t.read_device_config(NetCfg.SUPPORTED_TUNNEL_TYPES, 4, 4), "little")
        hash_supported = int.from_bytes(t.read_device_config(NetCfg.SUPPORTED_HASH_TYPES, 4, 4), "little")
        types = BASIC_TYPES & hash_supported
        kinds = [k for k in TUNNEL_TYPES if supported & k]
        x = Exchange(rig, feats)
        pairs = x.m.pairs
        table = table_for(pairs, 16, 1)

        def configure(ex: Exchange) -> bool:
            a = ex.command("RSS_CONFIG", VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
                           rss_config(types, table, 0, pairs, MS_KEY))
            if not (a.used and a.ack == VIRTIO_NET_OK):
                for rid in ("NETCTRL-DEV-01", "NETCTRL-DEV-03"):
                    verdict.not_applicable(rid, f"{a.describe()}: no RSS configuration to hash with")
                return False
            return True

        # NETCTRL-DEV-02 first: refused types, whatever else works.
        unsupported = [k for k in TUNNEL_TYPES if not supported & k]
        refused = {f"bit {b}": 1 << b for b in (9, 17, 31)}
        lowest = supported & -supported
        refused.update({f"{TUNNEL_NAMES[k]} (not in supported_tunnel_types {supported:#x})": k | lowest
                        for k in unsupported})
        answers = [x.command(f"HASH_TUNNEL_SET {what}", VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
                             tunnel_set(bits_)) for what, bits_ in refused.items()]
        verdict.check("NETCTRL-DEV-02", all(a.used and a.ack == VIRTIO_NET_ERR for a in answers),
                      "; ".join(a.describe() for a in answers) + " (each expected VIRTIO_NET_ERR)")
        x = Exchange(rig, feats)  # a device reset: whatever the refused commands did is gone
        if not kinds:
            for rid in ("NETCTRL-DEV-01", "NETCTRL-DEV-03"):
                verdict.not_applicable(rid, f"supported_tunnel_types {supported:#x} lists no documented type")
            return
        if not configure(x):
            return
        packets = fixed_tunnels(kinds)
        judge_tunnels(verdict, x, packets, 0, types, MS_KEY, table, "after reset, no HASH_TUNNEL_SET",
                      ("NETCTRL-DEV-01", "NETCTRL-DEV-03"))
        # Every other supported type enabled: those hashed over the inner header, the rest over the outer one.
        enabled = sum(kinds[::2])
        a = x.command("HASH_TUNNEL_SET", VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
                      tunnel_set(enabled))
        if not (a.used and a.ack == VIRTIO_NET_OK):
            verdict.not_applicable("NETCTRL-DEV-01", f"{a.describe()}: no tunnel type could be enabled")
            return
        inner_wrong = judge_tunnels(verdict, x, packets, enabled, types, MS_KEY, table,
                                    "some supported types enabled", ("NETCTRL-DEV-01",))
        # The other supported types enabled instead: each type judged enabled once and not enabled once.
        others = sum(kinds[1::2])
        if others:
            a = x.command("HASH_TUNNEL_SET (the other types)", VIRTIO_NET_CTRL_HASH_TUNNEL,
                          VIRTIO_NET_CTRL_HASH_TUNNEL_SET, tunnel_set(others))
            if a.used and a.ack == VIRTIO_NET_OK:
                inner_wrong += judge_tunnels(verdict, x, packets, others, types, MS_KEY, table,
                                             "the other supported types enabled", ("NETCTRL-DEV-01",))
            x.command("HASH_TUNNEL_SET", VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
                      tunnel_set(enabled))

        @settings(max_examples=8, **SETTINGS)  # type: ignore[arg-type]
        @given(st.lists(st.tuples(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.booleans(),
                                  st.lists(st.sampled_from(kinds), min_size=2, max_size=3),
                                  st.integers(0, 0xFFFF)), min_size=2, max_size=4))
        def random_tunnels(flows: list[tuple[int, int, bool, list[int], int]]) -> None:
            packets: list[Tunnelled] = []
            for sport, dport, tcp, wraps, host in flows:
                inner = Flow(4, "tcp" if tcp else "udp", f"10.{host >> 8}.{host & 0xFF}.7", "10.250.0.1", sport, dport)
                for n, kind in enumerate(wraps):
                    a, b = (host + n) % 200 + 1, (sport + n) % 200 + 1
                    v6 = kind == VIRTIO_NET_HASH_TUNNEL_TYPE_GRE_7676
                    src, dst = (f"fd40::{a:x}", f"fd41::{b:x}") if v6 else (f"192.0.2.{a}", f"203.0.113.{b}")
                    packets.append(Tunnelled.make(kind, 6 if v6 else 4, src, dst, (dport + 7 * n) & 0xFFFF or 1,
                                                  inner))
            bad = judge_tunnels(verdict, x, packets, enabled, types, OTHER_KEY, table, "random tunnels",
                                ("NETCTRL-DEV-01",))
            assert not bad, f"copies of an inner flow in enabled tunnels not hashed over the inner header: {bad[:4]}"

        a = x.command("RSS_CONFIG (other key)", VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
                      rss_config(types, table, 0, pairs, OTHER_KEY))
        if a.used and a.ack == VIRTIO_NET_OK:
            random_tunnels()
        # enabled_tunnel_types 0: the outer header for every type (NETCTRL-DEV-03).
        a = x.command("HASH_TUNNEL_SET 0", VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET, tunnel_set(0))
        verdict.check("NETCTRL-DEV-03", a.used and a.ack == VIRTIO_NET_OK, a.describe() + " (expected VIRTIO_NET_OK)")
        judge_tunnels(verdict, x, packets, 0, types, OTHER_KEY, table, "after HASH_TUNNEL_SET 0", ("NETCTRL-DEV-03",))
        # Every supported type enabled, then a device reset: the outer header again (NETCTRL-DEV-03).
        x.command("HASH_TUNNEL_SET all", VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
                  tunnel_set(sum(kinds)))
        x = Exchange(rig, feats)
        if configure(x):
            judge_tunnels(verdict, x, packets, 0, types, MS_KEY, table,
                          f"after HASH_TUNNEL_SET {sum(kinds):#x} and a device reset", ("NETCTRL-DEV-03",))
        assert not inner_wrong, f"encapsulations of enabled types not hashed over the inner header: {inner_wrong[:4]}"


# --- RSS contexts -----------------------------------------------------------------------------------------------------

def ctx_add_modify(ctx_id: int, rss: bytes) -> bytes:
    """struct virtnet_rss_ctx_add_modify: rss_ctx_id, reserved[6], struct virtio_net_rss_config."""
    return struct.pack("<H6x", ctx_id) + rss


@pytest.mark.req(*CONTEXT_IDS)
def test_rss_contexts(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(variant_spec(bench, CONTEXT_FEATURES, PAIRS)) as rig:
        judge_offer(verdict, rig.offered, ("NETFEAT-DEV-12",))
        if not offered_or_not(verdict, rig, ("NETCTRL-DEV-32", "NETCTRL-DEV-33"), (NetF.CTRL_VQ, NetF.RSS_CONTEXT)):
            return
        feats = rig.features_for(extra=CONTEXT_FEATURES)
        if feats is None:
            for rid in ("NETCTRL-DEV-32", "NETCTRL-DEV-33"):
                verdict.not_offered(rid, "no feature set with CTRL_VQ, RSS and RSS_CONTEXT")
            return
        x = Exchange(rig, feats)
        a, result = x.command_result("VIRTNET_RSS_CTX_CTRL_CAP_GET", VIRTNET_RSS_CTX_CTRL,
                                     VIRTNET_RSS_CTX_CTRL_CAP_GET, b"", 2)
        max_ctx = int.from_bytes(result, "little")
        verdict.check("NETCTRL-DEV-32", a.used and a.ack == VIRTIO_NET_OK and a.used_len >= 3 and max_ctx >= 1,
                      f"{a.describe()}; max_rss_contexts {max_ctx} (expected VIRTIO_NET_OK, 3 bytes written, >= 1)")
        if not (a.used and a.ack == VIRTIO_NET_OK and max_ctx >= 1):
            verdict.not_applicable("NETCTRL-DEV-33", "max_rss_contexts not known")
            return
        pairs = x.m.pairs
        ids = list(range(1, min(max_ctx, 2) + 1))
        hash_types = BASIC_TYPES & int.from_bytes(rig.drv.transport.read_device_config(NetCfg.SUPPORTED_HASH_TYPES, 4,
                                                                                       4), "little")

        def rss(salt: int) -> bytes:
            return rss_config(hash_types, table_for(pairs, 8, salt), 0, pairs, OTHER_KEY if salt else MS_KEY)

        def ctx(ex: Exchange, name: str, cmd: int, ctx_id: int, salt: int = 0) -> Ack:
            data = struct.pack("<H", ctx_id) if cmd == VIRTNET_RSS_CTX_CTRL_DEL else ctx_add_modify(ctx_id, rss(salt))
            return ex.command(f"{name} rss_ctx_id {ctx_id}", VIRTNET_RSS_CTX_CTRL, cmd, data)

        before = [ctx(x, "ADD", VIRTNET_RSS_CTX_CTRL_ADD, i) for i in ids]
        before += [ctx(x, "MOD", VIRTNET_RSS_CTX_CTRL_MOD, i, 1) for i in ids]
        if not all(b.used and b.ack == VIRTIO_NET_OK for b in before):
            verdict.not_applicable("NETCTRL-DEV-33", "contexts could not be added and modified: "
                                   + "; ".join(b.describe() for b in before))
            return
        x = Exchange(rig, feats)  # device reset and a new initialization
        gone = [ctx(x, "MOD", VIRTNET_RSS_CTX_CTRL_MOD, i, 1) for i in ids]
        gone += [ctx(x, "DEL", VIRTNET_RSS_CTX_CTRL_DEL, i) for i in ids]
        again = [ctx(x, "ADD", VIRTNET_RSS_CTX_CTRL_ADD, i) for i in ids]
        verdict.check("NETCTRL-DEV-33", all(g.used and g.ack == VIRTIO_NET_ERR for g in gone)
                      and all(a.used and a.ack == VIRTIO_NET_OK for a in again),
                      f"contexts {ids} added and modified (VIRTIO_NET_OK), then a device reset: "
                      + "; ".join(g.describe() for g in gone) + " (expected VIRTIO_NET_ERR: no such context); "
                      + "; ".join(a.describe() for a in again) + " (expected VIRTIO_NET_OK: the id is free)")


# --- automatic receive steering ---------------------------------------------------------------------------------------

def reply_of(f: Flow) -> Flow:
    return Flow(f.version, f.proto, f.dst, f.src, f.dport, f.sport)


def judge_reply_steering(verdict: Verdict, x: Exchange, pairs: int,
                         phase: str) -> tuple[list[tuple[int, Flow]], dict[int, int]]:
    """Flows sent on each transmit queue, their replies sent on the other ones: each reply on the receive queue of
    its flow's transmit queue (NETCTRL-DEV-B02). Returns the replies (the pair of the flow, the flow) and the pair
    each came to, by index."""
    flows = {p: [Flow(4, "udp", f"10.60.{p}.{i + 1}", f"10.61.{i}.{p + 9}", 1024 + 16 * p + i, 5000 + i)
                 for i in range(4)] + [Flow(6, "tcp", f"fd60::{p + 1:x}:{i + 1:x}", f"fd61::{i + 3:x}",
                                            2048 + 16 * p + i, 443) for i in range(2)]
             for p in range(pairs)}
    for p in range(pairs):
        x.send(x.frames(flows[p]), tx_pair=p)
    replies = [(p, f) for p in range(pairs) for f in flows[p]]
    landed: dict[int, int] = {}  # reply index -> pair it came to
    stray = []
    for r in range(pairs):  # each transmit queue sends the replies of the flows of the others
        batch = [(i, p, f) for i, (p, f) in enumerate(replies) if p != r]
        got = x.send(x.frames([reply_of(f) for _, _, f in batch]), tx_pair=r)
        for j, (i, p, f) in enumerate(batch):
            rx = got.get(j)
            if rx is None:
                stray.append(f"reply of {f}: never came")
                continue
            landed[i] = rx.queue
            if rx.queue != p:
                stray.append(f"reply of {f} (sent on transmitq{p + 1}): receiveq{rx.queue + 1}")
    verdict.check("NETCTRL-DEV-B02", not stray,
                  f"{phase}{len(replies)} flows sent on transmitq1..{pairs}, each flow's reply sent on the other "
                  f"transmit queues: replies not on the receive queue of the flow's transmit queue: "
                  f"{stray[:4] or 'none'}")
    return replies, landed


@pytest.mark.req(*STEERING_IDS)
def test_automatic_steering(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(bench.variant(queues=PAIRS)) as rig:
        if not offered_or_not(verdict, rig, STEERING_IDS, (NetF.CTRL_VQ, NetF.MQ)):
            return
        feats = rig.features_for(extra=STEERING_FEATURES, drop=bits(NetF.RSS))
        if feats is None or not rig.looped(verdict, *STEERING_IDS):
            return
        x = Exchange(rig, feats)
        pairs = x.m.pairs
        if pairs < 2:
            for rid in STEERING_IDS:
                verdict.not_applicable(rid, f"max_virtqueue_pairs {pairs}: one receive queue")
            return
        a = x.m.vq_pairs_set(pairs)
        if not (a.used and a.ack == VIRTIO_NET_OK):
            for rid in STEERING_IDS:
                verdict.not_applicable(rid, f"{a.describe()}: multiqueue not enabled")
            return
        # Flows sent on each transmit queue; their replies sent on another one must come to the first one's pair.
        replies, landed = judge_reply_steering(verdict, x, pairs, "")
        if not has(rig.features, F.RING_RESET):
            for rid in ("NETCTRL-DEV-27", "NETCTRL-DEV-28"):
                verdict.not_offered(rid, "VIRTIO_F_RING_RESET not negotiated")
            return
        # The queue the replies of one pair's flows chose, being reset: they go elsewhere (NETCTRL-DEV-27).
        victim = max(range(1, pairs), key=lambda q: sum(1 for v in landed.values() if v == q))
        chose = [f for i, (p, f) in enumerate(replies) if landed.get(i) == victim]
        x.reset_rx(victim)
        got = x.send(x.frames([reply_of(f) for f in chose]), tx_pair=0)
        moved = {j: rx.queue for j, rx in got.items()}
        lost = [str(chose[j]) for j in range(len(chose)) if j not in moved]
        verdict.check("NETCTRL-DEV-27", bool(chose) and not lost and victim not in moved.values(),
                      f"receiveq{victim + 1} reset: {len(chose)} replies whose flows it was chosen for; came to "
                      f"{sorted({q + 1 for q in moved.values()}) or 'no queue'}; lost: {lost[:4] or 'none'}")
        # Every receive queue being reset: dropped, not delivered later, nothing written (NETCTRL-DEV-28).
        for p in range(pairs):
            if p not in x.down:
                x.reset_rx(p)
        old_rings = {p: x.m.ring(2 * p) for p in range(pairs)}
        dropped = x.frames([reply_of(f) for _, f in replies])
        x.send(dropped, tx_pair=0, expect=0)
        written = {p + 1: len(r.used()) for p, r in old_rings.items()}
        for p in range(pairs):
            x.enable_rx(p)
        markers = x.frames([Flow(4, "udp", f"10.62.0.{i + 1}", "10.63.0.1", 999, 9) for i in range(4)])
        got = x.send(markers, tx_pair=0, watch=dropped)
        late = sum(1 for i in got if i >= len(markers))
        came = sum(1 for i in got if i < len(markers))
        verdict.check("NETCTRL-DEV-28", not late and came == len(markers) and not any(written.values()),
                      f"every receive queue reset, {len(dropped)} frames sent: used entries written to the reset "
                      f"rings {written}; queues enabled again: {late} of those frames delivered later, {came} of "
                      f"{len(markers)} new frames delivered")


@pytest.mark.req("NETCTRL-DEV-B02")
def test_automatic_steering_rss_not_configured(bench: Bench, verdict: Verdict) -> None:
    """VIRTIO_NET_F_RSS negotiated too, but no RSS_CONFIG sent since the device reset: multiqueue enabled by
    VQ_PAIRS_SET is automatic receive steering (5.1.9.5.6), as without RSS; the indirection table steers only once
    RSS_CONFIG set it (5.1.9.5.7), and a device reset forgets it. So the replies of flows sent on transmitqX come to
    receiveqX (NETCTRL-DEV-B02), on the device as first initialized, and after an RSS_CONFIG and a device reset."""
    rid = "NETCTRL-DEV-B02"
    with bench.rig(variant_spec(bench, STEERING_FEATURES | bits(NetF.RSS), PAIRS)) as rig:
        if not offered_or_not(verdict, rig, (rid,), (NetF.CTRL_VQ, NetF.MQ, NetF.RSS)):
            return
        feats = rig.features_for(extra=STEERING_FEATURES | bits(NetF.RSS))
        if feats is None or not has(feats, NetF.RSS):
            verdict.not_offered(rid, "no feature set with CTRL_VQ, MQ and RSS")
            return
        if not rig.looped(verdict, rid):
            return
        x = Exchange(rig, feats)
        pairs = x.m.pairs
        if pairs < 2:
            verdict.not_applicable(rid, f"max_virtqueue_pairs {pairs}: one receive queue")
            return
        hash_types = BASIC_TYPES & int.from_bytes(rig.drv.transport.read_device_config(NetCfg.SUPPORTED_HASH_TYPES, 4,
                                                                                       4), "little")
        for n in range(2):
            phase = "RSS negotiated, no RSS_CONFIG: "
            if n:
                # Every table entry receiveq1: a device steering by it after the reset would put every reply there.
                c = x.command("RSS_CONFIG (every entry receiveq1)", VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
                              rss_config(hash_types, [0] * 8, 0, pairs, MS_KEY))
                phase = f"RSS negotiated, {c.describe()}, then a device reset and no RSS_CONFIG: "
                x = Exchange(rig, feats)  # device reset and a new initialization
            a = x.m.vq_pairs_set(pairs)
            if not (a.used and a.ack == VIRTIO_NET_OK):
                verdict.not_applicable(rid, f"{phase}{a.describe()}: multiqueue not enabled")
                return
            judge_reply_steering(verdict, x, pairs, phase)
