"""The proxy's indexed route: lists some Indexed Matcher advertises go to it through a Redis stream.

``accepts`` is a set lookup: the labels present in Redis are synced every
``label_sync_s`` (one ZRANGEBYSCORE of the labels set), not per request. A label is (list, descriptor
version): a request goes to the index of its own version; one the index cannot
serve as asked (a face-id or any other candidate filter) is left to brute force. ``match`` checks the license
(refreshed by its own loop), appends the request to the list's stream together with the list's announced change
head (:mod:`facedex.redis.heads`), and waits for the answer on this proxy's reply channel for at most
``indexed.request_timeout_s``; a timeout, an error answer or a refused license
raises, and the proxy answers by brute force instead.

The reply listener and the label sync are supervised loops (:mod:`facedex.supervise`): a listener that
loses its connection (a Redis restart) is restarted with a new PubSub, so it re-subscribes; while labels
cannot be read none are routed here; both are part of ``/healthcheck``. Admission control: a request whose
list stream already holds more work than it could wait for (backlog x the observed answer time per entry
ahead > the timeout) goes to brute force at once, unless brute force over that list would take longer still
(then it waits its turn: shedding a 1M list to a 45x costlier scan only deepens an overload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import msgspec
import redis.asyncio as aredis
from redis.exceptions import ResponseError

from facedex import timing, wire
from facedex.config import Settings
from facedex.errors import FacedexError, by_code
from facedex.licenses.client import License
from facedex.proxy.plugins import Rematch
from facedex.redis.connection import connect
from facedex.redis.heads import ChangeHeads
from facedex.redis.keys import Keys
from facedex.supervise import Beat, Supervisor

log = logging.getLogger(__name__)


STREAM_STATE_TTL_S = 600.0  # a list's cost estimate, size and backlog are forgotten this long after its last request
OUTLIER_FACTOR = 4.0  # an answer counts at most this many times the current per-entry estimate (_observe)


class IndexedPlugin:
    name = "indexed"
    label_sync_s = 0.5
    backlog_cache_s = 0.1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.proxy_id = str(uuid.uuid4())
        self.channel = self.keys.replies(self.proxy_id)
        self.labels: set[str] = set()
        self.pending: dict[str, asyncio.Future[wire.IndexedReply]] = {}
        self.license = License(settings, "index", timeout_s=2.0)
        self.redis: aredis.Redis | None = None
        self.heads: ChangeHeads | None = None
        self.backlogs: dict[str, tuple[float, int]] = {}  # stream -> (when read, entries waiting)
        # stream -> moving average of an answer's time per entry ahead of it: per list, so one list that times out
        # (a stuck or dead matcher) does not make the proxy shed another list's requests from a healthy index
        self.entry_costs: dict[str, float] = {}
        self.sizes: dict[str, int] = {}  # stream -> faces its index answered over, last seen
        self.used: dict[str, float] = {}  # stream -> when a request last went to it (what is kept per stream expires)
        # how long brute force would take over n faces now (the Router sets it): shed only to a faster route
        self.fallback_estimate: Callable[[int], float | None] | None = None
        self.supervisor = Supervisor("proxy", max_backoff_s=1.0)  # the indexed route is back within ~1 s of Redis
        self.supervisor.forever("replies", self._listen, stall_s=10.0)
        self.supervisor.every("labels", self.label_sync_s, self.sync_labels, round_timeout_s=5.0)
        self.supervisor.every("license", settings.license.check_period_s, self.license.check, round_timeout_s=5.0)

    async def start(self) -> None:
        assert self.settings.redis_url, "the indexed plugin needs redis_url"
        # a socket timeout: a stalled Redis makes calls fail (and requests fall back) rather than hang
        self.redis = connect(self.settings.redis_url, decode=False, socket_timeout=2.0)
        self.heads = ChangeHeads(self.redis, self.keys)
        for first in (self.sync_labels, self.license.check):
            with contextlib.suppress(Exception):  # best effort: the loops retry
                await first()
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()
        await self.license.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def health_check(self) -> None:
        await self.supervisor.check()

    async def _listen(self, beat: Beat) -> None:
        """One life of the reply listener: a PubSub of its own, so a restart after a Redis restart re-subscribes."""
        assert self.redis is not None
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while True:
                beat.beat()
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    reply = wire.decode(message["data"], wire.IndexedReply)
                except Exception:
                    continue
                future = self.pending.pop(reply.rid, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1.0)

    async def sync_labels(self) -> None:
        """Live labels: members of the labels set whose expiry is ahead of the Redis server's clock.

        While Redis cannot be read, no list is routed here (requests go straight to brute force). Also forgets
        what is kept per list stream (cost estimate, size, backlog) for lists not asked for a while."""
        assert self.redis is not None
        try:
            seconds, micros = await self.redis.time()
            now = seconds * 1000 + micros // 1000
            async with self.redis.pipeline(transaction=False) as p:
                p.zremrangebyscore(self.keys.labels, "-inf", now)  # labels of matchers that died without withdrawing
                p.zrangebyscore(self.keys.labels, now, "+inf")
                _, members = await p.execute()
        except Exception:
            self.labels = set()
            raise
        self.labels = {self.keys.labels_member_label(m.decode()) for m in members}
        idle = time.monotonic() - max(STREAM_STATE_TTL_S, 2 * self.settings.indexed.request_timeout_s)  # none in flight
        for stream in [s for s, used in self.used.items() if used < idle]:  # bounded by the lists matched lately
            for per_stream in (self.used, self.entry_costs, self.sizes, self.backlogs):
                per_stream.pop(stream, None)

    def accepts(self, req: wire.MatchRequest) -> bool:
        return (
            not req.exact
            and req.face_ids is None
            and req.filters is None
            and self.keys.matching_label(str(uuid.UUID(bytes=req.list_id)), req.version) in self.labels
        )

    async def _backlog(self, stream: str) -> tuple[int, bool]:
        """Entries of the list's stream not yet answered (pending + undelivered), cached for ~100 ms; and whether
        this call read it (not the cache)."""
        assert self.redis is not None
        now = time.monotonic()
        cached = self.backlogs.get(stream)
        if cached is not None and now - cached[0] < self.backlog_cache_s:
            return cached[1], False
        backlog = 0
        try:
            for group in await self.redis.xinfo_groups(stream):
                if group.get("name") in (Keys.MATCHER_GROUP, Keys.MATCHER_GROUP.encode()):
                    backlog = int(group.get("pending") or 0) + int(group.get("lag") or 0)
        except ResponseError:  # no stream yet
            backlog = 0
        self.backlogs[stream] = (now, backlog)
        return backlog, True

    def _observe(self, stream: str, seconds: float, ahead: int) -> None:
        cost = seconds / (ahead + 1)
        before = self.entry_costs.get(stream)
        if before is not None:  # one answer moves the estimate up by at most 1.6x: one stalled answer (a pause of the
            # machine) made it 100x too high and shed a healthy 1M index to a brute force that had yet to load the
            # list (bench e2e, concurrency 32: p99 21.7 s); a list that stays slow is still learnt within a dozen
            cost = min(cost, OUTLIER_FACTOR * before)
        self.entry_costs[stream] = cost if before is None else 0.8 * before + 0.2 * cost

    async def match(self, req: wire.MatchRequest) -> wire.MatchResponse:
        assert self.redis is not None
        if not self.license.licensed:  # refreshed by its own loop: no request waits for the Licenses service
            raise Rematch(f"indexed matching not licensed: {self.license.reason}")
        timeout = self.settings.indexed.request_timeout_s
        label = self.keys.matching_label(str(uuid.UUID(bytes=req.list_id)), req.version)
        stream = self.keys.stream(label)
        started = self.used[stream] = time.monotonic()
        rid = uuid.uuid4().hex
        future: asyncio.Future[wire.IndexedReply] = asyncio.get_running_loop().create_future()
        deadline_ms = int((time.time() + timeout) * 1000)
        ahead, measured = 0, False
        try:
            async with asyncio.timeout(timeout):
                ahead, measured = await self._backlog(stream)
                expected = ahead * self.entry_costs.get(stream, 0.0)
                if expected > timeout:  # admission control: it would wait past its deadline
                    size = self.sizes.get(stream)
                    other = self.fallback_estimate(size) if self.fallback_estimate and size else None
                    if other is None or other < expected:
                        raise Rematch(f"admission: {ahead} requests ahead in the list's stream, ~{expected:.2f}s > {timeout}s"
                                      + (f" (brute force ~{other:.2f}s)" if other is not None else ""))
                self.pending[rid] = future
                entry = wire.IndexedRequest(rid, self.channel, deadline_ms, req, sent_us=int(time.time() * 1e6))
                sent = time.perf_counter()
                assert self.heads is not None
                await self.heads.append(label, wire.encode(entry), maxlen=10_000)  # with the list's announced head
                reply = await future
                round_trip_ms = timing.since(sent)
        except TimeoutError:
            self._observe(stream, timeout, ahead)
            raise TimeoutError(f"no indexed answer within {timeout}s") from None
        finally:
            self.pending.pop(rid, None)
        if measured:  # an answer's time per entry ahead, only where "ahead" was read for this request: a cached
            # count (up to 100 ms old) can be 0 in a burst while dozens wait, and such answers made the estimate many
            # times too high: a healthy 1M index shed requests to a far slower brute force (bench e2e, concurrency 32)
            self._observe(stream, time.monotonic() - started, ahead)
        if reply.error_code:
            raise FacedexError(by_code(reply.error_code), reply.detail)
        assert reply.response is not None
        self.sizes[stream] = reply.response.list_size
        return msgspec.structs.replace(reply.response, timings=timing.close_round_trip(reply.response.timings, round_trip_ms))
