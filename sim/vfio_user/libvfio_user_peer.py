"""libvfio-user (nutanix/libvfio-user, C, BSD-3-Clause) built from source as an independent vfio-user peer.

Debian does not package it, so the project builds it itself: :func:`build_libvfio_user` unpacks the source
(``$VDPA_BENCH_LIBVFIO_USER_SRC``: a tarball or an unpacked folder; by default the newest
``libvfio-user-*.tar.gz`` in ``../shared/peers`` next to the checkout) and runs ``meson setup`` and ``ninja``
in a cache folder named by a hash of the source, ``build/peers/libvfio-user-<hash>/`` of the checkout (an
installed package: ``$VDPA_BENCH_CACHE/peers`` or ``~/.cache/vdpa-bench/peers``). Nothing of it is committed.

A file lock keeps two processes (pytest-xdist workers) from building at once, and a stamp written after a
complete build makes the next call return at once. The result names what a user of the library needs: the
sample servers (``gpio-pci-idio-16 SOCKET``: an interop peer for the project's vfio-user client) and, for a
C/C++ device process linked against the library, its include folder and shared library.

A missing source or build tool raises :class:`PeerUnavailable` with the line that installs it (a test skips
with it, or fails when ``CI=true``); a build that fails with everything present raises
:class:`LibvfioUserBuildError` with the log's tail.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "APT_PACKAGES",
    "SOURCE_ENV",
    "LibvfioUserBuild",
    "LibvfioUserBuildError",
    "PeerUnavailable",
    "build_libvfio_user",
    "build_root",
    "find_source",
]

LOG = logging.getLogger(__name__)

#: The libvfio-user source: a ``.tar.gz`` of it or an unpacked folder (holding ``meson.build``).
SOURCE_ENV = "VDPA_BENCH_LIBVFIO_USER_SRC"
CHECKOUT = Path(__file__).resolve().parents[2]
#: Where the source is looked for when :data:`SOURCE_ENV` is unset (the newest match is taken).
DEFAULT_SOURCE_DIR = CHECKOUT.parent / "shared" / "peers"
DEFAULT_SOURCE_GLOB = "libvfio-user-*.tar.gz"
UPSTREAM = "https://github.com/nutanix/libvfio-user"
#: The Debian packages the build needs (cmocka is checked at configure time even without its tests).
APT_PACKAGES = ("meson", "ninja-build", "pkg-config", "libjson-c-dev", "libcmocka-dev")
INSTALL_LINE = "apt-get install -y " + " ".join(APT_PACKAGES)
#: Bounds on the two build steps (about 3 s on 2 cores).
SETUP_TIMEOUT = 120.0
BUILD_TIMEOUT = 600.0
#: Changes whenever the way of building changes, so an older cached build is not reused.
RECIPE = "meson setup (project defaults) + ninja; v1"
SAMPLES = ("gpio-pci-idio-16", "server", "client", "null", "lspci")
STAMP = "vdpa-bench.stamp"


class PeerUnavailable(RuntimeError):
    """libvfio-user cannot be built here: ``reason`` says what is missing, ``install_hint`` how to get it."""

    def __init__(self, reason: str, install_hint: str) -> None:
        super().__init__(f"libvfio-user peer unavailable: {reason}; {install_hint}")
        self.reason = reason
        self.install_hint = install_hint


class LibvfioUserBuildError(RuntimeError):
    """Everything needed was present but unpacking, ``meson setup`` or ``ninja`` failed (or took too long)."""


@dataclass(frozen=True)
class LibvfioUserBuild:
    """A complete build: ``source`` (the unpacked tree), ``build`` (meson's build folder), ``library`` (the
    shared object, ``build/lib/libvfio-user.so``), ``include`` (``libvfio-user.h``, ``vfio-user.h``, ``pci_defs.h``)
    and ``samples`` (the sample programs). ``fresh``: built by this call (False: taken from the cache)."""

    source: Path
    build: Path
    library: Path
    include: Path
    samples: Path
    fresh: bool = False

    @property
    def library_dir(self) -> Path:
        """The folder to link from (``-L``) and to load from (``-Wl,-rpath`` or ``LD_LIBRARY_PATH``)."""
        return self.library.parent

    def sample(self, name: str) -> Path:
        """The sample program ``name`` (``gpio-pci-idio-16``, ``server``, ``client``...)."""
        path = self.samples / name
        if not path.is_file():
            raise FileNotFoundError(f"libvfio-user sample {name!r} not built (looked for {path})")
        return path


def build_root() -> Path:
    """``build/peers`` of the source checkout, else ``$VDPA_BENCH_CACHE/peers`` or ``~/.cache/vdpa-bench/peers``."""
    if (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT / "build" / "peers"
    cache = os.environ.get("VDPA_BENCH_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "vdpa-bench") / "peers"


def find_source() -> Path:
    """The tarball or folder to build from: :data:`SOURCE_ENV`, else the default location; else
    :class:`PeerUnavailable` saying where to get it."""
    hint = (f"set {SOURCE_ENV} to a libvfio-user source tarball or unpacked folder (from {UPSTREAM}; "
            f"commit 7e7a0a6 is the one tested)")
    env = os.environ.get(SOURCE_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            return path
        if path.is_dir() and (path / "meson.build").is_file():
            return path
        raise PeerUnavailable(f"{SOURCE_ENV}={env} is neither a .tar.gz nor a folder holding meson.build", hint)
    found = sorted(DEFAULT_SOURCE_DIR.glob(DEFAULT_SOURCE_GLOB))
    if not found:
        where = DEFAULT_SOURCE_DIR / DEFAULT_SOURCE_GLOB
        raise PeerUnavailable(f"no libvfio-user source ({SOURCE_ENV} unset, nothing matches {where})", hint)
    return found[-1]


#: Not part of an unpacked source folder: version control and caches anywhere, a build folder at its top.
_SKIP_ANYWHERE = frozenset({".git", "__pycache__"})
_SKIP_AT_TOP = frozenset({"build"})


def _skipped(folder: Path, parent: Path, names: list[str]) -> set[str]:
    return {n for n in names if n in _SKIP_ANYWHERE or (parent == folder and n in _SKIP_AT_TOP)}


def _source_files(folder: Path) -> list[Path]:
    """The files of an unpacked source folder, without version control and build output."""
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        skip = _skipped(folder, Path(root), dirs)
        dirs[:] = sorted(d for d in dirs if d not in skip)
        out += [Path(root) / f for f in sorted(files)]
    return out


def source_hash(source: Path) -> str:
    """SHA-256 of the tarball's bytes, or of an unpacked folder's relative paths and contents."""
    h = hashlib.sha256()
    if source.is_file():
        with source.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:
        for path in _source_files(source):
            h.update(str(path.relative_to(source)).encode() + b"\0")
            h.update(path.read_bytes() if not path.is_symlink() else os.readlink(path).encode())
    return h.hexdigest()


def _check_tools() -> None:
    """meson, ninja, pkg-config, a C compiler, and the json-c and cmocka development files."""
    missing = [tool for tool in ("meson", "ninja", "pkg-config", "cc") if shutil.which(tool) is None]
    if "pkg-config" not in missing:
        for module, package in (("json-c", "libjson-c-dev"), ("cmocka", "libcmocka-dev")):
            probe = subprocess.run(["pkg-config", "--exists", module], capture_output=True, timeout=30, check=False)
            if probe.returncode != 0:
                missing.append(f"{module} (package {package})")
    if missing:
        raise PeerUnavailable(f"building libvfio-user needs {', '.join(missing)}", f"install with: {INSTALL_LINE}")


def _run(argv: list[str], *, cwd: Path, log: Path, timeout: float, what: str) -> None:
    """``argv`` in a process group of its own, output appended to ``log``; the whole group is killed when it
    exceeds ``timeout``."""
    with log.open("a") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise LibvfioUserBuildError(f"{what} took over {timeout:.0f} s; log {log}") from None
    if code != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise LibvfioUserBuildError(f"{what} failed (exit {code}); log {log}:\n{tail}")


def _unpack(source: Path, tree: Path) -> None:
    """The source tree at ``tree``: the tarball's single top folder, or a copy of the folder."""
    if source.is_dir():
        shutil.copytree(source, tree, symlinks=True,
                        ignore=lambda parent, names: _skipped(source, Path(parent), names))
        return
    scratch = tree.with_name(tree.name + ".unpack")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        with tarfile.open(source) as tar:
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise LibvfioUserBuildError(f"cannot unpack {source}: {exc}") from None
    tops = list(scratch.iterdir())
    if len(tops) != 1 or not (tops[0] / "meson.build").is_file():
        raise LibvfioUserBuildError(f"{source}: expected one top folder holding meson.build, found "
                                    f"{sorted(p.name for p in tops)}")
    tops[0].rename(tree)
    scratch.rmdir()


