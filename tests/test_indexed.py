"""Indexed matching end to end: API -> proxy -> Redis stream -> Indexed Matcher, real processes throughout."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from datetime import UTC, datetime

import httpx
import msgspec
import numpy as np
import pytest

from facedex.bench.datasets import face_like
from facedex.faces.store import FacesStore
from facedex.licenses.license import issue
from tests.conftest import Services, new_client
from tests.test_indexing import wait_task

N = 50_000


def b64(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode()


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def served_by_matcher(services: Services, name: str, list_id: str) -> bool:
    loaded = httpx.get(services.url(name) + "/1/indexes", headers=services.internal).json()
    return any(i["list_id"] == list_id for i in loaded["indexes"])


@pytest.fixture(scope="module")
async def ready(services: Services, store: FacesStore):
    """A 50k-face list of one API account, indexed by the Manager and loaded by the matcher."""
    data = face_like(N, n_probes=200, seed=31)
    client = new_client(services)
    account = uuid.UUID(client.get("/1/account").json()["account_id"])
    list_id = client.post("/1/lists", json={"user_data": "indexed"}).json()["list_id"]
    ids: list[uuid.UUID] = []
    for start in range(0, N, 20_000):
        ids += await store.import_matrix(account, uuid.UUID(list_id), 1, data.gallery[start : start + 20_000])
    manager = services.url("manager")
    task = httpx.post(f"{manager}/1/tasks", json={"list_id": list_id}, headers=services.internal).json()
    assert wait_task(manager, task["task_id"], timeout=300)["status"] == "success"
    wait_for(lambda: served_by_matcher(services, "matcher", list_id), 30, "the matcher to load the index")
    time.sleep(1.0)  # the proxy's label sync
    return data, client, list_id, [str(i) for i in ids]


def match(client: httpx.Client, list_id: str, vec: np.ndarray, limit: int = 5) -> dict:
    resp = client.post("/1/matcher/faces", json={
        "references": [{"descriptor": {"data": b64(vec)}}], "candidates": {"list_id": list_id, "limit": limit}})
    assert resp.status_code == 200, resp.text
    return resp.json()


def exact(data, ids: list[str], vec: np.ndarray, k: int) -> list[tuple[str, float]]:
    scores = data.gallery @ vec
    order = np.argsort(-scores)[:k]
    return [(ids[i], float(scores[i])) for i in order]


def test_indexed_route_equals_brute_force(ready, services: Services) -> None:
    data, client, list_id, ids = ready
    agree = 0
    for q in range(100):
        body = match(client, list_id, data.probes[q])
        assert body["route"] == "indexed", body
        got = [(r["face_id"], r["similarity"]) for r in body["matches"][0]["results"]]
        want = exact(data, ids, data.probes[q], 5)
        assert data.labels[ids.index(got[0][0])] == data.probe_labels[q]  # a planted mate comes first
        agree += got[0][0] == want[0][0]
        for face_id, sim in got:  # every similarity is the exact one, as brute force gives it
            assert sim == pytest.approx(float(data.gallery[ids.index(face_id)] @ data.probes[q]), abs=1e-5)
    assert agree >= 99
    forced = client.post("/1/matcher/faces", json={
        "references": [{"descriptor": {"data": b64(data.probes[0])}}],
        "candidates": {"list_id": list_id, "limit": 5, "exact": True}}).json()
    assert forced["route"] == "bruteforce" and forced["fallback_reason"] is None
    indexed = match(client, list_id, data.probes[0])
    # the mates (similarity >= 0.3) are the same faces with the same similarities on both routes;
    # below that lies the impostors' near-tied tail, which an index may order differently
    mates_exact = [(r["face_id"], r["similarity"]) for r in forced["matches"][0]["results"] if r["similarity"] >= 0.3]
    mates_indexed = [(r["face_id"], r["similarity"]) for r in indexed["matches"][0]["results"] if r["similarity"] >= 0.3]
    assert mates_exact and [f for f, _ in mates_exact] == [f for f, _ in mates_indexed]
    assert np.allclose([s for _, s in mates_exact], [s for _, s in mates_indexed], atol=1e-5)
    metrics = httpx.get(services.url("proxy") + "/metrics", headers=services.internal).text
    assert 'facedex_match_route_total{fallback="",route="indexed"}' in metrics


def test_attach_and_detach_are_seen_at_once(ready, services: Services) -> None:
    data, client, list_id, ids = ready
    newcomer = client.post("/1/faces", json={"descriptor": {"data": b64(data.probes[150])}}).json()["face_id"]
    t0 = time.monotonic()
    client.patch(f"/1/lists/{list_id}/faces", json={"action": "attach", "face_ids": [newcomer]})
    try:
        body = match(client, list_id, data.probes[150], limit=1)
        assert body["route"] == "indexed", f"fell back: {body.get('fallback_reason')}"  # why, not a truncated body
        assert body["matches"][0]["results"][0]["face_id"] == newcomer, body
        assert time.monotonic() - t0 < 1.0
    finally:  # the list goes back as the next tests expect it, whatever failed here
        client.patch(f"/1/lists/{list_id}/faces", json={"action": "detach", "face_ids": [newcomer]})
    body = match(client, list_id, data.probes[150], limit=10)
    assert body["route"] == "indexed" and newcomer not in {r["face_id"] for r in body["matches"][0]["results"]}
    top = match(client, list_id, data.gallery[7], limit=1)["matches"][0]["results"][0]["face_id"]
    assert top == ids[7]
    client.patch(f"/1/lists/{list_id}/faces", json={"action": "detach", "face_ids": [ids[7]]})
    body = match(client, list_id, data.gallery[7], limit=10)
    assert ids[7] not in {r["face_id"] for r in body["matches"][0]["results"]}
    client.patch(f"/1/lists/{list_id}/faces", json={"action": "attach", "face_ids": [ids[7]]})


def head_checks(services: Services) -> dict[str, float]:
    """The matcher's batches by how their freshness was known (facedex_indexed_head_checks_total)."""
    out = {"announced": 0.0, "read": 0.0}
    for line in httpx.get(services.url("matcher") + "/metrics", headers=services.internal).text.splitlines():
        if line.startswith("facedex_indexed_head_checks_total{"):
            out[line.split('how="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def test_announced_heads_spare_the_head_read_and_a_lost_one_reads_it(ready, services: Services, redis_url: str,
                                                                     redis_prefix: str) -> None:
    """While the list does not change, batches are answered without reading its head from the Faces DB (the head
    announced in Redis is already in the index); an attach makes the next batch read it and catch up (the newcomer
    is found at once); a head Redis lost (a restart without persistence) is read from the Faces DB again."""
    import redis

    from facedex.redis.keys import Keys

    data, client, list_id, ids = ready
    match(client, list_id, data.probes[0])  # the index holds the announced head from here on
    before = head_checks(services)
    for q in range(20):
        assert match(client, list_id, data.probes[q])["route"] == "indexed"
    after = head_checks(services)
    assert after["announced"] - before["announced"] >= 20 and after["read"] == before["read"], (before, after)

    newcomer = client.post("/1/faces", json={"descriptor": {"data": b64(data.probes[151])}}).json()["face_id"]
    client.patch(f"/1/lists/{list_id}/faces", json={"action": "attach", "face_ids": [newcomer]})
    try:
        body = match(client, list_id, data.probes[151], limit=1)
        assert body["route"] == "indexed" and body["matches"][0]["results"][0]["face_id"] == newcomer, body
        assert head_checks(services)["read"] > after["read"]

        r = redis.Redis.from_url(redis_url)
        r.delete(*[Keys(redis_prefix).list_head(Keys.matching_label(list_id, v)) for v in (1, 2)])
        lost = head_checks(services)
        body = match(client, list_id, data.probes[151], limit=1)
        assert body["route"] == "indexed" and body["matches"][0]["results"][0]["face_id"] == newcomer, body
        assert head_checks(services)["read"] > lost["read"]
    finally:
        client.patch(f"/1/lists/{list_id}/faces", json={"action": "detach", "face_ids": [newcomer]})
    body = match(client, list_id, data.probes[151], limit=10)  # the detach, announced again, is seen at once
    assert body["route"] == "indexed" and newcomer not in {r["face_id"] for r in body["matches"][0]["results"]}


def test_kill_matcher_then_restart_and_share(ready, services: Services) -> None:
    data, client, list_id, ids = ready
    answers: list[dict] = []
    services.procs["matcher"].kill()  # kill -9, mid-traffic
    for q in range(40):
        answers.append(match(client, list_id, data.probes[q], limit=1))
    for q, body in enumerate(answers):  # every request answered, and correctly
        assert body["matches"][0]["results"][0]["face_id"] == exact(data, ids, data.probes[q], 1)[0][0] or \
            data.labels[ids.index(body["matches"][0]["results"][0]["face_id"])] == data.probe_labels[q]
    assert answers[-1]["route"] == "bruteforce"  # the label expired: brute force without waiting
    services.start("matcher")
    services.start("matcher-2", "matcher", FACEDEX_INDEXED__MATCHER_ID="second")
    wait_for(lambda: served_by_matcher(services, "matcher", list_id) and served_by_matcher(services, "matcher-2", list_id), 60, "both matchers")
    time.sleep(1.0)  # the proxy's label sync
    routes = [match(client, list_id, data.probes[q % 200], limit=1)["route"] for q in range(60)]
    assert routes.count("indexed") >= 55
    served = [httpx.get(services.url(n) + "/1/indexes", headers=services.internal).json()["served"] for n in ("matcher", "matcher-2")]
    assert all(s > 0 for s in served), served  # the consumer group shares the load
    services.stop("matcher-2")


async def test_reload_under_load_has_no_failed_request(ready, services: Services, store: FacesStore) -> None:
    """Requests flow from before the rebuild until after the new index is swapped in; none fails."""
    data, client, list_id, ids = ready
    manager = services.url("manager")
    before = httpx.get(services.url("matcher") + "/1/indexes", headers=services.internal).json()
    old_index = next(i["index_id"] for i in before["indexes"] if i["list_id"] == list_id)
    client.patch(f"/1/lists/{list_id}/faces", json={"action": "detach", "face_ids": [ids[0]]})  # a change: rebuild allowed
    task = httpx.post(f"{manager}/1/tasks", json={"list_id": list_id}, headers=services.internal).json()

    def swapped() -> bool:
        now = httpx.get(services.url("matcher") + "/1/indexes", headers=services.internal).json()
        return any(i["list_id"] == list_id and i["index_id"] != old_index for i in now["indexes"])

    results: list[tuple[int, str, int, str]] = []  # status, route, probe, best face
    done_at: list[int] = []  # how many requests had been answered when the swap was seen
    async with httpx.AsyncClient(base_url=str(client.base_url), headers=dict(client.headers), timeout=30) as ac:

        async def worker(w: int) -> None:
            q = w
            while not done_at or len(results) < max(1000, done_at[0] + 200):
                r = await ac.post("/1/matcher/faces", json={
                    "references": [{"descriptor": {"data": b64(data.probes[q % 200])}}],
                    "candidates": {"list_id": list_id, "limit": 1}})
                body = r.json()
                best = body["matches"][0]["results"][0]["face_id"] if r.status_code == 200 else ""
                results.append((r.status_code, body.get("route", ""), q % 200, best))
                q += 8

        async def watch() -> None:
            while not done_at:
                if await asyncio.to_thread(swapped):
                    done_at.append(len(results))
                await asyncio.sleep(0.2)

        await asyncio.wait_for(asyncio.gather(watch(), *(worker(w) for w in range(8))), timeout=300)
    assert len(results) >= 1000 and all(status == 200 for status, *_ in results)
    row_of = {f: i for i, f in enumerate(ids)}
    assert all(data.labels[row_of[best]] == data.probe_labels[q] for _, _, q, best in results)  # and right
    assert done_at[0] > 0 and results[-1][1] == "indexed"  # traffic before, during and after the swap
    assert wait_task(manager, task["task_id"])["status"] == "success"
    body = match(client, list_id, data.gallery[0], limit=5)
    assert body["route"] == "indexed" and ids[0] not in {r["face_id"] for r in body["matches"][0]["results"]}
    client.patch(f"/1/lists/{list_id}/faces", json={"action": "attach", "face_ids": [ids[0]]})


def test_license_refusals_fall_back_to_exact(ready, services: Services) -> None:
    data, client, list_id, ids = ready
    good = services.license_path.read_bytes()
    tampered = msgspec.json.decode(good)
    tampered["license"]["expires"] = "2099-01-01T00:00:00+00:00"  # the signature no longer holds
    cases = {
        "expired": issue(services.license_key, "tests", ["index"], 1, expires=datetime(2020, 1, 1, tzinfo=UTC)),
        "tampered": msgspec.json.encode(tampered),
        "no index feature": issue(services.license_key, "tests", ["other"], 30),
        "missing": None,
    }
    try:
        for name, content in cases.items():
            if content is None:
                services.license_path.unlink()
            else:
                services.license_path.write_bytes(content)
            # both caches (0.5 s in tests) expire; the proxy then answers by brute force and says why
            wait_for(lambda: "license" in (match(client, list_id, data.probes[3], limit=1).get("fallback_reason") or ""),
                     10, f"the {name} license to be refused")
            body = match(client, list_id, data.probes[3], limit=1)
            assert body["route"] == "bruteforce", name
            assert "license" in body["fallback_reason"], name  # from the proxy's check or the matcher's 26309
            assert body["matches"][0]["results"][0]["face_id"] == exact(data, ids, data.probes[3], 1)[0][0], name
    finally:
        services.license_path.write_bytes(good)
    wait_for(lambda: match(client, list_id, data.probes[3], limit=1)["route"] == "indexed", 10, "the indexed route to resume")


async def test_a_version_2_list_is_built_and_served_by_the_indexed_route(ready, services: Services, store: FacesStore) -> None:
    """Indexes exist per (list, descriptor version): a 128-d (SFace-sized) list is built, loaded and matched like v1."""
    _, client, _, _ = ready
    data = face_like(20_000, dim=128, n_probes=60, seed=32)
    account = uuid.UUID(client.get("/1/account").json()["account_id"])
    list_id = client.post("/1/lists", json={"user_data": "v2"}).json()["list_id"]
    ids = [str(i) for i in await store.import_matrix(account, uuid.UUID(list_id), 2, data.gallery)]
    manager = services.url("manager")
    task = httpx.post(f"{manager}/1/tasks", json={"list_id": list_id, "descriptor_version": 2}, headers=services.internal).json()
    done = wait_task(manager, task["task_id"], timeout=300)
    assert done["status"] == "success" and done["count"] == 20_000, done
    wait_for(lambda: served_by_matcher(services, "matcher", list_id), 30, "the matcher to load the v2 index")
    time.sleep(1.0)  # the proxy's label sync
    loaded = [i for i in httpx.get(services.url("matcher") + "/1/indexes", headers=services.internal).json()["indexes"]
              if i["list_id"] == list_id]
    assert [i["descriptor_version"] for i in loaded] == [2]
    agree = 0
    for q in range(60):
        body = client.post("/1/matcher/faces", json={
            "references": [{"descriptor": {"version": 2, "data": b64(data.probes[q])}}],
            "candidates": {"list_id": list_id, "limit": 5}}).json()
        assert body["route"] == "indexed", body
        got = [(r["face_id"], r["similarity"]) for r in body["matches"][0]["results"]]
        best = int(np.argmax(data.gallery @ data.probes[q]))
        agree += got[0][0] == ids[best]
        for face_id, sim in got:
            assert sim == pytest.approx(max(0.0, float(data.gallery[ids.index(face_id)] @ data.probes[q])), abs=1e-5)
    assert agree >= 59
    # a version-1 request for this list has no index of its version: brute force answers it
    v1 = client.post("/1/matcher/faces", json={
        "references": [{"descriptor": {"version": 1, "data": b64(np.ones(512, np.float32))}}],
        "candidates": {"list_id": list_id, "limit": 5}}).json()
    assert v1["route"] == "bruteforce"
