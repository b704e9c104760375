"""One list's index: face ids, a scan of some kind, and the vectors its candidates are re-scored from.

Keys are row numbers into the id map and the vector files. Removal is a
tombstone (the live bitmap, filtered after the scan, which then fetches as
many more candidates as there are tombstones, so the ``r`` best live ones are
always there) unless the kind removes for real (HNSW). Additions append to the
scan and to in-memory vector blocks after the memory-mapped files; replacing a
face's descriptor is a removal plus an addition. A removed key is never
revived, so a face detached once cannot come back from a stale row.

Files: ``face_ids.npy`` (16-byte face ids, zero where removed), ``vectors.npy``
(float32, the final scores), ``vectors16.npy`` (fp16, the re-score), plus the
kind's own files.
"""

from __future__ import annotations

import mmap
import time
from pathlib import Path
from typing import Any

import numpy as np

from facedex.index import rescore
from facedex.index.base import Scan
from facedex.index.registry import kind as kind_class

IDS_FILE = "face_ids.npy"
VECTORS_FILE = "vectors.npy"
VECTORS16_FILE = "vectors16.npy"


class _Grow:
    """An array that appends in amortised O(1) (capacity doubles)."""

    def __init__(self, width: int, dtype: np.dtype | type, data: np.ndarray | None = None) -> None:
        self.n = 0 if data is None else len(data)
        self.a = np.empty((max(self.n, 16), width) if width else (max(self.n, 16),), dtype)
        if data is not None:
            self.a[: self.n] = data

    def append(self, rows: np.ndarray) -> None:
        need = self.n + len(rows)
        if need > len(self.a):
            grown = np.empty((max(need, 2 * len(self.a)),) + self.a.shape[1:], self.a.dtype)
            grown[: self.n] = self.a[: self.n]
            self.a = grown
        self.a[self.n : need] = rows
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.a[: self.n]


