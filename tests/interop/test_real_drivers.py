"""Real drivers judged: ``vdpa-bench serve --judge-driver`` runs the driver-row monitors on the rings and headers
of DPDK testpmd's ``net_virtio_user`` (split and packed rings) and of a Linux guest's ``virtio_net`` (QEMU), with
traffic on a loopback wire, and writes each session's verdicts per row.

Each run must give verdicts to the ring rows (SPLIT-DRV or PACKED-DRV) and the virtio-net buffer rows (NET-DRV) it
could observe; what a verdict says is the driver's affair: a row a real driver fails is a finding, kept with its
evidence in the findings file and shown in the report (``reports/real-drivers/``), never a failure of this test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.virtio.features import F
from testbenches.conformance.real_drivers import load_runs, write_real_drivers_report
from testbenches.guest.kernel import Kernel
from testbenches.guest.qemu import Guest, vhost_user_net_args
from testbenches.monitor.live import BACKEND_ROWS, label_findings
from testbenches.peers.process import require_program
from testbenches.peers.serve import ServeProcess
from testbenches.peers.testpmd import INSTALL_HINT, Testpmd, virtio_user_vdev
from tests.interop import test_qemu_vhost_user as qemu_job
from tests.interop.test_packed_interop import PACKED_FEATURES
from tests.interop.test_testpmd_virtio_user import run_traffic

DPDK = "DPDK virtio_user"
LINUX = "Linux virtio_net"
#: Where the report of the real drivers goes (the findings files beside it); override with the environment.
REPORT_DIR = Path(os.environ.get("VDPA_BENCH_REAL_DRIVERS", Path(__file__).parents[2] / "reports" / "real-drivers"))
#: Ring rows every run with traffic gives an opportunity, by layout: chains/lists walked, avail idx moved.
SPLIT_ROWS = {"SPLIT-DRV-01", "SPLIT-DRV-03", "SPLIT-DRV-04", "SPLIT-DRV-08", "SPLIT-DRV-11"}
PACKED_ROWS = {"PACKED-DRV-01", "PACKED-DRV-07", "PACKED-DRV-10", "PACKED-DRV-11"}


@pytest.fixture(scope="module")
def findings_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The findings files of this module's runs; at its end the real drivers' report is written from them."""
    where = tmp_path_factory.mktemp("real-drivers")
    yield where
    if any(where.glob("*.json")):
        write_real_drivers_report(where, REPORT_DIR)


def judged(path: Path, driver: str, run: str, *, packed: bool) -> dict[str, Any]:
    """The findings file of one run, labelled: one session at least, each of the ring layout asked for, the ring
    and NET-DRV rows each observed have a verdict, rows the backend decides are not among them."""
    assert path.is_file(), f"serve --judge-driver wrote no {path}"
    data = label_findings(path, driver, run)
    sessions = data["sessions"]
    assert sessions, data
    for s in sessions:
        assert s["ring"] == ("packed" if packed else "split"), s
        rows = s["rows"]
        for rid, row in rows.items():
            assert row["verdict"] in ("passed", "failed") and row["opportunities"] >= 1, (rid, row)
            assert row["verdict"] == "passed" or row["evidence"], (rid, row)
        assert not set(rows) & set(BACKEND_ROWS), rows
    seen = {rid for s in sessions for rid in s["rows"]}
    missing = (PACKED_ROWS if packed else SPLIT_ROWS) - seen
    assert not missing, f"ring rows without a verdict: {sorted(missing)} (judged: {sorted(seen)})"
    assert any(rid.startswith("NET-DRV-") for rid in seen), f"no NET-DRV row judged: {sorted(seen)}"
    return data


