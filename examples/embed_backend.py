"""Embedding the vDPA backend: serve one target over vhost-user until SIGINT or SIGTERM.

    python examples/embed_backend.py /run/vhost-net0.sock vfio-user:/run/nic0.sock

Needs only ``pip install vdpa-bench`` (no extras). Each frontend that connects to the socket (QEMU,
DPDK virtio_user, ...) gets a fresh device: the target opened and driven by the generic virtio-pci
vDPA driver, with the quirks of every installed vendor package.
"""

from __future__ import annotations

import logging
import signal
import sys

from backend.daemon import VdpaBackend


def main(socket_path: str, target: str) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Blocked before the server starts its threads (they inherit the mask): only sigwait below sees them.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    backend = VdpaBackend(target)  # opens the target once: a bad spec or an unreachable device raises here
    with backend.listen(socket_path):  # leaving the block closes every session and its device
        print(f"listening on {socket_path}", flush=True)
        signal.sigwait(stop_signals)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} SOCKET TARGET_SPEC")
    sys.exit(main(sys.argv[1], sys.argv[2]))
