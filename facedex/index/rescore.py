"""Exact re-scoring of a code scan's candidates.

Why two precisions: the best ``r`` candidates of the scan are re-scored from
fp16 copies of the descriptors (half the bytes of fp32 to page in; fp16 kept
the fp32 top-1 in every setting of issue 11, while int8 lost 0.2-0.8 %: mates
of one identity are often within 0.0005 of each other). The few that are
returned (plus a margin for fp16 rounding near the cut) are then scored again
from fp32, so the similarities and their order are exactly brute force's:
ranking by the float32 inner product, ties broken by key (row), as
:mod:`facedex.bruteforce.exact` does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MARGIN = 8  # extra fp16 winners scored again in fp32, so a near-tie at the k-th place cannot drop a face

Rows = Callable[[np.ndarray], np.ndarray]  # keys -> (len(keys), d) vectors


def rerank(queries: np.ndarray, cands: np.ndarray, rows16: Rows, rows32: Rows, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query: (keys (k',) int64, float32 inner products (k',)), best first; ``cands`` (m, r) with -1 = none."""
    keys_out: list[np.ndarray] = []
    scores_out: list[np.ndarray] = []
    for q in range(queries.shape[0]):
        row = cands[q][cands[q] >= 0]
        query = queries[q].astype(np.float32, copy=False)
        if len(row) > k + MARGIN:
            approx = rows16(row).astype(np.float32) @ query
            row = row[np.argpartition(-approx, k + MARGIN - 1)[: k + MARGIN]]
        exact = rows32(row) @ query
        order = np.lexsort((row, -exact))[:k]
        keys_out.append(row[order])
        scores_out.append(exact[order].astype(np.float32))
    return keys_out, scores_out