@contextlib.contextmanager
def judging_serve(tmp_path: Path, sock: str, device: str, findings: Path) -> Iterator[ServeProcess]:
    with ServeProcess(sock, device, log=tmp_path / "serve.log", extra=("--judge-driver", str(findings))) as serve:
        serve.wait_listening()
        yield serve
        out = serve.proc.output()
        assert "Traceback" not in out and "session dropped" not in out, out[-3000:]
        assert serve.stop() == 0, serve.log()[-3000:]


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_dpdk_virtio_user_judged(tmp_path: Path, sock: str, findings_dir: Path, packed: bool) -> None:
    """testpmd io forwarding seeded by tx_first through a judged serve: the frames come back, and the session's
    split or packed ring rows and NET-DRV rows have verdicts."""
    require_program("dpdk-testpmd", INSTALL_HINT)
    layout = "packed" if packed else "split"
    findings = findings_dir / f"dpdk-virtio-user-{layout}.json"
    device = f"sim:virtio-net,wire=loopback,features={PACKED_FEATURES:#x}" if packed else \
        "sim:virtio-net,wire=loopback"
    with judging_serve(tmp_path, sock, device, findings) as serve:
        with Testpmd(virtio_user_vdev(sock, packed_vq=packed), log=tmp_path / "testpmd.log", cpu=1) as tp:
            tp.wait_ready()
            stats = run_traffic(tp)
            assert tp.quit() == 0
        serve.proc.wait_for(r"judge: vhost-user#1: \d+ driver row", 10.0)
    judged(findings, DPDK, f"{layout} rings, testpmd io forwarding ({stats.rx_packets} frames back)", packed=packed)


def test_linux_virtio_net_judged(kernel: Kernel, tmp_path: Path, started: contextlib.ExitStack,
                                 findings_dir: Path) -> None:
    """A Linux guest's virtio_net (QEMU) pings across the looped-back device (split rings) through a judged serve:
    the session's split ring and NET-DRV rows have verdicts. (Packed rings are judged on DPDK above and on the
    Python frontend in tests/test_live_judge.py; one guest boot keeps this module short.)"""
    findings = findings_dir / "linux-virtio-net-split.json"
    sock = tmp_path / "vu.sock"
    serve = started.enter_context(ServeProcess(str(sock), "sim:virtio-net,wire=loopback", log=tmp_path / "serve.log",
                                               extra=("--judge-driver", str(findings))))
    serve.wait_listening(qemu_job.READY_TIMEOUT)
    guest = Guest(tmp_path / "guest", kernel=kernel, shared_memory=True, allow_reboot=True,
                  extra_args=vhost_user_net_args(sock, mac=qemu_job.MAC))
    started.enter_context(guest)
    guest.boot(qemu_job.guest_job(0))
    result = guest.wait_job(qemu_job.BOOT_TIMEOUT, boot=1)
    assert result.exit_code == 0, f"job exit {result.exit_code}:\n{guest.console()[-3000:]}"
    qemu_job.check_boot(qemu_job.read_env(guest.job_dir / "result-1.env"), 1)
    assert guest.wait_exit(qemu_job.EXIT_TIMEOUT) == 0, f"QEMU exit status:\n{guest.console()[-3000:]}"
    serve.proc.wait_for(r"judge: vhost-user#1: \d+ driver row", qemu_job.EXIT_TIMEOUT)
    assert "Traceback" not in serve.proc.output(), serve.proc.output()[-3000:]
    assert serve.stop() == 0
    data = judged(findings, LINUX, "split rings, ping across the loopback (ICMP, 3 sizes)", packed=False)
    assert all(not int(s["driver_features"], 16) >> F.RING_PACKED & 1 for s in data["sessions"]), data


def test_report_has_a_section_per_driver(findings_dir: Path, tmp_path: Path) -> None:
    """The report of the runs above: one section per real driver, each run's rows with their verdicts."""
    if not any(findings_dir.glob("*.json")):
        pytest.skip("no real driver ran in this session")
    out = write_real_drivers_report(findings_dir, tmp_path / "report")
    runs = load_runs(findings_dir)
    data = (out / "real-drivers.json").read_text(encoding="utf-8")
    html = (out / "real-drivers.html").read_text(encoding="utf-8")
    for run in runs:
        assert run.driver in data and run.driver in html
        for rid in run.rows:
            assert rid in html
