"""Faces store on real PostgreSQL: the change log and the matcher cache that tails it."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
import uuid

import asyncpg
import numpy as np
import pytest

from facedex.bruteforce.cache import ListCache
from facedex.errors import FacedexError
from facedex.faces.store import (
    ATTACH,
    DELTA_SQL,
    DETACH,
    UPDATE,
    FacesStore,
    NewFace,
    create_pool,
    delta_timeout,
)
from facedex.services import prepare_database
from tests.conftest import _with_db


def unit(rng: np.random.Generator, n: int, d: int = 512) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


async def make_faces(store: FacesStore, account: uuid.UUID, vecs: np.ndarray, list_ids=()) -> list[uuid.UUID]:
    return await store.create_faces(account, [NewFace(descriptors={1: v}) for v in vecs], list_ids)


async def log_of(store: FacesStore, list_id: uuid.UUID) -> list[tuple[int, int, uuid.UUID]]:
    rows = await store.pool.fetch("SELECT seq, op, face_id FROM list_changes WHERE list_id=$1 ORDER BY seq", list_id)
    return [(r["seq"], r["op"], r["face_id"]) for r in rows]


async def test_change_log_is_gap_free_under_concurrent_writers(store: FacesStore, account: uuid.UUID) -> None:
    rng = np.random.default_rng(1)
    lst = await store.create_list(account)
    ids = await make_faces(store, account, unit(rng, 200))
    # 40 concurrent transactions attach and detach overlapping batches
    async def worker(i: int) -> None:
        batch = ids[i * 5 : i * 5 + 10]
        await store.attach(account, lst.list_id, batch)
        if i % 3 == 0:
            await store.detach(account, lst.list_id, batch[:4])

    await asyncio.gather(*(worker(i) for i in range(40)))
    log = await log_of(store, lst.list_id)
    head = (await store.get_list(account, lst.list_id)).change_seq
    assert [s for s, _, _ in log] == list(range(1, head + 1))  # no gaps, no duplicates
    # replaying the log gives the membership table
    members: set[uuid.UUID] = set()
    for _, op, fid in log:
        if op == ATTACH:
            assert fid not in members
            members.add(fid)
        elif op == DETACH:
            members.discard(fid)
    table = {r["face_id"] for r in await store.pool.fetch("SELECT face_id FROM list_faces WHERE list_id=$1", lst.list_id)}
    assert members == table
    assert (await store.get_list(account, lst.list_id)).face_count == len(table)


async def test_attach_is_idempotent_and_delete_logs_detach_everywhere(store: FacesStore, account: uuid.UUID) -> None:
    rng = np.random.default_rng(2)
    a, b = await store.create_list(account), await store.create_list(account)
    ids = await make_faces(store, account, unit(rng, 3), [a.list_id, b.list_id])
    assert await store.attach(account, a.list_id, ids) == 0
    await store.delete_faces(account, [ids[1]])
    for lst in (a, b):
        log = await log_of(store, lst.list_id)
        assert [op for _, op, _ in log] == [ATTACH, ATTACH, ATTACH, DETACH]
        assert log[-1][2] == ids[1]
    await store.put_descriptor(account, ids[0], 1, unit(rng, 1)[0])
    assert (await log_of(store, a.list_id))[-1][1:] == (UPDATE, ids[0])


async def test_delta_collapses_to_final_state(store: FacesStore, account: uuid.UUID) -> None:
    rng = np.random.default_rng(3)
    lst = await store.create_list(account)
    ids = await make_faces(store, account, unit(rng, 4), [lst.list_id])
    since = (await store.get_list(account, lst.list_id)).change_seq
    await store.detach(account, lst.list_id, [ids[0], ids[1]])
    await store.attach(account, lst.list_id, [ids[1]])  # detached then re-attached: present
    new = await make_faces(store, account, unit(rng, 1), [lst.list_id])
    await store.delete_faces(account, new)  # created and deleted in between: absent
    delta = await store.delta(lst.list_id, 1, since)
    assert delta is not None
    assert set(delta.removed) == {ids[0].bytes, new[0].bytes}
    assert delta.upserted_ids == [ids[1].bytes]
    assert delta.head == (await store.get_list(account, lst.list_id)).change_seq


async def test_one_face_delta_reads_a_few_pages_without_statistics(database_url: str) -> None:
    """A matcher reads the delta of an attach while a request waits: it must look the face up by key, not hash whole
    tables, even when the planner has no statistics (right after a bulk import, autovacuum lagging or off). Measured
    by the pages the delta query touches, in a database of its own whose tables are never analyzed."""
    name = f"facedex_plan_{secrets.token_hex(4)}"
    url = _with_db(database_url, name)
    await prepare_database(url)
    pool = await create_pool(url, max_size=2)
    try:
        for table in ("faces", "descriptors", "list_faces", "list_changes"):
            await pool.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
        store = FacesStore(pool)
        account, _ = await store.create_account("plan")
        rng = np.random.default_rng(9)
        big, small = (await store.create_list(account)).list_id, (await store.create_list(account)).list_id
        await store.import_matrix(account, big, 1, unit(rng, 30_000))
        ids = await store.import_matrix(account, small, 1, unit(rng, 100))
        since = (await store.get_list(account, small)).change_seq
        await store.detach(account, small, ids[:1])
        await store.attach(account, small, ids[:1])
        plan = await pool.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {DELTA_SQL}", small, since, 1)
        top = json.loads(plan)[0]["Plan"]
        pages = top["Shared Hit Blocks"] + top["Shared Read Blocks"]
        assert pages < 100, f"a one-face delta touched {pages} pages: {json.dumps(top)[:2000]}"
        delta = await store.delta(small, 1, since)
        assert delta is not None and delta.upserted_ids == [ids[0].bytes] and not delta.removed
    finally:
        await pool.close()
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def test_delta_timeout_bounds_the_wait_for_a_connection_too(database_url: str, store: FacesStore, account: uuid.UUID) -> None:
    """A matcher's delta read gives up within its timeout even when no pooled connection frees up (a stalled Faces
    DB looks like this from the pool's side), and answers when one is there."""
    rng = np.random.default_rng(5)
    lst = await store.create_list(account)
    await make_faces(store, account, unit(rng, 3), [lst.list_id])
    pool = await create_pool(database_url, min_size=1, max_size=1)
    small = FacesStore(pool)
    try:
        async with pool.acquire():  # the only connection is busy
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await small.delta(lst.list_id, 1, 0, timeout=0.3)
            assert time.monotonic() - started < 2.0
        delta = await small.delta(lst.list_id, 1, 0, timeout=5.0)
        assert delta is not None and len(delta.upserted_ids) == 3
        assert delta_timeout(0.5) == 5.0 and delta_timeout(2.0) == 20.0  # the matchers' bound: 10 head reads, >= 5 s
    finally:
        await asyncio.wait_for(pool.close(), 10)


