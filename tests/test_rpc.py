"""The service-to-service client against a real HTTP service: headers and request id sent, errors relayed by code."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import msgspec
import pytest
import uvicorn
from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from facedex import wire
from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.http import create_app
from facedex.logs import reset_request_id, set_request_id
from facedex.rpc import ServiceClient
from tests.conftest import free_port


class Echo(msgspec.Struct):
    headers: dict[str, str]
    peer: int = 0  # the caller's port: the same one on a reused connection


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    app = create_app("echo", Settings(max_body_bytes=1 << 20), title="echo", description="")

    @app.post("/1/echo")
    async def echo(request: Request) -> Response:
        await request.body()
        return Response(wire.encode(Echo(dict(request.headers), request.client.port if request.client else 0)),
                        media_type=wire.CONTENT_TYPE)

    @app.post("/1/chunked")
    async def chunked(request: Request) -> StreamingResponse:  # no length: the answer comes in chunks
        await request.body()
        data = wire.encode(Echo({"chunked": "yes"}))

        async def pieces():  # type: ignore[no-untyped-def]
            for i in range(0, len(data), 3):
                yield data[i : i + 3]
                await asyncio.sleep(0)

        return StreamingResponse(pieces(), media_type=wire.CONTENT_TYPE)

    @app.post("/1/close")
    async def close(request: Request) -> Response:  # answers, then closes the connection
        await request.body()
        return Response(wire.encode(Echo({})), media_type=wire.CONTENT_TYPE, headers={"Connection": "close"})

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


async def test_connections_are_kept_alive_and_any_framing_is_read(echo_url: str) -> None:
    """Plain-HTTP calls go over kept-alive connections (facedex.keepalive): one connection for calls in turn, a
    chunked answer read whole, a connection the server closes (or a call cut short) never reused."""
    client = ServiceClient(echo_url, timeout_s=10)
    message = wire.ExtractRequest(image=b"x" * 100_000)  # a body larger than one read
    try:
        peers = {(await client.call("/1/echo", message, Echo)).peer for _ in range(5)}
        assert len(peers) == 1, peers
        assert (await client.call("/1/chunked", message, Echo)).headers == {"chunked": "yes"}
        await client.call("/1/close", message, Echo)  # the server closed that connection: the next call opens one
        after_close = (await client.call("/1/echo", message, Echo)).peer
        assert after_close not in peers
        with pytest.raises(FacedexError):
            await client.call("/1/slow", message, Echo, timeout_s=0.2)  # cut short: that connection is dropped
        results = await asyncio.gather(*(client.call("/1/echo", message, Echo) for _ in range(8)))  # in parallel
        assert len({r.peer for r in results}) > 1 and all(r.headers["content-type"] == wire.CONTENT_TYPE for r in results)
    finally:
        await client.close()


async def _next_request(reader: asyncio.StreamReader) -> bytes | None:
    """The head of the next request on a raw connection (its body read and dropped); None once the client is gone."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    await reader.readexactly(length)
    return head


@contextlib.asynccontextmanager
async def _raw_server(answer: Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]) -> AsyncIterator[int]:
    """A bare HTTP/1.1 server on a free port (yielded): ``answer(head, writer)`` writes each request's answer and says
    whether the connection goes on."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await _next_request(reader)) is not None and await answer(head, writer):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_keepalive_pool_reads_interim_answers_and_sweeps_expired_connections() -> None:
    """facedex.keepalive against a raw server: a 1xx sent on its own is skipped for the real answer; an answer ended
    only by closing is refused as incomplete; idle connections past ``keepalive_s`` are closed on the next use."""
    from facedex.keepalive import KeepAlivePool, ProtocolError

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if head.startswith(b"POST /interim"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)  # the real answer in a later read
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
        elif head.startswith(b"POST /unframed"):
            writer.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
            await writer.drain()
            return False  # ended by closing
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async with _raw_server(answer) as port:
        pool = KeepAlivePool("127.0.0.1", port, limit=16, keepalive_s=0.3)
        try:
            assert await pool.request("POST", "/interim", [], b"x") == (200, b"final")
            assert await pool.request("POST", "/plain", [], b"x") == (200, b"ok")  # the same connection, nothing left over
            with pytest.raises(ProtocolError):
                await pool.request("POST", "/unframed", [], b"x")
            await asyncio.gather(*(pool.request("POST", "/plain", [], b"x") for _ in range(8)))  # a burst opens several
            assert len(pool._idle) > 1
            await asyncio.sleep(0.4)  # all expired
            assert await pool.request("POST", "/plain", [], b"x") == (200, b"ok")
            assert len(pool._idle) == 1  # the expired ones were closed, the one just used is kept
        finally:
            pool.close()


async def test_load_client_reads_the_answers_headers_past_an_interim_one() -> None:
    """The bench's load client (facedex.bench.loadgen, over facedex.keepalive) returns the final answer's headers
    (names lower-cased, a header split across reads whole, a repeated one joined), not the interim 1xx's, and
    nothing leaks into the next answer on the same connection. Two answers to one request, or a 101, are refused
    (ProtocolError) and that connection is not reused."""
    from facedex.bench.loadgen import LoadClient
    from facedex.keepalive import ProtocolError

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        path = head.split(b" ")[1]
        if path == b"/timed":
            writer.write(b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nServer-Timing: search;dur=0.")
            await writer.drain()
            await asyncio.sleep(0.05)  # the rest of the header in a later read
            writer.write(b"250, total;dur=1.5\r\nVary: a\r\nVary: b\r\nContent-Length: 2\r\n\r\nok")
        elif path == b"/double":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        elif path == b"/upgrade":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope")
        return True

    async with _raw_server(answer) as port, LoadClient(f"http://127.0.0.1:{port}") as client:
        status, headers, body = await client.post("/timed", b"{}", {"Content-Type": "application/json"})
        assert (status, body) == (200, b"ok") and headers["vary"] == "a, b"
        assert headers["server-timing"] == "search;dur=0.250, total;dur=1.5" and "x-interim" not in headers
        status, headers, body = await client.post("/missing", b"{}", {})
        assert (status, body) == (404, b"nope") and "server-timing" not in headers
        assert client.pool is not None and len(client.pool._idle) == 1  # one connection, reused
        for path in ("/double", "/upgrade"):
            with pytest.raises(ProtocolError):
                await client.post(path, b"{}", {})
            assert not client.pool._idle  # that connection was closed
        assert (await client.post("/missing", b"{}", {}))[0] == 404  # a new connection serves
