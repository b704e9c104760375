"""Index Manager service: tasks, queue and stored indexes over HTTP; the master loop in the background."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import asdict
from typing import Annotated

import httpx
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from redis.exceptions import RedisError

from facedex import descriptors
from facedex.auth import Caller, TokenCache, bearer, resolve_caller
from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.faces.store import FacesStore
from facedex.http import create_app, error_response, errors
from facedex.internal_auth import bearer as bearer_header
from facedex.lifespan import faces_db, redis_client, service_lifespan
from facedex.manager.lock import holder_of
from facedex.manager.master import Master
from facedex.manager.models import MasterOut, QueueOut, TaskCreate, TaskOut, TaskStatus
from facedex.manager.tasks import FINAL, INDEXING, PENDING, Task, TaskRepo
from facedex.metrics import TASK_QUEUE_DEPTH
from facedex.redis.keys import Keys
from facedex.storage.base import IndexMeta, IndexMetaOut, newest_per_list, open_storage


def _task(task: object) -> TaskOut:
    return TaskOut.model_validate(task.public())  # type: ignore[attr-defined]


async def caller(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """Operators (admin or internal token) see every list; an account token only its own lists' objects."""
    settings: Settings = request.app.state.settings
    return await resolve_caller(creds, request.app.state.tokens, settings.admin_token, settings.internal_token)


Who = Annotated[Caller, Depends(caller)]


async def operator(who: Who) -> Caller:
    if not who.operator:
        raise FacedexError(Errors.FORBIDDEN, "this route needs the admin token")
    return who


