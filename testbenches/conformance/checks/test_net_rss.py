"""Receive-side scaling and hash reporting (5.1.4, 5.1.9.4.3, 5.1.9.5.6.4, 5.1.9.5.7).

A configurable target is run as two variants: one with four queue pairs offering VIRTIO_NET_F_CTRL_VQ, MQ, RSS and
HASH_REPORT besides its own offer, one with a single queue pair offering CTRL_VQ and HASH_REPORT only; another
target is run as it is, and the rows of what it does not offer read "not offered". The steering test runs on both
ring layouts (packed reads not offered without RING_PACKED). The hash is computed here by a
reference Toeplitz function of this module over the fields 5.1.9.4.3.1 names, from the addresses and ports the
frames were built with (scapy), never from the device's code:

- the configuration fields: rss_max_key_size at least 40 (NET-DEV-07), rss_max_indirection_table_length at least
  128 (NET-DEV-08), HASH_REPORT only with CTRL_VQ (NET-DEV-13);
- VIRTIO_NET_CTRL_MQ_RSS_CONFIG acknowledged VIRTIO_NET_OK (NET-DEV-B01/B02), HASH_CONFIG without RSS (B01/B03);
- TCP/UDP over IPv4/IPv6 and plain IP frames land on the indirection table entry at (hash & mask), one queue per
  flow, also for random flows (a hypothesis property) and after a second configuration with another key and a
  smaller table; invalid configurations (a table not a power of two, longer than the maximum, naming a queue
  not enabled, unsupported hash types, a key too long) are answered VIRTIO_NET_ERR and leave the table in force
  (NETCTRL-DEV-29);
- frames without a hash (not IP, or IP of a type not enabled) land on unclassified_queue (NETCTRL-DEV-30);
- frames whose selected queue is being reset (VIRTIO_F_RING_RESET) are dropped, the others still delivered
  (NETCTRL-DEV-31);
- with HASH_REPORT, hash_value is the reference hash and hash_report its type, VIRTIO_NET_HASH_REPORT_NONE with 0
  for frames without one, under the parameters of the last RSS_CONFIG or HASH_CONFIG (NETCTRL-DEV-B03).
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether

from backend.virtio.features import F, NetF, bits, has
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    VIRTIO_NET_ERR,
    VIRTIO_NET_HASH_REPORT_NONE,
    VIRTIO_NET_OK,
    VIRTIO_NET_HASH_REPORT_IPv4,
    VIRTIO_NET_HASH_REPORT_IPv6,
    VIRTIO_NET_HASH_REPORT_TCPv4,
    VIRTIO_NET_HASH_REPORT_TCPv6,
    VIRTIO_NET_HASH_REPORT_UDPv4,
    VIRTIO_NET_HASH_REPORT_UDPv6,
    VIRTIO_NET_RSS_HASH_TYPE_IPv4,
    VIRTIO_NET_RSS_HASH_TYPE_IPv6,
    VIRTIO_NET_RSS_HASH_TYPE_TCPv4,
    VIRTIO_NET_RSS_HASH_TYPE_TCPv6,
    VIRTIO_NET_RSS_HASH_TYPE_UDPv4,
    VIRTIO_NET_RSS_HASH_TYPE_UDPv6,
)
from backend.virtio.pci_regs import NetCfg
from testbenches.conformance.checks.test_net_ctrl_mq import Ack, MqRig
from testbenches.conformance.harness import QUIET_WAIT, Bench, Rig
from testbenches.conformance.plugin import Verdict
from testbenches.driver.layout import Layout

#: The six hash types without IPv6 extension headers (the _EX ones a device may leave out).
BASIC_TYPES = (VIRTIO_NET_RSS_HASH_TYPE_IPv4 | VIRTIO_NET_RSS_HASH_TYPE_TCPv4 | VIRTIO_NET_RSS_HASH_TYPE_UDPv4
               | VIRTIO_NET_RSS_HASH_TYPE_IPv6 | VIRTIO_NET_RSS_HASH_TYPE_TCPv6 | VIRTIO_NET_RSS_HASH_TYPE_UDPv6)
#: The verification key of Microsoft's RSS documentation (the spec's Toeplitz reference).
MS_KEY = bytes.fromhex("6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa")
OTHER_KEY = bytes(range(0x31, 0x31 + 40))
PAIRS = 4
RSS_VARIANT_FEATURES = bits(NetF.CTRL_VQ, NetF.MQ, NetF.RSS, NetF.HASH_REPORT)
HASH_VARIANT_FEATURES = bits(NetF.CTRL_VQ, NetF.HASH_REPORT)
RSS_IDS = ("NET-DEV-07", "NET-DEV-08", "NET-DEV-13", "NET-DEV-B01", "NET-DEV-B02", "NET-DEV-B03", "NETCTRL-DEV-29",
           "NETCTRL-DEV-30", "NETCTRL-DEV-31", "NETCTRL-DEV-B03")
HASH_IDS = ("NET-DEV-07", "NET-DEV-13", "NET-DEV-B01", "NET-DEV-B03", "NETCTRL-DEV-B03")
SRC_MAC = "02:00:00:00:00:02"
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# --- the reference hash -----------------------------------------------------------------------------------------

def reference_toeplitz(key: bytes, data: bytes) -> int:
    """Toeplitz by the byte: a 32-bit window of the key slides one bit per input bit (5.1.9.4.3.2)."""
    key = key + bytes(len(data) + 4 - len(key)) if len(key) < len(data) + 4 else key
    window = int.from_bytes(key[:4], "big")
    result = 0
    for i, byte in enumerate(data):
        nxt = key[i + 4]
        for bit in range(8):
            if byte & (0x80 >> bit):
                result ^= window
            window = ((window << 1) | ((nxt >> (7 - bit)) & 1)) & 0xFFFFFFFF
    return result


@dataclass(frozen=True)
class Flow:
    """What a test frame is built from: ``proto`` "tcp", "udp", "icmp" (IP only) or "arp" (not IP)."""

    version: int
    proto: str
    src: str
    dst: str
    sport: int = 0
    dport: int = 0

    def frame(self, k: int, dst_mac: str) -> bytes:
        eth = Ether(src=SRC_MAC, dst=dst_mac)
        pad = struct.pack(">I", k) + b"rss" * (4 + k % 5)
        if self.proto == "arp":
            return bytes(eth / ARP(psrc=self.src, pdst=self.dst) / pad)
        ip = IP(src=self.src, dst=self.dst) if self.version == 4 else IPv6(src=self.src, dst=self.dst)
        l4 = {"tcp": TCP(sport=self.sport, dport=self.dport), "udp": UDP(sport=self.sport, dport=self.dport),
              "icmp": ICMP() if self.version == 4 else ICMPv6EchoRequest()}[self.proto]
        return bytes(eth / ip / l4 / pad)

    def expected(self, hash_types: int, key: bytes) -> tuple[int, int] | None:
        """(hash, hash_report) by 5.1.9.4.3.1 for the types enabled, or None: no hash."""
        if self.proto == "arp":
            return None
        addrs = ipaddress.ip_address(self.src).packed + ipaddress.ip_address(self.dst).packed
        ports = struct.pack(">HH", self.sport, self.dport)
        v4 = self.version == 4
        l4 = {("tcp", True): (VIRTIO_NET_RSS_HASH_TYPE_TCPv4, VIRTIO_NET_HASH_REPORT_TCPv4),
              ("udp", True): (VIRTIO_NET_RSS_HASH_TYPE_UDPv4, VIRTIO_NET_HASH_REPORT_UDPv4),
              ("tcp", False): (VIRTIO_NET_RSS_HASH_TYPE_TCPv6, VIRTIO_NET_HASH_REPORT_TCPv6),
              ("udp", False): (VIRTIO_NET_RSS_HASH_TYPE_UDPv6, VIRTIO_NET_HASH_REPORT_UDPv6)}
        typ = l4.get((self.proto, v4))
        if typ is not None and hash_types & typ[0]:
            return reference_toeplitz(key, addrs + ports), typ[1]
        ip_type, ip_report = ((VIRTIO_NET_RSS_HASH_TYPE_IPv4, VIRTIO_NET_HASH_REPORT_IPv4) if v4
                              else (VIRTIO_NET_RSS_HASH_TYPE_IPv6, VIRTIO_NET_HASH_REPORT_IPv6))
        if hash_types & ip_type:
            return reference_toeplitz(key, addrs), ip_report
        return None

    def __str__(self) -> str:
        if self.proto == "arp":
            return f"arp {self.src}>{self.dst}"
        if self.proto == "icmp":
            return f"icmpv{self.version} {self.src}>{self.dst}"
        return f"{self.proto}v{self.version} {self.src}:{self.sport}>{self.dst}:{self.dport}"


def fixed_flows() -> list[Flow]:
    flows: list[Flow] = []
    for i in range(6):
        flows.append(Flow(4, "tcp", f"10.1.{i}.1", f"10.2.{i}.2", 1000 + 17 * i, 80 + i))
        flows.append(Flow(4, "udp", f"10.3.{i}.1", f"10.4.{i}.9", 5000 + 31 * i, 53 + i))
        flows.append(Flow(6, "tcp", f"fd00::{i + 1:x}", f"fd01::{7 * i + 2:x}", 2000 + 13 * i, 443))
        flows.append(Flow(6, "udp", f"fd02::{i + 3:x}", f"fd03::{5 * i + 1:x}", 6000 + 7 * i, 4789 + i))
    for i in range(3):
        flows.append(Flow(4, "icmp", f"192.168.{i}.1", f"192.168.{i}.200"))
        flows.append(Flow(6, "icmp", f"fd04::{i + 1:x}", f"fd05::{i + 9:x}"))
        flows.append(Flow(4, "arp", f"172.16.0.{i + 1}", f"172.16.0.{i + 100}"))
    return flows


# --- the commands -------------------------------------------------------------------------------------------------

def rss_config(hash_types: int, table: Sequence[int], unclassified: int, max_tx_vq: int, key: bytes,
               mask: int | None = None) -> bytes:
    """struct virtio_net_rss_config (5.1.9.5.7.1); queues as rss_rq_id (receive queue pair index)."""
    m = len(table) - 1 if mask is None else mask
    return (struct.pack("<IHH", hash_types, m, unclassified) + struct.pack(f"<{len(table)}H", *table)
            + struct.pack("<HB", max_tx_vq, len(key)) + key)


def hash_config(hash_types: int, key: bytes) -> bytes:
    """struct virtio_net_hash_config: hash_types, reserved[4] (zero), hash_key_length, hash_key_data."""
    return struct.pack("<I8xB", hash_types, len(key)) + key


@dataclass
class Received:
    queue: int
    hash_value: int
    hash_report: int
    frame: bytes


class RssRig:
    """Every queue set up (:class:`MqRig`) and frames sent on transmitq1, gathered per receive queue with their
    header's hash fields."""

    def __init__(self, rig: Rig, features: int, layout: Layout = "split") -> None:
        self.rig = rig
        self.m = MqRig(rig, features, layout)
        self.features = rig.features
        self.report = has(self.features, NetF.HASH_REPORT)
        self.seq = 0
        self.dst_mac = rig.drv.transport.read_device_config(NetCfg.MAC, 6).hex(":") \
            if has(self.features, NetF.MAC) else "02:00:00:00:00:01"
        self.down: set[int] = set()

    def command(self, what: str, cmd: int, data: bytes) -> Ack:
        return self.m.command(what, VIRTIO_NET_CTRL_MQ, cmd, data)

    def send(self, flows: Sequence[Flow], expect: int) -> dict[int, Received]:
        """Each flow's frame out on transmitq1; what came back, by the index of its flow in ``flows``, waiting
        until ``expect`` frames came or the rig's event wait passed."""
        frames = []
        for f in flows:
            self.seq += 1
            frames.append(f.frame(self.seq, self.dst_mac))
        index = {fr: i for i, fr in enumerate(frames)}
        hdr = self.rig.tx_header()
        tx = self.m.ring(1)
        tx.used()
        for fr in frames:
            tx.add([hdr + fr], [])
        tx.publish()
        self.rig.doorbell(1)
        hl = self.rig.hdr_len
        got: dict[int, Received] = {}
        live = [q for q in self.m.rx_queues if q // 2 not in self.down]
        deadline = time.monotonic() + self.rig.event_wait
        while True:
            for q in live:
                for u in self.m.ring(q).used():
                    data = u.data
                    value, report = struct.unpack_from("<IH", data, 12) if self.report and len(data) >= 20 else (0, 0)
                    i = index.get(bytes(data[hl:]))
                    if i is not None:
                        got[i] = Received(q // 2, value, report, bytes(data[hl:]))
            if len(got) >= expect or time.monotonic() > deadline:
                break
            self.m.wait_irqs(QUIET_WAIT)
        tx.used()
        for q in live:
            self.m.stock(q)
        return got


def judge_steering(verdict: Verdict, r: RssRig, flows: Sequence[Flow], hash_types: int, key: bytes,
                   table: Sequence[int], unclassified: int, phase: str, steering: bool = True) -> None:
    """Each flow's frame on the table entry for its reference hash (NETCTRL-DEV-29) or, unhashed, on
    unclassified_queue (NETCTRL-DEV-30) (``steering``: RSS configured); with HASH_REPORT the hash fields
    (NETCTRL-DEV-B03)."""
    came = r.send(flows, len(flows))
    mask = len(table) - 1
    wrong: dict[str, list[str]] = {"NETCTRL-DEV-29": [], "NETCTRL-DEV-30": [], "NETCTRL-DEV-B03": []}
    counts = {"NETCTRL-DEV-29": 0, "NETCTRL-DEV-30": 0}
    for i, f in enumerate(flows):
        exp = f.expected(hash_types, key)
        rid = "NETCTRL-DEV-30" if exp is None else "NETCTRL-DEV-29"
        counts[rid] += 1
        want_q = unclassified if exp is None else table[exp[0] & mask]
        rx = came.get(i)
        if rx is None:
            wrong[rid].append(f"{f}: never came (expected receiveq{want_q + 1})")
            continue
        if rx.queue != want_q:
            what = "no hash" if exp is None else f"hash {exp[0]:#010x}, entry {exp[0] & mask}"
            wrong[rid].append(f"{f}: receiveq{rx.queue + 1}, expected receiveq{want_q + 1} ({what})")
        if r.report:
            want = (0, VIRTIO_NET_HASH_REPORT_NONE) if exp is None else exp
            if (rx.hash_value, rx.hash_report) != want:
                wrong["NETCTRL-DEV-B03"].append(f"{f}: hash_value {rx.hash_value:#010x} hash_report "
                                                f"{rx.hash_report}, expected {want[0]:#010x} / {want[1]}")
    for rid, n in counts.items() if steering else ():
        if not n:
            continue
        verdict.check(rid, not wrong[rid],
                      f"{phase}: {n} frames, hash_types {hash_types:#x}, mask {mask}, unclassified_queue "
                      f"{unclassified}; wrong: {wrong[rid][:4] or 'none'}")
    if r.report:
        verdict.check("NETCTRL-DEV-B03", not wrong["NETCTRL-DEV-B03"],
                      f"{phase}: hash fields of {len(came)} received frames; wrong: "
                      f"{wrong['NETCTRL-DEV-B03'][:4] or 'none'}")


def variant_spec(bench: Bench, extra: int, queues: int) -> str | None:
    """The target spec offering ``extra`` too where the target is configurable, else None (as it is)."""
    if not bench.configurable:
        return None
    with bench.rig() as probe:
        offered = probe.offered
    return bench.variant(features=hex(offered | extra), queues=queues)


def judge_config_fields(verdict: Verdict, rig: Rig, ids: Sequence[str]) -> None:
    """NET-DEV-07 / 08 / 13 from the offer and the configuration fields."""
    t = rig.drv.transport
    offered = rig.offered
    rss, report = has(offered, NetF.RSS), has(offered, NetF.HASH_REPORT)
    if rss or report:
        size = t.read_device_config(NetCfg.RSS_MAX_KEY_SIZE, 1)[0]
        verdict.check("NET-DEV-07", size >= 40, f"rss_max_key_size {size} (RSS {int(rss)}, HASH_REPORT {int(report)})")
    if "NET-DEV-08" in ids and rss:
        length = int.from_bytes(t.read_device_config(NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 2, 2), "little")
        verdict.check("NET-DEV-08", length >= 128, f"rss_max_indirection_table_length {length}")
    if report:
        verdict.check("NET-DEV-13", has(offered, NetF.CTRL_VQ),
                      f"device features {offered:#x}: HASH_REPORT with CTRL_VQ {int(has(offered, NetF.CTRL_VQ))}")


def offered_or_not(verdict: Verdict, rig: Rig, ids: Sequence[str], need: Sequence[int]) -> bool:
    missing = [b for b in need if not has(rig.offered, b)]
    if missing:
        why = f"{', '.join('VIRTIO_NET_F_' + NetF(b).name for b in missing)} not offered (device features " \
              f"{rig.offered:#x})"
        for rid in ids:
            verdict.not_offered(rid, why)
        return False
    return True


def table_for(pairs: int, length: int, salt: int) -> list[int]:
    return [(i * 5 + i // 7 + salt) % pairs for i in range(length)]


@pytest.mark.req(*RSS_IDS)
def test_rss_steering(bench: Bench, verdict: Verdict, ring_layout: Layout) -> None:
    """On both ring layouts: the queue is chosen before the ring, whichever layout it has."""
    with bench.rig(variant_spec(bench, RSS_VARIANT_FEATURES, PAIRS)) as rig:
        if not offered_or_not(verdict, rig, RSS_IDS, (NetF.CTRL_VQ, NetF.RSS)) \
                or not rig.offers(ring_layout, verdict, *RSS_IDS):
            return
        judge_config_fields(verdict, rig, RSS_IDS)
        verdict.not_applicable("NET-DEV-B03", "the device offers VIRTIO_NET_F_RSS too (B03 binds HASH_REPORT "
                                              "without RSS)")
        feats = rig.features_for(extra=RSS_VARIANT_FEATURES | bits(F.RING_RESET), layout=ring_layout)
        if feats is None or not rig.looped(verdict, "NETCTRL-DEV-29", "NETCTRL-DEV-30", "NETCTRL-DEV-31",
                                           "NETCTRL-DEV-B03"):
            return
        r = RssRig(rig, feats, ring_layout)
        pairs = r.m.pairs
        max_len = int.from_bytes(rig.drv.transport.read_device_config(NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 2, 2),
                                 "little")
        supported = int.from_bytes(rig.drv.transport.read_device_config(NetCfg.SUPPORTED_HASH_TYPES, 4, 4), "little")
        types = BASIC_TYPES & supported & ~VIRTIO_NET_RSS_HASH_TYPE_IPv6  # IPv6 without TCP/UDP: no hash, unclassified
        table = table_for(pairs, min(128, max_len), 1)
        unclassified = pairs - 1
        a = r.command("RSS_CONFIG", VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
                      rss_config(types, table, unclassified, pairs, MS_KEY))
        for rid in ("NET-DEV-B01", "NET-DEV-B02"):
            verdict.check(rid, a.used and a.ack == VIRTIO_NET_OK, a.describe() + " (expected VIRTIO_NET_OK)")
        if not a.used or a.ack != VIRTIO_NET_OK:
            return
        if not r.report:
            verdict.not_offered("NETCTRL-DEV-B03", "VIRTIO_NET_F_HASH_REPORT not negotiated")
        flows = fixed_flows()
        judge_steering(verdict, r, flows, types, MS_KEY, table, unclassified, "RSS_CONFIG 1 (Microsoft key)")

        # Invalid configurations: refused, the table in force unchanged.
        bad = {
            "table of 3 entries": rss_config(types, table[:3], 0, pairs, OTHER_KEY, mask=2),
            f"table of {2 * max_len} entries": rss_config(types, [0] * (2 * max_len), 0, pairs, OTHER_KEY),
            f"entry naming receiveq{pairs + 1}": rss_config(types, [pairs] * 8, 0, pairs, OTHER_KEY),
            "unsupported hash type bit 31": rss_config(types | 1 << 31, [0] * 8, 0, pairs, OTHER_KEY),
            "a 255-byte key": rss_config(types, [0] * 8, 0, pairs, bytes(255)),
            f"max_tx_vq {pairs + 1}": rss_config(types, [0] * 8, 0, pairs + 1, OTHER_KEY),
        }
        refused = [(what, r.command(f"RSS_CONFIG with {what}", VIRTIO_NET_CTRL_MQ_RSS_CONFIG, data))
                   for what, data in bad.items()]
        not_err = [a.describe() for _, a in refused if not (a.used and a.ack == VIRTIO_NET_ERR)]
        verdict.check("NETCTRL-DEV-29", not not_err,
                      f"invalid RSS_CONFIGs must be refused with VIRTIO_NET_ERR, leaving the table in force: "
                      f"{not_err or 'all refused'}")
        judge_steering(verdict, r, flows, types, MS_KEY, table, unclassified, "after the refused RSS_CONFIGs")

        # Another key, a smaller table, IPv6 hashed too: ICMPv6 leaves the unclassified queue.
        table2 = table_for(pairs, 8, 2)
        types2 = BASIC_TYPES & supported & ~VIRTIO_NET_RSS_HASH_TYPE_UDPv4
        a = r.command("RSS_CONFIG 2", VIRTIO_NET_CTRL_MQ_RSS_CONFIG, rss_config(types2, table2, 0, pairs, OTHER_KEY))
        verdict.check("NET-DEV-B02", a.used and a.ack == VIRTIO_NET_OK, a.describe() + " (expected VIRTIO_NET_OK)")
        judge_steering(verdict, r, flows, types2, OTHER_KEY, table2, 0, "RSS_CONFIG 2 (8 entries, other key)")

        @settings(max_examples=12, **SETTINGS)  # type: ignore[arg-type]
        @given(ports=st.lists(st.tuples(st.integers(1, 0xFFFF), st.integers(1, 0xFFFF), st.integers(0, 0xFFFF),
                                        st.booleans(), st.booleans()), min_size=4, max_size=8))
        def random_flows(ports: list[tuple[int, int, int, bool, bool]]) -> None:
            flows = []
            for sport, dport, host, v6, tcp in ports:
                src, dst = (f"fd10::{host:x}", f"fd11::{sport:x}") if v6 else \
                    (f"10.{host >> 8}.{host & 0xFF}.1", f"10.99.{dport & 0xFF}.{1 + (sport & 0x7F)}")
                flows.append(Flow(6 if v6 else 4, "tcp" if tcp else "udp", src, dst, sport, dport))
            # each flow twice: the same queue both times
            judge_steering(verdict, r, flows + flows, types2, OTHER_KEY, table2, 0, "random flows")

        random_flows()

        # The selected queue being reset: its frames dropped, the others still delivered (NETCTRL-DEV-31).
        if not has(r.features, F.RING_RESET) or pairs < 2:
            verdict.not_offered("NETCTRL-DEV-31", "VIRTIO_F_RING_RESET not offered" if pairs >= 2
                                else "a single receive queue")
            return
        # Where each flow lands now, as observed (so this row is judged apart from NETCTRL-DEV-29's table).
        before = r.send(flows, len(flows))
        used = sorted({rx.queue for rx in before.values()} - {0})
        if not used:
            verdict.not_applicable("NETCTRL-DEV-31", "no flow landed on a receive queue other than receiveq1")
            return
        victim = used[0]
        rig.drv.transport.reset_queue(2 * victim)
        r.down.add(victim)
        on_victim = [flows[i] for i, rx in before.items() if rx.queue == victim]
        others = [flows[i] for i, rx in before.items() if rx.queue != victim]
        sent = [*on_victim, *others]
        got = r.send(sent, len(others))
        stray = [f"{sent[i]} on receiveq{rx.queue + 1}" for i, rx in got.items() if i < len(on_victim)]
        missing = len(others) - sum(1 for i in got if i >= len(on_victim))
        verdict.check("NETCTRL-DEV-31", bool(on_victim) and not stray and not missing,
                      f"receiveq{victim + 1} reset: {len(on_victim)} frames select it, {len(others)} others; "
                      f"delivered from the reset queue's frames: {stray or 'none'}; others missing: {missing}")


@pytest.mark.req(*HASH_IDS)
def test_hash_report(bench: Bench, verdict: Verdict) -> None:
    with bench.rig(variant_spec(bench, HASH_VARIANT_FEATURES, 1)) as rig:
        if not offered_or_not(verdict, rig, HASH_IDS, (NetF.CTRL_VQ, NetF.HASH_REPORT)):
            return
        judge_config_fields(verdict, rig, HASH_IDS)
        feats = rig.features_for(extra=HASH_VARIANT_FEATURES, drop=bits(NetF.RSS))
        if feats is None or not rig.looped(verdict, "NETCTRL-DEV-B03"):
            return
        r = RssRig(rig, feats)
        if has(rig.offered, NetF.RSS):
            verdict.not_applicable("NET-DEV-B03", "the device offers VIRTIO_NET_F_RSS too")
        supported = int.from_bytes(rig.drv.transport.read_device_config(NetCfg.SUPPORTED_HASH_TYPES, 4, 4), "little")
        flows = fixed_flows()
        # Before any command: no hash types, nothing hashed.
        judge_steering(verdict, r, flows, 0, b"", [0], 0, "HASH_REPORT before HASH_CONFIG", steering=False)
        for i, (types, key) in enumerate(((BASIC_TYPES & supported, MS_KEY),
                                          (BASIC_TYPES & supported & ~VIRTIO_NET_RSS_HASH_TYPE_TCPv4
                                           & ~VIRTIO_NET_RSS_HASH_TYPE_UDPv6, OTHER_KEY))):
            a = r.command(f"HASH_CONFIG {i + 1}", VIRTIO_NET_CTRL_MQ_HASH_CONFIG, hash_config(types, key))
            for rid in ("NET-DEV-B01", "NET-DEV-B03", "NETCTRL-DEV-B03"):
                if rid == "NET-DEV-B03" and has(rig.offered, NetF.RSS):
                    continue
                verdict.check(rid, a.used and a.ack == VIRTIO_NET_OK, a.describe() + " (expected VIRTIO_NET_OK)")
            judge_steering(verdict, r, flows, types, key, [0], 0, f"HASH_CONFIG {i + 1} (types {types:#x})",
                           steering=False)