@pytest.mark.parametrize("half_scan", [False, True])
async def test_cache_stays_exact_under_random_churn(store: FacesStore, account: uuid.UUID, half_scan: bool) -> None:
    """Randomised churn: after every step the cached matrix answers exactly what the DB holds (with ``half_scan``,
    one query at a time, so each search takes the fp16 scan, whose copy must follow every change)."""
    rng = np.random.default_rng(4)
    prng = random.Random(4)
    lst = await store.create_list(account)
    pool_vecs = unit(rng, 300)
    ids = await make_faces(store, account, pool_vecs)
    vec_of = {fid: v for fid, v in zip(ids, pool_vecs)}
    await store.attach(account, lst.list_id, ids[:100])
    cache = ListCache(store, max_bytes=1 << 30, half_scan=half_scan)
    queries = unit(rng, 4)
    for step in range(30):
        action = prng.choice(["attach", "detach", "update", "delete", "none"])
        sample = prng.sample(ids, 15)
        if action == "attach":
            await store.attach(account, lst.list_id, sample)
        elif action == "detach":
            await store.detach(account, lst.list_id, sample)
        elif action == "update":
            fid = prng.choice(ids)
            vec_of[fid] = unit(rng, 1)[0]
            await store.put_descriptor(account, fid, 1, vec_of[fid])
        elif action == "delete":
            gone = sample[:2]
            await store.delete_faces(account, gone)
            ids = [i for i in ids if i not in gone]
        matrix = await cache.fresh(lst.list_id, 1)
        assert matrix is not None
        members = [
            r["face_id"] for r in await store.pool.fetch("SELECT face_id FROM list_faces WHERE list_id=$1", lst.list_id)
        ]
        assert matrix.n == len(members), step
        if not members:
            continue
        truth = np.stack([vec_of[m] for m in members])
        k = min(10, len(members))
        if half_scan:
            assert matrix.half is not None and np.array_equal(matrix.half[: matrix.n], matrix.vectors[: matrix.n].astype(np.float16))
            answers = [matrix.search(queries[q : q + 1], k) for q in range(len(queries))]
            scores, got = np.vstack([a[0] for a in answers]), np.vstack([a[1] for a in answers])
        else:
            scores, got, _ = matrix.search(queries, k)
        want = np.argsort(-(queries @ truth.T), axis=1)[:, :k]
        for q in range(len(queries)):
            assert [uuid.UUID(bytes=g.tobytes()) for g in got[q]] == [members[i] for i in want[q]], step
            assert np.allclose(scores[q], (queries[q] @ truth.T)[want[q]], atol=1e-5)


