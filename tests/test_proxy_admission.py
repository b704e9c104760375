"""The proxy's indexed route under a backlog, and its supervised loops, against a real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid

import psutil
import pytest
import redis.asyncio as aredis

from facedex import wire
from facedex.config import Settings
from facedex.proxy.indexed import OUTLIER_FACTOR, IndexedPlugin
from facedex.proxy.plugins import BruteForceRoute, Rematch
from facedex.redis.keys import Keys


@pytest.fixture
async def plugin(redis_url: str, redis_prefix: str):  # type: ignore[no-untyped-def]
    settings = Settings(redis_url=redis_url, redis_prefix=f"{redis_prefix}:adm{uuid.uuid4().hex[:6]}")
    p = IndexedPlugin(settings)
    await p.start()
    p.license.licensed, p.license.reason = True, ""  # the license answer, as if just checked (its loop waits 30 s)
    yield p
    await p.stop()


def request(list_id: uuid.UUID) -> wire.MatchRequest:
    return wire.MatchRequest(uuid.uuid4().bytes, list_id.bytes, 1, b"\0" * 2048, 5)


async def test_backlog_past_the_deadline_goes_to_brute_force_at_once(plugin: IndexedPlugin) -> None:
    list_id = uuid.uuid4()
    stream = plugin.keys.stream(plugin.keys.matching_label(str(list_id), 1))
    redis = plugin.redis
    assert redis is not None
    await redis.xgroup_create(stream, Keys.MATCHER_GROUP, id="$", mkstream=True)
    for _ in range(200):  # 200 requests nobody has read yet
        await redis.xadd(stream, {b"m": b"x"})
    plugin.entry_costs[stream] = 0.02  # answers have been taking 20 ms per entry ahead: 200 ahead is ~4 s > 1 s
    started = time.monotonic()
    with pytest.raises(Rematch, match="admission: 200 requests ahead"):
        await plugin.match(request(list_id))
    assert time.monotonic() - started < 0.5
    assert await redis.xlen(stream) == 200  # nothing appended
    # an empty stream admits the request: it is appended and waits (no matcher here) until its timeout
    other = uuid.uuid4()
    with pytest.raises(TimeoutError):
        await plugin.match(request(other))
    assert await redis.xlen(plugin.keys.stream(plugin.keys.matching_label(str(other), 1))) == 1
    other_stream = plugin.keys.stream(plugin.keys.matching_label(str(other), 1))
    assert plugin.entry_costs[other_stream] > 0.02  # a timed-out answer raises its list's estimate
    assert plugin.entry_costs[stream] == 0.02  # and no other list's: a stuck list does not shed a healthy one


def test_one_stalled_answer_does_not_shed_a_healthy_list() -> None:
    """A single answer slowed by a pause of the machine must not make a steady list's backlog look hopeless (it shed
    a healthy 1M index to brute force in a bench run); a list that stays slow is learnt within a dozen answers."""
    plugin = IndexedPlugin(Settings())  # the estimate alone: nothing started
    stream = "adm-stream"
    for _ in range(20):
        plugin._observe(stream, 0.064, 31)  # 32 in flight, 64 ms each: 2 ms per entry ahead
    steady = plugin.entry_costs[stream]
    plugin._observe(stream, 2.0, 0)  # one answer stalled for 2 s with nothing ahead of it
    assert plugin.entry_costs[stream] < 2 * steady
    assert 31 * plugin.entry_costs[stream] < plugin.settings.indexed.request_timeout_s  # concurrency 32 still admitted
    for _ in range(12):
        plugin._observe(stream, 2.0, 0)
    assert plugin.entry_costs[stream] > 0.5


async def test_backlog_stays_on_the_index_when_brute_force_would_be_slower(plugin: IndexedPlugin) -> None:
    """A backed-up 1M list is not shed to brute force when brute force would take longer still: it waits its turn
    (here until its timeout, as no matcher runs); a small list whose brute force is quick is shed at once."""
    redis = plugin.redis
    assert redis is not None
    big, small = uuid.uuid4(), uuid.uuid4()
    for list_id, size in ((big, 1_000_000), (small, 10_000)):
        stream = plugin.keys.stream(plugin.keys.matching_label(str(list_id), 1))
        await redis.xgroup_create(stream, Keys.MATCHER_GROUP, id="$", mkstream=True)
        for _ in range(200):
            await redis.xadd(stream, {b"m": b"x"})
        plugin.sizes[stream] = size  # as its index last answered
        plugin.entry_costs[stream] = 0.02  # 200 ahead: ~4 s on the index
    plugin.fallback_estimate = lambda n: n * 5e-6  # brute force: 5 s over 1M faces, 0.05 s over 10k
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # waited on the index (1 s timeout), was not shed
        await plugin.match(request(big))
    assert time.monotonic() - started >= 0.9
    with pytest.raises(Rematch, match=r"admission: 200 requests ahead.*brute force ~0.05s"):
        await plugin.match(request(small))


def test_brute_force_is_costed_before_its_first_answer() -> None:
    """A cold proxy under load must not think a 1M scan is free: shedding would only deepen the overload."""
    route = BruteForceRoute(Settings())
    alone = route.expected_seconds(1_000_000)
    assert 0.05 <= alone <= 0.5
    route.in_flight = 3  # three scans ahead of it
    assert route.expected_seconds(1_000_000) == pytest.approx(4 * alone)
    route.face_cost_s = 1e-6  # learned from answers: it wins over the prior
    assert route.expected_seconds(1_000_000) == pytest.approx(4.0)


async def test_reply_listener_resubscribes_after_its_connection_dies(plugin: IndexedPlugin, redis_url: str) -> None:
    """Kill the listener's connection from the server side: the loop restarts with a new PubSub and replies flow again."""
    admin = aredis.Redis.from_url(redis_url)
    try:
        async def subscribers() -> int:
            return dict(await admin.pubsub_numsub(plugin.channel))[plugin.channel.encode()]

        deadline = time.monotonic() + 10
        while await subscribers() != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # only this process's pub/sub connections (the Redis server is shared): matched by their local address
        ours = {f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.Process().net_connections("tcp") if c.raddr}
        killed = 0
        for client in await admin.client_list(_type="pubsub"):
            if client["addr"] in ours:
                killed += await admin.client_kill_filter(_id=client["id"])
        assert killed >= 1
        deadline = time.monotonic() + 10
        while plugin.supervisor.statuses()["replies"]["restarts"] == 0 or await subscribers() != 1:
            assert time.monotonic() < deadline, plugin.supervisor.statuses()
            await asyncio.sleep(0.05)
        rid = uuid.uuid4().hex
        future: asyncio.Future[wire.IndexedReply] = asyncio.get_running_loop().create_future()
        plugin.pending[rid] = future
        await admin.publish(plugin.channel, wire.encode(wire.IndexedReply(rid, None, 12001, "x")))
        reply = await asyncio.wait_for(future, 5)
        assert reply.error_code == 12001
        deadline = time.monotonic() + 5  # green again once the new life has run a while (facedex.supervise)
        while True:
            try:
                await plugin.health_check()
                break
            except RuntimeError:
                assert time.monotonic() < deadline, plugin.supervisor.statuses()
                await asyncio.sleep(0.1)
    finally:
        await admin.aclose()


