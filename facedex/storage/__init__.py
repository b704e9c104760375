"""Index storage: one folder (or S3 prefix) per index, written so that a half index is never visible.

Layout of an index ``<index_id>/``: ``meta.json`` (what it is, what it covers,
checksums), the graph, the id map and the float32 vectors for exact re-scoring.
"""

from facedex.storage.base import IndexMeta, IndexStorage, open_storage

__all__ = ["IndexMeta", "IndexStorage", "open_storage"]
