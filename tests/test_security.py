"""Attacks on every service, each refused with its documented status and code, and changing nothing (issue 14).

An attacker here can reach every port and may even hold an account of their own. Every attempt is made
against a victim account that has a list, faces, a token and a built index loaded by the Indexed Matcher;
afterwards a digest of every Faces DB table, of the data folder (index storage and anything a traversal could
write next to it) and of the Manager's task list must be what it was.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest
import redis

from facedex import internal_auth, wire
from facedex.errors import Errors, FacedexError
from facedex.faces.store import FacesStore
from facedex.redis.keys import Keys
from tests.conftest import Services, new_client
from tests.test_indexing import wait_task

INTERNAL = ("proxy", "bruteforce", "matcher", "indexer", "licenses", "extractor")
OPEN = {"/healthcheck", "/version", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
TABLES = ("accounts", "tokens", "lists", "faces", "descriptors", "list_faces", "list_changes")
N = 300


def b64(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode()


@dataclass
class Victim:
    account_id: uuid.UUID
    token: str
    client: httpx.Client
    list_id: str
    face_ids: list[str]
    vectors: np.ndarray
    index_id: str
    task_id: str


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def victim(services: Services) -> Victim:
    """An account with a list of N faces, indexed by the Manager and loaded by the Indexed Matcher."""
    if "extractor" not in services.procs:
        services.start("extractor")
    client = new_client(services)
    account_id = uuid.UUID(client.get("/1/account").json()["account_id"])
    token = client.headers["Authorization"].split(" ", 1)[1]
    vecs = np.random.default_rng(14).standard_normal((N, 512)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    list_id = client.post("/1/lists", json={"user_data": "victim"}).json()["list_id"]
    resp = client.post("/1/faces/batch", json={
        "faces": [{"external_id": f"v{i}", "descriptor": {"data": b64(v)}} for i, v in enumerate(vecs)], "list_ids": [list_id]})
    assert resp.status_code == 201, resp.text
    face_ids = resp.json()["face_ids"]
    manager = services.url("manager")
    task = httpx.post(f"{manager}/1/tasks", json={"list_id": list_id}, headers=services.internal).json()
    done = wait_task(manager, task["task_id"], timeout=300)
    assert done["status"] == "success", done

    def loaded() -> bool:
        indexes = httpx.get(services.url("matcher") + "/1/indexes", headers=services.internal).json()["indexes"]
        return any(i["list_id"] == list_id for i in indexes)

    wait_for(loaded, 60, "the matcher to load the victim's index")
    time.sleep(1.0)  # the proxy's label sync
    return Victim(account_id, token, client, list_id, face_ids, vecs, done["index_id"], task["task_id"])


@pytest.fixture
def attacker(services: Services) -> httpx.Client:
    with new_client(services) as c:
        yield c


def _dir_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix == ".log" or "__pycache__" in path.parts:
            continue
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


async def _db_digest(store: FacesStore) -> dict[str, str]:
    out = {}
    for table in TABLES:
        # count + sum of 60-bit row hashes: order-independent and small however many rows other tests left
        row = await store.pool.fetchrow(
            f"SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0) FROM {table} t"
        )
        out[table] = f"{row[0]}:{row[1]}"
    return out


@pytest.fixture
async def unchanged(services: Services, store: FacesStore, victim: Victim):
    """Asserts that the test body left the Faces DB, the data folder (with index storage) and the task list as they were."""
    work = Path(services.env["FACEDEX_DATA_DIR"])

    def tasks() -> list[dict]:
        return httpx.get(services.url("manager") + "/1/tasks", headers=services.internal).json()

    before = (await _db_digest(store), _dir_digest(work), tasks())
    yield
    await asyncio.sleep(0.3)  # anything a refused request might have set off in the background
    after = (await _db_digest(store), _dir_digest(work), tasks())
    assert after[0] == before[0], "the Faces DB changed"
    assert after[1] == before[1], "the data folder (index storage) changed"
    assert after[2] == before[2], "the Manager's tasks changed"


def _routes(url: str, headers: dict[str, str]) -> list[tuple[str, str]]:
    """Every (method, path) in a service's OpenAPI, path parameters filled with a fresh UUID."""
    spec = httpx.get(url + "/openapi.json", headers=headers).json()
    out = []
    for path, methods in spec["paths"].items():
        if path in OPEN:
            continue
        filled = path
        for name in [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]:
            filled = filled.replace("{" + name + "}", str(uuid.uuid4()))
        out += [(m.upper(), filled) for m in methods]
    return out


