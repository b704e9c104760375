"""Indexes in a local (or network-mounted) folder: ``<root>/<index_id>/``.

``put`` fills ``<root>/.tmp-<index_id>`` and renames it into place: on one file
system the rename is atomic, so a crash leaves at most a ``.tmp-`` folder,
which readers skip and the next ``put`` of the same id replaces.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from facedex.storage.base import META_FILE, IndexMeta, checksums, folder_under, valid_index_id, verify


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, folder: Path, meta: IndexMeta) -> None:
        final = folder_under(self.root, meta.index_id)  # before anything is written or removed
        tmp = folder_under(self.root, meta.index_id, ".tmp-")
        meta.files = checksums(folder)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp)
        (tmp / META_FILE).write_bytes(meta.to_json())
        tmp.rename(final)

    def list(self) -> list[IndexMeta]:
        metas = []
        for path in self.root.iterdir():
            if not valid_index_id(path.name) or not (path / META_FILE).is_file():
                continue
            try:
                meta = IndexMeta.from_json((path / META_FILE).read_bytes())
            except (ValueError, TypeError):
                continue  # a foreign or damaged folder is not an index
            if meta.index_id == path.name:  # a meta.json naming another folder is not trusted
                metas.append(meta)
        return sorted(metas, key=lambda m: m.create_time, reverse=True)

    def get_meta(self, index_id: str) -> IndexMeta | None:
        if not valid_index_id(index_id):
            return None
        path = folder_under(self.root, index_id) / META_FILE
        if not path.is_file():
            return None
        return IndexMeta.from_json(path.read_bytes())

    def fetch(self, index_id: str) -> Path:
        meta = self.get_meta(index_id)
        if meta is None:
            raise FileNotFoundError(index_id)
        folder = folder_under(self.root, index_id)
        verify(folder, meta)
        return folder

    def delete(self, index_id: str) -> bool:
        if self.get_meta(index_id) is None:
            return False
        gone = folder_under(self.root, index_id, ".del-")
        folder_under(self.root, index_id).rename(gone)  # disappears at once for readers
        shutil.rmtree(gone, ignore_errors=True)
        return True
