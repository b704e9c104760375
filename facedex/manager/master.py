"""The master's routines: election, indexer lookup and dispatch, background planning, retention.

Every Manager instance runs the same supervised loops (:mod:`facedex.supervise`);
only the holder of the fenced master lock (:mod:`facedex.manager.lock`) acts:

- ``master-lock`` (every third of ``lock_ttl_s``): renew or take the lock. A new
  master first returns tasks a dead master had popped but not handed over.
- ``master-lookup`` (every ``lookup_period_s``): poll every Indexer (each call
  bounded by ``indexer_timeout_s``), bring task records up to what they report,
  retry builds their Indexer lost or stopped answering for ``task_unreachable_s``,
  tell an Indexer to stop a build no task wants, hand free Indexers the next task.
- ``master-planning``: background planning when due.
- ``master-maintenance`` (every ``maintenance_period_s``): storage is the truth.
  Indexes of deleted lists, of tasks that ended failed/cancelled (or were retried),
  and beyond the newest ``keep_indexes`` per list are deleted; an index whose task
  record is gone (Redis lost data) is recorded; expired task ids are pruned.

Every Redis write is fenced (refused once another instance took the lock), so
two masters never both act, however long one of them stalls.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from datetime import datetime

import httpx
import redis.asyncio as aredis

from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.internal_auth import bearer
from facedex.faces.store import FacesStore
from facedex.manager.lock import MasterLock, NotMaster, StaleTask
from facedex.manager.schedule import Schedule
from facedex.manager.tasks import CANCELLED, FAILED, INDEXING, PENDING, SUCCESS, Task, TaskRepo
from facedex.redis.keys import Keys
from facedex.storage.base import IndexMeta, IndexStorage, newest_per_list
from facedex.supervise import Supervisor

log = logging.getLogger(__name__)


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
        self.lock = MasterLock(redis, self.keys, instance_id, self.s.lock_ttl_s)
        self.master_since = 0.0  # unix time this instance last became the master
        self._term: str | None = None  # the lock value whose takeover recovery is done
        self.http: httpx.AsyncClient | None = None
        self.schedule = Schedule(self.s.planning_schedule) if self.s.planning_schedule else None
        self.supervisor = Supervisor("manager")

    @property
    def is_master(self) -> bool:
        return self.lock.held

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        ttl = self.s.lock_ttl_s
        self.http = httpx.AsyncClient(timeout=self.s.indexer_timeout_s, headers=bearer(self.internal_token))
        sv = self.supervisor
        sv.every("master-lock", ttl / 3, self.hold_lock, round_timeout_s=ttl / 3, run_first=True)
        sv.every("master-lookup", self.s.lookup_period_s, self.lookup, round_timeout_s=max(ttl, 4 * self.s.indexer_timeout_s))
        sv.every("master-planning", min(1.0, self.s.planning_period_s), self.plan_if_due, round_timeout_s=300)
        sv.every("master-maintenance", self.s.maintenance_period_s, self.maintain, round_timeout_s=300)
        await sv.start()

    async def stop(self) -> None:
        await self.supervisor.stop()
        try:  # step down at once rather than make the others wait for the TTL
            await asyncio.wait_for(self.lock.release(), 2)
        except Exception as exc:  # Redis gone: the TTL frees the lock
            log.info("could not release the master lock: %s", exc)
        if self.http is not None:
            await self.http.aclose()

    async def hold_lock(self) -> None:
        try:
            if await self.lock.hold() and self._term != self.lock.value:
                self.master_since = time.time()
                recovered = await self.repo.recover(self.lock)
                self._term = self.lock.value
                log.info("%s is the master now (%d undispatched task(s) requeued)", self.instance_id, recovered)
        except BaseException:
            self.lock.suspend()  # unsure whether we still hold it: act as if not until a renewal succeeds
            raise

    # ----------------------------------------------------------------- lookup
    async def _state(self, origin: str) -> dict[str, object] | None:
        assert self.http is not None
        try:
            resp = await self.http.get(origin.rstrip("/") + "/1/state")
            return resp.json() if resp.status_code == 200 else None  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return None

    async def _cancel_on(self, origin: str, task_id: str) -> None:
        assert self.http is not None
        try:
            await self.http.delete(f"{origin.rstrip('/')}/1/index_list/{task_id}")
        except httpx.HTTPError:
            pass

    async def lookup(self) -> None:
        if not self.lock.held:
            return
        try:
            # lookup rounds run one at a time and only they dispatch: a task still in `dispatching` now was left by an
            # earlier round cut short (a timeout, a lost renewal, a Redis error), so it goes back to the queue head
            await self.repo.recover(self.lock)
            states = dict(zip(self.s.indexers, await asyncio.gather(*(self._state(o) for o in self.s.indexers))))
            for task in await self.repo.indexing():
                try:
                    await self._follow(task, states.get(task.indexer), task.indexer in states)
                except StaleTask:
                    continue  # changed meanwhile (cancelled through the API): next round sees it
            for origin, state in states.items():
                if state is None:
                    continue
                if state.get("state") == "indexing":
                    await self._check_wanted(origin, state)
                else:
                    await self._dispatch(origin)
        except NotMaster:
            log.info("%s is no longer the master: lookup stopped", self.instance_id)

    async def _check_wanted(self, origin: str, state: dict[str, object]) -> None:
        """An Indexer building something no task record wants (Redis lost it, cancelled, retried elsewhere): stop it."""
        task_id = str(state.get("task_id"))
        task = await self.repo.get_or_none(task_id)
        if task is not None and task.status == INDEXING and task.indexer == origin and task.index_id == state.get("index_id"):
            return
        log.warning("indexer %s builds task %s which is %s here: cancelling it", origin, task_id,
                    task.status if task else "unknown")
        await self._cancel_on(origin, task_id)

    async def _attempt_failed(self, task: Task, code: int, detail: str) -> None:
        """A build lost with its Indexer: retried while attempts remain, else the task fails with ``code``."""
        if task.attempts < self.s.max_attempts:
            await self.repo.retry(self.lock, task, code, f"attempt {task.attempts}: {detail}")
            log.warning("task %s (list %s) attempt %d lost (%s): retrying", task.task_id, task.list_id, task.attempts, detail)
        else:
            await self.repo.master_finish(self.lock, task, FAILED, error_code=code,
                                          error_detail=f"attempt {task.attempts} of {self.s.max_attempts}: {detail}")
            log.warning("task %s (list %s) failed after %d attempts: %s", task.task_id, task.list_id, task.attempts, detail)

    async def _follow(self, task: Task, state: dict[str, object] | None, known: bool) -> None:
        """Bring an indexing task's record up to what its indexer reports."""
        if state is None:
            if not known:  # its indexer was removed from the settings
                await self.repo.master_finish(self.lock, task, FAILED, error_code=Errors.INDEXER_UNAVAILABLE.code,
                                              error_detail=f"indexer {task.indexer} is no longer configured")
                return
            silent = time.time() - max(task.seen_time, task.start_time, self.master_since)
            if silent > self.s.task_unreachable_s:
                await self._attempt_failed(task, Errors.INDEXER_UNREACHABLE.code,
                                           f"indexer {task.indexer} did not answer for {silent:.0f}s")
            return
        if state.get("task_id") != task.task_id or state.get("index_id") != task.index_id:
            await self._attempt_failed(task, Errors.BUILD_DIED.code, f"indexer {task.indexer} lost the build (restarted?)")
            return
        status = state.get("state")
        if status == "indexing":
            await self.repo.master_update(self.lock, task, progress=state.get("progress", 0.0), seen_time=time.time())
        elif status == "success":
            result = state.get("result") or {}
            await self.repo.master_finish(self.lock, task, SUCCESS, progress=1.0, count=result.get("count", 0),  # type: ignore[union-attr]
                                          error_code=0, error_detail="", warning=result.get("warning") or "")  # type: ignore[union-attr]
            log.info("task %s (list %s) built index %s", task.task_id, task.list_id, task.index_id)
        elif status in (FAILED, CANCELLED):
            err = state.get("error") or {}
            await self.repo.master_finish(self.lock, task, str(status), error_code=err.get("error_code", 0),  # type: ignore[union-attr]
                                          error_detail=err.get("detail", ""))  # type: ignore[union-attr]

    async def _dispatch(self, origin: str) -> None:
        assert self.http is not None
        while (task_id := await self.repo.take_next(self.lock)) is not None:
            task = await self.repo.get_or_none(task_id)
            if task is None or task.status != PENDING:
                await self.repo.drop_dispatching(self.lock, task_id)
                continue
            index_id = str(uuid.uuid4())
            body = {"task_id": task_id, "list_id": task.list_id, "index_id": index_id, "descriptor_version": task.descriptor_version}
            try:
                accepted = (await self.http.post(origin.rstrip("/") + "/1/index_list", json=body)).status_code == 202
            except httpx.HTTPError:
                accepted = False  # unknown: if it started anyway, _check_wanted stops it on the next round
            try:
                if accepted:
                    await self.repo.dispatched(self.lock, task, origin, index_id)
                    log.info("task %s (list %s) sent to %s (attempt %d)", task_id, task.list_id, origin, task.attempts + 1)
                else:
                    await self.repo.put_back(self.lock, task)
            except StaleTask:  # cancelled while being handed over: the cancel wins
                await self.repo.drop_dispatching(self.lock, task_id)
                if accepted:
                    await self._cancel_on(origin, task_id)
            return

    # --------------------------------------------------------------- planning
    def due(self, now: float, last: float) -> bool:
        """Whether planning should run now, given the last run (kept in Redis, so restarts keep the rhythm)."""
        if self.schedule is not None:
            minute = now - now % 60
            return self.schedule.matches(datetime.fromtimestamp(now)) and last < minute
        return now - last >= self.s.planning_period_s

    async def plan_if_due(self) -> None:
        if not self.s.indexing_lists or not self.lock.held:
            return
        last = float(await self.redis.get(self.keys.last_planning) or 0)
        if not self.due(time.time(), last):
            return
        try:
            await self.lock.write(["SET", self.keys.last_planning, str(time.time())])
        except NotMaster:
            return
        created = await self.plan()
        if created:
            log.info("planning queued %d background task(s)", len(created))

    async def plan(self) -> list[Task]:
        """Queue a background build for every configured list whose newest index is behind its change log.

        After Redis lost data this is also what re-plans a list whose task vanished: its marker is gone and
        the planning time is reset, so the next round plans it again.
        """
        if self.s.indexing_lists == ["dynamic"]:
            candidates = await self.store.lists_at_least(self.s.min_indexing_list_size)
        else:
            candidates = await self.store.lists_by_id([uuid.UUID(i) for i in self.s.indexing_lists])
        # lists with a running or queued build first, storage second: a task ends (and frees its list) only after its
        # index is stored, so a list seen free here has its newest index in the listing below. The other way round, a
        # build ending between the two reads looked behind and was queued again (unchanged faces, built twice).
        busy = await self.repo.live_lists([str(c[0]) for c in candidates])
        relevant = newest_per_list(await asyncio.to_thread(self.storage.list), self.version)
        created = []
        for list_id, change_seq, face_count in candidates:
            meta = relevant.get(str(list_id))
            if str(list_id) in busy or face_count == 0 or (meta is not None and meta.change_seq >= change_seq):
                continue  # being built, nothing to index, or nothing changed since the newest index
            try:
                created.append(await self.repo.create(str(list_id), self.version, "background"))
            except FacedexError:
                continue  # a task for this list is already queued or running
        return created

    # ------------------------------------------------------------ maintenance
    async def maintain(self) -> None:
        if not self.lock.held:
            return
        try:
            doomed = await self._doomed()
            for meta, why in doomed:
                if not self.lock.held:  # storage has no fencing: check before each delete
                    return
                if await asyncio.to_thread(self.storage.delete, meta.index_id):
                    log.info("index %s of list %s deleted: %s", meta.index_id, meta.list_id, why)
            await self.repo.prune(self.lock)
        except NotMaster:
            return

    async def _doomed(self) -> list[tuple[IndexMeta, str]]:
        """Indexes to delete, oldest first (a matcher never falls back to an older one of a deleted list)."""
        metas = await asyncio.to_thread(self.storage.list)
        if not metas:
            return []
        lists = {m.list_id for m in metas}
        existing = {str(r[0]) for r in await self.store.lists_by_id([uuid.UUID(i) for i in lists])}
        doomed: dict[str, tuple[IndexMeta, str]] = {}
        groups: dict[tuple[str, int], list[IndexMeta]] = defaultdict(list)
        horizon = time.time() - self.s.task_ttl_s
        for m in metas:
            if m.list_id not in existing:
                doomed[m.index_id] = (m, "its list was deleted")
                continue
            task_id = m.task_id
            if task_id:
                task = await self.repo.get_or_none(task_id)
                if task is None:
                    created = _unix(m.create_time)
                    if created > horizon:
                        await self.repo.record_found(self.lock, task_id, m.list_id, m.descriptor_version, m.index_id,
                                                     m.count, created)
                        log.warning("index %s had no task record (Redis lost data?): recorded as task %s", m.index_id, task_id)
                elif not (task.index_id == m.index_id and task.status in (SUCCESS, INDEXING)):
                    doomed[m.index_id] = (m, f"its task {task_id} is {task.status} (index {task.index_id or 'none'})")
                    continue
            groups[(m.list_id, m.descriptor_version)].append(m)
        for group in groups.values():
            group.sort(key=lambda m: (m.change_seq, m.create_time), reverse=True)
            for m in group[self.s.keep_indexes :]:
                doomed[m.index_id] = (m, f"beyond the newest {self.s.keep_indexes} of its list")
        return sorted(doomed.values(), key=lambda d: d[0].create_time)


def _unix(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0
