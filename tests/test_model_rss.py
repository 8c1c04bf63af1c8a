"""The model's RSS and hash reporting (models/virtio_net/rss.py) on its own: the Toeplitz hash against the published
verification vectors of Microsoft's RSS documentation (the key and results the virtio spec's hash refers to), the
fields hashed per type, and the commands' validation."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from backend.virtio.features import NetF, bits
from backend.virtio.net_ctrl import (
    VIRTIO_NET_CTRL_MQ_HASH_CONFIG,
    VIRTIO_NET_CTRL_MQ_RSS_CONFIG,
    VIRTIO_NET_ERR,
    VIRTIO_NET_HASH_REPORT_NONE,
    VIRTIO_NET_OK,
    VIRTIO_NET_HASH_REPORT_IPv4,
    VIRTIO_NET_HASH_REPORT_TCPv4,
    VIRTIO_NET_HASH_REPORT_UDPv6,
    VIRTIO_NET_RSS_HASH_TYPE_IPv4,
    VIRTIO_NET_RSS_HASH_TYPE_TCPv4,
)
from backend.virtio.pci_regs import NetCfg
from models.virtio_net.device import DEFAULT_FEATURES, VirtioNetDevice
from models.virtio_net.rss import SUPPORTED_HASH_TYPES, Rss, RssConfig, hash_input, toeplitz

KEY = bytes.fromhex("6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa")
#: (source, source port, destination, destination port, IP-only hash, hash with TCP ports)
VECTORS = [
    ("66.9.149.187", 2794, "161.142.100.80", 1766, 0x323E8FC2, 0x51CCC178),
    ("199.92.111.2", 14230, "65.69.140.83", 4739, 0xD718262A, 0xC626B0EA),
    ("24.19.198.95", 12898, "12.22.207.184", 38024, 0xD2D0A5DE, 0x5C2B394A),
    ("38.27.205.30", 48228, "209.142.163.6", 2217, 0x82989176, 0xAFC7327F),
    ("153.39.163.191", 44251, "202.188.127.2", 1303, 0x5D1809C5, 0x10E828A2),
    ("3ffe:2501:200:1fff::7", 2794, "3ffe:2501:200:3::1", 1766, 0x2CC18CD5, 0x40207D3D),
    ("3ffe:501:8::260:97ff:fe40:efab", 14230, "ff02::1", 4739, 0x0F0C461C, 0xDDE51BBF),
    ("3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, "fe80::200:f8ff:fe21:67cf", 38024, 0x4B61E985, 0x02D1FEEF),
]
ALL = bits(NetF.CTRL_VQ, NetF.RSS, NetF.HASH_REPORT)


@pytest.mark.parametrize(("src", "sport", "dst", "dport", "ip_hash", "tcp_hash"), VECTORS)
def test_toeplitz_verification_vectors(src: str, sport: int, dst: str, dport: int, ip_hash: int,
                                       tcp_hash: int) -> None:
    addrs = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    assert toeplitz(KEY, addrs) == ip_hash
    assert toeplitz(KEY, addrs + struct.pack(">HH", sport, dport)) == tcp_hash
    ip = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
    frame = bytes(Ether() / ip / TCP(sport=sport, dport=dport))
    rss = Rss()
    rss.hash_types, rss.key = SUPPORTED_HASH_TYPES, KEY
    h = rss.hash_of(frame)
    assert h is not None and h[0] == tcp_hash


def test_hash_input_by_type() -> None:
    tcp4 = bytes(Ether() / IP(src="1.2.3.4", dst="5.6.7.8") / TCP(sport=1, dport=2))
    assert hash_input(tcp4, VIRTIO_NET_RSS_HASH_TYPE_TCPv4)[1] == VIRTIO_NET_HASH_REPORT_TCPv4  # type: ignore[index]
    assert hash_input(tcp4, VIRTIO_NET_RSS_HASH_TYPE_IPv4)[1] == VIRTIO_NET_HASH_REPORT_IPv4  # type: ignore[index]
    frag = bytes(Ether() / IP(src="1.2.3.4", dst="5.6.7.8", flags="MF") / TCP(sport=1, dport=2))
    assert hash_input(frag, VIRTIO_NET_RSS_HASH_TYPE_TCPv4) is None  # a fragment has no ports to hash
    udp6 = bytes(Ether() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2))
    assert hash_input(udp6, SUPPORTED_HASH_TYPES)[1] == VIRTIO_NET_HASH_REPORT_UDPv6  # type: ignore[index]
    assert hash_input(bytes(Ether() / ARP()), SUPPORTED_HASH_TYPES) is None
    rss = Rss()
    assert rss.header_fields(tcp4) == struct.pack("<IHH", 0, VIRTIO_NET_HASH_REPORT_NONE, 0)  # no types yet


def _rss_config(types: int, table: list[int], unclassified: int = 0, max_tx: int = 1, key: bytes = KEY,
                mask: int | None = None) -> bytes:
    m = len(table) - 1 if mask is None else mask
    return (struct.pack("<IHH", types, m, unclassified) + struct.pack(f"<{len(table)}H", *table)
            + struct.pack("<HB", max_tx, len(key)) + key)


def test_rss_config_validation_and_steering() -> None:
    rss = Rss()
    enabled = {0, 1, 2}
    ok = _rss_config(VIRTIO_NET_RSS_HASH_TYPE_TCPv4, [0, 1, 2, 1], unclassified=2, max_tx=3)
    assert rss.command(VIRTIO_NET_CTRL_MQ_RSS_CONFIG, ok, bits(NetF.CTRL_VQ), 4, enabled) == VIRTIO_NET_ERR
    for bad in (_rss_config(1, [0, 1, 2], mask=2), _rss_config(1, [0] * 256), _rss_config(1, [3] * 4),
                _rss_config(1 << 6, [0] * 4), _rss_config(1, [0] * 4, key=bytes(41)), _rss_config(1, [0] * 4, max_tx=5),
                ok[:-1]):
        assert rss.command(VIRTIO_NET_CTRL_MQ_RSS_CONFIG, bad, ALL, 4, enabled) == VIRTIO_NET_ERR
        assert not rss.steering
    assert rss.command(VIRTIO_NET_CTRL_MQ_RSS_CONFIG, ok, ALL, 4, enabled) == VIRTIO_NET_OK
    frame = bytes(Ether() / IP(src=VECTORS[0][0], dst=VECTORS[0][2]) / TCP(sport=VECTORS[0][1], dport=VECTORS[0][3]))
    assert rss.pair_for(frame) == [0, 1, 2, 1][VECTORS[0][5] & 3]
    assert rss.pair_for(bytes(Ether() / ARP())) == 2  # unclassified_queue
    rss.reset()
    assert not rss.steering and rss.hash_types == 0


def test_hash_config() -> None:
    rss = Rss()
    data = struct.pack("<I8xB", VIRTIO_NET_RSS_HASH_TYPE_IPv4, len(KEY)) + KEY
    assert rss.command(VIRTIO_NET_CTRL_MQ_HASH_CONFIG, data, bits(NetF.CTRL_VQ, NetF.RSS), 1, {0}) == VIRTIO_NET_ERR
    assert rss.command(VIRTIO_NET_CTRL_MQ_HASH_CONFIG, data, ALL, 1, {0}) == VIRTIO_NET_OK
    assert not rss.steering  # HASH_CONFIG sets what is reported, not where packets go
    frame = bytes(Ether() / IP(src=VECTORS[1][0], dst=VECTORS[1][2]) / UDP())
    assert rss.header_fields(frame) == struct.pack("<IHH", VECTORS[1][4], VIRTIO_NET_HASH_REPORT_IPv4, 0)


def test_device_offer_config_fields_and_reset() -> None:
    with pytest.raises(ValueError, match="CTRL_VQ"):
        VirtioNetDevice(features=DEFAULT_FEATURES | bits(NetF.HASH_REPORT))
    plain = VirtioNetDevice()
    assert not plain.offered & bits(NetF.RSS, NetF.HASH_REPORT)  # not in the default offer
    dev = VirtioNetDevice(pairs=2, features=DEFAULT_FEATURES | ALL | bits(NetF.MQ))
    cfg = dev.device_cfg
    assert cfg.read(NetCfg.RSS_MAX_KEY_SIZE, 1)[0] == 40
    assert int.from_bytes(cfg.read(NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 2), "little") == 128
    assert int.from_bytes(cfg.read(NetCfg.SUPPORTED_HASH_TYPES, 4), "little") == SUPPORTED_HASH_TYPES
    dev.rss.take_rss_config(RssConfig(VIRTIO_NET_RSS_HASH_TYPE_IPv4, 0, 1, (1,), 1, KEY))
    dev.on_reset()
    assert not dev.rss.steering and dev.rss.hash_types == 0 and dev.hdr_len == 12
