"""Sign bits, scanned by Hamming distance (faiss ``IndexBinaryFlat``).

Why: identity data puts a probe's mates far above every impostor (cosine
0.5-0.8 against ~0), so one bit per dimension keeps the mates among the first
few hundred candidates, and a Hamming scan of 64 B per face is the cheapest
pass over memory there is. Below 512 dimensions the bits of the descriptor
itself are too coarse (128 bits: top-1 0.94 in issue 11's measurements), so
``bits > dim`` takes the signs of a fixed random projection (SimHash), the
matrix regenerated from ``seed`` on load rather than stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from facedex.index.parts import Parts, merge_binary

FILE = "codes.faissbin"
ADD_CHUNK = 65_536  # rows encoded per call: bounded temporaries (the projection is 4x the input)


class SignBits:
    kind: ClassVar[str] = "sign"

    def __init__(self, dim: int, params: dict[str, Any], index: faiss.IndexBinaryFlat | None = None,
                 ways: int | None = None) -> None:
        self.dim = dim
        self.bits = int(params.get("bits", dim))
        if self.bits % 8 or self.bits < dim:
            raise ValueError(f"sign bits: bits must be a multiple of 8 and at least the dimension ({dim}), got {self.bits}")
        self.seed = int(params.get("seed", 0))
        self.params = {"bits": self.bits, "seed": self.seed}
        self.projection = (
            None if self.bits == dim
            else np.random.default_rng(self.seed).standard_normal((dim, self.bits), dtype=np.float32)
        )
        whole = index if index is not None else faiss.IndexBinaryFlat(self.bits)
        self.codes = Parts(whole, faiss.clone_binary_index, merge_binary, larger_is_better=False, ways=ways)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        x = vectors if self.projection is None else vectors @ self.projection
        return np.packbits(x > 0, axis=1)

    @classmethod
    def build(cls, vectors: np.ndarray, params: dict[str, Any]) -> SignBits:
        out = cls(vectors.shape[1], params, ways=1)  # a build is saved whole; the matcher that loads it splits it
        out.add(vectors)
        return out

    @classmethod
    def load(cls, folder: Path, dim: int, params: dict[str, Any], writable: bool) -> SignBits:
        index = faiss.read_index_binary(str(folder / FILE))
        out = cls(dim, params, index)
        if index.d != out.bits:
            raise ValueError(f"{folder / FILE} holds {index.d} bits, meta says {out.bits}")
        return out

    def __len__(self) -> int:
        return self.codes.ntotal

    def add(self, vectors: np.ndarray) -> None:
        for start in range(0, vectors.shape[0], ADD_CHUNK):
            self.codes.add(self.encode(np.asarray(vectors[start : start + ADD_CHUNK], np.float32)))

    def remove(self, keys: np.ndarray) -> bool:
        return False

    def search(self, queries: np.ndarray, r: int, threads: int = 0, **knobs: Any) -> np.ndarray:
        return self.codes.search(self.encode(queries), r, threads)

    def save(self, folder: Path) -> list[Path]:
        faiss.write_index_binary(self.codes.whole(), str(folder / FILE))
        return [folder / FILE]

    def code_bytes(self) -> float:
        return self.bits / 8

    def scan_cost(self, n: int, r: int, **knobs: Any) -> float:
        return n * self.bits / 8 + (self.dim * self.bits * 4 if self.projection is not None else 0)

    def knob_ladder(self) -> list[dict[str, Any]]:
        return [{}]
