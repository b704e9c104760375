"""Brute-force Matcher service: ``POST /1/match`` (msgpack) over cached, always-fresh list matrices."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from typing import Literal

import msgspec
from fastapi import FastAPI
from pydantic import BaseModel, Field

from facedex import descriptors, timing, wire
from facedex.bruteforce.batching import Batcher
from facedex.bruteforce.cache import ListCache
from facedex.bruteforce.exact import half_scan_sound
from facedex.config import MatchingSettings, Settings
from facedex.errors import Errors, FacedexError
from facedex.http import create_app, errors, msgpack_route
from facedex.internal_auth import verify_request
from facedex.lifespan import faces_db, service_lifespan
from facedex.metrics import CACHED_LIST_BYTES


class CachedList(BaseModel):
    list_id: uuid.UUID
    version: int
    faces: int
    change_seq: int
    bytes: int
    scan: Literal["fp16", "fp32"] | None = Field(
        None, description="What a one-reference search scans here, as measured on this list's searches; null while it learns.",
    )


class CacheOut(BaseModel):
    bytes: int = Field(..., description="Bytes of list matrices held.")
    max_bytes: int
    lists: list[CachedList]


async def match(cache: ListCache, batcher: Batcher, req: wire.MatchRequest, settings: MatchingSettings | None = None
) -> wire.MatchResponse:
    """Exact top-k of one request, read-your-writes fresh.

    A cached list is searched *while* its change head is read (a read begun after the request arrived,
    :meth:`ListCache.head`): the answer stands if the matrix searched already held every change up to that head;
    if the list moved meanwhile, the changes are applied and it is searched again. So the Faces DB round trip
    overlaps the search instead of preceding it, and ``fresh`` is only what the check added after the search.
    """
    spec = descriptors.get_version(req.version)
    if len(req.references) == 0 or len(req.references) % (spec.dim * 4):
        raise FacedexError(Errors.DESCRIPTOR_LENGTH, f"references are not whole {spec.dim}-d float32 vectors")
    list_id = uuid.UUID(bytes=req.list_id)
    timeout = settings.head_timeout_s if settings else None
    cached = cache.peek(list_id, req.version)
    searched: tuple[wire.MatchResponse, int] | None = None
    if cached is not None and cached.account_id.bytes == req.account_id:  # (a list's owner never changes)
        checking = asyncio.ensure_future(cache.current(list_id, req.version, timeout))
        try:
            searched = await batcher.search_at(cached, req)
        except BaseException:
            checking.add_done_callback(lambda t: t.cancelled() or t.exception())  # it ends on its own, unobserved
            raise
        started = time.perf_counter()
        matrix, stale = await checking
    else:
        started = time.perf_counter()
        matrix, stale = await cache.current(list_id, req.version, timeout)
    fresh_ms = timing.since(started)
    if matrix is None or matrix.account_id.bytes != req.account_id:
        raise FacedexError(Errors.LIST_NOT_FOUND, f"list {list_id} not found")
    if stale and settings is not None and settings.when_stale == "refuse":
        raise FacedexError(Errors.FACES_DB_UNAVAILABLE, f"list {list_id}: the Faces DB did not answer")
    if searched is not None and matrix is cached and matrix.head <= searched[1]:
        resp = searched[0]  # nothing newer than what was searched: the answer is as fresh as a search after the check
    else:
        resp, _ = await batcher.search_at(matrix, req)
    resp = msgspec.structs.replace(resp, timings={**(resp.timings or {}), timing.FRESH: fresh_ms})
    return msgspec.structs.replace(resp, consistency="stale") if stale else resp


def build_app(settings: Settings) -> FastAPI:
    state: dict[str, object] = {}

    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        # checked once here, not on the first request: a CPU whose fp16 kernel is not within the bound scans fp32 only
        half_scan = settings.bruteforce_engine.half_scan and await asyncio.to_thread(half_scan_sound)
        state["cache"] = ListCache(
            await faces_db(app, stack, max_size=20), settings.bruteforce_engine.cache_max_bytes, half_scan=half_scan,
        )
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="exact")  # BLAS threads use the cores
        stack.callback(executor.shutdown, wait=False)
        state["batcher"] = Batcher(executor, settings.matching.max_references)

        async def scrape() -> None:
            CACHED_LIST_BYTES.set(state["cache"].nbytes)  # type: ignore[attr-defined]

        app.state.scrape_hooks.append(scrape)
        yield

    app = create_app(
        "bruteforce", settings,
        title="facedex Matcher (brute force)",
        description="Exact matching over list matrices cached in memory and kept fresh from the Faces DB change log.",
        internal=True,
        lifespan=lifespan,
    )

    @msgpack_route(
        app, "/1/match", wire.MatchRequest, wire.MatchResponse, tags=["matching"],
        summary="Exact top-k of references against one list (msgpack)",
        responses=errors(Errors.DESCRIPTOR_VERSION_UNKNOWN, Errors.DESCRIPTOR_LENGTH, Errors.LIST_NOT_FOUND),
    )
    async def match_route(body: bytes) -> bytes:
        req = wire.decode(body, wire.MatchRequest)
        verify_request(settings.internal_token, req)
        resp = await match(state["cache"], state["batcher"], req, settings.matching)  # type: ignore[arg-type]
        return wire.encode(resp)

    @app.get("/1/cache", tags=["service"], summary="Lists held in memory")
    async def cache_info() -> CacheOut:
        cache: ListCache = state["cache"]  # type: ignore[assignment]
        return CacheOut(
            bytes=cache.nbytes,
            max_bytes=cache.max_bytes,
            lists=[
                CachedList(list_id=m.list_id, version=m.version, faces=m.n, change_seq=m.head, bytes=m.nbytes,
                           scan=m.scans.chosen(1) if m.half is not None else "fp32")
                for m in cache.entries()
            ],
        )

    return app
