"""RTL designs as simulated PCI functions: a native Verilator bridge (``harness/bridge.cpp``) loaded with
ctypes, its clock thread and the in-process ``PciDevice`` around it (see README.md)."""
