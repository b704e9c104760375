"""Index-build tasks in Redis: records, the FIFO queue, and one active task per list.

Everything lives in Redis so any Manager instance serves the API and a new
master continues exactly where the old one stopped. A task moves
pending -> indexing -> success | failed | cancelled; ``cancelled`` can also
follow ``pending`` directly. A build lost with its Indexer (the Indexer restarted
or stopped answering) puts the task back to ``pending`` for another attempt, up to
``indexing.max_attempts`` (the record counts ``attempts``). Finished records expire
after ``indexing.task_ttl_s``. Writes of the master go through
:meth:`facedex.manager.lock.MasterLock.write` (fenced, and guarded by the status it read).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, fields

import redis.asyncio as aredis

from facedex.errors import Errors, FacedexError, by_code
from facedex.manager.lock import MasterLock
from facedex.redis.keys import Keys

PENDING, INDEXING, SUCCESS, FAILED, CANCELLED = "pending", "indexing", "success", "failed", "cancelled"
FINAL = {SUCCESS, FAILED, CANCELLED}


# A cancel through the API, atomic with the status it expects (ARGV[3]): the task is recorded cancelled and forgotten
# wherever a master could still find it (queue, dispatching list, indexing set), so it is never dispatched afterwards.
_CANCEL = """
if redis.call('hget', KEYS[1], 'status') ~= ARGV[3] then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV, 4))
redis.call('lrem', KEYS[2], 0, ARGV[1])
redis.call('lrem', KEYS[3], 0, ARGV[1])
redis.call('srem', KEYS[4], ARGV[1])
redis.call('expire', KEYS[1], ARGV[2])
if redis.call('get', KEYS[5]) == ARGV[1] then redis.call('del', KEYS[5]) end
return 1
"""


@dataclass
class Task:
    task_id: str
    list_id: str
    descriptor_version: int
    type: str  # one_time | background
    status: str = PENDING
    progress: float = 0.0
    create_time: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    indexer: str = ""
    index_id: str = ""
    count: int = 0
    error_code: int = 0
    error_detail: str = ""
    warning: str = ""  # a successful build whose index missed the calibration targets (meta.json says which)
    attempts: int = 0  # builds started (dispatches); a lost build is retried up to indexing.max_attempts
    seen_time: float = 0.0  # last time its Indexer reported this build (unreachable deadline)

    def to_redis(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_redis(cls, data: dict[str, str]) -> Task:
        kinds = {f.name: f.type for f in fields(cls)}
        conv = {"int": int, "float": float, "str": str}
        return cls(**{k: conv[str(kinds[k])](v) for k, v in data.items() if k in kinds})

    def public(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        if not self.error_code:
            out["error"] = None
        else:
            out["error"] = {"error_code": self.error_code, "desc": by_code(self.error_code).desc, "detail": self.error_detail}
        del out["error_code"], out["error_detail"], out["seen_time"]
        return out


class TaskRepo:
    def __init__(self, redis: aredis.Redis, keys: Keys, task_ttl_s: float = 7 * 86400.0) -> None:
        self.r = redis
        self.k = keys
        self.ttl_s = max(1, int(task_ttl_s))

    async def create(self, list_id: str, version: int, type_: str) -> Task:
        """Queue a task; 26201 when the list already has a pending or indexing task."""
        task = Task(str(uuid.uuid4()), list_id, version, type_, create_time=time.time())
        active = self.k.active(list_id)
        if not await self.r.set(active, task.task_id, nx=True):
            existing = await self.r.get(active)
            current = await self.get_or_none(existing) if existing else None
            if current is not None and current.status not in FINAL:
                raise FacedexError(Errors.TASK_DUPLICATE, f"list {list_id} already has task {existing} ({current.status})")
            # a stale marker (its task finished, or a crash between two writes): take it over atomically
            async with self.r.pipeline(transaction=True) as p:
                await p.watch(active)
                if await p.get(active) != existing:
                    raise FacedexError(Errors.TASK_DUPLICATE, f"list {list_id} got another task just now")
                p.multi()
                p.set(active, task.task_id)
                await p.execute()
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self.k.task(task.task_id), mapping=task.to_redis())
            p.zadd(self.k.tasks, {task.task_id: task.create_time})
            p.rpush(self.k.queue, task.task_id)
            await p.execute()
        return task

    async def get_or_none(self, task_id: str) -> Task | None:
        data = await self.r.hgetall(self.k.task(task_id))
        return Task.from_redis(data) if data else None

    async def get(self, task_id: str) -> Task:
        task = await self.get_or_none(task_id)
        if task is None:
            raise FacedexError(Errors.TASK_NOT_FOUND, f"task {task_id} not found")
        return task

    async def list(
        self, status: str | None, list_id: str | None, page: int, page_size: int, list_ids: set[str] | None = None
    ) -> list[Task]:
        """Newest first; filters (``list_ids``: only tasks of these lists) are applied while paging through the index."""
        out: list[Task] = []
        skip = (page - 1) * page_size
        start = 0
        while len(out) < page_size:
            ids = await self.r.zrevrange(self.k.tasks, start, start + 499)
            if not ids:
                break
            start += len(ids)
            async with self.r.pipeline(transaction=False) as p:
                for i in ids:
                    p.hgetall(self.k.task(i))
                records = await p.execute()
            for data in records:
                if not data:
                    continue
                t = Task.from_redis(data)
                if (status and t.status != status) or (list_id and t.list_id != list_id) or (
                    list_ids is not None and t.list_id not in list_ids
                ):
                    continue
                if skip:
                    skip -= 1
                    continue
                out.append(t)
                if len(out) == page_size:
                    break
        return out

    async def queue(self) -> list[str]:
        return await self.r.lrange(self.k.queue, 0, -1)

    async def cancel_pending(self, task: Task) -> bool:
        """Cancel a task not yet handed to an Indexer, queued or being dispatched; False if it is no longer pending.

        A master that popped it meanwhile finds it cancelled: before the hand-over it drops it; after an Indexer
        accepted it, its guarded ``dispatched`` write is refused and it stops that build.
        """
        return await self._cancel(task, PENDING, "cancelled before it started")

    async def cancel_running(self, task: Task, detail: str) -> bool:
        """Cancel an indexing task here, only if it is still indexing (a master may have just recorded its end)."""
        return await self._cancel(task, INDEXING, detail)

    async def _cancel(self, task: Task, expected: str, detail: str) -> bool:
        fields = {"status": CANCELLED, "end_time": str(time.time()), "error_code": str(Errors.BUILD_CANCELLED.code),
                  "error_detail": detail}
        done = await self.r.eval(
            _CANCEL, 5, self.k.task(task.task_id), self.k.queue, self.k.dispatching, self.k.indexing,
            self.k.active(task.list_id), task.task_id, self.ttl_s, expected, *[x for kv in fields.items() for x in kv],
        )
        return bool(done)

    async def indexing(self) -> list[Task]:
        ids = await self.r.smembers(self.k.indexing)
        tasks = [await self.get_or_none(i) for i in ids]
        return [t for t in tasks if t is not None]

    async def live_lists(self, list_ids: list[str]) -> set[str]:
        """The lists among ``list_ids`` with a pending or indexing task (a stale marker, of a task that ended or
        vanished, does not count: :meth:`create` takes it over)."""
        if not list_ids:
            return set()
        markers = await self.r.mget([self.k.active(i) for i in list_ids])
        held = [(list_id, task_id) for list_id, task_id in zip(list_ids, markers) if task_id]
        async with self.r.pipeline(transaction=False) as p:
            for _, task_id in held:
                p.hget(self.k.task(task_id), "status")
            statuses = await p.execute()
        return {list_id for (list_id, _), status in zip(held, statuses) if status is not None and status not in FINAL}

    # ---- master-only operations: fenced by the lock, guarded by the status the master read
    def _hset(self, task_id: str, changes: dict[str, object]) -> list[object]:
        cmd: list[object] = ["HSET", self.k.task(task_id)]
        for k, v in changes.items():
            cmd += [k, str(v)]
        return cmd

    def _require(self, task: Task) -> list[object]:
        return ["REQUIRE", self.k.task(task.task_id), "status", task.status]

    async def master_update(self, lock: MasterLock, task: Task, **changes: object) -> None:
        await lock.write(self._require(task), self._hset(task.task_id, changes))

    async def master_finish(self, lock: MasterLock, task: Task, status: str, **changes: object) -> None:
        """Final state: record it, release the list's active marker, forget the task as indexing."""
        changes.update(status=status, end_time=time.time())
        key = self.k.task(task.task_id)
        await lock.write(
            self._require(task),
            self._hset(task.task_id, changes),
            ["SREM", self.k.indexing, task.task_id],
            ["LREM", self.k.queue, 0, task.task_id],
            ["EXPIRE", key, self.ttl_s],
            ["DELIFEQ", self.k.active(task.list_id), task.task_id],
        )

    async def retry(self, lock: MasterLock, task: Task, code: int, detail: str) -> None:
        """A lost build: back to the head of the queue for another attempt (the error stays visible meanwhile)."""
        changes = {"status": PENDING, "progress": 0.0, "indexer": "", "index_id": "", "error_code": code, "error_detail": detail}
        await lock.write(
            self._require(task),
            self._hset(task.task_id, changes),
            ["SREM", self.k.indexing, task.task_id],
            ["LREM", self.k.queue, 0, task.task_id],
            ["LPUSH", self.k.queue, task.task_id],
        )

    async def take_next(self, lock: MasterLock) -> str | None:
        """Move the oldest pending task id to the dispatching list (atomic; survives a master crash)."""
        out = await lock.write(["LMOVE", self.k.queue, self.k.dispatching, "LEFT", "RIGHT"])
        return out[0] or None  # type: ignore[return-value]

    async def dispatched(self, lock: MasterLock, task: Task, indexer: str, index_id: str) -> None:
        now = time.time()
        changes = {"status": INDEXING, "indexer": indexer, "index_id": index_id, "start_time": now, "seen_time": now}
        await lock.write(
            self._require(task),
            self._hset(task.task_id, changes),
            ["HINCRBY", self.k.task(task.task_id), "attempts", 1],
            ["SADD", self.k.indexing, task.task_id],
            ["LREM", self.k.dispatching, 0, task.task_id],
        )

    async def put_back(self, lock: MasterLock, task: Task) -> None:
        """An indexer refused the task: back to the head of the queue (StaleTask if it was cancelled meanwhile)."""
        await lock.write(self._require(task), ["LREM", self.k.dispatching, 0, task.task_id], ["LPUSH", self.k.queue, task.task_id])

    async def drop_dispatching(self, lock: MasterLock, task_id: str) -> None:
        await lock.write(["LREM", self.k.dispatching, 0, task_id])

    async def recover(self, lock: MasterLock) -> int:
        """New master: tasks a dead master popped but never handed over go back to the queue head."""
        n = 0
        while (await lock.write(["LMOVE", self.k.dispatching, self.k.queue, "RIGHT", "LEFT"]))[0]:
            n += 1
        return n

    async def record_found(self, lock: MasterLock, task_id: str, list_id: str, version: int, index_id: str,
                           count: int, created: float) -> None:
        """An index in storage whose task record is gone (Redis lost data): record it as that task's success."""
        now = time.time()
        task = Task(task_id, list_id, version, "recovered", SUCCESS, 1.0, created, created, now, "", index_id, count,
                    error_detail="recorded from the index storage: the task record was lost")
        await lock.write(
            self._hset(task_id, task.to_redis()),
            ["ZADD", self.k.tasks, created, task_id],
            ["EXPIRE", self.k.task(task_id), self.ttl_s],
        )

    async def prune(self, lock: MasterLock, batch: int = 500) -> int:
        """Drop ids of expired records from the tasks sorted set (records expire by themselves)."""
        old = await self.r.zrangebyscore(self.k.tasks, "-inf", time.time() - self.ttl_s, start=0, num=batch)
        if not old:
            return 0
        async with self.r.pipeline(transaction=False) as p:
            for i in old:
                p.exists(self.k.task(i))
            alive = await p.execute()
        gone = [i for i, a in zip(old, alive) if not a]
        if gone:
            await lock.write(["ZREM", self.k.tasks, *gone])
        return len(gone)