def _result(source: Path, build: Path, *, fresh: bool) -> LibvfioUserBuild:
    return LibvfioUserBuild(source=source, build=build, library=build / "lib" / "libvfio-user.so",
                            include=source / "include", samples=build / "samples", fresh=fresh)


def _complete(result: LibvfioUserBuild) -> bool:
    return (result.library.exists() and (result.include / "libvfio-user.h").is_file()
            and all((result.samples / s).is_file() for s in SAMPLES))


def build_libvfio_user() -> LibvfioUserBuild:
    """The cached build of the libvfio-user source (:func:`find_source`), built now when the cache has none.

    :class:`PeerUnavailable` when the source or a build tool is missing, :class:`LibvfioUserBuildError` when
    the build itself fails."""
    source = find_source()
    key = source_hash(source)
    root = build_root()
    out = root / f"libvfio-user-{key[:16]}"
    stamp_text = f"{key}\n{RECIPE}\n"
    stamp = out / STAMP
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{out.name}.lock", "w") as lock:
        # one builder at a time: a second process waits here and then finds the stamp
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == stamp_text:
            cached = _result(out / "src", out / "build", fresh=False)
            if _complete(cached):
                return cached
        _check_tools()
        stamp.unlink(missing_ok=True)
        for stale in (out / "src", out / "src.unpack", out / "build"):
            shutil.rmtree(stale, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        log = out / "build.log"
        log.write_text(f"libvfio-user from {source} (sha256 {key})\n")
        LOG.info("building libvfio-user from %s (once; cached in %s)", source, out)
        tree, build = out / "src", out / "build"
        _unpack(source, tree)
        _run(["meson", "setup", str(build), str(tree)], cwd=out, log=log, timeout=SETUP_TIMEOUT,
             what="meson setup of libvfio-user")
        _run(["ninja", "-C", str(build)], cwd=out, log=log, timeout=BUILD_TIMEOUT, what="ninja build of libvfio-user")
        result = _result(tree, build, fresh=True)
        if not _complete(result):
            raise LibvfioUserBuildError(f"libvfio-user built without its library, header or samples; log {log}")
        stamp.write_text(stamp_text)
        return result
