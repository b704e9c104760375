"""Indexes in an S3 bucket: ``<prefix><index_id>/<file>``.

``put`` uploads the data files first (multipart for large ones) and
``meta.json`` last: an index exists for readers exactly when its meta.json
does. ``delete`` removes meta.json first for the same reason. ``fetch``
downloads into a local cache folder (temp + rename) and verifies checksums;
every ``list`` prunes cached folders of indexes no longer in the bucket (deleted
by another process, e.g. the master's retention), so the cache stays bounded.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from facedex.storage.base import META_FILE, IndexMeta, checksums, folder_under, valid_index_id, verify

if TYPE_CHECKING:
    from facedex.config import IndexStorageSettings


class S3Storage:
    def __init__(self, settings: IndexStorageSettings, cache: Path) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.cache = Path(cache).expanduser()
        self.cache.mkdir(parents=True, exist_ok=True)
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key,
            aws_secret_access_key=settings.s3_secret_key,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60),
        )

    def _key(self, index_id: str, name: str) -> str:
        if not valid_index_id(index_id) or "/" in name:
            raise ValueError(f"not an index id / file name: {index_id!r} / {name!r}")
        return f"{self.prefix}{index_id}/{name}"

    def put(self, folder: Path, meta: IndexMeta) -> None:
        meta.files = checksums(folder)
        for name in meta.files:
            self.client.upload_file(str(folder / name), self.bucket, self._key(meta.index_id, name))
        self.client.put_object(Bucket=self.bucket, Key=self._key(meta.index_id, META_FILE), Body=meta.to_json())

    def list(self) -> list[IndexMeta]:
        metas = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/" + META_FILE):
                    body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                    meta = IndexMeta.from_json(body)
                    if obj["Key"] == self._key_or_none(meta.index_id):  # a meta naming another index is not trusted
                        metas.append(meta)
        self.prune_cache({m.index_id for m in metas})
        return sorted(metas, key=lambda m: m.create_time, reverse=True)

    def _key_or_none(self, index_id: str) -> str | None:
        return self._key(index_id, META_FILE) if valid_index_id(index_id) else None

    def prune_cache(self, present: set[str], min_age_s: float = 600.0) -> list[str]:
        """Remove cached folders of indexes not in ``present`` (a complete listing); temp folders are left alone.

        Several processes may share the cache, and a listing takes a while: a folder fetched by another process
        after this listing began is not in ``present`` yet, so only folders older than ``min_age_s`` are pruned.
        """
        pruned = []
        young = time.time() - min_age_s
        for path in self.cache.iterdir():
            if path.name.startswith(".") or path.name in present or not path.is_dir():
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime > young:
                    continue
            shutil.rmtree(path, ignore_errors=True)
            pruned.append(path.name)
        return pruned

    def get_meta(self, index_id: str) -> IndexMeta | None:
        if not valid_index_id(index_id):
            return None
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(index_id, META_FILE))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return IndexMeta.from_json(body)

    def fetch(self, index_id: str) -> Path:
        meta = self.get_meta(index_id)
        if meta is None:
            raise FileNotFoundError(index_id)
        folder = folder_under(self.cache, index_id)
        if folder.is_dir():
            return folder  # verified when it was downloaded
        tmp = folder_under(self.cache, index_id, ".tmp-")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in meta.files:
            if "/" in name or name.startswith("."):
                raise ValueError(f"index {index_id}: bad file name {name!r} in meta.json")
            self.client.download_file(self.bucket, self._key(index_id, name), str(tmp / name))
        verify(tmp, meta)
        (tmp / META_FILE).write_bytes(meta.to_json())
        tmp.rename(folder)
        return folder

    def delete(self, index_id: str) -> bool:
        meta = self.get_meta(index_id)
        if meta is None:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._key(index_id, META_FILE))
        for name in meta.files:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(index_id, name))
        shutil.rmtree(folder_under(self.cache, index_id), ignore_errors=True)
        return True
