"""The conformance checks' harness: abilities declared by each target, the wire probe, and received frames
counted on every target with a loopback wire (the RTL in process, a device in its own process over
vfio-user), including by the interrupt and hostile-ring checks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.pci.abilities import Lacking, WireKind
from backend.pci.device import PciDevice
from backend.targets import default_registry
from testbenches.conformance.harness import EVENT_WAIT, RX, TX, Bench, WireProbes, drain, hostile_kick, make_frame
from testbenches.peers.serve import DeviceProcess
from tests.rtl_build import require_rtl_build
from tests.suite_runner import ids_with, run_suite

READY_TIMEOUT = 20.0
RTL = "rtl:virtio-net"
#: The interrupt and hostile-ring checks that count the frames the loopback wire brings back: with a
#: loopback wire PCI-DEV-39 and PCI-DEV-62 pass only when every frame sent was received, STATUS-DEV-02
#: (recovery after hostile input) only when the frame came back intact.
COUNTING = "test_intx_used_buffer_isr or test_no_vector_raises_nothing or desc_loop"
COUNTED_IDS = {"PCI-DEV-39", "PCI-DEV-62", "STATUS-DEV-02"}
#: Checks whose ids need transmitted frames back; a port with nothing connected makes them not applicable.
DATA_PATH = "test_net_datapath or test_split_ring or test_interrupts or test_hostile or test_driver_discovery"
DATA_PATH_IDS = {"SPLIT-DEV-01", "SPLIT-DEV-07", "SPLIT-DEV-09", "SPLIT-DEV-22", "FEAT-DEV-10", "NET-DEV-29",
                 "NET-DEV-05", "NET-DEV-06", "PCI-DRV-37"}

pytestmark = pytest.mark.timeout(900)


def _opener(opened: list[PciDevice]) -> Any:
    registry = default_registry()

    def open_target(spec: str | None = None) -> PciDevice:
        assert spec is not None
        dev = registry.open(spec)
        opened.append(dev)
        return dev

    return open_target


@pytest.fixture
def bench_on() -> Iterator[Any]:
    """``bench_on(spec)``: a Bench as the checks get it, devices closed at the end."""
    opened: list[PciDevice] = []
    open_target = _opener(opened)
    try:
        yield lambda spec: Bench(lambda s=None: open_target(s or spec), spec, WireProbes())
    finally:
        for dev in opened:
            dev.close()


@pytest.fixture(scope="module")
def rtl_built() -> None:
    require_rtl_build("virtio-net")


@pytest.fixture(scope="module")
def device_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``device_process(model)``: a vfio-user device process serving ``model``; its socket path."""
    tmp = tmp_path_factory.mktemp("harness")
    children: list[DeviceProcess] = []

    def start(model: str) -> str:
        path = str(tmp / f"dev{len(children)}.sock")
        child = DeviceProcess(path, model, log=tmp / f"device{len(children)}.log")
        children.append(child.__enter__())
        assert child.wait_listening(READY_TIMEOUT) == f"listening on {path}"
        return path

    try:
        yield start
    finally:
        for child in reversed(children):
            child.__exit__(None, None, None)


def test_targets_declare_their_abilities(bench_on: Any, device_process: Any) -> None:
    """sim declares everything; over vfio-user the port and faults come through, DMA observation and the
    wire do not (the wire is then probed)."""
    sim = bench_on("sim:virtio-net").open().abilities()
    assert sim.wire is WireKind.LOOPBACK and sim.synchronous_doorbell
    assert not any(isinstance(a, Lacking) for a in (sim.port, sim.errors, sim.crashes, sim.dma_observer, sim.faults))
    unplugged = bench_on("sim:virtio-net,wire=none").open().abilities()
    assert unplugged.wire is WireKind.NONE and "wire=none" in unplugged.wire_why
    path = device_process("virtio-net,wire=loopback")
    remote = bench_on(f"vfio-user:{path}").open().abilities()
    assert remote.wire is WireKind.UNKNOWN and not remote.synchronous_doorbell
    assert not isinstance(remote.port, Lacking) and not isinstance(remote.faults, Lacking)
    assert isinstance(remote.dma_observer, Lacking) and "server's process" in remote.dma_observer.why
    told = bench_on(f"vfio-user:{path},wire=none").open().abilities()
    assert told.wire is WireKind.NONE and "wire=none given" in told.wire_why
    with pytest.raises(ValueError, match="wire='sideways'"):
        default_registry().open(f"vfio-user:{path},wire=sideways")
    assert remote.time_scale == 1.0
    slow = bench_on(f"vfio-user:{path},wire=none,slowdown=8").open().abilities()
    assert slow.time_scale == 8.0 and slow.wire is WireKind.NONE


