"""A described RTL design exported over vfio-user natively: libvfio-user (C) in front, the Verilated design and its
generated bridge behind, no Python in the device process.

``harness/vfu_device.cpp`` is design-agnostic: everything about the function comes from a *layout* file
(:func:`layout_for`) rendered from the design description with the same code the in-process target builds its
PCI side with (:func:`sim.rtl.endpoint.config_space`, :class:`sim.pci.endpoint.Msix`,
:func:`sim.rtl.endpoint.slave_windows`): the configuration space image and its per-byte write mask, the BARs,
the slave windows, MSI-X (the platform's table or the design's), the PCI configuration access window, the
bridge's status fields, the driver-error codes and the wire. :func:`build_vfu_device` compiles it once per
variant, beside the variant's ``libvbridge.so`` (which it links), against libvfio-user built by
:mod:`sim.vfio_user.libvfio_user_peer`. :class:`NativeExport` starts it (``vfu-device SOCKET LAYOUT``) and
stops it by PID; its bench side channel is ``SOCKET.bench``, so the target spec to use is
``vfio-user:SOCKET,bench=SOCKET.bench``.

Run one by hand::

    python -m sim.rtl.vfu_export --target rtl:virtio-net --socket /tmp/x.sock

which prints the ``vfio-user:`` spec and serves until it is killed (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from backend.pci.vfio_user import VfioUserPciDevice
from backend.virtio.pci_regs import (
    PCI_CAP_ID_VNDR,
    PCI_CFG_CAP_LEN,
    PCI_CFG_DATA,
    PCI_CONFIG_SPACE_SIZE,
    CapType,
    PciCfg,
)
from sim.child_process import ChildError, ChildProcess
from sim.pci.endpoint import Bar, Msix
from sim.rtl.bridge import FAULT_TEXT
from sim.rtl.build import Built, RtlBuildError, ToolchainMissing, build, locked
from sim.rtl.description import DescriptionError
from sim.rtl.endpoint import config_space, slave_windows
from sim.rtl.generate import bridge_design, status_fields
from sim.vfio_user.libvfio_user_peer import build_libvfio_user

if TYPE_CHECKING:  # the options live with the target (models sit above sim); only their type is needed here
    from models.rtl.targets import RtlOptions

__all__ = ["SOURCE", "NativeExport", "build_vfu_device", "layout_for", "main", "spec_for"]

SOURCE = Path(__file__).resolve().parent / "harness" / "vfu_device.cpp"
#: Changes whenever the way of compiling changes, so an older cached binary is not reused.
RECIPE = "g++ -std=c++17 -O2 -pthread; v1"
CXXFLAGS = ("-std=c++17", "-O2", "-Wall", "-Wextra", "-pthread")
COMPILE_TIMEOUT = 300.0
#: Bound on the device process's start (the design's reset and first accesses: milliseconds).
READY_TIMEOUT = 30.0
READY = r"listening on "


def spec_for(socket_path: str) -> str:
    """The ``vfio-user:`` target spec of an export listening on ``socket_path``."""
    return f"vfio-user:{socket_path},bench={socket_path}.bench"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def layout_for(opts: RtlOptions) -> str:
    """The layout file of ``opts``'s function, as ``vfu-device`` reads it (one ``key values...`` a line)."""
    variant = opts.variant
    d = variant.description
    if opts.waves is not None or opts.pcap is not None or opts.sim != "verilator":
        raise ValueError(f"{opts.name}: the native export is a Verilator build without waves= or pcap= (nothing in "
                         "its process writes them)")
    bars = {i: Bar(i, size, is64=is64) for i, (size, is64) in sorted(d.bars.items())}
    config = config_space(variant, bars)
    table, pba = d.raw["msix"]["table"], d.raw["msix"]["pba"]
    msix = Msix(variant.msix_vectors, bar=table["bar"], table_offset=table["offset"], pba_offset=pba["offset"])
    config.add_capability(msix.cap)  # last, as PciEndpoint adds it
    image = config.read(0, PCI_CONFIG_SPACE_SIZE)
    wmask = bytearray(PCI_CONFIG_SPACE_SIZE)
    for o in (PciCfg.COMMAND, PciCfg.COMMAND + 1, PciCfg.INTERRUPT_LINE):
        wmask[o] = 0xFF
    window = None
    for cap in config.caps:
        if cap.writable is not None:
            wmask[cap.offset + 2:cap.offset + 2 + len(cap.writable)] = cap.writable
        if cap.cap_id == PCI_CAP_ID_VNDR and cap.body[1] == CapType.PCI_CFG and cap.length == PCI_CFG_CAP_LEN:
            window = cap.offset
    lines = [f"# {opts.name}: written by sim/rtl/vfu_export.py for sim/rtl/harness/vfu_device.cpp",
             f"name {opts.name}", f"config {image.hex()}", f"wmask {wmask.hex()}"]
    lines += [f"bar {b.index} {b.size} {int(b.is64)} {int(b.prefetchable)}" for b in bars.values()]
    lines += [f"window {w.slave} {w.bar} {w.offset} {w.size} {w.base} {int(w.msix_table)}"
              for w in slave_windows(variant)]
    lines.append(f"msix {variant.msix_vectors} {table['bar']} {table['offset']} {pba['bar']} {pba['offset']} "
                 f"{msix.cap.offset} {int(d.msix_in_design)}")
    if window is not None:
        lines.append(f"pcicfg {window} {PCI_CFG_DATA}")
    lines.append(f"reset_cycles {d.reset_cycles}")
    lines.append("status " + " ".join(status_fields(variant)))
    lines += [f"wire {opts.wire}", f"pairs {opts.pairs}", f"mac {opts.mac.hex()}"]
    lines += [f"fault {int(reason)} {_one_line(text)}" for reason, text in FAULT_TEXT.items()]
    lines += [f"error {code} {rid} {_one_line(text)}" for code, (rid, text) in sorted(d.error_codes.items())]
    common = next((c for c in variant.caps if c.cfg_type == "common"), None)
    if common is not None:
        lines.append(f"alive {common.bar} {common.offset}")
    return "\n".join(lines) + "\n"


