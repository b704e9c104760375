"""Indexes in a local (or network-mounted) folder: ``<root>/<index_id>/``.

``put`` fills ``<root>/.tmp-<index_id>`` and renames it into place: on one file
system the rename is atomic, so a crash leaves at most a ``.tmp-`` folder,
which readers skip and the next ``put`` of the same id replaces.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from facedex.storage.base import META_FILE, IndexMeta, checksums, verify


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, folder: Path, meta: IndexMeta) -> None:
        meta.files = checksums(folder)
        tmp = self.root / f".tmp-{meta.index_id}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        (tmp / META_FILE).write_bytes(meta.to_json())
        tmp.rename(self.root / meta.index_id)

    def list(self) -> list[IndexMeta]:
        metas = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or not (path / META_FILE).is_file():
                continue
            try:
                metas.append(IndexMeta.from_json((path / META_FILE).read_bytes()))
            except (ValueError, TypeError):
                continue  # a foreign or damaged folder is not an index
        return sorted(metas, key=lambda m: m.create_time, reverse=True)

    def get_meta(self, index_id: str) -> IndexMeta | None:
        path = self.root / index_id / META_FILE
        if "/" in index_id or index_id.startswith(".") or not path.is_file():
            return None
        return IndexMeta.from_json(path.read_bytes())

    def fetch(self, index_id: str) -> Path:
        meta = self.get_meta(index_id)
        if meta is None:
            raise FileNotFoundError(index_id)
        folder = self.root / index_id
        verify(folder, meta)
        return folder

    def delete(self, index_id: str) -> bool:
        if self.get_meta(index_id) is None:
            return False
        gone = self.root / f".del-{index_id}"
        (self.root / index_id).rename(gone)  # disappears at once for readers
        shutil.rmtree(gone, ignore_errors=True)
        return True
