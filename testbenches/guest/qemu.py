"""A Linux guest in QEMU 7.2 under TCG (no KVM), its serial console captured, running one job.

``Guest`` starts ``qemu-system-x86_64`` through :class:`~testbenches.peers.process.ChildProcess`
(own process group, output captured, stopped by PID also when a check fails) with the cached
kernel and initramfs (:mod:`testbenches.guest.kernel`, :mod:`testbenches.guest.initramfs`). The
job script is written into the run's job directory, which the guest mounts read-write over
virtio-9p at ``/job``: the job can leave files there for the host, and the directory counts the
boots, so a job that reboots the guest (``reboot -f``) knows which boot it is in.

For a vhost-user NIC, ``shared_memory=True`` backs all guest RAM with one shared memfd (the
backend maps it), and :func:`vhost_user_net_args` gives the netdev and device options.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from sim.child_process import ChildError, ChildProcess
from testbenches.guest.initramfs import DEFAULT_MODULES, MARKER_PREFIX, build_initramfs
from testbenches.guest.kernel import Kernel, fetch_kernel
from testbenches.peers.process import find_program

QEMU: Final = "qemu-system-x86_64"
QEMU_HINT: Final = "apt-get install qemu-system-x86"
#: TCG on a shared 2-core machine: a boot to the job takes ~2-5 s, allow for a loaded host.
BOOT_TIMEOUT: Final = 60.0
JOB_TAG: Final = "vdpajob"
ROOT_TAG: Final = "vdparoot"
#: ``vdpa-guest: boot N job start`` / ``job exit CODE`` / ``init error: WHAT``, or the kernel giving up.
#: Each alternative ends at the line's end, so a line still arriving on the console never matches half-read.
_MARKER: Final = re.compile(rf"{MARKER_PREFIX} boot (?P<boot>\d+) "
                            r"(?:(?P<start>job start)|job exit (?P<exit>\d+)|init error: (?P<error>[^\r\n]*))\r?\n"
                            r"|(?P<panic>Kernel panic - not syncing: [^\r\n]*)\r?\n")


class GuestError(RuntimeError):
    """The guest did not reach a marker, its init failed or the kernel panicked; carries the console tail."""


@dataclass(frozen=True)
class JobResult:
    boot: int
    exit_code: int
    elapsed: float  # seconds from boot() to the exit marker


def vhost_user_net_args(socket: Path | str, *, ident: str = "n0", mac: str | None = None,
                        queue_size: int | None = None, properties: Sequence[str] = ()) -> list[str]:
    """A virtio-net-pci NIC whose device is the vhost-user backend listening on ``socket``; ``properties`` are
    more ``name=value`` device properties (e.g. ``csum=on``, ``host_tso4=on``).

    ``vectors=0``: QEMU 7.2 under TCG crashes in vhost_net_start when the guest enables MSI-X, so
    the NIC signals with INTx. Needs ``Guest(shared_memory=True)``.
    """
    device = f"virtio-net-pci,netdev={ident},vectors=0,romfile="
    if mac is not None:
        device += f",mac={mac}"
    if queue_size is not None:
        device += f",rx_queue_size={queue_size},tx_queue_size={queue_size}"
    device += "".join(f",{prop}" for prop in properties)
    return ["-chardev", f"socket,id={ident}c,path={socket}",
            "-netdev", f"vhost-user,id={ident},chardev={ident}c",
            "-device", device]


class Guest:
    """One QEMU run in ``workdir`` (console log, job directory).

    ``modules`` are loaded at boot (plus their dependencies); ``share_root`` is a host directory
    the guest sees read-only at ``/host`` (with a RAM overlay); ``extra_args`` go to QEMU as they
    are, ``cmdline`` to the kernel. ``allow_reboot``: a guest reboot restarts the guest in the same
    QEMU run instead of ending it (``-no-reboot``) — a kernel panic then also reboots, which
    :meth:`wait_job` reports as an error.
    """

    def __init__(self, workdir: Path, *, kernel: Kernel | None = None, modules: Sequence[str] = DEFAULT_MODULES,
                 memory_mb: int = 512, shared_memory: bool = False, share_root: Path | None = None,
                 extra_args: Sequence[str] = (), cmdline: Sequence[str] = (), allow_reboot: bool = False,
                 name: str = "qemu", machine: str = "pc", cpu: str | None = None) -> None:
        self.qemu = find_program(QEMU, QEMU_HINT)
        self.workdir = workdir
        self.kernel = kernel or fetch_kernel()
        self.initramfs = build_initramfs(self.kernel, modules)
        self.memory_mb = memory_mb
        self.shared_memory = shared_memory
        self.share_root = share_root
        self.extra_args = list(extra_args)
        self.cmdline = list(cmdline)
        self.allow_reboot = allow_reboot
        self.name = name
        self.machine = machine  # q35 where a device needs PCIe or a vIOMMU (intel-iommu)
        self.cpu = cpu  # e.g. "max": the host's Python extensions need more than TCG's default qemu64
        self.job_dir = workdir / "job"
        self.log_path = workdir / f"{name}-console.log"
        self.process: ChildProcess | None = None
        self._started = 0.0

    def argv(self) -> list[str]:
        append = ["console=ttyS0", "quiet", "panic=-1", f"vdpa.jobdir={JOB_TAG}"]
        args = [self.qemu, "-accel", "tcg", "-machine", self.machine, *(("-cpu", self.cpu) if self.cpu else ()),
                "-smp", "1", "-m", f"{self.memory_mb}M",
                # no default NIC, VGA or monitor: the serial console is the only output
                "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
                "-kernel", str(self.kernel.image), "-initrd", str(self.initramfs),
                "-fsdev", f"local,id={JOB_TAG},path={self.job_dir},security_model=none",
                "-device", f"virtio-9p-pci,fsdev={JOB_TAG},mount_tag={JOB_TAG}"]
        if self.shared_memory:
            # The vhost-user backend maps guest RAM from this fd: it must hold all of it.
            args += ["-object", f"memory-backend-memfd,id=mem,size={self.memory_mb}M,share=on",
                     "-numa", "node,memdev=mem"]
        if self.share_root is not None:
            # multidevs=remap: a host tree spans several filesystems, keep their inode numbers apart
            args += ["-fsdev", f"local,id={ROOT_TAG},path={self.share_root},security_model=none,readonly=on,"
                               "multidevs=remap",
                     "-device", f"virtio-9p-pci,fsdev={ROOT_TAG},mount_tag={ROOT_TAG}"]
            append.append(f"vdpa.root={ROOT_TAG}")
        if not self.allow_reboot:
            args.append("-no-reboot")
        return [*args, *self.extra_args, "-append", " ".join([*append, *self.cmdline])]

    # --- lifetime ------------------------------------------------------------------------------

    def boot(self, job: str) -> None:
        """Write ``job`` (a busybox ``sh`` script) to the job directory and start QEMU."""
        if self.process is not None:
            raise GuestError(f"{self.name} already booted")
        self.job_dir.mkdir(parents=True, exist_ok=True)
        (self.job_dir / "boots").unlink(missing_ok=True)
        (self.job_dir / "job.sh").write_text(job)
        self._started = time.monotonic()
        self.process = ChildProcess(self.argv(), log=self.log_path, name=self.name)

    def stop(self) -> int | None:
        """Stop QEMU (SIGTERM, then SIGKILL) if it runs; its exit status."""
        return None if self.process is None else self.process.stop()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- observing -----------------------------------------------------------------------------

    def _proc(self) -> ChildProcess:
        if self.process is None:
            raise GuestError(f"{self.name} not booted")
        return self.process

    def console(self) -> str:
        return "" if self.process is None else self.process.output()

    def mark(self) -> int:
        """Console position: pass it as ``since`` to wait only for what comes after."""
        return self._proc().mark()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = BOOT_TIMEOUT, *,
                 since: int = 0) -> re.Match[str]:
        """The first console match of ``pattern`` after ``since``; :class:`GuestError` on timeout or exit."""
        try:
            return self._proc().wait_for(pattern, timeout, since=since)
        except ChildError as exc:
            raise GuestError(str(exc)) from None

    def _wait_marker(self, kind: str, timeout: float, boot: int | None, since: int) -> tuple[int, re.Match[str]]:
        """Boot number and match of marker ``kind`` ("start" or "exit"); init errors and panics raise."""
        deadline = time.monotonic() + timeout
        pos = since
        while True:
            found = self.wait_for(_MARKER, max(0.0, deadline - time.monotonic()), since=pos)
            if found["panic"] is not None:
                raise GuestError(f"{self.name}: guest kernel panic: {found['panic']}\n{self._proc().tail()}")
            number = int(found["boot"])
            if found["error"] is not None:
                raise GuestError(f"{self.name}: guest init failed in boot {number}: {found['error']}\n"
                                 f"{self._proc().tail()}")
            if (boot is None or number == boot) and found[kind] is not None:
                return number, found
            # The console is ASCII (kernel and init output), so match offsets are byte offsets.
            pos += found.end()

    def wait_job_start(self, timeout: float = BOOT_TIMEOUT, *, boot: int | None = None, since: int = 0) -> float:
        """Seconds from :meth:`boot` until the job of boot ``boot`` (the next after ``since``) started."""
        self._wait_marker("start", timeout, boot, since)
        return time.monotonic() - self._started

    def wait_job(self, timeout: float = BOOT_TIMEOUT, *, boot: int | None = None, since: int = 0) -> JobResult:
        """The job's exit code at the end of boot ``boot`` (the next one after ``since`` if None)."""
        number, found = self._wait_marker("exit", timeout, boot, since)
        return JobResult(number, int(found["exit"]), time.monotonic() - self._started)

    def wait_exit(self, timeout: float = BOOT_TIMEOUT) -> int:
        """QEMU's exit status once the guest powered off."""
        try:
            return self._proc().wait_exit(timeout)
        except ChildError as exc:
            raise GuestError(str(exc)) from None

    def run(self, job: str, timeout: float = BOOT_TIMEOUT) -> JobResult:
        """Boot, run ``job`` once, wait for the power-off; the job's result."""
        self.boot(job)
        result = self.wait_job(timeout)
        self.wait_exit(timeout)
        return result
