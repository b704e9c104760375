"""Candidate sets (issue 16): several lists, filters and targets in one matching request, against exact numpy truth.

Real services throughout (API -> proxy -> brute-force Matcher / Indexed Matcher), real PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
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


def lists_state(g: Gallery) -> list[dict]:
    return [g.client.get(f"/1/lists/{lst}").json() for lst in g.lists]


def test_each_filter_alone_selects_exactly_its_faces(gallery: Gallery) -> None:
    """face_ids alone, create_time__gte alone (inclusive) and create_time__lt alone (exclusive) each keep exactly
    the faces numpy says, and each set's top-k is numpy's over them."""
    g = gallery
    l1, l2, _ = g.lists
    t = g.batch_times
    picked = g.ids[0:600:7]  # 86 faces of l1
    sets = [
        # face ids of l1, of l3 (not in the list: ignored) and duplicates; the limit is above the filtered size
        {"filters": {"list_id": l1, "face_ids": picked + g.ids[1200:1210] + picked[:10]}, "limit": 200},
        {"filters": {"list_id": l1, "create_time__gte": t[1]}, "limit": 10},  # batch 1 on: drops batch 0 (0..299)
        {"filters": {"list_id": l2, "create_time__lt": t[3]}, "limit": 10},  # before batch 3: 0..49 and 600..899
    ]
    refs = np.vstack([g.probes[:3], g.vectors[[7, 3, 350, 650, 950]]])
    resp = match_sets(g.client, refs, sets)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    want_sizes = [{l1: 86}, {l1: 300}, {l2: 350}]
    for j, s in enumerate(sets):
        mask, sizes = candidates(g, s["filters"])
        assert sizes == want_sizes[j], (j, sizes)  # the truth itself is selective: some faces of the list are dropped
        info = body["candidate_sets"][j]
        assert info["route"] == "bruteforce" and info["list_size"] == sum(sizes.values()), (j, info)
        assert {p["list_id"]: p["list_size"] for p in info["lists"]} == sizes, (j, info)
        for q, ref_matches in enumerate(body["matches"]):
            check_results(g, refs[q], mask, ref_matches["sets"][j]["results"], s["limit"], None)
    # the face_ids set under its limit returns its whole filtered set: exactly the picked faces of l1
    for ref_matches in body["matches"]:
        assert {r["face_id"] for r in ref_matches["sets"][0]["results"]} == set(picked)
    best = [[m["sets"][j]["results"][0]["face_id"] for j in range(3)] for m in body["matches"][3:]]
    assert best[0][0] == g.ids[7] and best[1][0] != g.ids[3]  # face 7 was picked, face 3 was not
    assert best[1][1] != g.ids[3] and best[2][1] == g.ids[350]  # batch 0 is before t[1]; batch 1 is at it (inclusive)
    assert best[1][2] == g.ids[3] and best[3][2] == g.ids[650] and best[4][2] != g.ids[950]  # batch 3 is at t[3] (exclusive)


def test_array_form_bounds_on_face_ids_and_targets_are_refused_and_change_nothing(gallery: Gallery) -> None:
    """Over max_filter_face_ids (one set or summed over sets) is 13004; over 6 targets, none, or an unknown one is
    10002; at the face-id bound exactly the request is answered."""
    g = gallery
    l1, l2, _ = g.lists

    def fake(n: int) -> list[str]:
        return [str(uuid.uuid4()) for _ in range(n)]

    cases = [
        ([{"filters": {"list_id": l1, "face_ids": fake(100_001)}}], 400, 13004),  # one set over the bound
        ([{"filters": {"list_id": l1, "face_ids": fake(50_001)}}, {"filters": {"list_id": l2, "face_ids": fake(50_000)}}],
         400, 13004),  # each under it, their sum over it
        ([{"filters": {"list_id": l1}, "targets": ALL_TARGETS + ["face_id"]}], 422, 10002),  # 7 targets (6 distinct)
        ([{"filters": {"list_id": l1}, "targets": []}], 422, 10002),
        ([{"filters": {"list_id": l1}}, {"filters": {"list_id": l2}, "targets": ["face_id", "score"]}], 422, 10002),
    ]
    before = lists_state(g)
    for sets, status, code in cases:
        resp = match_sets(g.client, g.probes[:1], sets)
        assert (resp.status_code, resp.json().get("error_code")) == (status, code), (code, resp.text[:300])
    assert lists_state(g) == before
    # exactly at the bound: answered, and the real ids among the fakes still filter exactly
    real = g.ids[0:600:10]
    sets = [{"filters": {"list_id": l1, "face_ids": real + fake(50_000 - len(real))}, "limit": 5},
            {"filters": {"list_id": l2, "face_ids": fake(50_000)}, "limit": 5, "targets": ["face_id"] * 6}]
    resp = match_sets(g.client, g.probes[:2], sets)
    assert resp.status_code == 200, resp.text[:300]
    body = resp.json()
    mask = np.isin(np.arange(len(g.ids)), [g.index_of(f) for f in real])
    assert body["candidate_sets"][0]["list_size"] == len(real) and body["candidate_sets"][1]["list_size"] == 0
    for q, m in enumerate(body["matches"]):
        check_results(g, g.probes[q], mask, m["sets"][0]["results"], 5, None)
        assert m["sets"][1]["results"] == []
    assert lists_state(g) == before


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


def ranked(pairs: list[tuple[str, float]], k: int, threshold: float | None = None) -> list[tuple[str, float]]:
    """The best ``k`` (face id, similarity) at or above ``threshold``, in the proxy merge's order (ties by id bytes)."""
    best = dict(pairs)  # a face named twice counts once
    keep = [(f, s) for f, s in best.items() if threshold is None or s >= threshold]
    return sorted(keep, key=lambda p: (-p[1], uuid.UUID(p[0]).bytes))[:k]