def _assert_refused(resp: httpx.Response, status: int, code: int, what: str) -> None:
    assert resp.status_code == status, f"{what}: {resp.status_code} {resp.text[:300]}"
    assert resp.json()["error_code"] == code, f"{what}: {resp.text[:300]}"


# --------------------------------------------------------------------------- internal services
def test_internal_routes_refuse_every_credential_but_the_internal_token(services: Services, victim: Victim, unchanged) -> None:
    token = services.internal_token
    wrong = {"Authorization": "Bearer " + token[:-1] + ("y" if token.endswith("x") else "x")}  # always another token
    account = {"Authorization": f"Bearer {victim.token}"}
    admin = services.admin
    for name in INTERNAL:
        url = services.url(name)
        routes = _routes(url, {})
        assert routes, f"{name} has no routes?"
        if name != "extractor":
            routes.append(("GET", "/metrics"))
        for method, path in routes:
            for label, headers in (("no credential", {}), ("wrong token", wrong), ("account token", account),
                                   ("admin token", admin), ("basic auth", {"Authorization": "Basic " + services.internal_token})):
                resp = httpx.request(method, url + path, headers=headers, content=b"\x80", timeout=30)
                _assert_refused(resp, 401, 10010, f"{name} {method} {path} with {label}")
        assert httpx.get(url + "/healthcheck").status_code == 200  # liveness stays open
    # the internal token itself is accepted (so the refusals above are about the credential)
    assert httpx.get(services.url("licenses") + "/1/features/index", headers=services.internal).json()["enabled"] is True
    assert httpx.get(services.url("indexer") + "/1/state", headers=services.internal).status_code == 200


def _forged(victim: Victim, **kw: object) -> wire.MatchRequest:
    return wire.MatchRequest(victim.account_id.bytes, uuid.UUID(victim.list_id).bytes, 1, victim.vectors[:1].tobytes(), limit=3, **kw)  # type: ignore[arg-type]


def _forgeries(token: str, victim: Victim) -> dict[str, wire.MatchRequest]:
    """Requests an attacker can make from what they see (a signed request, e.g. read from a stream) without the key."""
    replace = msgspec.structs.replace
    base = _forged(victim)
    genuine = internal_auth.sign_request(token, base, 60)
    filtered = internal_auth.sign_request(token, _forged(victim, face_ids=[uuid.UUID(victim.face_ids[-1]).bytes]), 60)
    expired = internal_auth.sign_request(token, base, -5)
    return {
        "unsigned": base,
        "signed for another list": replace(internal_auth.sign_request(token, replace(base, list_id=uuid.uuid4().bytes), 60),
                                           list_id=base.list_id),
        "signed with another key": internal_auth.sign_request("not-the-token", base, 60),
        "expired signature": expired,
        "expiry moved": replace(expired, auth_expires_ms=genuine.auth_expires_ms),
        # a signed request replayed with other content, its signature kept
        "references changed": replace(genuine, references=victim.vectors[1:2].tobytes()),
        "limit changed": replace(genuine, limit=300),
        "threshold changed": replace(genuine, threshold=0.0),
        "face filter dropped": replace(filtered, face_ids=None),
        "exact flag changed": replace(genuine, exact=True),
    }


