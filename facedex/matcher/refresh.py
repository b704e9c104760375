"""Catch a loaded index up with its list's change log, within a bound.

Why a bound: the head query runs beside the search of every batch whose announced heads the index does not hold
(:mod:`facedex.matcher.service`, :mod:`facedex.redis.heads`); while PostgreSQL is
unreachable or stalled, waiting on it would stop matching altogether. Past
``matching.head_timeout_s`` the index is served as it is, and the answer says
``consistency: "stale"`` (or is refused, if the operator set
``matching.when_stale = "refuse"``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Literal

from facedex.faces.store import UNREACHABLE, FacesStore, delta_timeout
from facedex.matcher.loaded import LoadedIndex
from facedex.metrics import INDEX_REFRESH_LAG
from facedex.rwlock import finish_in_thread

log = logging.getLogger(__name__)

Freshness = Literal["fresh", "stale", "gone"]

WARN_EVERY_S = 5.0
_warned: dict[str, float] = {}  # list id -> when its outage was last logged


async def catch_up(store: FacesStore, idx: LoadedIndex, timeout_s: float) -> Freshness:
    """Apply the list's changes since the index's head: "fresh", "stale" (the Faces DB did not answer in
    time; nothing applied) or "gone" (the list no longer exists)."""
    list_id = uuid.UUID(idx.list_id)
    try:
        head = await store.list_head(list_id, timeout=timeout_s)
        if head is None:
            return "gone"
        INDEX_REFRESH_LAG.labels(idx.list_id).set(head[1] - idx.head)
        if head[1] <= idx.head:
            return "fresh"
        delta = await store.delta(list_id, idx.meta.descriptor_version, idx.head, timeout=delta_timeout(timeout_s))
    except UNREACHABLE as exc:
        now = time.monotonic()
        if now - _warned.get(idx.list_id, 0.0) > WARN_EVERY_S:  # once in a while, not per batch
            _warned[idx.list_id] = now
            log.warning("list %s: Faces DB unreachable (%s: %s); serving the index as loaded", idx.list_id,
                        type(exc).__name__, exc)
        return "stale"
    if delta is None:
        return "gone"
    async with idx.lock.write():
        if delta.head > idx.head:  # another batch may have applied it meanwhile
            await finish_in_thread(idx.apply, delta)
    return "fresh"
