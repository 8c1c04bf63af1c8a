"""RTL designs as simulated PCI functions, any design a description file describes: the description
(``description.py``), the native Verilator bridge generated for it (``generate.py``,
``harness/bridge.cpp.j2``) loaded with ctypes, its clock thread and the in-process ``PciDevice`` around it
(see README.md)."""
