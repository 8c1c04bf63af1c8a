"""The campaign file (TOML) and the cells it expands to.

A campaign names its targets (``[[target]]``: a ``sim:``, ``rtl:`` or ``vfio-user:`` spec with option
sets, sim feature sets, and for ``vfio-user:`` the model a device process serves per cell), hypothesis
profiles (``[profiles.NAME]``: settings such as ``max_examples``) and seeds; every target is crossed
with its option sets, profiles and seeds. Each :class:`Cell` carries everything that decides its
result, so it is reproducible alone (``vdpa-bench campaign FILE --cell ID``) and two cells with the
same :attr:`Cell.key` are the same experiment (the history calls differing verdicts of such cells flaky).
Every error names the file, the table and the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.targets import parse_spec

#: Schemes a campaign can run; ``vfio:`` needs a real card bound to vfio-pci, one per cell, so it is left out.
SCHEMES = ("sim", "rtl", "vfio-user")
CAMPAIGN_KEYS = {"name", "checks", "pytest_args", "timeout", "retries", "seeds", "profiles", "history", "out"}
TARGET_KEYS = {"name", "spec", "options", "features", "seeds", "profiles", "checks", "device", "timeout"}
TOP_KEYS = {"campaign", "profiles", "target", "cluster"}
CLUSTER_KINDS = ("slurm", "lsf", "sge", "pbs")
DEFAULT_TIMEOUT = 600.0
DEFAULT_PROFILE = "default"


class CampaignError(ValueError):
    """The campaign file is wrong; the message names the file, the place and what is expected."""


@dataclass(frozen=True)
class Cell:
    """One run of the suite: target, hypothesis profile and seed, the checks selected."""

    id: str
    target: str
    seed: int
    profile: str
    settings: Mapping[str, Any]
    checks: str | None = None
    pytest_args: tuple[str, ...] = ()
    #: ``vfio-user:`` cells: the model spec a device process serves for this cell alone.
    device: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    retries: int = 0

    @property
    def scheme(self) -> str:
        return self.target.partition(":")[0]

    @property
    def key(self) -> str:
        """Hash of what decides the verdicts (not the timeout or retries): equal keys, the same experiment."""
        ident = {"target": self.target, "seed": self.seed, "settings": dict(sorted(self.settings.items())),
                 "checks": self.checks, "pytest_args": list(self.pytest_args), "device": self.device}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def slug(self) -> str:
        """A file-system name for the cell's directory."""
        cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in self.id)
        return f"{cleaned.strip('-')[:80]}-{self.key[:8]}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "target": self.target, "seed": self.seed, "profile": self.profile,
                "settings": dict(self.settings), "checks": self.checks, "pytest_args": list(self.pytest_args),
                "device": self.device, "timeout": self.timeout, "retries": self.retries, "key": self.key}


@dataclass(frozen=True)
class Campaign:
    name: str
    path: Path
    cells: tuple[Cell, ...]
    out: Path
    history: Path
    #: ``[cluster]``: LocalCluster options at the top, one table per dask-jobqueue kind.
    cluster: Mapping[str, Any] = field(default_factory=dict)

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise CampaignError(f"{self.path}: no cell {cell_id!r} (cells: {', '.join(c.id for c in self.cells)})")


def _where(path: Path, place: str) -> str:
    return f"{path}: {place}"


def _unknown(path: Path, place: str, table: Mapping[str, Any], known: set[str]) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise CampaignError(f"{_where(path, place)}: unknown key(s) {', '.join(map(repr, extra))} "
                            f"(known: {', '.join(sorted(known))})")


def _int_list(path: Path, place: str, value: object) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in value):
        raise CampaignError(f"{_where(path, place)}: expected a non-empty list of integers, got {value!r}")
    return list(value)


def _str_list(path: Path, place: str, value: object) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise CampaignError(f"{_where(path, place)}: expected a non-empty list of strings, got {value!r}")
    return list(value)