def test_a_slow_target_stretches_the_rigs_deadlines(bench_on: Any, device_process: Any) -> None:
    """A target declaring a slowdown (a design on a slow simulator) gets that many times longer to do what must
    happen: the ring-level waits and the patience left after a missed deadline stretch by it."""
    path = device_process("virtio-net,wire=loopback")
    waited = {}
    for factor in (1, 6):
        with bench_on(f"vfio-user:{path},wire=loopback,slowdown={factor}").rig() as r:
            assert r.time_scale == factor and r.patience == pytest.approx(factor * 1.0)
            r.up(queue_size=64, rx_buffers=8)
            start = time.monotonic()
            assert r.wait_used(RX, 1, timeout=0.1) == []  # nothing was sent: the whole (stretched) wait
            waited[factor] = time.monotonic() - start
    assert waited[1] < 0.5 <= waited[6], waited


def test_a_slow_target_stretches_the_checks_waits(bench_on: Any, device_process: Any) -> None:
    """A check waiting by itself (here for the configuration change notification after a doorbell, as the hostile
    ring checks do) waits the rig's :attr:`Rig.event_wait`: EVENT_WAIT stretched by the target's slowdown, and
    its evidence names the wait it really made."""
    path = device_process("virtio-net,wire=loopback")
    waited = {}
    for factor in (1, 3):
        with bench_on(f"vfio-user:{path},wire=loopback,slowdown={factor}").rig() as r:
            assert r.stretched(0.2) == pytest.approx(factor * 0.2)
            assert r.event_wait == pytest.approx(factor * EVENT_WAIT)
            d = r.up(queue_size=64, rx_buffers=8)
            config_fd = d.irq_fds["config"]
            drain(config_fd)
            start = time.monotonic()
            kick = hostile_kick(lambda: None, config_fd, r.event_wait)  # nothing planted: no notification owed
            waited[factor] = time.monotonic() - start
            assert not kick.notified and kick.notification == f"silent for {factor * EVENT_WAIT:g}s"
    assert waited[1] < 2 * EVENT_WAIT <= waited[3], waited


def _count_received(bench: Bench) -> tuple[str, int, int]:
    """Through the harness as the interrupt checks use it: INTx, one frame out; (wire why, TX used, RX used)."""
    with bench.rig() as r:
        assert r.wire.looped, r.wire.why
        r.up(irq_mode="intx", queue_size=64, rx_buffers=8)
        sent = make_frame(7, 200)
        r.send([sent])
        tx = r.wait_used(TX, 1, timeout=5 * EVENT_WAIT)
        rx = r.wait_used(RX, 1, timeout=5 * EVENT_WAIT)
        assert all(u.data[r.hdr_len:r.hdr_len + len(sent)] == sent for u in rx)
        return r.wire.why, len(tx), len(rx)


def test_rtl_counts_received_buffers(rtl_built: None, bench_on: Any, tmp_path: Path) -> None:
    why, tx, rx = _count_received(bench_on(RTL))
    assert (tx, rx) == (1, 1), why
    data = run_suite(RTL, tmp_path / "rtl", "-k", COUNTING)
    assert ids_with(data, "passed") >= COUNTED_IDS, {i: data["ids"][i] for i in COUNTED_IDS}
    assert not ids_with(data, "failed")


def test_vfio_user_counts_received_buffers(bench_on: Any, device_process: Any, tmp_path: Path) -> None:
    path = device_process("virtio-net,wire=loopback")
    why, tx, rx = _count_received(bench_on(f"vfio-user:{path}"))
    assert (tx, rx) == (1, 1) and "probed at bring-up" in why, why
    data = run_suite(f"vfio-user:{path}", tmp_path / "vfio-user", "-k", COUNTING)
    assert ids_with(data, "passed") >= COUNTED_IDS, {i: data["ids"][i] for i in COUNTED_IDS}
    assert not ids_with(data, "failed")


