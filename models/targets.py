"""``sim:`` targets: behavioral device models served in process through :class:`SimPciDevice`.

Spec: ``virtio-net[,key=value...]`` with keys

- ``queues=N``   queue pairs (default 1)
- ``mac=aa:bb:cc:dd:ee:ff``
- ``mtu=N``      (default 1500)
- ``qsize=N``    maximum queue size, a power of two up to 32768 (default 256)
- ``features=0x..``  the feature offer, replacing the default
- ``notify_mult=N``  notify_off_multiplier (default 4)
- ``inorder_batch=0|1``  return IN_ORDER TX batches as one used element (default 1)
- ``wire=loopback|none``  (default loopback)
- ``pcap=PATH``  capture the wire into a pcap file
- ``model=NAME``  an installed model variant (entry point group ``vdpa_bench.models``, e.g. a vendor's),
  or ``package.module:Class``, a VirtioNetDevice subclass no distribution registers (test variants)
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from backend.pci.abilities import Abilities, ErrorRecord, WireKind
from backend.providers import MODELS_GROUP, group, load
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.wire import LoopbackWire, NullPort, PcapTap, Wire
from sim.pci_device import SimPciDevice

KEYS = ("queues", "mac", "mtu", "qsize", "features", "notify_mult", "inorder_batch", "wire", "pcap", "model")


class SimNetDevice(SimPciDevice):
    """A SimPciDevice that also exposes the model (``model``) and its wire (``wire``, None when unplugged)."""

    def __init__(self, model: VirtioNetDevice, wire: Wire | None, name: str) -> None:
        super().__init__(model.endpoint, name=name)
        self.model = model
        self.wire = wire

    def abilities(self) -> Abilities:
        if self.wire is None:
            wire, why = WireKind.NONE, f"{self.name}: the model's port is unplugged (wire=none)"
        else:
            wire, why = WireKind.LOOPBACK, f"{self.name}: the model's port is on a loopback wire"
        return dataclasses.replace(super().abilities(), wire=wire, wire_why=why, port=self.model,
                                   errors=ErrorRecord(self.model.errors))

    def close(self) -> None:
        super().close()
        if self.wire is not None:
            self.wire.close()


def _int(key: str, value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise ValueError(f"sim:virtio-net: {key}={value!r} is not an integer") from None


def load_model_class(name: str) -> type[VirtioNetDevice]:
    """``model=NAME``: a model of the ``vdpa_bench.models`` entry point group (an installed variant), or
    ``package.module:Class`` for a class that no distribution registers (the seeded-bug variants of the tests)."""
    module_name, sep, attr = name.partition(":")
    if not sep:
        models = group(MODELS_GROUP)
        if name not in models:
            known = ", ".join(sorted(models)) or "none installed"
            raise ValueError(f"sim:virtio-net: unknown model {name!r} (installed: {known}; or package.module:Class)")
        cls = load(models[name])  # ProviderError names the broken entry point
    elif not module_name or not attr:
        raise ValueError(f"sim:virtio-net: model={name!r} must be NAME or package.module:Class")
    else:
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"sim:virtio-net: cannot load model {name!r}: {exc}") from None
    if not isinstance(cls, type) or not issubclass(cls, VirtioNetDevice):
        raise ValueError(f"sim:virtio-net: model {name!r} is not a VirtioNetDevice subclass")
    return cls


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    kind, *items = [p.strip() for p in spec.split(",")]
    opts: dict[str, str] = {}
    for item in items:
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"sim:{spec}: option {item!r} is not key=value")
        if key not in KEYS:
            raise ValueError(f"sim:{spec}: unknown option {key!r} (known: {', '.join(KEYS)})")
        opts[key] = value
    return kind, opts


def open_virtio_net(spec: str) -> SimNetDevice:
    kind, opts = parse_spec(spec)
    if kind != "virtio-net":
        raise ValueError(f"sim:{spec}: unknown device {kind!r} (known: virtio-net)")
    kwargs: dict[str, Any] = {}
    if "queues" in opts:
        kwargs["pairs"] = _int("queues", opts["queues"])
    if "mac" in opts:
        kwargs["mac"] = opts["mac"]
    if "mtu" in opts:
        kwargs["mtu"] = _int("mtu", opts["mtu"])
    if "qsize" in opts:
        kwargs["max_queue_size"] = _int("qsize", opts["qsize"])
    if "features" in opts:
        kwargs["features"] = _int("features", opts["features"])
    if "notify_mult" in opts:
        kwargs["notify_off_multiplier"] = _int("notify_mult", opts["notify_mult"])
    if "inorder_batch" in opts:
        kwargs["in_order_batch"] = bool(_int("inorder_batch", opts["inorder_batch"]))
    cls = load_model_class(opts["model"]) if "model" in opts else VirtioNetDevice
    model = cls(**kwargs)
    wire_kind = opts.get("wire", "loopback")
    wire: Wire | None
    if wire_kind == "loopback":
        wire = loopback_wire(model)
    elif wire_kind == "none":
        if "pcap" in opts:
            raise ValueError(f"sim:{spec}: pcap needs a wire (wire=loopback)")
        model.attach(NullPort())
        wire = None
    else:
        raise ValueError(f"sim:{spec}: wire={wire_kind!r} (known: loopback, none)")
    if "pcap" in opts and wire is not None:
        wire.add_tap(PcapTap(opts["pcap"]))
    return SimNetDevice(model, wire, name=f"sim:{spec}")


def loopback_wire(model: VirtioNetDevice) -> LoopbackWire:
    """Plug ``model`` into a wire that brings every frame it sends back to its own receive queue."""
    loop = LoopbackWire(model)
    model.attach(loop.port)
    return loop


def loopback_device(model: VirtioNetDevice, name: str) -> SimNetDevice:
    """An already built model (any constructor arguments) on a loopback wire, as a ``PciDevice``."""
    return SimNetDevice(model, loopback_wire(model), name=name)
