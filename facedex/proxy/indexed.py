"""The proxy's indexed route: lists some Indexed Matcher advertises go to it through a Redis stream.

``accepts`` is a set lookup: the labels present in Redis are synced every
``label_sync_s`` (one ZRANGEBYSCORE of the labels set), not per request. A label is (list, descriptor
version): a request goes to the index of its own version; one the index cannot
serve as asked (a face-id filter) is left to brute force. ``match`` checks the license (cached), appends the request to the list's
stream, and waits for the answer on this proxy's reply channel for at most
``indexed.request_timeout_s``; a timeout, an error answer or a refused license
raises, and the proxy answers by brute force instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import redis.asyncio as aredis

from facedex import wire
from facedex.config import Settings
from facedex.errors import FacedexError, by_code
from facedex.licenses.client import feature_enabled
from facedex.proxy.plugins import Rematch
from facedex.redis.connection import connect
from facedex.redis.keys import Keys

log = logging.getLogger(__name__)


class IndexedPlugin:
    name = "indexed"
    label_sync_s = 0.5

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.proxy_id = str(uuid.uuid4())
        self.channel = self.keys.replies(self.proxy_id)
        self.labels: set[str] = set()
        self.pending: dict[str, asyncio.Future[wire.IndexedReply]] = {}
        self.license: tuple[float, bool, str] = (0.0, False, "")
        self.redis: aredis.Redis | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        assert self.settings.redis_url, "the indexed plugin needs redis_url"
        self.redis = connect(self.settings.redis_url, decode=False)
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.channel)
        self._tasks = [asyncio.create_task(self._listen(pubsub)), asyncio.create_task(self._sync_labels())]
        await self.sync_labels()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()

    async def _listen(self, pubsub: aredis.client.PubSub) -> None:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            try:
                reply = wire.decode(message["data"], wire.IndexedReply)
            except Exception:
                continue
            future = self.pending.pop(reply.rid, None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def sync_labels(self) -> None:
        """Live labels: members of the labels set whose expiry is ahead of the Redis server's clock."""
        assert self.redis is not None
        seconds, micros = await self.redis.time()
        now = seconds * 1000 + micros // 1000
        async with self.redis.pipeline(transaction=False) as p:
            p.zremrangebyscore(self.keys.labels, "-inf", now)  # labels of matchers that died without withdrawing
            p.zrangebyscore(self.keys.labels, now, "+inf")
            _, members = await p.execute()
        self.labels = {self.keys.labels_member_label(m.decode()) for m in members}

    async def _sync_labels(self) -> None:
        while True:
            await asyncio.sleep(self.label_sync_s)
            with contextlib.suppress(Exception):
                await self.sync_labels()

    def accepts(self, req: wire.MatchRequest) -> bool:
        return (
            not req.exact
            and req.face_ids is None
            and self.keys.matching_label(str(uuid.UUID(bytes=req.list_id)), req.version) in self.labels
        )

    async def _licensed(self) -> tuple[bool, str]:
        checked, ok, reason = self.license
        if time.monotonic() - checked < self.settings.license.check_period_s:
            return ok, reason
        ok, reason = await feature_enabled(self.settings, "index", timeout_s=2.0)
        self.license = (time.monotonic(), ok, reason)
        return ok, reason

    async def match(self, req: wire.MatchRequest) -> wire.MatchResponse:
        assert self.redis is not None
        ok, reason = await self._licensed()
        if not ok:
            raise Rematch(f"indexed matching not licensed: {reason}")
        timeout = self.settings.indexed.request_timeout_s
        rid = uuid.uuid4().hex
        future: asyncio.Future[wire.IndexedReply] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        entry = wire.IndexedRequest(rid, self.channel, int((time.time() + timeout) * 1000), req)
        try:
            await self.redis.xadd(
                self.keys.stream(self.keys.matching_label(str(uuid.UUID(bytes=req.list_id)), req.version)), {b"m": wire.encode(entry)}, maxlen=10_000, approximate=True
            )
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"no indexed answer within {timeout}s") from None
        finally:
            self.pending.pop(rid, None)
        if reply.error_code:
            raise FacedexError(by_code(reply.error_code), reply.detail)
        assert reply.response is not None
        return reply.response
