"""Pick each index's search ef by measuring it on the list it was built from.

Why: how hard a graph is to search depends on the data and grows with its size.
On face-like data (identities near-orthogonal, so a query gets little gradient
to follow until it is next to its mates) one ef gives mate recall 0.99 at 100k
faces and under 0.5 at 1M (docs/benchmarks.md). A fixed ef is either slow on
small lists or wrong on large ones, so the Indexer measures instead.

How: sample faces of the list, make a new "photo" of each (the face turned by a
random direction to cosine ``mate_cosine``: a same-person pair at the hard end of
SFace/ArcFace's range), search the graph as the Indexed Matcher does (top
``candidates`` before exact re-scoring) and count how often the sampled face
is among them. The ef doubles from the configured one until it finds at least
``target`` of them; then ``refine`` halvings of the last step search between
the last ef that failed and the first that held (256 -> 512 becomes 384, then
320 or 448), since search time grows with ef and a doubling can overshoot by
almost 2x. The smallest ef that held is stored with the index; the matcher
searches with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facedex.index.hnsw import HnswIndex


@dataclass(frozen=True)
class Calibration:
    ef: int
    recall: float  # at ``ef``
    reached: bool  # recall >= target (else ``ef`` is the largest allowed)
    curve: list[tuple[int, float]]  # (ef, recall) tried, in order
    samples: int

    def as_dict(self) -> dict[str, object]:
        return {"ef": self.ef, "recall": round(self.recall, 4), "reached": self.reached, "samples": self.samples,
                "curve": [[ef, round(r, 4)] for ef, r in self.curve]}


def probes_near(vectors: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """For each row, a unit vector at exactly ``cosine`` to it, in a random direction."""
    noise = rng.standard_normal(vectors.shape).astype(np.float32)
    noise -= (noise * vectors).sum(axis=1, keepdims=True) * vectors  # orthogonal to the row
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cosine * vectors + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def calibrate(
    index: HnswIndex,
    vectors: np.ndarray,
    candidates: int,
    start_ef: int,
    max_ef: int,
    target: float = 0.99,
    samples: int = 300,
    mate_cosine: float = 0.5,
    seed: int = 0,
    refine: int = 2,
) -> Calibration:
    """``vectors``: the indexed float32 rows, in key order (key i = row i)."""
    n = vectors.shape[0]
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=min(samples, n), replace=False)
    queries = probes_near(vectors[rows], mate_cosine, rng)
    k = min(candidates, n)
    curve: list[tuple[int, float]] = []

    def recall_at(ef: int) -> float:
        keys = index.search_keys(queries, k, ef=ef)
        recall = float((keys == rows[:, None]).any(axis=1).mean())
        curve.append((ef, recall))
        return recall

    failed: int | None = None  # the largest ef tried that missed the target
    ef = max(start_ef, k)
    while (recall := recall_at(ef)) < target and ef < max_ef:
        failed, ef = ef, min(2 * ef, max_ef)
    if recall >= target and failed is not None:
        for _ in range(refine):  # ef held, ``failed`` did not: try halfway
            mid = (failed + ef) // 2
            if mid in (failed, ef):
                break
            if (r := recall_at(mid)) >= target:
                ef, recall = mid, r
            else:
                failed = mid
    return Calibration(ef, recall, recall >= target, curve, len(rows))
