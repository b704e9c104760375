"""Faults on the indexing side: Redis restarts, Indexers killed or frozen mid-build, two masters, retention.

A private redis-server (``--appendonly yes``) on a free port is started and killed by a fixture, so killing
it touches nobody else; services run as processes with their env pointed at it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import redis
import redis.asyncio as aredis

from facedex.bench.datasets import face_like
from facedex.faces.store import FacesStore
from facedex.manager.lock import MasterLock, NotMaster, StaleTask
from facedex.manager.tasks import CANCELLED, INDEXING, TaskRepo
from facedex.redis.keys import Keys
from facedex.storage.local import LocalStorage
from tests.conftest import Services, free_port
from tests.test_indexing import new_list

pytestmark = pytest.mark.usefixtures("as_operator")  # raw httpx calls act as an operator


class PrivateRedis:
    """A redis-server of this module's own, with AOF: it can be killed -9 and restarted on the same port and data."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.dir = work
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=(self.dir / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, "private redis-server did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis-aof"))
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


@pytest.fixture
def faulty(database_url: str, private_redis: PrivateRedis, tmp_path: Path) -> Iterator[Services]:
    """Services on the private Redis (each test its own key prefix and storage); nothing started yet."""
    svc = Services(database_url, private_redis.url, f"faults_{secrets.token_hex(3)}", tmp_path)
    svc.env.update(FACEDEX_INDEXING__LOCK_TTL_S="3", FACEDEX_INDEXING__INDEXER_TIMEOUT_S="1")
    try:
        yield svc
    finally:
        for proc in svc.procs.values():  # a frozen process ignores SIGTERM: thaw it first
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        svc.stop()


@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return face_like(20_000, n_probes=10, seed=31).gallery


def wait_task(url: str, task_id: str, timeout: float = 120, until: tuple[str, ...] = ("success", "failed", "cancelled")) -> dict:
    """Like tests.test_indexing.wait_task, but an answer that is not a task (Redis just restarted) is polled again."""
    deadline = time.monotonic() + timeout
    task: dict = {}
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{url}/1/tasks/{task_id}", timeout=10)
            task = resp.json() if resp.status_code == 200 else task
        except httpx.HTTPError:
            pass
        if task.get("status") in until:
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} still {task.get('status')} after {timeout}s: {task}")


def build_children(indexer_pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(indexer_pid).children()
            if "multiprocessing" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())]


def stored(svc: Services) -> dict[str, str]:
    """index_id -> list_id of every index in the services' storage."""
    return {m.index_id: m.list_id for m in LocalStorage(Path(svc.env["FACEDEX_INDEX_STORAGE__PATH"])).list()}


