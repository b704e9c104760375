"""Which indexes this matcher holds: list storage, fetch + verify + load beside the old one, swap.

A label with no loaded index, or with a newer one in storage, gets it loaded
(in threads), warmed up, caught up from the change log, then swapped in with
one assignment: the label is served throughout. A corrupt index (checksums) is
skipped with 26308 and never retried. :func:`relevant` is the one place that
decides which stored index serves which label.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from facedex.errors import Errors
from facedex.faces.store import FacesStore
from facedex.matcher.loaded import LoadedIndex
from facedex.matcher.refresh import catch_up
from facedex.storage.base import CorruptIndex, IndexMeta, IndexStorage, newest_per_list

log = logging.getLogger(__name__)

Hook = Callable[[str], Awaitable[None]]


def relevant(metas: list[IndexMeta]) -> dict[str, IndexMeta]:
    """The index each matching label (list, descriptor version) should serve (label -> meta)."""
    return newest_per_list(metas, by_label=True)


class Loader:
    def __init__(self, storage: IndexStorage, store: FacesStore, refresh: bool, head_timeout_s: float,
                 on_loaded: Hook, on_dropped: Hook) -> None:
        self.storage = storage
        self.store = store
        self.refresh = refresh
        self.head_timeout_s = head_timeout_s
        self.on_loaded = on_loaded  # the label's stream group must exist and the label be advertised
        self.on_dropped = on_dropped
        self.loaded: dict[str, LoadedIndex] = {}
        self.bad: set[str] = set()  # index ids that failed to load: not retried

    async def reload(self) -> None:
        metas = await asyncio.to_thread(self.storage.list)
        wanted = relevant(metas)
        for label in [lbl for lbl in self.loaded if lbl not in wanted]:
            log.info("index of list %s left the storage: dropped", label)
            del self.loaded[label]
            await self.on_dropped(label)
        for label, meta in wanted.items():
            current = self.loaded.get(label)
            if meta.index_id in self.bad or (current is not None and current.meta.index_id == meta.index_id):
                continue
            if current is not None and (meta.change_seq, meta.create_time) <= (current.meta.change_seq, current.meta.create_time):
                continue
            await self._load(label, meta)

    async def _load(self, label: str, meta: IndexMeta) -> None:
        try:
            folder = await asyncio.to_thread(self.storage.fetch, meta.index_id)
            fresh = await asyncio.to_thread(LoadedIndex, meta, folder, self.refresh)
            await asyncio.to_thread(fresh.warm_up)
        except (CorruptIndex, ValueError, OSError, RuntimeError) as exc:
            self.bad.add(meta.index_id)
            log.error("%d %s: skip index %s of list %s: %s", Errors.INDEX_CORRUPT.code, Errors.INDEX_CORRUPT.desc,
                      meta.index_id, meta.list_id, exc)
            return
        if self.refresh:
            state = await catch_up(self.store, fresh, self.head_timeout_s)
            if state == "gone":
                return
            if state == "stale":
                raise RuntimeError(f"Faces DB unreachable: index {meta.index_id} not caught up; retried next round")
        old = self.loaded.get(label)
        self.loaded[label] = fresh  # the swap: requests from here on use the new index
        log.info("loaded index %s of list %s (%d faces, %.2fs)%s", meta.index_id, meta.list_id, fresh.size,
                 fresh.load_seconds, f", replacing {old.meta.index_id}" if old else "")
        await self.on_loaded(label)
