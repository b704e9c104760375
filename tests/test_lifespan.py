"""A service's lifespan (facedex.lifespan): what it opens is checked in /healthcheck and closed in reverse order,
at stop and when its start fails half-way; create_app takes the body limit and the internal token from the settings."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest
from fastapi import FastAPI

from facedex.config import Settings
from facedex.faces.store import FacesStore
from facedex.http import create_app
from facedex.lifespan import faces_db, redis_client, service_lifespan


async def test_what_a_service_opens_is_checked_and_closed_in_reverse_order(database_url: str, redis_url: str) -> None:
    opened: dict[str, FacesStore] = {}
    order: list[str] = []

    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        opened["store"] = store = await faces_db(app, stack, max_size=2)
        redis_client(app, stack)

        async def last_opened_closes_first() -> None:
            order.append("pool open" if not store.pool.is_closing() else "pool closed")

        stack.push_async_callback(last_opened_closes_first)
        yield

    app = create_app("unit", Settings(database_url=database_url, redis_url=redis_url), title="unit", description="",
                     lifespan=lifespan)
    async with app.router.lifespan_context(app):
        assert set(app.state.health) == {"faces_db", "redis"}
        for check in app.state.health.values():
            await check()  # both answer
    assert order == ["pool open"] and opened["store"].pool.is_closing()


async def test_a_start_that_fails_half_way_closes_what_it_opened(database_url: str) -> None:
    opened: dict[str, FacesStore] = {}

    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        opened["store"] = await faces_db(app, stack, max_size=2)
        raise ConnectionError("the next dependency did not answer")
        yield  # never reached

    app = create_app("unit", Settings(database_url=database_url), title="unit", description="", lifespan=lifespan)
    with pytest.raises(ConnectionError):
        async with app.router.lifespan_context(app):
            pass
    assert opened["store"].pool.is_closing(), "the pool opened before the failure was left open"


async def test_create_app_takes_the_body_limit_and_the_internal_token_from_the_settings() -> None:
    app = create_app("unit", Settings(max_body_bytes=100, internal_token="secret"), title="unit", description="",
                     internal=True)

    @app.post("/1/echo")
    async def echo() -> dict[str, str]:
        return {"ok": "yes"}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://unit") as client:
        assert (await client.post("/1/echo", content=b"x")).json()["error_code"] == 10010  # no internal token
        auth = {"Authorization": "Bearer secret"}
        assert (await client.post("/1/echo", content=b"x", headers=auth)).status_code == 200
        too_big = await client.post("/1/echo", content=b"x" * 101, headers=auth)
        assert too_big.status_code == 413
    assert app.state.settings.internal_token == "secret"


async def test_a_started_service_leaves_its_startup_objects_out_of_later_collections() -> None:
    """What exists when a service starts (modules, the app) is frozen (gc.freeze): full collections under load no
    longer walk it (they paused the API for up to 76 ms at 32 requests in flight). What the service opens while
    starting, and makes later, is collected as usual (an index loaded at start and replaced later must go)."""
    made: dict[str, list[list[int]]] = {"before": [[] for _ in range(1000)]}

    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        made["opened"] = [[]]
        yield

    app = create_app("unit", Settings(), title="unit", description="", lifespan=lifespan)
    gc.unfreeze()
    try:
        async with app.router.lifespan_context(app):
            later = [[1]]
            tracked = gc.get_objects()  # the generations a collection walks; the frozen ones are not among them
            assert gc.get_freeze_count() >= 1000
            assert not any(o is made["before"] for o in tracked)
            assert any(o is made["opened"] for o in tracked) and any(o is later for o in tracked)
    finally:
        gc.unfreeze()
