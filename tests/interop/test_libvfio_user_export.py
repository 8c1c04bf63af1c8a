"""The project's RTL function exported over vfio-user by libvfio-user (nutanix/libvfio-user, C) instead of the
project's own Python server: ``vfu-device`` (:mod:`sim.rtl.vfu_export`, ``sim/rtl/harness/vfu_device.cpp``) links
libvfio-user and the variant's native bridge, so no Python runs in the device process. The project's extensions
(bench port, DMA faults) travel on its side channel ``SOCKET.bench``.

The conformance suite through ``vfio-user:SOCKET,bench=SOCKET.bench`` fails nothing and passes exactly the ids the
RTL passes in process (``tests/data/expected-ids-rtl.txt``) but for :data:`WATCHED`, which no vfio-user export can
pass (the Python server's export loses them too, tests/test_rtl_target.py): their checks watch every DMA access of
the device as it happens, and over vfio-user the device's DMA happens in another process. Those two must read
"not applicable" for that reason, nothing else. Without libvfio-user's source or its build tools the test skips
with the install line (it fails when ``CI=true``), as the Verilator toolchain does.

A client's memory file truncated under the export (``serve`` in between, as in tests/test_peer_faults.py) is a DMA
fault the device process survives, not a SIGBUS that ends it with every device it serves.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from sim.memory import GuestMemory
from sim.rtl.vfu_export import NativeExport
from sim.vfio_user.libvfio_user_peer import LibvfioUserBuild
from testbenches.peers.serve import ServeProcess
from tests.expected_ids import difference, expected_path, read_expected
from tests.rtl_build import require_rtl_build
from tests.suite_runner import ids_with, run_suite
from tests.test_peer_faults import (
    GPA,
    MEM,
    NOTICE,
    READY,
    fd_count,
    second_session_moves_frames,
    settled_fd_count,
    truncate_memory_mid_session,
)

RTL = "rtl:virtio-net"
#: SPLIT-DEV-15 (test_used_ring_order.py::test_used_element_written_before_used_idx and
#: test_split_ring.py::test_used_idx_wraps_at_16_bits: the used element written before used idx) and PACKED-DEV-05
#: (test_packed_ring.py::test_writable_buffers_not_read): judged only where the checks observe the device's DMA
#: accesses in order as they happen, i.e. in process.
WATCHED = {"SPLIT-DEV-15", "PACKED-DEV-05"}

pytestmark = pytest.mark.timeout(900)


def test_suite_through_libvfio_user_export_passes_the_rtl_ids(libvfio_user: LibvfioUserBuild,
                                                              tmp_path: Path) -> None:
    from models.rtl.targets import RtlOptions

    require_rtl_build(RTL)
    sock = str(tmp_path / "rtl.sock")
    started = time.monotonic()
    with NativeExport(RtlOptions(RTL.removeprefix("rtl:")), sock, log=tmp_path / "vfu-device.log") as export:
        data = run_suite(export.spec, tmp_path / "report")
        alive = export.proc.returncode is None
        code = export.close()
    elapsed = time.monotonic() - started
    log = export.proc.output()
    assert alive, f"the device process died during the run:\n{log[-3000:]}"
    assert code == 0, f"vfu-device exited {code}:\n{log[-3000:]}"
    failed = ids_with(data, "failed")
    assert not failed, {i: data["ids"][i]["evidence"] for i in sorted(failed)}
    passed = ids_with(data, "passed")
    diff = difference(read_expected("rtl") - WATCHED, passed, f"{export.spec} (libvfio-user)", expected_path("rtl"))
    assert not diff, diff
    for rid in sorted(WATCHED):
        record = data["ids"][rid]
        assert record["status"] == "not applicable", (rid, record)
        assert all("not seen as it happens" in e for e in record["evidence"]), (rid, record["evidence"])
    print(f"suite through the libvfio-user export: {len(passed)} ids passed in {elapsed:.0f} s")


def test_memory_truncated_under_the_export(libvfio_user: LibvfioUserBuild, tmp_path: Path, sock_dir: Path,
                                           started: contextlib.ExitStack) -> None:
    """serve over the libvfio-user export; the frontend shrinks its memfd mid-session and kicks. The export's DMA
    mapping of that file would raise SIGBUS in the device process, killing every device in it: its guard turns the
    access into a DMA fault (logged, the beat answered SLVERR, DEVICE_NEEDS_RESET), serve ends that session naming
    the truncated region, and the same device process serves the next session, which moves frames intact."""
    from models.rtl.targets import RtlOptions

    require_rtl_build(RTL)
    export = started.enter_context(NativeExport(RtlOptions(RTL.removeprefix("rtl:") + ",wire=loopback"),
                                                str(sock_dir / "dev.sock"), log=tmp_path / "vfu-device.log"))
    vu_sock = str(sock_dir / "vu.sock")
    serve = started.enter_context(ServeProcess(vu_sock, export.spec, log=tmp_path / "serve.log"))
    serve.wait_listening(READY)
    idle = fd_count(serve.pid)
    since, dev_since = serve.proc.mark(), export.proc.mark()

    truncate_memory_mid_session(vu_sock)
    export.proc.wait_for(r"DMA fault at IOVA 0x[0-9a-f]+ \(\+0x[0-9a-f]+\): memory behind IOVA 0x[0-9a-f]+ is gone: "
                         r"its file was truncated", NOTICE, since=dev_since)
    serve.proc.wait_for(r"vhost-user#1: session dropped: memory truncated under the device: region 0", NOTICE,
                        since=since)
    assert export.proc.returncode is None, f"the device process died:\n{export.proc.output()[-3000:]}"
    assert serve.proc.proc.poll() is None, "serve died"
    assert settled_fd_count(serve.pid, idle) == idle, os.listdir(f"/proc/{serve.pid}/fd")

    second_session_moves_frames(started, serve, vu_sock, started.enter_context(GuestMemory.single(MEM, gpa=GPA)), idle)
    assert "Traceback" not in serve.proc.output()
    assert serve.stop() == 0 and export.close() == 0
