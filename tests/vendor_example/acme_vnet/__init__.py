"""Acme VNet: an example vendor's virtio-net function for vdpa-bench (see ``pyproject.toml``)."""
