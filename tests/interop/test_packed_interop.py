"""Packed virtqueues through ``vdpa-bench serve`` with real frontends: DPDK testpmd ``net_virtio_user`` with
``packed_vq=1`` and QEMU's ``virtio-net-pci,packed=on`` (a Linux guest's virtio_net driver on packed rings).

The device is the behavioral model offering VIRTIO_F_RING_PACKED, with a loopback wire captured into a pcap.
Each test asserts RING_PACKED in the driver features the device negotiated (the serve log's DRIVER_OK line),
frames intact on the wire (scapy) and no errors in the frontend's counters.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from backend.virtio.features import F, NetF
from testbenches.guest.kernel import Kernel
from testbenches.guest.qemu import Guest, vhost_user_net_args
from testbenches.peers.process import require_program
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import INSTALL_HINT, Testpmd, virtio_user_vdev
from tests.interop import test_qemu_vhost_user as qemu_job
from tests.interop.test_testpmd_virtio_user import FRAME_LEN, assert_clean_log, check_pcap, negotiated, run_traffic
from tests.rtl_build import require_rtl_build

#: The model's offer with RING_PACKED (bit 34), as the default offer is; spelled out so the test keeps its meaning
#: whatever the default becomes.
PACKED_FEATURES = 0x8000011F30018028
DEVICE = f"sim:virtio-net,wire=loopback,features={PACKED_FEATURES:#x}"
#: The RTL offers RING_PACKED itself (its feature bits come from the design).
RTL_DEVICE = "rtl:virtio-net,wire=loopback"
TXONLY_TARGET = 4096
TXONLY_TIMEOUT = 60.0


def _testpmd() -> None:
    require_program("dpdk-testpmd", INSTALL_HINT)


def check_negotiated(serve: ServeProcess, *, in_order: bool, mrg_rxbuf: bool) -> None:
    [features] = negotiated(serve)
    assert features >> F.RING_PACKED & 1, f"driver features {features:#x} without RING_PACKED"
    assert bool(features >> F.IN_ORDER & 1) == in_order, f"{features:#x}: IN_ORDER should be {in_order}"
    assert bool(features >> NetF.MRG_RXBUF & 1) == mrg_rxbuf, f"{features:#x}: MRG_RXBUF should be {mrg_rxbuf}"


@pytest.mark.parametrize("mrg_rxbuf", [0, 1], ids=["mrg_rxbuf=0", "mrg_rxbuf=1"])
@pytest.mark.parametrize("in_order", [0, 1], ids=["in_order=0", "in_order=1"])
def test_testpmd_packed_io_loopback(tmp_path: Path, sock: str, mrg_rxbuf: int, in_order: int) -> None:
    """io forwarding seeded by tx_first over packed rings: every frame comes back and is sent again."""
    _testpmd()
    pcap = tmp_path / "wire.pcap"
    with ServeProcess(sock, f"{DEVICE},pcap={pcap}", log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        vdev = virtio_user_vdev(sock, mrg_rxbuf=bool(mrg_rxbuf), in_order=bool(in_order), packed_vq=True)
        with Testpmd(vdev, log=tmp_path / "testpmd.log", cpu=1) as tp:
            tp.wait_ready()
            stats = run_traffic(tp)
            assert tp.quit() == 0
        serve.proc.wait_for("frontend disconnected", 10.0)
        check_negotiated(serve, in_order=bool(in_order), mrg_rxbuf=bool(mrg_rxbuf))
        assert_clean_log(serve, 1)
        assert serve.stop() == 0
    check_pcap(pcap, stats.rx_packets)


@pytest.mark.parametrize("in_order", [0, 1], ids=["in_order=0", "in_order=1"])
def test_testpmd_packed_txonly(tmp_path: Path, sock: str, in_order: int) -> None:
    """txonly: testpmd only transmits (64-byte UDP frames) on a packed TX ring (the txonly engine never polls RX:
    what the loopback wire returns fills the RX ring and is then dropped). No errors, every frame on the wire
    intact."""
    _testpmd()
    pcap = tmp_path / "wire.pcap"
    with ServeProcess(sock, f"{DEVICE},pcap={pcap}", log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        with Testpmd(virtio_user_vdev(sock, in_order=bool(in_order), packed_vq=True), log=tmp_path / "testpmd.log",
                     cpu=1) as tp:
            tp.wait_ready()
            assert tp.link_up(), "virtio_user port link is down"
            tp.command("set fwd txonly")
            tp.command(f"set txpkts {FRAME_LEN}")
            tp.command("start")
            deadline = time.monotonic() + TXONLY_TIMEOUT
            stats = tp.port_stats()
            while stats.tx_packets < TXONLY_TARGET:
                if time.monotonic() > deadline:
                    pytest.fail(f"only {stats.tx_packets} of {TXONLY_TARGET} frames sent in {TXONLY_TIMEOUT} s")
                stats = tp.port_stats()
            tp.command("stop")
            stats = tp.port_stats()
            assert stats.tx_errors == 0 and stats.rx_errors == 0, stats
            assert stats.tx_bytes == FRAME_LEN * stats.tx_packets, stats
            assert tp.quit() == 0
        serve.proc.wait_for("frontend disconnected", 10.0)
        check_negotiated(serve, in_order=bool(in_order), mrg_rxbuf=True)
        assert_clean_log(serve, 1)
        assert serve.stop() == 0
    check_pcap(pcap, stats.tx_packets)


def packed_on(args: list[str]) -> list[str]:
    """QEMU arguments of a vhost-user virtio-net-pci NIC with ``packed=on``."""
    out = list(args)
    at = out.index("-device") + 1
    assert out[at].startswith("virtio-net-pci,"), out
    out[at] += ",packed=on"
    return out


@pytest.mark.parametrize("device", [DEVICE, RTL_DEVICE], ids=["model", "rtl"])
def test_qemu_guest_packed_on_serve(kernel: Kernel, tmp_path: Path, started: contextlib.ExitStack, device: str,
                                    record_property: Callable[[str, object], None]) -> None:
    """A Linux guest's virtio_net on packed rings (QEMU ``packed=on``) through serve, on the behavioral model and
    on the RTL: ping crosses the device twice per echo, every echo answered with intact checksums, payloads
    intact on the wire; a guest reboot (QEMU resets the device, the driver negotiates packed again) leaves a
    working device."""
    if device.startswith("rtl:"):
        require_rtl_build("virtio-net")  # serve then finds it cached instead of building at startup
    sock = tmp_path / "vu.sock"
    pcap = tmp_path / "wire.pcap"
    serve = started.enter_context(ServeProcess(str(sock), f"{device},pcap={pcap}", log=tmp_path / "serve.log"))
    assert serve.wait_listening(qemu_job.READY_TIMEOUT) == f"listening on {sock}"
    guest = Guest(tmp_path / "guest", kernel=kernel, shared_memory=True, allow_reboot=True,
                  extra_args=packed_on(vhost_user_net_args(sock, mac=qemu_job.MAC)))
    started.enter_context(guest)
    guest.boot(qemu_job.JOB)
    record_property("boot_to_job_s", round(guest.wait_job_start(qemu_job.BOOT_TIMEOUT, boot=1), 2))
    for boot in (1, 2):
        result = guest.wait_job(qemu_job.BOOT_TIMEOUT, boot=boot)
        assert result.exit_code == 0, f"boot {boot} job exit {result.exit_code}:\n{guest.console()[-3000:]}"
        qemu_job.check_boot(qemu_job.read_env(guest.job_dir / f"result-{boot}.env"), boot)
    assert guest.wait_exit(qemu_job.EXIT_TIMEOUT) == 0, f"QEMU exit status:\n{guest.console()[-3000:]}"
    serve.proc.wait_for(r"vhost-user#1: frontend disconnected", qemu_job.EXIT_TIMEOUT)
    features = negotiated(serve)
    assert len(features) >= 2, f"DRIVER_OK lines {features}: one per boot expected"
    for f in features:
        assert f >> F.RING_PACKED & 1, f"guest driver features {f:#x} without RING_PACKED"
    out = serve.proc.output()
    assert "refused" not in out and "Traceback" not in out, out[-3000:]
    qemu_job.check_pcap(pcap, 2)


def test_testpmd_packed_port_restart(tmp_path: Path, sock: str) -> None:
    """``port stop`` / ``port start`` on packed rings, then quit: traffic comes back before and after, and at the
    end virtio_user stops both rings (GET_VRING_BASE in the packed encoding, read from the rings after laps of
    traffic) with nothing refused."""
    _testpmd()
    with ServeProcess(sock, DEVICE, log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        with Testpmd(virtio_user_vdev(sock, packed_vq=True), log=tmp_path / "testpmd.log", cpu=1) as tp:
            tp.wait_ready()
            run_traffic(tp)
            tp.command("port stop all")
            tp.command("port start all")
            tp.command("clear port stats all")
            run_traffic(tp)
            assert tp.quit() == 0
        serve.proc.wait_for("frontend disconnected", 10.0)
        [features] = negotiated(serve)
        assert features >> F.RING_PACKED & 1, f"{features:#x}"
        stops = re.findall(r"ring (\d) stopped at slot (\d+) wrap (\d)", serve.proc.output())
        assert sorted(q for q, _, _ in stops) == ["0", "1"], stops
        assert_clean_log(serve, 1)
        assert serve.stop() == 0
