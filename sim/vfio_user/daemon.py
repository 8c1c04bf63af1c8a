"""The vfio-user device daemon: a simulated device in this process, served on a unix socket.

``vdpa-bench device --model SPEC --vfio-user PATH``: other processes (the backend's ``serve``, the
suite) open it as the target ``vfio-user:PATH``. ``SPEC`` is the options of a ``sim:`` target
(``virtio-net[,key=value...]``, a leading ``sim:`` accepted; ``model=NAME`` picks an installed model
variant) or any target spec whose device is simulated in this process (``rtl:virtio-net``, a vendor's
scheme). Its life (signals, log lines, ready line, exit status 2 on a setup error) is the backend's
(:mod:`backend.lifecycle`).
"""

from __future__ import annotations

import argparse
import logging

from backend.lifecycle import SetupError, listen_until_signal, run_until_signal
from backend.pci.device import PciError
from backend.providers import ProviderError
from backend.targets import TargetRegistry, TargetSpecError, default_registry
from sim.pci_device import EndpointPciAccess
from sim.vfio_user.server import DeviceFactory, ExportedDevice, VfioUserServer

#: Logger of the ``device`` command (sessions log under ``sim.vfio_user``).
LOG = logging.getLogger("vdpa_bench.device")
#: Schemes whose spec is given without its prefix (``virtio-net,queues=2`` means ``sim:virtio-net,...``).
DEFAULT_SCHEME = "sim"


class DeviceError(SetupError):
    """A ``device`` setup problem, reported as one line (bad ``--model``, socket in use...)."""


def model_spec(spec: str, registry: TargetRegistry) -> str:
    """``--model SPEC`` as a target spec: a spec of an installed scheme as is, anything else as ``sim:`` options."""
    scheme, sep, _ = spec.partition(":")
    return spec if sep and scheme in registry else f"{DEFAULT_SCHEME}:{spec}"


def model_factory(spec: str, registry: TargetRegistry | None = None) -> DeviceFactory:
    """A factory of devices to export for ``--model spec``; the spec is tried once now, so that a bad one
    fails at start rather than at the first client."""
    try:
        registry = registry if registry is not None else default_registry()
    except ProviderError as exc:
        raise DeviceError(str(exc)) from None
    target = model_spec(spec, registry)

    def open_model() -> ExportedDevice:
        dev = registry.open(target)
        if not isinstance(dev, EndpointPciAccess):  # a client of a device elsewhere has nothing to export
            dev.close()
            raise DeviceError(f"--model {spec!r}: {dev.name} is not simulated in this process")
        return dev

    try:
        open_model().close()
    except TargetSpecError as exc:
        raise DeviceError(f"--model {exc}") from None
    except (ValueError, OSError, PciError, ProviderError) as exc:
        raise DeviceError(f"--model {spec!r}: {exc}") from None
    return open_model


def serve_device(args: argparse.Namespace, stop_fd: int) -> int:
    """The ``device`` command's body (options of :func:`add_device_arguments`) until ``stop_fd`` is written."""
    factory = model_factory(args.model)
    path: str = args.vfio_user
    try:
        server = VfioUserServer(path, factory, max_devices=args.max_devices)  # a dead server's socket is removed
    except OSError as exc:
        raise DeviceError(f"--vfio-user {path}: {exc.strerror or exc}") from None
    return listen_until_signal(LOG, path, f"{args.model} over vfio-user (up to {args.max_devices} devices at once)",
                               server.close, args.close_timeout, stop_fd)


def run_device(args: argparse.Namespace, prog: str = "vdpa-bench device") -> int:
    """Serve until SIGINT/SIGTERM (exit 0); setup errors exit 2 with one line on stderr."""
    return run_until_signal(prog, lambda stop_fd: serve_device(args, stop_fd), verbose=args.verbose)
