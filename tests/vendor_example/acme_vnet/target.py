"""The ``acme:`` target scheme: ``acme:vnet[,key=value...]`` with the options of ``sim:`` targets."""

from __future__ import annotations

from models.targets import SimNetDevice, open_virtio_net

#: The model's name in the ``vdpa_bench.models`` group (this package's pyproject.toml).
MODEL = "acme-vnet"
DEVICES = ("vnet",)


def open_acme(spec: str) -> SimNetDevice:
    kind, _, options = spec.partition(",")
    if kind not in DEVICES:
        raise ValueError(f"acme:{spec}: unknown device {kind!r} (known: {', '.join(DEVICES)})")
    if any(item.strip().startswith("model=") for item in options.split(",")):
        raise ValueError(f"acme:{spec}: model= is fixed to {MODEL}")
    dev = open_virtio_net(",".join(["virtio-net", f"model={MODEL}", *([options] if options else [])]))
    dev.name = f"acme:{spec}"
    return dev
