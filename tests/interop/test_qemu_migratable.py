"""QEMU 7.2 accepts ``serve`` as the vhost-user backend of a guest that must stay migratable (issue 14).

With ``-only-migratable`` QEMU refuses to start a device that adds a migration blocker; a vhost-user
backend without ``VHOST_F_LOG_ALL`` or ``VHOST_USER_PROTOCOL_F_LOG_SHMFD`` adds one while QEMU sets up
the netdev ("Migration disabled: vhost-user backend lacks VHOST_USER_PROTOCOL_F_LOG_SHMFD feature.")
and QEMU exits before its monitor answers (QEMU 7.2 here even dies of SIGSEGV on that path, measured with
the two protocol features taken out of the offer). Here the monitor answers and the VM is ready to run.
No guest is booted: the guest harness's virtio-9p job directory is itself not migratable.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from sim.child_process import ChildProcess
from testbenches.guest.qemu import QEMU, QEMU_HINT, vhost_user_net_args
from testbenches.peers.process import require_program
from testbenches.peers.serve import ServeProcess

READY_TIMEOUT = 60.0
MEMORY_MB = 128


def test_qemu_only_migratable_starts_with_serve(sock_dir: Path, tmp_path: Path, started: contextlib.ExitStack) -> None:
    qemu = require_program(QEMU, QEMU_HINT)
    sock = sock_dir / "vu.sock"
    serve = started.enter_context(ServeProcess(str(sock), "sim:virtio-net,wire=loopback", log=tmp_path / "serve.log"))
    assert serve.wait_listening(READY_TIMEOUT) == f"listening on {sock}"
    argv = [qemu, "-accel", "tcg", "-machine", "pc", "-m", f"{MEMORY_MB}M", "-nodefaults", "-no-user-config",
            "-display", "none", "-S", "-only-migratable", "-monitor", "stdio",
            "-object", f"memory-backend-memfd,id=mem,size={MEMORY_MB}M,share=on", "-numa", "node,memdev=mem",
            *vhost_user_net_args(sock, mac="52:54:00:0b:e7:02")]
    try:
        vm = started.enter_context(ChildProcess(argv, log=tmp_path / "qemu.log", name="qemu", interactive=True,
                                                ready=r"\(qemu\) ", ready_timeout=READY_TIMEOUT))
    except Exception as exc:
        log = (tmp_path / "qemu.log").read_text(errors="replace")
        raise AssertionError(f"QEMU did not start with -only-migratable: {exc}\n{log[-2000:]}") from None
    mark = vm.mark()
    vm.send("info status\n")
    vm.wait_for(r"VM status: paused \(prelaunch\)", READY_TIMEOUT, since=mark)
    vm.send("quit\n")
    assert vm.wait_exit(READY_TIMEOUT) == 0, vm.tail()
    serve.proc.wait_for(r"vhost-user#1: frontend disconnected", READY_TIMEOUT)
    assert serve.stop() == 0, serve.proc.tail()
    log = serve.log()
    assert "vhost-user#1: frontend connected" in log, log
    for bad in ("refused", "session dropped", "ERROR", "Traceback"):
        assert bad not in log, f"{bad!r} in the backend log:\n{log}"
