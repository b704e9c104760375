"""The interface every index kind implements: a scan that returns candidate keys, re-scored elsewhere.

Why one interface: no single code wins on every gallery (issue 11: sign bits
hold on isotropic identities, PQ fast-scan on correlated ones, graphs only on
small lists), so each build tries several kinds and keeps the cheapest that is
accurate enough (:mod:`facedex.index.calibrate`). A kind only proposes
candidates; exactness comes from :mod:`facedex.index.rescore`.

Keys are row numbers: the n-th vector added gets key n, for the life of the
index. Removal is the caller's tombstone unless the kind can really remove
(``remove`` returns True), so a kind never has to shift its codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np


class Scan(Protocol):
    kind: ClassVar[str]
    params: dict[str, Any]  # what ``build``/``load`` need to make it again (JSON-able)

    @classmethod
    def build(cls, vectors: np.ndarray, params: dict[str, Any]) -> Scan:
        """Train (if the kind needs it) and add ``vectors`` ((n, d) float32, unit rows) as keys 0..n-1."""

    @classmethod
    def load(cls, folder: Path, dim: int, params: dict[str, Any], writable: bool) -> Scan:
        """Read what ``save`` wrote; read-only loads may memory-map."""

    def add(self, vectors: np.ndarray) -> None:
        """Append: the new rows get the next keys."""

    def remove(self, keys: np.ndarray) -> bool:
        """Drop keys from the scan if the kind can; False means the caller filters them (tombstones)."""

    def __len__(self) -> int:
        """Keys handed out so far (the next added row gets this key); removed keys still count."""

    def search(self, queries: np.ndarray, r: int, threads: int = 0, **knobs: Any) -> np.ndarray:
        """(m, r') int64 keys, best first by the code's score, -1 where fewer were found.

        ``threads``: 1 keeps the call on one core; 0 lets it use every core (a lone query's scan split over them)."""

    def save(self, folder: Path) -> list[Path]: ...

    def code_bytes(self) -> float:
        """Bytes per face of the scanned structure (RAM)."""

    def scan_cost(self, n: int, r: int, **knobs: Any) -> float:
        """Estimated bytes touched by one query's scan over ``n`` faces for ``r`` candidates (calibration's cost model)."""

    def knob_ladder(self) -> list[dict[str, Any]]:
        """Search-time settings calibration should try, cheapest first ([{}] when there are none)."""
