"""How many cores this process may use: one place, free of heavy imports (the brute-force Matcher reads it
without loading faiss)."""

from __future__ import annotations

import functools
import os

MAX_WAYS = 4  # a scan split over more parts than this gains nothing on the machines measured


@functools.cache
def default_ways() -> int:
    """One part per core this process may run on (its CPU affinity, e.g. a container's cpuset), at most MAX_WAYS.

    Read once: searches ask on every request (the affinity is a system call; the re-score's former
    ``os.cpu_count()`` read a file in /sys on every indexed answer)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_WAYS))
