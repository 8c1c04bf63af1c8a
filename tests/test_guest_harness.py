"""The guest harness's host-side parts without QEMU: vmlinux extraction and the PVH note, module
dependency order, the initramfs archive (listed by the system's cpio) and its content-hash cache,
the kernel cache lookup."""

from __future__ import annotations

import gzip
import lzma
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from testbenches.guest import initramfs as ir
from testbenches.guest.kernel import (
    GuestKernelError,
    Kernel,
    cache_root,
    extract_vmlinux,
    fetch_kernel,
    has_pvh_entry,
)
from testbenches.peers.process import require_program

RELEASE = "6.1.0-99-amd64"


def elf64(notes: Sequence[tuple[bytes, int]] = (), interp: bool = False) -> bytes:
    """A minimal little-endian ELF64 header with a PT_NOTE segment holding ``notes`` (name, type)."""
    body = b""
    for name, ntype in notes:
        n = name + b"\0"
        desc = b"\x50\x08\x00\x01\x00\x00\x00\x00"
        body += struct.pack("<III", len(n), len(desc), ntype) + n.ljust((len(n) + 3) & ~3, b"\0") + desc
    phnum = 1 + int(interp)
    phoff = 64
    data_off = phoff + 56 * phnum
    head = bytearray(b"\x7fELF\x02\x01\x01" + b"\0" * 9)
    head += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, 56, phnum, 0, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", 4, 4, data_off, 0, 0, len(body), len(body), 4)
    if interp:
        phdrs += struct.pack("<IIQQQQQQ", 3, 4, data_off, 0, 0, 0, 0, 1)
    return bytes(head) + phdrs + body


def test_pvh_note_found_only_with_phys32_entry() -> None:
    assert has_pvh_entry(elf64([(b"Xen", 6), (b"Xen", 18)]))
    assert not has_pvh_entry(elf64([(b"Xen", 6), (b"GNU", 18)]))
    assert not has_pvh_entry(elf64([]))
    assert not has_pvh_entry(b"MZ" + bytes(100))


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress], ids=["xz", "gzip"])
def test_vmlinux_extracted_from_a_bzimage(compress: Callable[[bytes], bytes]) -> None:
    vmlinux = elf64([(b"Xen", 18)]) + os.urandom(5000)
    # A false magic before the payload, the real one, then data after it (as in a bzImage).
    bzimage = b"MZ" + bytes(500) + b"\xfd7zXZ\x00\x1f\x8b\x08garbage" + compress(vmlinux) + os.urandom(300)
    assert extract_vmlinux(bzimage) == vmlinux
    assert extract_vmlinux(b"MZ" + os.urandom(2000).replace(b"\xfd7z", b"")) is None


def test_static_elf_detection() -> None:
    assert ir.is_static_elf(elf64([]))
    assert not ir.is_static_elf(elf64([], interp=True))
    assert not ir.is_static_elf(Path(sys.executable).resolve().read_bytes())  # CPython is dynamic


def fake_kernel(root: Path, deps: dict[str, list[str]], builtin: tuple[str, ...] = ()) -> Kernel:
    moddir = root / "lib" / "modules" / RELEASE
    for path in deps:
        (moddir / path).parent.mkdir(parents=True, exist_ok=True)
        (moddir / path).write_bytes(f"module {path}".encode())
    (moddir / "modules.dep").write_text("".join(f"{k}: {' '.join(v)}\n" for k, v in deps.items()))
    (moddir / "modules.builtin").write_text("".join(f"kernel/{b}.ko\n" for b in builtin))
    (root / "vmlinuz").write_bytes(b"MZ")
    return Kernel(f"linux-image-{RELEASE}", RELEASE, root)


DEPS = {
    "kernel/drivers/virtio/virtio_ring.ko": [],
    "kernel/drivers/virtio/virtio.ko": ["kernel/drivers/virtio/virtio_ring.ko"],
    "kernel/drivers/net/virtio_net.ko": ["kernel/net/core/failover.ko", "kernel/drivers/virtio/virtio.ko",
                                         "kernel/drivers/virtio/virtio_ring.ko"],
    "kernel/net/core/failover.ko": [],
    "kernel/drivers/vfio/pci/vfio-pci.ko": ["kernel/drivers/vfio/vfio.ko"],
    "kernel/drivers/vfio/vfio.ko": [],
    "kernel/a.ko": ["kernel/b.ko"],
    "kernel/b.ko": ["kernel/a.ko"],
}


def test_modules_in_dependency_order(tmp_path: Path) -> None:
    kernel = fake_kernel(tmp_path, DEPS, builtin=("virtio_anchor",))
    names = [m.name for m in ir.resolve_modules(kernel, ["virtio_net", "vfio-pci", "virtio_anchor", "virtio"])]
    assert names == ["failover", "virtio_ring", "virtio", "virtio_net", "vfio", "vfio_pci"]
    with pytest.raises(ir.InitramfsError, match="no module 'nosuch'"):
        ir.resolve_modules(kernel, ["nosuch"])
    with pytest.raises(ir.InitramfsError, match="loop: a -> b -> a"):
        ir.resolve_modules(kernel, ["a"])


def test_initramfs_archive_and_cache(tmp_path: Path) -> None:
    require_program("busybox", "apt-get install busybox-static")
    cpio = require_program("cpio", "apt-get install cpio")
    kernel = fake_kernel(tmp_path / "k", DEPS)
    cache = tmp_path / "cache"
    one = ir.build_initramfs(kernel, ["virtio_net"], files={"/etc/job.sh": b"exit 0\n"}, cache=cache)
    again = ir.build_initramfs(kernel, ["virtio_net"], files={"/etc/job.sh": b"exit 0\n"}, cache=cache)
    other = ir.build_initramfs(kernel, ["virtio_net"], files={"/etc/job.sh": b"exit 1\n"}, cache=cache)
    assert one == again and other != one, "the cache key is the content"
    listing = subprocess.run([cpio, "-itv", "--quiet"], input=one.read_bytes(), capture_output=True, check=True,
                             timeout=30).stdout.decode()
    entries = {line.split()[-1]: line for line in listing.splitlines()}
    for name in ("init", "bin/busybox", "lib/modules/virtio_net.ko", "lib/modules/failover.ko", "etc/job.sh",
                 "etc/modules", "dev/console", "proc", "job"):
        assert name in entries, f"{name} missing from the initramfs: {sorted(entries)}"
    assert entries["init"].startswith("-rwxr-xr-x") and entries["dev/console"].startswith("crw-------")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run([cpio, "-id", "--quiet", "etc/modules", "init"], input=one.read_bytes(), cwd=out, check=True,
                   timeout=30)
    assert (out / "etc/modules").read_text().split() == ["failover", "virtio_ring", "virtio", "virtio_net"]
    assert (out / "init").read_text() == ir.INIT
    with pytest.raises(ir.InitramfsError, match="absolute file path"):
        ir.build_initramfs(kernel, [], files={"etc/x": b""}, cache=cache)


def test_kernel_cache_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDPA_BENCH_CACHE", str(tmp_path))
    assert cache_root() == tmp_path / "guest"
    fake_kernel(tmp_path / "guest" / f"linux-image-{RELEASE}", DEPS)
    kernel = fetch_kernel(f"linux-image-{RELEASE}")  # cached: no apt-get
    assert kernel.root == tmp_path / "guest" / f"linux-image-{RELEASE}"
    assert kernel.image == kernel.vmlinuz, "no vmlinux with a PVH note: the bzImage boots"
    with pytest.raises(GuestKernelError, match="not a linux-image"):
        fetch_kernel("linux-headers-amd64")
