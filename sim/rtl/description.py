"""Design description files: one TOML file says everything the bench needs to run an RTL PCI function.

A vendor brings a design by writing ``design.toml`` next to its sources (format:
``docs/design-description.md``, schema: ``design-description.schema.json`` here) and running
``--target rtl:path/to/design.toml[,option=value...]``. This module reads it in two steps:

- :meth:`Description.load`: TOML syntax, the JSON schema, then what a schema cannot say (the files
  exist, slave windows fit their BAR and do not overlap, every virtio structure lies in a window the
  design decodes, the MSI-X table and PBA fit, the interrupt style matches who serves the table).
  Every problem is one :class:`DescriptionError` naming the file and the key.
- :meth:`Description.configure`: the target's options checked against the ``[options]`` table and
  bound, parameters rendered, widths and lengths evaluated (:mod:`sim.rtl.expressions`): a
  :class:`Variant` is one buildable configuration.

The ports are checked against the design itself later, once Verilator has read it
(:func:`sim.rtl.generate.check_ports`), still before any check runs.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from sim.rtl.expressions import ExpressionError, evaluate, render

SCHEMA_PATH = Path(__file__).resolve().parent / "design-description.schema.json"
#: Keys of an ``rtl:`` spec that belong to the bench, not to the design's options.
BENCH_KEYS = ("wire", "pcap", "sim", "waves", "define")
MAX_VQ_QUEUES = 65536


class DescriptionError(ValueError):
    """A description file that cannot describe a runnable design (the message names file and key)."""


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


def _where(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


@dataclass(frozen=True)
class Option:
    name: str
    default: int | str
    kind: str = "int"
    min: int | None = None
    max: int | None = None
    choices: tuple[int, ...] = ()
    power_of_two: bool = False
    help: str = ""

    def parse(self, where: str, text: str | int) -> int:
        """The option's integer value (a MAC is its 48-bit number), checked against its limits."""
        if self.kind == "mac":
            parts = str(text).split(":")
            try:
                octets = [int(p, 16) for p in parts]
            except ValueError:
                octets = []
            if len(parts) != 6 or len(octets) != 6 or not all(0 <= o <= 255 and len(p) == 2
                                                                for o, p in zip(octets, parts, strict=True)):
                raise DescriptionError(f"{where}: {self.name}={text!r} is not aa:bb:cc:dd:ee:ff")
            return int.from_bytes(bytes(octets), "big")
        try:
            value = int(text, 0) if isinstance(text, str) else int(text)
        except ValueError:
            raise DescriptionError(f"{where}: {self.name}={text!r} is not an integer") from None
        limits = []
        if self.min is not None:
            limits.append(f">= {self.min}")
        if self.max is not None:
            limits.append(f"<= {self.max}")
        if self.power_of_two:
            limits.append("a power of two")
        if self.choices and value not in self.choices:
            raise DescriptionError(f"{where}: {self.name}={value} (one of {', '.join(map(str, self.choices))})")
        if ((self.min is not None and value < self.min) or (self.max is not None and value > self.max)
                or (self.power_of_two and (value <= 0 or value & (value - 1)))):
            raise DescriptionError(f"{where}: {self.name}={value} must be {' and '.join(limits)}")
        return value


@dataclass(frozen=True)
class Slave:
    """A BAR window served by a slave port of the design (an AXI4-Lite or single-beat AXI4 target)."""

    name: str
    protocol: str
    prefix: str
    bar: int
    offset: int
    size: int
    id_width: int = 0


@dataclass(frozen=True)
class DmaPort:
    """An AXI4 master of the design onto guest memory (and, with ``msi-write``, the interrupt window)."""

    name: str
    prefix: str
    data_width: int
    addr_width: int
    id_width: int
    outstanding: int


@dataclass(frozen=True)
class VirtioCap:
    cfg_type: str
    bar: int
    offset: int
    length: int
    notify_off_multiplier: int = 0


@dataclass(frozen=True)
class IdleSignal:
    """``path == equals`` (an internal signal, made readable for the bridge) or ``port == equals``."""

    path: str | None
    module: str | None
    port: str | None
    equals: int | None
    equals_port: str | None


@dataclass(frozen=True)
class Variant:
    """One configuration of a described design: everything evaluated for the given options."""

    description: Description
    spec: str
    values: Mapping[str, int]
    parameters: Mapping[str, str]
    defines: tuple[str, ...]
    num_queues: int
    queue_pairs: int
    msix_vectors: int
    dma: tuple[DmaPort, ...]
    caps: tuple[VirtioCap, ...]

    @property
    def name(self) -> str:
        return self.description.name

    @property
    def mac(self) -> bytes:
        """The ``mac`` option as bytes (a design without one: the bench's default)."""
        return self.values.get("mac", 0x020000000001).to_bytes(6, "big")


