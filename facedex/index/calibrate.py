"""Choose each list's index kind and parameters by measuring them on the list itself.

Why: no code wins everywhere (issue 11): sign bits hold on isotropic identity
clusters, PQ fast-scan on correlated identity structure, graphs only on small
lists, and how many candidates must be re-scored depends on the gallery. So
the Indexer builds every candidate configuration (:mod:`facedex.index.registry`)
and keeps the cheapest that is accurate enough on this list.

How: sample faces of the list and make a new "photo" of each: the face turned
to a mate cosine spread over 0.4-0.8 (the range of same-person pairs for
SFace/ArcFace-class models, not one generator's value), half of them in a
random direction and half along the difference of two random faces of the
list. Real photo variation (pose, light, age) lies in the directions the
gallery itself varies along, which isotropic noise misses on correlated
embeddings; the difference of two rows follows the gallery's covariance without
assuming any model of it. Exact truth for every probe comes from one blocked
GEMM over the list. Each configuration (kind, build parameters, search knobs
such as HNSW's ef, and the number ``r`` of candidates re-scored, from
``RESCORE_LADDER``) answers the probes exactly as the matcher would (scan, fp16
re-score, fp32 final scores) and is scored on:

- top-1 agreement: its best face is exact search's best face;
- recall@10 of what a user would see: of exact search's top 10, the photo's own
  face and every face at similarity >= ``RELEVANT`` (the other faces of the same
  person, and the impostors a large list lifts into the match range) must be in
  the configuration's top 10. The list has no identity labels, so this stands
  for mate recall: a planted probe's mates are exactly such answers, and on a
  1M list the hard ones sit at 0.3-0.4 among the highest impostors.

Among the configurations reaching both targets the fastest wins, timed on
this machine (:func:`time_points`: one query at a time, scan and re-score,
medians of interleaved rounds); if none does, the most accurate (then the
cheapest by the bytes a query touches, :meth:`Scan.scan_cost`) is used and the
choice carries a ``warning``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from facedex.bruteforce.exact import topk
from facedex.index import rescore
from facedex.index.base import Scan
from facedex.index.registry import kind as kind_class

MATE_COSINES = (0.4, 0.5, 0.6, 0.7, 0.8)
RESCORE_LADDER = (16, 32, 64, 128, 256, 512)
TOP = 10  # recall is measured at the matcher's default limit
RELEVANT = 0.3  # cosine from which an answer is in the match range of ArcFace/SFace-class models (FAR ~1e-4 and below)
SHAPED = 0.5  # share of calibration photos turned along the gallery's own variation (the rest: isotropic)


def rescore_bytes(dim: int) -> float:
    """One fp16 re-score: the row (2 bytes a dimension) plus a cache miss's worth of overhead."""
    return 2 * dim + 128


@dataclass
class Point:
    """One configuration measured: what it is, how accurate, how costly."""

    kind: str
    params: dict[str, Any]
    knobs: dict[str, Any]
    rescore: int
    top1: float
    recall10: float
    cost: float  # estimated bytes touched per query
    latency_us: float | None = None  # measured: median single-query scan + re-score (points that reached the targets)

    def reached(self, top1: float, recall: float) -> bool:
        return self.top1 >= top1 and self.recall10 >= recall

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "top1": round(self.top1, 4), "recall10": round(self.recall10, 4), "cost": round(self.cost)}


@dataclass
class Choice:
    """The point served (``best``), whether it reached the targets, and the curve it was chosen from."""

    best: Point
    reached: bool
    warning: str | None
    samples: int
    seconds: float
    curve: list[Point] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """meta.json's ``calibration``: the best point's fields at the top level, then how it was chosen."""
        return {**self.best.as_dict(), "reached": self.reached, "warning": self.warning, "samples": self.samples,
                "seconds": round(self.seconds, 3), "curve": [p.as_dict() for p in self.curve]}


TIMED_QUERIES = 16
TIMING_ROUNDS = 3