def wait_for(what: str, cond, timeout: float = 60, every: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(every)
    return value


async def test_fenced_lock_refuses_a_deposed_master(redis_url: str, redis_prefix: str) -> None:
    """A master that stalled past its TTL keeps believing it holds the lock: Redis refuses its writes."""
    r = aredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(f"{redis_prefix}:fence")
    a = MasterLock(r, keys, "a", ttl_s=0.3)
    b = MasterLock(r, keys, "b", ttl_s=10)
    try:
        assert await a.hold() and not await b.hold()
        await a.write(["SET", keys.last_planning, "by-a"])
        await asyncio.sleep(0.5)  # a stalls: its lock expires and b takes over
        assert await b.hold() and b.token is not None and a.token is not None and b.token > a.token
        a.valid_until = time.monotonic() + 100  # a's clock says it still holds the lock
        with pytest.raises(NotMaster):
            await a.write(["SET", keys.last_planning, "by-a-again"])
        assert await r.get(keys.last_planning) == "by-a" and a.value is None
        await b.write(["SET", keys.last_planning, "by-b"])
        assert await r.get(keys.last_planning) == "by-b"
        assert not await a.hold()  # and it cannot take the lock back while b renews
    finally:
        await b.release()
        await r.aclose()


async def test_guarded_writes_and_task_record_expiry(redis_url: str, redis_prefix: str) -> None:
    """A master write on a task whose status changed meanwhile is refused whole; finished records expire and are
    pruned from the tasks index."""
    r = aredis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(f"{redis_prefix}:expiry")
    repo = TaskRepo(r, keys, task_ttl_s=1)
    lock = MasterLock(r, keys, "m", ttl_s=10)
    try:
        assert await lock.hold()
        task = await repo.create(str(uuid.uuid4()), 1, "one_time")
        stale = await repo.get(task.task_id)
        stale.status = INDEXING  # what a master read before the task was cancelled through the API
        with pytest.raises(StaleTask):
            await repo.retry(lock, stale, 26107, "x")
        assert (await repo.get(task.task_id)).status == "pending" and await repo.queue() == [task.task_id]
        await repo.master_finish(lock, task, CANCELLED)
        assert await r.get(keys.active(task.list_id)) is None and await repo.queue() == []
        assert 0 < await r.ttl(keys.task(task.task_id)) <= 1
        await asyncio.sleep(2.2)
        assert await repo.get_or_none(task.task_id) is None
        assert await repo.prune(lock) == 1 and await r.zcard(keys.tasks) == 0
    finally:
        await lock.release()
        await r.aclose()


async def test_redis_kill_and_restart_with_aof_loses_no_task(faulty: Services, private_redis: PrivateRedis,
                                                            store: FacesStore, gallery: np.ndarray) -> None:
    manager = faulty.start_indexing("aof")
    _, running_list, _ = await new_list(store, gallery)
    _, queued_list, _ = await new_list(store, gallery[:1500])
    running = httpx.post(f"{manager}/1/tasks", json={"list_id": str(running_list)}).json()
    queued = httpx.post(f"{manager}/1/tasks", json={"list_id": str(queued_list)}).json()
    wait_task(manager, running["task_id"], until=("indexing",))
    private_redis.kill()
    time.sleep(1.5)  # the master's rounds fail meanwhile
    assert httpx.get(f"{manager}/healthcheck", timeout=10).status_code != 200
    down = httpx.get(f"{manager}/1/tasks/{queued['task_id']}", timeout=30)
    assert down.status_code == 503 and down.json()["error_code"] == 26206, down.text  # an outage, not a 500
    private_redis.start()
    a = wait_task(manager, running["task_id"], timeout=180)
    b = wait_task(manager, queued["task_id"], timeout=180)
    assert a["status"] == b["status"] == "success", (a, b)
    assert a["attempts"] == 1 and b["attempts"] == 1  # nothing was rebuilt
    assert sorted(stored(faulty).items()) == sorted({a["index_id"]: str(running_list), b["index_id"]: str(queued_list)}.items())
    wait_for("healthcheck green again", lambda: httpx.get(f"{manager}/healthcheck", timeout=10).status_code == 200)


async def test_indexer_killed_mid_build_is_retried_and_stores_nothing(faulty: Services, store: FacesStore,
                                                                      gallery: np.ndarray) -> None:
    manager = faulty.start_indexing("kill", FACEDEX_INDEXING__TASK_UNREACHABLE_S="120")
    indexer = faulty.url("indexer-kill")
    _, list_id, _ = await new_list(store, gallery)
    task = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_id)}).json()
    first = wait_task(manager, task["task_id"], until=("indexing",))
    wait_for("build under way", lambda: httpx.get(f"{indexer}/1/state").json()["progress"] >= 0.12, every=0.1)
    (child,) = build_children(faulty.procs["indexer-kill"].pid)
    faulty.procs["indexer-kill"].kill()  # kill -9 of the Indexer: its build child must die with it
    faulty.procs["indexer-kill"].wait()
    psutil.wait_procs([child], timeout=10)
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    faulty.start("indexer-kill", "indexer", FACEDEX_REDIS_PREFIX=f"{faulty.env['FACEDEX_REDIS_PREFIX']}:kill")
    done = wait_task(manager, task["task_id"], timeout=180)
    assert done["status"] == "success" and done["attempts"] == 2, done
    assert done["index_id"] != first["index_id"]
    # the lost attempt never stored an index; the retry's is the list's only one
    assert stored(faulty) == {done["index_id"]: str(list_id)}
    listed = httpx.get(f"{manager}/1/tasks", params={"list_id": str(list_id)}).json()
    assert [t["task_id"] for t in listed] == [task["task_id"]]