def _bridge(opts: RtlOptions) -> Built:
    """The variant's cached Verilator build (what ``models.rtl.targets.build_variant`` gives)."""
    try:
        design = bridge_design(opts.variant)
    except DescriptionError as exc:
        raise ValueError(str(exc)) from None
    return build(design)


def build_vfu_device(opts: RtlOptions) -> Path:
    """``vfu-device`` for ``opts``'s variant, compiled once and cached beside the variant's ``libvbridge.so`` (which it
    links, found through its run path) under a hash of the source, libvfio-user's build and the compiler.

    :class:`~sim.vfio_user.libvfio_user_peer.PeerUnavailable` when libvfio-user cannot be built here,
    :class:`~sim.rtl.build.ToolchainMissing` without g++, :class:`~sim.rtl.build.RtlBuildError` when the compile
    fails (with the compiler's output)."""
    built = _bridge(opts)
    peer = build_libvfio_user()
    if shutil.which("g++") is None:
        raise ToolchainMissing("g++", "apt-get install g++")
    cxx = subprocess.run(["g++", "--version"], capture_output=True, text=True, timeout=30, check=False)
    h = hashlib.sha256()
    h.update(SOURCE.read_bytes())
    h.update((peer.include / "libvfio-user.h").read_bytes())
    for part in (RECIPE, *CXXFLAGS, str(peer.library.resolve()), cxx.stdout.splitlines()[0] if cxx.stdout else ""):
        h.update(part.encode() + b"\0")
    out = built.directory / f"vfu-device-{h.hexdigest()[:16]}"
    with locked(out):
        if out.is_file():
            return out
        tmp = out.with_name(f".{out.name}.tmp")
        argv = ["g++", *CXXFLAGS, "-o", str(tmp), str(SOURCE), f"-I{peer.include}",
                f"-L{peer.library_dir}", "-lvfio-user", f"-Wl,-rpath,{peer.library_dir}",
                f"-L{built.directory}", "-lvbridge", f"-Wl,-rpath,{built.directory}"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMPILE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise RtlBuildError(f"compiling {SOURCE.name} took over {COMPILE_TIMEOUT:.0f} s") from None
        if proc.returncode != 0 or not tmp.is_file():
            tmp.unlink(missing_ok=True)
            raise RtlBuildError(f"compiling {SOURCE.name} failed (exit {proc.returncode}):\n$ {' '.join(argv)}\n"
                                f"{(proc.stdout + proc.stderr)[-4000:]}")
        tmp.replace(out)
    return out


class NativeExport:
    """``vfu-device`` serving ``opts``'s function on ``socket_path`` (and its bench side channel on
    ``socket_path.bench``) to one vfio-user client after the other; output in ``log``.

    The constructor returns once the process says it listens (bounded by ``ready_timeout``); a process that
    does not come up is stopped and :class:`~sim.child_process.ChildError` raised with its output. :meth:`close`
    stops it by PID (SIGTERM, then SIGKILL) and returns its exit status."""

    def __init__(self, opts: RtlOptions, socket_path: str, *, log: Path, ready_timeout: float = READY_TIMEOUT,
                 once: bool = False, verbose: bool = False) -> None:
        self.opts = opts
        self.socket_path = socket_path
        self.binary = build_vfu_device(opts)
        self.layout = log.with_name(f"{log.stem}.layout")
        self.layout.write_text(layout_for(opts))
        argv = [str(self.binary), socket_path, str(self.layout)]
        argv += ["--once"] if once else []
        argv += ["--verbose"] if verbose else []
        self.proc = ChildProcess(argv, log=log, name="vfu-device", ready=READY, ready_timeout=ready_timeout)

    @property
    def spec(self) -> str:
        """The target spec a client opens it with."""
        return spec_for(self.socket_path)

    @property
    def bench_path(self) -> str:
        return f"{self.socket_path}.bench"

    def client(self, name: str | None = None) -> VfioUserPciDevice:
        """A vfio-user client connected to it, its bench side channel included (the device serves one at a time:
        close it before the next)."""
        return VfioUserPciDevice(self.socket_path, name=name or f"native {self.opts.name}",
                                 bench_path=self.bench_path)

    def close(self) -> int:
        """Stop the process (idempotent); its exit status (0: it stopped as asked)."""
        return self.proc.stop()

    def __enter__(self) -> NativeExport:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.rtl.vfu_export",
                                     description="Serve a described RTL design over vfio-user with libvfio-user.")
    parser.add_argument("--target", default="rtl:virtio-net", help="an rtl: spec (default rtl:virtio-net)")
    parser.add_argument("--socket", required=True, help="the vfio-user socket (its bench side channel: SOCKET.bench)")
    parser.add_argument("--log", type=Path, help="the device process's output (default: SOCKET.log)")
    parser.add_argument("--once", action="store_true", help="exit when the first client hangs up")
    parser.add_argument("--verbose", action="store_true", help="log every libvfio-user message")
    args = parser.parse_args(argv)
    from models.rtl.targets import RtlOptions  # the target's options (models sit above sim)

    spec = str(args.target)
    if not spec.startswith("rtl"):
        parser.error(f"--target {spec}: an rtl: target")
    rest = spec.split(":", 1)[1] if ":" in spec else ""
    log = args.log or Path(f"{args.socket}.log")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        export = NativeExport(RtlOptions(rest), args.socket, log=log, once=args.once, verbose=args.verbose)
    except (ValueError, RtlBuildError, ChildError, RuntimeError) as exc:
        print(f"vfu_export: {exc}", file=sys.stderr)
        return 1
    print(export.spec, flush=True)
    print(f"device process {export.proc.pid}, log {log}", file=sys.stderr, flush=True)
    with export:
        while export.proc.returncode is None:
            if signal.sigtimedwait({signal.SIGINT, signal.SIGTERM}, 1.0) is not None:
                return export.close()
        code = export.close()
    if code != 0:
        print(f"vfu_export: the device process exited {code}:\n{export.proc.tail()}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