def test_the_signature_covers_every_field_of_a_match_request() -> None:
    """Each field, including any added to wire.MatchRequest later, changed after signing: refused (10011)."""
    token = "t" * 32
    signed = internal_auth.sign_request(token, wire.MatchRequest(
        uuid.uuid4().bytes, uuid.uuid4().bytes, 1, b"\1" * 2048, 5, 0.5, [uuid.uuid4().bytes], "rid", False,
        filters=wire.MatchFilters(user_data_prefix="staff/")), 60)
    internal_auth.verify_request(token, signed)  # as signed: accepted

    def changed(value: object) -> object:
        if isinstance(value, bytes):
            return value[:-1] + bytes([value[-1] ^ 1])  # same length: not refused as malformed, only as unsigned
        if isinstance(value, bool):
            return not value
        if isinstance(value, (int, float)):
            return value + 1
        if isinstance(value, str):
            return value + "x"
        if isinstance(value, list):
            return [*value, uuid.uuid4().bytes]
        if isinstance(value, msgspec.Struct):  # a nested struct (the filters): change each of its fields in turn below
            return msgspec.structs.replace(value, user_data_prefix=(getattr(value, "user_data_prefix", None) or "") + "x")
        return None

    fields = [f for f in msgspec.structs.fields(wire.MatchRequest) if f.name != "auth"]
    assert {"references", "limit", "threshold", "face_ids", "auth_expires_ms"} <= {f.name for f in fields}
    for f in fields:
        value = getattr(signed, f.name)
        other = changed(value)
        assert other != value, f"no way to change {f.name} ({type(value).__name__}): extend changed()"
        with pytest.raises(FacedexError) as err:
            internal_auth.verify_request(token, msgspec.structs.replace(signed, **{f.name: other}))
        assert err.value.error is Errors.IDENTITY_UNVERIFIED, f.name
    for token_used in (None, "another token"):
        with pytest.raises(FacedexError):
            internal_auth.verify_request(token_used, signed)


def test_forged_or_altered_requests_over_http_are_refused(services: Services, victim: Victim, unchanged) -> None:
    """Even a caller holding the internal token cannot name an account, or change a request, the API did not sign."""
    token = services.internal_token
    headers = {**services.internal, "Content-Type": wire.CONTENT_TYPE}
    for name in ("proxy", "bruteforce"):
        for label, req in _forgeries(token, victim).items():
            resp = httpx.post(services.url(name) + "/1/match", content=wire.encode(req), headers=headers, timeout=30)
            _assert_refused(resp, 403, 10011, f"{name}: {label}")
    # the same request, signed as the API signs it, is answered with the victim's faces (the refusals are about the signature)
    for name in ("proxy", "bruteforce"):
        resp = httpx.post(services.url(name) + "/1/match", content=wire.encode(internal_auth.sign_request(token, _forged(victim), 60)),
                          headers=headers, timeout=30)
        assert resp.status_code == 200, resp.text
        answer = wire.decode(resp.content, wire.MatchResponse)
        assert answer.results[0].face_ids[:16] == uuid.UUID(victim.face_ids[0]).bytes