async def test_cache_forgets_deleted_list(store: FacesStore, account: uuid.UUID) -> None:
    rng = np.random.default_rng(5)
    lst = await store.create_list(account)
    await make_faces(store, account, unit(rng, 5), [lst.list_id])
    cache = ListCache(store, max_bytes=1 << 30)
    assert (await cache.fresh(lst.list_id, 1)).n == 5
    await store.delete_list(account, lst.list_id)
    assert await cache.fresh(lst.list_id, 1) is None and len(cache) == 0


async def test_cache_evicts_least_recently_used_over_budget(store: FacesStore, account: uuid.UUID) -> None:
    rng = np.random.default_rng(6)
    lists = [await store.create_list(account) for _ in range(3)]
    for lst in lists:
        await make_faces(store, account, unit(rng, 100), [lst.list_id])
    # room for two lists' 1024-row blocks: descriptor, face id and filter columns (8 + 4 + 4 bytes), plus their dictionaries
    cache = ListCache(store, max_bytes=2 * 1024 * (512 * 4 + 16 + 16) + 4096)
    for lst in lists:
        await cache.fresh(lst.list_id, 1)
    assert [m.list_id for m in cache.entries()] == [lists[1].list_id, lists[2].list_id]


async def test_account_scoping_in_store(store: FacesStore, account: uuid.UUID) -> None:
    other, _ = await store.create_account("other")
    lst = await store.create_list(account)
    with pytest.raises(FacedexError) as exc:
        await store.get_list(other, lst.list_id)
    assert exc.value.error.code == 12001
    with pytest.raises(FacedexError):
        await store.create_faces(other, [NewFace()], [lst.list_id])
    assert (await store.get_list(account, lst.list_id)).face_count == 0


async def test_concurrent_delete_and_attach_keep_counts_consistent(store: FacesStore, account: uuid.UUID) -> None:
    rng = np.random.default_rng(7)
    lists = [await store.create_list(account) for _ in range(3)]
    ids = await make_faces(store, account, unit(rng, 60), [lists[0].list_id])

    async def attach(lst, batch):
        try:
            await store.attach(account, lst.list_id, batch)
        except FacedexError:  # some faces were deleted first: the whole attach is refused
            pass

    jobs = []
    for i in range(0, 60, 6):
        batch = ids[i : i + 6]
        jobs += [attach(lists[1], batch), store.delete_faces(account, batch[:3]), attach(lists[2], batch[3:])]
    await asyncio.gather(*jobs)
    for lst in lists:
        rows = await store.pool.fetch("SELECT face_id FROM list_faces WHERE list_id=$1", lst.list_id)
        assert (await store.get_list(account, lst.list_id)).face_count == len(rows)
        members: set[uuid.UUID] = set()
        for _, op, fid in await log_of(store, lst.list_id):
            members.add(fid) if op == ATTACH else members.discard(fid) if op == DETACH else None
        assert members == {r["face_id"] for r in rows}


