"""Bulk import of descriptors into a list from .npy, .csv or .parquet files.

Rows are read in chunks (memory stays bounded for files larger than RAM),
validated and normalised, then written with COPY, one transaction per chunk:
an interrupted import leaves whole chunks, never a face without its
descriptor or list membership.

Formats:
- ``.npy``: an (n, dim) float array; faces get no external id.
- ``.csv``: a header; an optional ``external_id`` column; every other column is
  one descriptor component, in order.
- ``.parquet``: an optional ``external_id`` column and a ``descriptor`` column,
  either a list of floats or the raw little-endian float32 bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from facedex import descriptors
from facedex.errors import FacedexError
from facedex.faces.store import FacesStore

Chunk = tuple[np.ndarray, list[str | None] | None]


def _npy_chunks(path: Path, chunk: int) -> tuple[int, Iterator[Chunk]]:
    array = np.load(path, mmap_mode="r")
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-d array, got shape {array.shape}")

    def gen() -> Iterator[Chunk]:
        for start in range(0, array.shape[0], chunk):
            yield np.asarray(array[start : start + chunk], dtype=np.float32), None

    return array.shape[0], gen()


def _table_chunk(batch: object, csv: bool) -> Chunk:
    import pyarrow as pa

    assert isinstance(batch, pa.RecordBatch)
    names = batch.schema.names
    ext = batch.column(names.index("external_id")).cast(pa.string()).to_pylist() if "external_id" in names else None
    if csv:
        cols = [batch.column(i) for i, name in enumerate(names) if name != "external_id"]
        matrix = np.column_stack([c.to_numpy(zero_copy_only=False) for c in cols]).astype(np.float32)
        return matrix, ext
    if "descriptor" not in names:
        raise ValueError("parquet file needs a 'descriptor' column")
    col = batch.column(names.index("descriptor"))
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        matrix = np.vstack([np.frombuffer(b, dtype="<f4") for b in col.to_pylist()])
    else:
        matrix = np.vstack(col.to_numpy(zero_copy_only=False)).astype(np.float32)
    return matrix, ext


def _arrow_chunks(path: Path, chunk: int) -> tuple[int, Iterator[Chunk]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        return pf.metadata.num_rows, (_table_chunk(b, csv=False) for b in pf.iter_batches(batch_size=chunk))
    import pyarrow.csv as pcsv

    # a csv's row count is unknown without reading it: count lines once (cheap next to parsing)
    with path.open("rb") as f:
        total = max(0, sum(1 for _ in f) - 1)
    reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=64 << 20))
    return total, (_table_chunk(b, csv=True) for b in reader)


def open_file(path: Path, chunk: int) -> tuple[int, Iterator[Chunk]]:
    """(row count, chunks of (matrix, external ids)) for a supported file."""
    if path.suffix == ".npy":
        return _npy_chunks(path, chunk)
    if path.suffix in (".csv", ".parquet"):
        return _arrow_chunks(path, chunk)
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use .npy, .csv or .parquet")


async def import_file(
    store: FacesStore,
    list_id: uuid.UUID,
    path: Path,
    version: int,
    chunk: int = 20_000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Import every row of ``path`` into ``list_id``; returns the number of faces created."""
    account_id = await store.list_account(list_id)
    _, chunks = open_file(path, chunk)
    done = 0
    for matrix, ext in chunks:
        for start in range(0, matrix.shape[0], chunk):  # arrow batches may be larger than `chunk`
            try:
                part = descriptors.parse_matrix(version, matrix[start : start + chunk])
            except FacedexError as exc:  # say where in the file, not where in the chunk
                raise FacedexError(exc.error, f"{path.name}, chunk from row {done}: {exc.detail}") from None
            await store.import_matrix(account_id, list_id, version, part, ext[start : start + chunk] if ext else None)
            done += part.shape[0]
            if progress is not None:
                progress(part.shape[0])
    return done
