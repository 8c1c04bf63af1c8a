"""The guest's initramfs: static busybox, the kernel modules a job needs (with their dependencies from
``modules.dep``, loaded with ``insmod`` in dependency order) and an ``/init`` that runs one job.

``/init`` mounts proc, sys and devtmpfs, loads the modules, then reads its options from the kernel
command line:

* ``vdpa.root=TAG``: a host directory shared over virtio-9p, mounted read-only with a tmpfs
  overlay at ``/host`` (writes stay in guest RAM; ``/dev``, ``/proc``, ``/sys`` are bound into it
  so a job can ``chroot /host``);
* ``vdpa.jobdir=TAG``: the run's job directory, shared read-write over virtio-9p at ``/job``;
  it counts the boots (``/job/boots``), so a job that reboots the guest knows which boot it is in;
* ``vdpa.job=PATH``: the job script, run with ``sh`` (default ``/job/job.sh`` when a job
  directory is shared, else ``/etc/job.sh`` from the initramfs).

The job runs with ``VDPA_GUEST_BOOT`` set to the boot number; ``/init`` prints ``vdpa-guest: boot
N job exit CODE`` (or ``vdpa-guest: boot N init error: WHAT``) and powers off, or reboots when the
job left a file ``/job/reboot-request`` (QEMU must run without ``-no-reboot``). The archive is
written here (newc format, fixed ownership and times), so the same content always gives the same
bytes, and it is cached under the hash of that content.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from testbenches.guest.kernel import Kernel, cache_root, elf64_segments
from testbenches.peers.process import MissingPeer

#: virtio-pci and virtio-net for the NIC under test, 9p for the host and job directories,
#: overlay for the writable host root.
DEFAULT_MODULES: Final = ("virtio_pci", "virtio_net", "9pnet_virtio", "9p", "overlay")
#: What ``/init`` prints; :mod:`testbenches.guest.qemu` waits for these.
MARKER_PREFIX: Final = "vdpa-guest:"

INIT: Final = r"""#!/bin/busybox sh
# vdpa-bench guest init: modules, shares, one job, its exit code on the console, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
boot=1
fail() {
    echo "vdpa-guest: boot $boot init error: $*"
    poweroff -f
    exit 1
}
while read -r mod; do
    insmod "/lib/modules/$mod.ko" || fail "insmod $mod"
done < /etc/modules
ip link set lo up
root= jobdir= job=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vdpa.root=*) root="${arg#vdpa.root=}" ;;
        vdpa.jobdir=*) jobdir="${arg#vdpa.jobdir=}" ;;
        vdpa.job=*) job="${arg#vdpa.job=}" ;;
    esac
done
if [ -n "$jobdir" ]; then
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "$jobdir" /job || fail "mount job dir $jobdir"
    boot=$(( $(cat /job/boots 2>/dev/null || echo 0) + 1 ))
    echo "$boot" > /job/boots || fail "write /job/boots"
    [ -n "$job" ] || job=/job/job.sh
fi
if [ -n "$root" ]; then
    mkdir -p /mnt/lower /mnt/rw
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro "$root" /mnt/lower || fail "mount host $root"
    mount -t tmpfs -o mode=0755 tmpfs /mnt/rw && mkdir -p /mnt/rw/upper /mnt/rw/work || fail "tmpfs"
    mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /host \
        || fail "overlay on /host"
    for d in dev proc sys; do
        [ -d "/host/$d" ] && mount -o bind "/$d" "/host/$d"
    done
fi
[ -n "$job" ] || job=/etc/job.sh
[ -f "$job" ] || fail "no job script $job"
export VDPA_GUEST_BOOT=$boot
echo "vdpa-guest: boot $boot job start"
cd /tmp
sh "$job" < /dev/null
code=$?
cd /
sync
echo "vdpa-guest: boot $boot job exit $code"
if [ -e /job/reboot-request ]; then
    rm -f /job/reboot-request
    reboot -f
