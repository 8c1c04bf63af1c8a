"""Dirty logging for live migration (issue 14): the log bitmap, the vhost-user protocol through a real
session, and the used-ring relay that logs every page the device writes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.vhost_user.dirty_log import LOG_PAGE, DirtyLog, DirtyLogError, atomic_or_available, page_span

pytestmark = pytest.mark.skipif(not atomic_or_available(), reason="libatomic.so.1 missing: apt-get install libatomic1")


def new_log(size: int, offset: int = 0, file_size: int | None = None) -> DirtyLog:
    fd = os.memfd_create("test-dirty-log", os.MFD_CLOEXEC)
    os.ftruncate(fd, file_size if file_size is not None else offset + size)
    return DirtyLog(fd, size, offset)


@pytest.fixture
def log() -> Iterator[DirtyLog]:
    d = new_log(64)
    yield d
    d.close()


def test_one_bit_per_page_little_endian_in_each_byte(log: DirtyLog) -> None:
    assert log.pages == 512 and log.limit == 512 * LOG_PAGE
    log.mark(9 * LOG_PAGE + 5, 1)
    assert log.dirty_pages() == {9}
    assert log.is_dirty(9) and not log.is_dirty(8) and not log.is_dirty(10)
    log.mark(7 * LOG_PAGE + 4095, 2)  # straddles pages 7 and 8 (and bytes 0 and 1)
    assert log.dirty_pages() == {7, 8, 9}
    log.mark(100 * LOG_PAGE, 0)  # nothing written, nothing logged
    assert log.dirty_pages() == {7, 8, 9}


def test_the_frontend_reads_bits_where_the_spec_puts_them() -> None:
    fd = os.memfd_create("shared-log", os.MFD_CLOEXEC)
    os.ftruncate(fd, 8192)
    frontend = os.dup(fd)
    d = DirtyLog(fd, 16, 4096)  # an offset into the fd, as SET_LOG_BASE may give
    try:
        d.mark(13 * LOG_PAGE, 3 * LOG_PAGE)  # pages 13, 14, 15
        raw = os.pread(frontend, 16, 4096)
        assert raw[1] == 0b1110_0000 and raw.count(0) == 15  # log[page / 8] |= 1 << page % 8
    finally:
        d.close()
        os.close(frontend)


@pytest.mark.parametrize(("gpa", "length"), [(512 * LOG_PAGE, 1), (511 * LOG_PAGE + 4095, 2), (1 << 60, 8)])
def test_a_write_outside_the_log_is_an_error_not_an_overrun(log: DirtyLog, gpa: int, length: int) -> None:
    with pytest.raises(DirtyLogError, match="outside the dirty log"):
        log.mark(gpa, length)
    assert log.dirty_pages() == set()  # not even the part inside


@pytest.mark.parametrize(("size", "offset", "file_size", "why"), [
    (0, 0, 4096, "not in 1"), (4096, 0, 100, "runs past the end"), (16, 8192, 4096, "runs past the end")])
def test_bad_log_descriptions_are_refused(size: int, offset: int, file_size: int, why: str) -> None:
    with pytest.raises(DirtyLogError, match=why):
        new_log(size, offset, file_size)


def test_closed_log_refuses_marks() -> None:
    d = new_log(8)
    d.close()
    with pytest.raises(DirtyLogError, match="after close"):
        d.mark(0, 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 64 * 8 * LOG_PAGE - 1), st.integers(0, 5 * LOG_PAGE)), max_size=20))
def test_marked_pages_are_exactly_the_pages_written(writes: list[tuple[int, int]]) -> None:
    d = new_log(64)
    try:
        expected: set[int] = set()
        for gpa, length in writes:
            if (gpa + length + LOG_PAGE - 1) // LOG_PAGE > d.pages:
                with pytest.raises(DirtyLogError):
                    d.mark(gpa, length)
                continue
            d.mark(gpa, length)
            expected |= set(page_span(gpa, length))
        assert d.dirty_pages() == expected
    finally:
        d.close()


def test_concurrent_writers_lose_no_bit() -> None:
    """Two logs on one fd (two backends sharing QEMU's log) set every bit of the same bytes at once."""
    fd = os.memfd_create("shared-log", os.MFD_CLOEXEC)
    os.ftruncate(fd, 4096)
    a, b = DirtyLog(fd, 4096), DirtyLog(os.dup(fd), 4096)
    go = threading.Barrier(2)

    def writer(d: DirtyLog, parity: int) -> None:
        go.wait(5.0)
        for page in range(parity, d.pages, 2):  # interleaved: both writers hit every byte
            d.mark(page * LOG_PAGE, 1)

    threads = [threading.Thread(target=writer, args=(d, k)) for k, d in enumerate((a, b))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60.0)
        assert not any(t.is_alive() for t in threads)
        assert a.dirty_pages() == set(range(a.pages))
    finally:
        a.close()
        b.close()