class FaceIndex:
    def __init__(self, scan: Scan, ids: np.ndarray, vectors: np.ndarray, vectors16: np.ndarray,
                 knobs: dict[str, Any] | None = None, rescore_n: int = 64) -> None:
        self.scan = scan
        self.knobs = dict(knobs or {})
        self.rescore_n = rescore_n
        self.dim = vectors.shape[1]
        self.base32, self.base16 = vectors, vectors16  # memory-mapped when loaded from a folder
        self.nbase = vectors.shape[0]
        self.extra32 = _Grow(self.dim, np.float32)  # rows of keys >= nbase, added by refresh
        self.extra16 = _Grow(self.dim, np.float16)
        self.ids = _Grow(16, np.uint8, ids)
        self.live = _Grow(0, np.bool_, ids.any(axis=1))
        self.count = int(self.live.view.sum())
        self._pos: dict[bytes, int] | None = None  # face id -> key, made on the first change (a build never needs it)
        self.tombstones = 0  # dead keys the scan still returns

    # ------------------------------------------------------------------ make
    @classmethod
    def build(cls, kind: str, params: dict[str, Any], ids: np.ndarray, vectors: np.ndarray,
              knobs: dict[str, Any] | None = None, rescore_n: int = 64) -> FaceIndex:
        vectors = np.ascontiguousarray(vectors, np.float32)
        return cls(kind_class(kind).build(vectors, params), ids, vectors, vectors.astype(np.float16), knobs, rescore_n)

    @classmethod
    def load(cls, folder: Path, dim: int, kind: str, params: dict[str, Any], writable: bool) -> FaceIndex:
        """``params``: as :meth:`describe` gave them (meta.json)."""
        scan = kind_class(kind).load(folder, dim, params["scan"], writable)
        ids = np.load(folder / IDS_FILE)
        v32 = np.load(folder / VECTORS_FILE, mmap_mode="r")
        v16 = np.load(folder / VECTORS16_FILE, mmap_mode="r")
        if v32.shape != (len(ids), dim) or v16.shape != v32.shape or v16.dtype != np.float16:
            raise ValueError(f"{folder}: vector files do not match the id map ({len(ids)} x {dim})")
        return cls(scan, ids, v32, v16, params.get("knobs"), int(params["rescore"]))

    def map_vectors(self) -> None:
        """Map every page of the memory-mapped fp16 rows into this process (1 KB a face at 512-d).

        Why: each query re-scores hundreds of random fp16 rows; until a page has been touched, touching it is a page
        fault (a disk read if the file is not in the page cache), so a freshly loaded 1M index would answer its first
        thousands of queries slower by the faults. The fp32 rows are read for the k answered faces only: left to
        fault in. The pages stay file-backed: the kernel may still reclaim them under memory pressure.
        """
        rows = self.base16
        if isinstance(rows, np.memmap) and rows.size:  # rows held in memory (a build) have nothing to map
            per_page = max(1, mmap.PAGESIZE // rows.itemsize)
            np.add.reduce(rows.reshape(-1)[::per_page], dtype=np.float64)  # one read per page

    def describe(self) -> dict[str, Any]:
        """What :meth:`load` needs besides the files (goes into meta.json's params)."""
        return {"scan": self.scan.params, "knobs": self.knobs, "rescore": self.rescore_n}

    def save(self, folder: Path) -> list[Path]:
        """Write every file once; the vectors are written as given (no re-encoding at load)."""
        folder.mkdir(parents=True, exist_ok=True)
        ids = self.ids.view.copy()
        ids[~self.live.view] = 0
        np.save(folder / IDS_FILE, ids)
        np.save(folder / VECTORS_FILE, self._all(self.base32, self.extra32))
        np.save(folder / VECTORS16_FILE, self._all(self.base16, self.extra16))
        return [*self.scan.save(folder), folder / IDS_FILE, folder / VECTORS_FILE, folder / VECTORS16_FILE]

    @staticmethod
    def _all(base: np.ndarray, extra: _Grow) -> np.ndarray:
        return base if extra.n == 0 else np.concatenate([base, extra.view])

    # ---------------------------------------------------------------- change
    def __len__(self) -> int:
        return self.count

    @property
    def pos(self) -> dict[bytes, int]:
        if self._pos is None:
            raw = self.ids.view.tobytes()
            self._pos = {raw[16 * i : 16 * i + 16]: int(i) for i in np.flatnonzero(self.live.view)}
        return self._pos

    @property
    def keys(self) -> int:
        return self.ids.n

    def remove(self, face_ids: np.ndarray) -> int:
        raw = face_ids.tobytes()
        keys = np.array([self.pos.pop(raw[i : i + 16]) for i in range(0, len(raw), 16) if raw[i : i + 16] in self.pos], np.int64)
        if len(keys):
            self.live.a[keys] = False
            self.count -= len(keys)
            if not self.scan.remove(keys):
                self.tombstones += len(keys)
        return len(keys)

    def add(self, face_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add faces; one already present gets its new descriptor (old key tombstoned, new key appended)."""
        if len(face_ids) == 0:
            return
        face_ids = np.ascontiguousarray(face_ids, np.uint8)
        _, first = np.unique(face_ids[::-1], axis=0, return_index=True)  # the last row of a repeated id wins
        keep = np.sort(len(face_ids) - 1 - first)
        face_ids, vectors = face_ids[keep], np.ascontiguousarray(vectors[keep], np.float32)
        self.remove(face_ids)
        start = self.ids.n
        self.scan.add(vectors)
        self.extra32.append(vectors)
        self.extra16.append(vectors.astype(np.float16))
        self.ids.append(face_ids)
        self.live.append(np.ones(len(face_ids), np.bool_))
        self.count += len(face_ids)
        raw = face_ids.tobytes()
        self.pos.update((raw[16 * i : 16 * i + 16], start + i) for i in range(len(face_ids)))

    # ---------------------------------------------------------------- search
    def rows(self, keys: np.ndarray, half: bool) -> np.ndarray:
        base, extra = (self.base16, self.extra16) if half else (self.base32, self.extra32)
        if extra.n == 0 or keys.max(initial=-1) < self.nbase:
            return np.asarray(base[keys])
        out = np.empty((len(keys), self.dim), base.dtype)
        old = keys < self.nbase
        out[old] = base[keys[old]]
        out[~old] = extra.a[keys[~old] - self.nbase]
        return out

    def candidates(self, queries: np.ndarray, r: int, threads: int = 0, **knobs: Any) -> np.ndarray:
        """(m, <= r + tombstones) live keys, best first by the scan; -1 = none."""
        knobs = {**self.knobs, **knobs}
        cands = self.scan.search(queries, r + self.tombstones, threads=threads, **knobs)
        valid = cands >= 0
        valid[valid] = self.live.a[cands[valid]]
        valid &= np.cumsum(valid, axis=1) <= r  # the r best live ones
        return np.where(valid, cands, -1)

    def rerank(self, queries: np.ndarray, cands: np.ndarray, k: int, threads: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return rescore.rerank(queries, cands, lambda k_: self.rows(k_, True), lambda k_: self.rows(k_, False), k, threads)

    def search_keys(self, queries: np.ndarray, k: int, r: int | None = None,
                    threads: int = 0, split: list[float] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query: (keys, exact float32 inner products), best first, at most ``k``, on ``threads`` cores (0: every
        core; 1: one, as a benchmark's single-thread column means): a large batch is re-scored on them, a lone
        query's scan is split over them.

        ``split``, if given, gets the seconds of the scan and of the re-score appended (facedex.timing)."""
        queries = np.ascontiguousarray(queries, np.float32)
        r = max(k, r or 0, self.rescore_n)
        started = time.perf_counter()
        cands = self.candidates(queries, r, threads)
        scanned = time.perf_counter()
        out = self.rerank(queries, cands, k, threads)
        if split is not None:
            split += [scanned - started, time.perf_counter() - scanned]
        return out

    def search(self, queries: np.ndarray, k: int, r: int | None = None, threads: int = 0,
               split: list[float] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per query: (face ids (k', 16) uint8, exact float32 inner products (k',)), best first."""
        keys, scores = self.search_keys(queries, k, r, threads, split)
        return [self.ids.a[kk] for kk in keys], scores
