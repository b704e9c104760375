"""One list's index in a matcher's memory: the graph, the id map, and the exact vectors.

Candidates come from the graph (at its i8/f16 precision) and are re-scored
with the float32 vectors (``vectors.npy``, memory-mapped; faces added by
refresh are kept in memory after them), so a face gets the same similarity
here as from the brute-force Matcher. ``head`` is the list's change-log
sequence this index reflects; :meth:`apply` moves it forward.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from facedex import descriptors
from facedex.faces.store import ListDelta
from facedex.index import HnswIndex, IndexParams
from facedex.rwlock import RWLock
from facedex.storage.base import VECTORS_FILE, IndexMeta


class LoadedIndex:
    def __init__(self, meta: IndexMeta, folder: Path, writable: bool) -> None:
        started = time.perf_counter()
        self.meta = meta
        self.list_id = meta.list_id
        self.dim = descriptors.get_version(meta.descriptor_version).dim
        # a graph that refresh changes must live in memory; a read-only one is memory-mapped
        self.index = HnswIndex.load(folder, self.dim, IndexParams(**meta.params), view=not writable)  # type: ignore[arg-type]
        self.base = np.load(folder / VECTORS_FILE, mmap_mode="r")
        if self.base.shape != (self.index.ids.shape[0], self.dim):
            raise ValueError(f"index {meta.index_id}: vectors.npy does not match the id map")
        self.extra = np.empty((0, self.dim), np.float32)  # vectors of keys >= len(base), added by refresh
        self.extra_n = 0
        self.head = meta.change_seq
        self.lock = RWLock()
        self.load_seconds = time.perf_counter() - started

    @property
    def size(self) -> int:
        return len(self.index)

    def vectors_of(self, keys: np.ndarray) -> np.ndarray:
        nb = self.base.shape[0]
        out = np.empty((len(keys), self.dim), np.float32)
        old = keys < nb
        out[old] = self.base[keys[old]]
        out[~old] = self.extra[keys[~old] - nb]
        return out

    def warm_up(self, n: int = 16) -> None:
        """Touch the graph and vectors once so the first real request does not pay for page faults."""
        if self.size:
            rng = np.random.default_rng(0)
            q = rng.standard_normal((n, self.dim)).astype(np.float32)
            self.search(q / np.linalg.norm(q, axis=1, keepdims=True), 10, 10)

    def search(self, queries: np.ndarray, k: int, candidates: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query: (face ids (k', 16) uint8, exact cosines (k',) float32), best first."""
        keys = self.index.search_keys(queries, max(k, candidates))
        ids_out, scores_out = [], []
        for q in range(queries.shape[0]):
            row = keys[q][keys[q] >= 0]
            exact = self.vectors_of(row) @ queries[q]
            order = np.lexsort((row, -exact))[:k]
            ids_out.append(self.index.ids[row[order]])
            scores_out.append(exact[order].astype(np.float32))
        return ids_out, scores_out

    def apply(self, delta: ListDelta) -> None:
        """Bring the index to ``delta.head``: remove detached faces, add (or replace) attached ones."""
        if delta.removed:
            self.index.remove(np.frombuffer(b"".join(delta.removed), np.uint8).reshape(-1, 16))
        if delta.upserted_ids:
            ids = np.frombuffer(b"".join(delta.upserted_ids), np.uint8).reshape(-1, 16)
            first_key = self.index.ids.shape[0]
            self.index.add(ids, delta.upserted)
            n = self.index.ids.shape[0] - first_key
            need = first_key + n - self.base.shape[0]
            if need > self.extra.shape[0]:
                grown = np.empty((max(need, 2 * self.extra.shape[0], 1024), self.dim), np.float32)
                grown[: self.extra_n] = self.extra[: self.extra_n]
                self.extra = grown
            self.extra[first_key - self.base.shape[0] : need] = delta.upserted
            self.extra_n = need
        self.head = delta.head
