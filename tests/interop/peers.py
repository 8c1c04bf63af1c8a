"""What an interop test does when a real peer is missing: skip with the install line, fail in CI."""

from __future__ import annotations

import os

import pytest

from testbenches.peers.process import MissingPeer, find_program


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_program(program: str, hint: str) -> str:
    """Path of ``program``; skips with ``hint`` on a user's machine, fails when ``CI=true``."""
    try:
        return find_program(program, hint)
    except MissingPeer as exc:
        if in_ci():
            pytest.fail(f"{exc} (CI=true: a missing peer fails the run)")
        pytest.skip(str(exc))
