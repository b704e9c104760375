"""Which exact scan answers a search of a list: its fp16 copy or its fp32 rows, chosen per list by measurement.

Why measure: which one is faster depends on the CPU as much as on the list. One reference, 512-d, ad hoc, in
process: on an AMD EPYC 2-core VM the fp16 scan took 0.43x the fp32 time at 1M faces and 0.77x at 10k; on an
Intel Xeon 2-core VM (Ice Lake class, 260 MB L3) 0.76x at 1M but 1.4x at 10k, where numkong's fp16 kernel is
bound by its arithmetic and the fp32 rows are read from the L3 cache. Both scans are exact
(:mod:`facedex.bruteforce.exact`), so a list can try both on its real requests and keep the faster one.

Per list and per class of reference count (1, 2-3, 4-7, 8-15, 16: the cost per reference changes with it), the
two scans are tried in turn until each has :data:`SAMPLES` timings, then the one with the lower median serves;
one search in :data:`PROBE_EVERY` runs the other, so a machine whose speed drifts is followed without putting a
slow search in every hundred. Timings are per row and reference, and a class starts over when the list has
doubled or halved since it learned.

A choice is not overturned by a comparison of unequal evidence: the serving scan's timings are its latest
searches, the other's are probes up to :data:`SAMPLES` x :data:`PROBE_EVERY` searches old. So when the other scan
looks faster by more than :data:`MARGIN` (a slow stretch of the machine during the serving scan's latest searches, or
a real change), both are measured afresh, in turn, and the fresh medians decide. More than
:data:`~facedex.bruteforce.exact.HALF_MAX_QUERIES` references always scan fp32: one GEMM reads the rows once for
all of them.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from facedex.bruteforce.exact import HALF_MAX_QUERIES
from facedex.metrics import BRUTEFORCE_SCANS

SAMPLES = 5  # timings kept per scan and class; the median of them decides
PROBE_EVERY = 256  # once decided, one search in this many runs the other scan (< 0.4 % of searches, plus learning)
MARGIN = 0.10  # the other scan must look this much faster before both are measured again (no flapping on a tie)
_SERIES = {True: BRUTEFORCE_SCANS.labels("fp16"), False: BRUTEFORCE_SCANS.labels("fp32")}


@dataclass
class _Class:
    rows: int  # list size when this class began learning
    half: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))  # seconds per row and reference, fp16
    full: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))  # the same, fp32 scan
    serving: bool | None = None  # the scan chosen (True: fp16), None while learning
    searches: int = 0  # since the choice was made

    def relearn(self) -> None:
        self.half.clear()
        self.full.clear()
        self.serving = None


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
        if c.serving is None:
            return len(c.half) <= len(c.full)  # learning: in turn
        c.searches += 1
        return c.serving != (c.searches % PROBE_EVERY == 0)

    def record(self, queries: int, rows: int, half: bool, seconds: float, learn: bool = True) -> None:
        """A search's scan time (``half``: it scanned the fp16 copy); ``learn``: the search had the choice (not a
        reference fp16 cannot hold, not a list without an fp16 copy), so its time counts in its class."""
        _SERIES[half].inc()
        if not learn or self.only is not None or not rows or not 1 <= queries <= HALF_MAX_QUERIES:
            return  # (17-31 references share class 16's bit length but always scan fp32: not its samples)
        c = self._classes.get(queries.bit_length())
        if c is None:
            return
        (c.half if half else c.full).append(seconds / (rows * queries))
        if len(c.half) < SAMPLES or len(c.full) < SAMPLES:
            return
        half_s, full_s = statistics.median(c.half), statistics.median(c.full)
        if c.serving is None:  # both measured in turn: the faster serves
            c.serving, c.searches = half_s <= full_s, 0
        elif (full_s if c.serving else half_s) < (1 - MARGIN) * (half_s if c.serving else full_s):
            c.relearn()  # the other looks faster, on older timings: measure both afresh before changing

    def chosen(self, queries: int = 1) -> str | None:
        """Either "fp16" or "fp32": what a search of ``queries`` references scans once its class has decided, else None."""
        if queries > HALF_MAX_QUERIES or self.only is not None:
            return "fp16" if self.only and queries <= HALF_MAX_QUERIES else "fp32"
        c = self._classes.get(queries.bit_length())
        return None if c is None or c.serving is None else "fp16" if c.serving else "fp32"
