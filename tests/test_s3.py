"""Index storage on a real S3 server (SeaweedFS), and a whole build stored there."""

from __future__ import annotations

import os
import time
import uuid

from pathlib import Path

import httpx
import numpy as np
import pytest

from facedex.config import IndexStorageSettings
from facedex.index import FaceIndex
from facedex.storage.base import CorruptIndex, IndexMeta
from facedex.storage.s3 import S3Storage
from tests.conftest import Services
from tests.test_indexing import new_list, wait_task


def s3_settings(endpoint: str, bucket: str) -> IndexStorageSettings:
    return IndexStorageSettings(
        kind="s3", s3_endpoint_url=endpoint, s3_bucket=bucket, s3_prefix="idx/", s3_region="us-east-1",
        s3_access_key="k", s3_secret_key="s",
    )


I1, I2 = "0190a1b2-0000-7000-8000-000000000001", "0190a1b2-0000-7000-8000-000000000002"


def test_s3_storage_round_trip(s3_endpoint: str, tmp_path: Path) -> None:
    storage = S3Storage(s3_settings(s3_endpoint, "unit"), tmp_path / "cache")
    storage.client.create_bucket(Bucket="unit")
    work = tmp_path / "work"
    work.mkdir()
    big = np.random.default_rng(0).bytes(12 << 20)  # over boto3's multipart threshold (8 MiB)
    (work / "index.usearch").write_bytes(big)
    (work / "ids.npy").write_bytes(b"ids")
    meta = IndexMeta(I1, "L", "acc", 1, 3, 9, {"precision": "f16"})
    storage.put(work, meta)
    # an upload that died before meta.json: invisible
    storage.client.put_object(Bucket="unit", Key=f"idx/{I2}/index.usearch", Body=b"partial")
    assert [m.index_id for m in storage.list()] == [I1]
    folder = storage.fetch(I1)
    assert (folder / "index.usearch").read_bytes() == big
    assert storage.get_meta(I2) is None
    # a tampered object is caught on download
    storage.client.put_object(Bucket="unit", Key=f"idx/{I1}/ids.npy", Body=b"evil")
    fresh = S3Storage(s3_settings(s3_endpoint, "unit"), tmp_path / "cache2")
    with pytest.raises(CorruptIndex):
        fresh.fetch(I1)
    assert storage.delete(I1) and storage.list() == [] and not storage.delete(I1)


def test_s3_cache_pruned_when_index_leaves_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    """An index deleted by another process (the master's retention) leaves no folder in a matcher's cache."""
    # the bucket of the round trip, under a prefix of its own (SeaweedFS has volumes for few buckets)
    settings = s3_settings(s3_endpoint, "unit").model_copy(update={"s3_prefix": "prune/"})
    writer = S3Storage(settings, tmp_path / "writer-cache")
    try:
        writer.client.create_bucket(Bucket="unit")
    except writer.client.exceptions.BucketAlreadyOwnedByYou:
        pass
    reader = S3Storage(settings, tmp_path / "reader-cache")
    keep, gone = str(uuid.uuid4()), str(uuid.uuid4())  # index ids are UUIDs (they name folders and keys)
    for index_id in (keep, gone):
        work = tmp_path / index_id
        work.mkdir()
        (work / "ids.npy").write_bytes(index_id.encode())
        writer.put(work, IndexMeta(index_id, str(uuid.uuid4()), str(uuid.uuid4()), 1, 1, 1, {}))
        reader.fetch(index_id)
    (reader.cache / ".tmp-other").mkdir()  # a download in progress is not touched
    assert writer.delete(gone)
    # a folder fetched moments ago may be another process's, fetched after this listing began: it is spared
    assert {m.index_id for m in reader.list()} == {keep}
    assert sorted(p.name for p in reader.cache.iterdir()) == sorted([".tmp-other", keep, gone])
    old = time.time() - 3600
    os.utime(reader.cache / gone, (old, old))  # an hour later: pruned
    assert {m.index_id for m in reader.list()} == {keep}
    assert sorted(p.name for p in reader.cache.iterdir()) == sorted([".tmp-other", keep])


async def test_build_stored_in_s3(services: Services, store, s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1").create_bucket(Bucket="builds")
    manager = services.start_indexing(
        "s3",
        FACEDEX_INDEX_STORAGE__KIND="s3",
        FACEDEX_INDEX_STORAGE__S3_ENDPOINT_URL=s3_endpoint,
        FACEDEX_INDEX_STORAGE__S3_BUCKET="builds",
        FACEDEX_INDEX_STORAGE__S3_REGION="us-east-1",
        FACEDEX_INDEX_STORAGE__S3_ACCESS_KEY="k",
        FACEDEX_INDEX_STORAGE__S3_SECRET_KEY="s",
    )
    vecs = np.random.default_rng(2).standard_normal((3000, 512)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    _, list_id, ids = await new_list(store, vecs)
    task = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_id)}, headers=services.internal).json()
    done = wait_task(manager, task["task_id"])
    assert done["status"] == "success", done
    listed = httpx.get(f"{manager}/1/indexes", headers=services.internal).json()
    assert [m["index_id"] for m in listed] == [done["index_id"]] and listed[0]["count"] == 3000
    storage = S3Storage(s3_settings(s3_endpoint, "builds").model_copy(update={"s3_prefix": ""}), tmp_path / "c")
    index = FaceIndex.load(storage.fetch(done["index_id"]), 512, listed[0]["kind"], listed[0]["params"], writable=False)
    found, _ = index.search(vecs[:20], 1)
    assert [f[0].tobytes() for f in found] == [i.bytes for i in ids[:20]]
    assert httpx.delete(f"{manager}/1/indexes/{done['index_id']}", headers=services.internal).status_code == 204
    assert httpx.get(f"{manager}/1/indexes", headers=services.internal).json() == []
    services.stop("manager-s3")
    services.stop("indexer-s3")
