"""The Indexed Matcher: its parts wired together, every background loop supervised.

- :class:`~facedex.licenses.client.License`: may we serve (Licenses, refreshed).
- :mod:`~facedex.matcher.loading`: which indexes are held; load beside, swap.
- :mod:`~facedex.matcher.labels`: advertise / withdraw the lists served.
- :mod:`~facedex.matcher.consuming`: stream reads, claims, replies.
- :mod:`~facedex.matcher.refresh`: catch-up from the change log beside a batch (unless its announced heads are held).
- :mod:`~facedex.matcher.answer`: the search of a batch.

Each loop (license, reload, labels, claim, consume) runs under one
:class:`~facedex.supervise.Supervisor`: restarted with backoff when Redis,
PostgreSQL or storage fail under it, and red in ``/healthcheck`` until its next
good round, so a Redis restart or stall heals by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import msgspec
import redis.asyncio as aredis

from facedex import timing, wire
from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.faces.store import FacesStore
from facedex.internal_auth import verify_request
from facedex.licenses.client import License
from facedex.matcher.answer import answer_batch
from facedex.matcher.consuming import Consumer
from facedex.matcher.labels import Labels
from facedex.matcher.loaded import LoadedIndex
from facedex.matcher.loading import Loader
from facedex.matcher.refresh import catch_up
from facedex.metrics import INDEXED_HEAD_CHECKS
from facedex.redis.keys import Keys
from facedex.rwlock import finish_in_thread
from facedex.storage.base import IndexStorage
from facedex.supervise import Supervisor

log = logging.getLogger(__name__)


class MatcherService:
    def __init__(self, settings: Settings, redis: aredis.Redis, store: FacesStore, storage: IndexStorage, matcher_id: str) -> None:
        self.settings = settings
        self.cfg = settings.indexed
        self.store = store
        self.matcher_id = matcher_id
        keys = Keys(settings.redis_prefix)
        self.license = License(settings)
        self.labels = Labels(redis, keys, matcher_id, self.cfg.label_ttl_s)
        self.loader = Loader(storage, store, self.cfg.refresh, settings.matching.head_timeout_s,
                             on_loaded=self._on_loaded, on_dropped=self.labels.withdraw)
        self.consumer = Consumer(redis, keys, matcher_id, lambda: self.loader.loaded, self._answer, self.cfg.claim_idle_ms)
        self.supervisor = Supervisor("matcher", max_backoff_s=1.0)  # the indexed route is back within ~1 s of Redis
        sup = self.supervisor
        sup.every("license", settings.license.check_period_s, self.license.check)
        sup.every("reload", self.cfg.reload_period_s, self.loader.reload, round_timeout_s=600)
        sup.every("labels", self.cfg.label_ttl_s / 3, self.advertise, round_timeout_s=max(5.0, self.cfg.label_ttl_s))
        sup.every("claim", self.cfg.claim_idle_ms / 2000, self.consumer.claim)
        sup.forever("consume", self.consumer.consume, stall_s=10.0)

    @property
    def loaded(self) -> dict[str, LoadedIndex]:
        return self.loader.loaded

    @property
    def served(self) -> int:
        return self.consumer.served

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """A first license check and reload before serving (best effort: the loops retry), then the loops."""
        for first in (self.license.check, self.loader.reload):
            try:
                await first()
            except Exception as exc:
                log.warning("startup %s failed (its loop retries): %s", getattr(first, "__name__", first), exc)
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()
        await self.license.close()
        for label in list(self.loaded):
            try:
                await asyncio.wait_for(self.labels.withdraw(label), 2.0)
            except Exception as exc:  # Redis gone: the labels expire on their own
                log.warning("could not withdraw label %s: %s", label, exc)

    async def advertise(self) -> None:
        await self.labels.advertise(self.loaded)

    async def _on_loaded(self, label: str) -> None:
        await self.consumer.ensure_group(label)
        await self.advertise()

    # ---------------------------------------------------------------- answer
    async def _answer(self, label: str, reqs: list[wire.IndexedRequest]) -> list[wire.IndexedReply]:
        """Replies to the requests read from one matching label's stream, in order."""
        def error(req: wire.IndexedRequest, code: int, detail: str) -> wire.IndexedReply:
            return wire.IndexedReply(req.rid, None, code, detail)

        if not self.license.licensed:
            return [error(r, Errors.INDEX_NOT_LICENSED.code, self.license.reason) for r in reqs]
        idx = self.loaded.get(label)
        if idx is None:
            return [error(r, Errors.INDEX_FOR_LABEL_NOT_FOUND.code, f"no index for label {label} here") for r in reqs]
        list_id = idx.list_id
        # Anyone who can write to Redis can append to this stream: answer only requests the API signed as they stand,
        # for this very list (answer_batch then checks that their account owns the index).
        refused: dict[int, wire.IndexedReply] = {}
        for i, r in enumerate(reqs):
            try:
                verify_request(self.settings.internal_token, r.request)
                if r.request.list_id != uuid.UUID(list_id).bytes:
                    raise FacedexError(Errors.IDENTITY_UNVERIFIED, "the request names another list than its stream")
            except FacedexError as exc:
                refused[i] = error(r, exc.error.code, exc.detail)
        ok = [r for i, r in enumerate(reqs) if i not in refused]
        if not ok:
            return [refused[i] for i in range(len(reqs))]
        # If every request came with an announced head the index already holds (facedex.redis.heads), the index is
        # as fresh as the Faces DB was when they were appended: no head read. Otherwise the batch is searched while
        # the list's change head is read (both begun after its requests were appended): the answers stand if the
        # index searched already held every change up to that head, else they are made again from the caught-up
        # index. The Faces DB round trip overlaps the search instead of preceding it.
        checking = None
        if self.cfg.refresh:
            if _announced_held(idx, ok):
                INDEXED_HEAD_CHECKS.labels("announced").inc()
            else:
                INDEXED_HEAD_CHECKS.labels("read").inc()
                checking = asyncio.ensure_future(catch_up(self.store, idx, self.settings.matching.head_timeout_s))
        try:
            answered, searched = await self._search(idx, ok, inline=checking is None)
        except BaseException:
            if checking is not None:
                checking.add_done_callback(lambda t: t.cancelled() or t.exception())  # it ends on its own, unobserved
            raise
        state = "fresh"
        fresh_ms = 0.0
        if checking is not None:
            started = time.perf_counter()
            state = await checking
            fresh_ms = timing.since(started)  # only what the check added after the search
            if state == "gone":
                return [refused.get(i) or error(r, Errors.LIST_NOT_FOUND.code, f"list {list_id} not found") for i, r in enumerate(reqs)]
            if state == "stale" and self.settings.matching.when_stale == "refuse":
                return [refused.get(i) or error(r, Errors.FACES_DB_UNAVAILABLE.code, "Faces DB unreachable") for i, r in enumerate(reqs)]
            if idx.head > searched:  # the list moved while the batch was searched: answer from the caught-up index
                answered, _ = await self._search(idx, ok)
        answered = [_answered(r, fresh_ms, state) for r in answered]
        it = iter(answered)
        return [refused[i] if i in refused else next(it) for i in range(len(reqs))]

    async def _search(self, idx: LoadedIndex, reqs: list[wire.IndexedRequest],
                      inline: bool = False) -> tuple[list[wire.IndexedReply], int]:
        """The batch's replies and the change head of the index they were searched in (stable under the read lock).

        ``inline``: nothing needs the event loop meanwhile (no head read beside it), so a batch expected to take
        less than ``INLINE_BELOW_S`` runs right here instead of in a worker thread."""
        async with idx.lock.read():
            head = idx.head
            started = time.perf_counter()
            if inline and idx.expected_seconds(len(reqs)) < INLINE_BELOW_S:
                out = answer_batch(idx, reqs, self.cfg.rescore_candidates)
            else:
                out = await finish_in_thread(answer_batch, idx, reqs, self.cfg.rescore_candidates)
            idx.observe(len(reqs), time.perf_counter() - started)
            return out, head


# A worker thread and back costs ~0.09 ms here (an idle 2-core VM, uvloop), a third of a 10k list's whole search:
# a batch expected to search faster than this runs on the event loop, which it holds for no longer than that.
INLINE_BELOW_S = 0.0005


def _announced_held(idx: LoadedIndex, reqs: list[wire.IndexedRequest]) -> bool:
    """Every request's announced list head is already applied to the index (heads only grow, so it stays so)."""
    return all(r.announced_head is not None and r.announced_head <= idx.head for r in reqs)


def _answered(reply: wire.IndexedReply, fresh_ms: float, state: str) -> wire.IndexedReply:
    """A served reply with the batch's change-head check (``fresh``) in its hops, marked stale if it was."""
    if reply.response is None:
        return reply
    resp = reply.response
    resp = msgspec.structs.replace(resp, timings={**(resp.timings or {}), timing.FRESH: fresh_ms},
                                   consistency="stale" if state == "stale" else resp.consistency)
    return msgspec.structs.replace(reply, response=resp)