async def test_what_is_kept_per_list_stream_expires_after_its_last_request(plugin: IndexedPlugin) -> None:
    """Cost estimates, sizes and backlogs are kept per list stream; a list not asked for 10 minutes is forgotten, so
    the proxy's memory is bounded by the lists in use, not by every list ever matched."""
    from facedex.proxy import indexed

    old, fresh = "stream-old", "stream-fresh"
    now = time.monotonic()
    for stream, used in ((old, now - indexed.STREAM_STATE_TTL_S - 1), (fresh, now)):
        plugin.used[stream] = used
        plugin.entry_costs[stream] = 0.01
        plugin.sizes[stream] = 1000
        plugin.backlogs[stream] = (now, 3)
    await plugin.sync_labels()
    for per_stream in (plugin.used, plugin.entry_costs, plugin.sizes, plugin.backlogs):
        assert old not in per_stream and fresh in per_stream


async def test_the_cost_estimate_learns_only_from_backlogs_read_for_the_request(plugin: IndexedPlugin) -> None:
    """An answer's time is spread over the entries that were ahead of it; with a cached backlog count (up to 100 ms
    old, often 0 in a burst) that split is unknown, so the answer does not move the estimate: it once grew many
    times too high and shed a healthy index's requests to brute force."""
    redis = plugin.redis
    assert redis is not None
    list_id = uuid.uuid4()
    stream = plugin.keys.stream(plugin.keys.matching_label(str(list_id), 1))
    await redis.xgroup_create(stream, Keys.MATCHER_GROUP, id="$", mkstream=True)

    stop = asyncio.Event()

    async def answer_after(delay: float) -> None:  # a matcher of the group that takes ``delay`` over each entry
        while not stop.is_set():  # (a cancelled blocking XREADGROUP can hang redis-py: it stops on its own)
            got = await redis.xreadgroup(Keys.MATCHER_GROUP, "m1", {stream: ">"}, count=1, block=100)
            if got:
                entry_id, fields = got[0][1][0]
                entry = wire.decode(fields[b"m"], wire.IndexedRequest)
                await asyncio.sleep(delay)
                reply = wire.IndexedReply(entry.rid, wire.MatchResponse(results=[], route="indexed", list_size=10))
                await redis.xack(stream, Keys.MATCHER_GROUP, entry_id)
                await redis.publish(entry.reply_to, wire.encode(reply))

    matcher = asyncio.create_task(answer_after(0.3))
    try:
        plugin.entry_costs[stream] = 0.002
        plugin.backlogs[stream] = (time.monotonic() + 60, 0)  # a cached count ("0 ahead") that will not expire here
        await plugin.match(request(list_id))
        assert plugin.entry_costs[stream] == 0.002  # 0.3 s over a stale "0 ahead": not learnt
        del plugin.backlogs[stream]  # read for the request: 0 ahead for real, so the 0.3 s is this entry's own
        await plugin.match(request(list_id))
        # its moving average, the answer counted at most OUTLIER_FACTOR times the estimate (one answer is no trend)
        assert plugin.entry_costs[stream] == pytest.approx(0.8 * 0.002 + 0.2 * min(0.3, OUTLIER_FACTOR * 0.002), rel=0.2)
    finally:
        stop.set()
        await matcher
