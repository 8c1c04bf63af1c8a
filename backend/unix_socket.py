"""Unix socket paths shared by the servers (vhost-user ``serve``, vfio-user ``device``)."""

from __future__ import annotations

import logging
import os
import socket
import stat

log = logging.getLogger(__name__)


def claim_socket(path: str) -> None:
    """Make ``path`` free to bind: remove a socket a dead server left there.

    Raises FileExistsError when something else is there (not a socket, or a live server: a probe
    connects) and OSError when the existing socket cannot be probed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("removed stale socket %s", path)
        return
    finally:
        probe.close()
    raise FileExistsError(f"another process is listening on {path}")