async def test_snapshot_pages_cover_every_member_once(store: FacesStore, account: uuid.UUID) -> None:
    rng = np.random.default_rng(8)
    lst = await store.create_list(account)
    vecs = unit(rng, 45)
    ids = await make_faces(store, account, vecs, [lst.list_id])
    extra = await make_faces(store, account, unit(rng, 3))  # not in the list
    pages = [p async for p in store.snapshot(lst.list_id, 1, page=7)]
    assert len(pages) == 7 and {p[0] for p in pages} == {45}
    got = {bytes(r): v for _, block, vs in pages for r, v in zip(block, vs)}
    assert set(got) == {i.bytes for i in ids} and not set(got) & {e.bytes for e in extra}
    for fid, v in zip(ids, vecs):
        assert np.array_equal(got[fid.bytes], v)
    assert [p async for p in store.snapshot(uuid.uuid4(), 1)] == []


async def test_list_changes_are_announced_before_they_are_acknowledged(
    store: FacesStore, account: uuid.UUID, redis_url: str, redis_prefix: str, pool: asyncpg.Pool
) -> None:
    """Every membership write raises its list's announced head (every descriptor version's key) to the head it
    committed, a deleted list is announced gone; and a write whose head Redis does not take changes nothing."""
    import redis.asyncio as aredis

    from facedex.errors import Errors
    from facedex.redis.heads import GONE, GONE_TTL_S, ChangeHeads
    from facedex.redis.keys import Keys

    keys = Keys(redis_prefix)
    raw = aredis.Redis.from_url(redis_url)

    async def announced(list_id: uuid.UUID) -> list[int | None]:
        values = [await raw.get(keys.list_head(Keys.matching_label(str(list_id), v))) for v in (1, 2)]
        return [None if v is None else int(v) for v in values]

    rng = np.random.default_rng(11)
    lst = await store.create_list(account)
    ids = await make_faces(store, account, unit(rng, 4), [lst.list_id])
    head = (await store.get_list(account, lst.list_id)).change_seq
    assert await announced(lst.list_id) == [head, head]
    await store.detach(account, lst.list_id, ids[:2])
    head = (await store.get_list(account, lst.list_id)).change_seq
    assert await announced(lst.list_id) == [head, head]

    # Redis refuses (nothing listens there): the write is refused with its code and nothing is committed
    dead = ChangeHeads(aredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5), keys)
    cut_off = FacesStore(pool, dead)
    before = await store.get_list(account, lst.list_id)
    members = set(await pool.fetch("SELECT face_id FROM list_faces WHERE list_id=$1", lst.list_id))
    for write in (lambda: cut_off.attach(account, lst.list_id, ids[:2]), lambda: cut_off.detach(account, lst.list_id, ids[2:]),
                  lambda: cut_off.delete_faces(account, ids[3:]), lambda: cut_off.delete_list(account, lst.list_id)):
        with pytest.raises(FacedexError) as refused:
            await write()
        assert refused.value.error is Errors.CHANGES_NOT_ANNOUNCED
    after = await store.get_list(account, lst.list_id)
    assert (after.change_seq, after.face_count) == (before.change_seq, before.face_count)
    assert set(await pool.fetch("SELECT face_id FROM list_faces WHERE list_id=$1", lst.list_id)) == members
    assert await announced(lst.list_id) == [before.change_seq, before.change_seq]

    await store.delete_list(account, lst.list_id)
    assert await announced(lst.list_id) == [GONE, GONE]
    assert 0 < await raw.ttl(keys.list_head(Keys.matching_label(str(lst.list_id), 1))) <= GONE_TTL_S  # then read: gone
    await raw.aclose()
