"""vfio-user server: simulated PCI functions exported from their own process (see :mod:`sim.vfio_user.server`)."""

from sim.vfio_user.server import Refused, Session, SessionRecord, VfioUserServer

__all__ = ["Refused", "Session", "SessionRecord", "VfioUserServer"]
