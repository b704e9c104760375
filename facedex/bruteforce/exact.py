"""Exact top-k by inner product over a matrix of normalised descriptors.

Measured on the 2-core dev box (docs/benchmarks.md): one BLAS GEMV plus
``argpartition`` runs at memory bandwidth, and one GEMM for a batch of
references is compute-bound near SGEMM peak, beating faiss ``knn`` on both. So
this is plain numpy; the database is cut into blocks only to bound the score
matrix (``references x block`` floats) for large batches.

A lone reference is memory-bound, so :func:`half_topk` scans an fp16 copy of the
matrix instead (half the bytes: 1M x 512 in 31-33 ms against 86-89 ms for the
fp32 GEMV on two cores, ad hoc, AMD EPYC 2-core VM) and stays exact by a proven
bound: every fp16 score is within ``eps`` of the exact one, so every row of the true
top-k scores at least the k-th best fp16 score minus ``2 eps``; those few rows are
re-scored from the fp32 matrix (in float64) and ranked best first, equal scores by row.
"""

from __future__ import annotations

import functools
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor

import numkong
import numpy as np

from facedex.cores import default_ways

log = logging.getLogger(__name__)

_MAX_SCORE_FLOATS = 1 << 24  # 64 MiB of float32 scores per block
# rows of a filtered search are gathered this many at a time (1 MiB of 512-d rows): the copy stays in cache
# for the product, so a filter keeping a fraction f of a list costs about f of a full scan, not a 2x copy of it
_GATHER_ROWS = 512
# a gathered row costs ~3x a streamed one (bench filters at 1M: 0.28 against 0.095 us): where the kept rows are
# at least a third of the span they lie in, scoring the whole span and picking their columns is cheaper
_DENSE = 1 / 3
HALF_SPLIT_ROWS = 65_536  # from this many rows an fp16 scan is split over the cores (below, the hand-off costs more)
# Up to this many references may scan the fp16 copy (one pass per reference; whether it does is measured per list:
# facedex.bruteforce.scans); more go to one fp32 GEMM, which reads the matrix once for all of them. Measured (ad hoc,
# AMD EPYC 2-core VM, 1M x 512, interleaved medians), fp32 / fp16 time: 1 ref 2.46, 12 refs 1.16, 16 refs 0.78.
HALF_MAX_QUERIES = 16
# |fp16 score - exact score| <= HALF_ERROR * |q| * |x| for rows and queries of unit scale: rounding both operands to
# fp16 costs (1 + 2^-11)^2 - 1 = 2^-10 + 2^-22 of |q|.|x| (subnormals add at most 2^-25 sqrt(d) (|q| + |x|)), fp32
# accumulation of d products at most d * 2^-24 of it (2^-15 at d = 512); all together < 2^-9 up to d = 4,096
HALF_ERROR = 2.0**-9
HALF_RANGE = 60_000.0  # fp16 holds magnitudes up to 65,504 (descriptors are unit vectors; anything else scans fp32)