@dataclass(frozen=True)
class Description:
    """A validated description file (paths resolved against its folder)."""

    path: Path
    raw: Mapping[str, Any]
    name: str
    device: str
    top: str
    sources: tuple[Path, ...]
    include_dirs: tuple[Path, ...]
    defines: tuple[str, ...]
    config_files: tuple[Path, ...]
    options: Mapping[str, Option]
    clock: str
    reset: str
    reset_active_low: bool
    reset_cycles: int
    bars: Mapping[int, tuple[int, bool]]
    slaves: tuple[Slave, ...]
    stream_rx: str | None
    stream_tx: str | None
    stream_dest: bool
    #: ``[stream] lanes``: "single" (one port each way, tdest optional) or "per-pair" (every signal packs
    #: one lane per queue pair: lane i of tdata at bits [i*W +: W], of tvalid at bit i; no tdest)
    stream_lanes: str
    interrupts: Mapping[str, str]
    msix_in_design: bool
    link: str | None
    bus_master_enable: str | None
    idle_port: str | None
    idle_signals: tuple[IdleSignal, ...]
    status: Mapping[str, str]
    errors: Mapping[str, str]
    error_codes: Mapping[int, tuple[str, str]] = field(default_factory=dict)

    # --- loading -------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> Description:
        path = Path(path).resolve()
        if not path.is_file():
            raise DescriptionError(f"{path}: no such design description file")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise DescriptionError(f"{path}: not valid TOML: {exc}") from None
        errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(raw),
                        key=lambda e: (list(map(str, e.absolute_path)), e.message))
        if errors:
            lines = [f"{_where(e.absolute_path)}: {_schema_message(e)}" for e in errors[:8]]
            more = f"\n  ... and {len(errors) - 8} more" if len(errors) > 8 else ""
            raise DescriptionError(f"{path}: does not follow the design description schema "
                                   f"({SCHEMA_PATH.name}):\n  " + "\n  ".join(lines) + more)
        return cls._from_raw(path, raw)

    @classmethod
    def _from_raw(cls, path: Path, raw: Mapping[str, Any]) -> Description:
        folder = path.parent
        d = raw["design"]

        def files(key: str, items: list[str], must_be: str = "file") -> tuple[Path, ...]:
            out = []
            for item in items:
                p = (folder / item).resolve()
                ok = p.is_file() if must_be == "file" else p.is_dir()
                if not ok:
                    raise DescriptionError(f"{path}: {key}: {item!r} is not a {must_be} ({p})")
                out.append(p)
            return tuple(out)

        options = {name: Option(name=name, **spec) for name, spec in raw.get("options", {}).items()}
        for opt in options.values():
            if opt.kind == "mac" and not isinstance(opt.default, str):
                raise DescriptionError(f"{path}: options.{opt.name}: a mac option's default is a string")
            try:
                opt.parse(f"{path}: options.{opt.name}.default", opt.default)
            except DescriptionError as exc:
                raise DescriptionError(f"{exc} (the option's own default)") from None
        bars = {b["index"]: (b["size"], bool(b.get("is64", False))) for b in raw["bar"]}
        if len(bars) != len(raw["bar"]):
            raise DescriptionError(f"{path}: bar: a BAR index appears twice")
        for index, (size, is64) in bars.items():
            if size & (size - 1):
                raise DescriptionError(f"{path}: bar {index}: size {size:#x} is not a power of two (PCI BARs are)")
            if is64 and index % 2:
                raise DescriptionError(f"{path}: bar {index}: a 64-bit BAR takes an even index and the next one")
        for a in bars:
            if bars[a][1] and a + 1 in bars:
                raise DescriptionError(f"{path}: bar {a + 1}: taken by 64-bit BAR {a}")
        slaves = tuple(Slave(name=s["name"], protocol=s["protocol"], prefix=s["prefix"], bar=s["bar"],
                             offset=s["offset"], size=s["size"], id_width=s.get("id_width", 0))
                       for s in raw["slave"])
        _check_windows(path, bars, slaves)
        msix = raw["msix"]
        in_design = bool(msix.get("in_design", False))
        style = raw["interrupts"]["style"]
        if in_design != (style == "msi-write"):
            raise DescriptionError(
                f"{path}: interrupts.style = {style!r} with msix.in_design = {str(in_design).lower()}: a design "
                "that holds its MSI-X table sends message writes (style 'msi-write'); one that requests vectors "
                "(style 'vector') leaves the table to the platform (in_design = false)")
        for key in ("table", "pba"):
            place = msix[key]
            if place["bar"] not in bars:
                raise DescriptionError(f"{path}: msix.{key}: BAR {place['bar']} is not declared")
            inside = _slave_at(slaves, place["bar"], place["offset"])
            if in_design and inside is None:
                raise DescriptionError(f"{path}: msix.{key}: in_design, but no slave decodes BAR {place['bar']} "
                                       f"offset {place['offset']:#x}")
            if not in_design and inside is not None:
                raise DescriptionError(f"{path}: msix.{key}: the platform serves it, but slave {inside.name!r} "
                                       f"decodes BAR {place['bar']} offset {place['offset']:#x}")
        idle = raw["idle"]
        signals = tuple(IdleSignal(s.get("path"), s.get("module"), s.get("port"), s.get("equals"),
                                   s.get("equals_port")) for s in idle.get("signals", ()))
        for i, s in enumerate(signals):
            if (s.equals is None) == (s.equals_port is None):
                raise DescriptionError(f"{path}: idle.signals[{i}]: give exactly one of equals, equals_port")
        errors = dict(raw.get("errors", {}))
        codes: dict[int, tuple[str, str]] = {}
        if "codes_from" in errors:
            (source,) = files("errors.codes_from", [errors.pop("codes_from")])
            codes = error_codes(source)
        stream = raw.get("stream")
        lanes = stream.get("lanes", "single") if stream else "single"
        if stream and lanes == "per-pair" and stream.get("dest", False):
            raise DescriptionError(f"{path}: stream: dest = true with lanes = 'per-pair': a per-pair port carries "
                                   "the queue pair in which lane a frame uses, so it has no tdest (leave dest out, "
                                   "or use lanes = 'single' with one tdest port)")
        desc = cls(
            path=path, raw=raw, name=d["name"], device=d.get("device", "virtio-net"), top=d["top"],
            sources=files("design.sources", d["sources"]),
            include_dirs=files("design.include_dirs", d.get("include_dirs", []), "folder"),
            defines=tuple(d.get("defines", ())), config_files=files("design.verilator_config",
                                                                      d.get("verilator_config", [])),
            options=options, clock=raw["clock"]["port"], reset=raw["reset"]["port"],
            reset_active_low=raw["reset"]["active"] == "low", reset_cycles=raw["reset"].get("cycles", 8),
            bars=bars, slaves=slaves,
            stream_rx=stream["rx"] if stream else None, stream_tx=stream["tx"] if stream else None,
            stream_dest=bool(stream.get("dest", False)) if stream else False, stream_lanes=lanes,
            interrupts=dict(raw["interrupts"]), msix_in_design=in_design,
            link=raw["link"]["port"] if "link" in raw else None,
            bus_master_enable=raw["pci"].get("bus_master_enable"),
            idle_port=idle.get("port"), idle_signals=signals, status=dict(raw.get("status", {})),
            errors=errors, error_codes=codes)
        desc.configure("")  # the defaults must make a variant: caught here, not at the first open
        return desc

    # --- configuring -----------------------------------------------------------------------------------

    def configure(self, spec: str, opts: Mapping[str, str] | None = None, defines: tuple[str, ...] = ()) -> Variant:
        """The variant for the target options ``opts`` (``spec`` names it in messages)."""
        where = f"rtl:{spec}" if spec else f"{self.path}"
        opts = dict(opts or {})
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            known = ", ".join([*self.options, *BENCH_KEYS]) or "none"
            raise DescriptionError(f"{where}: unknown option {unknown[0]!r} for design {self.name!r} (known: {known})")
        values = {name: opt.parse(where, opts.get(name, opt.default)) for name, opt in self.options.items()}
        raw = self.raw
        try:
            params = {k: render(v, values) for k, v in raw.get("parameters", {}).items()}
            pairs = values.get("queues", 1)
            names = {**values, "queue_pairs": pairs}
            # virtio-net: 2 per pair, + the control queue when the design offers more than one pair
            num_queues = evaluate(raw["design"].get("num_queues", "2 * queues + (queues > 1)"),
                                  {"queues": pairs, **names})
            names["num_queues"] = num_queues
            vectors = evaluate(raw["msix"]["vectors"], names)
            caps = list(raw["pci"]["capability"])
            dma = tuple(DmaPort(name=m["name"], prefix=m["prefix"], data_width=evaluate(m["data_width"], names),
                                addr_width=evaluate(m["addr_width"], names), id_width=m.get("id_width", 0),
                                outstanding=m.get("outstanding", 1)) for m in raw["dma"])
            vcaps = tuple(VirtioCap(c["type"], c["bar"], c["offset"], evaluate(c["length"], names),
                                    c.get("notify_off_multiplier", 0)) for c in caps)
        except ExpressionError as exc:
            raise DescriptionError(f"{self.path}: {exc}") from None
        for m in dma:
            if m.data_width not in (32, 64, 128, 256, 512):
                raise DescriptionError(f"{where}: dma {m.name!r}: data_width {m.data_width} (32, 64, 128, 256 or 512)")
            if not 12 <= m.addr_width <= 64:
                raise DescriptionError(f"{where}: dma {m.name!r}: addr_width {m.addr_width} (12..64)")
        if not 1 <= vectors <= 2048:
            raise DescriptionError(f"{where}: msix.vectors = {vectors} (1..2048)")
        msix = raw["msix"]
        table_end = msix["table"]["offset"] + 16 * vectors
        pba_end = msix["pba"]["offset"] + 8 * ((vectors + 63) // 64)
        for key, end in (("table", table_end), ("pba", pba_end)):
            bar = msix[key]["bar"]
            if end > self.bars[bar][0]:
                raise DescriptionError(f"{where}: msix.{key}: {vectors} vectors end at {end:#x}, past BAR {bar}'s "
                                       f"size {self.bars[bar][0]:#x}")
        if (msix["table"]["bar"] == msix["pba"]["bar"]
                and msix["table"]["offset"] < pba_end and msix["pba"]["offset"] < table_end):
            raise DescriptionError(f"{where}: msix: the table and the PBA overlap with {vectors} vectors")
        kinds = [c.cfg_type for c in vcaps]
        for need in ("common", "notify", "isr", "device"):
            if kinds.count(need) != 1:
                raise DescriptionError(f"{self.path}: pci.capability: exactly one {need!r} structure is needed "
                                       f"(found {kinds.count(need)})")
        for c in vcaps:
            if c.bar not in self.bars:
                raise DescriptionError(f"{self.path}: pci.capability {c.cfg_type!r}: BAR {c.bar} is not declared")
            s = _slave_at(self.slaves, c.bar, c.offset)
            if s is None or c.offset + c.length > s.offset + s.size:
                raise DescriptionError(f"{where}: pci.capability {c.cfg_type!r}: [{c.offset:#x}, +{c.length:#x}) of "
                                       f"BAR {c.bar} is not inside one slave window the design decodes")
            if c.cfg_type == "notify" and c.notify_off_multiplier % 2:
                raise DescriptionError(f"{self.path}: pci.capability 'notify': notify_off_multiplier must be even")
        return Variant(self, spec, values, params, (*self.defines, *defines), num_queues, pairs, vectors, dma,
                       vcaps)


def _schema_message(e: jsonschema.ValidationError) -> str:
    if e.validator == "additionalProperties":
        return f"{e.message} (see {SCHEMA_PATH.name} for the keys this table takes)"
    message: str = e.message
    if e.validator == "oneOf" and e.absolute_path and e.absolute_path[-1] == "idle":
        return "give either port = \"...\" (an output high when idle) or signals = [...]"
    return message


def _slave_at(slaves: tuple[Slave, ...], bar: int, offset: int) -> Slave | None:
    for s in slaves:
        if s.bar == bar and s.offset <= offset < s.offset + s.size:
            return s
    return None


def _check_windows(path: Path, bars: Mapping[int, tuple[int, bool]], slaves: tuple[Slave, ...]) -> None:
    names = [s.name for s in slaves]
    for s in slaves:
        if names.count(s.name) > 1:
            raise DescriptionError(f"{path}: slave {s.name!r}: the name appears twice")
        if s.bar not in bars:
            raise DescriptionError(f"{path}: slave {s.name!r}: BAR {s.bar} is not declared")
        if s.offset % 4 or s.size % 4:
            raise DescriptionError(f"{path}: slave {s.name!r}: offset and size must be multiples of 4")
        if s.offset + s.size > bars[s.bar][0]:
            raise DescriptionError(f"{path}: slave {s.name!r}: [{s.offset:#x}, +{s.size:#x}) runs past BAR {s.bar}'s "
                                   f"size {bars[s.bar][0]:#x}")
        for t in slaves:
            if t is not s and t.bar == s.bar and s.offset < t.offset + t.size and t.offset < s.offset + s.size:
                raise DescriptionError(f"{path}: slaves {s.name!r} and {t.name!r} overlap in BAR {s.bar}")


_ERROR_ITEM = re.compile(r"^\s*\w+\s*=\s*\d*'d(\d+),?\s*//\s*([A-Z]+-[A-Z0-9]+-[A-Z0-9]+): (.+)$", re.MULTILINE)


def error_codes(source: Path) -> dict[int, tuple[str, str]]:
    """Error codes a design reports, read from enum items written ``NAME = N'dK, // REQ-ID: what the driver did``."""
    return {int(code): (rid, text.rstrip()) for code, rid, text in _ERROR_ITEM.findall(source.read_text())}
