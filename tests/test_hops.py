"""Issue 12: every hop of a match timed (Server-Timing, /metrics), msgpack bodies beside JSON, and the hop cuts
keep their guarantees (coalesced change-head reads stay read-your-writes)."""

from __future__ import annotations

import asyncio
import base64
import uuid

import httpx
import msgspec
import numpy as np
import pytest

from facedex import timing
from facedex.bruteforce.cache import ListCache
from facedex.client import Client
from facedex.config import MatchingSettings
from facedex.faces.store import FacesStore, NewFace
from tests.conftest import Services, new_client
from tests.test_indexed import b64, wait_for
from tests.test_indexing import wait_task

MSGPACK = "application/msgpack"
N = 300
INDEXED_HOPS = {"parse", "refs", "proxy", "route", "queue", "fresh", "search", "rescore", "reply", "total"}
BRUTEFORCE_HOPS = INDEXED_HOPS - {"rescore"}


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def indexed(services: Services):  # type: ignore[no-untyped-def]
    """An account's list of N faces, indexed by the Manager and loaded by the Indexed Matcher."""
    client = new_client(services)
    vecs = unit(np.random.default_rng(12), N)
    list_id = client.post("/1/lists", json={"user_data": "hops"}).json()["list_id"]
    resp = client.post("/1/faces/batch", json={"faces": [{"descriptor": {"data": b64(v)}} for v in vecs], "list_ids": [list_id]})
    assert resp.status_code == 201, resp.text
    face_ids = resp.json()["face_ids"]
    manager = services.url("manager")
    task = httpx.post(f"{manager}/1/tasks", json={"list_id": list_id}, headers=services.internal).json()
    assert wait_task(manager, task["task_id"], timeout=300)["status"] == "success"

    def loaded() -> bool:
        indexes = httpx.get(services.url("matcher") + "/1/indexes", headers=services.internal).json()["indexes"]
        return any(i["list_id"] == list_id for i in indexes)

    wait_for(loaded, 60, "the matcher to load the index")
    wait_for(lambda: match_json(client, list_id, vecs[0])[0].json()["route"] == "indexed", 10, "the proxy's label sync")
    yield client, list_id, face_ids, vecs
    client.close()


def match_json(client: httpx.Client, list_id: str, vec: np.ndarray, **cand) -> tuple[httpx.Response, dict]:  # type: ignore[no-untyped-def]
    body = {"references": [{"descriptor": {"data": b64(vec)}}], "candidates": {"list_id": list_id, "limit": 5, **cand}}
    resp = client.post("/1/matcher/faces", json=body)
    return resp, body


def match_msgpack(client: httpx.Client, list_id: str, vec: np.ndarray, **cand) -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {"references": [{"descriptor": {"data": np.asarray(vec, "<f4").tobytes()}}],
            "candidates": {"list_id": uuid.UUID(list_id).bytes, "limit": 5, **cand}}
    return client.post("/1/matcher/faces", content=msgspec.msgpack.encode(body),
                       headers={"Content-Type": MSGPACK, "Accept": MSGPACK})


def as_json(answer: bytes) -> dict:  # type: ignore[type-arg]
    """A msgpack answer in the JSON answer's form (16-byte ids as UUID text, echoed descriptors as base64)."""
    data = msgspec.msgpack.decode(answer)
    for m in data["matches"]:
        for r in m["results"]:
            r["face_id"] = str(uuid.UUID(bytes=r["face_id"]))
        d = m["reference"].get("descriptor")
        if d is not None:
            d["data"] = base64.b64encode(d["data"]).decode()
        m["reference"] = {k: v for k, v in m["reference"].items() if v is not None}
    return data


def hops_of(resp: httpx.Response) -> dict[str, float]:
    header = resp.headers.get("Server-Timing")
    assert header, f"no Server-Timing header: {dict(resp.headers)}"
    return timing.parse_header(header)


