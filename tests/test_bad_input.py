"""Bad input gets a 4xx with a stable error code, and the Faces DB is left exactly as it was."""

from __future__ import annotations

import base64
import uuid

import asyncpg
import httpx
import numpy as np
import pytest

from tests.conftest import Services, new_client

GOOD = (np.ones(512) / np.sqrt(512)).astype("<f4")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


async def db_state(pool: asyncpg.Pool) -> tuple:
    """Everything a request could change: row counts and a digest of every table's content."""
    parts = []
    for table in ("accounts", "tokens", "lists", "faces", "descriptors", "list_faces", "list_changes"):
        parts.append(await pool.fetchval(f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t"))
    return tuple(parts)


@pytest.fixture(scope="module")
def setup(services: Services):
    client = new_client(services)
    list_id = client.post("/1/lists", json={}).json()["list_id"]
    face = client.post("/1/faces", json={"descriptor": {"data": b64(GOOD.tobytes())}, "list_ids": [list_id]}).json()
    assert "face_id" in face, face
    return client, list_id, face["face_id"]


def descriptor(raw: bytes, version: int = 1) -> dict:
    return {"version": version, "data": b64(raw)}


def match_body(list_id: str, ref: dict | None = None, **cand: object) -> dict:
    return {"references": [ref or {"descriptor": descriptor(GOOD.tobytes())}], "candidates": {"list_id": list_id, **cand}}


def cases(list_id: str, face_id: str) -> list[tuple[str, str, str, object, int, int]]:
    """(name, method, path, json body, status, error code)."""
    nan = GOOD.copy()
    nan[7] = np.nan
    inf = GOOD.copy()
    inf[0] = np.inf
    short = GOOD[:511].tobytes()
    missing_list = str(uuid.uuid4())
    return [
        ("short descriptor", "POST", "/1/faces", {"descriptor": descriptor(short)}, 400, 11002),
        ("float64 descriptor", "POST", "/1/faces", {"descriptor": descriptor(GOOD.astype("<f8").tobytes())}, 400, 11002),
        ("NaN descriptor", "POST", "/1/faces", {"descriptor": descriptor(nan.tobytes())}, 400, 11003),
        ("inf descriptor", "POST", "/1/faces", {"descriptor": descriptor(inf.tobytes())}, 400, 11003),
        ("zero descriptor", "POST", "/1/faces", {"descriptor": descriptor(bytes(2048))}, 400, 11004),
        ("bad base64", "POST", "/1/faces", {"descriptor": {"version": 1, "data": "***not base64***"}}, 400, 11005),
        ("unknown version", "POST", "/1/faces", {"descriptor": descriptor(GOOD.tobytes(), 999)}, 400, 11001),
        ("unknown list on create", "POST", "/1/faces", {"list_ids": [missing_list]}, 404, 12001),
        (
            "one bad face in a batch",
            "POST",
            "/1/faces/batch",
            {"faces": [{"descriptor": descriptor(GOOD.tobytes())}, {"descriptor": descriptor(short)}], "list_ids": [list_id]},
            400,
            11002,
        ),
        ("batch over 1000", "POST", "/1/faces/batch", {"faces": [{}] * 1001}, 422, 10002),
        ("unknown field", "POST", "/1/lists", {"user_data": "x", "colour": "red"}, 422, 10002),
        ("user_data too long", "POST", "/1/lists", {"user_data": "x" * 5000}, 422, 10002),
        ("attach unknown face", "PATCH", f"/1/lists/{list_id}/faces", {"action": "attach", "face_ids": [str(uuid.uuid4())]}, 404, 13001),
        ("attach to unknown list", "PATCH", f"/1/lists/{missing_list}/faces", {"action": "attach", "face_ids": [face_id]}, 404, 12001),
        ("bad action", "PATCH", f"/1/lists/{list_id}/faces", {"action": "move", "face_ids": [face_id]}, 422, 10002),
        ("not a uuid", "GET", "/1/lists/not-a-uuid", None, 422, 10002),
        ("unknown route", "GET", "/1/nothing", None, 404, 10006),
        ("match unknown list", "POST", "/1/matcher/faces", match_body(missing_list), 404, 12001),
        ("limit 0", "POST", "/1/matcher/faces", match_body(list_id, limit=0), 422, 14001),
        ("limit 10^9", "POST", "/1/matcher/faces", match_body(list_id, limit=10**9), 422, 14001),
        ("threshold 2", "POST", "/1/matcher/faces", match_body(list_id, threshold=2), 422, 14002),
        ("NaN reference", "POST", "/1/matcher/faces", match_body(list_id, {"descriptor": descriptor(nan.tobytes())}), 400, 11003),
        ("reference both", "POST", "/1/matcher/faces", match_body(list_id, {"face_id": face_id, "descriptor": descriptor(GOOD.tobytes())}), 422, 10002),
        ("reference unknown face", "POST", "/1/matcher/faces", match_body(list_id, {"face_id": str(uuid.uuid4())}), 404, 13001),
        (
            "too many references",
            "POST",
            "/1/matcher/faces",
            {"references": [{"face_id": face_id}] * 65, "candidates": {"list_id": list_id}},
            422,
            14003,
        ),
        (
            "mixed versions",
            "POST",
            "/1/matcher/faces",
            {
                "references": [{"descriptor": descriptor(GOOD.tobytes())}, {"descriptor": descriptor(GOOD[:128].tobytes() * 1, 2)}],
                "candidates": {"list_id": list_id},
            },
            400,
            14005,
        ),
    ]


async def test_bad_requests_change_nothing(setup, pool: asyncpg.Pool) -> None:
    client, list_id, face_id = setup
    before = await db_state(pool)
    for name, method, path, body, status, code in cases(list_id, face_id):
        resp = client.request(method, path, json=body)
        assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text}"
        err = resp.json()
        assert err["error_code"] == code, f"{name}: {err}"
        assert err["desc"] and err["detail"], name
    assert await db_state(pool) == before


async def test_malformed_and_huge_bodies(setup, pool: asyncpg.Pool, services: Services) -> None:
    client, list_id, _ = setup
    before = await db_state(pool)
    resp = client.post("/1/faces", content=b'{"descriptor": {', headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error_code"] == 10001
    resp = client.post("/1/matcher/faces", content=b"\xff\xfe garbage", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json()["error_code"] == 10001
    huge = b'{"user_data": "' + b"x" * (9 << 20) + b'"}'  # the test services allow 8 MiB
    resp = client.post("/1/lists", content=huge, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error_code"] == 10003

    def chunks():
        for _ in range(10):
            yield b"x" * (1 << 20)

    resp = client.post("/1/lists", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error_code"] == 10003
    # internal services refuse garbage with a code too
    for service, path in (("bruteforce", "/1/match"), ("proxy", "/1/match"), ("proxy", "/1/match_sets")):
        for body in (b"\x00\x01junk", b"\x81\xa1x\x01"):  # not msgpack; msgpack of the wrong shape
            resp = httpx.post(services.url(service) + path, content=body, headers=services.internal)
            assert resp.status_code == 422 and resp.json()["error_code"] == 10002, (service, path, body, resp.text)
    assert await db_state(pool) == before