def test_forged_or_tampered_stream_entries_are_not_answered_with_faces(services: Services, victim: Victim, redis_url: str,
                                                                      unchanged) -> None:
    """A request XADDed straight into the list's stream (anyone with Redis access can), or a signed one replayed there
    with other references, limit, threshold or filter, gets 10011, not faces."""
    keys = Keys(services.env["FACEDEX_REDIS_PREFIX"])
    r = redis.Redis.from_url(redis_url)
    channel = keys.replies(f"attacker-{uuid.uuid4().hex}")
    pubsub = r.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    deadline = int((time.time() + 30) * 1000)
    forged = _forgeries(services.internal_token, victim)
    entries = {**forged, "genuine": internal_auth.sign_request(services.internal_token, _forged(victim), 60)}  # the control
    for rid, req in entries.items():
        entry = wire.IndexedRequest(rid, channel, deadline, req)
        r.xadd(keys.stream(keys.matching_label(victim.list_id, 1)), {b"m": wire.encode(entry)})
    replies: dict[str, wire.IndexedReply] = {}
    until = time.monotonic() + 60
    while len(replies) < len(entries) and time.monotonic() < until:
        msg = pubsub.get_message(timeout=1.0)
        if msg and msg["type"] == "message":
            reply = wire.decode(msg["data"], wire.IndexedReply)
            replies[reply.rid] = reply
    pubsub.close()
    assert set(replies) == set(entries), f"unanswered: {set(entries) - set(replies)}"
    for rid in forged:
        assert replies[rid].error_code == 10011 and replies[rid].response is None, (rid, replies[rid])
    genuine = replies["genuine"]
    assert genuine.error_code == 0 and genuine.response is not None and genuine.response.route == "indexed"
    assert genuine.response.results[0].face_ids[:16] == uuid.UUID(victim.face_ids[0]).bytes


def test_traversal_and_non_uuid_ids_are_refused(services: Services, victim: Victim, unchanged) -> None:
    h = services.internal
    indexer = services.url("indexer")
    good = {"task_id": str(uuid.uuid4()), "list_id": victim.list_id, "index_id": str(uuid.uuid4())}
    for field, value in (("index_id", "../trav/victim"), ("index_id", "../../etc"), ("index_id", ".tmp-x"),
                         ("list_id", "x' OR '1'='1"), ("task_id", "a\x00b"), ("index_id", victim.index_id + "/..")):
        resp = httpx.post(indexer + "/1/index_list", json={**good, field: value}, headers=h)
        _assert_refused(resp, 422, 10002, f"indexer {field}={value!r}")
    # an encoded slash is decoded before routing: the path then names no route (404 10006); one odd segment is 422
    _assert_refused(httpx.delete(indexer + "/1/index_list/..%2F..%2Fx", headers=h), 404, 10006, "indexer cancel traversal")
    _assert_refused(httpx.delete(indexer + "/1/index_list/not-a-uuid", headers=h), 422, 10002, "indexer cancel id")
    manager = services.url("manager")
    for method in ("GET", "DELETE"):
        _assert_refused(httpx.request(method, manager + "/1/tasks/..%2F..", headers=h), 404, 10006, f"manager {method} traversal")
        _assert_refused(httpx.request(method, manager + "/1/tasks/not-a-uuid", headers=h), 422, 10002, f"manager {method} id")
    _assert_refused(httpx.delete(manager + "/1/indexes/..%2F" + victim.index_id, headers=h), 404, 10006, "manager index traversal")
    _assert_refused(httpx.delete(manager + "/1/indexes/.tmp-" + victim.index_id, headers=h), 422, 10002, "manager index id")
    _assert_refused(httpx.post(manager + "/1/tasks", json={"list_id": "../x"}, headers=h), 422, 10002, "manager task list id")
    _assert_refused(httpx.get(manager + "/1/tasks", params={"list_id": "x"}, headers=h), 422, 10002, "manager task filter")
    _assert_refused(httpx.get(manager + "/1/tasks", params={"status": "a\x00"}, headers=h), 422, 10002, "manager status filter")
    licenses = services.url("licenses")
    _assert_refused(httpx.get(licenses + "/1/features/..%2Flicense", headers=h), 404, 10006, "licenses traversal")
    _assert_refused(httpx.get(licenses + "/1/features/a%00b", headers=h), 422, 10002, "licenses feature name")
    api = victim.client
    for method in ("GET", "DELETE"):
        _assert_refused(api.request(method, "/1/lists/..%2F.."), 404, 10006, f"API {method} list traversal")
        for path in ("/1/lists/not-a-uuid", "/1/faces/x%00", f"/1/faces/{victim.face_ids[0]}%00"):
            _assert_refused(api.request(method, path), 422, 10002, f"API {method} {path}")
    _assert_refused(api.delete("/1/account/tokens/not-a-uuid"), 422, 10002, "API token id")
    assert not (Path(services.env["FACEDEX_DATA_DIR"]) / "trav").exists()