@pytest.mark.parametrize("exact", [False, True], ids=["indexed", "bruteforce"])
def test_json_and_msgpack_give_the_same_answer(indexed, exact: bool) -> None:  # type: ignore[no-untyped-def]
    client, list_id, face_ids, vecs = indexed
    for q in range(5):
        probe = vecs[q] + 0.02 * unit(np.random.default_rng(q), 1)[0]
        by_json, _ = match_json(client, list_id, probe, exact=exact)
        by_msgpack = match_msgpack(client, list_id, probe, exact=exact)
        assert by_json.status_code == by_msgpack.status_code == 200, by_msgpack.text
        assert by_msgpack.headers["content-type"] == MSGPACK
        want = by_json.json()
        for m in want["matches"]:
            m["reference"] = {k: v for k, v in m["reference"].items() if v is not None}
        assert as_json(by_msgpack.content) == want
        assert want["route"] == ("bruteforce" if exact else "indexed")
        assert want["matches"][0]["results"][0]["face_id"] == face_ids[q]
        # a msgpack request may still ask for a JSON answer, and face-id references and filters may be bytes or text
        mixed = client.post("/1/matcher/faces", content=msgspec.msgpack.encode({
            "references": [{"face_id": face_ids[q]}],
            "candidates": {"list_id": list_id, "limit": 3, "exact": exact, "face_ids": [uuid.UUID(f).bytes for f in face_ids[:50]]},
        }), headers={"Content-Type": MSGPACK})
        assert mixed.status_code == 200 and mixed.headers["content-type"] == "application/json", mixed.text
        assert mixed.json()["matches"][0]["results"][0] == {"face_id": face_ids[q], "similarity": 1.0}


def test_the_typed_client_matches_by_msgpack_as_by_json(indexed, services: Services) -> None:  # type: ignore[no-untyped-def]
    client, list_id, face_ids, vecs = indexed
    token = client.headers["Authorization"].split(" ", 1)[1]
    with Client(services.url("api"), token) as fx:
        for exact in (False, True):
            by_json = fx.match(list_id, descriptors=[vecs[7]], face_ids=[face_ids[8]], limit=4, exact=exact)
            by_msgpack = fx.match(list_id, descriptors=[vecs[7]], face_ids=[face_ids[8]], limit=4, exact=exact, msgpack=True)
            assert by_msgpack == by_json
            assert [m.results[0].face_id for m in by_json.matches] == [uuid.UUID(face_ids[7]), uuid.UUID(face_ids[8])]


