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

import functools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numkong
import numpy as np

from facedex.cores import default_ways

MARGIN = 8  # extra fp16 winners scored again in fp32, so a near-tie at the k-th place cannot drop a face

Rows = Callable[[np.ndarray], np.ndarray]  # keys -> (len(keys), d) vectors

GATHER_ROWS = 4096  # candidate rows re-scored together (a few queries' worth): 4 MB of fp16 at 512-d
PARALLEL_FROM = 32  # queries from which a batch is split over the cores (numpy's gathers and products release the GIL)


@functools.cache
def _executor(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rescore")


def rerank(queries: np.ndarray, cands: np.ndarray, rows16: Rows, rows32: Rows, k: int,
           threads: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query: (keys (k',) int64, float32 inner products (k',)), best first; ``cands`` (m, r) with -1 = none.

    ``threads`` > 1 (0: :func:`facedex.cores.default_ways`, the cores this process may use, at most four) spreads
    a batch of at least ``PARALLEL_FROM`` queries over that many threads, as the Indexed Matcher answers many
    waiting requests at once; each query's answer is the same either way."""
    m = queries.shape[0]
    step = max(1, GATHER_ROWS // max(1, cands.shape[1]))
    threads = threads or default_ways()
    parts: Iterable[tuple[list[np.ndarray], list[np.ndarray]]]
    run = lambda s: _chunk(queries[s : s + step], cands[s : s + step], rows16, rows32, k)  # noqa: E731
    if threads > 1 and m >= PARALLEL_FROM:
        parts = _executor(threads).map(run, range(0, m, step))
    else:
        parts = map(run, range(0, m, step))
    keys: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for kk, ss in parts:
        keys += kk
        scores += ss
    return keys, scores


def _dots(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(c, r) inner products of each query with its own r rows. fp16 rows go to numkong's SIMD fp16 kernels
    (numpy's fp16 -> fp32 conversion alone cost 0.43 ms for 512 x 512-d rows, numkong's whole product 0.02 ms);
    these scores only rank the candidates, the answer's are fp32."""
    if rows.dtype != np.float16:
        return np.matmul(rows.astype(np.float32, copy=False), queries[:, :, None])[:, :, 0]
    q16 = queries.astype(np.float16)
    out = np.empty(rows.shape[:2], np.float32)
    for i in range(rows.shape[0]):
        out[i] = np.asarray(numkong.cdist(rows[i], q16[i : i + 1], metric="dot"), np.float32)[:, 0]
    return out


def _chunk(queries: np.ndarray, cands: np.ndarray, rows16: Rows, rows32: Rows, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Re-score a few queries at once: one fp16 gather and product for all their candidates, then fp32 for the best."""
    queries = np.ascontiguousarray(queries, np.float32)
    c, r = cands.shape
    valid = cands >= 0
    if r > k + MARGIN:
        safe = np.where(valid, cands, 0)
        approx = _dots(rows16(safe.ravel()).reshape(c, r, -1), queries)
        approx[~valid] = -np.inf
        best = np.argpartition(-approx, k + MARGIN - 1, axis=1)[:, : k + MARGIN]
        cands = np.take_along_axis(cands, best, 1)
        valid = cands >= 0
    keys_out: list[np.ndarray] = []
    scores_out: list[np.ndarray] = []
    for q in range(c):
        row = cands[q][valid[q]]
        exact = rows32(row) @ queries[q]  # the final scores: one product per query, as brute force computes them
        order = np.lexsort((row, -exact))[:k]
        keys_out.append(row[order])
        scores_out.append(exact[order])
    return keys_out, scores_out
