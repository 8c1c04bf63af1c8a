"""What a vhost-user session hears from its device between frontend messages, and tells the frontend.

* the device's configuration interrupt is bound to an eventfd of its own (before each DRIVER_OK: a reset
  unbinds it); when it fires (a link change, DEVICE_NEEDS_RESET) the frontend gets ``CONFIG_CHANGE_MSG``
  on the back-end request channel it installed with ``SET_BACKEND_REQ_FD``
  (:mod:`backend.vhost_user.backend_channel`), or, without one, learns it at its next GET_STATUS/GET_CONFIG;
* a device reached over a connection of its own (a vfio-user socket: ``peer_fd()`` of the driver) is
  watched for hang-up, so a dead device process is noticed at once and not at the frontend's next message.

The server polls :meth:`DeviceEvents.watched` beside the frontend's socket and calls :meth:`DeviceEvents.service`;
a lost device raises :class:`DeviceLost`.
"""

from __future__ import annotations

import logging
import os
import select
from typing import Final

from backend.device import NotSupported, VdpaDevice, VdpaError
from backend.eventloop import consume_eventfd, new_eventfd
from backend.pci.device import PciError
from backend.vhost_user import messages as m
from backend.vhost_user.backend_channel import BackendChannel, BackendChannelError
from backend.virtio.features import DeviceStatus

log = logging.getLogger(__name__)

#: What a peer connection's fd is polled for: only its hang-up (its data belongs to the device's client).
HANGUP_EVENTS: Final = select.POLLRDHUP | select.POLLHUP | select.POLLERR
HUNG_UP: Final = "the device's connection hung up (its process died, or the connection broke)"


class DeviceLost(Exception):
    """The device cannot be reached any more; ``reason`` says why (one line for the log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeviceEvents:
    """The configuration eventfd, the back-end channel and the peer watch of one session's ``device``."""

    def __init__(self, device: VdpaDevice, name: str) -> None:
        self.device = device
        self.name = name
        self.backend: BackendChannel | None = None  # SET_BACKEND_REQ_FD
        self.config_fd = new_eventfd()  # the device's configuration interrupt
        self.lost: str | None = None  # why the device's connection ended, once it did
        self.config_changes = 0  # configuration interrupts seen
        self._needs_reset_logged = False

    def set_backend_channel(self, fd: int, *, reply_ack: bool) -> None:
        """Take the SET_BACKEND_REQ_FD fd over (replacing an earlier channel); BackendChannelError if unusable."""
        channel = BackendChannel.from_fd(fd, name=self.name, reply_ack=reply_ack)
        if self.backend is not None:
            self.backend.close()
        self.backend = channel

    def bind_config_call(self) -> None:
        """Before DRIVER_OK (a reset unbinds it): the device's configuration interrupt signals :attr:`config_fd`."""
        try:
            self.device.set_config_call(self.config_fd)
        except NotSupported as exc:  # no MSI-X: configuration changes are only seen through GET_STATUS/CONFIG
            log.info("%s: configuration interrupt not available: %s", self.name, exc)

    def peer_fd(self) -> int | None:
        """The fd of the device's own connection (a vfio-user socket), when it has one."""
        get = getattr(self.device, "peer_fd", None)
        fd = get() if callable(get) else None
        return fd if isinstance(fd, int) and fd >= 0 else None

    def watched(self) -> list[tuple[int, int]]:
        """(fd, poll events) to wait on beside the frontend's socket; :meth:`service` handles them."""
        out = [(self.config_fd, select.POLLIN)]
        peer = self.peer_fd()
        if peer is not None:
            out.append((peer, HANGUP_EVENTS))
        return out

    def service(self, fd: int) -> None:
        """One of :meth:`watched` is ready. Raises :class:`DeviceLost` when the device is gone."""
        if fd == self.config_fd:
            self._config_changed()
        elif fd == self.peer_fd():
            self._lose(HUNG_UP)

    def check_peer(self) -> None:
        """Raise :class:`DeviceLost` if the device's connection has hung up (after a failed device call)."""
        peer = self.peer_fd()
        if peer is None:
            return
        poller = select.poll()
        poller.register(peer, HANGUP_EVENTS)
        if poller.poll(0):
            self._lose(HUNG_UP)

    def _lose(self, reason: str) -> None:
        self.lost = reason
        raise DeviceLost(reason)

    def _config_changed(self) -> None:
        if not consume_eventfd(self.config_fd):
            return  # raced with another read: nothing new
        self.config_changes += 1
        try:
            status = self.device.get_status()
            generation = self.device.get_config_generation()
        except (VdpaError, PciError) as exc:
            self.check_peer()
            raise DeviceLost(f"device unreachable after a configuration interrupt: {exc}") from None
        if status & DeviceStatus.DEVICE_NEEDS_RESET:
            what = "device raised DEVICE_NEEDS_RESET"
            if not self._needs_reset_logged:
                log.warning("%s: %s (status %#x)", self.name, what, status)
                self._needs_reset_logged = True
        else:
            what = f"device configuration changed (generation {generation})"
        if self.backend is None:
            log.info("%s: %s; no backend request channel, the frontend learns it from GET_STATUS/GET_CONFIG",
                     self.name, what)
            return
        log.info("%s: %s: sending %s", self.name, what, m.BackendRequest.CONFIG_CHANGE_MSG.wire_name)
        try:
            self.backend.request(m.BackendRequest.CONFIG_CHANGE_MSG)
        except BackendChannelError as exc:
            log.warning("%s: backend request channel dropped: %s", self.name, exc)
            self.backend.close()
            self.backend = None

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        os.close(self.config_fd)
