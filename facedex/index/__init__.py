"""Approximate nearest-neighbour index behind facedex's own interface.

The library (usearch today) is an implementation detail of :class:`facedex.index.hnsw.HnswIndex`;
callers see face ids (16-byte UUIDs) and inner-product scores, never library keys.
"""

from facedex.index.hnsw import HnswIndex, IndexParams

__all__ = ["HnswIndex", "IndexParams"]
