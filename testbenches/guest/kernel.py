"""The guest kernel: a Debian ``linux-image-*-amd64`` package fetched with ``apt-get download`` and
unpacked with ``dpkg -x`` into the cache (never installed on the host).

The cached kernel directory holds what the guest needs and nothing of the host's:

* ``vmlinuz``: the package's bzImage;
* ``vmlinux``: the ELF kernel decompressed from it (what the kernel's ``scripts/extract-vmlinux``
  does), kept only when it carries the PVH entry note: QEMU then boots it directly, without the
  real-mode setup and the in-guest decompression that cost ~2 s under TCG;
* ``lib/modules/<release>/``: the package's modules with a ``modules.dep`` made by ``depmod -b``
  (Debian generates it at install time, the package does not ship it).

A kernel is unpacked into a temporary directory and renamed into place when complete, so a cache
entry is either whole or absent, also with several processes fetching at once.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from testbenches.peers.process import MissingPeer

#: The metapackage whose dependency names the current kernel package.
KERNEL_METAPACKAGE: Final = "linux-image-amd64"
KERNEL_PACKAGE: Final = re.compile(r"^linux-image-(\d+\.\d+\.\d+-\d+-amd64)$")
APT_TIMEOUT: Final = 600.0
TOOL_TIMEOUT: Final = 120.0

#: ``XEN_ELFNOTE_PHYS32_ENTRY``: the 32-bit PVH entry point QEMU looks for in an ELF kernel.
_XEN_ELFNOTE_PHYS32_ENTRY: Final = 18
_PT_NOTE: Final = 4
#: Compressed payload magics inside a bzImage, with their decompressors (Debian uses xz).
_PAYLOADS: Final = ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"))


class GuestKernelError(RuntimeError):
    """The kernel could not be resolved, downloaded or unpacked; the message says what to do."""


def cache_root() -> Path:
    """``$VDPA_BENCH_CACHE/guest``, by default ``~/.cache/vdpa-bench/guest``."""
    base = os.environ.get("VDPA_BENCH_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "vdpa-bench"
    return root / "guest"


@dataclass(frozen=True)
class Kernel:
    """One unpacked kernel: ``image`` is what QEMU's ``-kernel`` gets (vmlinux when PVH works)."""

    package: str
    release: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def vmlinux(self) -> Path | None:
        path = self.root / "vmlinux"
        return path if path.exists() else None

    @property
    def image(self) -> Path:
        return self.vmlinux or self.vmlinuz

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def _tool(name: str, package: str) -> str:
    # depmod lives in /usr/sbin, which is not on every user's PATH.
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise MissingPeer(name, f"apt-get install {package}")
    return path


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = TOOL_TIMEOUT) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise GuestKernelError(f"{' '.join(argv)}: no result within {timeout} s") from None
    if done.returncode != 0:
        raise GuestKernelError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr.strip()}")
    return done.stdout


def resolve_package() -> str:
    """The kernel package ``linux-image-amd64`` depends on today (``apt-cache depends``)."""
    out = _run([_tool("apt-cache", "apt"), "depends", KERNEL_METAPACKAGE])
    for line in out.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "Depends" and KERNEL_PACKAGE.match(value.strip()):
            return value.strip()
    raise GuestKernelError(f"apt-cache depends {KERNEL_METAPACKAGE} names no linux-image-*-amd64 package "
                           f"(run apt-get update, or pass the package name):\n{out.strip()}")


def fetch_kernel(package: str | None = None, *, cache: Path | None = None) -> Kernel:
    """The cached kernel of ``package`` (default: the current Debian kernel), fetched on first use."""
    cache = cache or cache_root()
    if package is None:
        try:
            package = resolve_package()
        except (MissingPeer, GuestKernelError):
            # offline: the newest kernel fetched before
            cached = [p.name for p in cache.glob("linux-image-*-amd64") if KERNEL_PACKAGE.match(p.name)]
            if not cached:
                raise
            package = max(cached, key=lambda name: [int(n) for n in re.findall(r"\d+", name)])
    found = KERNEL_PACKAGE.match(package)
    if found is None:
        raise GuestKernelError(f"{package!r} is not a linux-image-<version>-amd64 package name")
    release = found.group(1)
    root = cache / package
    if not root.is_dir():
        _unpack(package, release, cache)
    return Kernel(package, release, root)


def _unpack(package: str, release: str, cache: Path) -> None:
    apt_get = _tool("apt-get", "apt")
    dpkg = _tool("dpkg", "dpkg")
    depmod = _tool("depmod", "kmod")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{package}-", dir=cache) as tmp:
        work = Path(tmp)
        _run([apt_get, "download", package], cwd=work, timeout=APT_TIMEOUT)
        debs = list(work.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise GuestKernelError(f"apt-get download {package} left {[d.name for d in debs]} in {work}")
        tree = work / "tree"
        _run([dpkg, "-x", str(debs[0]), str(tree)])
        debs[0].unlink()
        vmlinuz = tree / "boot" / f"vmlinuz-{release}"
        modules = tree / "lib" / "modules" / release
        if not vmlinuz.is_file() or not (modules / "modules.order").is_file():
            raise GuestKernelError(f"{package} has no boot/vmlinuz-{release} or lib/modules/{release}")
        entry = work / "entry"
        (entry / "lib" / "modules").mkdir(parents=True)
        vmlinuz.rename(entry / "vmlinuz")
        modules.rename(entry / "lib" / "modules" / release)
        _run([depmod, "-b", str(entry), release])
        vmlinux = extract_vmlinux((entry / "vmlinuz").read_bytes())
        if vmlinux is not None and has_pvh_entry(vmlinux):
            (entry / "vmlinux").write_bytes(vmlinux)
        with contextlib.suppress(FileExistsError, OSError):
            # Another process may have completed the same entry meanwhile: keep theirs.
            entry.rename(cache / package)
        if not (cache / package).is_dir():
            raise GuestKernelError(f"could not move the unpacked kernel into {cache / package}")


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage (the first compressed payload that decompresses to ELF)."""
    for magic, kind in _PAYLOADS:
        pos = bzimage.find(magic)
        while pos >= 0:
            try:
                if kind == "xz":
                    out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[pos:])
                else:  # wbits 31: one gzip member, the bytes after it are left alone
                    out = zlib.decompressobj(wbits=31).decompress(bzimage[pos:])
            except (lzma.LZMAError, zlib.error):
                out = b""
            if out.startswith(b"\x7fELF"):
                return out
            pos = bzimage.find(magic, pos + 1)
    return None


def elf64_segments(elf: bytes) -> Iterator[tuple[int, int, int]]:
    """(p_type, p_offset, p_filesz) of each program header of a 64-bit little-endian ELF image, read as needed."""
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        yield p_type, p_offset, p_filesz


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF kernel has a Xen ``PHYS32_ENTRY`` note (PVH boot)."""
    if elf[:6] != b"\x7fELF\x02\x01":
        return False
    for p_type, p_offset, p_filesz in elf64_segments(elf):
        if p_type != _PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + _align4(namesz) + _align4(descsz)
    return False


def _align4(n: int) -> int:
    return (n + 3) & ~3
