"""Known deviations: the quirk entry that describes the device under test, and which failures it explains.

A quirk entry (:class:`backend.drivers.quirks.Quirk`) may record how its device departs from the spec
(:class:`~backend.drivers.quirks.Deviation`: the ids, optionally the checks, what was seen). A conformance
run applies one entry: the one named by ``--quirk NAME``, else the one the device's PCI ids select from
the built-in and installed entries (read from configuration space when the first device is opened). A
failure the entry explains is reported as *deviation*, with the entry named; any other failure of the
same id, in another check or in another way, stays *failed*. An exception inside a check is explained
only by a deviation that names that check: "the check failed somehow" is no recorded behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backend.drivers.quirks import Quirk
    from backend.pci.device import PciDevice


class UnknownQuirkError(ValueError):
    """``--quirk NAME`` names no known entry."""


@dataclass
class KnownDeviations:
    """The quirk entry a run applies (None until chosen) and how it was chosen."""

    quirk: Quirk | None = None
    source: str = ""
    #: Set once the device's ids were read (or a name was given): nothing more to match. A device whose ids
    #: cannot be read leaves it unset; the entry is then looked up on the next open.
    settled: bool = False

    @classmethod
    def named(cls, name: str) -> KnownDeviations:
        """The entry called ``name`` (built-in, QEMU's, or an installed provider's)."""
        from backend.drivers.quirks import named_quirks

        quirks = named_quirks()
        if name not in quirks:
            raise UnknownQuirkError(f"--quirk {name!r}: no such quirk entry (known: {', '.join(sorted(quirks))})")
        return cls(quirks[name], "named by --quirk", settled=True)

    def match(self, device: PciDevice) -> None:
        """Choose the entry the ids of ``device`` select, unless one is chosen already."""
        if self.settled:
            return
        from backend.drivers.quirks import NO_QUIRK, PciIds, default_quirks

        try:
            ids = PciIds.read(device)
        except Exception:  # a device that cannot answer config reads: the checks will say so
            return
        quirk = default_quirks().lookup(ids)
        self.settled = True
        if quirk is not NO_QUIRK:
            self.quirk, self.source = quirk, f"matched by PCI ids {ids}"

    def describe(self) -> str:
        """``NAME (how it was chosen)``, or "" when the run applies none."""
        return f"{self.quirk.name} ({self.source})" if self.quirk is not None else ""

    def explain(self, req_id: str, nodeid: str, evidence: str, *, error: bool = False) -> str | None:
        """The deviation evidence for a failure of ``req_id`` in ``nodeid``, or None if no record explains it.

        ``error``: the check raised instead of judging; only a deviation naming that check explains it."""
        if self.quirk is None:
            return None
        deviation = self.quirk.deviation_for(req_id, nodeid)
        if deviation is None or (error and not deviation.checks):
            return None
        return f"known deviation of {self.quirk.name}: {deviation.what} Seen: {evidence}"
