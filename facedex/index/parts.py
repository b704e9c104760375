"""A flat faiss scan held as contiguous parts, so that one query's scan runs on every core.

Why: faiss spreads a batch's queries over its threads, but a lone query (what a
matcher serves when it is not busy) scans every code on one core: 1.7 ms for
1M faces of 32-byte PQ fast-scan codes on this machine class. Held as two
halves searched side by side, the same scan takes 1.0 ms. A batch gains
nothing from it (faiss already keeps every core busy), so a batch goes over the
parts one after another, each spread over faiss's threads.

Keys stay row numbers: part i holds keys ``offsets[i]`` onwards, and rows added
after the split go to a part of their own. Only a server splits (a build keeps
its scan whole), and the kind saves one merged index, so the file is the kind's
own and a matcher with another core count splits it as it needs.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from facedex.cores import MAX_WAYS, default_ways

SPLIT_FROM = 131_072  # faces from which a lone query's scan is split: below, a scan is ~0.2 ms and a thread hand-off eats the gain
MAX_PARTS = MAX_WAYS
FEW_QUERIES = 4  # up to this many queries per call go over the parts side by side; more are faiss's to spread


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scan-part")


class Parts:
    """Contiguous parts of one faiss index (float or binary), searched as if they were the whole.

    ``clone`` copies an index of the kind (``faiss.clone_index`` or ``faiss.clone_binary_index``); ``merge`` makes one
    index of the parts (for saving); ``larger_is_better``: inner products (True) or Hamming distances (False);
    ``ways``: parts to split into (None: one per core; 1: keep it whole, as a build does: only a server splits)."""

    def __init__(self, whole: Any, clone: Callable[[Any], Any], merge: Callable[[list[Any]], Any],
                 larger_is_better: bool, ways: int | None = None) -> None:
        self.clone = clone
        self.merge = merge
        self.larger_is_better = larger_is_better
        self.parts = self._split(whole, default_ways() if ways is None else ways)
        self.appendable = len(self.parts) == 1  # a whole index takes rows at its end; trimmed parts must not
        self.offsets = [0, *itertools.accumulate(int(p.ntotal) for p in self.parts[:-1])]  # each part's first key

    def _split(self, whole: Any, ways: int) -> list[Any]:
        import faiss

        n = int(whole.ntotal)
        if ways < 2 or n < SPLIT_FROM:
            return [whole]
        bounds = [n * i // ways for i in range(ways + 1)]
        parts = []
        for lo, hi in itertools.pairwise(bounds):
            trimmed = self.clone(whole)
            inside = faiss.IDSelectorRange(lo, hi)  # named: the Not selector does not keep it alive
            trimmed.remove_ids(faiss.IDSelectorNot(inside))
            parts.append(self.clone(trimmed))  # remove_ids keeps the whole buffer of flat codes: a copy holds only its rows
            del trimmed
        return parts

    @property
    def ntotal(self) -> int:
        return sum(int(p.ntotal) for p in self.parts)

    def add(self, codes: np.ndarray) -> None:
        """Append rows. A split index appends to a part of its own, begun empty: faiss's fast-scan ``add`` into a
        part trimmed by ``remove_ids`` merges the new codes into the stale rows of its last block."""
        if not self.appendable:
            tail = self.clone(self.parts[0])
            tail.reset()
            self.offsets.append(self.ntotal)
            self.parts.append(tail)
            self.appendable = True
        self.parts[-1].add(codes)

    def whole(self) -> Any:
        """One index holding every part's rows in key order (a copy when there are several parts)."""
        return self.parts[0] if len(self.parts) == 1 else self.merge([p for p in self.parts if p.ntotal])

    def search(self, codes: np.ndarray, r: int, threads: int = 0) -> np.ndarray:
        """(m, min(r, ntotal)) int64 keys, best first, -1 where fewer were found.

        ``threads``: 1 keeps one query on one core (the parts one after another); 0 uses every core."""
        m = codes.shape[0]
        r = min(r, self.ntotal)
        if r == 0:
            return np.full((m, 0), -1, np.int64)
        if len(self.parts) == 1:
            return np.asarray(self.parts[0].search(codes, r)[1], np.int64)
        live = [(part, off) for part, off in zip(self.parts, self.offsets, strict=True) if part.ntotal]  # faiss refuses k = 0
        run = lambda part: part.search(codes, min(r, int(part.ntotal)))
        if threads != 1 and m <= FEW_QUERIES and len(live) > 1:  # side by side: the others in the pool, the first here
            others = [_pool(len(live) - 1).submit(run, part) for part, _ in live[1:]]
            try:
                found = [run(live[0][0]), *(f.result() for f in others)]
            finally:  # never return (and let the caller release its lock) while a part is still being scanned
                wait(others)
        else:
            found = [run(part) for part, _ in live]
        worst = -np.inf if self.larger_is_better else np.inf
        dist = np.hstack([np.where(i >= 0, d, worst).astype(np.float64) for d, i in found])
        keys = np.hstack([np.where(i >= 0, i.astype(np.int64) + off, -1) for (_, i), (_, off) in zip(found, live, strict=True)])
        order = np.argsort(-dist if self.larger_is_better else dist, axis=1, kind="stable")[:, :r]
        return np.take_along_axis(keys, order, 1)


def merge_float(parts: list[Any]) -> Any:
    import faiss

    out = faiss.clone_index(parts[0])
    for part in parts[1:]:
        out.merge_from(faiss.clone_index(part))  # merge_from empties its argument
    return out


def merge_binary(parts: list[Any]) -> Any:
    import faiss

    out = faiss.IndexBinaryFlat(parts[0].d)
    for part in parts:  # binary indexes have no merge_from: their codes are plain rows
        out.add(faiss.vector_to_array(part.xb).reshape(int(part.ntotal), int(part.code_size)))
    return out
