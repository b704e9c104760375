"""Brute-force Matcher service: ``POST /1/match`` (msgpack) over cached, always-fresh list matrices."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request, Response

from facedex import descriptors, wire
from facedex.bruteforce.cache import ListCache, ListMatrix
from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.faces.store import FacesStore, create_pool
from facedex.http import create_app
from facedex.metrics import CACHED_LIST_BYTES


def run_search(matrix: ListMatrix, req: wire.MatchRequest) -> wire.MatchResponse:
    """The exact search itself, run in a worker thread under the matrix's read lock."""
    queries = req.reference_matrix(matrix.dim)
    scores, ids = matrix.search(queries, req.limit, req.face_ids)
    results = []
    for i in range(queries.shape[0]):
        sims = descriptors.similarity(scores[i]).astype(np.float32)
        keep = sims >= req.threshold if req.threshold is not None else slice(None)
        results.append(wire.ReferenceMatches(face_ids=ids[i][keep].tobytes(), similarities=sims[keep].tobytes()))
    size = matrix.n if req.face_ids is None else int(sum(f in matrix.pos for f in req.face_ids))
    return wire.MatchResponse(results=results, route="bruteforce", list_size=size)


async def match(cache: ListCache, executor: ThreadPoolExecutor, req: wire.MatchRequest) -> wire.MatchResponse:
    spec = descriptors.get_version(req.version)
    if len(req.references) == 0 or len(req.references) % (spec.dim * 4):
        raise FacedexError(Errors.DESCRIPTOR_LENGTH, f"references are not whole {spec.dim}-d float32 vectors")
    list_id = uuid.UUID(bytes=req.list_id)
    matrix = await cache.fresh(list_id, req.version)
    if matrix is None or matrix.account_id.bytes != req.account_id:
        raise FacedexError(Errors.LIST_NOT_FOUND, f"list {list_id} not found")
    async with matrix.lock.read():
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, run_search, matrix, req)


def build_app(settings: Settings) -> FastAPI:
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert settings.database_url, "database_url must be resolved before a service starts"
        pool = await create_pool(settings.database_url, max_size=20)
        store = FacesStore(pool)
        state["cache"] = ListCache(store, settings.bruteforce_engine.cache_max_bytes)
        state["executor"] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="exact")  # BLAS threads use the cores
        app.state.health["faces_db"] = lambda: pool.fetchval("SELECT 1")

        async def scrape() -> None:
            CACHED_LIST_BYTES.set(state["cache"].nbytes)  # type: ignore[attr-defined]

        app.state.scrape_hooks.append(scrape)
        yield
        state["executor"].shutdown(wait=False)  # type: ignore[attr-defined]
        await pool.close()

    app = create_app(
        "bruteforce",
        title="facedex Matcher (brute force)",
        description="Exact matching over list matrices cached in memory and kept fresh from the Faces DB change log.",
        max_body_bytes=settings.max_body_bytes,
        lifespan=lifespan,
    )

    @app.post("/1/match", tags=["matching"], summary="Exact top-k of references against one list (msgpack)")
    async def match_route(request: Request) -> Response:
        req = wire.decode(await request.body(), wire.MatchRequest)
        resp = await match(state["cache"], state["executor"], req)  # type: ignore[arg-type]
        return Response(wire.encode(resp), media_type=wire.CONTENT_TYPE)

    @app.get("/1/cache", tags=["service"], summary="Lists held in memory")
    async def cache_info() -> dict[str, object]:
        cache: ListCache = state["cache"]  # type: ignore[assignment]
        return {
            "bytes": cache.nbytes,
            "max_bytes": cache.max_bytes,
            "lists": [
                {"list_id": str(m.list_id), "version": m.version, "faces": m.n, "change_seq": m.head, "bytes": m.nbytes}
                for m in cache.entries()
            ],
        }

    return app
