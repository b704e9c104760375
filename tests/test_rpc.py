"""The service-to-service client against a real HTTP service: headers and request id sent, errors relayed by code."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import uvicorn
from fastapi import Request, Response

from facedex import wire
from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.http import create_app
from facedex.logs import reset_request_id, set_request_id
from facedex.rpc import ServiceClient
from tests.conftest import free_port


class Echo(msgspec.Struct):
    headers: dict[str, str]


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    app = create_app("echo", Settings(max_body_bytes=1 << 20), title="echo", description="")

    @app.post("/1/echo")
    async def echo(request: Request) -> Response:
        await request.body()
        return Response(wire.encode(Echo(dict(request.headers))), media_type=wire.CONTENT_TYPE)

    @app.post("/1/refuse")
    async def refuse() -> Response:
        raise FacedexError(Errors.LIST_NOT_FOUND, "no such list")

    @app.post("/1/slow")
    async def slow() -> Response:
        await asyncio.sleep(30)
        return Response(b"")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


async def test_headers_and_request_id_go_with_every_call(echo_url: str) -> None:
    client = ServiceClient(echo_url, timeout_s=10)
    client.headers["X-Internal-Token"] = "internal-1"
    try:
        message = wire.ExtractRequest(image=b"x")
        seen = (await client.call("/1/echo", message, Echo)).headers
        assert seen["x-internal-token"] == "internal-1" and seen["content-type"] == wire.CONTENT_TYPE
        assert "x-request-id" not in seen  # outside a request there is none to pass on
        token = set_request_id("caller-42")
        try:
            seen = (await client.call("/1/echo", message, Echo)).headers
        finally:
            reset_request_id(token)
        assert seen["x-request-id"] == "caller-42"
        await client.check_health()
    finally:
        await client.close()


async def test_errors_are_relayed_by_code_and_failures_are_unavailable(echo_url: str) -> None:
    client = ServiceClient(echo_url, timeout_s=10, unavailable=Errors.EXTRACTOR_UNAVAILABLE)
    message = wire.ExtractRequest(image=b"x")
    try:
        with pytest.raises(FacedexError) as refused:
            await client.call("/1/refuse", message, Echo)
        assert refused.value.error is Errors.LIST_NOT_FOUND and refused.value.detail == "no such list"
        with pytest.raises(FacedexError) as slow:
            await client.call("/1/slow", message, Echo, timeout_s=0.5)
        assert slow.value.error is Errors.EXTRACTOR_UNAVAILABLE
        with pytest.raises(FacedexError) as missing:
            await client.call("/1/nothing-here", message, Echo)
        assert missing.value.error is Errors.NOT_FOUND
    finally:
        await client.close()
    dead = ServiceClient(f"http://127.0.0.1:{free_port()}", timeout_s=5, unavailable=Errors.EXTRACTOR_UNAVAILABLE)
    with pytest.raises(FacedexError) as refused_connection:
        await dead.call("/1/echo", message, Echo)
    assert refused_connection.value.error is Errors.EXTRACTOR_UNAVAILABLE
    await dead.close()
    assert httpx.get(echo_url + "/healthcheck").headers["x-request-id"]