def build_app(settings: Settings) -> FastAPI:
    storage = open_storage(settings)
    keys = Keys(settings.redis_prefix)
    address = settings.manager
    instance_id = settings.indexing.instance_id or f"{socket.gethostname()}:{address.port}:{os.getpid()}"
    state: dict[str, object] = {}

    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        store = await faces_db(app, stack, max_size=5)
        redis = redis_client(app, stack)
        repo = TaskRepo(redis, keys, settings.indexing.task_ttl_s)
        master = Master(settings, redis, repo, store, storage, instance_id)
        app.state.tokens = tokens = TokenCache(store, settings.database_url)
        await tokens.start()
        stack.push_async_callback(tokens.stop)
        http = httpx.AsyncClient(timeout=settings.indexing.indexer_timeout_s, headers=bearer_header(settings.internal_token))
        stack.push_async_callback(http.aclose)
        state.update(repo=repo, store=store, master=master, redis=redis, http=http)
        app.state.health["master"] = master.supervisor.check

        async def scrape() -> None:
            TASK_QUEUE_DEPTH.set(await redis.llen(keys.queue))

        app.state.scrape_hooks.append(scrape)
        await master.start()
        stack.push_async_callback(master.stop)
        yield

    app = create_app(
        "manager", settings,
        title="facedex Index Manager",
        description="Index-build tasks (one-time and background), the queue, and the indexes in storage.",
        lifespan=lifespan,
    )

    @app.exception_handler(RedisError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        """Redis restarting or unreachable is an outage (503, retry), not a bug of ours (500)."""
        return error_response(Errors.TASKS_UNAVAILABLE, f"{type(exc).__name__}: {exc}")

    def repo() -> TaskRepo:
        return state["repo"]  # type: ignore[return-value]

    def store() -> FacesStore:
        return state["store"]  # type: ignore[return-value]

    async def visible_lists(who: Caller) -> set[str] | None:
        """None: every list (an operator)."""
        return None if who.operator else await store().account_list_ids(who.account_id)  # type: ignore[arg-type]

    async def owned_task(who: Caller, task_id: uuid.UUID) -> Task:
        task = await repo().get(str(task_id))
        lists = await visible_lists(who)
        if lists is not None and task.list_id not in lists:
            raise FacedexError(Errors.TASK_NOT_FOUND, f"task {task_id} not found")  # another account's: as if absent
        return task

    @app.post(
        "/1/tasks", status_code=201, tags=["tasks"], summary="Queue a one-time index build for a list",
        responses=errors(Errors.DESCRIPTOR_VERSION_UNKNOWN, Errors.LIST_EMPTY, Errors.LIST_NOT_FOUND, Errors.TASK_DUPLICATE,
                         Errors.INDEX_UP_TO_DATE, Errors.TASKS_UNAVAILABLE),
    )
    async def create_task(body: TaskCreate, who: Who) -> TaskOut:
        version = body.descriptor_version or settings.default_descriptor_version
        descriptors.get_version(version)
        head = await store().list_head(body.list_id)
        if head is None or (not who.operator and head[0] != who.account_id):
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
        who: Who,
        status: TaskStatus | None = None,
        list_id: uuid.UUID | None = None,
        page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
        page_size: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[TaskOut]:
        tasks = await repo().list(status.value if status else None, str(list_id) if list_id else None, page, page_size,
                                  await visible_lists(who))
        return [_task(t) for t in tasks]

    @app.get("/1/tasks/{task_id}", tags=["tasks"], summary="One task, with progress and error", responses=errors(Errors.TASK_NOT_FOUND))
    async def get_task(task_id: uuid.UUID, who: Who) -> TaskOut:
        return _task(await owned_task(who, task_id))

    @app.delete(
        "/1/tasks/{task_id}", tags=["tasks"], summary="Cancel a pending or running task",
        responses=errors(Errors.TASK_NOT_FOUND, Errors.TASK_FINISHED),
    )
    async def cancel_task(task_id: uuid.UUID, who: Who) -> TaskOut:
        task = await owned_task(who, task_id)
        if task.status in FINAL:
            raise FacedexError(Errors.TASK_FINISHED, f"task {task_id} is already {task.status}")
        if task.status == PENDING and await repo().cancel_pending(task):
            return _task(await repo().get(str(task_id)))
        task = await repo().get(str(task_id))
        if task.status != INDEXING:
            return _task(task)
        # the Indexer stops the build and the master records "cancelled" on its next lookup; an Indexer that
        # cannot confirm (unreachable, or no longer building it) is not waited for: the task is cancelled here,
        # and the master stops that build (and deletes any index it stores) when the Indexer answers again
        http: httpx.AsyncClient = state["http"]  # type: ignore[assignment]
        try:
            resp = await http.delete(f"{task.indexer.rstrip('/')}/1/index_list/{task_id}")
            why = None if resp.status_code == 200 else f"indexer {task.indexer} answered {resp.status_code}"
        except httpx.HTTPError as exc:
            why = f"indexer {task.indexer} unreachable ({type(exc).__name__})"
        if why is None:
            return _task(task)
        await repo().cancel_running(task, f"cancelled; {why}")  # unless it ended meanwhile: then that end stands
        return _task(await repo().get(str(task_id)))

    @app.get("/1/queue", tags=["tasks"], summary="Pending task ids, in the order they will run")
    async def queue(who: Who) -> QueueOut:
        pending = await repo().queue()
        lists = await visible_lists(who)
        if lists is not None:
            tasks = [await repo().get_or_none(t) for t in pending]
            pending = [t.task_id for t in tasks if t is not None and t.list_id in lists]
        return QueueOut(length=len(pending), task_ids=pending)  # type: ignore[arg-type]

    @app.get("/1/indexes", tags=["indexes"], summary="Indexes in storage, newest first")
    async def indexes(who: Who, list_id: uuid.UUID | None = None) -> list[IndexMetaOut]:
        metas = await asyncio.to_thread(storage.list)
        return [_meta(m) for m in metas if (list_id is None or m.list_id == str(list_id)) and _visible(who, m)]

    @app.get("/1/indexes/relevant", tags=["indexes"], summary="The newest index of each list (default descriptor version)")
    async def relevant(who: Who) -> list[IndexMetaOut]:
        best = newest_per_list(await asyncio.to_thread(storage.list), settings.default_descriptor_version)
        return [_meta(m) for m in best.values() if _visible(who, m)]

    @app.delete(
        "/1/indexes/{index_id}", status_code=204, tags=["indexes"], summary="Remove an index from storage",
        responses=errors(Errors.INDEX_NOT_FOUND),
    )
    async def delete_index(index_id: uuid.UUID, who: Who) -> Response:
        meta = await asyncio.to_thread(storage.get_meta, str(index_id))
        if meta is None or not _visible(who, meta) or not await asyncio.to_thread(storage.delete, str(index_id)):
            raise FacedexError(Errors.INDEX_NOT_FOUND, f"index {index_id} not found in the storage")
        return Response(status_code=204)

    @app.get("/1/master", tags=["service"], summary="Which instance is the master (admin token)", responses=errors(Errors.FORBIDDEN))
    async def master(who: Annotated[Caller, Depends(operator)]) -> MasterOut:
        redis = state["redis"]
        holder = holder_of(await redis.get(keys.master_lock))  # type: ignore[attr-defined]
        return MasterOut(master=holder, this_instance=instance_id, is_master=holder == instance_id)

    return app


def _visible(who: Caller, meta: IndexMeta) -> bool:
    return who.operator or meta.account_id == str(who.account_id)


def _meta(m: IndexMeta) -> IndexMetaOut:
    out = asdict(m)
    out.pop("files", None)
    return IndexMetaOut.model_validate(out)