def topk(queries: np.ndarray, matrix: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (scores, rows), each (len(queries), min(k, n)), best first.

    ``queries`` is (m, d) float32, ``matrix`` is (n, d) float32; scores are raw
    inner products (cosines for normalised input). With ``rows`` (ascending row
    numbers), only those rows are searched and the returned rows index ``rows``.
    """
    m, n = queries.shape[0], (matrix.shape[0] if rows is None else len(rows))
    k = min(k, n)
    if k == 0 or m == 0:
        return np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64)
    block = max(k, _MAX_SCORE_FLOATS // m)
    best_s = np.empty((m, 0), np.float32)
    best_i = np.empty((m, 0), np.int64)
    for start in range(0, n, block):
        scores = queries @ matrix[start : start + block].T if rows is None else _gathered(queries, matrix, rows[start : start + block])
        kk = min(k, scores.shape[1])
        part = np.argpartition(scores, scores.shape[1] - kk, axis=1)[:, -kk:]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        best_i = np.concatenate([best_i, part + start], axis=1)
        if best_s.shape[1] > k:
            keep = np.argpartition(best_s, best_s.shape[1] - k, axis=1)[:, -k:]
            best_s = np.take_along_axis(best_s, keep, 1)
            best_i = np.take_along_axis(best_i, keep, 1)
    # sort best first; ties broken by row for a deterministic order
    order = np.lexsort((best_i, -best_s), axis=1)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def _gathered(queries: np.ndarray, matrix: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Scores of ``queries`` against ``matrix[rows]`` (ascending): the span's scores when the rows are dense in it,
    else the rows gathered a cache-sized block at a time."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if len(rows) >= _DENSE * (hi - lo):
        return (queries @ matrix[lo:hi].T)[:, rows - lo]
    out = np.empty((queries.shape[0], len(rows)), np.float32)
    buf = np.empty((min(_GATHER_ROWS, len(rows)), matrix.shape[1]), matrix.dtype)
    for start in range(0, len(rows), _GATHER_ROWS):
        part = rows[start : start + _GATHER_ROWS]
        block = np.take(matrix, part, axis=0, out=buf[: len(part)], mode="clip")  # rows are valid; clip is unbuffered
        np.matmul(queries, block.T, out=out[:, start : start + len(part)])
    return out


def half_topk(queries: np.ndarray, matrix: np.ndarray, half: np.ndarray, max_norm: float, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk` over every row, ranked by an fp16 scan of ``half`` (``matrix`` in fp16, rows of norm at most
    ``max_norm``) and exact: the rows that could be in the top-k (module docstring) are re-scored from ``matrix``.

    Returns the same (scores, rows) as :func:`topk`; scores are fp32 products of the stored rows.
    """
    m, n = queries.shape[0], matrix.shape[0]
    k = min(k, n)
    if k == 0 or m == 0:
        return np.zeros((m, 0), np.float32), np.zeros((m, 0), np.int64)
    if not half_fits(queries, max_norm):
        return topk(queries, matrix, k)
    approx = _half_scores(half, queries)  # (n, m)
    eps = HALF_ERROR * np.linalg.norm(queries, axis=1) * max_norm + 1e-6
    best_s = np.empty((m, k), np.float32)
    best_i = np.empty((m, k), np.int64)
    for j in range(m):
        col = approx[:, j]
        kth = np.partition(col, n - k)[n - k]
        best_s[j], best_i[j] = ranked(queries[j], matrix, np.flatnonzero(col >= kth - 2 * eps[j]), k)
    return best_s, best_i


def half_fits(queries: np.ndarray, max_norm: float) -> bool:
    """Whether fp16 holds the queries and rows (of norm at most ``max_norm``); NaN fails too."""
    return bool(max_norm < HALF_RANGE and np.all(np.abs(queries) < HALF_RANGE))


def ranked(query: np.ndarray, matrix: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of ``rows`` for one query: (scores, rows), best first, equal scores by row.

    Scores are the stored fp32 rows' products in float64, rounded once to float32, so equal rows score equal
    wherever they sit (a BLAS product's last bit depends on the row's place in its block) and an answer does not
    depend on which scan found its rows."""
    exact = (matrix[rows].astype(np.float64) @ query.astype(np.float64)).astype(np.float32)
    order = np.lexsort((rows, -exact))[:k]
    return exact[order], rows[order]


def _half_scores(half: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(n, m) fp16 products (fp32 results), a large matrix split over the cores (numkong releases the GIL)."""
    q16 = queries.astype(np.float16)
    n = half.shape[0]
    ways = default_ways() if n >= HALF_SPLIT_ROWS else 1
    if ways == 1:
        return np.asarray(numkong.cdist(half, q16, metric="dot"), np.float32)
    bounds = np.linspace(0, n, ways + 1).astype(int)
    parts = _pool(ways).map(lambda lo_hi: np.asarray(numkong.cdist(half[lo_hi[0] : lo_hi[1]], q16, metric="dot"), np.float32),
                            itertools.pairwise(bounds))
    return np.concatenate(list(parts))


@functools.cache
def _pool(ways: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=ways, thread_name_prefix="half-scan")


@functools.cache
def half_scan_sound() -> bool:
    """Whether this CPU's fp16 kernel accumulates in fp32, as :data:`HALF_ERROR` assumes: checked once, before use.

    A sampled check, not a proof: on unit rows with positive components (no cancellation: the largest partial sums)
    a kernel accumulating in fp32 errs by at most 1.2e-4 here (numkong 7, AMD EPYC), one accumulating in fp16 (32
    lanes, then a tree) by 6.6e-4 to 7.7e-4 (simulated); the threshold, HALF_ERROR / 8 = 2.4e-4, sits between. Each
    reference count the scan serves goes through the same kernel, checked with 1 and 16 references."""
    rng = np.random.default_rng(12345)
    for dim in (128, 512):
        x = np.abs(rng.standard_normal((4096, dim))).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        for m in (1, HALF_MAX_QUERIES):
            q = np.abs(rng.standard_normal((m, dim))).astype(np.float32)
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            err = np.abs(_half_scores(x.astype(np.float16), q) - x.astype(np.float64) @ q.T.astype(np.float64))
            if not err.max() <= HALF_ERROR / 8:
                log.warning("fp16 products on this CPU err by up to %.1e (more than fp32 accumulation would): "
                            "brute force scans fp32 only", err.max())
                return False
    return True
