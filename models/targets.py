"""``sim:`` targets: behavioral device models served in process through :class:`SimPciDevice`.

Spec: ``virtio-net[,key=value...]`` with keys

- ``queues=N``   queue pairs (default 1)
- ``mac=aa:bb:cc:dd:ee:ff``
- ``mtu=N``      (default 1500)
- ``queue_size_max=N`` (or ``qsize=N``)  maximum queue size, a power of two up to 32768 (default 32768: every
  size a vhost-user frontend may ask for, as DPDK's net_vhost accepts; a smaller maximum models a smaller device)
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
from collections.abc import Sequence
from typing import Any

from backend.pci.abilities import Abilities, ErrorRecord, PortControl, WireKind
from backend.providers import MODELS_GROUP, group, load
from backend.targets import parse_spec, spec_int
from backend.virtio.split_ring import MAX_QUEUE_SIZE
from models.virtio_net.device import VirtioNetDevice
from models.virtio_net.wire import LoopbackWire, NullPort, PcapTap, Wire
from sim.pci_device import SimPciDevice

KEYS = ("queues", "mac", "mtu", "qsize", "queue_size_max", "features", "notify_mult", "inorder_batch", "wire", "pcap",
        "model")
#: Integer keys and the model's constructor argument each sets.
INT_KEYS = {"queues": "pairs", "mtu": "mtu", "qsize": "max_queue_size", "queue_size_max": "max_queue_size",
            "features": "features", "notify_mult": "notify_off_multiplier", "inorder_batch": "in_order_batch"}


def wired_abilities(base: Abilities, where: str, wire: Wire | None, port: PortControl,
                    errors: Sequence[object]) -> Abilities:
    """``base`` with the bench port a simulated device offers: ``port`` (its link and wire), on a loopback
    ``wire`` or unplugged (None), and the driver ``errors`` it records; ``where`` starts the reason."""
    if wire is None:
        kind, why = WireKind.NONE, f"{where} unplugged (wire=none)"
    else:
        kind, why = WireKind.LOOPBACK, f"{where} on a loopback wire"
    return dataclasses.replace(base, wire=kind, wire_why=why, port=port, errors=ErrorRecord(errors))


class SimNetDevice(SimPciDevice):
    """A SimPciDevice that also exposes the model (``model``) and its wire (``wire``, None when unplugged)."""

    def __init__(self, model: VirtioNetDevice, wire: Wire | None, name: str) -> None:
        super().__init__(model.endpoint, name=name)
        self.model = model
        self.wire = wire

    def abilities(self) -> Abilities:
        return wired_abilities(super().abilities(), f"{self.name}: the model's port is", self.wire, self.model,
                               self.model.errors)

    def close(self) -> None:
        super().close()
        if self.wire is not None:
            self.wire.close()


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


def open_virtio_net(spec: str) -> SimNetDevice:
    kind, opts = parse_spec("sim", spec, KEYS)
    if kind != "virtio-net":
        raise ValueError(f"sim:{spec}: unknown device {kind!r} (known: virtio-net)")
    # In the spec's order, so of two spellings of one option (qsize, queue_size_max) the later wins,
    # as a variant appending qsize=N to a spec expects.
    kwargs: dict[str, Any] = {INT_KEYS[key]: spec_int("sim", spec, key, value) for key, value in opts.items()
                              if key in INT_KEYS}
    kwargs.setdefault("max_queue_size", MAX_QUEUE_SIZE)
    if "mac" in opts:
        kwargs["mac"] = opts["mac"]
    if "in_order_batch" in kwargs:
        kwargs["in_order_batch"] = bool(kwargs["in_order_batch"])
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
