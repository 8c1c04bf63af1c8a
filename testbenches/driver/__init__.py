"""The driver side ("guest"): split rings in guest memory and a virtio-net driver over virtio-pci."""
