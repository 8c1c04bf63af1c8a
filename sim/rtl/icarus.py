"""An RTL design on Icarus Verilog: built with ``iverilog``, run under cocotb in a device process of its
own (:mod:`sim.rtl.icarus_child`), reached over vfio-user.

Icarus runs the design ~15x slower than the Verilator path and has no native bridge, so cocotb's
bus models (cocotbext-axi) stand in for it; they live in the simulator's process, and the
project's vfio-user server and client carry BAR accesses, DMA mappings (fds: guest memory is
mapped by the device process, never copied), interrupts and doorbells between the two.

:func:`build_icarus` caches the compiled design under ``build/rtl/icarus-<hash>/``;
:class:`IcarusDevice` starts ``vvp`` with cocotb as a :class:`~sim.child_process.ChildProcess`, waits
(bounded) for its readiness line, is the vfio-user client of it, and stops it on close (also when
starting failed): the control pipe closes, then the process group is killed if it does not exit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from backend.pci.vfio_user import VfioUserPciDevice
from sim.child_process import ChildError, ChildProcess

REPO = Path(__file__).resolve().parents[2]
BUILD_ROOT = REPO / "build" / "rtl"
CHILD_MODULE = "sim.rtl.icarus_child"
TIMESCALE = "1ns/1ps"
#: Bounds: compiling, the device process announcing its socket, and its exit after the control fd closed.
BUILD_TIMEOUT = 120.0
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
#: Icarus runs the design at about 50 k cycles/s, some twenty times slower than Verilator's full stack: the
#: target declares it (Abilities.time_scale), so the checks' deadlines stretch instead of failing on speed.
ICARUS_SLOWDOWN = 20.0
INSTALL_HINT = "apt-get install iverilog"
#: The device process's environment: socket path, target spec, device factory (``module:function``),
#: the fd it writes its readiness line to, and the fd whose end of file tells it to stop.
ENV_SOCKET = "VDPA_ICARUS_SOCKET"
ENV_SPEC = "VDPA_ICARUS_SPEC"
ENV_DESCRIPTION = "VDPA_ICARUS_DESCRIPTION"
ENV_FACTORY = "VDPA_ICARUS_FACTORY"
ENV_READY_FD = "VDPA_ICARUS_READY_FD"
ENV_CONTROL_FD = "VDPA_ICARUS_CONTROL_FD"
#: What the device process writes to ``ENV_READY_FD`` once its socket listens.
READY_LINE = r"(?m)^listening on "


class IcarusError(RuntimeError):
    """Icarus Verilog is missing, the design did not compile, or the device process did not come up."""


def icarus_missing() -> str | None:
    """Why the Icarus path cannot run here (with the install line), or None."""
    for tool in ("iverilog", "vvp"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed ({INSTALL_HINT})"
    if any(importlib.util.find_spec(m) is None for m in ("cocotb_tools", "cocotbext.axi", "find_libpython")):
        return "cocotb / cocotbext-axi are not installed (pip install -e '.[rtl]')"
    return None


def build_icarus(top: str, sources: Sequence[Path], parameters: Mapping[str, str]) -> Path:
    """``iverilog -g2012`` of ``sources`` with ``parameters`` on ``top``; the ``sim.vvp`` path (cached)."""
    reason = icarus_missing()
    if reason is not None:
        raise IcarusError(reason)
    h = hashlib.sha256()
    for src in sources:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    h.update(json.dumps({"top": top, "params": dict(sorted(parameters.items())), "ts": TIMESCALE}).encode())
    out = BUILD_ROOT / f"icarus-{h.hexdigest()[:16]}"
    vvp = out / "sim.vvp"
    if vvp.is_file():
        return vvp
    out.mkdir(parents=True, exist_ok=True)
    cmds = out / "cmds.f"
    cmds.write_text(f"+timescale+{TIMESCALE}\n")
    tmp = out / f"sim.vvp.{os.getpid()}"
    cmd = ["iverilog", "-g2012", "-o", str(tmp), "-s", top, "-f", str(cmds),
           *(f"-P{top}.{k}={v}" for k, v in parameters.items()), *map(str, sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        errors = [line for line in proc.stderr.splitlines() if "sorry" not in line][:5]
        raise IcarusError(f"iverilog failed: {' / '.join(errors) or proc.stderr.strip()}")
    tmp.replace(vvp)  # atomic: a concurrent builder of the same design finds a whole file
    return vvp


def _cocotb_env(top: str) -> dict[str, str]:
    """What cocotb's runner puts in the environment of ``vvp`` (cocotb_tools.runner, Icarus)."""
    import cocotb_tools.config
    import find_libpython

    libpython = find_libpython.find_libpython()
    if libpython is None:
        raise IcarusError("libpython not found (cocotb embeds Python in vvp)")
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '')}{os.pathsep}{cocotb_tools.config.libs_dir}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *sys.path])
    env["PYGPI_PYTHON_BIN"] = sys.executable
    env["GPI_USERS"] = f"{libpython};{cocotb_tools.config.pygpi_entry_point()}"
    env["COCOTB_TOPLEVEL"] = top
    env["TOPLEVEL_LANG"] = "verilog"
    env["COCOTB_TEST_MODULES"] = CHILD_MODULE
    return env


class IcarusDevice(VfioUserPciDevice):
    """The vfio-user client of a design served by its own ``vvp`` process, which it started and stops."""

    def __init__(self, vvp: Path, top: str, spec: str, factory: str, *, name: str, description: Path) -> None:
        import cocotb_tools.config

        self._dir = Path(tempfile.mkdtemp(prefix="vdpa-bench-icarus-"))
        self.log_path = self._dir / "device.log"
        sock = str(self._dir / "dev.sock")
        control_r, self._control_w = os.pipe2(os.O_CLOEXEC)
        env = _cocotb_env(top)
        env.update({ENV_SOCKET: sock, ENV_SPEC: spec, ENV_FACTORY: factory, ENV_CONTROL_FD: str(control_r),
                    ENV_DESCRIPTION: str(description),
                    "COCOTB_RESULTS_FILE": str(self._dir / "results.xml")})
        argv = ["vvp", "-m", str(cocotb_tools.config.lib_entry("vpi", "icarus")), str(vvp), "-none"]
        self.proc: ChildProcess | None = None
        try:
            # The readiness line goes to an fd of the child's own (cocotb owns its stdout), one that
            # writes into the captured output.
            self.proc = ChildProcess(argv, log=self.log_path, name="vvp", env=env, cwd=self._dir,
                                     pass_fds=(control_r,), output_fd_env=ENV_READY_FD,
                                     ready=READY_LINE, ready_timeout=READY_TIMEOUT)
            super().__init__(sock, name=name, time_scale=ICARUS_SLOWDOWN)
        except ChildError as exc:
            self._stop_process()
            raise IcarusError(f"the Icarus device process did not come up: {exc}") from None
        except BaseException:
            self._stop_process()
            raise
        finally:
            os.close(control_r)

    def log_tail(self, lines: int = 30) -> str:
        return self.proc.tail(lines) if self.proc is not None else ""

    def _stop_process(self) -> None:
        """Close the control pipe (the child's signal to stop), wait for the exit, else kill by PID."""
        if self._control_w >= 0:
            os.close(self._control_w)
            self._control_w = -1
        if self.proc is not None:
            self.proc.stop(STOP_TIMEOUT, signum=None)
        shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        super().close()
        if self._control_w >= 0 or (self.proc is not None and self.proc.returncode is None):
            self._stop_process()
