"""One thread waiting on eventfds and running their handlers: no polling, no sleeps.

Used by the simulator's devices (kicks, ioeventfds) and by the vendor
drivers' fallbacks (a kick eventfd the device cannot take as an ioeventfd,
one MSI-X vector shared by several call eventfds). The thread starts on the
first watch and sleeps in ``select``, woken by a private eventfd when the
watch set changes or the loop closes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import selectors
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_PR_SET_NAME = 15
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def set_native_thread_name(name: str) -> None:
    """Name the calling OS thread (``/proc/PID/task/TID/comm``, 15 bytes) so that tools and the bench
    can tell the backend's threads from a simulated device's threads in the same process."""
    _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


class EventLoop:
    def __init__(self, name: str = "events") -> None:
        self.name = name
        self._sel = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sel.register(self._wake, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        # Held while a handler runs: unwatch() waits on it, so once unwatch returns no handler of that fd is
        # running or about to run, and its owner may close the fd (whose number the kernel may then reuse).
        self._dispatch = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Run ``handler`` in the relay thread whenever ``fd`` is readable; the handler consumes it."""
        with self._lock:
            try:
                self._sel.modify(fd, selectors.EVENT_READ, handler)
            except KeyError:
                self._sel.register(fd, selectors.EVENT_READ, handler)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        os.eventfd_write(self._wake, 1)

    def unwatch(self, fd: int) -> None:
        """Stop watching ``fd``; on return no handler of it runs any more (from the loop's own thread, a handler may
        unwatch its own or another fd)."""
        with self._lock:
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                return
        os.eventfd_write(self._wake, 1)
        with self._dispatch:  # a handler of fd that select() already returned has finished, or will be skipped
            pass

    @property
    def watched(self) -> int:
        with self._lock:
            return len(self._sel.get_map()) - 1

    def _run(self) -> None:
        set_native_thread_name(self.name)
        while not self._stop.is_set():
            for key, _ in self._sel.select():
                if key.data is None:
                    try:
                        os.eventfd_read(self._wake)
                    except BlockingIOError:
                        pass
                    continue
                with self._dispatch:
                    with self._lock:  # unwatched (or watched anew) since select() returned: not this handler's
                        current = self._sel.get_map().get(key.fd) if not self._stop.is_set() else None
                    if current is not key:
                        continue
                    try:
                        key.data()
                    except Exception as exc:  # one failing handler must not take the others down
                        log.exception("%s: handler for fd %s failed", self.name, key.fd)
                        self.errors.append(exc)

    def close(self) -> None:
        self._stop.set()
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sel.close()
        os.close(self._wake)


def consume_eventfd(fd: int) -> int:
    """Read an eventfd the selector reported readable (so the read does not block); 0 if raced."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def new_eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def wait_eventfd(fd: int, timeout: float) -> bool:
    """Wait at most ``timeout`` seconds for ``fd``; consume it and return True if it was signalled."""
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    return bool(ready) and consume_eventfd(fd) > 0