async def test_unreachable_indexer_deadline_retry_and_cancel(faulty: Services, store: FacesStore,
                                                            gallery: np.ndarray) -> None:
    manager = faulty.start_indexing("stop", FACEDEX_INDEXING__TASK_UNREACHABLE_S="3")
    proc = faulty.procs["indexer-stop"]

    def freeze() -> list[psutil.Process]:  # the Indexer and its build stop answering (a frozen host)
        children = build_children(proc.pid)
        for p in [psutil.Process(proc.pid), *children]:
            p.suspend()
        return children

    def thaw(children: list[psutil.Process]) -> None:
        for p in [psutil.Process(proc.pid), *children]:
            p.resume()

    # 1. cancel while the Indexer does not answer: 200, cancelled here; the build is refused when it comes back
    _, list_a, _ = await new_list(store, gallery)
    a = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_a)}).json()
    a_run = wait_task(manager, a["task_id"], until=("indexing",))
    frozen = freeze()
    resp = httpx.delete(f"{manager}/1/tasks/{a['task_id']}", timeout=30)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled", resp.text
    assert resp.json()["error"]["error_code"] == 26106
    thaw(frozen)
    state = wait_for("the Indexer stops the unwanted build",
                     lambda: (s := httpx.get(faulty.url("indexer-stop") + "/1/state").json())["state"] != "indexing" and s)
    assert state["task_id"] == a["task_id"] and state["state"] == "cancelled"
    assert a_run["index_id"] not in stored(faulty)

    # 2. a task whose Indexer stops answering fails its attempt after the deadline (26107) and is retried
    _, list_b, _ = await new_list(store, gallery[:6000])
    b = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_b)}).json()
    b_run = wait_task(manager, b["task_id"], until=("indexing",))
    frozen = freeze()
    lost = wait_for("attempt failed after the deadline",
                    lambda: (t := httpx.get(f"{manager}/1/tasks/{b['task_id']}").json())["status"] == "pending" and t, timeout=30)
    assert lost["attempts"] == 1 and lost["error"]["error_code"] == 26107
    thaw(frozen)
    done = wait_task(manager, b["task_id"], timeout=180)
    assert done["status"] == "success" and done["attempts"] == 2, done
    # whatever the frozen attempt did when it thawed, only the retry's index stays
    wait_for("only the retry's index in storage", lambda: stored(faulty) == {done["index_id"]: str(list_b)}, timeout=30)
    assert b_run["index_id"] != done["index_id"]


async def test_deleted_list_index_removed_and_never_loaded(services: Services, store: FacesStore,
                                                           gallery: np.ndarray) -> None:
    manager, matcher = services.url("manager"), services.url("matcher")
    account, list_id, _ = await new_list(store, gallery[:2000])
    task = wait_task(manager, httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_id)}).json()["task_id"])
    assert task["status"] == "success"

    def loaded() -> set[str]:
        return {i["index_id"] for i in httpx.get(f"{matcher}/1/indexes").json()["indexes"]}

    wait_for("matcher loads the index", lambda: task["index_id"] in loaded(), timeout=30)
    await store.delete_list(account, list_id)
    # the master deletes it within about one maintenance period; the matcher drops it on its next reload
    wait_for("index removed from storage", lambda: task["index_id"] not in stored(services), timeout=15)
    wait_for("matcher drops the index", lambda: task["index_id"] not in loaded(), timeout=10)
    deadline = time.monotonic() + 3  # and it never comes back
    while time.monotonic() < deadline:
        assert task["index_id"] not in loaded()
        time.sleep(0.25)