fi
poweroff -f
"""

_DIRS: Final = ("bin", "dev", "etc", "host", "job", "lib", "lib/modules", "mnt", "proc", "run", "sys", "tmp")
_PT_INTERP: Final = 3


class InitramfsError(RuntimeError):
    """A module is unknown or the archive could not be written."""


@dataclass(frozen=True)
class Module:
    name: str  # as insmod and lsmod call it: dashes become underscores
    path: Path


def find_busybox() -> Path:
    """A statically linked busybox (the initramfs has no shared libraries)."""
    hint = "apt-get install busybox-static"
    found = shutil.which("busybox")
    if found is None:
        raise MissingPeer("busybox", hint)
    path = Path(found).resolve()
    if not is_static_elf(path.read_bytes()):
        raise MissingPeer("busybox (static)", f"{path} is dynamically linked: {hint}")
    return path


def is_static_elf(elf: bytes) -> bool:
    """A 64-bit ELF without a program interpreter."""
    if elf[:5] != b"\x7fELF\x02":
        return False
    return all(p_type != _PT_INTERP for p_type, _, _ in elf64_segments(elf))


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(suffix):
            base = base[:-len(suffix)]
    return base.replace("-", "_")


def resolve_modules(kernel: Kernel, names: Iterable[str]) -> list[Module]:
    """``names`` and everything they depend on, each after its dependencies; built-ins are skipped."""
    moddir = kernel.modules_dir
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        if target:
            deps[module_name(target)] = (target, [module_name(d) for d in rest.split()])
    builtin = {module_name(line) for line in (moddir / "modules.builtin").read_text().split()}
    order: list[Module] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in done or (name in builtin and name not in deps):
            return
        if name in chain:
            raise InitramfsError(f"module dependency loop: {' -> '.join((*chain, name))}")
        if name not in deps:
            raise InitramfsError(f"kernel {kernel.release} has no module {name!r}")
        target, needs = deps[name]
        if not target.endswith(".ko"):
            raise InitramfsError(f"{target}: compressed modules are not supported (busybox insmod)")
        for dep in needs:
            visit(dep, (*chain, name))
        done.add(name)
        order.append(Module(name, moddir / target))

    for name in names:
        visit(name.replace("-", "_"), ())
    return order


class Cpio:
    """A newc (``070701``) archive with every entry owned by root and dated 0."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        self._pad()
        self._out += data
        self._pad()

    def _pad(self) -> None:
        self._out += b"\0" * (-len(self._out) % 4)

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self._out)


def build_initramfs(kernel: Kernel, modules: Sequence[str] = DEFAULT_MODULES, *,
                    files: Mapping[str, bytes] | None = None, cache: Path | None = None) -> Path:
    """The cached initramfs for ``kernel`` with ``modules`` (and their dependencies) and extra
    ``files`` (absolute guest path to content, e.g. ``{"/etc/job.sh": b"..."}``)."""
    busybox = find_busybox().read_bytes()
    mods = resolve_modules(kernel, modules)
    extra = dict(sorted((files or {}).items()))
    for path in extra:
        if not path.startswith("/") or path.rstrip("/") != path or "/../" in path + "/":
            raise InitramfsError(f"initramfs file name {path!r} must be an absolute file path")
    blobs = [(m.name, m.path.read_bytes()) for m in mods]
    digest = hashlib.sha256()
    for part in (INIT.encode(), kernel.release.encode(), busybox,
                 *(b for name, data in blobs for b in (name.encode(), data)),
                 *(b for path, data in extra.items() for b in (path.encode(), data))):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    out_dir = (cache or cache_root()) / "initramfs"
    out = out_dir / f"{digest.hexdigest()[:32]}.cpio"
    if out.exists():
        return out

    cpio = Cpio()
    for d in _DIRS:
        cpio.directory(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("init", INIT.encode(), 0o755)
    cpio.file("bin/busybox", busybox, 0o755)
    for name, data in blobs:
        cpio.file(f"lib/modules/{name}.ko", data)
    cpio.file("etc/modules", "".join(f"{name}\n" for name, _ in blobs).encode())
    made = set(_DIRS)
    for path, data in extra.items():
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in made:
                cpio.directory(parent)
                made.add(parent)
        cpio.file(path.lstrip("/"), data, 0o755)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".initramfs-", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cpio.finish())
        os.replace(tmp, out)  # atomic: a reader sees the whole archive or none
    except BaseException:
        os.unlink(tmp)
        raise
    return out
