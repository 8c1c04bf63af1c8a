"""virtio-net device configuration (5.1.4): offered features and the fields they make valid.

Fields are read as consistent groups through the config_generation loop
(:meth:`VirtioPciModern.read_config_fields`), at their natural widths.
"""

from __future__ import annotations

import pytest

from backend.drivers.transport import VirtioPciModern
from backend.pci.abilities import Lacking
from backend.virtio.features import DeviceStatus, NetF, bits, has
from backend.virtio.pci_regs import VIRTIO_NET_S_LINK_UP, NetCfg
from testbenches.conformance.harness import TX, Bench, acknowledge, make_frame, with_features
from testbenches.conformance.offers import judge_offer
from testbenches.conformance.plugin import Verdict

SPEED_UNKNOWN = 0xFFFFFFFF
DUPLEX_VALUES = (0x00, 0x01, 0xFF)


@pytest.mark.req("NET-DEV-01", "NET-DEV-02", "NET-DEV-03", "NET-DEV-07", "NET-DEV-08", "NET-DEV-13", "NET-DEV-14")
def test_offered_fields_in_range(bench: Bench, verdict: Verdict) -> None:
    """On the target as it is and, where the bench builds the device from options, on one with several queue
    pairs (so max_virtqueue_pairs is a field the driver reads)."""
    specs: list[str | None] = [None, *([bench.variant(queues=3)] if bench.configurable else [])]
    for spec in specs:
        _offered_fields_in_range(VirtioPciModern(bench.open(spec)), verdict)


def _offered_fields_in_range(t: VirtioPciModern, verdict: Verdict) -> None:
    t.enable_device()
    t.reset()
    acknowledge(t)
    offered = t.device_features()
    if has(offered, NetF.MQ):
        (pairs,) = t.read_config_fields([(NetCfg.MAX_VIRTQUEUE_PAIRS, 2)])
        # Receiveq1..N and transmitq1..N with N = max_virtqueue_pairs must all exist (5.1.2), with the
        # control queue after them.
        nq = t.num_queues()
        verdict.check("NET-DEV-01", 1 <= pairs <= 0x8000 and nq >= 2 * pairs + 1,
                      f"{t.pci.name}: MQ offered, max_virtqueue_pairs = {pairs:#x}, num_queues = {nq}")
    else:
        verdict.not_offered("NET-DEV-01", "VIRTIO_NET_F_MQ not offered")
    if has(offered, NetF.MTU):
        (mtu,) = t.read_config_fields([(NetCfg.MTU, 2)])
        verdict.check("NET-DEV-02", 68 <= mtu <= 65535, f"MTU offered, mtu = {mtu}")
        verdict.check("NET-DEV-03", mtu >= 1280, f"MTU offered, mtu = {mtu} (at least 1280 recommended)")
    else:
        for rid in ("NET-DEV-02", "NET-DEV-03"):
            verdict.not_offered(rid, "VIRTIO_NET_F_MTU not offered")
    if has(offered, NetF.RSS) or has(offered, NetF.HASH_REPORT):
        (key,) = t.read_config_fields([(NetCfg.RSS_MAX_KEY_SIZE, 1)])
        verdict.check("NET-DEV-07", key >= 40, f"RSS/HASH_REPORT offered, rss_max_key_size = {key}")
    else:
        verdict.not_offered("NET-DEV-07", "neither VIRTIO_NET_F_RSS nor VIRTIO_NET_F_HASH_REPORT offered")
    if has(offered, NetF.RSS):
        (table,) = t.read_config_fields([(NetCfg.RSS_MAX_INDIRECTION_TABLE_LENGTH, 2)])
        verdict.check("NET-DEV-08", table >= 128, f"RSS offered, rss_max_indirection_table_length = {table}")
    else:
        verdict.not_offered("NET-DEV-08", "VIRTIO_NET_F_RSS not offered")
    judge_offer(verdict, offered, ("NET-DEV-13", "NET-DEV-14"))