async def test_last_k_indexes_kept_and_finished_records_expire(services: Services, store: FacesStore, redis_url: str,
                                                                gallery: np.ndarray) -> None:
    manager = services.url("manager")
    account, list_id, _ = await new_list(store, gallery[:1000])
    built = []
    for i in range(3):
        if i:  # a change, so the next build is not refused as up to date
            await store.import_matrix(account, list_id, 1, gallery[1000 + i : 1001 + i])
        task = wait_task(manager, httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_id)}).json()["task_id"])
        assert task["status"] == "success"
        built.append(task["index_id"])
    wait_for("only the newest 2 indexes kept",
             lambda: {i for i, lst in stored(services).items() if lst == str(list_id)} == set(built[1:]), timeout=15)
    relevant = {m["list_id"]: m["index_id"] for m in httpx.get(f"{manager}/1/indexes/relevant").json()}
    assert relevant[str(list_id)] == built[-1]
    r = redis.Redis.from_url(redis_url)
    ttl = r.ttl(Keys(services.env["FACEDEX_REDIS_PREFIX"]).task(task["task_id"]))
    assert 6 * 86400 < ttl <= 7 * 86400  # finished records expire (default 7 days)
    assert uuid.UUID(task["task_id"])


async def test_redis_data_lost_storage_and_indexers_are_the_truth(faulty: Services, private_redis: PrivateRedis,
                                                                  store: FacesStore, gallery: np.ndarray) -> None:
    """Redis loses everything (a restart without persistence; FLUSHALL of the private server here): an index of a
    vanished task is recorded, a build of a vanished task is stopped, and the background list is planned again."""
    account, list_id, _ = await new_list(store, gallery[:1500])
    manager = faulty.start_indexing("lost", FACEDEX_INDEXING__INDEXING_LISTS=f'["{list_id}"]',
                                    FACEDEX_INDEXING__PLANNING_PERIOD_S="2")
    indexer = faulty.url("indexer-lost")

    def tasks() -> list[dict]:
        resp = httpx.get(f"{manager}/1/tasks", timeout=10)
        return resp.json() if resp.status_code == 200 else []

    first = wait_task(manager, wait_for("background task planned", tasks)[0]["task_id"])
    assert first["status"] == "success" and first["type"] == "background"
    r = redis.Redis(port=private_redis.port)
    r.flushall()  # every task record, the queue, the markers and the lock are gone
    recovered = wait_for("the stored index's task recorded again",
                         lambda: (t := tasks()) and t[0]["task_id"] == first["task_id"] and t[0], timeout=30)
    assert recovered["status"] == "success" and recovered["index_id"] == first["index_id"] and recovered["type"] == "recovered"

    await store.import_matrix(account, list_id, 1, gallery[1500:])  # a long build next
    second = wait_task(manager, wait_for("rebuild planned", lambda: [t for t in tasks() if t["task_id"] != first["task_id"]])[0]["task_id"],
                       until=("indexing",))
    wait_for("build under way", lambda: httpx.get(f"{indexer}/1/state").json()["state"] == "indexing")
    r.flushall()  # the running task vanishes
    log = faulty.log_dir / "indexer-lost.log"  # the state flips to the next build quickly: read the Indexer's log
    wait_for("the Indexer told to stop the vanished task's build",
             lambda: f"build of task {second['task_id']} ended: cancelled" in log.read_text(), timeout=30)
    third = wait_for("the list planned again", lambda: [t for t in tasks() if t["task_id"] not in (first["task_id"], second["task_id"])
                                                        and t["type"] == "background"], timeout=30)[0]
    done = wait_task(manager, third["task_id"], timeout=180)
    assert done["status"] == "success" and done["count"] == len(gallery)
    assert second["index_id"] not in stored(faulty)
    assert done["index_id"] in stored(faulty) and first["index_id"] in stored(faulty)  # the last 2 are kept
