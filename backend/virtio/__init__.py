"""Spec formats and constants shared by every layer (driver and device side)."""