@pytest.mark.req("NET-DEV-10", "NET-DEV-11", "NET-DEV-12")
def test_speed_duplex(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        d = r.up(features=with_features(NetF.SPEED_DUPLEX, NetF.STATUS), queue_size=32, rx_buffers=4)
        if not has(d.features, NetF.SPEED_DUPLEX):
            for rid in ("NET-DEV-10", "NET-DEV-11", "NET-DEV-12"):
                verdict.not_offered(rid, "VIRTIO_NET_F_SPEED_DUPLEX not offered")
            return
        t = d.transport
        fields: list[tuple[int, int]] = [(NetCfg.SPEED, 4), (NetCfg.DUPLEX, 1), (NetCfg.STATUS, 2)]
        speed, duplex, status = t.read_config_fields(fields)
        verdict.check("NET-DEV-10", speed <= 0x7FFFFFFF or speed == SPEED_UNKNOWN,
                      f"speed = {speed:#x} (0..0x7fffffff Mbit/s or 0xffffffff expected)")
        verdict.check("NET-DEV-11", duplex in DUPLEX_VALUES, f"duplex = {duplex:#x} (0x00, 0x01 or 0xff expected)")
        if not has(d.features, NetF.STATUS):
            verdict.not_offered("NET-DEV-12", "VIRTIO_NET_F_STATUS not offered")
            return
        # Sample while the link is up: across traffic, and (with the target's port) across a link flap.
        samples: list[tuple[int, ...]] = [(speed, duplex, status)]
        n = r.send([make_frame(i) for i in range(r.tx_room(4))])
        r.wait_used(TX, len(n))
        samples.append(tuple(t.read_config_fields(fields)))
        port = r.port
        if not isinstance(port, Lacking):
            port.set_link(False)
            port.set_link(True)
            samples.append(tuple(t.read_config_fields(fields)))
        up = [(s, dx) for s, dx, st in samples if st & VIRTIO_NET_S_LINK_UP]
        if len(up) < 2:
            verdict.not_applicable("NET-DEV-12", f"link was not up in two samples: {samples}")
            return
        verdict.check("NET-DEV-12", len(set(up)) == 1,
                      f"(speed, duplex) while LINK_UP: {[(hex(s), hex(dx)) for s, dx in up]}")
        verdict.check("NET-DEV-10", all(s <= 0x7FFFFFFF or s == SPEED_UNKNOWN for s, _ in up),
                      f"speeds seen: {[hex(s) for s, _ in up]}")


@pytest.mark.req("NET-DEV-04")
def test_mtu_never_changes(bench: Bench, verdict: Verdict) -> None:
    with bench.rig() as r:
        d = r.up(queue_size=32, rx_buffers=4)
        if not has(d.offered, NetF.MTU):
            verdict.not_offered("NET-DEV-04", "VIRTIO_NET_F_MTU not offered")
            return
        t = d.transport
        seen: list[tuple[str, int]] = []

        def sample(when: str) -> None:
            seen.append((when, t.read_config_fields([(NetCfg.MTU, 2)])[0]))

        sample("DRIVER_OK")
        heads = r.send([make_frame(i, 300) for i in range(r.tx_room(4))])
        r.wait_used(TX, len(heads))
        sample("after traffic")
        port = r.port
        if not isinstance(port, Lacking):
            port.set_link(False)
            sample("link down")
            port.set_link(True)
            sample("link up again")
        t.reset()
        sample("after reset")
        acknowledge(t)
        sample("ACKNOWLEDGE|DRIVER")
        t.write_driver_features(d.features & ~bits(NetF.MTU))
        t.add_status(DeviceStatus.FEATURES_OK)
        sample("MTU not negotiated")
        verdict.check("NET-DEV-04", len({m for _, m in seen}) == 1, f"mtu over the run: {seen}")


@pytest.mark.req("CFG-DEV-01")
def test_mac_and_link_status_match_the_device(bench: Bench, verdict: Verdict) -> None:
    t = bench.transport()
    acknowledge(t)
    offered = t.device_features()
    port = t.pci.abilities().port
    model = None if isinstance(port, Lacking) else port
    if not (has(offered, NetF.MAC) or has(offered, NetF.STATUS)):
        verdict.not_offered("CFG-DEV-01", "neither VIRTIO_NET_F_MAC nor VIRTIO_NET_F_STATUS offered")
        return
    if has(offered, NetF.MAC):
        mac = t.read_device_config(NetCfg.MAC, 6)
        again = t.read_device_config(NetCfg.MAC, 6)
        verdict.check("CFG-DEV-01", mac == again and not mac[0] & 1 and mac != bytes(6),
                      f"MAC read before FEATURES_OK: {mac.hex(':')} then {again.hex(':')} (a stable unicast "
                      "non-zero address expected)")
        if model is not None:
            verdict.check("CFG-DEV-01", mac == bytes(model.mac),
                          f"config mac {mac.hex(':')} differs from the device's {bytes(model.mac).hex(':')}")
    if has(offered, NetF.STATUS):
        (status,) = t.read_config_fields([(NetCfg.STATUS, 2)])
        verdict.check("CFG-DEV-01", status & ~0x3 == 0, f"status {status:#x} has undefined bits set")
        if model is not None:
            for up in (False, True):
                model.set_link(up)
                (status,) = t.read_config_fields([(NetCfg.STATUS, 2)])
                verdict.check("CFG-DEV-01", bool(status & VIRTIO_NET_S_LINK_UP) == up,
                              f"link {'up' if up else 'down'} in the device, status reads {status:#x}")
