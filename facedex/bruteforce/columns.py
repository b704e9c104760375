"""What candidate filters need of each cached row, so that a filter is a boolean mask, not a query.

The brute-force Matcher keeps, beside each list matrix, every row's creation time
(int64 unix µs) and its external id and user data as dictionary codes (int32;
code 0 is "none"). A filter then costs one vectorised comparison or one table
lookup per row: 1M rows in a few milliseconds, against the ~100 ms the scan itself
takes, and no PostgreSQL round trip per request beyond the change-head check.
The dictionaries are compacted when dead values outnumber live rows, so memory
stays proportional to the list.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence

import numpy as np

from facedex import wire
from facedex.faces.store import FaceMeta

_ENTRY_BYTES = 130  # a short str object, its list slot and its dict entry, roughly
_TOP = "\U0010ffff"  # the largest code point: prefix + _TOP sorts after almost every string that starts with prefix


class Vocab:
    """Strings <-> int32 codes; code 0 is None. Codes are stable until :meth:`compact`."""

    def __init__(self) -> None:
        self.values: list[str | None] = [None]
        self.index: dict[str, int] = {}
        self.nbytes = 0  # estimated memory of the values and their index entries (counted in the cache's budget)
        self._order: list[int] = []  # codes 1.. sorted by value, for prefix lookups (rebuilt lazily)
        self._lock = threading.Lock()  # searches share a read lock; sorting the order is theirs to serialise

    def __len__(self) -> int:
        return len(self.values)

    def codes(self, values: Sequence[str | None]) -> np.ndarray:
        out = np.empty(len(values), np.int32)
        for i, v in enumerate(values):
            if v is None:
                out[i] = 0
                continue
            code = self.index.get(v)
            if code is None:
                code = self.index[v] = len(self.values)
                self.values.append(v)
                self.nbytes += len(v) + _ENTRY_BYTES
            out[i] = code
        return out

    def table(self, wanted: Sequence[str]) -> np.ndarray:
        """Boolean table over codes: True for the codes of ``wanted`` (values never seen match nothing)."""
        table = np.zeros(len(self.values), bool)
        table[[c for c in (self.index.get(v) for v in wanted) if c is not None]] = True
        return table

    def prefix_table(self, prefix: str) -> np.ndarray:
        """Boolean table over codes: True for every value that starts with ``prefix``."""
        with self._lock:
            if len(self._order) != len(self.values) - 1:  # new values since: sort them in (Timsort merges the runs)
                self._order.extend(range(len(self._order) + 1, len(self.values)))
                self._order.sort(key=self.values.__getitem__)  # type: ignore[arg-type]
            order = self._order
        key = self.values.__getitem__
        lo = bisect_left(order, prefix, key=key)  # type: ignore[arg-type]
        hi = bisect_left(order, prefix + _TOP, lo=lo, key=key)  # type: ignore[arg-type]
        while hi < len(order) and str(self.values[order[hi]]).startswith(prefix):
            hi += 1
        table = np.zeros(len(self.values), bool)
        table[order[lo:hi]] = True
        return table

    def compact(self, live: np.ndarray) -> np.ndarray:
        """Drop values no live row uses; returns ``live`` recoded (0 stays 0)."""
        used = np.unique(np.concatenate([[0], live]))
        remap = np.zeros(len(self.values), np.int32)
        remap[used] = np.arange(len(used), dtype=np.int32)
        self.values = [self.values[c] for c in used]
        self.index = {v: i for i, v in enumerate(self.values) if v is not None}
        self.nbytes = sum(len(v) + _ENTRY_BYTES for v in self.index)
        with self._lock:
            self._order = []
        return remap[live]


class MetaColumns:
    """Per-row filter columns of a list matrix, with the matrix's row capacity; rows [0, n) are live."""

    compact_slack = 1024  # dictionary entries beyond twice the live rows before a compaction

    def __init__(self) -> None:
        self.create_us = np.zeros(0, np.int64)
        self.external = np.zeros(0, np.int32)
        self.user_data = np.zeros(0, np.int32)
        self.external_vocab = Vocab()
        self.user_vocab = Vocab()

    @property
    def nbytes(self) -> int:
        return (self.create_us.nbytes + self.external.nbytes + self.user_data.nbytes
                + self.external_vocab.nbytes + self.user_vocab.nbytes)

    def grow(self, cap: int, n: int) -> None:
        for name in ("create_us", "external", "user_data"):
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype)
            new[:n] = old[:n]
            setattr(self, name, new)

    def put(self, rows: np.ndarray | slice, meta: FaceMeta | None, picked: Sequence[int] | None = None) -> None:
        """Set rows from ``meta`` (its entries ``picked``, else all); without metadata: unknown (0 / none)."""
        if meta is None:
            self.create_us[rows] = 0
            self.external[rows] = 0
            self.user_data[rows] = 0
            return
        idx = list(range(len(meta.user_data))) if picked is None else list(picked)
        self.create_us[rows] = meta.create_us[idx]
        self.external[rows] = self.external_vocab.codes([meta.external_ids[i] for i in idx])
        self.user_data[rows] = self.user_vocab.codes([meta.user_data[i] for i in idx])

    def move(self, src: int, dst: int) -> None:
        self.create_us[dst] = self.create_us[src]
        self.external[dst] = self.external[src]
        self.user_data[dst] = self.user_data[src]

    def compact(self, n: int) -> None:
        """Recode the dictionaries when they hold more than twice the live rows (values of detached faces)."""
        for codes, vocab in ((self.external, self.external_vocab), (self.user_data, self.user_vocab)):
            if len(vocab) > 2 * n + self.compact_slack:
                codes[:n] = vocab.compact(codes[:n])

    def mask(self, rows: np.ndarray | None, n: int, f: wire.MatchFilters) -> np.ndarray:
        """Which of ``rows`` (or of rows [0, n)) pass every filter of ``f``."""

        def col(a: np.ndarray) -> np.ndarray:
            return a[:n] if rows is None else a[rows]

        keep = np.ones(n if rows is None else len(rows), bool)
        if f.create_time_gte_us is not None:
            keep &= col(self.create_us) >= f.create_time_gte_us
        if f.create_time_lt_us is not None:
            keep &= col(self.create_us) < f.create_time_lt_us
        if f.external_ids is not None:
            keep &= self.external_vocab.table(f.external_ids)[col(self.external)]
        if f.user_data is not None:
            code = self.user_vocab.index.get(f.user_data)
            keep &= col(self.user_data) == (code if code is not None else -1)
        if f.user_data_prefix is not None:
            keep &= self.user_vocab.prefix_table(f.user_data_prefix)[col(self.user_data)]
        return keep
