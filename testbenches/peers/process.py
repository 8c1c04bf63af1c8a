"""What the bench needs from the peers it runs: the program found on PATH, or a missing peer that
skips a test on a user's machine (with the line that installs it) and fails it when ``CI=true``.

The processes themselves are :class:`sim.child_process.ChildProcess` (output captured, bounded
waits, stopped by PID).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from typing import NoReturn

import pytest

__all__ = ["MissingPeer", "find_program", "in_ci", "peer_missing", "require_peer", "require_program"]


class MissingPeer(RuntimeError):
    """A program the check needs is not installed; ``hint`` says how to install it."""

    def __init__(self, program: str, hint: str) -> None:
        super().__init__(f"{program} not found: {hint}")
        self.program = program
        self.hint = hint


def find_program(program: str, hint: str) -> str:
    """Absolute path of ``program`` on PATH, or :class:`MissingPeer` with the install ``hint``."""
    path = shutil.which(program)
    if path is None:
        raise MissingPeer(program, hint)
    return path


def in_ci() -> bool:
    """``CI=true``: the run must prove everything, so a missing peer is a failure, not a skip."""
    return os.environ.get("CI", "").lower() == "true"


def peer_missing(reason: str) -> NoReturn:
    """A peer the test needs is missing (``reason`` says which and how to install it): skip the test on
    a user's machine, fail it when ``CI=true``."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing peer fails the run)")
    pytest.skip(reason)


@contextlib.contextmanager
def require_peer(*errors: type[Exception]) -> Iterator[None]:
    """Within it, :class:`MissingPeer` and ``errors`` (what a missing toolchain raises, with the install
    line as its message) mean :func:`peer_missing`."""
    caught: tuple[type[Exception], ...] = (MissingPeer, *errors)
    try:
        yield
    except caught as exc:
        peer_missing(str(exc))


def require_program(program: str, hint: str) -> str:
    """Path of ``program``, else :func:`peer_missing` with the install ``hint``."""
    try:
        return find_program(program, hint)
    except MissingPeer as exc:
        peer_missing(str(exc))
