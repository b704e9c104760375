"""What every service promises a client: request ids and an access log, offline /docs; and GET /1/faces in full."""

from __future__ import annotations

import base64
import re
import secrets
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

from tests.conftest import Services


def _descriptor(seed: int) -> dict:
    vec = np.random.default_rng(seed).standard_normal(512).astype("<f4")
    return {"version": 1, "data": base64.b64encode(vec.tobytes()).decode()}


def _wait_for_line(path: Path, needle: str, timeout_s: float = 20) -> str:
    """The access-log line of ``path`` that contains ``needle``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if needle in line and "facedex.access" in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared in {path}")


def test_request_id_is_accepted_returned_and_passed_to_every_service_on_the_way(services: Services, client: httpx.Client) -> None:
    list_id = client.post("/1/lists", json={}).json()["list_id"]
    assert client.post("/1/faces", json={"descriptor": _descriptor(1), "list_ids": [list_id]}).status_code == 201
    request_id = f"contract-{secrets.token_hex(6)}"
    resp = client.post(
        "/1/matcher/faces",
        json={"references": [{"descriptor": _descriptor(1)}], "candidates": {"list_id": list_id, "limit": 3}},
        headers={"X-Request-Id": request_id},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-request-id"] == request_id
    # one access line per service the request crossed, each carrying the caller's id
    api_line = _wait_for_line(services.log_dir / "api.log", request_id)
    assert re.search(r"POST /1/matcher/faces 200 [0-9.]+ ms", api_line), api_line
    assert "POST /1/match 200" in _wait_for_line(services.log_dir / "proxy.log", request_id)
    route = resp.json()["route"]
    matcher_log = "bruteforce.log" if route == "bruteforce" else "proxy.log"
    _wait_for_line(services.log_dir / matcher_log, request_id)


def test_request_id_is_generated_when_missing_or_unusable(services: Services, client: httpx.Client) -> None:
    ids = set()
    for sent in (None, "x" * 65, "has space", "tab\there", ""):
        headers = {"X-Request-Id": sent} if sent is not None else {}
        resp = client.get("/1/lists", headers=headers)
        assert resp.status_code == 200
        returned = resp.headers["x-request-id"]
        assert returned != sent and re.fullmatch(r"[0-9a-f]{32}", returned), returned
        ids.add(returned)
    assert len(ids) == 5  # a new id each time
    # refusals get an id too, including those made before the application (413 from the body limit)
    too_big = client.post("/1/faces", content=b"x" * (9 << 20), headers={"Content-Type": "application/json", "X-Request-Id": "big-1"})
    assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "big-1"
    assert "413" in _wait_for_line(services.log_dir / "api.log", "[big-1]")
    unknown = httpx.get(services.url("manager") + "/no/such/route", headers={"X-Request-Id": "nf-1"})
    assert unknown.status_code == 404 and unknown.headers["x-request-id"] == "nf-1"


def test_access_log_is_json_in_json_format(services: Services) -> None:
    services.start("licenses-json", "licenses", FACEDEX_LOG_FORMAT="json")
    try:
        request_id = f"json-{secrets.token_hex(4)}"
        resp = httpx.get(services.url("licenses-json") + "/version", headers={"X-Request-Id": request_id})
        assert resp.status_code == 200 and resp.headers["x-request-id"] == request_id
        line = _wait_for_line(services.log_dir / "licenses-json.log", request_id)
        entry = orjson.loads(line)
        assert entry["logger"] == "facedex.access" and entry["service"] == "licenses"
        assert entry["request_id"] == request_id
        assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/version", 200)
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0
    finally:
        services.stop("licenses-json")


def test_get_faces_lists_versions_and_lists_like_the_single_face_route(client: httpx.Client) -> None:
    lists = [client.post("/1/lists", json={}).json()["list_id"] for _ in range(2)]
    external = f"ext-{secrets.token_hex(4)}"
    made = [
        client.post("/1/faces", json={"external_id": external, "descriptor": _descriptor(10), "list_ids": lists}),
        client.post("/1/faces", json={"external_id": external, "descriptor": _descriptor(11), "list_ids": lists[:1]}),
        client.post("/1/faces", json={"external_id": external}),  # no descriptor, no list
    ]
    assert all(r.status_code == 201 for r in made), [r.text for r in made]
    ids = [r.json()["face_id"] for r in made]
    for query in ({"external_id": external}, {"list_id": lists[0]}):
        page = client.get("/1/faces", params={**query, "page_size": 10})
        assert page.status_code == 200
        listed = {face["face_id"]: face for face in page.json()}
        expected = ids if "external_id" in query else ids[:2]
        assert sorted(listed) == sorted(expected)
        for face_id in expected:
            single = client.get(f"/1/faces/{face_id}").json()
            assert listed[face_id] == single
    listed = {face["face_id"]: face for face in client.get("/1/faces", params={"external_id": external}).json()}
    assert sorted(listed[ids[0]]["list_ids"]) == sorted(lists) and listed[ids[0]]["descriptor_versions"] == [1]
    assert listed[ids[1]]["list_ids"] == [lists[0]]
    assert listed[ids[2]]["list_ids"] == [] and listed[ids[2]]["descriptor_versions"] == []


def test_docs_of_every_service_use_only_assets_the_service_serves(services: Services) -> None:
    for name in ("api", "proxy", "bruteforce", "indexer", "manager", "licenses", "matcher"):
        base = services.url(name)
        for page in ("/docs", "/redoc"):
            html = httpx.get(base + page).text
            urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"""url:\s*["']([^"']+)["']""", html)
            assert urls, (name, page, html[:500])
            assert not re.search(r"https?://", html.replace(base, "")), f"{name}{page} refers to another host"
            for url in urls:
                assert url.startswith("/"), (name, page, url)
                asset = httpx.get(base + url)
                assert asset.status_code == 200, (name, url, asset.status_code)
                if url.endswith(".js"):
                    assert len(asset.content) > 100_000 and "javascript" in asset.headers["content-type"]
