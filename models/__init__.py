"""Device models: the behavioral virtio-net accelerator and its vendor variants."""
