"""Index Manager service: tasks, queue and stored indexes over HTTP; the master loop in the background."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict
from typing import Annotated

import aiohttp
from fastapi import FastAPI, Query, Response

from facedex import descriptors
from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.faces.store import FacesStore, create_pool
from facedex.http import create_app, errors
from facedex.manager.master import Master
from facedex.manager.tasks import FINAL, INDEXING, PENDING, TaskRepo
from facedex.metrics import TASK_QUEUE_DEPTH
from facedex.redis.connection import connect
from facedex.redis.keys import Keys
from facedex.manager.models import MasterOut, QueueOut, TaskCreate, TaskOut, TaskStatus
from facedex.storage.base import IndexMeta, IndexMetaOut, newest_per_list, open_storage


def _task(task: object) -> TaskOut:
    return TaskOut.model_validate(task.public())  # type: ignore[attr-defined]


def build_app(settings: Settings) -> FastAPI:
    storage = open_storage(settings)
    keys = Keys(settings.redis_prefix)
    address = settings.manager
    instance_id = settings.indexing.instance_id or f"{socket.gethostname()}:{address.port}:{os.getpid()}"
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert settings.database_url and settings.redis_url, "database_url and redis_url must be resolved first"
        pool = await create_pool(settings.database_url, max_size=5)
        redis = connect(settings.redis_url)
        store = FacesStore(pool)
        repo = TaskRepo(redis, keys)
        master = Master(settings, redis, repo, store, storage, instance_id)
        state.update(repo=repo, store=store, master=master, redis=redis)
        app.state.health["faces_db"] = lambda: pool.fetchval("SELECT 1")
        app.state.health["redis"] = redis.ping

        async def scrape() -> None:
            TASK_QUEUE_DEPTH.set(await redis.llen(keys.queue))

        app.state.scrape_hooks.append(scrape)
        loop_task = asyncio.create_task(master.run(), name="master")
        yield
        loop_task.cancel()
        with suppress(asyncio.CancelledError):
            await loop_task
        await redis.aclose()
        await pool.close()

    app = create_app(
        "manager",
        title="facedex Index Manager",
        description="Index-build tasks (one-time and background), the queue, and the indexes in storage.",
        max_body_bytes=settings.max_body_bytes,
        lifespan=lifespan,
    )

    def repo() -> TaskRepo:
        return state["repo"]  # type: ignore[return-value]

    @app.post(
        "/1/tasks", status_code=201, tags=["tasks"], summary="Queue a one-time index build for a list",
        responses=errors(Errors.DESCRIPTOR_VERSION_UNKNOWN, Errors.LIST_EMPTY, Errors.LIST_NOT_FOUND, Errors.TASK_DUPLICATE, Errors.INDEX_UP_TO_DATE),
    )
    async def create_task(body: TaskCreate) -> TaskOut:
        version = body.descriptor_version or settings.default_descriptor_version
        descriptors.get_version(version)
        store: FacesStore = state["store"]  # type: ignore[assignment]
        head = await store.list_head(body.list_id)
        if head is None:
            raise FacedexError(Errors.LIST_NOT_FOUND, f"list {body.list_id} not found")
        _, change_seq, face_count = head
        if face_count == 0:
            raise FacedexError(Errors.LIST_EMPTY, f"list {body.list_id} has no faces")
        newest = newest_per_list(await asyncio.to_thread(storage.list), version).get(str(body.list_id))
        if newest is not None and newest.change_seq >= change_seq:
            raise FacedexError(Errors.INDEX_UP_TO_DATE, f"index {newest.index_id} already covers the list's latest change")
        return _task(await repo().create(str(body.list_id), version, "one_time"))

    @app.get("/1/tasks", tags=["tasks"], summary="Tasks, newest first")
    async def get_tasks(
        status: TaskStatus | None = None,
        list_id: uuid.UUID | None = None,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[TaskOut]:
        tasks = await repo().list(status.value if status else None, str(list_id) if list_id else None, page, page_size)
        return [_task(t) for t in tasks]

    @app.get("/1/tasks/{task_id}", tags=["tasks"], summary="One task, with progress and error", responses=errors(Errors.TASK_NOT_FOUND))
    async def get_task(task_id: uuid.UUID) -> TaskOut:
        return _task(await repo().get(str(task_id)))

    @app.delete(
        "/1/tasks/{task_id}", tags=["tasks"], summary="Cancel a pending or running task",
        responses=errors(Errors.TASK_NOT_FOUND, Errors.TASK_FINISHED, Errors.INDEXER_UNAVAILABLE),
    )
    async def cancel_task(task_id: uuid.UUID) -> TaskOut:
        task = await repo().get(str(task_id))
        if task.status in FINAL:
            raise FacedexError(Errors.TASK_FINISHED, f"task {task_id} is already {task.status}")
        if task.status == PENDING and await repo().cancel_pending(task):
            return _task(await repo().get(str(task_id)))
        task = await repo().get(str(task_id))
        if task.status == INDEXING:  # the master records the outcome (cancelled) on its next lookup
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
                    async with http.delete(f"{task.indexer.rstrip('/')}/1/index_list/{task_id}") as resp:
                        status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise FacedexError(Errors.INDEXER_UNAVAILABLE, f"indexer {task.indexer}: {type(exc).__name__}: {exc}") from None
            if status != 200:
                raise FacedexError(Errors.INDEXER_UNAVAILABLE, f"indexer {task.indexer} answered {status}")
        return _task(task)

    @app.get("/1/queue", tags=["tasks"], summary="Pending task ids, in the order they will run")
    async def queue() -> QueueOut:
        pending = await repo().queue()
        return QueueOut(length=len(pending), task_ids=pending)  # type: ignore[arg-type]

    @app.get("/1/indexes", tags=["indexes"], summary="Indexes in storage, newest first")
    async def indexes(list_id: uuid.UUID | None = None) -> list[IndexMetaOut]:
        metas = await asyncio.to_thread(storage.list)
        return [_meta(m) for m in metas if list_id is None or m.list_id == str(list_id)]

    @app.get("/1/indexes/relevant", tags=["indexes"], summary="The newest index of each list (default descriptor version)")
    async def relevant() -> list[IndexMetaOut]:
        best = newest_per_list(await asyncio.to_thread(storage.list), settings.default_descriptor_version)
        return [_meta(m) for m in best.values()]

    @app.delete(
        "/1/indexes/{index_id}", status_code=204, tags=["indexes"], summary="Remove an index from storage",
        responses=errors(Errors.INDEX_NOT_FOUND),
    )
    async def delete_index(index_id: uuid.UUID) -> Response:
        if not await asyncio.to_thread(storage.delete, str(index_id)):
            raise FacedexError(Errors.INDEX_NOT_FOUND, f"index {index_id} not found in the storage")
        return Response(status_code=204)

    @app.get("/1/master", tags=["service"], summary="Which instance is the master")
    async def master() -> MasterOut:
        redis = state["redis"]
        holder = await redis.get(keys.master_lock)  # type: ignore[attr-defined]
        return MasterOut(master=holder, this_instance=instance_id, is_master=holder == instance_id)

    return app


def _meta(m: IndexMeta) -> IndexMetaOut:
    out = asdict(m)
    out.pop("files", None)
    return IndexMetaOut.model_validate(out)
