"""The machine a CPU run shares: the cores this process may use and the load of the other
processes (:func:`usable_cores`, :func:`other_load`)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

__all__ = ["usable_cores", "other_load"]

#: the time constant of the kernel's 1-minute load average (seconds)
LOAD_WINDOW_S = 60.0


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it), at most
    ``OMP_NUM_THREADS`` when that is set (as torch's own default; ``torchrun`` sets it to 1
    for several processes per machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(limit)) if limit.isdigit() and int(limit) > 0 else cores


def other_load() -> float:
    """The 1-minute load average less this process's own share of it (0 where the OS has
    no load average)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 0.0
    return max(0.0, load - _own_load())


class _OwnLoad:
    """This process's share of the 1-minute load average, estimated as the kernel averages
    load: its CPU seconds per second since the previous call, decayed with the average's
    60-second time constant (the process's CPU use between two calls is taken as even).
    Without it, a process training run after run would count its own last run as another
    process's load, and give the next run fewer threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time) -> None:
        self.clock, self.cpu_clock = clock, cpu_clock
        self.at, self.cpu, self.share = clock(), cpu_clock(), 0.0

    def __call__(self) -> float:
        at, cpu = self.clock(), self.cpu_clock()
        if at > self.at:
            keep = math.exp(-(at - self.at) / LOAD_WINDOW_S)
            self.share = self.share * keep + (cpu - self.cpu) / (at - self.at) * (1 - keep)
        self.at, self.cpu = at, cpu
        return self.share


_own_load = _OwnLoad()
