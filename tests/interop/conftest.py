"""Fixtures of the interop tests."""

from __future__ import annotations

import pytest

from sim.vfio_user.libvfio_user_peer import LibvfioUserBuild, PeerUnavailable, build_libvfio_user
from testbenches.peers.process import peer_missing


@pytest.fixture(scope="module")
def libvfio_user() -> LibvfioUserBuild:
    """libvfio-user built once (cached in ``build/peers`` across runs, one builder at a time across workers); without
    its source the test skips with the install line, or fails when CI=true."""
    try:
        return build_libvfio_user()
    except PeerUnavailable as exc:
        peer_missing(str(exc))
