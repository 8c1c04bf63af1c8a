"""Target registry: specs such as ``sim:virtio-net`` or ``vfio:0000:00:03.0`` resolve to a ``PciDevice``.

Schemes come from the ``vdpa_bench.targets`` entry point group (:mod:`backend.providers`): this
distribution registers ``vfio-user`` and ``vfio`` (the backend's own clients) and, for the bench,
``sim`` and ``rtl``; a vendor package registers its own the same way. The backend never imports
the simulator: a scheme's module is imported when a spec of that scheme is first opened, so an
install without the bench extra serves ``vfio-user:`` and ``vfio:`` targets.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from importlib.metadata import EntryPoint

from backend.pci.device import PciDevice
from backend.providers import TARGETS_GROUP, ProviderError, describe, group, load

Factory = Callable[[str], PciDevice]


class TargetSpecError(ValueError):
    """A spec that names no known scheme, or is not ``SCHEME:...`` at all."""


def parse_spec(scheme: str, spec: str, keys: Collection[str]) -> tuple[str, dict[str, str]]:
    """``DEVICE[,key=value...]`` (the part after ``SCHEME:``): the device and its options, each key one of
    ``keys``. The one grammar of every scheme's spec; a provider checks the values it gives meaning to."""
    device, *items = [p.strip() for p in spec.split(",")]
    opts: dict[str, str] = {}
    for item in items:
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{scheme}:{spec}: option {item!r} is not key=value")
        if key not in keys:
            raise ValueError(f"{scheme}:{spec}: unknown option {key!r} (known: {', '.join(keys)})")
        opts[key] = value
    return device, opts


def spec_int(scheme: str, spec: str, key: str, value: str) -> int:
    """An integer option (decimal, or 0x.. / 0o.. / 0b..)."""
    try:
        return int(value, 0)
    except ValueError:
        raise ValueError(f"{scheme}:{spec}: {key}={value!r} is not an integer") from None


class TargetRegistry(Mapping[str, Factory]):
    """Scheme name to a factory taking the rest of the spec; a mapping whose values load on first use.

    ``providers`` are entry points (not loaded yet); :meth:`register` adds a factory directly (an
    embedding program with a device of its own, a test).
    """

    def __init__(self, providers: Mapping[str, EntryPoint] | None = None) -> None:
        self._providers = dict(providers or {})
        self._loaded: dict[str, Factory] = {}

    def register(self, scheme: str, factory: Factory) -> None:
        self._loaded[scheme] = factory

    @property
    def schemes(self) -> list[str]:
        return sorted(self._providers.keys() | self._loaded.keys())

    def __getitem__(self, scheme: str) -> Factory:
        factory = self._loaded.get(scheme)
        if factory is not None:
            return factory
        ep = self._providers[scheme]  # KeyError: unknown scheme, as for any mapping
        loaded = load(ep)
        if not callable(loaded):
            raise ProviderError(f"{TARGETS_GROUP}: {describe(ep)} is not a factory (got {type(loaded).__name__})")
        self._loaded[scheme] = loaded
        return loaded

    def __iter__(self) -> Iterator[str]:
        return iter(self.schemes)

    def __len__(self) -> int:
        return len(self.schemes)

    def __contains__(self, scheme: object) -> bool:
        return scheme in self._loaded or scheme in self._providers

    def open(self, spec: str) -> PciDevice:
        """Open ``SCHEME:REST``: raises TargetSpecError for an unknown scheme, ProviderError for a broken
        provider, and whatever the factory raises for a bad or unreachable device (ValueError, OSError,
        PciError)."""
        scheme, sep, rest = spec.partition(":")
        if scheme not in self:
            known = ", ".join(f"{s}:" for s in self.schemes) or "none installed"
            what = "expected SCHEME:DEVICE[,key=value...]" if not sep else f"unknown target scheme {scheme!r}"
            raise TargetSpecError(f"{spec!r}: {what} (known schemes: {known})")
        return self[scheme](rest)


def default_registry() -> TargetRegistry:
    """Every scheme installed (entry point group ``vdpa_bench.targets``), none loaded yet."""
    return TargetRegistry(group(TARGETS_GROUP))