# --------------------------------------------------------------------------- Index Manager
def test_manager_scopes_every_route_to_the_caller(services: Services, victim: Victim, attacker: httpx.Client, unchanged) -> None:
    manager = services.url("manager")
    for method, path in _routes(manager, {}):
        if path == "/metrics":  # open on the public services (API, Manager): counters only, no ids
            continue
        for label, headers in (("no credential", {}), ("wrong token", {"Authorization": "Bearer fdx_nope"})):
            resp = httpx.request(method, manager + path, headers=headers, json={"list_id": victim.list_id})
            _assert_refused(resp, 401, 10004, f"manager {method} {path} with {label}")
    # an index deletion without a token (what a schema fuzzer did): refused, the index stays
    _assert_refused(httpx.delete(f"{manager}/1/indexes/{victim.index_id}"), 401, 10004, "anonymous index delete")
    other = {"Authorization": attacker.headers["Authorization"]}
    own = {"Authorization": f"Bearer {victim.token}"}
    # another account's token: the victim's objects are as if absent
    assert all(t["list_id"] != victim.list_id for t in httpx.get(f"{manager}/1/tasks", headers=other).json())
    assert httpx.get(f"{manager}/1/tasks", params={"list_id": victim.list_id}, headers=other).json() == []
    _assert_refused(httpx.get(f"{manager}/1/tasks/{victim.task_id}", headers=other), 404, 26001, "foreign task")
    _assert_refused(httpx.delete(f"{manager}/1/tasks/{victim.task_id}", headers=other), 404, 26001, "foreign task cancel")
    _assert_refused(httpx.post(f"{manager}/1/tasks", json={"list_id": victim.list_id}, headers=other), 404, 12001, "foreign build")
    assert all(i["list_id"] != victim.list_id for i in httpx.get(f"{manager}/1/indexes", headers=other).json())
    assert all(i["list_id"] != victim.list_id for i in httpx.get(f"{manager}/1/indexes/relevant", headers=other).json())
    _assert_refused(httpx.delete(f"{manager}/1/indexes/{victim.index_id}", headers=other), 404, 26204, "foreign index delete")
    assert httpx.get(f"{manager}/1/queue", headers=other).json()["length"] == 0
    _assert_refused(httpx.get(f"{manager}/1/master", headers=other), 403, 10005, "master with an account token")
    # the owner sees its own, and the operator sees everything
    assert victim.task_id in {t["task_id"] for t in httpx.get(f"{manager}/1/tasks", headers=own).json()}
    assert httpx.get(f"{manager}/1/tasks/{victim.task_id}", headers=own).json()["list_id"] == victim.list_id
    assert victim.index_id in {i["index_id"] for i in httpx.get(f"{manager}/1/indexes", headers=own).json()}
    assert {i["account_id"] for i in httpx.get(f"{manager}/1/indexes", headers=own).json()} == {str(victim.account_id)}
    assert victim.index_id in {i["index_id"] for i in httpx.get(f"{manager}/1/indexes", headers=services.admin).json()}
    _assert_refused(httpx.post(f"{manager}/1/tasks", json={"list_id": victim.list_id}, headers=own), 409, 26202, "own, up to date")


