"""Conformance suite: requirement traceability, pytest plugin and report."""
