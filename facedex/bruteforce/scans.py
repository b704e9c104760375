"""Which exact scan answers a search of a list: its fp16 copy or its fp32 rows, chosen per list by measurement.

Why measure: which one is faster depends on the CPU as much as on the list. One reference, 512-d, ad hoc, in
process: on an AMD EPYC 2-core VM the fp16 scan took 0.43x the fp32 time at 1M faces and 0.77x at 10k; on an
Intel Xeon 2-core VM (Ice Lake class, 260 MB L3) 0.76x at 1M but 1.4x at 10k, where numkong's fp16 kernel is
bound by its arithmetic and the fp32 rows are read from the L3 cache. Both scans are exact
(:mod:`facedex.bruteforce.exact`), so a list can try both on its real requests and keep the faster one.

Per list and per class of reference count (1, 2-3, 4-7, 8-15, 16: the cost per reference changes with it), the
two scans are tried in turn until each has :data:`SAMPLES` timings, then the one with the lower median answers;
one search in :data:`PROBE_EVERY` runs the other, so a machine whose speed drifts is followed without putting a
slow search in every hundred. Timings are per row, and a class starts over when the list has doubled or halved
since it learned. More than :data:`~facedex.bruteforce.exact.HALF_MAX_QUERIES` references always scan fp32: one
GEMM reads the rows once for all of them.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from facedex.bruteforce.exact import HALF_MAX_QUERIES
from facedex.metrics import BRUTEFORCE_SCANS

SAMPLES = 5  # timings kept per scan and class; the median of them decides
PROBE_EVERY = 256  # once decided, one search in this many runs the other scan (< 0.4 % of searches, plus learning)
_SERIES = {True: BRUTEFORCE_SCANS.labels("fp16"), False: BRUTEFORCE_SCANS.labels("fp32")}


@dataclass
class _Class:
    rows: int  # list size when this class began learning
    half: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))  # seconds per row, fp16 scan
    full: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))  # the same, fp32 scan
    searches: int = 0  # since both were measured


class ScanChoice:
    """One list's choice between the fp16 and the fp32 scan (module docstring). Benign races only: a lost count or
    timing changes which scan a search uses, never its answer."""

    def __init__(self, only: bool | None = None) -> None:
        self.only = only  # True / False: always fp16 / fp32 (benchmarks), None: by measurement
        self._classes: dict[int, _Class] = {}

    def use_half(self, queries: int, rows: int) -> bool:
        """Whether a search of ``queries`` references over ``rows`` rows scans the fp16 copy."""
        if queries > HALF_MAX_QUERIES:
            return False
        if self.only is not None:
            return self.only
        c = self._classes.get(queries.bit_length())
        if c is None or not 0.5 <= rows / max(c.rows, 1) <= 2.0:
            c = self._classes[queries.bit_length()] = _Class(rows)
        faster_half = _faster_half(c)
        if faster_half is None:
            return len(c.half) <= len(c.full)  # learning: in turn
        c.searches += 1
        return faster_half != (c.searches % PROBE_EVERY == 0)

    def record(self, queries: int, rows: int, half: bool, seconds: float) -> None:
        """A search's scan time (``half``: it scanned the fp16 copy)."""
        _SERIES[half].inc()
        c = self._classes.get(queries.bit_length())
        if c is not None and self.only is None and rows:
            (c.half if half else c.full).append(seconds / rows)

    def chosen(self, queries: int = 1) -> str | None:
        """Either "fp16" or "fp32": what a search of ``queries`` references scans once its class has decided, else None."""
        if queries > HALF_MAX_QUERIES or self.only is not None:
            return "fp16" if self.only and queries <= HALF_MAX_QUERIES else "fp32"
        c = self._classes.get(queries.bit_length())
        faster_half = None if c is None else _faster_half(c)
        return None if faster_half is None else "fp16" if faster_half else "fp32"


def _faster_half(c: _Class) -> bool | None:
    """Whether the fp16 scan is the faster in this class, None while either scan has fewer than SAMPLES timings."""
    if len(c.half) < SAMPLES or len(c.full) < SAMPLES:
        return None
    return statistics.median(c.half) <= statistics.median(c.full)
