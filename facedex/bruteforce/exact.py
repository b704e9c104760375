"""Exact top-k by inner product over a matrix of normalised descriptors.

Measured on the 2-core dev box (docs/benchmarks.md): one BLAS GEMV plus
``argpartition`` runs at memory bandwidth, and one GEMM for a batch of
references is compute-bound near SGEMM peak, beating faiss ``knn`` on both. So
this is plain numpy; the database is cut into blocks only to bound the score
matrix (``references x block`` floats) for large batches.

A lone reference is memory-bound, so :func:`half_topk` scans an fp16 copy of the
matrix instead (half the bytes: 1M x 512 in 31-33 ms against 86-89 ms for the
fp32 GEMV on two cores, ad hoc, AMD EPYC 2-core VM) and stays exact by a proven
bound: every fp16 score is within ``eps`` of the fp32 one, so every row of the true
top-k scores at least the k-th best fp16 score minus ``2 eps``; those few rows are
re-scored from the fp32 matrix and ranked as :func:`topk` ranks them.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numkong
import numpy as np

log = logging.getLogger(__name__)

_MAX_SCORE_FLOATS = 1 << 24  # 64 MiB of float32 scores per block
# rows of a filtered search are gathered this many at a time (1 MiB of 512-d rows): the copy stays in cache
# for the product, so a filter keeping a fraction f of a list costs about f of a full scan, not a 2x copy of it
_GATHER_ROWS = 512
# a gathered row costs ~3x a streamed one (bench filters at 1M: 0.28 against 0.095 us): where the kept rows are
# at least a third of the span they lie in, scoring the whole span and picking their columns is cheaper
_DENSE = 1 / 3
HALF_SPLIT_ROWS = 65_536  # from this many rows an fp16 scan is split over the cores (below, the hand-off costs more)
# Up to this many references scan the fp16 copy (one pass per reference); more go to one fp32 GEMM, which reads the
# matrix once for all of them. Measured (ad hoc, AMD EPYC 2-core VM, 512-d, interleaved medians), fp32 / fp16 time:
# 10k rows: 1 ref 1.11, 6 refs 1.29, 8 refs 0.95; 100k: 1 ref 2.29, 12 refs 1.17, 16 refs 0.97; 1M: 1 ref 2.46,
# 2 refs 3.94 (a GEMM of a few rows is far slower than a GEMV), 12 refs 1.16, 16 refs 0.78.
HALF_MAX_QUERIES_SMALL = 6
HALF_MAX_QUERIES_SPLIT = 12
# |fp16 score - fp32 score| <= HALF_ERROR * |q| * |x|: rounding both operands to fp16 costs (1 + 2^-11)^2 - 1 < 2^-10
# of |q|.|x|, fp32 accumulation of d products at most d * 2^-24 of it (< 2^-10 up to d = 16,384); the rest is margin
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


def half_scan_pays(rows: int, queries: int) -> bool:
    """Whether scanning the fp16 copy beats the fp32 product for this many references (HALF_MAX_QUERIES_*)."""
    return queries <= (HALF_MAX_QUERIES_SPLIT if rows >= HALF_SPLIT_ROWS else HALF_MAX_QUERIES_SMALL)


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
    if not (max_norm < HALF_RANGE and np.all(np.abs(queries) < HALF_RANGE)):  # NaN fails too: fp16 cannot hold it
        return topk(queries, matrix, k)
    approx = _half_scores(half, queries)  # (n, m)
    eps = HALF_ERROR * np.linalg.norm(queries, axis=1) * max_norm + 1e-6
    best_s = np.empty((m, k), np.float32)
    best_i = np.empty((m, k), np.int64)
    for j in range(m):
        col = approx[:, j]
        kth = np.partition(col, n - k)[n - k]
        rows = np.flatnonzero(col >= kth - 2 * eps[j])
        exact = matrix[rows] @ queries[j]  # the answer's scores: fp32 products of the stored rows
        order = np.lexsort((rows, -exact))[:k]
        best_s[j], best_i[j] = exact[order], rows[order]
    return best_s, best_i


def _half_scores(half: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(n, m) fp16 products (fp32 results), a large matrix split over the cores (numkong releases the GIL)."""
    q16 = queries.astype(np.float16)
    n = half.shape[0]
    ways = _ways() if n >= HALF_SPLIT_ROWS else 1
    if ways == 1:
        return np.asarray(numkong.cdist(half, q16, metric="dot"), np.float32)
    bounds = np.linspace(0, n, ways + 1).astype(int)
    parts = _pool(ways).map(lambda lo_hi: np.asarray(numkong.cdist(half[lo_hi[0] : lo_hi[1]], q16, metric="dot"), np.float32),
                            itertools.pairwise(bounds))
    return np.concatenate(list(parts))


def _ways() -> int:
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), 4))


@functools.cache
def _pool(ways: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=ways, thread_name_prefix="half-scan")


@functools.cache
def half_scan_sound() -> bool:
    """Whether this CPU's fp16 kernel keeps within :data:`HALF_ERROR` (it accumulates in fp32 on x86 and Arm with
    numkong 7; a kernel accumulating in fp16 would not): checked once, on random unit rows, before any use."""
    rng = np.random.default_rng(12345)
    for dim in (128, 512):
        x = rng.standard_normal((4096, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x[:64] = x[0] * np.linspace(0.999, 1.0, 64, dtype=np.float32)[:, None]  # near-equal rows: large partial sums
        q = np.ascontiguousarray(x[:2] + 0.01)
        got = _half_scores(x.astype(np.float16), q)
        want = (x @ q.T).astype(np.float64)
        bound = HALF_ERROR * np.linalg.norm(q, axis=1)[None, :] * np.linalg.norm(x, axis=1)[:, None]
        if not np.all(np.abs(got - want) <= bound / 2):  # half the bound, or the margin is not there
            log.warning("fp16 products on this CPU are not within the proven error bound: brute force scans fp32 only")
            return False
    return True
