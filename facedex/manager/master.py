"""The master's routines: election, indexer lookup and dispatch, background planning.

Every Manager instance runs :meth:`Master.run`; the one holding the Redis lock
(``SET NX PX``, renewed every lookup period, token-checked on renewal) does
the work. If it dies, its lock expires after ``lock_ttl_s`` and another
instance takes over: it first returns tasks the dead master had popped but not
handed to an indexer, then keeps polling the indexers named in the task
records, so builds in flight are finished, not restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime

import aiohttp
import redis.asyncio as aredis
from redis.exceptions import RedisError

from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.internal_auth import bearer
from facedex.faces.store import FacesStore
from facedex.manager.schedule import Schedule
from facedex.manager.tasks import CANCELLED, FAILED, PENDING, SUCCESS, Task, TaskRepo
from facedex.redis.keys import Keys
from facedex.storage.base import IndexStorage, newest_per_list

log = logging.getLogger(__name__)

# token-checked renew and release: only the holder can extend or drop the lock
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class Master:
    def __init__(
        self,
        settings: Settings,
        redis: aredis.Redis,
        repo: TaskRepo,
        store: FacesStore,
        storage: IndexStorage,
        instance_id: str,
    ) -> None:
        self.s = settings.indexing
        self.version = settings.default_descriptor_version
        self.redis = redis
        self.keys = Keys(settings.redis_prefix)
        self.repo = repo
        self.store = store
        self.storage = storage
        self.instance_id = instance_id
        self.internal_token = settings.internal_token
        self.is_master = False
        self.http: aiohttp.ClientSession | None = None
        self.schedule = Schedule(self.s.planning_schedule) if self.s.planning_schedule else None

    async def run(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=bearer(self.internal_token))
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.step()
                except (RedisError, OSError) as exc:
                    log.warning("master step failed: %s", exc)
                await asyncio.sleep(max(0.0, self.s.lookup_period_s - (time.monotonic() - started)))
        finally:
            await self.http.close()
            if self.is_master:  # step down at once rather than make the others wait for the TTL
                await self.redis.eval(_RELEASE, 1, self.keys.master_lock, self.instance_id)

    async def step(self) -> None:
        if not await self._hold_lock():
            return
        await self.lookup()
        await self.plan_if_due()

    async def _hold_lock(self) -> bool:
        """Renew the lock if we hold it, else try to take it. The lock's value is the holder's id."""
        ttl_ms = int(self.s.lock_ttl_s * 1000)
        if self.is_master:
            if await self.redis.eval(_RENEW, 1, self.keys.master_lock, self.instance_id, ttl_ms):
                return True
            log.warning("%s lost the master lock", self.instance_id)
            self.is_master = False
        if await self.redis.set(self.keys.master_lock, self.instance_id, nx=True, px=ttl_ms):
            self.is_master = True
            recovered = await self.repo.recover()
            log.info("%s is the master now (%d undispatched task(s) requeued)", self.instance_id, recovered)
        return self.is_master

    # ----------------------------------------------------------------- lookup
    async def _state(self, origin: str) -> dict[str, object] | None:
        assert self.http is not None
        try:
            async with self.http.get(origin.rstrip("/") + "/1/state") as resp:
                return await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def lookup(self) -> None:
        states = dict(zip(self.s.indexers, await asyncio.gather(*(self._state(o) for o in self.s.indexers))))
        for task in await self.repo.indexing():
            await self._follow(task, states.get(task.indexer, None), task.indexer in states)
        for origin, state in states.items():
            if state is not None and state.get("state") != "indexing":
                await self._dispatch(origin)

    async def _follow(self, task: Task, state: dict[str, object] | None, known: bool) -> None:
        """Bring an indexing task's record up to what its indexer reports."""
        if state is None:
            if not known:  # its indexer was removed from the settings
                await self.repo.finish(task, FAILED, error_code=Errors.INDEXER_UNAVAILABLE.code, error_detail=f"indexer {task.indexer} is no longer configured")
            return  # unreachable for now: keep waiting
        if state.get("task_id") != task.task_id:
            await self.repo.finish(
                task, FAILED, error_code=Errors.BUILD_DIED.code, error_detail=f"indexer {task.indexer} lost the build (restarted?)"
            )
            return
        status = state.get("state")
        if status == "indexing":
            await self.repo.update(task.task_id, progress=state.get("progress", 0.0))
        elif status == "success":
            result = state.get("result") or {}
            await self.repo.finish(task, SUCCESS, progress=1.0, count=result.get("count", 0),  # type: ignore[union-attr]
                                   warning=result.get("warning") or "")  # type: ignore[union-attr]
            log.info("task %s (list %s) built index %s", task.task_id, task.list_id, task.index_id)
        elif status in (FAILED, CANCELLED):
            err = state.get("error") or {}
            await self.repo.finish(task, str(status), error_code=err.get("error_code", 0), error_detail=err.get("detail", ""))  # type: ignore[union-attr]

    async def _dispatch(self, origin: str) -> None:
        assert self.http is not None
        while (task_id := await self.repo.take_next()) is not None:
            task = await self.repo.get_or_none(task_id)
            if task is None or task.status != PENDING:
                await self.repo.drop_dispatching(task_id)
                continue
            index_id = str(uuid.uuid4())
            body = {"task_id": task_id, "list_id": task.list_id, "index_id": index_id, "descriptor_version": task.descriptor_version}
            try:
                async with self.http.post(origin.rstrip("/") + "/1/index_list", json=body) as resp:
                    accepted = resp.status == 202
            except (aiohttp.ClientError, TimeoutError):
                accepted = False
            if accepted:
                await self.repo.dispatched(task_id, origin, index_id)
                log.info("task %s (list %s) sent to %s", task_id, task.list_id, origin)
            else:
                await self.repo.put_back(task_id)
            return

    # --------------------------------------------------------------- planning
    def due(self, now: float, last: float) -> bool:
        """Whether planning should run now, given the last run (kept in Redis, so restarts keep the rhythm)."""
        if self.schedule is not None:
            minute = now - now % 60
            return self.schedule.matches(datetime.fromtimestamp(now)) and last < minute
        return now - last >= self.s.planning_period_s

    async def plan_if_due(self) -> None:
        if not self.s.indexing_lists:
            return
        last = float(await self.redis.get(self.keys.last_planning) or 0)
        if not self.due(time.time(), last):
            return
        await self.redis.set(self.keys.last_planning, str(time.time()))
        created = await self.plan()
        if created:
            log.info("planning queued %d background task(s)", len(created))

    async def plan(self) -> list[Task]:
        """Queue a background build for every configured list whose newest index is behind its change log."""
        if self.s.indexing_lists == ["dynamic"]:
            candidates = await self.store.lists_at_least(self.s.min_indexing_list_size)
        else:
            candidates = await self.store.lists_by_id([uuid.UUID(i) for i in self.s.indexing_lists])
        relevant = newest_per_list(await asyncio.to_thread(self.storage.list), self.version)
        created = []
        for list_id, change_seq, face_count in candidates:
            meta = relevant.get(str(list_id))
            if face_count == 0 or (meta is not None and meta.change_seq >= change_seq):
                continue  # nothing to index, or nothing changed since the newest index
            try:
                created.append(await self.repo.create(str(list_id), self.version, "background"))
            except FacedexError:
                continue  # a task for this list is already queued or running
        return created

