"""Indexed Matcher service: the HTTP side (health, loaded indexes); matching itself goes through Redis."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from fastapi import FastAPI
from pydantic import BaseModel, Field

from facedex.config import Settings
from facedex.http import create_app
from facedex.lifespan import faces_db, redis_client, service_lifespan
from facedex.matcher.service import MatcherService
from facedex.metrics import INDEX_FACES
from facedex.storage.base import open_storage


class LoadedIndexOut(BaseModel):
    list_id: str
    descriptor_version: int
    kind: str = Field(..., description="The index kind (facedex.index.registry).")
    index_id: str
    faces: int
    change_seq: int = Field(..., description="The list's change-log head applied to the loaded graph.")
    built_change_seq: int = Field(..., description="The head the index was built at.")
    load_seconds: float


class LoadedIndexes(BaseModel):
    matcher_id: str
    licensed: bool
    license_reason: str | None = None
    loops: dict[str, dict[str, object]] = Field(..., description="State of each supervised background loop.")
    served: int = Field(..., description="Matching requests answered since start.")
    indexes: list[LoadedIndexOut]


def build_app(settings: Settings) -> FastAPI:
    matcher_id = settings.indexed.matcher_id or f"{socket.gethostname()}:{settings.matcher.port}"
    state: dict[str, MatcherService] = {}

    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        store = await faces_db(app, stack, max_size=5)
        redis = redis_client(app, stack, decode=False, socket_timeout=2.0)  # msgpack entries; a stalled Redis fails fast
        service = MatcherService(settings, redis, store, open_storage(settings), matcher_id)
        state["service"] = service
        app.state.health["loops"] = service.supervisor.check

        async def scrape() -> None:
            INDEX_FACES.clear()
            for label, idx in service.loaded.items():
                INDEX_FACES.labels(label).set(idx.size)

        app.state.scrape_hooks.append(scrape)
        await service.start()
        stack.push_async_callback(service.stop)
        yield

    app = create_app(
        "matcher", settings,
        title="facedex Indexed Matcher",
        description="Serves list indexes from memory; matching requests arrive on Redis streams, not HTTP.",
        internal=True,
        lifespan=lifespan,
    )

    @app.get("/1/indexes", tags=["indexes"], summary="Indexes loaded in this matcher")
    async def indexes() -> LoadedIndexes:
        service = state["service"]
        return LoadedIndexes(
            matcher_id=matcher_id,
            licensed=service.license.licensed,
            license_reason=service.license.reason,
            loops=service.supervisor.statuses(),
            served=service.served,
            indexes=[
                LoadedIndexOut(list_id=idx.list_id, descriptor_version=idx.meta.descriptor_version, kind=idx.meta.kind,
                               index_id=idx.meta.index_id, faces=idx.size, change_seq=idx.head,
                               built_change_seq=idx.meta.change_seq, load_seconds=round(idx.load_seconds, 3))
                for idx in service.loaded.values()
            ],
        )

    return app