def test_bad_msgpack_is_a_stable_4xx_and_counts_are_read_before_decoding(indexed, services: Services) -> None:  # type: ignore[no-untyped-def]
    client, list_id, face_ids, vecs = indexed
    headers = {"Content-Type": MSGPACK}

    def post(body: bytes) -> httpx.Response:
        return client.post("/1/matcher/faces", content=body, headers=headers)

    def code(resp: httpx.Response) -> tuple[int, int]:
        return resp.status_code, resp.json()["error_code"]

    assert code(post(b"\xc1\xff garbage")) == (400, 10013)  # 0xc1 is never valid msgpack
    assert code(post(msgspec.msgpack.encode({"references": []})[:-1])) == (400, 10013)  # truncated
    assert code(post(msgspec.msgpack.encode([1, 2]))) == (422, 10002)  # msgpack, but not a request
    ok_ref = {"descriptor": {"data": np.asarray(vecs[0], "<f4").tobytes()}}
    cand = {"list_id": uuid.UUID(list_id).bytes}
    assert code(post(msgspec.msgpack.encode({"references": [ok_ref], "candidates": cand, "extra": 1}))) == (422, 10002)
    assert code(post(msgspec.msgpack.encode({"references": [{"descriptor": {"data": b64(vecs[0])}}], "candidates": cand}))) == (422, 10002)
    both = {**ok_ref, "face_id": uuid.UUID(face_ids[0]).bytes}  # the same model as JSON: exactly one kind per reference
    assert code(post(msgspec.msgpack.encode({"references": [both], "candidates": cand}))) == (422, 10002)
    # the same codes as JSON for the same mistakes
    assert code(post(msgspec.msgpack.encode({"references": [ok_ref], "candidates": {**cand, "limit": 0}}))) == (422, 14001)
    nan = np.full(512, np.nan, "<f4").tobytes()
    assert code(post(msgspec.msgpack.encode({"references": [{"descriptor": {"data": nan}}], "candidates": cand}))) == (400, 11003)
    short = {"descriptor": {"data": b"\x00" * 12}}
    assert code(post(msgspec.msgpack.encode({"references": [short], "candidates": cand}))) == (400, 11002)
    missing = {"list_id": uuid.uuid4().bytes}
    assert code(post(msgspec.msgpack.encode({"references": [ok_ref], "candidates": missing}))) == (404, 12001)
    # counts come from the array headers, before the elements are decoded (nil elements would be 422 if they were)
    assert code(post(msgspec.msgpack.encode({"references": [None] * 65, "candidates": cand}))) == (422, 14003)
    over = MatchingSettings().max_filter_face_ids + 1
    assert code(post(msgspec.msgpack.encode({"references": [ok_ref], "candidates": {**cand, "face_ids": [None] * over}}))) == (400, 13004)
    assert code(post(msgspec.msgpack.encode({"references": [None], "candidates": cand}))) == (422, 10002)


def test_server_timing_names_every_hop_of_both_routes(indexed) -> None:  # type: ignore[no-untyped-def]
    client, list_id, _, vecs = indexed
    for exact, names in ((False, INDEXED_HOPS), (True, BRUTEFORCE_HOPS)):
        for resp in (match_json(client, list_id, vecs[3], exact=exact)[0], match_msgpack(client, list_id, vecs[3], exact=exact)):
            assert resp.status_code == 200, resp.text
            hops = hops_of(resp)
            assert set(hops) == names, resp.headers["Server-Timing"]
            assert all(v >= 0 for v in hops.values())
            # the hops are disjoint parts of the API's handler: together they never exceed its total (3-decimal rounding)
            assert sum(v for h, v in hops.items() if h != "total") <= hops["total"] + 0.05, hops
            assert hops["search"] > 0


def test_hop_histograms_are_in_metrics(indexed, services: Services) -> None:  # type: ignore[no-untyped-def]
    client, list_id, _, vecs = indexed
    match_json(client, list_id, vecs[1])
    match_json(client, list_id, vecs[1], exact=True)
    text = httpx.get(services.url("api") + "/metrics").text
    for route, names in (("indexed", INDEXED_HOPS), ("bruteforce", BRUTEFORCE_HOPS)):
        for hop in names:
            line = next((x for x in text.splitlines()
                         if x.startswith("facedex_match_hop_seconds_count") and f'hop="{hop}"' in x and f'route="{route}"' in x), None)
            assert line is not None and float(line.rsplit(" ", 1)[1]) >= 1, (route, hop)


