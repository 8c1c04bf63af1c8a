"""``vdpa-bench serve`` gives back everything a session took: sequential sessions, each moving frames,
leave the serve process's open fds at their idle count and its resident memory level.

A short version of ``python -m tests.soak --sessions 5000`` (see :mod:`tests.soak`). RSS first rises
for a few hundred sessions (allocator warm-up, about 10 KiB a session, then flat); a server keeping
ended sessions grew about 35 KiB with every session, forever. So the second half of the run must
stay nearly flat, and the whole run under the 10 MiB the full soak allows from session 100 to 5000.
"""

from __future__ import annotations

from pathlib import Path

from tests.soak import soak

SESSIONS = 800
EARLY, MIDDLE = 20, SESSIONS // 2
#: RSS growth allowed over the second half (400 sessions: a 35 KiB-a-session leak would be ~14 MiB).
SECOND_HALF_MIB = 4.0
#: RSS growth allowed from session 20 to the last.
TOTAL_MIB = 10.0


def test_serve_sessions_give_back_memory_and_fds(tmp_path: Path) -> None:
    result = soak(SESSIONS, [EARLY, MIDDLE], tmp_path)
    early, middle, last = result.at(EARLY), result.at(MIDDLE), result.at(SESSIONS)
    figures = (f"{SESSIONS} sessions in {result.seconds:.1f} s; RSS {early.rss_kib / 1024:.1f} MiB at session "
               f"{EARLY}, {middle.rss_kib / 1024:.1f} at {MIDDLE}, {last.rss_kib / 1024:.1f} at {SESSIONS}; "
               f"open fds {early.fds}, {middle.fds}, {last.fds} (idle {result.idle_fds})")
    print(figures)
    for s in (early, middle, last):
        assert s.fds == result.idle_fds, f"{s.fds} fds open after session {s.session}: {figures}"
    second_half = (last.rss_kib - middle.rss_kib) / 1024
    total = (last.rss_kib - early.rss_kib) / 1024
    assert second_half < SECOND_HALF_MIB, f"RSS grew {second_half:.1f} MiB over the second half: {figures}"
    assert total < TOTAL_MIB, f"RSS grew {total:.1f} MiB from session {EARLY}: {figures}"
