"""A guest in which the project's own code drives QEMU's virtio-net-pci through Linux VFIO.

QEMU's emulated NIC stands in for a real card. What it takes (see ``/work/shared/peers.md``):

* ``q35`` with an emulated VT-d before the NIC, ``intel-iommu,intremap=on``: vfio's type1 IOMMU
  refuses ``VFIO_SET_IOMMU`` (EPERM) without interrupt remapping; the guest kernel gets
  ``intel_iommu=on``;
* each NIC behind its own PCIe root port: a PCIe virtio function has FLR, so ``VFIO_DEVICE_RESET``
  works (on the root bus the kernel finds no reset method), its config space is 4 KiB, and it is
  alone in its IOMMU group;
* ``iommu_platform=on``: the device's DMA goes through the vIOMMU, so an unmapped IOVA faults (the
  guest logs a DMAR fault); ``disable-legacy=on``: modern only; ``romfile=``: no option ROM;
* ``-cpu max``: the host's Python extensions (numpy) need more than TCG's default ``qemu64``.

Each NIC's netdev is a unix datagram socket that sends to its own address: every frame the NIC
transmits comes back to its receive queue (the loopback wire the bench's data-path checks expect
of a real device), and ``filter-dump`` writes the frames crossing the netdev to a pcap on the host.

In the guest, :func:`bind_vfio_pci` moves the function from virtio-pci to vfio-pci and
:func:`host_python` runs the host's interpreter (the project's venv) in a chroot of the host's
root filesystem, which the guest sees read-only over 9p with a RAM overlay (``Guest(share_root=/)``).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from testbenches.guest.initramfs import DEFAULT_MODULES
from testbenches.guest.kernel import Kernel
from testbenches.guest.qemu import Guest

#: vfio-pci does not pull in the type1 IOMMU backend: it is loaded explicitly.
VFIO_MODULES: Final = (*DEFAULT_MODULES, "vfio_pci", "vfio_iommu_type1")
#: Where the job directory (``/job`` in the initramfs) appears inside the chroot.
CHROOT_JOB_DIR: Final = "/vdpa-job"
#: Guest RAM: the host's Python with pytest, scapy and hypothesis, plus pinned DMA memory.
MEMORY_MB: Final = 1024
REPO: Final = Path(__file__).resolve().parents[2]
#: Root ports sit at these slots of pcie.0; the NIC behind the n-th one is alone on bus n+1.
_ROOT_PORT_SLOT: Final = 5


@dataclass(frozen=True)
class VfioNic:
    """One NIC behind its own root port (``index`` 0, 1...: alone on bus ``index + 1``).

    Its netdev is a unix datagram socket bound to ``socket`` that sends to its own address: every
    frame comes back to the NIC (a loopback wire). ``pcap`` gets the frames crossing the netdev
    (``filter-dump``), in both directions.
    """

    index: int
    socket: Path
    pcap: Path
    mac: str = "52:54:00:0f:10:01"

    @property
    def ident(self) -> str:
        return f"n{self.index}"

    @property
    def bdf(self) -> str:
        return f"0000:{self.index + 1:02x}:00.0"

    @property
    def target(self) -> str:
        return f"vfio:{self.bdf}"

    def qemu_args(self) -> list[str]:
        port, sock = f"rp{self.index}", str(self.socket)
        return ["-device", f"pcie-root-port,id={port},bus=pcie.0,chassis={self.index + 1},"
                           f"addr={_ROOT_PORT_SLOT + self.index:#x}",
                "-netdev", f"dgram,id={self.ident},local.type=unix,local.path={sock},"
                           f"remote.type=unix,remote.path={sock}",
                "-object", f"filter-dump,id={self.ident}dump,netdev={self.ident},file={self.pcap}",
                "-device", f"virtio-net-pci,netdev={self.ident},bus={port},addr=0x0,mac={self.mac},"
                           "iommu_platform=on,disable-legacy=on,romfile="]


def vfio_guest(workdir: Path, nics: Sequence[VfioNic], *, kernel: Kernel | None = None,
               memory_mb: int = MEMORY_MB, modules: Sequence[str] = VFIO_MODULES, name: str = "qemu-vfio") -> Guest:
    """A :class:`Guest` with ``nics`` behind a vIOMMU and the host root shared for :func:`host_python`."""
    args = ["-device", "intel-iommu,intremap=on"]  # before the NICs: they must sit behind it
    for nic in nics:
        nic.socket.unlink(missing_ok=True)  # QEMU binds the address itself
        args += nic.qemu_args()
    return Guest(workdir, kernel=kernel, modules=modules, memory_mb=memory_mb, share_root=Path("/"),
                 extra_args=args, cmdline=("intel_iommu=on",), machine="q35", cpu="max", name=name)


def bind_vfio_pci(bdf: str) -> str:
    """Shell (busybox) that hands ``bdf`` from its driver to vfio-pci; exits 30 when that fails."""
    dev = f"/sys/bus/pci/devices/{bdf}"
    return f"""
[ -e {dev}/driver ] && {{ echo {bdf} > {dev}/driver/unbind || exit 30; }}
echo vfio-pci > {dev}/driver_override || exit 30
echo {bdf} > /sys/bus/pci/drivers_probe
[ "$(basename "$(readlink {dev}/driver)")" = vfio-pci ] || {{ echo "{bdf} not bound to vfio-pci"; exit 30; }}
"""


def host_python(repo: Path = REPO, python: str | None = None) -> str:
    """Shell that defines ``hostpy ARGS...``: the host's Python run in ``repo`` inside a chroot of the host
    root; the job directory is bound to :data:`CHROOT_JOB_DIR` there. ``python`` defaults to this
    interpreter (the project's venv, not resolved: its ``pyvenv.cfg`` must be found)."""
    py = shlex.quote(python or sys.executable)
    cd = shlex.quote(str(repo))
    return f"""
mkdir -p /host{CHROOT_JOB_DIR} && mount -o bind /job /host{CHROOT_JOB_DIR} || exit 31
hostpy() {{ chroot /host /bin/sh -c 'cd {cd} && exec "$@"' hostpy {py} "$@"; }}
"""
