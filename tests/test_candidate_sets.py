"""Candidate sets (issue 16): several lists, filters and targets in one matching request, against exact numpy truth.

Real services throughout (API -> proxy -> brute-force Matcher / Indexed Matcher), real PostgreSQL and Redis.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
import redis

from facedex.bench.datasets import face_like
from facedex.redis.keys import Keys
from tests.conftest import Services, new_client
from tests.test_indexing import wait_task

ALL_TARGETS = ["face_id", "similarity", "external_id", "user_data", "create_time", "list_ids"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def b64(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode()


def unix_us(text: str) -> int:
    t = datetime.fromisoformat(text)
    return ((t if t.tzinfo else t.replace(tzinfo=UTC)) - EPOCH) // timedelta(microseconds=1)


@dataclass
class Gallery:
    """Every face the tests made, as numpy truth: vectors, metadata, memberships."""

    client: httpx.Client
    vectors: np.ndarray
    probes: np.ndarray
    ids: list[str] = field(default_factory=list)
    external: list[str | None] = field(default_factory=list)
    user_data: list[str] = field(default_factory=list)
    create_us: list[int] = field(default_factory=list)
    batch_times: list[str] = field(default_factory=list)  # each batch's create_time, as the API shows it
    members: dict[str, set[int]] = field(default_factory=dict)
    lists: list[str] = field(default_factory=list)

    def add(self, list_id: str, rows: range) -> None:
        ext = [f"x{i}" if i % 5 else None for i in rows]
        ud = [f"site{i % 4}/team{i % 3}" for i in rows]
        faces = [{"descriptor": {"version": 1, "data": b64(self.vectors[i])}, "user_data": u, **({"external_id": e} if e else {})}
                 for i, e, u in zip(rows, ext, ud)]
        resp = self.client.post("/1/faces/batch", json={"faces": faces, "list_ids": [list_id]})
        assert resp.status_code == 201, resp.text
        self.ids += resp.json()["face_ids"]
        created = self.client.get(f"/1/faces/{self.ids[rows[0]]}").json()["create_time"]  # one transaction: one time
        self.batch_times.append(created)
        self.external += ext
        self.user_data += ud
        self.create_us += [unix_us(created)] * len(rows)
        self.members.setdefault(list_id, set()).update(rows)

    def index_of(self, face_id: str) -> int:
        return self.ids.index(face_id)


@pytest.fixture(scope="module")
def gallery(services: Services) -> Gallery:
    data = face_like(1500, n_probes=20, seed=16)
    client = new_client(services)
    g = Gallery(client, data.gallery, data.probes)
    lists = [client.post("/1/lists", json={"user_data": name}).json()["list_id"] for name in ("l1", "l2", "l3")]
    g.add(lists[0], range(300))
    g.add(lists[0], range(300, 600))
    g.add(lists[1], range(600, 900))
    g.add(lists[1], range(900, 1200))
    g.add(lists[2], range(1200, 1500))
    shared = g.ids[:50]  # faces 0..49 are in l1 and l2: they count once in a set over both
    assert client.patch(f"/1/lists/{lists[1]}/faces", json={"action": "attach", "face_ids": shared}).status_code == 200
    g.members[lists[1]].update(range(50))
    g.lists = lists
    return g


def candidates(g: Gallery, filters: dict) -> tuple[np.ndarray, dict[str, int]]:
    """Truth: a mask over every face for the set's filters, and how many of each list's faces pass them."""
    lists = [filters["list_id"]] if "list_id" in filters else filters["list_ids"]
    n = len(g.ids)
    passes = np.ones(n, bool)
    if "face_ids" in filters:
        passes &= np.isin(np.arange(n), [g.index_of(f) for f in filters["face_ids"]])
    if "external_ids" in filters:
        passes &= np.array([e in set(filters["external_ids"]) for e in g.external])
    if "user_data" in filters:
        passes &= np.array([u == filters["user_data"] for u in g.user_data])
    if "user_data__prefix" in filters:
        passes &= np.array([u.startswith(filters["user_data__prefix"]) for u in g.user_data])
    if "create_time__gte" in filters:
        passes &= np.array(g.create_us) >= unix_us(filters["create_time__gte"])
    if "create_time__lt" in filters:
        passes &= np.array(g.create_us) < unix_us(filters["create_time__lt"])
    in_lists = np.zeros(n, bool)
    sizes = {}
    for lst in lists:
        member = np.isin(np.arange(n), sorted(g.members[lst]))
        in_lists |= member
        sizes[lst] = int((member & passes).sum())
    return in_lists & passes, sizes


def check_results(g: Gallery, probe: np.ndarray, mask: np.ndarray, results: list[dict], limit: int,
                  threshold: float | None) -> None:
    """``results`` is the exact top-``limit`` of the masked faces: the same similarities as numpy, every face a
    candidate with its own similarity, none twice."""
    raw = g.vectors @ probe
    sims = np.clip(raw, 0.0, 1.0)
    order = [i for i in np.argsort(-raw, kind="stable") if mask[i]]
    want = [float(sims[i]) for i in order if threshold is None or sims[i] >= threshold][:limit]
    got = [r["similarity"] for r in results]
    assert np.allclose(got, want, atol=1e-5), (got, want)
    seen = [g.index_of(r["face_id"]) for r in results]
    assert len(set(seen)) == len(seen)
    for i, r in zip(seen, results):
        assert mask[i] and r["similarity"] == pytest.approx(float(sims[i]), abs=1e-5)


def match_sets(client: httpx.Client, refs: np.ndarray, sets: list[dict]) -> httpx.Response:
    return client.post("/1/matcher/faces", json={
        "references": [{"descriptor": {"data": b64(r)}} for r in refs], "candidates": sets})


def test_sets_over_several_lists_with_each_filter_and_targets(gallery: Gallery) -> None:
    g = gallery
    l1, l2, l3 = g.lists
    t = g.batch_times
    sets = [
        {"filters": {"list_ids": [l1, l2]}, "limit": 10, "targets": ALL_TARGETS},
        {"filters": {"list_id": l1, "external_ids": [f"x{i}" for i in range(0, 600, 7)] + ["nobody"]}, "limit": 5},
        {"filters": {"list_id": l2, "user_data": "site1/team2"}, "limit": 5, "targets": ["face_id", "similarity", "user_data"]},
        {"filters": {"list_id": l1, "user_data__prefix": "site2/"}, "limit": 5},
        {"filters": {"list_ids": [l1, l3], "create_time__gte": t[1], "create_time__lt": t[4]}, "limit": 8,
         "targets": ["create_time", "face_id", "similarity"]},
        {"filters": {"list_id": l2, "face_ids": g.ids[0:50] + g.ids[600:900:2], "user_data__prefix": "site0",
                     "create_time__gte": t[0]}, "limit": 5},
        {"filters": {"list_ids": [l1, l2, l3, l1]}, "limit": 5, "threshold": 0.3, "targets": ["face_id", "list_ids", "similarity"]},
        {"filters": {"list_id": l3, "external_ids": ["x1201", "x1202"], "user_data": "site1/team1"}, "limit": 10},
    ]
    refs = np.vstack([g.probes[:3], g.vectors[[10]]])  # three new photos and one enrolled face (in l1 and l2)
    resp = match_sets(g.client, refs, sets)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert len(body["matches"]) == len(refs) and len(body["candidate_sets"]) == len(sets)
    for j, s in enumerate(sets):
        mask, sizes = candidates(g, s["filters"])
        info = body["candidate_sets"][j]
        assert info["route"] == "bruteforce" and info["fallback_reason"] is None, info
        assert [p["list_id"] for p in info["lists"]] == list(sizes)  # each list once, in the request's order
        assert {p["list_id"]: p["list_size"] for p in info["lists"]} == sizes, (j, info)
        assert info["list_size"] == sum(sizes.values())
        targets = s.get("targets", ["face_id", "similarity"])
        for q, ref_matches in enumerate(body["matches"]):
            results = ref_matches["sets"][j]["results"]
            check_results(g, refs[q], mask, results, s["limit"], s.get("threshold"))
            for r in results:
                assert set(r) == set(targets), r  # exactly the fields asked for
    # filters that keep few faces: the single match of set 7 is face 1201; the enrolled face finds itself in set 0
    assert [r["face_id"] for r in body["matches"][0]["sets"][7]["results"]] == [g.ids[1201]]
    assert body["matches"][3]["sets"][0]["results"][0]["face_id"] == g.ids[10]
    # targets: the stored fields of each hit
    for q in range(len(refs)):
        for r in body["matches"][q]["sets"][0]["results"]:
            i = g.index_of(r["face_id"])
            assert r["external_id"] == g.external[i] and r["user_data"] == g.user_data[i]
            assert unix_us(r["create_time"]) == g.create_us[i]
            assert sorted(r["list_ids"]) == sorted(lst for lst, m in g.members.items() if i in m)
        for r in body["matches"][q]["sets"][4]["results"]:
            assert unix_us(r["create_time"]) == g.create_us[g.index_of(r["face_id"])]
    # the object form still answers as before
    one = g.client.post("/1/matcher/faces", json={"references": [{"descriptor": {"data": b64(refs[0])}}],
                                                  "candidates": {"list_id": l1, "limit": 3}}).json()
    assert one["route"] == "bruteforce" and one["list_size"] == 600 and set(one["matches"][0]["results"][0]) == {"face_id", "similarity"}


def test_metadata_changes_reach_the_cached_filters(gallery: Gallery) -> None:
    g = gallery
    l3 = g.lists[2]
    face = g.ids[1203]
    probe = g.vectors[1203]

    def hits(filters: dict) -> list[dict]:
        resp = match_sets(g.client, probe[None], [{"filters": {"list_id": l3, **filters}, "limit": 3, "targets": ALL_TARGETS}])
        assert resp.status_code == 200, resp.text
        return resp.json()["matches"][0]["sets"][0]["results"]

    assert hits({"external_ids": ["x1203"]})[0]["face_id"] == face  # the list is cached in the matcher now
    resp = g.client.patch(f"/1/faces/{face}", json={"user_data": "moved/here", "external_id": "renamed"})
    assert resp.status_code == 200, resp.text
    assert hits({"external_ids": ["x1203"]}) == []
    assert [r["face_id"] for r in hits({"external_ids": ["renamed"]})] == [face]
    got = hits({"user_data__prefix": "moved/"})
    assert [r["face_id"] for r in got] == [face] and got[0]["user_data"] == "moved/here" and got[0]["external_id"] == "renamed"
    assert [r["face_id"] for r in hits({"user_data": "moved/here"})] == [face]
    g.client.patch(f"/1/faces/{face}", json={"user_data": g.user_data[1203], "external_id": g.external[1203]})
    assert [r["face_id"] for r in hits({"external_ids": ["x1203"]})] == [face]


def test_bad_sets_are_refused_with_codes_and_change_nothing(gallery: Gallery, services: Services) -> None:
    g = gallery
    l1, l2, l3 = g.lists
    ok = {"filters": {"list_id": l1}}
    with new_client(services) as other:
        foreign = other.post("/1/lists", json={}).json()["list_id"]
    cases = [
        ([{"filters": {"list_id": l1, "colour": "red"}}], 422, 10002),  # unknown filter field
        ([{"filters": {"list_id": l1}, "colour": "red"}], 422, 10002),  # unknown set field
        ([{"filters": {"list_id": l1, "external_ids": "x1"}}], 422, 10002),  # wrong type
        ([{"filters": {"list_id": l1, "create_time__gte": "yesterday"}}], 422, 10002),
        ([{"filters": {"list_id": l1}, "targets": ["face_id", "colour"]}], 422, 10002),  # unknown target
        ([{"filters": {"list_id": l1, "create_time__gte": "2025-02-01T00:00:00Z", "create_time__lt": "2025-01-01T00:00:00Z"}}],
         422, 14010),  # reversed time range
        ([{"filters": {"list_id": l1, "create_time__gte": "2025-01-01T00:00:00Z", "create_time__lt": "2025-01-01T00:00:00Z"}}],
         422, 14010),
        ([ok] * 9, 422, 14008),  # too many sets
        ([{"filters": {"list_ids": [str(uuid.uuid4()) for _ in range(9)]}}], 422, 14009),  # too many lists in a set
        ([{"filters": {"list_id": l1, "external_ids": [f"x{i}" for i in range(10_001)]}}], 422, 14009),
        ([{"filters": {"list_id": l1, "external_ids": [f"x{i}" for i in range(6_000)]}},
          {"filters": {"list_id": l2, "external_ids": [f"x{i}" for i in range(6_000)]}}], 422, 14009),  # over the request
        ([{"filters": {"list_id": l1, "list_ids": [l2]}}], 422, 14011),  # both
        ([{"filters": {"user_data": "site0/team0"}}], 422, 14011),  # no list
        ([{"filters": {"list_ids": []}}], 422, 14011),
        ([], 422, 14011),
        ([{"filters": {"list_id": l1}, "limit": 0}], 422, 14001),
        ([{"filters": {"list_id": l1}, "limit": 600}, {"filters": {"list_id": l2}, "limit": 401}], 422, 14001),  # > 1000 in all
        ([ok, {"filters": {"list_id": l1}, "threshold": 1.5}], 422, 14002),
        ([{**ok, "descriptor_version": 1}, {**ok, "descriptor_version": 2}], 400, 14005),
        ([ok, {"filters": {"list_id": str(uuid.uuid4())}}], 404, 12001),  # one missing list fails the request
        ([{"filters": {"list_ids": [l3, foreign]}}], 404, 12001),  # another account's list is as missing
    ]
    before = [g.client.get(f"/1/lists/{lst}").json() for lst in (l1, l2, l3)]
    for sets, status, code in cases:
        resp = match_sets(g.client, g.probes[:1], sets)
        assert (resp.status_code, resp.json().get("error_code")) == (status, code), (sets if len(str(sets)) < 300 else code, resp.text[:300])
    assert [g.client.get(f"/1/lists/{lst}").json() for lst in (l1, l2, l3)] == before
    # text in filters may hold quotes and braces: counted as text, not as JSON structure
    odd = '{"a": "b"} ' * 80
    resp = match_sets(g.client, g.probes[:1], [{"filters": {"list_id": l1, "user_data__prefix": odd[:1000],
                                                            "external_ids": ['"{' * 100] * 100}}])
    assert resp.status_code == 200 and resp.json()["matches"][0]["sets"][0]["results"] == [], resp.text


@pytest.fixture(scope="module")
def indexed(services: Services, gallery: Gallery):
    """A 5,000-face list of the gallery's account, indexed and loaded by the matcher; and a plain list whose
    (fake) label is advertised by no matcher that answers: the indexed route fails for it."""
    client = gallery.client
    data = face_like(5000, n_probes=20, seed=17)
    list_id = client.post("/1/lists", json={"user_data": "indexed"}).json()["list_id"]
    ids: list[str] = []
    for start in range(0, 5000, 1000):
        faces = [{"descriptor": {"version": 1, "data": b64(v)}} for v in data.gallery[start : start + 1000]]
        resp = client.post("/1/faces/batch", json={"faces": faces, "list_ids": [list_id]})
        assert resp.status_code == 201, resp.text
        ids += resp.json()["face_ids"]
    manager = services.url("manager")
    task = httpx.post(f"{manager}/1/tasks", json={"list_id": list_id}, headers=services.internal).json()
    assert wait_task(manager, task["task_id"], timeout=300)["status"] == "success"
    deadline = time.monotonic() + 30
    while not any(i["list_id"] == list_id for i in
                  httpx.get(services.url("matcher") + "/1/indexes", headers=services.internal).json()["indexes"]):
        assert time.monotonic() < deadline, "the matcher did not load the index"
        time.sleep(0.2)
    dead = gallery.lists[1]
    keys = Keys(services.env["FACEDEX_REDIS_PREFIX"])
    r = redis.Redis.from_url(services.env["FACEDEX_REDIS_URL"])
    seconds, micros = r.time()
    member = keys.labels_member(keys.matching_label(dead, 1), "nobody-answers")
    r.zadd(keys.labels, {member: seconds * 1000 + micros // 1000 + 600_000})
    time.sleep(1.5)  # the proxy's label sync
    yield data, list_id, ids, dead
    r.zrem(keys.labels, member)
    r.delete(keys.stream(keys.matching_label(dead, 1)))


def test_each_set_is_routed_on_its_own_and_falls_back_alone(gallery: Gallery, indexed) -> None:
    data, list_id, ids, dead = indexed
    g = gallery
    sets = [
        {"filters": {"list_id": list_id}, "limit": 5},  # plain list with a live label: indexed
        {"filters": {"list_id": list_id, "create_time__gte": "2000-01-01T00:00:00Z"}, "limit": 5},  # filtered: brute force
        {"filters": {"list_id": dead}, "limit": 5},  # its index does not answer: brute force, with the reason
        {"filters": {"list_ids": [list_id, dead]}, "limit": 5},  # one part indexed, one fallen back
        {"filters": {"list_id": list_id}, "limit": 5, "exact": True},
    ]
    probes = data.probes[:4]
    resp = match_sets(g.client, probes, sets)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    info = body["candidate_sets"]
    assert info[0]["route"] == "indexed" and info[0]["fallback_reason"] is None, info[0]
    assert info[1]["route"] == "bruteforce" and info[1]["fallback_reason"] is None, info[1]
    assert info[2]["route"] == "bruteforce" and info[2]["fallback_reason"].startswith("indexed"), info[2]
    assert info[3]["route"] == "mixed" and [p["route"] for p in info[3]["lists"]] == ["indexed", "bruteforce"], info[3]
    assert info[3]["lists"][0]["fallback_reason"] is None and info[3]["lists"][1]["fallback_reason"].startswith("indexed")
    assert info[4]["route"] == "bruteforce" and info[4]["fallback_reason"] is None
    assert info[0]["list_size"] == info[1]["list_size"] == 5000
    dead_mask, _ = candidates(g, {"list_id": dead})
    agree = 0
    for q, probe in enumerate(probes):
        sets_out = body["matches"][q]["sets"]
        exact_scores = data.gallery @ probe
        agree += sets_out[0]["results"][0]["face_id"] == ids[int(np.argmax(exact_scores))]  # the index finds the mate
        for j in (1, 4):  # brute force: the exact top 5, as numpy
            got = [(r["face_id"], r["similarity"]) for r in sets_out[j]["results"]]
            order = np.argsort(-exact_scores, kind="stable")[:5]
            assert [f for f, _ in got] == [ids[i] for i in order]
            assert np.allclose([s for _, s in got], np.clip(exact_scores[order], 0, 1), atol=1e-5)
        check_results(g, probe, dead_mask, sets_out[2]["results"], 5, None)
        # the merged set: the best of the two lists' answers, each face's similarity exact
        merged = sets_out[3]["results"]
        dead_best = float(np.clip(g.vectors[dead_mask] @ probe, 0, 1).max())
        assert merged[0]["similarity"] == pytest.approx(max(float(np.clip(exact_scores.max(), 0, 1)), dead_best), abs=1e-5)
        sims = [r["similarity"] for r in merged]
        assert sims == sorted(sims, reverse=True) and len(merged) == 5
    assert agree >= 3


async def test_cached_filter_columns_stay_exact_under_churn(store, account: uuid.UUID, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Attach, detach, descriptor and metadata changes in random order: after every step the brute-force cache's
    filter masks select exactly the faces PostgreSQL says pass (dictionaries compacted on the way)."""
    import random

    from facedex import wire
    from facedex.bruteforce.cache import ListCache
    from facedex.bruteforce.columns import MetaColumns
    from facedex.faces.store import NewFace

    monkeypatch.setattr(MetaColumns, "compact_slack", 0)  # compact as soon as dead values outnumber live rows
    rng = np.random.default_rng(7)
    prng = random.Random(7)
    vecs = rng.standard_normal((200, 512)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = await store.create_faces(account, [NewFace(external_id=f"e{i}" if i % 3 else None, user_data=f"u/{i % 7}",
                                                     descriptors={1: v}) for i, v in enumerate(vecs)])
    lst = await store.create_list(account)
    await store.attach(account, lst.list_id, ids[:100])
    cache = ListCache(store, max_bytes=1 << 30)
    matrix = await cache.fresh(lst.list_id, 1)
    assert matrix is not None
    compacted = 0
    for step in range(45):
        action = prng.choice(["attach", "detach", "descriptor", "none"])
        sample = prng.sample(ids, 15)
        if action == "attach":
            await store.attach(account, lst.list_id, sample)
        elif action == "detach":
            await store.detach(account, lst.list_id, sample)
        elif action == "descriptor":
            await store.put_descriptor(account, sample[0], 1, vecs[prng.randrange(200)])
        for j, fid in enumerate(prng.sample(ids, 30)):  # new values every step: the dictionaries grow, then compact
            await store.update_face(account, fid, external_id=f"s{step}-{j}" if j % 2 else None, user_data=f"s{step}/{j}")
        before = len(matrix.meta.user_vocab)
        matrix = await cache.fresh(lst.list_id, 1)
        assert matrix is not None
        compacted += len(matrix.meta.user_vocab) < before
        rows = await store.pool.fetch(
            "SELECT f.face_id, f.external_id, f.user_data FROM list_faces l JOIN faces f USING (face_id) WHERE l.list_id=$1",
            lst.list_id)
        assert matrix.n == len(rows), step
        members = list(rows)
        some = prng.sample(members, min(5, len(members)))
        checks = [
            (wire.MatchFilters(user_data_prefix=f"s{step}/"), lambda r, p=f"s{step}/": r["user_data"].startswith(p)),
            (wire.MatchFilters(user_data_prefix="u/"), lambda r: r["user_data"].startswith("u/")),
            (wire.MatchFilters(user_data=some[0]["user_data"] if some else "x"),
             lambda r, v=some[0]["user_data"] if some else None: r["user_data"] == v),
            (wire.MatchFilters(external_ids=[s["external_id"] for s in some if s["external_id"]] + ["missing"]),
             lambda r, e=frozenset(s["external_id"] for s in some if s["external_id"]): r["external_id"] in e),
        ]
        for flt, passes in checks:
            picked = matrix.select(None, flt)
            assert picked is not None
            got = {matrix.ids[i].tobytes() for i in picked}
            assert got == {r["face_id"].bytes for r in members if passes(r)}, (step, flt)
    # 1,350 user-data values were written: the dictionary was compacted on the way and holds about what the list uses
    assert compacted > 0 and len(matrix.meta.user_vocab) <= 2 * matrix.n + 30 + 1


def test_proxy_sets_route_verifies_every_sub_request(gallery: Gallery, services: Services) -> None:
    """One sub-request whose signature is for another request (another list) fails the whole call (10011); signed ones
    are answered."""
    import msgspec

    from facedex import internal_auth, wire

    g = gallery
    account = uuid.UUID(g.client.get("/1/account").json()["account_id"]).bytes
    l1, l2 = (uuid.UUID(x).bytes for x in g.lists[:2])
    good = internal_auth.sign_request(
        services.internal_token, wire.MatchRequest(account, l1, 1, g.vectors[[5]].astype("<f4").tobytes(), limit=3), 60)
    forged = msgspec.structs.replace(good, list_id=l2)  # l1's signature on l2
    headers = {**services.internal, "Content-Type": wire.CONTENT_TYPE}
    url = services.url("proxy") + "/1/match_sets"
    resp = httpx.post(url, content=wire.encode(wire.MatchSetsRequest(sets=[[good], [forged]])), headers=headers, timeout=30)
    assert resp.status_code == 403 and resp.json()["error_code"] == 10011, resp.text
    resp = httpx.post(url, content=wire.encode(wire.MatchSetsRequest(sets=[[good]])), headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    answer = wire.decode(resp.content, wire.MatchSetsResponse)
    assert answer.sets[0].results[0].face_ids[:16] == uuid.UUID(g.ids[5]).bytes
    assert answer.sets[0].parts[0].route == "bruteforce" and answer.sets[0].parts[0].list_id == l1
