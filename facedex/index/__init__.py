"""The index engine behind facedex's own interface.

:class:`facedex.index.faces.FaceIndex` is one list's index: face ids, a scan
of some kind (:mod:`facedex.index.registry`: sign bits, projected sign bits,
PQ fast-scan, RaBitQ, the HNSW graph) proposing candidates, and exact
re-scoring (:mod:`facedex.index.rescore`). Which kind serves a list is
measured per build (:mod:`facedex.index.calibrate`). Callers see face ids and
inner products, never library keys.
"""

import os

# faiss runs on OpenMP, whose idle threads spin by default: on a machine shared by several facedex services (and
# builds) spinning threads steal the cores the others need (a PQ training measured 50-100x slower under load).
# Sleeping waits cost microseconds per parallel region. Set before faiss (libgomp) is first loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from facedex.index.faces import FaceIndex  # noqa: E402
from facedex.index.hnsw import HnswIndex, IndexParams  # noqa: E402

__all__ = ["FaceIndex", "HnswIndex", "IndexParams"]
