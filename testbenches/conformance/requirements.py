"""Typed access to the requirement table (``spec/virtio-requirements.csv``).

Every conformance check names the requirement ids it covers; this module is
the single place that knows what an id is, which area it belongs to and
whether it exists at all.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path

#: Areas in report order (the id prefix before ``-DRV``/``-DEV``).
AREAS: tuple[str, ...] = (
    "STATUS",
    "FEAT",
    "CFG",
    "RESET",
    "INIT",
    "SPLIT",
    "PACKED",
    "NOTIF",
    "PCI",
    "PCILEG",
    "NET",
    "NETFEAT",
    "NETCTRL",
)

_ROLE_TAGS = ("DRV", "DEV")
_CSV_NAME = "virtio-requirements.csv"
#: The backend's own rows from the vhost-user protocol (dirty logging for live migration: VULOG-DEV-NN, where DEV
#: is the back-end's side), judged by the backend's tests (tests/test_dirty_log.py), not by device checks.
VHOST_USER_TABLE = "vhost-user-requirements.csv"


class Role(StrEnum):
    DRIVER = "driver"
    DEVICE = "device"


class Level(StrEnum):
    MUST = "MUST"
    MUST_NOT = "MUST NOT"
    SHOULD = "SHOULD"
    SHOULD_NOT = "SHOULD NOT"
    MAY = "MAY"


class CheckerKind(StrEnum):
    PROPERTY = "property"
    DIRECTED = "directed"
    MONITOR = "monitor"
    NOT_TESTABLE = "not-testable"


class UnknownRequirementError(KeyError):
    """One or more ids that are not rows of the requirement table."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = tuple(ids)
        super().__init__(", ".join(self.ids))

    def __str__(self) -> str:
        return f"unknown requirement id(s): {', '.join(self.ids)}"


def area_of(req_id: str) -> str:
    """The area of an id: ``SPLIT-DEV-13`` -> ``SPLIT``."""
    head, sep, _ = req_id.partition("-")
    rest = req_id[len(head) + 1 :]
    if not sep or not head or rest.split("-", 1)[0] not in _ROLE_TAGS:
        raise ValueError(f"malformed requirement id {req_id!r} (expected AREA-DRV-NN or AREA-DEV-NN)")
    return head


@dataclass(frozen=True)
class Requirement:
    id: str
    spec_version: str
    section: str
    role: Role
    level: Level
    requirement: str
    observable: str
    checker_kind: CheckerKind

    @property
    def area(self) -> str:
        return area_of(self.id)

    @property
    def testable(self) -> bool:
        return self.checker_kind is not CheckerKind.NOT_TESTABLE

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> Requirement:
        return cls(
            id=row["id"].strip(),
            spec_version=row["spec_version"],
            section=row["section"],
            role=Role(row["role"]),
            level=Level(row["level"]),
            requirement=row["requirement"],
            observable=row["observable"],
            checker_kind=CheckerKind(row["checker_kind"]),
        )


class RequirementSet(Mapping[str, Requirement]):
    """The requirement table, keyed by id, in file order."""

    def __init__(self, rows: Iterable[Requirement]) -> None:
        self._by_id: dict[str, Requirement] = {}
        for req in rows:
            if req.id in self._by_id:
                raise ValueError(f"duplicate requirement id {req.id!r}")
            area_of(req.id)  # validates the shape
            self._by_id[req.id] = req

    def __getitem__(self, req_id: str) -> Requirement:
        try:
            return self._by_id[req_id]
        except KeyError:
            raise UnknownRequirementError([req_id]) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def unknown(self, ids: Iterable[str]) -> list[str]:
        """The ids among ``ids`` that are not in the table (order kept, no duplicates)."""
        return [i for i in dict.fromkeys(ids) if i not in self._by_id]

    def validate(self, ids: Iterable[str]) -> None:
        """Raise :class:`UnknownRequirementError` naming every id not in the table."""
        missing = self.unknown(ids)
        if missing:
            raise UnknownRequirementError(missing)

    def by_area(self) -> dict[str, list[Requirement]]:
        """Requirements grouped by area; known areas first in :data:`AREAS` order."""
        groups: dict[str, list[Requirement]] = {a: [] for a in AREAS}
        for req in self._by_id.values():
            groups.setdefault(req.area, []).append(req)
        return {a: reqs for a, reqs in groups.items() if reqs}


def parse_requirements(text: str) -> RequirementSet:
    return RequirementSet(Requirement.from_row(row) for row in csv.DictReader(io.StringIO(text)))


def load_requirements(path: Path | str | None = None, *, table: str = _CSV_NAME) -> RequirementSet:
    """Load the table; by default the copy shipped as package data next to this module (``table`` names another
    one there, such as :data:`VHOST_USER_TABLE`)."""
    if path is None:
        resource = resources.files(__package__ or "testbenches.conformance").joinpath("spec", table)
        text = resource.read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return parse_requirements(text)
