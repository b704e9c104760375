"""Our engine's arms in ``facedex bench index``: ``ours:<kind>[:<key=value+key=value>[:<sweep/sweep>]]``.

The arm goes through facedex's own index interface, as the Indexed Matcher does. :func:`build` is the ONE
place that maps a kind name to that interface: ``hnsw`` (``facedex.index.HnswIndex``; params ``precision``,
``m``, ``efc``; the sweep value is the search ``ef``) and the engine's code scans ``sign`` (``bits``, ``seed``),
``pq_fastscan`` (``m``) and ``rabitq`` through ``facedex.index.FaceIndex``, whose sweep value is R, the
candidates re-scored exactly; and ``chosen``, the configuration the Indexer's calibration picks for the gallery
(sweep value 0: the chosen R). The bench's arm parsing, child processes, interleaving and quality measures are
the same for every arm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def parse(lib: str) -> tuple[str, dict[str, str]]:
    """``ours:hnsw:precision=i8+m=32`` -> ("hnsw", {"precision": "i8", "m": "32"})."""
    parts = lib.split(":")
    if parts[0] != "ours" or len(parts) not in (2, 3) or not parts[1]:
        raise ValueError(f"arm {lib!r}: expected ours:<kind>[:key=value+key=value]")
    params: dict[str, str] = {}
    for item in (parts[2].split("+") if len(parts) == 3 and parts[2] else []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"arm {lib!r}: parameter {item!r} is not key=value")
        params[key] = value
    return parts[1], params


def _row_ids(n: int) -> np.ndarray:
    """Face ids that encode row numbers (+1: the all-zero id means "removed" in the id map)."""
    ids = np.zeros((n, 16), np.uint8)
    ids[:, :8] = (np.arange(n, dtype=np.uint64) + 1).astype(">u8").view(np.uint8).reshape(n, 8)
    return ids


def _rows(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids[:, :, :8]).view(">u8").reshape(len(ids), -1).astype(np.int64) - 1


class OursArm:
    """One built index of ours: search by row number, save and cold-load through the same interface."""

    def __init__(self, kind: str, params: dict[str, str], index, reopen) -> None:  # type: ignore[no-untyped-def]
        self.kind, self.params, self.index, self._reopen = kind, params, index, reopen

    def search(self, q: np.ndarray, k: int, knob: int, threads: int) -> np.ndarray:
        ids, _ = self.index.search(q, k, ef=knob, threads=threads)
        return _rows(ids)

    def save_load(self, folder: Path) -> tuple[int, float]:
        folder.mkdir(parents=True, exist_ok=True)
        files = self.index.save(folder / "ours")
        started = time.perf_counter()
        self._reopen(folder / "ours")
        return sum(f.stat().st_size for f in files), time.perf_counter() - started

    def close(self) -> None:
        pass


def _hnsw(x: np.ndarray, params: dict[str, str]) -> OursArm:
    from facedex.config import get_settings
    from facedex.index import HnswIndex, IndexParams

    s = get_settings().index
    p = IndexParams(int(params.get("m", s.connectivity)), int(params.get("efc", s.expansion_add)), 64,
                    params.get("precision", s.precision))  # type: ignore[arg-type]
    unknown = set(params) - {"m", "efc", "precision"}
    if unknown:
        raise ValueError(f"ours:hnsw does not know parameter(s) {', '.join(sorted(unknown))}")
    index = HnswIndex(x.shape[1], p)
    index.add(_row_ids(len(x)), x, threads=2)
    return OursArm("hnsw", params, index, lambda path: HnswIndex.load(path, index.dim, p, view=True))


def _number(value: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


class FaceIndexArm(OursArm):
    """A kind of the index engine (``facedex.index.registry``) through ``FaceIndex``: the sweep value is the number of
    candidates re-scored exactly (R), as the Indexed Matcher searches; R = 0 is the index's own (calibrated) R."""

    chosen: dict[str, object] | None = None  # the calibration's choice, for ``ours:chosen``
    code_bytes: int | None = None
    rescore_bytes: int | None = None
    final_bytes: int | None = None

    def search(self, q: np.ndarray, k: int, knob: int, threads: int) -> np.ndarray:
        import faiss

        faiss.omp_set_num_threads(threads)  # 1: one core per query, as the column says; 2: the batch on both cores
        ids, _ = self.index.search(q, k, r=knob or None, threads=threads)
        out = np.full((len(ids), k), -1, np.int64)
        for i, row in enumerate(ids):
            out[i, : len(row)] = _rows(row[None])[0]
        return out

    def save_load(self, folder: Path) -> tuple[int, float]:
        from facedex.index.faces import VECTORS16_FILE, VECTORS_FILE

        nbytes, load_s = super().save_load(folder)
        saved = folder / "ours"
        self.rescore_bytes = (saved / VECTORS16_FILE).stat().st_size  # fp16 rows the candidates are re-scored from
        self.final_bytes = (saved / VECTORS_FILE).stat().st_size  # fp32 rows, read for the k answered faces only
        self.code_bytes = sum(f.stat().st_size for f in saved.iterdir()) - self.rescore_bytes - self.final_bytes
        return nbytes, load_s


def _engine(kind: str) -> Callable[[np.ndarray, dict[str, str]], OursArm]:
    def build_kind(x: np.ndarray, params: dict[str, str]) -> OursArm:
        from facedex.index import FaceIndex

        scan_params = {key: _number(value) for key, value in params.items()}
        index = FaceIndex.build(kind, scan_params, _row_ids(len(x)), x)
        described = index.describe()
        return FaceIndexArm(kind, params, index, lambda path: FaceIndex.load(path, x.shape[1], kind, described, writable=False))

    return build_kind


def _chosen(x: np.ndarray, params: dict[str, str]) -> OursArm:
    """What the Indexer would serve for this gallery: its own calibration (``facedex.indexer.build.choose_index``) at
    the index settings, R = 0 searching at the chosen R."""
    from facedex.config import get_settings
    from facedex.index import FaceIndex
    from facedex.indexer.build import choose_index

    if params:
        raise ValueError("ours:chosen takes no parameters: it runs the Indexer's calibration at the index settings")
    index, choice = choose_index(get_settings().index, _row_ids(len(x)), x)
    described = index.describe()
    kind = choice.best.kind
    arm = FaceIndexArm(f"chosen:{kind}", params, index, lambda path: FaceIndex.load(path, x.shape[1], kind, described, writable=False))
    arm.chosen = choice.as_dict()
    return arm


# "hnsw" is the graph through its own interface (ef swept); every other kind goes through FaceIndex (R swept);
# "chosen" is the Indexer's own choice among them for the gallery
KINDS: dict[str, Callable[[np.ndarray, dict[str, str]], OursArm]] = {
    "hnsw": _hnsw, "chosen": _chosen, **{kind: _engine(kind) for kind in ("sign", "pq_fastscan", "rabitq")}
}


def build(kind: str, params: dict[str, str], x: np.ndarray) -> OursArm:
    """THE hook: a kind name and its parameters in, a built index of ours out (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"ours: unknown index kind {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind](x, params)
