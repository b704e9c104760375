"""An HNSW graph over descriptors, keyed by face id, with usearch underneath.

Why usearch: wheels on PyPI (no compiler), real ``remove`` (hnswlib only marks
deleted), f16/i8 storage at half/quarter memory with the same recall, and
``view`` (memory-mapped) loading in milliseconds. The graph holds vectors at
``precision``; exact scores come from the float32 vectors kept beside it.

Library keys are ordinals into ``ids`` (the face-id map): the n-th face added
gets key n. Removing a face frees its key for good; the graph is rebuilt (by
the Indexer) when removals pile up.

:class:`HnswScan` is the same graph as one of the engine's index kinds
(:mod:`facedex.index.base`): calibration may still pick it for a gallery where
a graph is cheaper than a flat scan (small lists), trying the search ef from
``EF_LADDER``. It is only tried up to ``index.hnsw_max_faces``: on identity
data a graph needs a huge ef at scale and takes minutes to build (issue 11).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from usearch.index import Index, MetricKind

INDEX_FILE = "index.usearch"
IDS_FILE = "ids.npy"


@dataclass(frozen=True)
class IndexParams:
    """Build and search parameters; defaults chosen by measurement (docs/benchmarks.md)."""

    connectivity: int = 24  # M: graph degree
    expansion_add: int = 96  # ef_construction
    expansion_search: int = 128  # ef at search time, raised to k when k is larger
    precision: Literal["f32", "f16", "i8"] = "i8"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _typed(progress: Callable[[int, int], bool]) -> Callable[[int, int], bool]:
    """usearch checks a callback's annotations as objects; this module's are strings (PEP 563)."""

    def callback(done, total):  # type: ignore[no-untyped-def]
        return bool(progress(done, total))

    callback.__annotations__ = {"done": int, "total": int, "return": bool}
    return callback


class HnswIndex:
    def __init__(self, dim: int, params: IndexParams = IndexParams(), index: Index | None = None) -> None:
        self.dim = dim
        self.params = params
        self.index = index or Index(
            ndim=dim,
            metric=MetricKind.IP,
            dtype=params.precision,
            connectivity=params.connectivity,
            expansion_add=params.expansion_add,
            expansion_search=params.expansion_search,
        )
        self.ids = np.empty((0, 16), np.uint8)  # key -> face id
        self.pos: dict[bytes, int] = {}  # face id -> key, for live faces only

    def __len__(self) -> int:
        return len(self.pos)

    def add(
        self, face_ids: np.ndarray, vectors: np.ndarray, threads: int = 0, progress: Callable[[int, int], bool] | None = None
    ) -> None:
        """Add faces ((n, 16) uint8 ids, (n, dim) float32 vectors); a face already present is replaced."""
        n = face_ids.shape[0]
        if n == 0:
            return
        raw = face_ids.tobytes()
        keys_of = [raw[i : i + 16] for i in range(0, 16 * n, 16)]
        present = [k for k in keys_of if k in self.pos]
        if present:
            self.remove(np.frombuffer(b"".join(present), np.uint8).reshape(-1, 16))
        start = self.ids.shape[0]
        keys = np.arange(start, start + n, dtype=np.uint64)
        self.ids = np.concatenate([self.ids, face_ids.astype(np.uint8, copy=False)])
        self.pos.update(zip(keys_of, range(start, start + n)))
        self.index.add(
            keys, np.ascontiguousarray(vectors, dtype=np.float32), threads=threads, progress=_typed(progress) if progress else None
        )

    def remove(self, face_ids: np.ndarray) -> int:
        """Remove faces by id; unknown ids are ignored. Returns how many were removed."""
        raw = face_ids.tobytes()
        keys = [self.pos.pop(raw[i : i + 16]) for i in range(0, len(raw), 16) if raw[i : i + 16] in self.pos]
        if keys:
            self.index.remove(np.array(keys, dtype=np.uint64))
        return len(keys)

    def _search(self, queries: np.ndarray, k: int, ef: int | None, threads: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys (m, k') int64 with -1 where fewer were found, inner products (m, k') at the graph's precision)."""
        k = min(k, len(self))
        m = queries.shape[0]
        if k == 0:
            return np.full((m, 0), -1, np.int64), np.zeros((m, 0), np.float32)
        self.index.expansion_search = max(k, ef or self.params.expansion_search)
        found = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, threads=threads)
        keys = np.asarray(found.keys).reshape(m, -1).astype(np.int64)
        scores = 1.0 - np.asarray(found.distances, dtype=np.float32).reshape(m, -1)  # usearch IP distance = 1 - dot
        # one query gives Matches (no counts), several give BatchMatches
        counts = np.asarray(found.counts).reshape(m) if hasattr(found, "counts") else np.array([len(found.keys)])
        width = int(counts.max()) if m else 0
        keys, scores = keys[:, :width], scores[:, :width]
        invalid = np.arange(width)[None, :] >= counts[:, None]
        keys[invalid] = -1
        scores[invalid] = -np.inf
        return keys, scores

    def search_keys(self, queries: np.ndarray, k: int, ef: int | None = None, threads: int = 0) -> np.ndarray:
        """Approximate top-k as library keys (rows of ``ids``), for re-scoring against stored vectors."""
        return self._search(queries, k, ef, threads)[0]

    def search(self, queries: np.ndarray, k: int, ef: int | None = None, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k: (face ids (m, k', 16) uint8, scores (m, k') float32), best first, k' <= k.

        Scores are inner products at the graph's precision; re-score with exact
        vectors where exact similarities matter.
        """
        keys, scores = self._search(queries, k, ef, threads)
        ids = self.ids[np.maximum(keys, 0)]
        ids[keys < 0] = 0
        return ids, scores

    def save(self, folder: Path) -> list[Path]:
        """Write the graph and the id map into ``folder``; returns the files written."""
        folder.mkdir(parents=True, exist_ok=True)
        self.index.save(str(folder / INDEX_FILE))
        live = np.zeros(self.ids.shape[0], bool)
        live[list(self.pos.values())] = True
        np.save(folder / IDS_FILE, np.where(live[:, None], self.ids, 0))
        return [folder / INDEX_FILE, folder / IDS_FILE]

    @classmethod
    def load(cls, folder: Path, dim: int, params: IndexParams, view: bool = False) -> HnswIndex:
        """Load from ``folder``; ``view`` memory-maps the graph (read-only, loads in milliseconds)."""
        index = Index.restore(str(folder / INDEX_FILE), view=view)
        if index is None or index.ndim != dim:
            raise ValueError(f"{folder / INDEX_FILE} is not a {dim}-d usearch index")
        out = cls(dim, params, index)
        out.ids = np.load(folder / IDS_FILE)
        live = out.ids.any(axis=1)
        raw = out.ids.tobytes()
        out.pos = {raw[16 * i : 16 * i + 16]: int(i) for i in np.flatnonzero(live)}
        return out


EF_LADDER = (64, 128, 256, 512, 1024)  # search ef calibration tries, cheapest first
_PRECISION_BYTES = {"f32": 4, "f16": 2, "i8": 1}


def _row_ids(keys: np.ndarray) -> np.ndarray:
    """Face-id-shaped ids that encode keys (+1: the all-zero id means "removed" in HnswIndex's id map)."""
    ids = np.zeros((len(keys), 16), np.uint8)
    ids[:, :8] = (np.asarray(keys, np.uint64) + 1).astype(">u8").view(np.uint8).reshape(-1, 8)
    return ids


class HnswScan:
    """The HNSW graph as an index kind: keys are the graph's own ordinals (row numbers)."""

    kind: ClassVar[str] = "hnsw"

    def __init__(self, dim: int, params: dict[str, Any], graph: HnswIndex | None = None) -> None:
        self.dim = dim
        self.hnsw = IndexParams(**{k: v for k, v in params.items() if k in IndexParams.__dataclass_fields__})
        self.params = self.hnsw.as_dict()
        self.graph = graph if graph is not None else HnswIndex(dim, self.hnsw)

    @classmethod
    def build(cls, vectors: np.ndarray, params: dict[str, Any]) -> HnswScan:
        out = cls(vectors.shape[1], params)
        out.add(vectors, threads=int(params.get("threads", 0)))
        return out

    @classmethod
    def load(cls, folder: Path, dim: int, params: dict[str, Any], writable: bool) -> HnswScan:
        out = cls(dim, params)
        out.graph = HnswIndex.load(folder, dim, out.hnsw, view=not writable)  # a graph refresh changes lives in memory
        return out

    def add(self, vectors: np.ndarray, threads: int = 0) -> None:
        start = self.graph.ids.shape[0]
        self.graph.add(_row_ids(np.arange(start, start + vectors.shape[0])), vectors, threads=threads)

    def remove(self, keys: np.ndarray) -> bool:
        self.graph.remove(_row_ids(keys))
        return True

    def __len__(self) -> int:
        return int(self.graph.ids.shape[0])

    def search(self, queries: np.ndarray, r: int, threads: int = 0, **knobs: Any) -> np.ndarray:
        return self.graph.search_keys(queries, r, ef=knobs.get("ef"), threads=threads)

    def save(self, folder: Path) -> list[Path]:
        return self.graph.save(folder)

    def code_bytes(self) -> float:
        return self.dim * _PRECISION_BYTES[self.hnsw.precision] + 2 * 4 * self.hnsw.connectivity

    def scan_cost(self, n: int, r: int, **knobs: Any) -> float:
        ef = max(r, int(knobs.get("ef", self.hnsw.expansion_search)))  # usearch raises ef to the count asked for
        # each expanded node reads its 2M base-layer neighbours: random reads of a vector plus a cache miss each
        return min(n, ef * 2 * self.hnsw.connectivity) * (self.dim * _PRECISION_BYTES[self.hnsw.precision] + 64)

    def knob_ladder(self) -> list[dict[str, Any]]:
        return [{"ef": ef} for ef in EF_LADDER]
