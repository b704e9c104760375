"""The Indexed Matcher's work: load indexes, advertise labels, serve the streams, stay fresh.

- Reload: every ``reload_period_s`` the storage is listed; a label with no
  loaded index, or with a newer one, gets it loaded beside the old (in a
  thread), warmed up, caught up from the change log, then swapped in with one
  assignment: the label is served throughout. A corrupt index (checksums) is
  skipped with 26308 and never served.
- Labels: ``label:<list_id>:<version>:<matcher_id>`` keys with a TTL, renewed while the
  index is loaded; the proxy routes a list here only while some key for it
  exists, and only while the license holds (it checks, and says why not).
- Streams: one per list; every matcher of a list joins the consumer group, so
  each request is served once. Entries pending on a dead consumer for longer
  than ``claim_idle_ms`` are claimed by the living; entries past their
  deadline are acknowledged unanswered (the proxy has already fallen back).
  The entries of one read (up to 64) are answered with one graph search
  (:mod:`facedex.matcher.answer`), so waiting requests keep every core busy.
- Freshness: before a batch is searched, each list's change head is read (one
  row) and any newer changes are applied, so a detach acknowledged before a
  request was sent is never returned, and an attach is matchable at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aredis
from redis.exceptions import ResponseError

from facedex import wire
from facedex.config import Settings
from facedex.errors import Errors
from facedex.faces.store import FacesStore
from facedex.licenses.client import feature_enabled
from facedex.matcher.answer import answer_batch
from facedex.matcher.loaded import LoadedIndex
from facedex.metrics import INDEX_REFRESH_LAG, INDEXED_SERVED
from facedex.redis.keys import Keys
from facedex.storage.base import CorruptIndex, IndexMeta, IndexStorage, newest_per_list

log = logging.getLogger(__name__)


class MatcherService:
    def __init__(self, settings: Settings, redis: aredis.Redis, store: FacesStore, storage: IndexStorage, matcher_id: str) -> None:
        self.settings = settings
        self.cfg = settings.indexed
        self.version = settings.default_descriptor_version
        self.redis = redis  # binary replies: stream entries are msgpack
        self.keys = Keys(settings.redis_prefix)
        self.store = store
        self.storage = storage
        self.matcher_id = matcher_id
        self.loaded: dict[str, LoadedIndex] = {}
        self.bad: set[str] = set()  # index ids that failed to load: not retried
        self.licensed = False
        self.license_reason = "not checked yet"
        self.served = 0
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        await self.check_license()
        await self.reload()
        for name, loop in (
            ("license", self._every(self.settings.license.check_period_s, self.check_license)),
            ("reload", self._every(self.cfg.reload_period_s, self.reload)),
            ("labels", self._every(self.cfg.label_ttl_s / 3, self.advertise)),
            ("claim", self._every(self.cfg.claim_idle_ms / 2000, self.claim)),
            ("consume", self.consume()),
        ):
            self._tasks.append(asyncio.create_task(loop, name=name))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for label in list(self.loaded):
            await self.withdraw(label)

    async def _every(self, period: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed round is retried next period; the service stays up
                log.exception("%s failed", getattr(fn, "__name__", fn))

    # ---------------------------------------------------------------- license
    async def check_license(self) -> None:
        licensed, reason = await feature_enabled(self.settings, "index")
        if licensed != self.licensed:
            log.warning("indexed matching %s (%s)", "licensed" if licensed else "NOT licensed", reason or "ok")
        # Labels stay advertised either way: the proxy checks the license too, and so can tell the client
        # why a list is served by brute force; requests that reach us unlicensed get 26309.
        self.licensed, self.license_reason = licensed, reason

    # ----------------------------------------------------------------- reload
    async def reload(self) -> None:
        metas = await asyncio.to_thread(self.storage.list)
        relevant = newest_per_list(metas, by_label=True)  # keyed by matching label: every descriptor version
        for label in [lbl for lbl in self.loaded if lbl not in relevant]:
            log.info("index of list %s left the storage: dropped", label)
            del self.loaded[label]
            await self.withdraw(label)
        for label, meta in relevant.items():
            current = self.loaded.get(label)
            if meta.index_id in self.bad or (current is not None and current.meta.index_id == meta.index_id):
                continue
            if current is not None and (meta.change_seq, meta.create_time) <= (current.meta.change_seq, current.meta.create_time):
                continue
            await self._load(meta)

    async def _load(self, meta: IndexMeta) -> None:
        try:
            folder = await asyncio.to_thread(self.storage.fetch, meta.index_id)
            fresh = await asyncio.to_thread(LoadedIndex, meta, folder, self.cfg.refresh)
            await asyncio.to_thread(fresh.warm_up)
        except (CorruptIndex, ValueError, OSError, RuntimeError) as exc:
            self.bad.add(meta.index_id)
            log.error("%d %s: skip index %s of list %s: %s", Errors.INDEX_CORRUPT.code, Errors.INDEX_CORRUPT.desc,
                      meta.index_id, meta.list_id, exc)
            return
        if self.cfg.refresh and not await self._catch_up(fresh):
            return  # the list is gone
        try:
            await self.redis.xgroup_create(self.keys.stream(meta.label), Keys.MATCHER_GROUP, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        old = self.loaded.get(meta.label)
        self.loaded[meta.label] = fresh  # the swap: requests from here on use the new index
        log.info("loaded index %s of list %s (%d faces, %.2fs)%s", meta.index_id, meta.list_id, fresh.size,
                 fresh.load_seconds, f", replacing {old.meta.index_id}" if old else "")
        await self.advertise()

    async def _catch_up(self, idx: LoadedIndex) -> bool:
        """Apply the list's changes since the index's head; False if the list no longer exists."""
        head = await self.store.list_head(uuid.UUID(idx.list_id))
        if head is None:
            return False
        INDEX_REFRESH_LAG.labels(idx.list_id).set(head[1] - idx.head)
        if head[1] > idx.head:
            delta = await self.store.delta(uuid.UUID(idx.list_id), idx.meta.descriptor_version, idx.head)
            if delta is None:
                return False
            async with idx.lock.write():
                await asyncio.to_thread(idx.apply, delta)
        return True

    async def advertise(self) -> None:
        ttl_ms = int(self.cfg.label_ttl_s * 1000)
        seconds, micros = await self.redis.time()  # the server's clock: matchers' and proxies' clocks may differ
        expires = seconds * 1000 + micros // 1000 + ttl_ms
        async with self.redis.pipeline(transaction=False) as p:
            for label in self.loaded:
                p.set(self.keys.label(label, self.matcher_id), self.matcher_id, px=ttl_ms)
            if self.loaded:
                p.zadd(self.keys.labels, {self.keys.labels_member(label, self.matcher_id): expires for label in self.loaded})
            await p.execute()

    async def withdraw(self, label: str) -> None:
        """Stop advertising ``label`` at once (its index left storage, or this matcher stops)."""
        await self.redis.delete(self.keys.label(label, self.matcher_id))
        await self.redis.zrem(self.keys.labels, self.keys.labels_member(label, self.matcher_id))

    # ------------------------------------------------------------------ serve
    async def consume(self) -> None:
        while True:
            streams = {self.keys.stream(label): ">" for label in self.loaded}
            if not streams:
                await asyncio.sleep(0.2)
                continue
            try:
                batches = await self.redis.xreadgroup(Keys.MATCHER_GROUP, self.matcher_id, streams, count=64, block=200)
            except ResponseError as exc:  # a stream or group was deleted under us: recreated on reload
                log.warning("xreadgroup: %s", exc)
                await asyncio.sleep(0.2)
                continue
            for stream, entries in batches or []:
                await self.serve(stream.decode() if isinstance(stream, bytes) else stream, entries)

    async def claim(self) -> None:
        """Take over requests left pending by a consumer that died."""
        for label in list(self.loaded):
            stream = self.keys.stream(label)
            try:
                claimed = await self.redis.xautoclaim(
                    stream, Keys.MATCHER_GROUP, self.matcher_id, min_idle_time=self.cfg.claim_idle_ms, count=64
                )
                entries = claimed[1]  # [next id, entries(, deleted ids on Redis >= 7)]
            except ResponseError:
                continue
            if entries:
                await self.serve(stream, entries)

    async def serve(self, stream: str, entries: list) -> None:  # type: ignore[type-arg]
        list_id = stream.split("{", 1)[1].rstrip("}")
        now_ms = int(time.time() * 1000)
        live: list[tuple[bytes, wire.IndexedRequest]] = []
        for entry_id, fields in entries:
            try:
                req = wire.decode(fields[b"m"], wire.IndexedRequest)
            except Exception:  # malformed entry: nobody to answer
                log.warning("%d: dropping malformed stream entry %s", Errors.MATCH_REQUEST_INVALID.code, entry_id)
                await self.redis.xack(stream, Keys.MATCHER_GROUP, entry_id)
                continue
            if req.deadline_ms < now_ms:
                await self.redis.xack(stream, Keys.MATCHER_GROUP, entry_id)  # the proxy fell back already
                continue
            live.append((entry_id, req))
        if not live:
            return
        replies = await self._answer(list_id, [r for _, r in live])
        async with self.redis.pipeline(transaction=False) as p:
            for (entry_id, req), reply in zip(live, replies):
                p.publish(req.reply_to, wire.encode(reply))
                p.xack(stream, Keys.MATCHER_GROUP, entry_id)
            await p.execute()
        self.served += len(live)
        INDEXED_SERVED.inc(len(live))

    async def _answer(self, list_id: str, reqs: list[wire.IndexedRequest]) -> list[wire.IndexedReply]:
        def error(req: wire.IndexedRequest, code: int, detail: str) -> wire.IndexedReply:
            return wire.IndexedReply(req.rid, None, code, detail)

        if not self.licensed:
            return [error(r, Errors.INDEX_NOT_LICENSED.code, self.license_reason) for r in reqs]
        idx = self.loaded.get(list_id)
        if idx is None:
            return [error(r, Errors.INDEX_FOR_LABEL_NOT_FOUND.code, f"no index of list {list_id} here") for r in reqs]
        if self.cfg.refresh and not await self._catch_up(idx):
            return [error(r, Errors.LIST_NOT_FOUND.code, f"list {list_id} not found") for r in reqs]
        async with idx.lock.read():
            return await asyncio.to_thread(answer_batch, idx, reqs, self.cfg.rescore_candidates)