def scored(ids: list[str], vectors: np.ndarray, probe: np.ndarray) -> list[tuple[str, float]]:
    """Numpy truth: every face of a list with its clipped cosine to ``probe``."""
    return [(f, float(s)) for f, s in zip(ids, np.clip(vectors @ probe, 0.0, 1.0))]


def list_truth(g: Gallery, list_id: str) -> tuple[list[str], np.ndarray]:
    rows = sorted(g.members[list_id])
    return [g.ids[i] for i in rows], g.vectors[rows]


def pairs_of(results: list[dict]) -> list[tuple[str, float]]:
    return [(r["face_id"], r["similarity"]) for r in results]


def assert_same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [f for f, _ in got] == [f for f, _ in want], (got, want)
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5), (got, want)


def check_mixed(got: list[tuple[str, float]], part: list[tuple[str, float]], own: list[tuple[str, float]],
                other: list[tuple[str, float]], k: int, threshold: float | None) -> bool:
    """``got``, a set over an indexed list (``part`` its index's answer, ``own`` its numpy truth) and a brute-force
    list (``other`` its numpy truth): the exact merge of the two answers, no face twice, every similarity exact;
    numpy's top-k over the union where the index found its own list's exact top-k (returned: whether it did)."""
    sim_of = dict(own + other)
    assert all(s == pytest.approx(sim_of[f], abs=1e-5) for f, s in part + got)  # faces of the union, exact similarities
    assert len({f for f, _ in got}) == len(got)
    assert_same(got, ranked(part + ranked(other, k, threshold), k, threshold))
    union = ranked(own + other, k, threshold)
    assert len(got) <= len(union) and all(s <= u + 1e-5 for (_, s), (_, u) in zip(got, union))  # may miss, never invent
    if [f for f, _ in part] != [f for f, _ in ranked(own, k, threshold)]:
        return False
    assert_same(got, union)
    return True


def test_mixed_set_merges_to_the_exact_top_k_of_its_lists(gallery: Gallery, indexed) -> None:
    """A set over an indexed list and a fallen-back list answers the exact top-k of the index's answer and the other
    list's numpy truth (no face twice, each similarity exact), which is numpy's top-k over the union of the lists."""
    data, list_id, ids, dead = indexed
    g = gallery
    dead_ids, dead_vecs = list_truth(g, dead)
    # each reference is near one face of each list (and, less, their identity mates): both lists place faces in its top-k
    pairs = [(11, 610), (222, 700), (3333, 1150), (4444, 20), (5, 901)]
    refs = np.vstack([0.6 * data.gallery[a] + 0.4 * g.vectors[b] for a, b in pairs] + [data.probes[:2]])
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    both = {"list_ids": [list_id, dead]}
    index_exact = {0.2: 0, None: 0}
    # one request per variant (the proxy's admission control keeps a cost estimate per list: a timed-out list
    # no longer sheds the indexed list's sub-requests, tests/test_proxy_admission.py)
    for threshold in (0.2, None):  # the indexed list alone, the mixed set, the same set by brute force
        extra = {"threshold": threshold} if threshold is not None else {}
        sets = [{"filters": {"list_id": list_id}, "limit": 10, **extra}, {"filters": both, "limit": 10, **extra},
                {"filters": both, "limit": 10, "exact": True, **extra}]
        resp = match_sets(g.client, refs, sets)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        info = body["candidate_sets"]
        assert [i["route"] for i in info] == ["indexed", "mixed", "bruteforce"], info
        assert [p["route"] for p in info[1]["lists"]] == ["indexed", "bruteforce"] and info[1]["list_size"] == 5000 + len(dead_ids)
        for q, probe in enumerate(refs):
            out = body["matches"][q]["sets"]
            own, other = scored(ids, data.gallery, probe), scored(dead_ids, dead_vecs, probe)
            part, got, brute = (pairs_of(out[i]["results"]) for i in range(3))
            assert_same(brute, ranked(own + other, 10, threshold))  # both lists by brute force, merged: numpy's union top-k
            index_exact[threshold] += check_mixed(got, part, own, other, 10, threshold)
            if threshold is not None and q < len(pairs):  # both lists place their planted face in it, the indexed one first
                a, b = pairs[q]
                assert got[0][0] == ids[a] and g.ids[b] in {f for f, _ in got}, q
    # above the noise the index finds its exact top-k (7 of 7 seen), so there the merge is checked against the union
    # itself; without a threshold the 10th face is noise it may miss (0 of 7 seen): the merge checks above still hold
    assert index_exact[0.2] >= len(refs) - 1, index_exact


