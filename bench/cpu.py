"""CPU time per OS thread of a process, from ``/proc/PID/task`` (threads named with PR_SET_NAME).

``schedstat`` gives nanoseconds on CPU; ``stat`` (clock ticks, 10 ms) is the fallback on kernels
without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ThreadTimes:
    """``comm`` → CPU seconds (user + system) for every thread of one process at one moment."""

    by_thread: dict[int, tuple[str, float]]

    @classmethod
    def read(cls, pid: int) -> ThreadTimes:
        out: dict[int, tuple[str, float]] = {}
        for tid_text in os.listdir(f"/proc/{pid}/task"):
            tid = int(tid_text)
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
            except FileNotFoundError:  # the thread ended meanwhile
                continue
            # comm is in parentheses and may contain spaces; the fields after it are space separated
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    seconds = int(f.read().split()[0]) / 1e9
            except (FileNotFoundError, IndexError, ValueError):
                seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
            out[tid] = (comm, seconds)
        return cls(out)


def split_cpu(before: ThreadTimes, after: ThreadTimes, is_device: str) -> tuple[float, float]:
    """(backend seconds, device seconds) spent between two readings; a thread is the device's when its
    name starts with ``is_device`` (the simulator names its event loop after the target spec); every
    other thread, including ones that started or ended in between, counts as the backend's."""
    backend = device = 0.0
    for tid, (comm, t1) in after.by_thread.items():
        t0 = before.by_thread.get(tid, (comm, 0.0))[1]
        if comm.startswith(is_device):
            device += t1 - t0
        else:
            backend += t1 - t0
    return backend, device
