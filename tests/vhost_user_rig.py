"""Shared by the vhost-user tests: a device factory for ``VhostUserServer`` that keeps what it made."""

from __future__ import annotations

import threading

from backend.device import VdpaDevice
from backend.drivers.vdpa import VirtioPciVdpaDevice
from backend.targets import default_registry
from models.targets import SimNetDevice
from models.virtio_net.device import VirtioNetDevice


class Devices:
    """Opens ``spec`` per session behind the generic vendor driver (thread safe: sessions call it)."""

    def __init__(self, spec: str = "sim:virtio-net,wire=loopback") -> None:
        self.spec = spec
        self.registry = default_registry()
        self.made: list[VirtioPciVdpaDevice] = []
        self._lock = threading.Lock()

    def __call__(self) -> VdpaDevice:
        dev = VirtioPciVdpaDevice(self.registry.open(self.spec))
        with self._lock:
            self.made.append(dev)
        return dev

    def model(self, i: int = 0) -> VirtioNetDevice:
        """The behavioral model behind the ``i``-th device handed out."""
        pci = self.made[i].pci
        assert isinstance(pci, SimNetDevice)
        return pci.model
