"""What a service holds for its lifetime, opened at start and closed at stop, each with its health check.

A service's lifespan (:func:`service_lifespan`) gets an :class:`~contextlib.AsyncExitStack`; whatever it opens
registers its close there (the openers below do it themselves), so everything opened is closed in reverse
order when the service stops, and also when its start fails half-way: a Redis that does not answer at start
leaves no Faces DB pool behind.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import redis.asyncio as aredis
from fastapi import FastAPI

from facedex.config import Settings
from facedex.faces.store import FacesStore, bounded, create_pool
from facedex.redis.connection import connect
from facedex.redis.heads import ChangeHeads
from facedex.redis.keys import Keys

Body = Callable[[FastAPI, AsyncExitStack], AsyncIterator[None]]


def service_lifespan(body: Body) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A FastAPI lifespan from a generator that opens what the service needs on ``stack`` and yields while it serves."""
    scoped = asynccontextmanager(body)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        freeze_startup_objects()
        async with AsyncExitStack() as stack, scoped(app, stack):
            yield

    return lifespan


def freeze_startup_objects() -> None:
    """Leave what exists when a service starts (its modules, classes and app: most of its objects, for good) out of
    every later garbage collection.

    Why: a full collection walks every tracked object, and a service holds several hundred thousand of them from its
    imports alone. Under load (bench e2e, 10k faces, 32 requests in flight) the API paused 11-76 ms in each of its
    full collections and the proxy up to 65 ms: every request in flight waited, and those pauses were the p99 (after:
    2-5 ms). Called before the service opens anything, so what it opens and loads (pools, indexes that a reload
    later replaces) is collected as usual; frozen objects are still freed when their last reference goes.
    """
    gc.collect()
    gc.freeze()


def _settings(app: FastAPI) -> Settings:
    return app.state.settings  # type: ignore[no-any-return]  # set by facedex.http.create_app


async def faces_db(app: FastAPI, stack: AsyncExitStack, max_size: int, writes: bool = False) -> FacesStore:
    """A pool of at most ``max_size`` connections to the Faces DB; ``faces_db`` in ``/healthcheck``, bounded so a
    stalled database shows red instead of hanging the check.

    ``writes``: the service changes lists, so with Redis configured it announces their heads there
    (:mod:`facedex.redis.heads`) and its health includes ``redis``: its list writes are refused while Redis is down."""
    settings = _settings(app)
    url = settings.database_url
    assert url, "database_url must be resolved before a service starts"
    pool = await create_pool(url, max_size=max_size)
    stack.push_async_callback(pool.close)
    app.state.health["faces_db"] = lambda: bounded(pool.fetchval("SELECT 1"), 2.0)
    heads = None
    if writes and settings.redis_url:
        heads = ChangeHeads(redis_client(app, stack, decode=False, socket_timeout=2.0), Keys(settings.redis_prefix))
    return FacesStore(pool, heads)


def redis_client(app: FastAPI, stack: AsyncExitStack, decode: bool = True, socket_timeout: float | None = None) -> aredis.Redis:
    """The service's Redis client (:func:`facedex.redis.connection.connect`); ``redis`` in ``/healthcheck``."""
    url = _settings(app).redis_url
    assert url, "redis_url must be resolved before a service starts"
    client = connect(url, decode=decode, socket_timeout=socket_timeout)
    stack.push_async_callback(client.aclose)
    app.state.health["redis"] = client.ping
    return client