# --------------------------------------------------------------------------- API
def test_api_refuses_missing_wrong_and_foreign_credentials(services: Services, victim: Victim, attacker: httpx.Client, unchanged) -> None:
    api = services.url("api")
    public = {"/1/descriptor_versions", "/metrics"}
    for method, path in _routes(api, {}):
        if path in public:
            continue
        for label, headers in (("no credential", {}), ("wrong token", {"Authorization": "Bearer fdx_nope"}),
                               ("internal token", services.internal)):
            resp = httpx.request(method, api + path, headers=headers, json={})
            if path == "/1/accounts" and label != "no credential":
                _assert_refused(resp, 403, 10005, f"API {method} {path} with {label}")
            else:
                _assert_refused(resp, 401, 10004, f"API {method} {path} with {label}")
    face, lst = victim.face_ids[0], victim.list_id
    foreign = [
        ("GET", f"/1/lists/{lst}", None, 12001), ("PATCH", f"/1/lists/{lst}", {"user_data": "pwned"}, 12001),
        ("DELETE", f"/1/lists/{lst}", None, 12001),
        ("PATCH", f"/1/lists/{lst}/faces", {"action": "detach", "face_ids": [face]}, 12001),
        ("GET", f"/1/faces/{face}", None, 13001), ("PATCH", f"/1/faces/{face}", {"user_data": "pwned"}, 13001),
        ("PUT", f"/1/faces/{face}/descriptor", {"data": b64(victim.vectors[1])}, 13001),
        ("DELETE", f"/1/faces/{face}", None, 13001),
        ("POST", "/1/matcher/faces", {"references": [{"descriptor": {"data": b64(victim.vectors[0])}}],
                                      "candidates": {"list_id": lst}}, 12001),
        ("POST", "/1/matcher/faces", {"references": [{"face_id": face}], "candidates": {"list_id": lst}}, 13001),
    ]
    for method, path, body, code in foreign:
        resp = attacker.request(method, path, json=body)
        assert resp.status_code == 404 and resp.json()["error_code"] == code, (method, path, resp.text)
    _assert_refused(attacker.get("/1/faces", params={"list_id": lst}), 404, 12001, "faces of a foreign list")
    assert attacker.get("/1/faces", params={"external_id": "v0"}).json() == []
    own_tokens = victim.client.get("/1/account/tokens").json()
    resp = attacker.delete(f"/1/account/tokens/{own_tokens[0]['token_id']}")
    _assert_refused(resp, 404, 15003, "revoking another account's token")


def test_text_postgres_cannot_store_is_a_400(victim: Victim, services: Services, unchanged) -> None:
    api = victim.client
    face = victim.face_ids[0]
    nul, surrogate = "a\x00b", '"x\\ud800y"'
    for method, path, body in (
        ("POST", "/1/lists", {"user_data": nul}), ("PATCH", f"/1/lists/{victim.list_id}", {"user_data": nul}),
        ("POST", "/1/faces", {"external_id": nul}), ("POST", "/1/faces", {"user_data": nul}),
        ("POST", "/1/faces/batch", {"faces": [{"external_id": "fine"}, {"external_id": nul}]}),
        ("PATCH", f"/1/faces/{face}", {"external_id": nul}), ("POST", "/1/account/tokens", {"name": nul}),
    ):
        _assert_refused(api.request(method, path, json=body), 400, 10012, f"{method} {path}")
    raw = '{"user_data": ' + surrogate + "}"
    _assert_refused(api.post("/1/lists", content=raw, headers={"Content-Type": "application/json"}), 400, 10012, "surrogate")
    _assert_refused(api.get("/1/faces", params={"external_id": nul}), 400, 10012, "query parameter")
    form = api.post("/1/images/faces", files={"image": ("x.jpg", b"not an image", "image/jpeg")}, data={"user_data": nul})
    _assert_refused(form, 400, 10012, "multipart field")
    admin = httpx.post(services.url("api") + "/1/accounts", json={"name": nul}, headers=services.admin)
    _assert_refused(admin, 400, 10012, "account name")


