"""Index Manager tasks: a cancel through the API wins against a master that is dispatching the task; planning does
not queue a second build of a list whose build ends while it plans.

The master runs its real lookup and planning rounds against real Redis; the Indexer, the Faces DB and the index
storage are in-process doubles, so each race is made at its exact moment, not by timing.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import redis.asyncio as aredis

from facedex.config import ManagerSettings, Settings
from facedex.errors import Errors
from facedex.manager.master import Master
from facedex.manager.tasks import CANCELLED, INDEXING, PENDING, SUCCESS, Task, TaskRepo
from facedex.redis.keys import Keys
from facedex.storage.base import IndexMeta

INDEXER = "http://indexer.test"


@dataclass
class FakeIndexer:
    """Answers the master's calls as an idle Indexer; ``on_post`` runs while the master waits for the hand-over."""

    accept: bool = True
    on_post: Callable[[], Awaitable[None]] | None = None
    posted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/1/state":
            return httpx.Response(200, json={"state": "idle", "progress": 0.0})
        if request.method == "POST" and request.url.path == "/1/index_list":
            self.posted.append(json.loads(request.content)["task_id"])
            if self.on_post is not None:
                await self.on_post()
            return httpx.Response(202 if self.accept else 503, json={})
        if request.method == "DELETE":
            self.cancelled.append(request.url.path.rsplit("/", 1)[1])
            return httpx.Response(200, json={})
        return httpx.Response(404)


@dataclass
class Rig:
    redis: aredis.Redis
    keys: Keys
    repo: TaskRepo
    master: Master
    indexer: FakeIndexer

    async def forgotten(self, task_id: str) -> bool:
        """No list a master dispatches from, nor the indexing set, holds the task."""
        k = self.keys
        lists = [await self.redis.lrange(key, 0, -1) for key in (k.queue, k.dispatching)]
        return all(task_id not in ids for ids in lists) and not await self.redis.sismember(k.indexing, task_id)


@pytest.fixture
async def rig(redis_url: str, redis_prefix: str) -> AsyncIterator[Rig]:
    prefix = f"{redis_prefix}:tasks-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_prefix=prefix, internal_token="t", indexing=ManagerSettings(indexers=[INDEXER]))
    r = aredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(prefix)
    repo = TaskRepo(r, keys)
    master = Master(settings, r, repo, None, None, "master-under-test")  # type: ignore[arg-type]  # no DB, no storage
    indexer = FakeIndexer()
    master.http = httpx.AsyncClient(transport=httpx.MockTransport(indexer))
    assert await master.lock.hold()
    try:
        yield Rig(r, keys, repo, master, indexer)
    finally:
        await master.lock.release()
        await master.http.aclose()
        await r.aclose()


@pytest.mark.parametrize("indexer_accepts", [True, False])
async def test_a_cancel_while_the_master_hands_the_task_over_wins(rig: Rig, indexer_accepts: bool) -> None:
    """The task is in the dispatching list, already read as pending by the master, when the cancel comes."""
    task = await rig.repo.create(str(uuid.uuid4()), 1, "one_time")
    cancels: list[bool] = []

    async def cancel_now() -> None:  # what DELETE /1/tasks/{id} does for a pending task
        cancels.append(await rig.repo.cancel_pending(await rig.repo.get(task.task_id)))

    rig.indexer.accept, rig.indexer.on_post = indexer_accepts, cancel_now
    await rig.master.lookup()
    assert rig.indexer.posted == [task.task_id] and cancels == [True], "the cancel was not taken"
    done = await rig.repo.get(task.task_id)
    assert done.status == CANCELLED and done.error_code == Errors.BUILD_CANCELLED.code and done.attempts == 0
    assert await rig.forgotten(task.task_id)
    assert await rig.redis.get(rig.keys.active(task.list_id)) is None  # the list may get a new task
    # an Indexer that took the build is told to stop it; one that refused has nothing to stop
    assert rig.indexer.cancelled == ([task.task_id] if indexer_accepts else [])
    rig.indexer.on_post = None
    await rig.master.lookup()  # a later round dispatches nothing
    assert rig.indexer.posted == [task.task_id] and (await rig.repo.get(task.task_id)).status == CANCELLED


async def test_a_cancel_of_a_task_left_in_dispatching_wins(rig: Rig) -> None:
    """A round popped the task and was cut short before the hand-over; the cancel comes before the next round."""
    task = await rig.repo.create(str(uuid.uuid4()), 1, "one_time")
    assert await rig.repo.take_next(rig.master.lock) == task.task_id  # the round cut short: in dispatching, pending
    assert (await rig.repo.get(task.task_id)).status == PENDING and await rig.repo.queue() == []
    assert await rig.repo.cancel_pending(await rig.repo.get(task.task_id))
    await rig.master.lookup()  # requeues what a cut-short round left, then dispatches
    assert rig.indexer.posted == [], "a cancelled task was sent to an Indexer"
    assert (await rig.repo.get(task.task_id)).status == CANCELLED and await rig.forgotten(task.task_id)


