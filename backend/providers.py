"""Extension points: what other distributions add to the backend, found through entry points.

Three groups, each an ``[project.entry-points."<group>"]`` table in a provider's ``pyproject.toml``:

``vdpa_bench.targets``
    target scheme -> factory ``Callable[[str], PciDevice]`` taking the spec after ``scheme:``
    (:mod:`backend.targets`).
``vdpa_bench.models``
    model name -> a device model class, the ``model=NAME`` of ``sim:virtio-net`` targets
    (``models.targets``; the bench's behavioral model registers ``virtio-net``).
``vdpa_bench.quirks``
    any name -> an iterable of ``(IdMatch, Quirk)`` pairs merged into the default quirk table
    (:func:`backend.drivers.quirks.default_quirks`).

Names are read from the installed metadata without importing anything; a provider's module is
imported when its entry is first used. A provider that cannot be loaded is a :class:`ProviderError`
naming the entry point, its distribution and the reason: never a silently missing scheme.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points

TARGETS_GROUP = "vdpa_bench.targets"
MODELS_GROUP = "vdpa_bench.models"
QUIRKS_GROUP = "vdpa_bench.quirks"


class ProviderError(Exception):
    """An installed provider is broken: it cannot be imported, loaded, or it clashes with another."""


def describe(ep: EntryPoint) -> str:
    """``entry point 'acme' (acme_vnet.targets:open_acme) of vdpa-bench-vendor-example 0.1.0``."""
    dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"
    return f"entry point {ep.name!r} ({ep.value}) of {dist}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def group(name: str) -> dict[str, EntryPoint]:
    """The entry points of group ``name`` by entry name; two distributions claiming one name is an error."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=name):
        other = found.get(ep.name)
        if other is not None and other.value != ep.value:
            raise ProviderError(f"{name}: {describe(ep)} and {describe(other)} both provide {ep.name!r}")
        found[ep.name] = ep
    return found


def load(ep: EntryPoint) -> object:
    """Import what ``ep`` names; any failure is a one-line :class:`ProviderError` naming it."""
    try:
        return ep.load()
    except Exception as exc:  # whatever the provider's import raises: report it, never swallow it
        raise ProviderError(f"{ep.group}: {describe(ep)} failed to load: {_one_line(exc)}") from exc


def load_all(name: str) -> Mapping[str, object]:
    """Every entry of group ``name``, loaded (the first broken one raises)."""
    return {entry: load(ep) for entry, ep in sorted(group(name).items())}
