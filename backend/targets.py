"""Target registry: names such as ``sim:virtio-net`` or ``vfio:0000:00:03.0`` resolve to a ``PciDevice``.

The backend never imports the simulator; ``sim``/``models`` register their
factories here when they are imported (see :func:`load_default_targets`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.pci.device import PciDevice

Factory = Callable[[str], PciDevice]


@dataclass
class TargetRegistry:
    """Scheme name (``sim``, ``rtl``, ``vfio-user``, ``vfio``) to a factory taking the rest of the spec."""

    factories: dict[str, Factory] = field(default_factory=dict)

    def register(self, scheme: str, factory: Factory) -> None:
        self.factories[scheme] = factory

    def open(self, spec: str) -> PciDevice:
        scheme, _, rest = spec.partition(":")
        try:
            factory = self.factories[scheme]
        except KeyError:
            known = ", ".join(sorted(self.factories)) or "none"
            raise ValueError(f"unknown target {spec!r} (known schemes: {known})") from None
        return factory(rest)


#: Modules that register targets when given a registry (``register(registry)``): the simulated
#: models, and the backend's own clients of devices in other processes (``vfio-user:PATH``) and of
#: functions bound to Linux vfio-pci (``vfio:BDF``), and the RTL function under Verilator (``rtl:``).
PROVIDERS = ("models.targets", "backend.pci.vfio_user", "backend.pci.vfio", "models.rtl.targets")


def default_registry() -> TargetRegistry:
    """A registry filled by every provider importable here."""
    registry = TargetRegistry()
    for name in PROVIDERS:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        module.register(registry)
    return registry
