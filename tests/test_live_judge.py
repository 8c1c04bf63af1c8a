"""``serve --judge-driver`` without a real peer: the Python vhost-user frontend (what virtio_user sends) drives a
judged backend on the model, on split and packed rings. Its traffic gives the ring and NET-DRV rows verdicts (the
ring rows pass); a transmit header with num_buffers 1 (a driver breaking NET-DRV-16) is recorded as that row's
failure with its evidence, the session's other rows still passing; the report renders a section for the driver."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from backend.eventloop import wait_eventfd
from backend.virtio.net_hdr import NetHdr
from sim.memory import GuestMemory
from testbenches.conformance.real_drivers import load_runs, write_real_drivers_report
from testbenches.frames import test_frame
from testbenches.frontend.vhost_user import VhostUserFrontend
from testbenches.monitor.live import BACKEND_ROWS, Judge, JudgingBackend, label_findings

MEM_SIZE = 4 << 20
WAIT = 5.0
#: The model's default offer with VIRTIO_F_RING_PACKED.
PACKED_FEATURES = 0x8000011F30018028


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_judged_session_records_a_driver_fault(tmp_path: Path, packed: bool) -> None:
    findings = tmp_path / "findings.json"
    spec = f"sim:virtio-net,wire=loopback,features={PACKED_FEATURES:#x}" if packed else "sim:virtio-net,wire=loopback"
    backend = JudgingBackend(spec, Judge(findings))
    sock = str(tmp_path / "vu.sock")
    with contextlib.ExitStack() as started:
        server = started.enter_context(backend.listen(sock))
        mem = started.enter_context(GuestMemory.single(MEM_SIZE, gpa=0x1_0000_0000))
        fe = VhostUserFrontend.connect(sock, mem)
        started.callback(fe.close)
        fe.start(packed=packed)
        frames = [test_frame(i, 64 + 100 * i) for i in range(8)]
        assert fe.exchange(frames) == frames
        tx = fe.rings[1]
        tx.add([NetHdr(num_buffers=1).pack() + frames[0]], [])  # NET-DRV-16: num_buffers is 0 on transmit
        fe.kick(1)
        while tx.in_flight and wait_eventfd(fe.calls[1], WAIT):
            tx.used()
        fe.stop()
        fe.close()
        server.close(WAIT)
    data = label_findings(findings, "bench frontend", "python vhost-user frontend")
    [session] = data["sessions"]
    assert session["ring"] == ("packed" if packed else "split")
    rows = session["rows"]
    bad = rows["NET-DRV-16"]
    assert bad["verdict"] == "failed" and len(bad["evidence"]) == 1 and "num_buffers 1" in bad["evidence"][0], bad
    assert bad["opportunities"] >= len(frames) + 1
    prefix = "PACKED-DRV-" if packed else "SPLIT-DRV-"
    ring_rows = {rid: row for rid, row in rows.items() if rid.startswith(prefix)}
    assert ring_rows and all(row["verdict"] == "passed" for row in ring_rows.values()), ring_rows
    assert not set(rows) & set(BACKEND_ROWS)
    out = write_real_drivers_report(tmp_path, tmp_path / "report")
    [run] = load_runs(tmp_path)
    assert "NET-DRV-16" in run.failed(), run.failed()
    html = (out / "real-drivers.html").read_text(encoding="utf-8")
    assert "bench frontend" in html and "num_buffers 1" in html
    report = json.loads((out / "real-drivers.json").read_text(encoding="utf-8"))
    assert report["drivers"]["bench frontend"][0]["rows"]["NET-DRV-16"]["verdict"] == "failed"
