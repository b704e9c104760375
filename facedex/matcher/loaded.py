"""One index in a matcher's memory: a :class:`FaceIndex` of the kind its build chose, kept fresh.

Candidates come from the kind's scan and are re-scored from the fp16 vectors,
the returned faces scored from the float32 ones (both memory-mapped from the
index folder; faces added by refresh are kept in memory after them), so a face
gets the same similarity here as from the brute-force Matcher. ``head`` is the
list's change-log sequence this index reflects; :meth:`apply` moves it
forward: a detach tombstones the face (never returned again), an attach
appends its codes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from facedex import descriptors
from facedex.faces.store import ListDelta
from facedex.index import FaceIndex
from facedex.rwlock import RWLock
from facedex.storage.base import IndexMeta


class LoadedIndex:
    def __init__(self, meta: IndexMeta, folder: Path, writable: bool) -> None:
        started = time.perf_counter()
        if meta.format != IndexMeta.format or not meta.kind:
            raise ValueError(f"index {meta.index_id} has on-disk format {meta.format}; this matcher reads {IndexMeta.format}")
        self.meta = meta
        self.list_id = meta.list_id
        self.label = meta.label
        self.dim = descriptors.get_version(meta.descriptor_version).dim
        self.index = FaceIndex.load(folder, self.dim, meta.kind, meta.params, writable)
        self.head = meta.change_seq
        self.lock = RWLock()
        self.load_seconds = time.perf_counter() - started
        self.request_seconds: float | None = None  # moving average of a batch's search time per request in it

    def observe(self, requests: int, seconds: float) -> None:
        per = seconds / max(requests, 1)
        self.request_seconds = per if self.request_seconds is None else 0.9 * self.request_seconds + 0.1 * per

    def expected_seconds(self, requests: int) -> float:
        """How long a batch of ``requests`` should take to search (infinite before the first was timed)."""
        return float("inf") if self.request_seconds is None else self.request_seconds * requests

    @property
    def size(self) -> int:
        return len(self.index)

    def warm_up(self, n: int = 16) -> None:
        """Map the re-score rows and run a few searches, so the first real requests do not pay for page faults."""
        self.index.map_vectors()
        if self.size:
            rng = np.random.default_rng(0)
            q = rng.standard_normal((n, self.dim)).astype(np.float32)
            self.search(q / np.linalg.norm(q, axis=1, keepdims=True), 10)

    def search(self, queries: np.ndarray, k: int, candidates: int = 0,
               split: list[float] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query: (face ids (k', 16) uint8, exact cosines (k',) float32), best first.

        One scan serves every query (faiss blocks the queries over the codes, so one pass over memory answers
        many waiting requests); at least the calibrated number of candidates (or ``candidates``) is re-scored.
        ``split`` gets the scan's and the re-score's seconds appended.
        """
        return self.index.search(queries, k, candidates, split=split)

    def apply(self, delta: ListDelta) -> None:
        """Bring the index to ``delta.head``: tombstone detached faces, append attached (or replaced) ones."""
        if delta.removed:
            self.index.remove(np.frombuffer(b"".join(delta.removed), np.uint8).reshape(-1, 16))
        if delta.upserted_ids:
            self.index.add(np.frombuffer(b"".join(delta.upserted_ids), np.uint8).reshape(-1, 16), delta.upserted)
        self.head = delta.head
