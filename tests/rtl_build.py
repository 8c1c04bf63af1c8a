"""The RTL build a test needs, made before anything starts that would otherwise build it under its own bound."""

from __future__ import annotations


def require_rtl_build(spec: str) -> None:
    """The cached Verilator build of ``spec`` (``rtl:OPTIONS`` or ``OPTIONS``), built now when missing, so that a
    serve or device process started next finds it instead of building during its start-up. A missing toolchain
    skips the test, or fails it when ``CI=true``. The RTL modules are imported here, not by the callers."""
    from models.rtl.targets import RtlOptions, build_variant
    from sim.rtl.build import ToolchainMissing
    from testbenches.peers.process import require_peer

    with require_peer(ToolchainMissing):
        build_variant(RtlOptions(spec.removeprefix("rtl:")))