def time_points(points: list[tuple[Point, Scan]], probes: np.ndarray, rows16: rescore.Rows, rows32: rescore.Rows) -> None:
    """Set each point's ``latency_us``: the median time of one query per call (its scan on one core, then its re-score), in
    rounds that go over every point in turn, so a machine whose speed drifts slows them alike.

    Why measure: the bytes a query touches rank configurations badly across kinds (a PQ fast-scan byte costs
    more than a Hamming byte, a re-scored row far more than its bytes), so the choice is made on this machine's
    clock among the configurations accurate enough; the byte estimate only breaks ties."""
    if not points:
        return
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one query per call on one core (a build's scans are whole; a matcher splits them)
    times: list[list[float]] = [[] for _ in points]
    try:
        for _ in range(TIMING_ROUNDS):
            for j, (point, scan) in enumerate(points):
                for q in range(min(TIMED_QUERIES, len(probes))):
                    query = probes[q : q + 1]
                    started = time.perf_counter()
                    cands = scan.search(query, point.rescore, **point.knobs)
                    rescore.rerank(query, cands, rows16, rows32, TOP)
                    times[j].append(time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    for (point, _), spent in zip(points, times):
        point.latency_us = round(float(np.median(spent)) * 1e6, 1)


def probes_near(vectors: np.ndarray, cosines: np.ndarray | float, rng: np.random.Generator,
                directions: np.ndarray | None = None) -> np.ndarray:
    """For each row, a unit vector at exactly its ``cosines`` to it, turned towards ``directions`` (default random)."""
    cos = np.broadcast_to(np.asarray(cosines, np.float32), (vectors.shape[0],))[:, None]
    noise = (rng.standard_normal(vectors.shape) if directions is None else directions).astype(np.float32)
    noise -= (noise * vectors).sum(axis=1, keepdims=True) * vectors  # orthogonal to the row
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cos * vectors + np.sqrt(1 - cos**2) * noise).astype(np.float32)


def calibrate(
    vectors: np.ndarray,
    vectors16: np.ndarray,
    configs: list[tuple[str, dict[str, Any]]],
    target_top1: float = 0.997,
    target_recall: float = 0.99,
    samples: int = 500,
    max_rescore: int = 512,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> tuple[Choice, Scan]:
    """Build each configuration on ``vectors`` (float32 unit rows; ``vectors16`` their fp16 copy), measure, choose.

    Returns the choice and the chosen scan (already built over every row), so the build does not repeat it.
    """
    if not configs:
        raise ValueError("no index configuration to try")
    started = time.perf_counter()
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(samples, n), replace=False))
    cosines = rng.permutation(np.resize(np.asarray(MATE_COSINES, np.float32), len(rows)))
    directions = rng.standard_normal((len(rows), dim)).astype(np.float32)
    shaped = np.flatnonzero(rng.random(len(rows)) < SHAPED)
    pairs = rng.choice(n, size=(2, len(shaped)))
    directions[shaped] = np.asarray(vectors[pairs[0]]) - np.asarray(vectors[pairs[1]])
    probes = probes_near(np.asarray(vectors[rows]), cosines, rng, directions)
    truth_s, truth = topk(probes, vectors, TOP)  # exact search, as the brute-force Matcher does it (blocked GEMM)
    relevant = (truth_s >= RELEVANT) | (truth == rows[:, None])  # (probes, TOP): answers the index must also give
    ladder = [r for r in RESCORE_LADDER if r <= max_rescore] or [max_rescore]

    def rows16(k: np.ndarray) -> np.ndarray:
        return np.asarray(vectors16[k])

    def rows32(k: np.ndarray) -> np.ndarray:
        return np.asarray(vectors[k])

    def measure(cands: np.ndarray) -> tuple[float, float]:
        keys, _ = rescore.rerank(probes, cands, rows16, rows32, TOP)
        top1 = np.mean([len(kk) > 0 and kk[0] == truth[q, 0] for q, kk in enumerate(keys)])
        found = np.stack([np.isin(truth[q], keys[q]) for q in range(len(rows))])
        recall = float(found[relevant].mean()) if relevant.any() else 1.0
        return float(top1), recall

    curve: list[Point] = []
    scans: dict[int, Scan] = {}
    timed: list[tuple[Point, Scan]] = []  # the points that reached the targets: the choice is among them
    for c, (name, params) in enumerate(configs):
        scan = kind_class(name).build(vectors, params)
        scans[c] = scan
        per_query_search = name == "hnsw"  # a graph's top-r depends on r; a flat scan's top-r is a prefix of its top-512
        for knobs in scan.knob_ladder():
            wide = None if per_query_search else scan.search(probes, ladder[-1], **knobs)
            for r in ladder:
                cands = scan.search(probes, r, **knobs) if wide is None else wide[:, :r]
                top1, recall = measure(cands)
                cost = scan.scan_cost(n, r, **knobs) + r * rescore_bytes(dim)
                curve.append(point := Point(name, scan.params, knobs, r, top1, recall, cost))
                if point.reached(target_top1, target_recall):
                    timed.append((point, scan))
                    break  # a larger r only costs more
        if progress:
            progress((c + 1) / len(configs))
    reached = [p for p in curve if p.reached(target_top1, target_recall)]
    if reached:
        time_points(timed, probes, rows16, rows32)
        best = min(reached, key=lambda p: (p.latency_us if p.latency_us is not None else float("inf"), p.cost))
        warning = None
    else:
        best = min(curve, key=lambda p: (-p.top1, -p.recall10, p.cost))
        warning = (f"no index configuration reached top-1 {target_top1} and mate recall@10 {target_recall} on this list; "
                   f"serving the most accurate: {best.kind} {best.params} r={best.rescore} "
                   f"(top-1 {best.top1:.4f}, recall@10 {best.recall10:.4f})")
    chosen = next(scans[c] for c, (name, _) in enumerate(configs) if name == best.kind and scans[c].params == best.params)
    choice = Choice(best, not warning, warning, len(rows), time.perf_counter() - started, curve)
    return choice, chosen