def test_duplicate_face_ids_in_a_filter_collapse(victim: Victim) -> None:
    face = victim.face_ids[0]
    resp = victim.client.post("/1/matcher/faces", json={
        "references": [{"descriptor": {"data": b64(victim.vectors[0])}}],
        "candidates": {"list_id": victim.list_id, "face_ids": [face, face, face, victim.face_ids[1]], "limit": 10}})
    assert resp.status_code == 200, resp.text
    results = resp.json()["matches"][0]["results"]
    assert [r["face_id"] for r in results].count(face) == 1 and len(results) == 2


# --------------------------------------------------------------------------- tokens
async def test_tokens_listed_capped_expiring_and_revoked_on_every_instance(services: Services, store: FacesStore) -> None:
    if "api-2" not in services.procs:
        services.start("api-2", "api", FACEDEX_MAX_TOKENS_PER_ACCOUNT="3")
    first, second = services.url("api"), services.url("api-2")
    owner = new_client(services)
    t = owner.post("/1/account/tokens", json={"name": "ci", "expires_in_s": 3600})
    assert t.status_code == 201, t.text
    created = t.json()
    assert created["token"].startswith("fdx_") and created["expire_time"] is not None
    listed = owner.get("/1/account/tokens").json()
    assert {x["token_id"] for x in listed} >= {created["token_id"]}
    assert all(set(x) == {"token_id", "name", "create_time", "expire_time"} for x in listed)  # never a secret
    assert created["token"] not in owner.get("/1/account/tokens").text
    bearer = {"Authorization": f"Bearer {created['token']}"}
    for url in (first, second):  # both instances have it cached now
        for _ in range(2):
            assert httpx.get(url + "/1/account", headers=bearer).status_code == 200
    resp = httpx.delete(f"{first}/1/account/tokens/{created['token_id']}", headers=bearer)  # revokes itself
    assert resp.status_code == 204
    for url in (second, first):
        _assert_refused(httpx.get(url + "/1/account", headers=bearer), 401, 10004, f"revoked token on {url}")
    _assert_refused(owner.delete(f"/1/account/tokens/{created['token_id']}"), 404, 15003, "revoked twice")
    # an expired token is refused (its expiry is checked in the database, not only in the cache)
    short = owner.post("/1/account/tokens", json={"expires_in_s": 60}).json()
    await store.pool.execute("UPDATE tokens SET expire_time = now() - interval '1 second' WHERE token_id=$1", uuid.UUID(short["token_id"]))
    _assert_refused(httpx.get(second + "/1/account", headers={"Authorization": f"Bearer {short['token']}"}), 401, 10004, "expired")
    # the cap (3 on api-2): the account's default token + 2 more; expired and revoked ones do not count
    capped = httpx.Client(base_url=second, headers=owner.headers)
    assert capped.post("/1/account/tokens", json={}).status_code == 201
    assert capped.post("/1/account/tokens").status_code == 201  # no body: defaults
    before = len(owner.get("/1/account/tokens").json())
    _assert_refused(capped.post("/1/account/tokens", json={}), 409, 15002, "over the cap")
    assert len(owner.get("/1/account/tokens").json()) == before


# --------------------------------------------------------------------------- credentials in URLs
def test_services_run_on_a_redis_with_an_acl_user(services: Services, tmp_path: Path) -> None:
    """The README's production Redis URL (ACL user and password in it) works; without them the server refuses."""
    import subprocess

    from tests.conftest import free_port

    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--user", "default", "off", "--user", "facedex", "on", ">s3cret", "~*", "&*", "+@all"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://facedex:s3cret@127.0.0.1:{port}/0"
        wait_for(lambda: _pings(url), 20, "the private redis-server")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(f"redis://127.0.0.1:{port}/0").ping()
        services.start("proxy-acl", "proxy", FACEDEX_REDIS_URL=url)
        health = httpx.get(services.url("proxy-acl") + "/healthcheck").json()
        assert health["status"] == "ok", health
        services.stop("proxy-acl")
    finally:
        server.terminate()
        server.wait(timeout=10)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.exceptions.ConnectionError:
        return False
