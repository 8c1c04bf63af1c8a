"""A device-side event loop thread: waits on eventfds (kicks, ioeventfds) and runs their handlers.

No polling and no sleeps: one ``selectors`` wait, woken by a private eventfd
when the set of watched fds changes or the loop stops.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class EventLoop:
    def __init__(self, name: str = "sim-events") -> None:
        self._sel = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self.errors: list[BaseException] = []

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Call ``handler`` (in the loop thread) each time ``fd`` becomes readable; it must consume it."""
        with self._lock:
            try:
                self._sel.modify(fd, selectors.EVENT_READ, handler)
            except KeyError:
                self._sel.register(fd, selectors.EVENT_READ, handler)
        os.eventfd_write(self._wake, 1)
        self.start()

    def unwatch(self, fd: int) -> None:
        with self._lock:
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                return
        os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            events = self._sel.select()
            for key, _ in events:
                if key.data is None:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    continue
                try:
                    key.data()
                except Exception as exc:  # a handler bug must not kill the device
                    log.exception("event handler for fd %s failed", key.fd)
                    self.errors.append(exc)

    def close(self) -> None:
        self._stop.set()
        os.eventfd_write(self._wake, 1)
        if self._started:
            self._thread.join(timeout=5)
        self._sel.close()
        os.close(self._wake)


def drain_eventfd(fd: int) -> int:
    """Consume a (non-blocking) eventfd; 0 if nothing was pending."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0
