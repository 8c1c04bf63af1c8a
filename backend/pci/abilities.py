"""What a target offers the bench beyond :class:`~backend.pci.device.PciDevice`, declared by the target.

The conformance checks need more than register access and DMA to judge some requirement ids: a wire
that brings transmitted frames back, a way to pull the cable, the driver errors the device recorded,
every DMA access as it happens, the IOMMU faults. Each target says which of these it has through
``PciDevice.abilities()``; nothing is found by looking at a target's attributes. An ability a target
lacks is a :class:`Lacking` with the reason, which a check turns into *not applicable* for the ids
that need it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeAlias, TypeVar

from backend.pci.device import DmaFault, DmaPerm

T = TypeVar("T")

#: ``observer(access, iova, size)``: one device DMA access, called before a write lands.
AccessObserver: TypeAlias = Callable[[DmaPerm, int, int], None]


@dataclass(frozen=True)
class Lacking:
    """An ability the target does not have, and why (the evidence of a *not applicable*)."""

    why: str


#: An ability of type ``T`` or the reason it is missing.
Ability: TypeAlias = T | Lacking


class WireKind(StrEnum):
    """What the device's network port is connected to."""

    LOOPBACK = "loopback"  # every frame the device transmits comes back to its receive side
    NONE = "none"  # nothing: transmitted frames are gone
    UNKNOWN = "unknown"  # a real port: the bench has to find out (send frames, see whether they return)


class PortControl(Protocol):
    """The device's network port as the bench drives it from outside the bus."""

    @property
    def link_up(self) -> bool: ...

    @property
    def mac(self) -> bytes: ...

    def set_link(self, up: bool) -> None:
        """Plug (True) or pull (False) the cable; the device reports a configuration change."""
        ...

    def receive(self, frame: bytes) -> None:
        """A frame arriving from the wire."""
        ...


class DeviceErrors(Protocol):
    """What the device recorded about the driver (each one set DEVICE_NEEDS_RESET), oldest first."""

    def driver_errors(self) -> list[str]: ...


class CrashLog(Protocol):
    """Failures of the device's own thread (a simulator crashing is never a conformant answer)."""

    def crashes(self) -> list[str]: ...


class DmaObserver(Protocol):
    """Every device DMA access, in the order the device makes them, reported before a write lands."""

    def add_observer(self, observer: AccessObserver) -> None: ...

    def remove_observer(self, observer: AccessObserver) -> None: ...


class FaultList(Protocol):
    """The DMA accesses the IOMMU refused (``PciDevice.dma_faults``)."""

    def dma_faults(self) -> list[DmaFault]: ...


class ObserverList:
    """A :class:`DmaObserver` over a plain list of observers the device's IOMMU calls."""

    def __init__(self, observers: list[AccessObserver]) -> None:
        self._observers = observers

    def add_observer(self, observer: AccessObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: AccessObserver) -> None:
        self._observers.remove(observer)


@dataclass(frozen=True)
class Abilities:
    """What one target offers the checks; the defaults are "nothing", each with its reason."""

    wire: WireKind = WireKind.UNKNOWN
    #: Why the wire is what it is (the spec's ``wire=`` option, the simulator's port...).
    wire_why: str = "the target does not say what its port is connected to"
    port: Ability[PortControl] = Lacking("the target offers no control of its link or wire from the bench")
    errors: Ability[DeviceErrors] = Lacking("the target does not report the driver errors it recorded")
    crashes: Ability[CrashLog] = Lacking("the target does not report failures of its own device thread")
    dma_observer: Ability[DmaObserver] = Lacking("device DMA accesses cannot be watched as they happen here")
    faults: Ability[FaultList] = Lacking("the target does not report IOMMU faults")
    #: A doorbell write returns after the device finished the work it started (and its interrupts):
    #: "no interrupt" needs no waiting for.
    synchronous_doorbell: bool = False
    #: None when the driver masks MSI-X vectors in the table itself (the Mask bit, the PBA); otherwise why it
    #: cannot (Linux vfio-pci owns the table: it drops writes there and reads it as all ones).
    msix_masking: Lacking | None = None
    #: None when the driver's config space accesses reach the function's own type-0 header (BARs, Command,
    #: expansion ROM, capability bytes) and its own function-level reset; otherwise why not (Linux vfio-pci
    #: emulates those registers and resets the function its own way).
    config_header: Lacking | None = None
    #: How many times longer than a hardware function this target takes to do the same work (a simulator's
    #: slowdown: Icarus runs a design about twenty times slower than Verilator). The checks stretch their
    #: deadlines for what must happen by it, so a slow target is judged on what it does, not on its speed.
    time_scale: float = 1.0


#: What a target that declares nothing offers.
NOTHING = Abilities()


class ExceptionLog:
    """A :class:`CrashLog` over the list a device thread appends what it raised to."""

    def __init__(self, errors: list[BaseException]) -> None:
        self._errors = errors

    def crashes(self) -> list[str]:
        return [f"{type(e).__name__}: {e}" for e in list(self._errors)]


class ErrorRecord:
    """A :class:`DeviceErrors` over the list a device model appends each driver error to."""

    def __init__(self, errors: Sequence[object]) -> None:
        self._errors = errors

    def driver_errors(self) -> list[str]:
        return [str(e) for e in list(self._errors)]
