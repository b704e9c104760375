"""The index engine behind facedex's own interface.

:class:`facedex.index.faces.FaceIndex` is one list's index: face ids, a scan
of some kind (:mod:`facedex.index.registry`: sign bits, projected sign bits,
PQ fast-scan, RaBitQ, the HNSW graph) proposing candidates, and exact
re-scoring (:mod:`facedex.index.rescore`). Which kind serves a list is
measured per build (:mod:`facedex.index.calibrate`). Callers see face ids and
inner products, never library keys.
"""

from facedex.index.faces import FaceIndex
from facedex.index.hnsw import HnswIndex, IndexParams

__all__ = ["FaceIndex", "HnswIndex", "IndexParams"]
