"""Frontends that drive the backend from the outside (vhost-user)."""
