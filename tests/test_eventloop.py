"""The event loop's promise to whoever unwatches an fd: once unwatch returns, no handler of that fd runs or is about
to run, so the fd may be closed (its number reused) at once. A kick eventfd closed by a ring stop while the loop
had it ready used to be read after its close (EBADF, or another file's counter once the number was reused)."""

from __future__ import annotations

import os
import threading

from backend.eventloop import EventLoop, new_eventfd

WAIT = 5.0


def test_unwatch_waits_for_the_running_handler() -> None:
    loop = EventLoop("t-unwatch")
    fd = new_eventfd()
    entered, release, unwatched = threading.Event(), threading.Event(), threading.Event()

    def handler() -> None:
        os.eventfd_read(fd)
        entered.set()
        assert release.wait(WAIT)

    try:
        loop.watch(fd, handler)
        os.eventfd_write(fd, 1)
        assert entered.wait(WAIT)
        def unwatch() -> None:
            loop.unwatch(fd)
            unwatched.set()

        t = threading.Thread(target=unwatch)
        t.start()
        assert not unwatched.wait(0.2), "unwatch returned while the fd's handler was still running"
        release.set()
        assert unwatched.wait(WAIT)
        t.join(WAIT)
        assert not loop.errors
    finally:
        loop.close()
        os.close(fd)


def test_a_handler_unwatched_in_the_same_round_never_runs() -> None:
    """Both fds ready in one select round; the first handler to run unwatches and closes the other: the other's
    handler must be skipped, not run on a closed (or reused) fd number."""
    loop = EventLoop("t-round")
    fds = [new_eventfd(), new_eventfd()]
    ran: list[int] = []
    done = threading.Event()
    closed: set[int] = set()

    def make(me: int) -> None:
        other = fds[1 - me]

        def handler() -> None:
            os.eventfd_read(fds[me])
            ran.append(me)
            loop.unwatch(other)  # from the loop's own thread
            os.close(other)
            closed.add(other)
            done.set()

        loop.watch(fds[me], handler)

    try:
        for me in (0, 1):
            make(me)
        gate = threading.Event()
        blocker = new_eventfd()
        def hold() -> None:
            os.eventfd_read(blocker)
            gate.wait(WAIT)

        loop.watch(blocker, hold)
        os.eventfd_write(blocker, 1)  # hold the loop in a handler while both fds become ready
        os.eventfd_write(fds[0], 1)
        os.eventfd_write(fds[1], 1)
        gate.set()
        assert done.wait(WAIT)
        loop.unwatch(blocker)
        assert len(ran) == 1, f"both handlers ran: {ran}"
        assert not loop.errors, loop.errors
    finally:
        loop.close()
        for fd in fds:
            if fd not in closed:
                os.close(fd)
        os.close(blocker)
