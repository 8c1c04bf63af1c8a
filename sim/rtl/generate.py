"""The native bridge of a described design: its ports checked, its C++ and Verilator config generated.

Three steps, each cached under the build root (:func:`sim.rtl.build.build_root`):

1. :func:`read_ports`: ``verilator --cc`` of the variant (no C++ compile, seconds) gives the top's
   header, whose ``VL_IN*/VL_OUT*`` lines list every port with its direction and width after
   parameters: the design as Verilator elaborated it, not as the description believes it is.
2. :func:`check_ports`: every port a bus role of the description names must exist with the direction
   and width the role needs (a missing port, a width mismatch, an output where an input belongs) —
   all problems in one :class:`~sim.rtl.description.DescriptionError`, before anything is built.
3. :func:`bridge_design`: ``harness/bridge.cpp.j2`` rendered for the roles (port names, widths,
   reset polarity, interrupt style, idle test, status ports) and a ``.vlt`` that makes the idle
   test's internal signals readable; the result is a :class:`sim.rtl.build.Design` to build.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jinja2

from sim.rtl.build import (
    BUILD_TIMEOUT,
    Design,
    RtlBuildError,
    _env,
    _toolchain_id,
    build_root,
    locked,
    verilator_folder,
)
from sim.rtl.description import Description, DescriptionError, Variant

HARNESS_DIR = Path(__file__).resolve().parent / "harness"
TEMPLATE = "bridge.cpp.j2"
_PORT = re.compile(r"VL_(IN|OUT|INOUT)(8|16|64|W)?\(&(\w+),(\d+),(\d+)")
#: AXI sideband signals a bus model does not need: design outputs among them are ignored, inputs driven 0.
SIDEBAND = ("awprot", "arprot", "awcache", "arcache", "awlock", "arlock", "awqos", "arqos", "awregion",
            "arregion", "awuser", "aruser", "wuser", "buser", "ruser", "tuser", "tid", "tstrb")


@dataclass(frozen=True)
class Port:
    direction: str  # "in" or "out" (the design's view)
    width: int


_ERROR_FIELDS = {"err_count": "count", "last_err_code": "code", "last_err_queue": "queue"}


def status_ports(d: Description) -> dict[str, str]:
    """The design's status fields and their ports: the error report's (``err_count``, ``last_err_code``,
    ``last_err_queue``), then ``[status]``."""
    out = {name: d.errors[key] for name, key in _ERROR_FIELDS.items() if key in d.errors}
    out.update(d.status)
    return out


def status_fields(variant: Variant) -> tuple[str, ...]:
    """``vb_status``'s fields: the bridge's own, then :func:`status_ports`."""
    return ("cycles", "intx", "kicks", "rx_fifo_drops", "busy_ns", *status_ports(variant.description))


def _status_ports(variant: Variant) -> list[str]:
    return list(status_ports(variant.description).values())


# --- 1. the ports as Verilator elaborated them ------------------------------------------------------------

def parse_ports(header: str) -> dict[str, Port]:
    return {name: Port("in" if kind == "IN" else "out" if kind == "OUT" else "inout", int(msb) - int(lsb) + 1)
            for kind, _, name, msb, lsb in _PORT.findall(header)}


def _hash(*parts: object) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def read_ports(variant: Variant) -> dict[str, Port]:
    """The top's ports after elaboration with the variant's parameters (``verilator --cc``, cached)."""
    d = variant.description
    folder = verilator_folder()
    toolchain = _toolchain_id(folder)
    key = _hash(*d.sources, *d.config_files, d.top, dict(variant.parameters), list(variant.defines), toolchain)
    out = build_root() / f"ports-{d.name}-{key}"
    header = out / f"V{d.top}.h"
    with locked(out):
        if not header.is_file():
            out.mkdir(parents=True, exist_ok=True)
            cmd = [str(folder / "verilator"), "--cc", "-Wno-fatal", "--top-module", d.top, "--Mdir", str(out),
                   *[f"-G{k}={v}" for k, v in sorted(variant.parameters.items())],
                   *[f"+define+{x}" for x in variant.defines], *[f"+incdir+{p}" for p in d.include_dirs],
                   *map(str, d.config_files), *map(str, d.sources)]
            try:
                proc = subprocess.run(cmd, cwd=out, env=_env(folder), capture_output=True, text=True,
                                      timeout=BUILD_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                raise RtlBuildError(f"verilator --cc of {d.name} took over {BUILD_TIMEOUT:.0f} s") from None
            if proc.returncode != 0 or not header.is_file():
                errors = [ln for ln in proc.stderr.splitlines() if "%Error" in ln] or proc.stderr.splitlines()[-20:]
                header.unlink(missing_ok=True)
                raise DescriptionError(f"{d.path}: Verilator could not read the design (top {d.top!r}, "
                                       f"{len(d.sources)} sources):\n  " + "\n  ".join(errors[:12]))
    return parse_ports(header.read_text())


# --- 2. the roles against the ports -------------------------------------------------------------------------

def _roles(variant: Variant, ports: Mapping[str, Port]) -> Iterator[tuple[str, str, str, int | None]]:
    """(role, port, direction, width or None for "any") for every port the description names."""
    d = variant.description
    yield "clock", d.clock, "in", 1
    yield "reset", d.reset, "in", 1
    for s in d.slaves:
        role = f"slave {s.name!r} ({s.protocol})"
        p = s.prefix
        addr_bits = max(1, (s.size - 1).bit_length())
        for sig in ("awaddr", "araddr"):
            width = ports[p + sig].width if p + sig in ports else None
            if width is not None and width < addr_bits:
                yield role, p + sig, "in", addr_bits  # too narrow for the window: reported as a mismatch
            else:
                yield role, p + sig, "in", None
        for sig, direction, width in (("awvalid", "in", 1), ("awready", "out", 1), ("wdata", "in", 32),
                                      ("wstrb", "in", 4), ("wvalid", "in", 1), ("wready", "out", 1),
                                      ("bresp", "out", 2), ("bvalid", "out", 1), ("bready", "in", 1),
                                      ("arvalid", "in", 1), ("arready", "out", 1), ("rdata", "out", 32),
                                      ("rresp", "out", 2), ("rvalid", "out", 1), ("rready", "in", 1)):
            yield role, p + sig, direction, width
        if s.protocol == "axi4":
            for sig, direction, width in (("awlen", "in", 8), ("arlen", "in", 8), ("awsize", "in", 3),
                                          ("arsize", "in", 3), ("awburst", "in", 2), ("arburst", "in", 2),
                                          ("wlast", "in", 1), ("rlast", "out", 1)):
                yield role, p + sig, direction, width
            if s.id_width:
                for sig, direction in (("awid", "in"), ("arid", "in"), ("bid", "out"), ("rid", "out")):
                    yield role, p + sig, direction, s.id_width
    for m in variant.dma:
        role = f"dma {m.name!r}"
        p = m.prefix
        for sig, direction, width in (
                ("awaddr", "out", m.addr_width), ("awlen", "out", 8), ("awvalid", "out", 1), ("awready", "in", 1),
                ("wdata", "out", m.data_width), ("wstrb", "out", m.data_width // 8), ("wlast", "out", 1),
                ("wvalid", "out", 1), ("wready", "in", 1), ("bresp", "in", 2), ("bvalid", "in", 1),
                ("bready", "out", 1), ("araddr", "out", m.addr_width), ("arlen", "out", 8), ("arvalid", "out", 1),
                ("arready", "in", 1), ("rdata", "in", m.data_width), ("rresp", "in", 2), ("rlast", "in", 1),
                ("rvalid", "in", 1), ("rready", "out", 1)):
            yield role, p + sig, direction, width
        if m.id_width:
            for sig, direction in (("awid", "out"), ("arid", "out"), ("bid", "in"), ("rid", "in")):
                yield role, p + sig, direction, m.id_width
    if d.stream_rx is not None and d.stream_tx is not None:
        lanes = stream_lanes(variant)
        per = f" ({lanes} lanes, one per queue pair)" if d.stream_lanes == "per-pair" else ""
        for role, p, inward in ((f"stream rx{per}", d.stream_rx, "in"), (f"stream tx{per}", d.stream_tx, "out")):
            back = "out" if inward == "in" else "in"
            yield role, p + "tdata", inward, None  # lane widths: _stream_widths
            yield role, p + "tkeep", inward, None
            yield role, p + "tlast", inward, lanes
            yield role, p + "tvalid", inward, lanes
            yield role, p + "tready", back, lanes
            if d.stream_dest:
                yield role, p + "tdest", inward, None
    irq = d.interrupts
    if irq["style"] == "vector":
        yield "interrupts", irq["valid"], "out", 1
        yield "interrupts", irq["vector"], "out", None
        yield "interrupts", irq["ready"], "in", 1
    for key, direction in (("intx", "out"), ("msix_enabled", "in"), ("function_mask", "in")):
        if key in irq:
            yield "interrupts", irq[key], direction, 1
    if d.link is not None:
        yield "link", d.link, "in", 1
    if d.bus_master_enable is not None:
        yield "pci.bus_master_enable", d.bus_master_enable, "in", 1
    if d.idle_port is not None:
        yield "idle", d.idle_port, "out", 1
    for idle in d.idle_signals:
        for name in (idle.port, idle.equals_port):
            if name is not None:
                yield "idle", name, ports[name].direction if name in ports else "out", None
    for name, port in d.errors.items():
        yield f"errors.{name}", port, "out", None
    for name, port in d.status.items():
        yield f"status.{name}", port, "out", None


def stream_lanes(variant: Variant) -> int:
    """Lanes in each stream signal: one per queue pair the variant's options give (``lanes = "per-pair"``),
    else the one port."""
    return variant.queue_pairs if variant.description.stream_lanes == "per-pair" else 1


def _stream_widths(variant: Variant, ports: Mapping[str, Port]) -> list[str]:
    """tdata of each stream port: whole bytes, at most 512 bits a lane, the same for every lane, with one
    tkeep bit per data byte (per-pair: ``lanes * W`` and ``lanes * W / 8`` bits)."""
    d = variant.description
    lanes = stream_lanes(variant)
    per = f" ({lanes} lanes, one per queue pair)" if d.stream_lanes == "per-pair" else ""
    problems = []
    for role, prefix in (("stream rx", d.stream_rx), ("stream tx", d.stream_tx)):
        if prefix is None or prefix + "tdata" not in ports:
            continue
        bits = ports[prefix + "tdata"].width
        lane = bits // lanes
        if bits % lanes or lane % 8 or not 8 <= lane <= 512:
            need = f"{lanes} x W bits with W" if lanes > 1 else "W bits,"
            problems.append(f"{role}{per}: {prefix}tdata is {bits} bits: the description needs {need} a multiple "
                            "of 8, at most 512")
        elif prefix + "tkeep" in ports and ports[prefix + "tkeep"].width != bits // 8:
            problems.append(f"{role}{per}: {prefix}tkeep is {ports[prefix + 'tkeep'].width} bits for {bits // 8} "
                            "data bytes")
    return problems


def check_ports(variant: Variant, ports: Mapping[str, Port]) -> list[str]:
    """Inputs of the design no role names (the bridge drives them 0); raises with every mismatch."""
    d = variant.description
    problems: list[str] = []
    claimed: set[str] = set()
    for role, name, direction, width in _roles(variant, ports):
        claimed.add(name)
        port = ports.get(name)
        if port is None:
            near = [p for p in ports if p.lower().endswith(name.lower().rsplit("_", 1)[-1])][:4]
            hint = f" (ports ending alike: {', '.join(near)})" if near else ""
            problems.append(f"{role}: port {name!r} is missing from {d.top}{hint}")
        elif port.direction != direction:
            problems.append(f"{role}: port {name!r} is an {port.direction}put of {d.top}, the role needs an "
                            f"{direction}put")
        elif width is not None and port.width != width:
            problems.append(f"{role}: port {name!r} is {port.width} bits wide, the description says {width}")
        elif (width is None and port.width > 64 and not name.endswith("tdata")
              and not (name.endswith("tkeep") and role.startswith("stream"))):
            problems.append(f"{role}: port {name!r} is {port.width} bits wide (at most 64)")
    problems += _stream_widths(variant, ports)
    if problems:
        raise DescriptionError(f"{d.path}: the description does not match the design {d.top!r} "
                               f"(as Verilator elaborated it with {variant.spec or 'the default options'}):\n  "
                               + "\n  ".join(problems))
    unclaimed = sorted(n for n, p in ports.items() if p.direction == "in" and n not in claimed)
    return unclaimed


# --- 3. the generated bridge ---------------------------------------------------------------------------------

def _idle_expr(variant: Variant, ports: Mapping[str, Port]) -> str:
    d = variant.description
    if d.idle_port is not None:
        return f"bool(top->{d.idle_port})"
    terms = []
    for s in d.idle_signals:
        lhs = f"r->{d.top}__DOT__{s.path.replace('.', '__DOT__')}" if s.path is not None else f"top->{s.port}"
        rhs = f"top->{s.equals_port}" if s.equals_port is not None else f"{s.equals}u"
        terms.append(f"{lhs} == {rhs}")
    return "\n      && ".join(terms)


def render_bridge(variant: Variant, ports: Mapping[str, Port], zero_inputs: list[str]) -> str:
    d = variant.description
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HARNESS_DIR), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    irq = d.interrupts
    stream = None
    if d.stream_rx is not None and d.stream_tx is not None:
        lanes = stream_lanes(variant)
        stream = {"rx": d.stream_rx, "tx": d.stream_tx, "dest": d.stream_dest, "lanes": lanes,
                  "per_pair": d.stream_lanes == "per-pair",
                  "rx_bytes": ports[d.stream_rx + "tdata"].width // 8 // lanes,
                  "tx_bytes": ports[d.stream_tx + "tdata"].width // 8 // lanes}
    return env.get_template(TEMPLATE).render(
        description=d.path.name, top=d.top, clock=d.clock, reset=d.reset,
        reset_asserted=0 if d.reset_active_low else 1, link=d.link, bme=d.bus_master_enable,
        slaves=[{"name": s.name, "prefix": s.prefix, "protocol": s.protocol, "id_width": s.id_width}
                for s in d.slaves],
        dmas=[{"name": m.name, "prefix": m.prefix, "bytes": m.data_width // 8, "id_width": m.id_width,
               "outstanding": m.outstanding} for m in variant.dma],
        stream=stream,
        irq={"style": irq["style"], "valid": irq.get("valid"), "vector": irq.get("vector"), "ready": irq.get("ready"),
             "intx": irq.get("intx"), "msix_enabled": irq.get("msix_enabled"),
             "function_mask": irq.get("function_mask")},
        errors={"count": d.errors.get("count")}, status_ports=_status_ports(variant),
        idle_expr=_idle_expr(variant, ports), zero_inputs=zero_inputs)


def render_vlt(variant: Variant) -> str:
    """Read access to the idle test's internal signals (public_flat_rd keeps the rest of the model fast)."""
    lines = ["`verilator_config", f"// generated by sim/rtl/generate.py from {variant.description.path.name}"]
    for s in variant.description.idle_signals:
        if s.path is not None and s.module is not None:
            lines.append(f'public_flat_rd -module "{s.module}" -var "{s.path.rsplit(".", 1)[1]}"')
    return "\n".join(lines) + "\n"


def bridge_design(variant: Variant) -> Design:
    """The variant as a :class:`Design` for :func:`sim.rtl.build.build`: ports checked, bridge generated."""
    d = variant.description
    ports = read_ports(variant)
    zero_inputs = check_ports(variant, ports)
    cpp = render_bridge(variant, ports, zero_inputs)
    vlt = render_vlt(variant)
    out = build_root() / f"gen-{d.name}-{_hash(cpp, vlt)}"
    with locked(out):
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("bridge.cpp", cpp), ("idle.vlt", vlt)):
            target = out / name
            if not target.is_file() or target.read_text() != text:
                target.write_text(text)
    return Design(d.name, d.top, d.sources, out, (out / "idle.vlt", *d.config_files), variant.parameters,
                  variant.defines, harness_sources=(out / "bridge.cpp",), include_dirs=d.include_dirs)