async def test_a_pending_task_queued_behind_a_cancelled_one_is_dispatched(rig: Rig) -> None:
    """The cancel removes only its own task: the next one in the queue goes to the Indexer in the same round."""
    first = await rig.repo.create(str(uuid.uuid4()), 1, "one_time")
    second = await rig.repo.create(str(uuid.uuid4()), 1, "one_time")
    assert await rig.repo.take_next(rig.master.lock) == first.task_id
    assert await rig.repo.cancel_pending(first)
    await rig.master.lookup()
    assert rig.indexer.posted == [second.task_id]
    assert (await rig.repo.get(second.task_id)).status == "indexing"
    assert not await rig.repo.cancel_pending(await rig.repo.get(second.task_id))  # no longer pending: not cancelled here
    assert (await rig.repo.get(second.task_id)).status == "indexing"


@dataclass
class OneList:
    """The Faces DB (one list at change ``seq``) and the index storage, as planning reads them; ``on_list`` runs right
    after a storage listing was taken (in planning's worker thread)."""

    list_id: uuid.UUID
    seq: int
    metas: list[IndexMeta] = field(default_factory=list)
    on_list: Callable[[], None] | None = None

    async def lists_at_least(self, min_faces: int) -> list[tuple[uuid.UUID, int, int]]:
        return [(self.list_id, self.seq, 12_500)]

    def list(self) -> list[IndexMeta]:
        seen = list(self.metas)
        hook, self.on_list = self.on_list, None
        if hook is not None:
            hook()
        return seen


async def _planned_and_taken(rig: Rig) -> tuple[OneList, Task]:
    """The master plans from one list (12,500 faces, no index yet) whose background task it has taken."""
    lst = OneList(uuid.uuid4(), seq=12_500)
    rig.master.store, rig.master.storage = lst, lst  # type: ignore[assignment]
    rig.master.s = rig.master.s.model_copy(update={"indexing_lists": ["dynamic"], "min_indexing_list_size": 1})
    task = await rig.repo.create(str(lst.list_id), 1, "background")
    assert await rig.repo.take_next(rig.master.lock) == task.task_id
    return lst, task


async def test_a_build_that_ends_while_planning_reads_storage_is_not_planned_again(rig: Rig) -> None:
    """The list's build stores its index and its task ends just after planning listed the storage: the list is not
    behind its index, so no second build of unchanged faces is queued (nor listed as if it were the next change's)."""
    lst, running = await _planned_and_taken(rig)
    master = rig.master
    index_id = str(uuid.uuid4())
    await rig.repo.dispatched(master.lock, running, INDEXER, index_id)
    loop = asyncio.get_running_loop()

    async def build_ends() -> None:  # what the Indexer and the lookup round do: the index is stored, then the task ends
        lst.metas.append(IndexMeta(index_id, str(lst.list_id), str(uuid.uuid4()), 1, 12_500, lst.seq, {},
                                   task_id=running.task_id))
        task = await rig.repo.get(running.task_id)
        assert task.status == INDEXING
        await rig.repo.master_finish(master.lock, task, SUCCESS, count=12_500)

    lst.on_list = lambda: asyncio.run_coroutine_threadsafe(build_ends(), loop).result(10)
    assert await master.plan() == [], "a build of a list its newest index already covers was queued"
    assert lst.on_list is None and (await rig.repo.get(running.task_id)).status == SUCCESS  # the race did happen
    assert await master.plan() == []  # the next round sees the index: nothing to do either
    assert [t.task_id for t in await rig.repo.list(None, str(lst.list_id), 1, 10)] == [running.task_id]


@pytest.mark.parametrize("marker", ["ended", "vanished"])
async def test_a_stale_task_marker_does_not_keep_a_changed_list_from_being_planned(rig: Rig, marker: str) -> None:
    """The list's marker still names a task that ended (or whose record expired): planning reads the list as free
    and queues the build its change needs, taking the marker over."""
    lst, old = await _planned_and_taken(rig)
    master = rig.master
    if marker == "ended":  # finishing releases the marker; one left behind anyway (a writer that died between)
        await rig.repo.master_finish(master.lock, await rig.repo.get(old.task_id), SUCCESS, count=10)
        await rig.redis.set(rig.keys.active(str(lst.list_id)), old.task_id)
    else:
        await rig.redis.delete(rig.keys.task(old.task_id))
    assert await rig.redis.get(rig.keys.active(str(lst.list_id))) == old.task_id
    assert await rig.repo.live_lists([str(lst.list_id)]) == set()
    planned = await master.plan()
    assert [t.list_id for t in planned] == [str(lst.list_id)] and planned[0].task_id != old.task_id
    assert await rig.redis.get(rig.keys.active(str(lst.list_id))) == planned[0].task_id