def test_unlooped_port_makes_data_path_ids_not_applicable(device_process: Any, tmp_path: Path) -> None:
    """A port nothing is connected to, unknown to the bench (as a real card's): the probe at bring-up sees no
    frame come back, and the data-path ids are not applicable with that reason, not failed."""
    path = device_process("virtio-net,wire=none")
    data = run_suite(f"vfio-user:{path}", tmp_path / "unlooped", "-k", DATA_PATH)
    assert not ids_with(data, "failed"), {i: data["ids"][i]["evidence"] for i in ids_with(data, "failed")}
    na = ids_with(data, "not applicable")
    assert na >= DATA_PATH_IDS, sorted(DATA_PATH_IDS - na)
    evidence = " ".join(e for i in DATA_PATH_IDS for e in data["ids"][i]["evidence"])
    assert "probed at bring-up" in evidence and "none came back" in evidence, evidence[:500]
    # the drivers' bring-up and transmission are still judged without a wire
    assert {"PCI-DRV-01", "PCI-DRV-07"} <= ids_with(data, "passed")


def test_the_ring_layout_is_the_rigs_explicit_choice(bench_on: Any) -> None:
    """On the model's default offer: the default bring-up keeps split rings although packed ones are offered, an
    exact set holding RING_PACKED with the split layout is refused, layout="packed" negotiates it and the
    layout-agnostic helpers carry frames on it; where the offer withholds it, packed reads not offered and a
    packed bring-up stops with the reason."""
    from backend.virtio.features import F, has
    from models.virtio_net.device import DEFAULT_FEATURES as MODEL_OFFER
    from testbenches.conformance.plugin import Verdict
    from testbenches.driver.virtio_net import DriverInitError

    with bench_on("sim:virtio-net").rig() as r:
        assert has(r.offered, F.RING_PACKED)
        r.up(rx_buffers=4)
        assert r.layout == "split" and not has(r.features, F.RING_PACKED) and r.packed == {}
        with pytest.raises(ValueError, match="layout='packed'"):
            r.up(features=r.offered, exact=True)
        r.up(rx_buffers=4, queue_size=13, layout="packed")
        assert r.layout == "packed" and set(r.packed) == {RX, TX} and r.ring(TX).size == 13
        with pytest.raises(ValueError, match="split-ring helper on packed rings"):
            _ = r.tx
        frames = [make_frame(k, 80) for k in range(3)]
        r.send(frames)
        assert len(r.wait_used(TX, 3, timeout=EVENT_WAIT)) == 3
        got = r.wait_used(RX, 3, timeout=EVENT_WAIT)
        assert [u.data[r.hdr_len:] for u in got] == frames
    withheld = f"sim:virtio-net,features={MODEL_OFFER & ~(1 << F.RING_PACKED):#x}"
    with bench_on(withheld).rig() as r:
        verdict = Verdict("t::packed", ["SPLIT-DEV-01"])
        assert not r.offers("packed", verdict, "SPLIT-DEV-01") and r.offers("split", verdict)
        assert [rec.outcome.value for rec in verdict.records()["SPLIT-DEV-01"]] == ["not offered"]
        with pytest.raises(DriverInitError, match="packed rings asked for"):
            r.up(layout="packed")


def test_a_conformant_device_keeps_the_rigs_patience(bench_on: Any, device_process: Any) -> None:
    """The short patience after a missed deadline is for broken devices: on a conformant asynchronous device (here
    over vfio-user) an interrupt that already came during the wait for used buffers is not waited for again, and a
    look for something that must not happen is no deadline, so a long property keeps the full bound for every step
    (the CI failure of the thousand packed workloads on the RTL: its patience had dropped to 50 ms that way). An
    interrupt that is owed and never comes still shortens it."""
    from backend.virtio.features import F

    path = device_process("virtio-net,wire=loopback")
    with bench_on(f"vfio-user:{path},wire=loopback").rig() as r:
        full = r.patience
        r.up(features=r.offered & ~(1 << F.EVENT_IDX), queue_size=64, rx_buffers=8)
        start = time.monotonic()
        for k in range(5):
            r.drain_irqs()
            r.send([make_frame(k, 120)])
            done, seen = r.wait_used_idx(TX, k + 1)
            assert done
            if seen:  # the interrupt came during the wait: nothing owed any more
                assert r.notified(TX, seen, True) >= seen
            else:
                assert r.notified(TX, 0, True) >= 1
            r.ring(TX).used()
        assert len(r.wait_used(RX, 5)) == 5
        assert r.complete(RX, {}, 1, timeout=r.quiet, expected=False) == []
        assert r.wait_used_idx(TX, 99, 0.05, expected=False) == (False, 0)
        assert r.patience == full and time.monotonic() - start < full, "a conformant device cost the rig its patience"
        assert r.notified(TX, 0, True, timeout=0.05) == 0  # owed, never came
        assert r.patience < full
