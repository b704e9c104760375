"""Index-build tasks in Redis: records, the FIFO queue, and one active task per list.

Everything lives in Redis so any Manager instance serves the API and a new
master continues exactly where the old one stopped. A task moves
pending -> indexing -> success | failed | cancelled; ``cancelled`` can also
follow ``pending`` directly.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, fields

import redis.asyncio as aredis

from facedex.errors import Errors, FacedexError, by_code
from facedex.redis.keys import Keys

PENDING, INDEXING, SUCCESS, FAILED, CANCELLED = "pending", "indexing", "success", "failed", "cancelled"
FINAL = {SUCCESS, FAILED, CANCELLED}


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
        del out["error_code"], out["error_detail"]
        return out


class TaskRepo:
    def __init__(self, redis: aredis.Redis, keys: Keys) -> None:
        self.r = redis
        self.k = keys

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

    async def list(self, status: str | None, list_id: str | None, page: int, page_size: int) -> list[Task]:
        """Newest first; filters are applied while paging through the index."""
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
                if (status and t.status != status) or (list_id and t.list_id != list_id):
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

    async def update(self, task_id: str, **changes: object) -> None:
        await self.r.hset(self.k.task(task_id), mapping={k: str(v) for k, v in changes.items()})

    async def finish(self, task: Task, status: str, **changes: object) -> None:
        """Final state: record it, release the list's active marker, forget the task as indexing."""
        changes.update(status=status, end_time=time.time())
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self.k.task(task.task_id), mapping={k: str(v) for k, v in changes.items()})
            p.srem(self.k.indexing, task.task_id)
            p.lrem(self.k.queue, 0, task.task_id)
            await p.execute()
        # release the marker only if it is still this task's
        await self.r.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0",
            1,
            self.k.active(task.list_id),
            task.task_id,
        )

    async def cancel_pending(self, task: Task) -> bool:
        """Cancel a task still in the queue; False if a master took it meanwhile."""
        removed = await self.r.lrem(self.k.queue, 0, task.task_id)
        if not removed:
            return False
        await self.finish(task, CANCELLED, error_code=Errors.BUILD_CANCELLED.code, error_detail="cancelled before it started")
        return True

    # ---- master-only operations
    async def take_next(self) -> str | None:
        """Move the oldest pending task id to the dispatching list (atomic; survives a master crash)."""
        return await self.r.lmove(self.k.queue, self.k.dispatching, "LEFT", "RIGHT")

    async def dispatched(self, task_id: str, indexer: str, index_id: str) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hset(
                self.k.task(task_id),
                mapping={"status": INDEXING, "indexer": indexer, "index_id": index_id, "start_time": str(time.time())},
            )
            p.sadd(self.k.indexing, task_id)
            p.lrem(self.k.dispatching, 0, task_id)
            await p.execute()

    async def put_back(self, task_id: str) -> None:
        """An indexer refused the task: back to the head of the queue."""
        async with self.r.pipeline(transaction=True) as p:
            p.lrem(self.k.dispatching, 0, task_id)
            p.lpush(self.k.queue, task_id)
            await p.execute()

    async def drop_dispatching(self, task_id: str) -> None:
        await self.r.lrem(self.k.dispatching, 0, task_id)

    async def recover(self) -> int:
        """New master: tasks a dead master popped but never handed over go back to the queue head."""
        n = 0
        while await self.r.lmove(self.k.dispatching, self.k.queue, "RIGHT", "LEFT"):
            n += 1
        return n

    async def indexing(self) -> list[Task]:
        ids = await self.r.smembers(self.k.indexing)
        tasks = [await self.get_or_none(i) for i in ids]
        return [t for t in tasks if t is not None]
