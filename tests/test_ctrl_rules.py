"""The control queue driver rules of testbenches/monitor/ctrl_rules.py, fed straight into the monitor (no device):
a good command sequence breaks no row and judges every row it gives an opportunity; each hostile sequence is
flagged with exactly its row id."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from scapy.layers.l2 import ARP, Ether

from backend.targets import default_registry
from backend.virtio.features import F, NetF, bits
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_ANNOUNCE,
    VIRTIO_NET_CTRL_ANNOUNCE_ACK,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
    VIRTIO_NET_CTRL_HASH_TUNNEL,
    VIRTIO_NET_CTRL_HASH_TUNNEL_SET,
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
    VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLUNI,
    VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_CTRL_VLAN_ADD,
    VIRTIO_NET_OK,
    VIRTNET_RSS_CTX_CTRL,
    VIRTNET_RSS_CTX_CTRL_CAP_GET,
)
from backend.virtio.net_hdr import hdr_size
from backend.virtio.pci_regs import VIRTIO_NET_S_ANNOUNCE, CommonCfg, NetCfg
from sim.memory import GuestMemory
from testbenches.driver.layout import Layout, layout_features
from testbenches.driver.virtio_net import DEFAULT_FEATURES, GuestNetDriver
from testbenches.frames import test_frame
from testbenches.monitor import PackedRingMonitor, SplitRingMonitor, TracingPciDevice
from testbenches.monitor.ctrl_rules import (
    ControlQueueMonitor,
)
from testbenches.monitor.virtio_pci_rules import Event

MAC = bytes.fromhex("020000000001")
NEW_MAC = bytes.fromhex("020000000077")
PAIRS = 4
CTRL_Q = 2 * PAIRS
SUPPORTED_HASH = 0x3F
#: Everything the good sequence uses (HASH_TUNNEL and CTRL_GUEST_OFFLOADS for their payload rows).
FULL = bits(F.VERSION_1, NetF.MAC, NetF.CTRL_VQ, NetF.CTRL_RX, NetF.CTRL_RX_EXTRA, NetF.CTRL_VLAN, NetF.CTRL_MAC_ADDR,
            NetF.GUEST_ANNOUNCE, NetF.MQ, NetF.RSS, NetF.HASH_REPORT, NetF.HASH_TUNNEL, NetF.CTRL_GUEST_OFFLOADS,
            NetF.GUEST_CSUM)


class Run:
    """Guest memory, a device config and the monitor; commands and frames posted the way a ring monitor hands
    them over."""

    def __init__(self, features: int = FULL) -> None:
        self.mem = bytearray(1 << 20)
        self.top = 0x1000
        cfg = bytearray(0x20)
        cfg[NetCfg.MAC:NetCfg.MAC + 6] = MAC
        struct.pack_into("<H", cfg, NetCfg.MAX_VIRTQUEUE_PAIRS, PAIRS)
        struct.pack_into("<H", cfg, NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 128)
        struct.pack_into("<I", cfg, NetCfg.SUPPORTED_HASH_TYPES, SUPPORTED_HASH)
        struct.pack_into("<I", cfg, NetCfg.SUPPORTED_TUNNEL_TYPES, 0x11)
        self.cfg = bytes(cfg)
        self.features = features
        self.mon = ControlQueueMonitor(self.read, lambda off, n: self.cfg[off:off + n])
        self.seq = 0

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.mem[addr:addr + n])

    def put(self, data: bytes) -> int:
        addr = self.top
        self.mem[addr:addr + len(data)] = data
        self.top += len(data) + 64
        return addr

    def _event(self, kind: str, field: CommonCfg | None, value: int, size: int, offset: int, queue: int) -> None:
        self.seq += 1
        self.mon.event(Event(self.seq, kind, field, value, size, offset, queue), self.features)

    def enable(self, *queues: int) -> None:
        for q in queues:
            self._event("common_w", CommonCfg.QUEUE_ENABLE, 1, 2, CommonCfg.QUEUE_ENABLE, q)

    def status_read(self, status: int) -> None:
        self._event("devcfg_r", None, status, 2, NetCfg.STATUS, -1)

    def command(self, cls: int, command: int, data: bytes = b"", ack: int = VIRTIO_NET_OK,
                result: bytes = b"") -> None:
        """A command as two readable descriptors (class/command, data) and the ack byte (with any
        command-specific-result after it), already written."""
        segs: list[tuple[int, int, bool]] = [(self.put(bytes([cls, command])), 2, False)]
        if data:
            segs.append((self.put(data), len(data), False))
        segs.append((self.put(bytes([ack]) + result), 1 + len(result), True))
        multi = self.features & bits(NetF.MQ, NetF.RSS)
        queue = CTRL_Q if multi else 2
        self.mon.buffer(queue, segs, self.features, f"command {cls}/{command}")
        self._event("notify", None, queue, 4, 0, -1)  # its doorbell, after the ring monitor's look

    def frame(self, queue: int, frame: bytes) -> None:
        data = bytes(hdr_size(self.features)) + frame
        self.mon.buffer(queue, [(self.put(data), len(data), False)], self.features, f"frame on {queue}")

    def verdicts(self) -> dict[str, tuple[bool, list[str]]]:
        return self.mon.verdicts()

    def failed(self) -> list[str]:
        return sorted(rid for rid, (ok, _e) in self.verdicts().items() if not ok)


def mac_table(unicast: Sequence[bytes], multicast: Sequence[bytes]) -> bytes:
    return (struct.pack("<I", len(unicast)) + b"".join(unicast) + struct.pack("<I", len(multicast))
            + b"".join(multicast))


def rss_config(hash_types: int, table: Sequence[int], mask: int | None = None) -> bytes:
    mask = len(table) - 1 if mask is None else mask
    return struct.pack(f"<IHH{len(table)}HHB", hash_types, mask, 0, *table, 1, 40) + bytes(40)


def garp(src: bytes) -> bytes:
    mac = src.hex(":")
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=mac, psrc="10.0.0.1", pdst="10.0.0.1"))


def good(run: Run) -> None:
    """A conforming driver: every pair and the control queue set up, frames on transmitq1, then the commands."""
    run.enable(*range(CTRL_Q + 1))
    run.frame(1, test_frame(0, 60, src=MAC))
    run.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\x01")
    run.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLUNI, b"\x00")
    run.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET,
                mac_table([bytes.fromhex("020000000010")], [bytes.fromhex("01005e000001")]))
    run.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, NEW_MAC)
    run.frame(1, test_frame(1, 60, src=NEW_MAC))
    run.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 2))
    run.frame(3, test_frame(2, 60, src=NEW_MAC))
    run.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_HASH_CONFIG, struct.pack("<I4HB", 1, 0, 0, 0, 0, 40) + bytes(40))
    run.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, rss_config(0x7, [0, 1, 2, 3] * 4))
    run.command(VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET, struct.pack("<I", 0x10))
    run.command(VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
                struct.pack("<Q", 1 << NetF.GUEST_CSUM))
    run.status_read(1 | VIRTIO_NET_S_ANNOUNCE)
    run.frame(1, garp(NEW_MAC))
    run.command(VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK)


def test_good_sequence_breaks_no_row() -> None:
    run = Run()
    good(run)
    assert run.failed() == []
    # every row the sequence gives an opportunity is judged; 01/21 are not (HASH_TUNNEL negotiated, no RSS_CONTEXT
    # command: judged below), 14 (frames on transmitq1 before VQ_PAIRS_SET) is, 22/23 need RSS contexts
    judged = set(run.verdicts())
    assert judged >= {"NETCTRL-DRV-02", "NETCTRL-DRV-03", "NETCTRL-DRV-07", "NETCTRL-DRV-08", "NETCTRL-DRV-10",
                      "NETCTRL-DRV-11", "NETCTRL-DRV-12", "NETCTRL-DRV-13", "NETCTRL-DRV-14", "NETCTRL-DRV-15",
                      "NETCTRL-DRV-17", "NETCTRL-DRV-18", "NETCTRL-DRV-19", "NETCTRL-DRV-20", "NETCTRL-DRV-21",
                      "NETCTRL-DRV-24", "NETCTRL-DRV-B01"}


def test_rss_contexts() -> None:
    """With RSS_CONTEXT: the rss_ctx_id of ADD within the max_rss_contexts CAP_GET returned; once a context is
    configured every command judges NETCTRL-DRV-23 (no VQ_PAIRS_SET); a refused ADD configures nothing."""
    run = Run(FULL | bits(NetF.RSS_CONTEXT))
    run.enable(*range(CTRL_Q + 1))
    run.command(VIRTNET_RSS_CTX_CTRL, VIRTNET_RSS_CTX_CTRL_CAP_GET, result=struct.pack("<H", 4))
    run.command(VIRTNET_RSS_CTX_CTRL, 1, struct.pack("<H6x", 9) + rss_config(0x1, [0, 1]), ack=1)
    run.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 2))
    assert run.failed() == ["NETCTRL-DRV-22"] and "NETCTRL-DRV-23" not in run.verdicts()
    run = Run(FULL | bits(NetF.RSS_CONTEXT))
    run.enable(*range(CTRL_Q + 1))
    run.command(VIRTNET_RSS_CTX_CTRL, VIRTNET_RSS_CTX_CTRL_CAP_GET, result=struct.pack("<H", 4))
    run.command(VIRTNET_RSS_CTX_CTRL, 1, struct.pack("<H6x", 4) + rss_config(0x1, [0, 1]))
    run.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\x00")
    assert run.failed() == [] and {"NETCTRL-DRV-22", "NETCTRL-DRV-23"} <= set(run.verdicts())


def test_an_answer_not_read_in_time_opens_no_row() -> None:
    """A context ADD whose ack bytes the next command reuses (before any register access) is unknown: the
    VQ_PAIRS_SET after it is not judged; the same ADD with a register access between is read and judged."""
    for access, judged in ((False, False), (True, True)):
        run = Run(FULL | bits(NetF.RSS_CONTEXT))
        run.enable(*range(CTRL_Q + 1))
        run.command(VIRTNET_RSS_CTX_CTRL, 1, struct.pack("<H6x", 1) + rss_config(0x1, [0, 1]))
        if access:
            run.status_read(1)
        reused = run.top - 64 - 1  # the ack byte of the ADD, as the next command's data
        run.mon.buffer(CTRL_Q, [(reused, 4, False), (run.put(bytes(1)), 1, True)], run.features, "reuse")
        assert ("NETCTRL-DRV-23" in run.verdicts()) == judged


def test_narrow_driver_judges_the_feature_rows() -> None:
    """Without CTRL_RX, CTRL_RX_EXTRA, RSS, RSS_CONTEXT and HASH_TUNNEL: a VLAN command judges their absence."""
    run = Run(bits(F.VERSION_1, NetF.CTRL_VQ, NetF.CTRL_VLAN))
    run.command(VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, struct.pack("<H", 5))
    v = run.verdicts()
    assert run.failed() == []
    assert {"NETCTRL-DRV-01", "NETCTRL-DRV-04", "NETCTRL-DRV-05", "NETCTRL-DRV-06", "NETCTRL-DRV-16",
            "NETCTRL-DRV-21"} <= set(v)
    assert "1 control command(s)" in run.mon.seen()


NARROW = bits(F.VERSION_1, NetF.MAC, NetF.CTRL_VQ, NetF.MQ)


def _hostile(case: str, run: Run) -> None:
    run.enable(*range(CTRL_Q + 1))
    mq = VIRTIO_NET_CTRL_MQ
    if case == "NETCTRL-DRV-01":
        run.command(VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET, struct.pack("<I", 0))
    elif case == "NETCTRL-DRV-02":
        run.command(VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET, struct.pack("<I", 0x2))
    elif case == "NETCTRL-DRV-03":
        run.cfg = run.cfg[:NetCfg.SUPPORTED_TUNNEL_TYPES] + struct.pack("<I", 0xFFFFFFFF)
        run.command(VIRTIO_NET_CTRL_HASH_TUNNEL, VIRTIO_NET_CTRL_HASH_TUNNEL_SET, struct.pack("<I", 1 << 12))
    elif case == "NETCTRL-DRV-04":
        run.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\x01")
    elif case == "NETCTRL-DRV-05":
        run.command(VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLUNI, b"\x01")
    elif case == "NETCTRL-DRV-06":
        run.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, mac_table([], []))
    elif case == "NETCTRL-DRV-07":
        run.frame(1, test_frame(0, 60, src=NEW_MAC))
    elif case == "NETCTRL-DRV-08":
        run.command(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET,
                    struct.pack("<I", 2) + NEW_MAC + struct.pack("<I", 0))
    elif case == "NETCTRL-DRV-10":
        run.status_read(VIRTIO_NET_S_ANNOUNCE)
        run.command(VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK)
    elif case == "NETCTRL-DRV-11":
        run.status_read(VIRTIO_NET_S_ANNOUNCE)
        run.frame(1, garp(MAC))
    elif case == "NETCTRL-DRV-12":
        run.mon.reset()
        run.enable(0, 1, CTRL_Q)
        run.command(mq, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 2))
    elif case == "NETCTRL-DRV-13":
        run.command(mq, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", PAIRS + 1))
    elif case == "NETCTRL-DRV-14":
        run.frame(3, test_frame(0, 60, src=MAC))
    elif case == "NETCTRL-DRV-15":
        run.command(mq, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 2))
        run.frame(5, test_frame(0, 60, src=MAC))
    elif case == "NETCTRL-DRV-16":
        run.command(mq, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, rss_config(0x1, [0]))
    elif case == "NETCTRL-DRV-17":
        run.mon.reset()
        run.enable(0, 1, 2, 3, CTRL_Q)
        run.command(mq, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, rss_config(0x1, [0, 1, 2, 1]))
    elif case == "NETCTRL-DRV-18":
        run.command(mq, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, rss_config(0x1, [0, 1, 0]))
    elif case == "NETCTRL-DRV-19":
        run.command(mq, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, rss_config(0x1, [0] * 256))
    elif case == "NETCTRL-DRV-20":
        run.command(mq, VIRTIO_NET_CTRL_MQ_RSS_CONFIG, rss_config(1 << 6, [0, 1]))
    elif case == "NETCTRL-DRV-B01":
        run.command(mq, VIRTIO_NET_CTRL_MQ_HASH_CONFIG, struct.pack("<I4HB", 1, 0, 7, 0, 0, 0))
    elif case == "NETCTRL-DRV-21":
        run.command(VIRTNET_RSS_CTX_CTRL, 1, struct.pack("<H", 1))
    elif case == "NETCTRL-DRV-22":
        run.command(VIRTNET_RSS_CTX_CTRL, VIRTNET_RSS_CTX_CTRL_CAP_GET, result=struct.pack("<H", 2))
        run.command(VIRTNET_RSS_CTX_CTRL, 1, struct.pack("<H6x", 3) + rss_config(0x1, [0, 1]))
    elif case == "NETCTRL-DRV-23":
        run.command(VIRTNET_RSS_CTX_CTRL, 1, struct.pack("<H", 1))  # acknowledged OK: a context exists
        run.command(mq, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 2))
    elif case == "NETCTRL-DRV-24":
        run.command(VIRTIO_NET_CTRL_GUEST_OFFLOADS, VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
                    struct.pack("<Q", 1 << NetF.GUEST_TSO4))


#: The features each hostile case runs under: the one its row is about withheld, or the one its payload needs.
HOSTILE_FEATURES = {
    "NETCTRL-DRV-01": NARROW, "NETCTRL-DRV-04": NARROW, "NETCTRL-DRV-05": NARROW | bits(NetF.CTRL_RX),
    "NETCTRL-DRV-06": NARROW, "NETCTRL-DRV-16": NARROW, "NETCTRL-DRV-21": NARROW | bits(NetF.RSS),
    "NETCTRL-DRV-22": FULL | bits(NetF.RSS_CONTEXT), "NETCTRL-DRV-23": FULL | bits(NetF.RSS_CONTEXT),
}
HOSTILE = ["NETCTRL-DRV-01", "NETCTRL-DRV-02", "NETCTRL-DRV-03", "NETCTRL-DRV-04", "NETCTRL-DRV-05",
           "NETCTRL-DRV-06", "NETCTRL-DRV-07", "NETCTRL-DRV-08", "NETCTRL-DRV-10", "NETCTRL-DRV-11",
           "NETCTRL-DRV-12", "NETCTRL-DRV-13", "NETCTRL-DRV-14", "NETCTRL-DRV-15", "NETCTRL-DRV-16",
           "NETCTRL-DRV-17", "NETCTRL-DRV-18", "NETCTRL-DRV-19", "NETCTRL-DRV-20", "NETCTRL-DRV-21",
           "NETCTRL-DRV-22", "NETCTRL-DRV-23", "NETCTRL-DRV-24", "NETCTRL-DRV-B01"]


@pytest.mark.parametrize("rid", HOSTILE)
def test_hostile_sequence_fails_its_row(rid: str) -> None:
    run = Run(HOSTILE_FEATURES.get(rid, FULL))
    _hostile(rid, run)
    assert run.failed() == [rid], run.verdicts()


def test_reset_forgets_the_pairs_set() -> None:
    """After a device reset transmitq1 only again: VQ_PAIRS_SET of the earlier bring-up does not count."""
    run = Run()
    run.enable(*range(CTRL_Q + 1))
    run.command(VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, struct.pack("<H", 2))
    run.frame(3, test_frame(0, 60, src=MAC))
    assert run.failed() == []
    run.mon.reset()
    run.frame(3, test_frame(1, 60, src=MAC))
    assert run.failed() == ["NETCTRL-DRV-14"]


@pytest.mark.parametrize("layout", ["split", "packed"])
def test_ring_monitor_catches_a_bad_driver(layout: Layout) -> None:
    """Through the ring monitor on the model with two queue pairs: the guest driver's own control queue traffic
    breaks nothing; then it transmits on transmitq2 before any VQ_PAIRS_SET and posts a VQ_PAIRS_SET of 0
    (bypassing its own rule checks), and NETCTRL-DRV-14 and NETCTRL-DRV-13 are flagged."""
    dev = default_registry().open("sim:virtio-net,queues=2,wire=none")
    ctrl = None
    try:
        trace = TracingPciDevice(dev)
        with GuestMemory.single(4 << 20, gpa=0x100000) as mem:
            rings = SplitRingMonitor.attach(trace, mem.read) if layout == "split" else \
                PackedRingMonitor.attach(trace, mem.read)
            wanted = layout_features(DEFAULT_FEATURES & ~bits(F.EVENT_IDX) | bits(NetF.CTRL_VQ, NetF.MQ), layout)
            drv = GuestNetDriver(trace, mem, queue_size=16, features=wanted)
            try:
                drv.init()
                ctl, ctrl = drv.control, rings.ctrl
                assert ctl is not None and ctrl is not None
                drv.send([test_frame(0, 60, src=drv.mac())])
                assert drv.wait_tx_done()
                assert ctl.vq_pairs_set(2) == VIRTIO_NET_OK
                ctl.send_on(1, [test_frame(1, 60, src=drv.mac())])
                assert ctrl.commands == 1 and ctrl.tx_frames == 2 and not ctrl.unreadable
                assert set(ctrl.verdicts()) >= {"NETCTRL-DRV-12", "NETCTRL-DRV-13", "NETCTRL-DRV-14",
                                                "NETCTRL-DRV-15"} and not _failed(ctrl), ctrl.findings
                drv.reset()
                drv.init()
                ctl = drv.control
                assert ctl is not None
                ctl.virtqueue_pairs = 2  # the driver forgets that a reset went back to one pair
                ctl.send_on(1, [test_frame(2, 60, src=drv.mac())])
                ctl.command("VQ_PAIRS_SET 0", VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                            struct.pack("<H", 0))
            finally:
                drv.close()
    finally:
        dev.close()
    assert ctrl is not None and _failed(ctrl) == ["NETCTRL-DRV-13", "NETCTRL-DRV-14"], ctrl.findings


def _failed(mon: ControlQueueMonitor) -> list[str]:
    return sorted(rid for rid, (ok, _e) in mon.verdicts().items() if not ok)
