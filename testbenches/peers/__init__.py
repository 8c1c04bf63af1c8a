"""Real peers (DPDK testpmd, QEMU, ``vdpa-bench serve``) started and stopped by the project's own code."""
