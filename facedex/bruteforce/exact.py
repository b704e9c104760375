"""Exact top-k by inner product over a matrix of normalised descriptors.

Measured on the 2-core dev box (docs/benchmarks.md): one BLAS GEMV plus
``argpartition`` runs at memory bandwidth, and one GEMM for a batch of
references is compute-bound near SGEMM peak, beating faiss ``knn`` on both. So
this is plain numpy; the database is cut into blocks only to bound the score
matrix (``references x block`` floats) for large batches.
"""

from __future__ import annotations

import numpy as np

_MAX_SCORE_FLOATS = 1 << 24  # 64 MiB of float32 scores per block
# rows of a filtered search are gathered this many at a time (1 MiB of 512-d rows): the copy stays in cache
# for the product, so a filter keeping a fraction f of a list costs about f of a full scan, not a 2x copy of it
_GATHER_ROWS = 512
# a gathered row costs ~3x a streamed one (bench filters at 1M: 0.28 against 0.095 us): where the kept rows are
# at least a third of the span they lie in, scoring the whole span and picking their columns is cheaper
_DENSE = 1 / 3


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
