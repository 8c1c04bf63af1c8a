"""vdpa-bench backend: the product a vendor ships.

Imports nothing from ``sim``, ``models`` or ``testbenches``; the simulator and
the models register their targets through :mod:`backend.targets`.
"""
