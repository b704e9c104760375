"""Reading the lists' streams: the consumer group, taking over a dead consumer's entries, replying.

One stream per list; every matcher of a list joins the consumer group, so each
request is served once. Entries pending on a dead consumer for longer than
``claim_idle_ms`` are claimed by the living; entries past their deadline are
acknowledged unanswered (the proxy has already fallen back). The entries of one
read (up to 64) are answered together (:mod:`facedex.matcher.answer`).

A Redis restart without persistence loses the groups: a read that gets NOGROUP
recreates them and goes on, and a restarted life (supervised) starts by making
sure they exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import msgspec
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from facedex import timing, wire
from facedex.errors import Errors
from facedex.metrics import INDEXED_SERVED
from facedex.redis.heads import PAYLOAD_FIELD, entry_head
from facedex.redis.keys import Keys
from facedex.supervise import Beat

log = logging.getLogger(__name__)

Answer = Callable[[str, list[wire.IndexedRequest]], Awaitable[list[wire.IndexedReply]]]


def _missing_group(exc: ResponseError) -> bool:
    return "NOGROUP" in str(exc)


def _queued(reply: wire.IndexedReply, req: wire.IndexedRequest, read_at: float) -> wire.IndexedReply:
    """The reply with the request's ``queue`` hop: from the proxy's append to this read (two wall clocks)."""
    if reply.response is None or not req.sent_us:
        return reply
    hops = {**(reply.response.timings or {}), timing.QUEUE: max(read_at * 1e6 - req.sent_us, 0.0) / 1000.0}
    return msgspec.structs.replace(reply, response=msgspec.structs.replace(reply.response, timings=hops))


class Consumer:
    def __init__(self, redis: aredis.Redis, keys: Keys, matcher_id: str, labels: Callable[[], Iterable[str]],
                 answer: Answer, claim_idle_ms: int) -> None:
        self.redis = redis
        self.keys = keys
        self.matcher_id = matcher_id
        self.labels = labels  # the labels loaded now
        self.answer = answer
        self.claim_idle_ms = claim_idle_ms
        self.served = 0

    async def ensure_group(self, label: str) -> None:
        try:
            await self.redis.xgroup_create(self.keys.stream(label), Keys.MATCHER_GROUP, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def ensure_groups(self) -> None:
        for label in list(self.labels()):
            await self.ensure_group(label)

    async def consume(self, beat: Beat) -> None:
        """One life of the stream reader (supervised: restarted if Redis fails under it)."""
        await self.ensure_groups()
        while True:
            beat.beat()
            streams = {self.keys.stream(label): ">" for label in self.labels()}
            if not streams:
                await asyncio.sleep(0.2)
                continue
            try:
                batches = await self.redis.xreadgroup(Keys.MATCHER_GROUP, self.matcher_id, streams, count=64, block=200)
            except ResponseError as exc:
                if not _missing_group(exc):
                    raise
                log.warning("stream group missing (Redis lost its data?): recreating: %s", exc)
                await self.ensure_groups()
                continue
            for stream, entries in batches or []:
                await self.serve(stream.decode() if isinstance(stream, bytes) else stream, entries)
                beat.beat()

    async def claim(self) -> None:
        """Take over requests left pending by a consumer that died."""
        for label in list(self.labels()):
            stream = self.keys.stream(label)
            try:
                claimed = await self.redis.xautoclaim(
                    stream, Keys.MATCHER_GROUP, self.matcher_id, min_idle_time=self.claim_idle_ms, count=64
                )
            except ResponseError as exc:
                if _missing_group(exc):
                    await self.ensure_group(label)
                    continue
                raise
            entries = claimed[1]  # [next id, entries(, deleted ids on Redis >= 7)]
            if entries:
                await self.serve(stream, entries)

    async def serve(self, stream: str, entries: list) -> None:  # type: ignore[type-arg]
        label = stream.split("{", 1)[1].rstrip("}")
        now = time.time()
        now_ms = int(now * 1000)
        live: list[tuple[bytes, wire.IndexedRequest]] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending (trimmed)
                await self.redis.xack(stream, Keys.MATCHER_GROUP, entry_id)
                continue
            try:
                req = wire.decode(fields[PAYLOAD_FIELD], wire.IndexedRequest)
                req = msgspec.structs.replace(req, announced_head=entry_head(fields))
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
        try:
            replies = await self.answer(label, [r for _, r in live])
        except Exception as exc:  # this label's failure must not take the other streams of the read down with it
            log.warning("answering %d request(s) of %s failed: %s: %s", len(live), label, type(exc).__name__, exc)
            detail = f"indexed matcher failed: {type(exc).__name__}"
            replies = [wire.IndexedReply(r.rid, None, Errors.MATCHER_UNAVAILABLE.code, detail) for _, r in live]
        async with self.redis.pipeline(transaction=False) as p:
            for (entry_id, req), reply in zip(live, replies, strict=True):
                p.publish(req.reply_to, wire.encode(_queued(reply, req, now)))
                p.xack(stream, Keys.MATCHER_GROUP, entry_id)
            await p.execute()
        self.served += len(live)
        INDEXED_SERVED.inc(len(live))