def test_the_direct_match_routes_behave_as_the_declared_ones(indexed, services: Services) -> None:  # type: ignore[no-untyped-def]
    """The routes every match crosses are answered past FastAPI's routing (facedex.http.DirectRoutes): the same
    dependencies, errors and metrics labels as the routes FastAPI declares (and documents) for them."""
    from facedex.api import matching
    from facedex.api.app import build_app
    from facedex.api.auth import current_account
    from facedex.api.deps import store
    from facedex.config import Settings

    # the direct handler resolves the account and the store itself: the declared route may depend on nothing else
    app = build_app(Settings())
    route = next(r for r in matching.router.routes if getattr(r, "path", None) == "/1/matcher/faces")
    assert {d.call for d in route.dependant.dependencies} == {current_account, store}
    assert set(app.state.direct_routes) == {("POST", "/1/matcher/faces")}
    client, list_id, _, vecs = indexed
    body = {"references": [{"descriptor": {"data": b64(vecs[0])}}], "candidates": {"list_id": list_id}}
    for headers, code in (({}, 10004), ({"Authorization": "Bearer fdx_not-a-token"}, 10004)):
        resp = httpx.post(services.url("api") + "/1/matcher/faces", json=body, headers=headers)
        assert resp.status_code == 401 and resp.json()["error_code"] == code, resp.text
        assert resp.headers.get("X-Request-Id")  # the outer middleware still wraps it
    resp = client.post("/1/matcher/faces", json={**body, "candidates": {"list_id": list_id, "limit": 0}})
    assert resp.status_code == 422 and resp.json()["error_code"] == 14001, resp.text
    resp = client.post("/1/matcher/faces", content=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error_code"] == 10001, resp.text
    # each service labels its request metrics by the route's template, as for a FastAPI route
    match_json(client, list_id, vecs[0], exact=True)
    for service, path in (("api", "/1/matcher/faces"), ("proxy", "/1/match"), ("bruteforce", "/1/match")):
        text = httpx.get(services.url(service) + "/metrics", headers=services.internal).text
        assert any(x.startswith("facedex_http_request_duration_seconds_count") and f'route="{path}"' in x and 'status="200"' in x
                   for x in text.splitlines()), (service, path)


async def test_coalesced_head_reads_keep_read_your_writes(store: FacesStore, account: uuid.UUID) -> None:
    """A request that arrives while a head read runs never takes that read's answer: a write acknowledged just before
    it could be missing from it. It takes the next read, begun after it arrived."""
    rng = np.random.default_rng(21)
    lst = await store.create_list(account)
    ids = await store.create_faces(account, [NewFace(descriptors={1: v}) for v in unit(rng, 4)], [lst.list_id])
    late = (await store.create_faces(account, [NewFace(descriptors={1: unit(rng, 1)[0]})]))[0]
    cache = ListCache(store, max_bytes=1 << 30)
    assert (await cache.fresh(lst.list_id, 1)).n == 4
    real = store.list_head
    release = asyncio.Event()
    read = asyncio.Event()
    calls = 0

    async def slow_first(list_id: uuid.UUID, timeout: float | None = None):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        head = await real(list_id, timeout=timeout)
        if calls == 1:  # this read has its answer (the head before the write) but is slow to return it
            read.set()
            await release.wait()
        return head

    store.list_head = slow_first  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(cache.current(lst.list_id, 1, 5.0))
        await read.wait()
        await store.attach(account, lst.list_id, [late])  # acknowledged ...
        second = asyncio.create_task(cache.current(lst.list_id, 1, 5.0))  # ... then this request is sent
        others = [asyncio.create_task(cache.current(lst.list_id, 1, 5.0)) for _ in range(8)]
        await asyncio.sleep(0.05)
        release.set()
        matrix, stale = await second
        assert not stale and late.bytes in matrix.pos and matrix.n == 5  # read-your-writes held
        await first
        await asyncio.gather(*others)
        assert calls == 2  # ten requests, two PostgreSQL reads: the nine that arrived during the first shared the next
    finally:
        store.list_head = real  # type: ignore[method-assign]
    assert {uuid.UUID(bytes=bytes(r)) for r in matrix.ids[: matrix.n]} == {*ids, late}


async def test_a_lone_request_never_waits_for_a_read_it_cannot_use(store: FacesStore, account: uuid.UUID) -> None:
    """Sequential requests each make their own read (nothing to share), and a failing read reaches its waiters."""
    rng = np.random.default_rng(22)
    lst = await store.create_list(account)
    await store.create_faces(account, [NewFace(descriptors={1: v}) for v in unit(rng, 3)], [lst.list_id])
    cache = ListCache(store, max_bytes=1 << 30)
    for _ in range(3):
        assert (await cache.fresh(lst.list_id, 1)).n == 3
    assert cache.head_reads == 3 and not cache._heads  # nothing left behind per list
    real = store.list_head

    async def down(list_id: uuid.UUID, timeout: float | None = None):  # type: ignore[no-untyped-def]
        raise ConnectionRefusedError("Faces DB down")

    store.list_head = down  # type: ignore[method-assign]
    try:
        answers = await asyncio.gather(*(cache.current(lst.list_id, 1, 1.0) for _ in range(5)))
    finally:
        store.list_head = real  # type: ignore[method-assign]
    assert all(stale and matrix.n == 3 for matrix, stale in answers)  # answered from the cache, marked stale


async def test_a_search_beside_the_head_read_is_made_again_when_the_list_moved(store: FacesStore, account: uuid.UUID) -> None:
    """The brute-force Matcher searches a cached list while its head is read; an attach or detach acknowledged before
    the request is still seen by it (the answer is made again from the caught-up matrix), and a list that did not
    move is searched once."""
    from concurrent.futures import ThreadPoolExecutor

    from facedex import wire
    from facedex.bruteforce.app import match
    from facedex.bruteforce.batching import Batcher

    rng = np.random.default_rng(23)
    lst = await store.create_list(account)
    await store.create_faces(account, [NewFace(descriptors={1: v}) for v in unit(rng, 50)], [lst.list_id])
    q = unit(rng, 1)[0]
    late = (await store.create_faces(account, [NewFace(descriptors={1: q})]))[0]
    cache = ListCache(store, max_bytes=1 << 30)
    batcher = Batcher(ThreadPoolExecutor(2))
    searches = 0
    search_at = batcher.search_at

    async def counting(matrix, req):  # type: ignore[no-untyped-def]
        nonlocal searches
        searches += 1
        return await search_at(matrix, req)

    batcher.search_at = counting  # type: ignore[method-assign]

    async def top(vec: np.ndarray) -> list[bytes]:
        nonlocal searches
        searches = 0
        req = wire.MatchRequest(account.bytes, lst.list_id.bytes, 1, np.asarray(vec, "<f4").tobytes(), limit=3)
        resp = await match(cache, batcher, req)
        assert resp.consistency == "fresh" and set(resp.timings or {}) == {"queue", "search", "fresh"}
        ids = resp.results[0].face_ids
        return [ids[i : i + 16] for i in range(0, len(ids), 16)]

    try:
        assert late.bytes not in await top(q)  # cold: the list is loaded, then searched once
        assert searches == 1
        assert late.bytes not in await top(q)  # cached and unchanged: one search, beside the head read
        assert searches == 1
        await store.attach(account, lst.list_id, [late])
        assert (await top(q))[0] == late.bytes  # searched beside the read, the list had moved: searched again
        assert searches == 2
        await store.detach(account, lst.list_id, [late])
        assert late.bytes not in await top(q)
        assert searches == 2
    finally:
        batcher.executor.shutdown()


def test_the_benchmarks_msgpack_body_is_what_the_api_reads() -> None:
    """`facedex bench e2e --msgpack` sends what the API parses as the JSON body it would send otherwise."""
    from facedex.api import msgpack_body
    from facedex.api.models import MatchRequestIn
    from facedex.bench.e2e import _body

    probe = unit(np.random.default_rng(24), 1)[0]
    list_id = str(uuid.uuid4())
    packed, headers = _body(probe, list_id, True, msgpack=True)
    assert headers == {"Content-Type": MSGPACK, "Accept": MSGPACK}
    parsed = msgpack_body.parse(packed, MatchingSettings())  # type: ignore[arg-type]
    assert parsed == MatchRequestIn.model_validate_json(_body(probe, list_id, True, msgpack=False)[0])
