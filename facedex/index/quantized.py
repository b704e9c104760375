"""Quantized flat scans from faiss: PQ fast-scan (4-bit codes) and RaBitQ.

Why: on galleries with correlated identity structure sign bits need hundreds
of re-scores, while PQ fast-scan with 4-bit codes (``m`` sub-quantizers,
``m / 2`` bytes per face: 32 B and 64 B are the two sizes calibration tries)
keeps top-1 exact from a handful of candidates, at a scan speed near the
Hamming scan's (SIMD table look-ups). RaBitQ (d bits plus two floats per face)
is the most accurate per bit but faiss's kernel is 2-4x slower per byte, which
the cost model says (``KERNEL``). Both need training: PQ learns its codebooks
on a sample of the list, RaBitQ its centroid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from facedex.index.parts import Parts, merge_float

FILE = "codes.faiss"
TRAIN_SAMPLE = 16_384  # codebooks of 16 centroids per sub-space: more rows only cost time
TRAIN_ITERATIONS = 10
ADD_CHUNK = 262_144  # rows encoded per call: bounded temporaries


def _sample(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    n = vectors.shape[0]
    if n <= TRAIN_SAMPLE:
        return np.ascontiguousarray(vectors, np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, TRAIN_SAMPLE, replace=False))
    return np.ascontiguousarray(vectors[rows], np.float32)


class _FaissScan:
    kind: ClassVar[str] = ""
    KERNEL: ClassVar[float] = 1.0  # relative cost of scanning one byte of code, vs a Hamming scan

    def __init__(self, dim: int, params: dict[str, Any], index: faiss.Index, ways: int | None = None) -> None:
        """``ways``: parts for a lone query's scan (:mod:`facedex.index.parts`; None: one per core, as loaded to serve)."""
        self.dim = dim
        self.params = dict(params)
        self.code_size = int(index.code_size)
        self.codes = Parts(index, faiss.clone_index, merge_float, larger_is_better=True, ways=ways)

    @classmethod
    def make(cls, dim: int, params: dict[str, Any]) -> faiss.Index:
        raise NotImplementedError

    @classmethod
    def build(cls, vectors: np.ndarray, params: dict[str, Any]):  # type: ignore[no-untyped-def]
        dim = vectors.shape[1]
        index = cls.make(dim, params)
        if isinstance(index, faiss.IndexPQFastScan):
            index.pq.cp.niter = TRAIN_ITERATIONS
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # many tiny k-means: OpenMP threads only contend (18x slower on a busy box)
        try:
            index.train(_sample(vectors))
        finally:
            faiss.omp_set_num_threads(threads)
        out = cls(dim, params, index, ways=1)  # a build is saved whole; the matcher that loads it splits it
        out.add(vectors)
        return out

    @classmethod
    def load(cls, folder: Path, dim: int, params: dict[str, Any], writable: bool):  # type: ignore[no-untyped-def]
        index = faiss.read_index(str(folder / FILE))
        if index.d != dim:
            raise ValueError(f"{folder / FILE} is {index.d}-d, expected {dim}")
        return cls(dim, params, index)

    def __len__(self) -> int:
        return self.codes.ntotal

    def add(self, vectors: np.ndarray) -> None:
        for start in range(0, vectors.shape[0], ADD_CHUNK):
            self.codes.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK], np.float32))

    def remove(self, keys: np.ndarray) -> bool:
        return False

    def search(self, queries: np.ndarray, r: int, threads: int = 0, **knobs: Any) -> np.ndarray:
        return self.codes.search(np.ascontiguousarray(queries, np.float32), r, threads)

    def save(self, folder: Path) -> list[Path]:
        faiss.write_index(self.codes.whole(), str(folder / FILE))
        return [folder / FILE]

    def code_bytes(self) -> float:
        return float(self.code_size)

    def scan_cost(self, n: int, r: int, **knobs: Any) -> float:
        return n * self.code_bytes() * self.KERNEL

    def knob_ladder(self) -> list[dict[str, Any]]:
        return [{}]


class PQFastScan(_FaissScan):
    """``m`` sub-quantizers of 4 bits each (``m`` must divide the dimension).

    Searched with faiss's fast-scan kernel 15 (the database in blocks, no query blocks, candidates kept in a
    reservoir rather than a heap): the same candidates as faiss's default choice, cheaper for batches. Measured
    (ad hoc, AMD EPYC 2-core VM, 1M x 32 B codes, R = 512, medians of 5 interleaved passes): 0.52 against 0.67 ms per
    query in batches of 8-32 on two threads, 1.07 against 1.39 on one; a lone query alike (~1.5 ms); 100k faces,
    R = 64-512, 15-25 % less per batched query, never more."""

    kind: ClassVar[str] = "pq_fastscan"
    IMPLEM: ClassVar[int] = 15

    def __init__(self, dim: int, params: dict[str, Any], index: faiss.Index, ways: int | None = None) -> None:
        index.implem = self.IMPLEM  # also for files written with the default (0); the parts are clones, which keep it
        super().__init__(dim, params, index, ways)

    @classmethod
    def make(cls, dim: int, params: dict[str, Any]) -> faiss.Index:
        m = int(params["m"])
        if m < 1 or dim % m:
            raise ValueError(f"pq_fastscan: m={m} does not divide the dimension {dim}")
        return faiss.IndexPQFastScan(dim, m, 4, faiss.METRIC_INNER_PRODUCT)


class RaBitQ(_FaissScan):
    kind: ClassVar[str] = "rabitq"
    KERNEL: ClassVar[float] = 3.0

    @classmethod
    def make(cls, dim: int, params: dict[str, Any]) -> faiss.Index:
        return faiss.IndexRaBitQ(dim, faiss.METRIC_INNER_PRODUCT)
