"""A Linux guest under QEMU (TCG) for interop checks: a Debian kernel from the cache, a busybox
initramfs that runs one job script and reports its exit code on the serial console."""
