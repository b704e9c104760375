"""Peer arms of ``facedex bench index`` beyond the graph libraries: faiss flat code scans and milvus-lite.

Flat code scans (library baselines for the index engine of issue 11): every face's compact code is scanned
for a query, the best ``R`` candidates are re-scored exactly from a float store (fp16 or fp32: the arm's
precision), and the top ``K`` of the re-score is the answer. ``R`` is the arm's sweep value (the ``ef`` of
the graph arms).

- ``faiss-binary``: ``IndexBinaryFlat`` over sign bits (Hamming distance); ``M`` = 0 takes the sign of each
  of the ``d`` coordinates, ``M`` > 0 the signs of ``M`` Gaussian random projections (for 128-d, where 128
  bits are too coarse);
- ``faiss-pqfs``: ``IndexPQFastScan`` with ``M`` sub-quantizers of 4 bits (``M`` = 64: 32 B, 128: 64 B);
- ``faiss-rabitq``: ``IndexRaBitQ`` (1 bit a dimension plus per-vector factors).

milvus-lite (``pip install milvus-lite pymilvus``): the embedded Milvus a user would otherwise pick, driven
through pymilvus exactly as an application would (one ``search`` call per query; the batched column is one
call with every query). ``milvus-flat``, ``milvus-ivf`` (``M`` = nlist, sweep = nprobe), ``milvus-hnsw``
(``M``, ``efC``, sweep = ef). Its build time covers create, insert, flush and index build; it runs inside the
arm's process, so the peak RSS is its own.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SCANS = ("faiss-binary", "faiss-pqfs", "faiss-rabitq")
MILVUS = ("milvus-flat", "milvus-ivf", "milvus-hnsw")
LIBS = SCANS + MILVUS
_TRAIN = 65_536  # training sample of the quantizers: enough for 16-centroid sub-codebooks, bounded at 10M


class MilvusUnavailable(RuntimeError):
    """milvus-lite is not importable here: the arm fails with the reason, it is never silently dropped."""


def _rescore_store(x: np.ndarray, precision: str) -> np.ndarray:
    if precision not in ("f16", "f32"):
        raise ValueError(f"re-score store must be f16 or f32, not {precision!r} (int8 loses exact top-1s)")
    return x.astype(np.float16 if precision == "f16" else np.float32)


class FlatScan:
    """A faiss code index plus the float store its candidates are re-scored from."""

    def __init__(self, lib: str, x: np.ndarray, m: int, precision: str, seed: int = 0) -> None:
        import faiss

        faiss.omp_set_num_threads(2)
        self.lib, self.m, self.dim = lib, m, x.shape[1]
        rng = np.random.default_rng(seed)
        self.projection = None
        if lib == "faiss-binary":
            if m:
                self.projection = rng.standard_normal((self.dim, m)).astype(np.float32)
            bits = m or self.dim
            if bits % 8:
                raise ValueError(f"faiss-binary needs a multiple of 8 bits, not {bits}")
            self.index = faiss.IndexBinaryFlat(bits)
            for start in range(0, len(x), 100_000):
                self.index.add(self._bits(x[start : start + 100_000]))
        else:
            if lib == "faiss-pqfs":
                if not m or self.dim % m:
                    raise ValueError(f"faiss-pqfs needs M dividing the dimension {self.dim}, not {m}")
                self.index = faiss.IndexPQFastScan(self.dim, m, 4, faiss.METRIC_INNER_PRODUCT)
            elif lib == "faiss-rabitq":
                self.index = faiss.IndexRaBitQ(self.dim, faiss.METRIC_INNER_PRODUCT)
            else:
                raise ValueError(lib)
            sample = x[rng.choice(len(x), min(len(x), _TRAIN), replace=False)] if len(x) > _TRAIN else x
            self.index.train(sample)
            self.index.add(x)
        self.store = _rescore_store(x, precision)

    def _bits(self, x: np.ndarray) -> np.ndarray:
        return np.packbits((x if self.projection is None else x @ self.projection) > 0, axis=1)

    def search(self, q: np.ndarray, k: int, r: int, threads: int) -> np.ndarray:
        """(len(q), k) row numbers: the code scan's best ``r``, re-scored exactly, best ``k`` first."""
        import faiss

        faiss.omp_set_num_threads(threads)
        r = max(r, k)
        _, cand = self.index.search(self._bits(q) if self.lib == "faiss-binary" else q, r)
        out = np.empty((len(q), k), np.int64)
        for start in range(0, len(q), 64):  # bound the gathered (queries x r x d) block
            c = cand[start : start + 64]
            safe = np.maximum(c, 0)
            scores = np.einsum("qrd,qd->qr", self.store[safe].astype(np.float32), q[start : start + 64])
            scores[c < 0] = -np.inf
            best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            out[start : start + 64] = np.where(np.take_along_axis(c, best, 1) >= 0, np.take_along_axis(c, best, 1), -1)
        return out

    def save_load(self, folder: Path) -> tuple[int, float]:
        """Codes and re-score store on disk; cold load = read the codes back and map the store."""
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        codes, store = folder / f"{self.lib}.codes", folder / f"{self.lib}.store.npy"
        (faiss.write_index_binary if self.lib == "faiss-binary" else faiss.write_index)(self.index, str(codes))
        np.save(store, self.store)
        started = time.perf_counter()
        (faiss.read_index_binary if self.lib == "faiss-binary" else faiss.read_index)(str(codes))
        np.load(store, mmap_mode="r")
        load_s = time.perf_counter() - started
        self.code_bytes, self.rescore_bytes = codes.stat().st_size, store.stat().st_size
        return self.code_bytes + self.rescore_bytes, load_s

    def close(self) -> None:
        pass


