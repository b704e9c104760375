"""The public API over HTTP against real services and PostgreSQL: lists, faces, matching, isolation."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

from facedex.bench.datasets import face_like


def b64(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode()


def add_faces(client: httpx.Client, list_id: str, vectors: np.ndarray, prefix: str = "f") -> list[str]:
    ids: list[str] = []
    for start in range(0, len(vectors), 1000):
        faces = [
            {"external_id": f"{prefix}{start + i}", "descriptor": {"version": 1, "data": b64(v)}}
            for i, v in enumerate(vectors[start : start + 1000])
        ]
        resp = client.post("/1/faces/batch", json={"faces": faces, "list_ids": [list_id]})
        assert resp.status_code == 201, resp.text
        ids += resp.json()["face_ids"]
    return ids


def match(client: httpx.Client, list_id: str, refs: list[dict], **cand: object) -> httpx.Response:
    return client.post("/1/matcher/faces", json={"references": refs, "candidates": {"list_id": list_id, **cand}})


@pytest.fixture(scope="module")
def data():
    return face_like(1000, faces_per_identity=4, n_probes=50, seed=11)


def test_match_own_descriptor_then_detach(client: httpx.Client, data) -> None:
    list_id = client.post("/1/lists", json={"user_data": "people"}).json()["list_id"]
    ids = add_faces(client, list_id, data.gallery)
    assert client.get(f"/1/lists/{list_id}").json()["face_count"] == 1000

    target = 123
    resp = match(client, list_id, [{"descriptor": {"data": b64(data.gallery[target])}}], limit=5)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["route"] == "bruteforce" and body["list_size"] == 1000
    results = body["matches"][0]["results"]
    assert results[0]["face_id"] == ids[target]
    assert results[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    sims = [r["similarity"] for r in results]
    assert sims == sorted(sims, reverse=True) and len(results) == 5

    # the same by face-id reference
    by_face = match(client, list_id, [{"face_id": ids[target]}], limit=1).json()
    assert by_face["matches"][0]["results"][0]["face_id"] == ids[target]

    resp = client.patch(f"/1/lists/{list_id}/faces", json={"action": "detach", "face_ids": [ids[target]]})
    assert resp.json() == {"action": "detach", "changed": 1}
    after = match(client, list_id, [{"descriptor": {"data": b64(data.gallery[target])}}], limit=1000).json()
    assert ids[target] not in {r["face_id"] for r in after["matches"][0]["results"]}
    assert after["list_size"] == 999

    # attach it back: matchable again, immediately
    client.patch(f"/1/lists/{list_id}/faces", json={"action": "attach", "face_ids": [ids[target]]})
    again = match(client, list_id, [{"descriptor": {"data": b64(data.gallery[target])}}], limit=1).json()
    assert again["matches"][0]["results"][0]["face_id"] == ids[target]


def test_results_equal_exact_search(client: httpx.Client, data) -> None:
    """Batched references, threshold and the face-id filter give exactly what numpy computes."""
    list_id = client.post("/1/lists", json={}).json()["list_id"]
    ids = np.array(add_faces(client, list_id, data.gallery))
    probes = data.probes[:8]
    resp = match(client, list_id, [{"descriptor": {"data": b64(p)}} for p in probes], limit=10, threshold=0.3)
    assert resp.status_code == 200, resp.text
    scores = probes @ data.gallery.T
    for q, m in enumerate(resp.json()["matches"]):
        order = np.argsort(-scores[q])[:10]
        want = [(ids[i], float(scores[q, i])) for i in order if scores[q, i] >= 0.3]
        got = [(r["face_id"], r["similarity"]) for r in m["results"]]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert np.allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)
        # planted mates come first: the best result is the probe's identity
        assert data.labels[order[0]] == data.probe_labels[q]

    subset = list(ids[::7])
    filtered = match(client, list_id, [{"descriptor": {"data": b64(probes[0])}}], limit=3, face_ids=subset).json()
    allowed = np.arange(0, 1000, 7)
    best = allowed[np.argsort(-scores[0, allowed])[:3]]
    assert [r["face_id"] for r in filtered["matches"][0]["results"]] == list(ids[best])
    assert filtered["list_size"] == len(subset)


def test_delete_face_removes_it_from_matching(client: httpx.Client, data) -> None:
    list_id = client.post("/1/lists", json={}).json()["list_id"]
    ids = add_faces(client, list_id, data.gallery[:50])
    assert match(client, list_id, [{"face_id": ids[3]}], limit=1).json()["matches"][0]["results"][0]["face_id"] == ids[3]
    assert client.delete(f"/1/faces/{ids[3]}").status_code == 204
    assert client.get(f"/1/faces/{ids[3]}").status_code == 404
    res = match(client, list_id, [{"descriptor": {"data": b64(data.gallery[3])}}], limit=50).json()
    assert ids[3] not in {r["face_id"] for r in res["matches"][0]["results"]}
    assert client.get(f"/1/lists/{list_id}").json()["face_count"] == 49


def test_descriptor_replacement_is_seen_by_matching(client: httpx.Client, data) -> None:
    list_id = client.post("/1/lists", json={}).json()["list_id"]
    ids = add_faces(client, list_id, data.gallery[:20])
    match(client, list_id, [{"face_id": ids[0]}], limit=1)  # cache the list
    resp = client.put(f"/1/faces/{ids[0]}/descriptor", json={"version": 1, "data": b64(data.probes[0])})
    assert resp.status_code == 204
    res = match(client, list_id, [{"descriptor": {"data": b64(data.probes[0])}}], limit=1).json()
    assert res["matches"][0]["results"][0]["face_id"] == ids[0]
    assert res["matches"][0]["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_other_account_sees_nothing(client: httpx.Client, other_client: httpx.Client, data) -> None:
    list_id = client.post("/1/lists", json={}).json()["list_id"]
    ids = add_faces(client, list_id, data.gallery[:10])
    mine = other_client.post("/1/lists", json={}).json()["list_id"]
    my_face = other_client.post("/1/faces", json={"descriptor": {"data": b64(data.gallery[0])}}).json()["face_id"]

    # reading or changing the first account's list and faces: 404, as if they did not exist
    for resp in (
        other_client.get(f"/1/lists/{list_id}"),
        other_client.get(f"/1/faces/{ids[0]}"),
        other_client.patch(f"/1/lists/{list_id}", json={"user_data": "x"}),
        other_client.delete(f"/1/lists/{list_id}"),
        other_client.delete(f"/1/faces/{ids[0]}"),
        other_client.patch(f"/1/lists/{list_id}/faces", json={"action": "attach", "face_ids": [my_face]}),
        match(other_client, list_id, [{"descriptor": {"data": b64(data.gallery[0])}}]),
        match(other_client, mine, [{"face_id": ids[0]}]),
    ):
        assert resp.status_code == 404, resp.text
        assert resp.json()["error_code"] in (12001, 13001)
    # stealing a face into one's own list
    resp = other_client.patch(f"/1/lists/{mine}/faces", json={"action": "attach", "face_ids": [ids[0], my_face]})
    assert resp.status_code == 404 and resp.json()["error_code"] == 13003
    assert other_client.get(f"/1/lists/{mine}").json()["face_count"] == 0
    # listings are scoped
    assert list_id not in {x["list_id"] for x in other_client.get("/1/lists").json()}
    assert other_client.get("/1/faces", params={"list_id": list_id}).status_code == 404
    assert {f["face_id"] for f in other_client.get("/1/faces").json()} == {my_face}
    # nothing of the first account changed
    assert client.get(f"/1/lists/{list_id}").json()["face_count"] == 10
    assert match(client, list_id, [{"face_id": ids[0]}], limit=1).json()["matches"][0]["results"][0]["face_id"] == ids[0]


def test_no_or_bad_token(services) -> None:
    url = services.url("api")
    assert httpx.get(url + "/1/lists").json()["error_code"] == 10004
    resp = httpx.get(url + "/1/lists", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401 and resp.json()["error_code"] == 10004
    resp = httpx.post(url + "/1/accounts", json={"name": "x"}, headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 403


def test_lists_crud_and_paging(client: httpx.Client) -> None:
    created = [client.post("/1/lists", json={"user_data": f"l{i}"}).json()["list_id"] for i in range(5)]
    page1 = client.get("/1/lists", params={"page": 1, "page_size": 3}).json()
    page2 = client.get("/1/lists", params={"page": 2, "page_size": 3}).json()
    assert [x["list_id"] for x in page1 + page2] == created
    assert client.patch(f"/1/lists/{created[0]}", json={"user_data": "renamed"}).json()["user_data"] == "renamed"
    assert client.delete(f"/1/lists/{created[1]}").status_code == 204
    assert client.get(f"/1/lists/{created[1]}").status_code == 404
    face = client.post("/1/faces", json={"external_id": "e1", "list_ids": [created[0]]}).json()["face_id"]
    got = client.get(f"/1/faces/{face}").json()
    assert got["list_ids"] == [created[0]] and got["descriptor_versions"] == []
    assert [f["face_id"] for f in client.get("/1/faces", params={"external_id": "e1"}).json()] == [face]
    assert client.patch(f"/1/faces/{face}", json={"user_data": "u"}).json()["user_data"] == "u"


def test_service_endpoints(services) -> None:
    for name in ("api", "proxy", "bruteforce", "manager", "indexer", "licenses", "matcher"):
        assert httpx.get(services.url(name) + "/healthcheck").json()["status"] == "ok"
        assert httpx.get(services.url(name) + "/version").json()["service"] == name
    spec = httpx.get(services.url("api") + "/openapi.json").json()
    assert "/1/matcher/faces" in spec["paths"]
    assert httpx.get(services.url("proxy") + "/1/plugins", headers=services.internal).json() == {"plugins": ["indexed", "bruteforce"]}


async def test_concurrent_requests_are_batched_and_each_answer_is_exact(services, client: httpx.Client) -> None:
    """Concurrent requests on one list share exact searches; every request still gets its own exact answer."""
    import asyncio
    import re

    data = face_like(30_000, n_probes=48, seed=21)
    list_id = client.post("/1/lists", json={}).json()["list_id"]
    ids = np.array(add_faces(client, list_id, data.gallery))
    scores = data.probes @ data.gallery.T

    def batches() -> tuple[float, float]:
        text = httpx.get(services.url("bruteforce") + "/metrics", headers=services.internal).text
        single = re.search(r'facedex_bruteforce_batch_requests_bucket\{le="1.0"\} (\S+)', text)
        total = re.search(r"facedex_bruteforce_batch_requests_count (\S+)", text)
        return float(single.group(1)) if single else 0.0, float(total.group(1)) if total else 0.0

    match(client, list_id, [{"face_id": ids[0]}], limit=1)  # load the list
    single_before, total_before = batches()
    # limits and thresholds differ per request: each answer is trimmed to its own
    asks = [(q, 1 + q % 12, 0.2 if q % 3 == 0 else None) for q in range(len(data.probes))]
    async with httpx.AsyncClient(base_url=client.base_url, headers=client.headers, timeout=60) as http:
        async def one(q: int, limit: int, threshold: float | None) -> dict:
            cand = {"list_id": list_id, "limit": limit, **({"threshold": threshold} if threshold is not None else {})}
            resp = await http.post("/1/matcher/faces", json={"references": [{"descriptor": {"data": b64(data.probes[q])}}],
                                                           "candidates": cand})
            assert resp.status_code == 200, resp.text
            return resp.json()

        answers = await asyncio.gather(*(one(*a) for a in asks))
    for (q, limit, threshold), body in zip(asks, answers):
        order = np.argsort(-scores[q], kind="stable")[:limit]
        want = [ids[i] for i in order if threshold is None or scores[q, i] >= threshold]
        assert [r["face_id"] for r in body["matches"][0]["results"]] == want
        assert body["list_size"] == 30_000
    single_after, total_after = batches()
    searches = total_after - total_before
    assert 0 < searches < len(asks), "every request ran a search of its own: no batching"
    assert single_after - single_before < searches, "no search answered more than one request"
