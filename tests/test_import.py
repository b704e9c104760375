"""Bulk import from .npy, .csv and .parquet into a real Faces DB."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from facedex.errors import FacedexError
from facedex.faces.importer import import_file
from facedex.faces.store import FacesStore


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32) * 3


async def stored(store: FacesStore, list_id: uuid.UUID) -> tuple[list[str | None], np.ndarray]:
    rows = await store.pool.fetch(
        "SELECT f.external_id, d.descriptor FROM list_faces l JOIN faces f USING (face_id)"
        " JOIN descriptors d ON d.face_id=l.face_id AND d.version=1 WHERE l.list_id=$1 ORDER BY l.link_seq",
        list_id,
    )
    return [r["external_id"] for r in rows], np.stack([np.frombuffer(r["descriptor"], "<f4") for r in rows])


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("fmt", ["npy", "csv", "parquet-list", "parquet-bytes"])
async def test_import_formats(fmt: str, tmp_path: Path, store: FacesStore, account: uuid.UUID) -> None:
    lst = await store.create_list(account)
    x = vectors(1234)
    ext = [f"id-{i}" for i in range(len(x))]
    path = tmp_path / f"data.{fmt.split('-')[0]}"
    if fmt == "npy":
        np.save(path, x)
    elif fmt == "csv":
        header = "external_id," + ",".join(f"c{i}" for i in range(512))
        lines = [f"{e}," + ",".join(repr(float(v)) for v in row) for e, row in zip(ext, x)]
        path.write_text(header + "\n" + "\n".join(lines) + "\n")
    elif fmt == "parquet-list":
        pq.write_table(pa.table({"external_id": ext, "descriptor": list(x)}), path)
    else:
        pq.write_table(pa.table({"external_id": ext, "descriptor": [r.tobytes() for r in x]}), path)
    seen: list[int] = []
    done = await import_file(store, lst.list_id, path, 1, chunk=500, progress=seen.append)
    assert done == 1234 and sum(seen) == 1234 and seen[0] == 500
    got_ext, got = await stored(store, lst.list_id)
    assert np.allclose(got, normalised(x), atol=1e-6)
    assert got_ext == ([None] * 1234 if fmt == "npy" else ext)
    head = await store.get_list(account, lst.list_id)
    assert head.face_count == 1234 and head.change_seq == 1234


async def test_bad_chunk_stops_import_and_keeps_whole_chunks(tmp_path: Path, store: FacesStore, account: uuid.UUID) -> None:
    lst = await store.create_list(account)
    x = vectors(1000)
    x[750, 5] = np.nan
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(FacedexError) as exc:
        await import_file(store, lst.list_id, tmp_path / "bad.npy", 1, chunk=500)
    assert exc.value.error.code == 11003
    assert (await store.get_list(account, lst.list_id)).face_count == 500  # the first chunk, whole
    with pytest.raises(FacedexError) as exc:
        np.save(tmp_path / "narrow.npy", vectors(10)[:, :100])
        await import_file(store, lst.list_id, tmp_path / "narrow.npy", 1)
    assert exc.value.error.code == 11002
    with pytest.raises(FacedexError) as exc:
        await import_file(store, uuid.uuid4(), tmp_path / "bad.npy", 1)
    assert exc.value.error.code == 12001