def _positive(path: Path, place: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise CampaignError(f"{_where(path, place)}: expected a positive number of seconds, got {value!r}")
    return float(value)


def _profiles(path: Path, table: object) -> dict[str, dict[str, Any]]:
    """``[profiles.NAME]`` tables of hypothesis settings, each checked by hypothesis itself."""
    from hypothesis import settings
    from hypothesis.errors import InvalidArgument

    if not isinstance(table, dict):
        raise CampaignError(f"{_where(path, '[profiles]')}: expected tables [profiles.NAME]")
    out: dict[str, dict[str, Any]] = {DEFAULT_PROFILE: {}}
    for name, opts in table.items():
        if not isinstance(opts, dict):
            raise CampaignError(f"{_where(path, f'[profiles.{name}]')}: expected a table of hypothesis settings")
        try:
            settings(**opts)
        except (InvalidArgument, TypeError) as exc:
            raise CampaignError(f"{_where(path, f'[profiles.{name}]')}: {exc}") from None
        out[str(name)] = dict(opts)
    return out


def _check_spec(path: Path, place: str, spec: str, device: str | None) -> None:
    """The spec's grammar and keys, checked without opening anything (an RTL build or a socket)."""
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in SCHEMES:
        raise CampaignError(f"{_where(path, place)}: spec {spec!r}: expected SCHEME:DEVICE[,key=value...] "
                            f"with SCHEME one of {', '.join(s + ':' for s in SCHEMES)}")
    try:
        if scheme == "sim":
            from models.targets import KEYS

            parse_spec("sim", rest or "virtio-net", KEYS)
        elif scheme == "rtl":
            from models.rtl.targets import RtlOptions

            RtlOptions(rest)
        else:
            from models.targets import KEYS

            if device is None:
                raise CampaignError(f"{_where(path, place)}: a vfio-user: target needs device = \"MODEL\" "
                                    "(the model a device process serves per cell, e.g. \"virtio-net\")")
            if rest and not rest.startswith(","):
                raise CampaignError(f"{_where(path, place)}: spec {spec!r}: the socket is made per cell; write "
                                    "vfio-user: with options only (vfio-user:,wire=loopback)")
            parse_spec("vfio-user", "socket" + rest, ("wire",))
            parse_spec("sim", device, KEYS)
    except ValueError as exc:
        if isinstance(exc, CampaignError):
            raise
        raise CampaignError(f"{_where(path, place)}: {exc}") from None
    if scheme != "vfio-user" and device is not None:
        raise CampaignError(f"{_where(path, place)}: device = ... is for vfio-user: targets only")


def _option_sets(path: Path, place: str, target: Mapping[str, Any]) -> list[dict[str, str]]:
    options = target.get("options", [{}])
    if not isinstance(options, list) or not options or not all(isinstance(o, dict) for o in options):
        raise CampaignError(f"{_where(path, place)}: options: expected a non-empty list of tables, got {options!r}")
    sets = [{str(k): str(v) for k, v in o.items()} for o in options]
    if "features" in target:
        if not str(target.get("spec", "")).startswith("sim:"):
            raise CampaignError(f"{_where(path, place)}: features = [...] is for sim: targets only")
        feats = target["features"]
        if not isinstance(feats, list) or not feats or not all(isinstance(f, int | str) for f in feats):
            raise CampaignError(f"{_where(path, place)}: features: expected a non-empty list of feature masks")
        sets = [{**o, "features": f if isinstance(f, str) else hex(f)} for o in sets for f in feats]
    return sets


def _with_options(spec: str, opts: Mapping[str, str]) -> str:
    extra = ",".join(f"{k}={v}" for k, v in opts.items())
    if not extra:
        return spec
    return f"{spec},{extra}"


def load_campaign(path: Path, out: Path | None = None, history: Path | None = None) -> Campaign:
    """Read and check ``path``; ``out`` and ``history`` override the file's ``[campaign]`` values."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CampaignError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(f"{path}: not valid TOML: {exc}") from None
    _unknown(path, "top level", data, TOP_KEYS)
    head = data.get("campaign", {})
    if not isinstance(head, dict):
        raise CampaignError(f"{_where(path, '[campaign]')}: expected a table")
    _unknown(path, "[campaign]", head, CAMPAIGN_KEYS)
    name = str(head.get("name", path.stem))
    profiles = _profiles(path, data.get("profiles", {}))
    seeds = _int_list(path, "[campaign] seeds", head.get("seeds", [0]))
    default_profiles = _str_list(path, "[campaign] profiles", head.get("profiles", [DEFAULT_PROFILE]))
    timeout = _positive(path, "[campaign] timeout", head.get("timeout", DEFAULT_TIMEOUT))
    retries = head.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise CampaignError(f"{_where(path, '[campaign] retries')}: expected an integer >= 0, got {retries!r}")
    checks = head.get("checks")
    if checks is not None and not isinstance(checks, str):
        raise CampaignError(f"{_where(path, '[campaign] checks')}: expected a pytest -k expression (a string)")
    pytest_args = tuple(_str_list(path, "[campaign] pytest_args", head["pytest_args"])) if head.get(
        "pytest_args") else ()
    targets = data.get("target")
    if not isinstance(targets, list) or not targets:
        raise CampaignError(f"{path}: no [[target]] tables (each: spec = \"sim:virtio-net\" and its options)")
    cells: list[Cell] = []
    for n, target in enumerate(targets, 1):
        place = f"[[target]] #{n}"
        if not isinstance(target, dict) or "spec" not in target:
            raise CampaignError(f"{_where(path, place)}: needs spec = \"SCHEME:DEVICE[,key=value...]\"")
        _unknown(path, place, target, TARGET_KEYS)
        spec = str(target["spec"]).strip()
        if spec in ("sim", "rtl"):
            spec = f"{spec}:virtio-net"
        device = target.get("device")
        label = str(target.get("name", spec.rstrip(":")))
        place = f"[[target]] {label!r}"
        t_seeds = _int_list(path, f"{place} seeds", target["seeds"]) if "seeds" in target else seeds
        t_profiles = _str_list(path, f"{place} profiles", target["profiles"]) if "profiles" in target \
            else default_profiles
        for p in t_profiles:
            if p not in profiles:
                raise CampaignError(f"{_where(path, place)}: profile {p!r} is not defined "
                                    f"(known: {', '.join(profiles)}; define it as [profiles.{p}])")
        t_checks = target.get("checks", checks)
        t_timeout = _positive(path, f"{place} timeout", target["timeout"]) if "timeout" in target else timeout
        for opts in _option_sets(path, place, target):
            full = _with_options(spec, opts)
            _check_spec(path, place, full, None if device is None else str(device))
            opt_label = ",".join(f"{k}={v}" for k, v in opts.items()) or "base"
            for prof in t_profiles:
                for seed in t_seeds:
                    cells.append(Cell(id=f"{label}/{opt_label}/{prof}/s{seed}", target=full, seed=seed, profile=prof,
                                      settings=profiles[prof], checks=t_checks, pytest_args=pytest_args,
                                      device=None if device is None else str(device), timeout=t_timeout,
                                      retries=retries))
    ids = [c.id for c in cells]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CampaignError(f"{path}: cells with the same id {dupes[:3]}: give the targets different names")
    cluster = data.get("cluster", {})
    if not isinstance(cluster, dict):
        raise CampaignError(f"{_where(path, '[cluster]')}: expected a table")
    root = Path(os.environ.get("VDPA_BENCH_CAMPAIGNS", "reports/campaigns"))
    return Campaign(
        name=name, path=path, cells=tuple(cells), cluster=cluster,
        out=Path(out) if out is not None else Path(str(head.get("out", root / name))),
        history=Path(history) if history is not None else Path(str(head.get("history", root / "history.sqlite"))),
    )


def select(cells: Sequence[Cell], wanted: Sequence[str]) -> list[Cell]:
    """The cells named in ``wanted`` (ids), in campaign order; an unknown id is an error."""
    known = {c.id for c in cells}
    missing = [w for w in wanted if w not in known]
    if missing:
        raise CampaignError(f"no cell {missing[0]!r} in the campaign (cells: {', '.join(sorted(known))})")
    return [c for c in cells if c.id in wanted]
