"""The ``rtl:`` target: the SystemVerilog virtio-net function under Verilator, behind the unchanged suite
and backend.

* The conformance suite runs on ``rtl:virtio-net`` (a child process, as a user runs it) next to
  ``sim:virtio-net``; every id the behavioral model passes, the RTL passes too, or reports "not offered"
  (features the RTL deliberately lacks), apart from the RTL findings listed below. The side-by-side
  report is written to ``reports/rtl-vs-sim/report.html``.
* Bugs seeded into the RTL (Verilog defines, separate cached builds) are caught with the right ids.
* Full stack: the Python vhost-user frontend → ``vdpa-bench serve --device rtl:...`` → the design with a
  loopback wire moves 1,600 frames intact (also checked on the wire, in a pcap).
* DMA outside the IOMMU maps is answered with SLVERR and reported in ``dma_faults()``.
* ``--waves`` keeps an FST for a failing check only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from scapy.utils import rdpcap

from backend.pci.device import DmaPerm
from backend.targets import default_registry
from backend.virtio.split_ring import DescFlags, Descriptor
from sim.memory import GuestMemory
from testbenches.conformance.harness import NEEDS_RESET, TX, UNMAPPED_IOVA, Bench, WireProbes, wait_fd
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.peers.serve import DeviceProcess, ServeProcess
from tests.expected_ids import difference, expected_path, read_expected
from tests.rtl_build import require_rtl_build
from tests.suite_runner import ROOT, assert_bug_caught, ids_with, judging_modules, run_suite

RTL = "rtl:virtio-net"
SIM = "sim:virtio-net"
#: Ids the behavioral model passes that have nothing to be judged on with the RTL: driver rows about
#: indirect tables (the RTL does not offer INDIRECT_DESC, so no driver builds one).
NOT_COVERABLE = {"SPLIT-DRV-06", "SPLIT-DRV-07", "SPLIT-DRV-09"}
#: Verilog define of a seeded-bug build -> ids the suite must report failed for it.
SEEDED_BUGS: dict[str, set[str]] = {
    # used idx wraps at 0x8000 (a 15-bit counter): at that wrap its write exposes, as the driver counts mod 2^16,
    # entries whose len was never written (the ordering watch of the wrap check)
    "VNET_BUG_USED_WRAP": {"SPLIT-DEV-15"},
    "VNET_BUG_IDX_FIRST": {"SPLIT-DEV-15"},  # each chain's used idx is written before its used element
    "VNET_BUG_MISSED_IRQ": {"SPLIT-DEV-11"},  # without EVENT_IDX, transmit completions never notify
    # a descriptor's next index is followed without the check against the queue size: the device walks past
    # its descriptor table instead of treating the chain as a driver error (no DEVICE_NEEDS_RESET)
    "VNET_BUG_NEXT_UNCHECKED": {"STATUS-DEV-02", "STATUS-DEV-03"},
    "VNET_BUG_NO_INTERRUPT_IGNORED": {"SPLIT-DEV-10"},  # without EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT not honoured
    "VNET_BUG_USED_EVENT_IGNORED": {"SPLIT-DEV-14"},  # with EVENT_IDX every used buffer notifies, used_event unread
    "VNET_BUG_RX_USED_LEN": {"SPLIT-DEV-16"},  # a receive chain's used len leaves out the virtio_net_hdr
    "VNET_BUG_ISR_STICKY": {"PCI-DEV-41"},  # reading ISR status does not clear it
    # packed rings: the Device Ring Wrap Counter never flips, so from the second lap on the used flags say "used"
    # for the wrong lap and the driver never sees its buffers come back
    "VNET_BUG_PACKED_USED_WRAP": {"PACKED-DEV-02"},
    # a used descriptor's flags word is written before its id and len: the device changes a descriptor after
    # handing it back (the DMA order watch), and a fast driver reads a stale id or len
    "VNET_BUG_PACKED_FLAGS_FIRST": {"PACKED-DEV-07"},
    # RING_EVENT_FLAGS_DISABLE in the driver event suppression structure is read but taken as ENABLE (the packed
    # form of VRING_AVAIL_F_NO_INTERRUPT)
    "VNET_BUG_PACKED_DISABLE_IGNORED": {"SPLIT-DEV-10"},
    # VIRTIO_NET_F_CSUM: the completed checksum is stored two bytes past csum_start + csum_offset, so the frame
    # leaves with its partial checksum and two other bytes overwritten
    "VNET_BUG_CSUM_OFFSET": {"NET-DEV-35"},
    # VIRTIO_NET_F_MRG_RXBUF: num_buffers of a frame spread over several receive chains is one too few
    "VNET_BUG_NUM_BUFFERS": {"NET-DEV-28", "NET-DEV-31"},
    # VIRTIO_NET_F_GUEST_CSUM: DATA_VALID set on every received packet, its checksums unchecked
    "VNET_BUG_DATA_VALID_UNCHECKED": {"NET-DEV-26", "NET-DEV-62"},
}
#: The property run over 1000+ random workloads proves the design, not a seeded bug's detection.
VARIANT_ARGS = ("-k", "not thousand_workloads")
SIDE_BY_SIDE = ROOT / "reports" / "rtl-vs-sim"
MEM_SIZE = 8 << 20

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def rtl_builds() -> None:
    """The default design (the seeded-bug variants are built by the jobs that run them, beside the RTL's run)."""
    require_rtl_build("virtio-net")


@pytest.fixture(scope="module")
def suites(rtl_builds: None, sim_suite: dict[str, Any],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The whole suite on rtl (sim's is the session's run) and, beside it, on every seeded-bug build the check
    modules that judged its ids on the model: two child processes at a time (two cores). The model's modules
    for an id are the RTL's (the RTL offers a subset; a check it does not apply to reports "not offered"), so
    the variants need not wait for the RTL's whole run."""
    def one(job: tuple[str, str, tuple[str, ...], list[Path] | None]) -> tuple[str, dict[str, Any]]:
        name, target, extra, modules = job
        require_rtl_build(target)  # cached after the first time; a build error is named here
        out = tmp_path_factory.mktemp(name.replace(":", "-"))
        data = run_suite(target, out, *extra, modules=modules)
        data["_dir"] = out
        return name, data

    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs: list[tuple[str, str, tuple[str, ...], list[Path] | None]] = [(RTL, RTL, (), None)]
        jobs += [(define, f"{RTL},define={define}", VARIANT_ARGS, judging_modules(sim_suite, ids))
                 for define, ids in SEEDED_BUGS.items()]
        results = dict(pool.map(one, jobs))
    results[SIM] = sim_suite
    return results


def test_suite_passes_on_rtl(suites: dict[str, dict[str, Any]]) -> None:
    data = suites[RTL]
    failed = ids_with(data, "failed")
    assert not failed, {i: data["ids"][i]["evidence"] for i in sorted(failed)}
    passed = ids_with(data, "passed")
    # The exact set, not a count: losing an id (a check that stopped judging it) fails the run.
    diff = difference(read_expected("rtl"), passed, RTL, expected_path("rtl"))
    assert not diff, diff
    # what the RTL lacks is reported as such, never as a failure
    not_offered = ids_with(data, "not offered")
    for rid in ("SPLIT-DEV-07", "SPLIT-DEV-08", "FEAT-DEV-10"):  # INDIRECT, IN_ORDER
        assert rid in not_offered, f"{rid}: {data['ids'][rid]}"


def test_rtl_side_by_side_with_sim(suites: dict[str, dict[str, Any]]) -> None:
    rtl, sim = suites[RTL], suites[SIM]
    assert not ids_with(sim, "failed"), "the behavioral model fails ids: see tests/test_suite_on_sim.py"
    diff = difference(read_expected("sim"), ids_with(sim, "passed"), SIM, expected_path("sim"))
    assert not diff, diff
    rtl_ok = ids_with(rtl, "passed") | ids_with(rtl, "not offered") | ids_with(rtl, "not applicable")
    missing = ids_with(sim, "passed") - rtl_ok - NOT_COVERABLE
    assert not missing, {i: rtl["ids"][i] for i in sorted(missing)}
    # the report command renders both runs as columns of one page
    out = SIDE_BY_SIDE
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "testbenches.cli", "report", str(rtl["_dir"] / "results.json"),
                           str(sim["_dir"] / "results.json"), "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    html = (out / "report.html").read_text()
    assert RTL in html and SIM in html
    for rid in ("FEAT-DEV-03", "SPLIT-DEV-15", "NET-DEV-28"):  # every id is a row of the page
        assert rid in html


@pytest.mark.parametrize("define", sorted(SEEDED_BUGS))
def test_seeded_rtl_bug_is_caught(define: str, suites: dict[str, dict[str, Any]]) -> None:
    assert_bug_caught(suites[define], SEEDED_BUGS[define], define)


def test_full_stack_python_frontend_through_serve(rtl_builds: None, tmp_path: Path) -> None:
    """Python frontend → ``vdpa-bench serve --device rtl:...`` → the design → loopback wire → back."""
    sock = str(tmp_path / "vu.sock")
    pcap = tmp_path / "wire.pcap"
    batches, per_batch = 8, 200
    with ServeProcess(sock, f"{RTL},wire=loopback,pcap={pcap}", log=tmp_path / "serve.log") as serve:
        serve.wait_listening()
        with GuestMemory.single(MEM_SIZE, gpa=0x1_0000_0000) as mem:
            fe = VhostUserFrontend.connect(sock, mem)
            try:
                fe.start(queues=(0, 1), size=256)
                sent_all: list[bytes] = []
                for b in range(batches):
                    seqs = range(b * per_batch, (b + 1) * per_batch)
                    sent = [test_frame(s, 60 + (s * 13) % 1400) for s in seqs]
                    got = fe.exchange(sent, timeout=20.0)
                    assert len(got) == len(sent), f"batch {b}: {len(got)} of {len(sent)} frames came back"
                    bad = [i for i, (x, y) in enumerate(zip(sent, got, strict=True)) if x != y]
                    assert not bad, f"batch {b}: frames {bad[:10]} came back altered"
                    sent_all += sent
                # then kept in flight: the rings refilled as the design returns slots (the bench's way)
                more = [test_frame(s, 60 + (s * 13) % 1400) for s in range(len(sent_all), len(sent_all) + 1500)]
                got = fe.stream(more, timeout=20.0)
                assert len(got) == len(more), f"streaming: {len(got)} of {len(more)} frames came back"
                bad = [i for i, (x, y) in enumerate(zip(more, got, strict=True)) if x != y]
                assert not bad, f"streaming: frames {bad[:10]} came back altered or out of order"
                sent_all += more
                bases = fe.stop()
                assert bases == {0: len(sent_all), 1: len(sent_all)}, bases
            finally:
                fe.close()
        serve.proc.wait_for("frontend disconnected", 10.0)
        assert serve.stop() == 0
        log = serve.proc.output()
    assert "Traceback" not in log, log[-3000:]
    assert "cycles simulated" in log and "doorbells taken from eventfds" in log, log[-3000:]
    on_wire = [bytes(p) for p in rdpcap(str(pcap))]
    assert on_wire == sent_all, f"{len(on_wire)} frames on the wire, {len(sent_all)} sent"


def test_dma_outside_the_maps_is_a_reported_fault(rtl_builds: None) -> None:
    """A transmit descriptor pointing outside every IOMMU mapping: the burst is answered SLVERR, the fault
    is in ``dma_faults()``, the function sets DEVICE_NEEDS_RESET and says why; nothing is read silently."""
    registry = default_registry()
    opened: list[Any] = []

    def open_target(spec: str | None = None) -> Any:
        dev = registry.open(spec or f"{RTL},wire=none")
        opened.append(dev)
        return dev

    try:
        with Bench(open_target, f"{RTL},wire=none", WireProbes()).rig() as r:
            d = r.up(queue_size=8, rx_buffers=0)
            ring = d.queues[TX]
            hdr = ring.alloc_buffer(bytes(d.hdr_len))
            ring.add_raw({0: Descriptor(hdr, d.hdr_len, DescFlags.NEXT, 1), 1: Descriptor(UNMAPPED_IOVA, 64, 0, 0)}, 0)
            ring.publish()
            r.pci.dma_faults()
            r.doorbell(TX)
            assert wait_fd(d.irq_fds["config"], 5.0), "no configuration change notification"
            faults = r.pci.dma_faults()
            assert faults and all(f.access == DmaPerm.READ for f in faults), faults
            assert any(UNMAPPED_IOVA <= f.iova < UNMAPPED_IOVA + 64 for f in faults), faults
            assert "SLVERR" in faults[0].reason
            assert d.transport.status() & NEEDS_RESET
            assert any(e.startswith("FEAT-DRV-11") for e in r.driver_errors() or []), r.driver_errors()
    finally:
        for dev in opened:
            dev.close()


def test_waves_kept_for_a_failing_check_only(rtl_builds: None, tmp_path: Path) -> None:
    require_rtl_build("virtio-net,define=VNET_BUG_MISSED_IRQ,waves=unused.fst")  # the tracing variant
    failing = "testbenches/conformance/checks/test_split_ring.py::test_notifications_without_event_idx"
    passing = "testbenches/conformance/checks/test_common_cfg.py::test_queue_size"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", failing, passing,
                           "--target", f"{RTL},define=VNET_BUG_MISSED_IRQ", "--waves", "--report-dir",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert "1 failed, 1 passed" in proc.stdout, proc.stdout[-3000:]
    waves = sorted((tmp_path / "waves").glob("*.fst"))
    assert waves, f"no FST under {tmp_path / 'waves'}"
    assert all("test_notifications_without_event_idx" in w.name for w in waves), waves
    assert all(w.stat().st_size > 1000 for w in waves), [(w.name, w.stat().st_size) for w in waves]


def test_icarus_refuses_verilator_only_options() -> None:
    """sim=icarus works (tests/rtl/test_icarus_target.py); what only the Verilator build has is refused."""
    with pytest.raises(ValueError, match="sim=verilator"):
        default_registry().open(f"{RTL},sim=icarus,waves=/tmp/unused.fst")


def test_rtl_over_vfio_user_passes_the_same_ids(rtl_builds: None, suites: dict[str, dict[str, Any]],
                                                tmp_path: Path) -> None:
    """The RTL exported from its own process (``vdpa-bench device --model rtl:virtio-net --vfio-user``)
    passes exactly the ids it passes in process."""
    sock = str(tmp_path / "rtl.sock")
    with DeviceProcess(sock, RTL, log=tmp_path / "device.log") as dev:
        dev.wait_listening(120.0)
        data = run_suite(f"vfio-user:{sock}", tmp_path / "report", "-k", "not thousand")
        assert dev.stop() == 0, dev.proc.tail()
    assert not ids_with(data, "failed"), {i: data["ids"][i]["evidence"] for i in sorted(ids_with(data, "failed"))}
    in_process = ids_with(suites[RTL], "passed")
    out_of_process = ids_with(data, "passed")
    # The checks of SPLIT-DEV-04 (no access past the chain), SPLIT-DEV-15 (used element written before used idx)
    # and PACKED-DEV-05 (no read of a device-writable buffer) watch every DMA access in order as it happens: only
    # in process (not applicable out of process).
    watched = {"SPLIT-DEV-04", "SPLIT-DEV-15", "PACKED-DEV-05"}
    assert in_process - out_of_process <= watched, sorted(in_process - out_of_process)
    assert out_of_process <= in_process, sorted(out_of_process - in_process)