def test_an_error_reply_of_the_index_falls_back_for_its_list_only(gallery: Gallery, indexed, services: Services) -> None:
    """An indexed matcher that answers with an error code (not a timeout): that list alone is matched by brute force,
    with the code in its fallback reason and numpy's exact results; the other sets and lists stay indexed."""
    import threading

    from facedex import wire

    data, list_id, ids, _ = indexed
    g = gallery
    failing = g.client.post("/1/lists", json={"user_data": "error-reply"}).json()["list_id"]
    rows = range(1000, 1300)  # faces of l2 and l3
    resp = g.client.patch(f"/1/lists/{failing}/faces", json={"action": "attach", "face_ids": [g.ids[i] for i in rows]})
    assert resp.status_code == 200, resp.text
    g.members[failing] = set(rows)
    keys = Keys(services.env["FACEDEX_REDIS_PREFIX"])
    r = redis.Redis.from_url(services.env["FACEDEX_REDIS_URL"])
    label = keys.matching_label(failing, 1)
    stream = keys.stream(label)
    member = keys.labels_member(label, "answers-with-errors")
    stop = threading.Event()
    answered: list[bytes] = []

    def fake_matcher() -> None:
        """Reads the label's stream as an Indexed Matcher would and answers every entry with 26304."""
        last = "0-0"
        while not stop.is_set():
            for _, entries in r.xread({stream: last}, count=64, block=100) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    entry = wire.decode(fields[b"m"], wire.IndexedRequest)
                    answered.append(entry.request.list_id)
                    r.publish(entry.reply_to, wire.encode(wire.IndexedReply(entry.rid, None, 26304, "fake: index gone")))

    thread = threading.Thread(target=fake_matcher, daemon=True)
    thread.start()
    seconds, micros = r.time()
    r.zadd(keys.labels, {member: seconds * 1000 + micros // 1000 + 600_000})
    try:
        time.sleep(1.5)  # the proxy's label sync
        sets = [{"filters": {"list_id": failing}, "limit": 5},
                {"filters": {"list_id": list_id}, "limit": 5},
                {"filters": {"list_ids": [list_id, failing]}, "limit": 5}]
        refs = np.vstack([g.probes[:3], g.vectors[[1100]], data.probes[:2]])
        resp = match_sets(g.client, refs, sets)
    finally:
        stop.set()
        thread.join(5)
        r.zrem(keys.labels, member)
        r.delete(stream)
    assert resp.status_code == 200, resp.text
    assert len(answered) == 2  # the index was asked for both sub-requests of the failing list, and answered errors
    body = resp.json()
    info = body["candidate_sets"]
    assert info[0]["route"] == "bruteforce" and info[0]["fallback_reason"].startswith("indexed: 26304"), info[0]
    assert info[0]["list_size"] == len(rows)
    assert info[1]["route"] == "indexed" and info[1]["fallback_reason"] is None, info[1]
    assert info[2]["route"] == "mixed" and [(p["route"], (p["fallback_reason"] or "")[:14]) for p in info[2]["lists"]] \
        == [("indexed", ""), ("bruteforce", "indexed: 26304")], info[2]
    mask = np.isin(np.arange(len(g.ids)), list(rows))
    own_ids, own_vecs = ids, data.gallery
    fail_ids, fail_vecs = list_truth(g, failing)
    for q, probe in enumerate(refs):
        out = body["matches"][q]["sets"]
        check_results(g, probe, mask, out[0]["results"], 5, None)
        check_mixed(pairs_of(out[2]["results"]), pairs_of(out[1]["results"]), scored(own_ids, own_vecs, probe),
                    scored(fail_ids, fail_vecs, probe), 5, None)
    assert body["matches"][3]["sets"][0]["results"][0]["face_id"] == g.ids[1100]


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


def _counted(name: str):  # type: ignore[no-untyped-def]
    async def call(self, sql: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.statements.append(sql)
        return await getattr(self._pool, name)(sql, *args, **kwargs)
    return call


class CountingPool:
    """An asyncpg pool that records every statement run through it (and every connection taken from it)."""

    def __init__(self, pool) -> None:  # type: ignore[no-untyped-def]
        self._pool = pool
        self.statements: list[str] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._pool, name)

    fetch, fetchrow, fetchval = _counted("fetch"), _counted("fetchrow"), _counted("fetchval")
    execute, executemany = _counted("execute"), _counted("executemany")

    def acquire(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.statements.append("<acquire>")
        return self._pool.acquire(*args, **kwargs)


async def test_targets_of_every_set_are_read_in_one_query(gallery: Gallery, services: Services,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Stored fields for all hits of all sets cost one PostgreSQL query per request, however many hits; none when
    no set asks for them. The API runs in process (real proxy, matchers, PostgreSQL) with its pool counted."""
    from facedex.api.app import build_app
    from facedex.config import ServiceAddress, Settings

    g = gallery
    l1, l2, l3 = g.lists
    settings = Settings(database_url=services.env["FACEDEX_DATABASE_URL"], redis_url=services.env["FACEDEX_REDIS_URL"],
                        redis_prefix=services.env["FACEDEX_REDIS_PREFIX"], internal_token=services.internal_token,
                        proxy=ServiceAddress(port=services.ports["proxy"]))
    app = build_app(settings)
    refs = np.vstack([g.probes[:6], g.vectors[[10, 700]]])

    def body(limit: int, targets: list[list[str]]) -> dict:
        filters = [{"list_ids": [l1, l2]}, {"list_id": l1, "user_data__prefix": "site1"}, {"list_id": l3},
                   {"list_ids": [l2, l3], "create_time__gte": g.batch_times[2]}]
        return {"references": [{"descriptor": {"data": b64(r)}} for r in refs],
                "candidates": [{"filters": f, "limit": limit, "targets": t} for f, t in zip(filters, targets)]}

    async with app.router.lifespan_context(app):
        store = app.state.store
        counting = CountingPool(store.pool)
        monkeypatch.setattr(store, "pool", counting)
        lookups: list[int] = []
        real = store.face_targets

        async def face_targets(account, face_ids, with_lists):  # type: ignore[no-untyped-def]
            lookups.append(len(face_ids))
            return await real(account, face_ids, with_lists)

        monkeypatch.setattr(store, "face_targets", face_targets)
        deadline = time.monotonic() + 10
        while not app.state.tokens.listening:  # token lookups cached from here on
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=60,
                                     headers={"Authorization": g.client.headers["Authorization"]}) as client:
            assert (await client.post("/1/matcher/faces", json=body(1, [["face_id"]] * 4))).status_code == 200  # warm-up
            plain = ["face_id", "similarity"]
            for limit, targets in [(1, [ALL_TARGETS] * 4), (200, [ALL_TARGETS, ["user_data", "face_id"], plain, ["list_ids", "face_id"]]),
                                   (200, [plain] * 4)]:
                counting.statements.clear()
                lookups.clear()
                resp = await client.post("/1/matcher/faces", json=body(limit, targets))
                assert resp.status_code == 200, resp.text[:300]
                out = resp.json()
                # the distinct hits of the sets that asked for stored fields: all looked up, in one query
                hits = {r["face_id"] for m in out["matches"] for j, s in enumerate(m["sets"])
                        if set(targets[j]) - {"face_id", "similarity"} for r in s["results"]}
                queries = [sql for sql in counting.statements if "token" not in sql.lower()]
                if not hits:
                    assert lookups == [] and queries == [], (limit, queries)
                    continue
                assert lookups == [len(hits)], (limit, lookups, len(hits))
                assert len(queries) == 1 and "FROM faces" in queries[0], (limit, queries)
                if limit == 200:
                    assert len(hits) > 500  # many hits over several sets, still one query
                for m in out["matches"]:
                    for j, s in enumerate(m["sets"]):
                        for r in s["results"]:
                            i = g.index_of(r["face_id"])
                            if "user_data" in targets[j]:
                                assert r["user_data"] == g.user_data[i]
                            if "list_ids" in targets[j]:
                                assert sorted(r["list_ids"]) == sorted(lst for lst, mem in g.members.items() if i in mem)
