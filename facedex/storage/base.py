"""What an index is on storage (``IndexMeta``), and the interface of the two backends."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import orjson
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from facedex.config import Settings

META_FILE = "meta.json"
VECTORS_FILE = "vectors.npy"


@dataclass
class IndexMeta:
    index_id: str
    list_id: str  # the matching label
    account_id: str
    descriptor_version: int
    count: int  # faces in the index
    change_seq: int  # the list's change-log head the index covers
    params: dict[str, object]
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    create_time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    build_seconds: float = 0.0
    calibration: dict[str, object] | None = None  # how kind and params were chosen, with the curve (facedex.index.calibrate)
    kind: str = ""  # the index kind (facedex.index.registry); params = FaceIndex.describe()
    warning: str | None = None  # set when no configuration reached the calibration targets
    format: int = 2  # 1: the HNSW-only layout, no longer loaded
    task_id: str = ""  # the Index Manager task that built it: retention deletes indexes of failed/cancelled tasks

    @property
    def label(self) -> str:
        """The matching label this index serves: one (list, descriptor version)."""
        from facedex.redis.keys import Keys

        return Keys.matching_label(self.list_id, self.descriptor_version)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> IndexMeta:
        return cls(**orjson.loads(data))


class IndexMetaOut(BaseModel):
    """An index as the Index Manager and the Indexer describe it over HTTP (meta.json)."""

    index_id: str
    list_id: str
    account_id: str
    descriptor_version: int
    count: int = Field(..., description="Faces in the index.")
    change_seq: int = Field(..., description="The list's change-log head the index covers.")
    params: dict[str, object] = Field(..., description="The kind's build and search parameters (code size, re-scored candidates, ...).")
    files: dict[str, str] | None = Field(None, description="SHA-256 of every file (the Indexer's build result only).")
    create_time: str
    build_seconds: float
    calibration: dict[str, object] | None = Field(None, description="How kind and parameters were chosen: the measured curve.")
    kind: str = Field("", description="The index kind (facedex.index.registry).")
    warning: str | None = Field(None, description="Set when no configuration reached the calibration targets.")
    format: int
    task_id: str = Field("", description="The Index Manager task that built it.")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != META_FILE}


def valid_index_id(index_id: str) -> bool:
    """Index ids are canonical UUIDs: the only names storage ever builds a path or an S3 key from."""
    try:
        return str(uuid.UUID(index_id)) == index_id
    except (ValueError, TypeError, AttributeError):
        return False


def folder_under(root: Path, index_id: str, prefix: str = "") -> Path:
    """``root/<prefix><index_id>``, refused (ValueError) unless the id is a UUID and the path stays under ``root``."""
    if not valid_index_id(index_id):
        raise ValueError(f"not an index id: {index_id!r}")
    path = (root / f"{prefix}{index_id}").resolve()
    if path.parent != root.resolve():
        raise ValueError(f"index path {path} is outside the storage root {root}")
    return path


class CorruptIndex(Exception):
    """An index whose files do not match the checksums in its meta.json: never served."""


def verify(folder: Path, meta: IndexMeta) -> None:
    for name, digest in meta.files.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            raise CorruptIndex(f"index {meta.index_id}: {name} is missing or does not match its checksum")


class IndexStorage(Protocol):
    """Where built indexes live. ``put`` is atomic: readers see a whole index or none."""

    def put(self, folder: Path, meta: IndexMeta) -> None:
        """Store the files of ``folder`` (meta.json is written from ``meta``, with checksums)."""

    def list(self) -> list[IndexMeta]:
        """Every complete index, newest first."""

    def get_meta(self, index_id: str) -> IndexMeta | None: ...

    def fetch(self, index_id: str) -> Path:
        """A local folder with the index's files, checksums verified (raises CorruptIndex)."""

    def delete(self, index_id: str) -> bool: ...


def newest_per_list(metas: list[IndexMeta], version: int | None = None, by_label: bool = False) -> dict[str, IndexMeta]:
    """The relevant index of each list (or, ``by_label``, of each (list, version)): the one covering the latest change,
    then the newest. Indexes of an older on-disk format are never relevant."""
    best: dict[str, IndexMeta] = {}
    for m in metas:
        if (version is not None and m.descriptor_version != version) or m.format != IndexMeta.format:
            continue
        key = m.label if by_label else m.list_id
        cur = best.get(key)
        if cur is None or (m.change_seq, m.create_time) > (cur.change_seq, cur.create_time):
            best[key] = m
    return best


def open_storage(settings: Settings) -> IndexStorage:
    if settings.index_storage.kind == "s3":
        from facedex.storage.s3 import S3Storage

        return S3Storage(settings.index_storage, settings.data_dir / "index-cache")
    from facedex.storage.local import LocalStorage

    return LocalStorage(settings.index_storage.path or settings.data_dir / "indexes")
