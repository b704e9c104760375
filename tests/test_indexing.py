"""Index Manager and Indexer as real processes over real PostgreSQL and Redis."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from facedex.bench.datasets import face_like
from facedex.faces.store import FacesStore
from facedex.index import FaceIndex
from facedex.storage.local import LocalStorage
from tests.conftest import OPERATOR, Services


def wait_task(url: str, task_id: str, timeout: float = 120, until: tuple[str, ...] = ("success", "failed", "cancelled")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = httpx.get(f"{url}/1/tasks/{task_id}", headers=OPERATOR).json()
        if task["status"] in until:
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} still {task['status']} after {timeout}s")


async def new_list(store: FacesStore, vectors: np.ndarray) -> tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    account, _ = await store.create_account("idx")
    lst = await store.create_list(account)
    ids: list[uuid.UUID] = []
    for start in range(0, len(vectors), 20_000):
        ids += await store.import_matrix(account, lst.list_id, 1, vectors[start : start + 20_000])
    return account, lst.list_id, ids


@pytest.fixture(scope="module")
def big():
    return face_like(20_000, n_probes=300, seed=21)


@pytest.fixture
async def own_store(database_url: str):
    """A database of this test's own: dynamic planning looks at every list, so other tests' lists must not be there."""
    import asyncpg

    from facedex.faces.store import create_pool
    from facedex.services import prepare_database

    base, _, query = database_url.partition("?")
    name = base.rsplit("/", 1)[1] + "_dyn"
    url = base + "_dyn" + (f"?{query}" if query else "")
    await prepare_database(url)
    pool = await create_pool(url, max_size=4)
    yield url, FacesStore(pool)
    await pool.close()
    conn = await asyncpg.connect(base.rsplit("/", 1)[0] + "/postgres" + (f"?{query}" if query else ""))
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def test_background_dynamic_indexing(services: Services, own_store, big) -> None:
    """A list crossing the size threshold gets indexed, is rebuilt after a change, and not when unchanged."""
    database_url, store = own_store
    work = services.log_dir / "dynamic"
    manager = services.start_indexing(
        "dyn",
        FACEDEX_DATABASE_URL=database_url,
        FACEDEX_INDEX_STORAGE__PATH=str(work / "indexes"),
        FACEDEX_INDEXING__INDEXING_LISTS='["dynamic"]',
        FACEDEX_INDEXING__MIN_INDEXING_LIST_SIZE="12000",
        FACEDEX_INDEXING__PLANNING_PERIOD_S="1",
    )
    account, list_id, ids = await new_list(store, big.gallery[:11_000])
    time.sleep(2.5)  # two planning runs: below the threshold, nothing to do
    assert httpx.get(f"{manager}/1/tasks", headers=services.internal).json() == []

    more = await store.import_matrix(account, list_id, 1, big.gallery[11_000:12_500])
    deadline = time.monotonic() + 10
    while not (tasks := httpx.get(f"{manager}/1/tasks", headers=services.internal).json()):
        assert time.monotonic() < deadline, "the list crossed the threshold but no task was planned"
        time.sleep(0.2)
    assert [t["list_id"] for t in tasks] == [str(list_id)] and tasks[0]["type"] == "background"
    first = wait_task(manager, tasks[0]["task_id"])
    assert first["status"] == "success" and first["count"] == 12_500

    time.sleep(2.5)  # unchanged: no rebuild
    assert len(httpx.get(f"{manager}/1/tasks", headers=services.internal).json()) == 1

    await store.detach(account, list_id, [more[0]])
    deadline = time.monotonic() + 10
    while len(tasks := httpx.get(f"{manager}/1/tasks", headers=services.internal).json()) < 2:
        assert time.monotonic() < deadline, "a change was not picked up"
        time.sleep(0.2)
    second = wait_task(manager, tasks[0]["task_id"])
    assert second["status"] == "success" and second["count"] == 12_499, tasks  # every task, should this ever fail
    relevant = httpx.get(f"{manager}/1/indexes/relevant", headers=services.internal).json()
    assert [m["index_id"] for m in relevant] == [second["index_id"]]
    services.stop("manager-dyn")
    services.stop("indexer-dyn")


async def test_one_time_build_finds_what_exact_search_finds(services: Services, store: FacesStore, big) -> None:
    manager = services.url("manager")
    _, list_id, ids = await new_list(store, big.gallery)
    resp = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_id)}, headers=services.internal)
    assert resp.status_code == 201, resp.text
    task = resp.json()
    assert task["status"] == "pending" and task["type"] == "one_time"
    dup = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_id)}, headers=services.internal)
    assert dup.status_code == 409 and dup.json()["error_code"] == 26201

    done = wait_task(manager, task["task_id"])
    assert done["status"] == "success", done
    assert done["count"] == 20_000 and done["progress"] == 1.0 and done["index_id"]

    # the stored index, loaded as a matcher would, finds the planted mates exact search finds
    storage = LocalStorage(Path(services.env["FACEDEX_INDEX_STORAGE__PATH"]))
    meta = storage.get_meta(done["index_id"])
    assert meta is not None and meta.list_id == str(list_id) and meta.count == 20_000
    # the build measured which kind and parameters this list needs, and the stored meta carries them to the matcher
    cal = meta.calibration
    assert cal is not None and cal["reached"] and cal["top1"] >= 0.997 and cal["recall10"] >= 0.99 and meta.warning is None
    assert meta.kind == cal["kind"] and meta.params["rescore"] == cal["rescore"] and len(cal["curve"]) >= 4
    assert done["warning"] == ""
    listed = httpx.get(f"{manager}/1/indexes", params={"list_id": str(list_id)}, headers=services.internal).json()
    assert listed[0]["kind"] == meta.kind and listed[0]["calibration"]["curve"] and listed[0].get("files") is None  # no checksums
    folder = storage.fetch(meta.index_id)
    index = FaceIndex.load(folder, 512, meta.kind, meta.params, writable=False)
    found, scores = index.search(big.probes, 10)
    id_block = np.frombuffer(b"".join(i.bytes for i in ids), np.uint8).reshape(-1, 16)
    exact = big.probes @ big.gallery.T
    top1 = np.mean([found[q][0].tobytes() == id_block[np.argmax(exact[q])].tobytes() for q in range(len(big.probes))])
    hits = total = 0
    for q in range(len(big.probes)):
        mates = np.flatnonzero(big.labels == big.probe_labels[q])
        got = {r.tobytes() for r in found[q]}
        hits += sum(id_block[m].tobytes() in got for m in mates)
        total += len(mates)
    assert top1 >= 0.997 and hits / total >= 0.99

    # nothing changed since: a new build is refused; the index is listed as relevant
    again = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_id)}, headers=services.internal)
    assert again.status_code == 409 and again.json()["error_code"] == 26202
    relevant = {m["list_id"]: m["index_id"] for m in httpx.get(f"{manager}/1/indexes/relevant", headers=services.internal).json()}
    assert relevant[str(list_id)] == done["index_id"]
    listed = httpx.get(f"{manager}/1/tasks", params={"list_id": str(list_id)}, headers=services.internal).json()
    assert [t["task_id"] for t in listed] == [task["task_id"]]


async def test_task_errors(services: Services, store: FacesStore) -> None:
    manager = services.url("manager")
    resp = httpx.post(f"{manager}/1/tasks", json={"list_id": str(uuid.uuid4())}, headers=services.internal)
    assert resp.status_code == 404 and resp.json()["error_code"] == 12001
    account, _ = await store.create_account("e")
    empty = await store.create_list(account)
    resp = httpx.post(f"{manager}/1/tasks", json={"list_id": str(empty.list_id)}, headers=services.internal)
    assert resp.status_code == 400 and resp.json()["error_code"] == 26105
    assert httpx.get(f"{manager}/1/tasks/{uuid.uuid4()}", headers=services.internal).json()["error_code"] == 26001
    assert httpx.delete(f"{manager}/1/indexes/{uuid.uuid4()}", headers=services.internal).json()["error_code"] == 26204
    for path in ("/1/tasks/nope", "/1/indexes/nope"):  # ids are UUIDs (and a path is never a storage path)
        resp = httpx.request("GET" if "tasks" in path else "DELETE", manager + path, headers=services.internal)
        assert resp.status_code == 422 and resp.json()["error_code"] == 10002
    resp = httpx.post(f"{manager}/1/tasks", json={"list_id": "x"}, headers=services.internal)
    assert resp.status_code == 422


async def test_cancel_and_killed_build_child(services: Services, store: FacesStore, big) -> None:
    manager, indexer = services.url("manager"), services.url("indexer")
    _, list_a, _ = await new_list(store, big.gallery)
    _, list_b, _ = await new_list(store, big.gallery[:2000])
    _, list_c, _ = await new_list(store, big.gallery[:500])
    a = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_a)}, headers=services.internal).json()
    b = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_b)}, headers=services.internal).json()
    c = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_c)}, headers=services.internal).json()
    # b waits behind a: cancel it while pending
    cancelled = httpx.delete(f"{manager}/1/tasks/{b['task_id']}", headers=services.internal).json()
    assert cancelled["status"] == "cancelled"
    wait_task(manager, a["task_id"], until=("indexing",))
    while httpx.get(f"{indexer}/1/state", headers=services.internal).json()["progress"] < 0.15:  # well into the graph build
        time.sleep(0.1)
    children = psutil.Process(services.procs["indexer"].pid).children()
    build = [p for p in children if "multiprocessing" in " ".join(p.cmdline()) and "resource_tracker" not in " ".join(p.cmdline())]
    assert len(build) == 1
    os.kill(build[0].pid, signal.SIGKILL)  # what the OOM killer does
    failed = wait_task(manager, a["task_id"])
    assert failed["status"] == "failed" and failed["error"]["error_code"] == 26104
    assert "SIGKILL" in failed["error"]["detail"]
    # the indexer is still up and builds the next task
    assert wait_task(manager, c["task_id"])["status"] == "success"
    assert httpx.get(f"{manager}/1/queue", headers=services.internal).json()["length"] == 0
    # a failed task frees the list: a new task may be created
    retry = httpx.post(f"{manager}/1/tasks", json={"list_id": str(list_a)}, headers=services.internal)
    assert retry.status_code == 201
    running = wait_task(manager, retry.json()["task_id"], until=("indexing",))
    assert httpx.delete(f"{manager}/1/tasks/{running['task_id']}", headers=services.internal).status_code == 200
    assert wait_task(manager, running["task_id"])["status"] == "cancelled"
    done = httpx.delete(f"{manager}/1/tasks/{running['task_id']}", headers=services.internal)
    assert done.status_code == 409 and done.json()["error_code"] == 26205


async def test_master_failover_mid_build(services: Services, store: FacesStore, big) -> None:
    """Two more managers on the same Redis; kill -9 the master mid-build; another finishes the task."""
    manager = services.url("manager")
    services.start("manager-b", "manager")
    services.start("manager-c", "manager")
    _, list_id, _ = await new_list(store, big.gallery)
    master_before = httpx.get(f"{manager}/1/master", headers=services.internal).json()["master"]
    task = httpx.post(f"{services.url('manager-b')}/1/tasks", json={"list_id": str(list_id)}, headers=services.internal).json()
    wait_task(manager, task["task_id"], until=("indexing",))
    by_name = {name: services.procs[name] for name in ("manager", "manager-b", "manager-c")}
    master_name = next(n for n in by_name if httpx.get(f"{services.url(n)}/1/master", headers=services.internal).json()["is_master"])
    assert httpx.get(f"{services.url(master_name)}/1/master", headers=services.internal).json()["master"] == master_before
    by_name[master_name].kill()
    by_name[master_name].wait()
    survivor = next(n for n in by_name if n != master_name)
    deadline = time.monotonic() + 10
    while httpx.get(f"{services.url(survivor)}/1/master", headers=services.internal).json()["master"] in (None, master_before):
        assert time.monotonic() < deadline, "no new master within 10 s"
        time.sleep(0.2)
    done = wait_task(services.url(survivor), task["task_id"])
    assert done["status"] == "success" and done["count"] == 20_000
    # the task ran once: one index for the list, the one the task recorded
    indexes = httpx.get(f"{services.url(survivor)}/1/indexes", params={"list_id": str(list_id)}, headers=services.internal).json()
    assert [i["index_id"] for i in indexes] == [done["index_id"]]
    if master_name == "manager":  # keep the session's default manager address working for later tests
        services.start("manager")
