"""Bounded matching work and failover between instances, against the real services."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import httpx
import psutil
import pytest

from facedex import internal_auth, wire
from facedex.errors import Errors, FacedexError
from facedex.failover import FailoverClient
from tests.conftest import Services, free_port


def _peak_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        out.append(proc.memory_info().rss)
        time.sleep(0.005)


def test_many_face_id_references_are_refused_before_parsing(services: Services, client: httpx.Client) -> None:
    """150k face-id references (6 MB of valid JSON) are counted and refused without parsing them into objects."""
    list_id = client.post("/1/lists", json={}).json()["list_id"]
    refs = [{"face_id": str(uuid.uuid4())} for _ in range(150_000)]
    body = json.dumps({"references": refs, "candidates": {"list_id": list_id}}).encode()
    assert len(body) < 8 << 20  # under the services' body limit: the matching route's own checks answer
    api = psutil.Process(services.procs["api"].pid)
    before = api.memory_info().rss
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_peak_rss, args=(api.pid, stop, samples))
    sampler.start()
    started = time.monotonic()
    try:
        resp = client.post("/1/matcher/faces", content=body, headers={"Content-Type": "application/json"})
    finally:
        stop.set()
        sampler.join()
    took = time.monotonic() - started
    assert resp.status_code == 422 and resp.json()["error_code"] == Errors.TOO_MANY_REFERENCES.code, resp.text
    assert took < 5.0, f"refused after {took:.1f}s"  # parsing 150k objects would take far longer on this box
    assert max(samples) - before < 2 * len(body) + (16 << 20), f"API memory grew by {(max(samples) - before) >> 20} MiB"
    # a filter of more face ids than allowed is counted too (strings), and the route still works after both
    ids = [str(uuid.uuid4()) for _ in range(110_000)]
    resp = client.post("/1/matcher/faces", json={
        "references": [{"face_id": str(uuid.uuid4())}], "candidates": {"list_id": list_id, "face_ids": ids}})
    assert resp.status_code == 400 and resp.json()["error_code"] == Errors.TOO_MANY_FACES.code, resp.text
    resp = client.post("/1/matcher/faces", json={"references": [{"descriptor": {"data": "AAAA"}}], "candidates": {"list_id": list_id}})
    assert resp.status_code == 400  # a small body is parsed as before (a wrong-length descriptor)


def test_matching_body_limit(services: Services, client: httpx.Client) -> None:
    token = client.headers["Authorization"]
    services.start("api-small", "api", FACEDEX_MATCHING__MAX_BODY_BYTES=str(1 << 20))
    try:
        big = b'{"references": [' + b" " * (2 << 20) + b"]}"
        resp = httpx.post(services.url("api-small") + "/1/matcher/faces", content=big,
                          headers={"Authorization": token, "Content-Type": "application/json"}, timeout=30)
        assert resp.status_code == 413 and resp.json()["error_code"] == Errors.MATCH_BODY_TOO_LARGE.code, resp.text
        # chunked (no Content-Length): refused while streaming
        resp = httpx.post(services.url("api-small") + "/1/matcher/faces", content=iter([big[:1 << 19]] * 4),
                          headers={"Authorization": token, "Content-Type": "application/json"}, timeout=30)
        assert resp.status_code == 413 and resp.json()["error_code"] == Errors.MATCH_BODY_TOO_LARGE.code, resp.text
    finally:
        services.stop("api-small")


async def test_failover_skips_a_dead_instance_and_a_4xx_is_final(services: Services) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = FailoverClient([dead, services.url("bruteforce")], timeout_s=10, cooldown_s=30)
    client.headers = services.internal
    account, list_id = uuid.uuid4().bytes, uuid.uuid4().bytes
    req = internal_auth.sign_request(services.internal_token, wire.MatchRequest(account, list_id, 1, b"\0" * 2048, 5), 600)  # as the API
    try:
        for _ in range(3):  # whichever instance a call starts at, it ends at the live one, whose 404 is final
            with pytest.raises(FacedexError) as err:
                await client.call("/1/match", req, wire.MatchResponse)
            assert err.value.error is Errors.LIST_NOT_FOUND
        assert client.down_until[0] > time.monotonic() and client.down_until[1] == 0.0
        await client.healthy()
        lone = FailoverClient([dead], timeout_s=5)
        with pytest.raises(FacedexError) as err:
            await lone.call("/1/match", req, wire.MatchResponse)
        assert err.value.error is Errors.MATCHER_UNAVAILABLE
        with pytest.raises(RuntimeError):
            await lone.healthy()
        await lone.close()
    finally:
        await client.close()
    await asyncio.sleep(0)
