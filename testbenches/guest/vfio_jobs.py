"""Jobs run inside the VFIO guest (:mod:`testbenches.guest.vfio`) with the project's own code; each writes
a JSON result for the host to judge.

``serve-traffic``
    ``vdpa-bench serve --device vfio:BDF`` started as a peer process, the project's Python vhost-user
    frontend (:class:`~testbenches.frontend.vhost_user.VhostUserFrontend`) connected to it, frames sent
    through the real function; what came back over its wire and the server's log are recorded (the
    host finds the frames in QEMU's netdev dump).
``fault``
    The backend's generic driver on the function with transmitq1's rings at an IOVA nothing maps: the
    device's DMA is refused by the (v)IOMMU and the fault is read back through
    :meth:`~backend.pci.vfio.VfioPciDevice.wait_dma_faults`; then a function-level reset
    (``VFIO_DEVICE_RESET``) and a fresh bring-up must move frames again. On the way it reads a register
    through the BAR's mmap and binds the ERR and REQ interrupts.

Usage: ``python -m testbenches.guest.vfio_jobs JOB --device vfio:BDF --out RESULT.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.eventloop import new_eventfd
from backend.pci.device import IrqIndex
from backend.pci.vfio import open_vfio
from backend.virtio.features import DeviceStatus, F
from backend.virtio.pci_regs import CommonCfg
from sim.memory import GuestMemory
from testbenches.driver.vdpa_frontend import VdpaFrontend
from testbenches.frontend.vhost_user import FrontendError, VhostUserFrontend
from testbenches.peers.serve import ServeProcess

#: Guest memory of the frontends starts here, not at 0 (QEMU's device ignores a ring at IOVA 0).
MEMORY_BASE: Final = 0x100000
MEMORY_SIZE: Final = 16 << 20
#: An IOVA inside the IOMMU's address width (39 bits on QEMU's VT-d) that nothing maps.
UNMAPPED_IOVA: Final = 0x40000000
READY_TIMEOUT: Final = 60.0  # serve imports the project under TCG before it listens
FAULT_TIMEOUT: Final = 5.0
#: How long the kernel may take to log a DMA fault after the access (its reports come within milliseconds).
LATE_FAULT_WAIT: Final = 0.5
EXCHANGE_TIMEOUT: Final = 10.0
FRAMES: Final = 8
#: Features the jobs negotiate: the split ring basics and ACCESS_PLATFORM (QEMU refuses FEATURES_OK without).
WANTED: Final = (1 << F.VERSION_1) | (1 << F.ACCESS_PLATFORM)


def frames(tag: int, count: int = FRAMES) -> list[bytes]:
    """UDP frames the host can recognise in the pcap: ``tag`` and the index in the payload."""
    head = Ether(src="02:00:00:0f:10:02", dst="02:00:00:0f:10:03") / IP(src="10.9.0.1", dst="10.9.0.2")
    return [bytes(head / UDP(sport=7000 + tag, dport=7100 + i) / f"vdpa-bench vfio job {tag} frame {i}".ljust(80, "."))
            for i in range(count)]


def serve_traffic(device: str, workdir: Path, log: Path) -> dict[str, Any]:
    sock = workdir / "vu.sock"
    serve = ServeProcess(str(sock), device, log=log)
    result: dict[str, Any] = {"device": device}
    try:
        serve.wait_listening(READY_TIMEOUT)
        sent = frames(1)
        result["sent"] = [f.hex() for f in sent]
        with GuestMemory.single(MEMORY_SIZE, gpa=MEMORY_BASE) as mem:
            fe = VhostUserFrontend.connect(str(sock), mem, timeout=EXCHANGE_TIMEOUT)
            try:
                start = time.monotonic()
                fe.start(size=64)
                result["negotiated"] = fe.features
                got = fe.exchange(sent, timeout=EXCHANGE_TIMEOUT)
                result["exchange_s"] = round(time.monotonic() - start, 3)
                result["received"] = [f.hex() for f in got]
                result["bases"] = fe.stop()
            except (OSError, FrontendError) as exc:  # the session refused or dropped: the log says why
                result["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                fe.close()
        serve.proc.wait_for(r"vhost-user#1: (frontend disconnected|session dropped)", READY_TIMEOUT)
    finally:
        result["serve_exit"] = serve.stop()
        result["serve_log"] = serve.log()
    return result


def fault(device: str) -> dict[str, Any]:
    result: dict[str, Any] = {"device": device}
    pci = open_vfio(device.removeprefix("vfio:"))
    try:
        pci.dma_faults()  # only what happens from here on
        with GuestMemory.single(MEMORY_SIZE, gpa=MEMORY_BASE) as mem:
            vdpa = VirtioPciVdpaDevice(pci, owns_pci=False)
            front = VdpaFrontend(vdpa, mem)
            try:
                front.map_memory()
                front.negotiate(WANTED)
                # receiveq1 as a driver sets it up; transmitq1's rings where no mapping exists.
                front.add_queue(0, 64)
                kick, call = new_eventfd(), new_eventfd()
                front.kicks[1], front.calls[1] = kick, call
                vdpa.set_vq_num(1, 64)
                vdpa.set_vq_address(1, UNMAPPED_IOVA, UNMAPPED_IOVA + 0x1000, UNMAPPED_IOVA + 0x2000)
                vdpa.set_vq_kick(1, kick)
                vdpa.set_vq_call(1, call)
                vdpa.set_vq_ready(1, True)
                vdpa.set_status(int(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK
                                    | DeviceStatus.DRIVER_OK))
                os.eventfd_write(kick, 1)  # the device reads transmitq1's avail ring: the IOMMU refuses
                start = time.monotonic()
                faults = pci.wait_dma_faults(FAULT_TIMEOUT)
                result["fault_wait_s"] = round(time.monotonic() - start, 3)
                result["faults"] = [{"iova": f.iova, "size": f.size, "access": int(f.access), "reason": f.reason}
                                    for f in faults]
                result["status_after_fault"] = vdpa.get_status()
            finally:
                vdpa.close()
                front.close()
                pci.dma_unmap(MEMORY_BASE, MEMORY_SIZE)  # the IOMMU keeps its maps across a device reset
        # The device may read the bad ring more than once before the driver's reset stops it (QEMU did, 3 ms
        # apart), and the kernel logs each read a little after it: those belong to the fault, not after the FLR.
        while late := pci.wait_dma_faults(LATE_FAULT_WAIT):
            result["faults"] += [{"iova": f.iova, "size": f.size, "access": int(f.access), "reason": f.reason}
                                 for f in late]
        # Recovery: function-level reset through VFIO, then the backend's driver takes the device anew.
        pci.reset()
        result["flr"] = True
        with GuestMemory.single(MEMORY_SIZE, gpa=MEMORY_BASE) as mem:
            vdpa = VirtioPciVdpaDevice(pci, owns_pci=False)
            front = VdpaFrontend(vdpa, mem)
            try:
                result["status_after_reset"] = vdpa.get_status()
                front.bring_up(WANTED, size=64)
                sent = frames(2)
                got = front.exchange(sent, timeout=EXCHANGE_TIMEOUT)
                result["sent"] = [f.hex() for f in sent]
                result["received"] = [f.hex() for f in got]
                result["faults_after_reset"] = len(pci.dma_faults())
                # The BAR holding the common configuration, mapped: a register reads the same as through pread.
                common = vdpa.transport.common
                view = pci.region_mmap(common.bar)
                if view is not None:
                    mapped = struct.unpack_from("<H", view, common.offset + CommonCfg.NUM_QUEUES)[0]
                    result["num_queues"] = [vdpa.transport.num_queues(), mapped]
                    view.release()
                # The error and request interrupts (AER, device release) take eventfds too.
                for index in (IrqIndex.ERR, IrqIndex.REQ):
                    if pci.irq_count(index):
                        fd = new_eventfd()
                        pci.set_irqs(index, 0, [fd])
                        pci.set_irqs(index, 0, [])
                        os.close(fd)
                        result.setdefault("irqs_bound", []).append(index.name)
            finally:
                vdpa.close()
                front.close()
                pci.dma_unmap(MEMORY_BASE, MEMORY_SIZE)
    finally:
        pci.close()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbenches.guest.vfio_jobs")
    parser.add_argument("job", choices=("serve-traffic", "fault"))
    parser.add_argument("--device", required=True, metavar="vfio:BDF")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.job == "serve-traffic":
        with tempfile.TemporaryDirectory(prefix="vdpa-serve-") as tmp:
            result = serve_traffic(args.device, Path(tmp), args.out.with_suffix(".serve.log"))
    else:
        result = fault(args.device)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