def _milvus_client(path: Path):  # type: ignore[no-untyped-def]
    try:
        from pymilvus import MilvusClient
    except ImportError as e:
        raise MilvusUnavailable(
            f"milvus-lite arm: pymilvus/milvus-lite are not installed here ({e}); install them with "
            "`pip install -e '.[bench]'` (the bench extra lists milvus-lite and pymilvus)") from e
    try:
        return MilvusClient(str(path))
    except Exception as e:  # the embedded server did not start: say why, do not drop the arm
        raise MilvusUnavailable(f"milvus-lite arm: the embedded Milvus at {path} did not start: {e!r}") from e


class Milvus:
    """One collection in an embedded milvus-lite database, queried through pymilvus."""

    NAME = "faces"

    def __init__(self, lib: str, x: np.ndarray, m: int, efc: int, folder: Path) -> None:
        self.lib, self.folder = lib, folder
        folder.mkdir(parents=True, exist_ok=True)
        try:
            self.client = _milvus_client(folder / "milvus.db")  # first: a missing milvus-lite is named as such
        except MilvusUnavailable:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        from pymilvus import DataType

        kind = {"milvus-flat": "FLAT", "milvus-ivf": "IVF_FLAT", "milvus-hnsw": "HNSW"}[lib]
        params = {"FLAT": {}, "IVF_FLAT": {"nlist": m or 1024}, "HNSW": {"M": m, "efConstruction": efc}}[kind]
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=x.shape[1])
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="v", index_type=kind, metric_type="IP", params=params)
        started = time.perf_counter()
        self.client.create_collection(self.NAME, schema=schema, index_params=index_params)
        for start in range(0, len(x), 10_000):
            rows = x[start : start + 10_000]
            self.client.insert(self.NAME, [{"id": start + i, "v": v} for i, v in enumerate(rows)])
        self.insert_s = time.perf_counter() - started  # of the build time: rows through pymilvus, before the index
        self.client.flush(self.NAME)
        self.client.load_collection(self.NAME)
        self.kind = kind

    def _params(self, knob: int) -> dict[str, object]:
        return {"metric_type": "IP",
                "params": {"IVF_FLAT": {"nprobe": knob}, "HNSW": {"ef": knob}}.get(self.kind, {})}

    def search(self, q: np.ndarray, k: int, knob: int, threads: int) -> np.ndarray:
        """``threads`` is not a pymilvus notion: many queries go in one call, and the server uses its own threads."""
        hits = self.client.search(self.NAME, data=list(q), limit=k, search_params=self._params(knob), anns_field="v",
                                  output_fields=[])
        out = np.full((len(q), k), -1, np.int64)
        for i, row in enumerate(hits):
            ids = [h["id"] for h in row][:k]
            out[i, : len(ids)] = ids
        return out

    def save_load(self, folder: Path) -> tuple[int, float]:
        """The database folder's size; cold load = reopen it and load the collection."""
        nbytes = sum(f.stat().st_size for f in self.folder.rglob("*") if f.is_file())
        self.client.close()
        started = time.perf_counter()
        self.client = _milvus_client(self.folder / "milvus.db")
        self.client.load_collection(self.NAME)
        return nbytes, time.perf_counter() - started

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def build(lib: str, x: np.ndarray, m: int, efc: int, precision: str) -> FlatScan | Milvus:
    if lib in SCANS:
        return FlatScan(lib, x, m, precision)
    if lib in MILVUS:  # a database folder of its own, removed by close()
        return Milvus(lib, x, m, efc, Path(tempfile.mkdtemp(prefix=f"facedex-bench-{lib}-")))
    raise ValueError(f"unknown peer {lib!r}")
