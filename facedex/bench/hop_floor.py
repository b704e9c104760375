"""The floor under every hop of ``bench e2e``: chains of bare HTTP servers that do nothing, on the same machine.

Why: a match crosses three HTTP hops on the brute-force route (client -> API -> proxy -> Matcher) and two plus a
Redis stream on the indexed one. How much of a hop is this machine (loopback TCP, process wake-ups, the event
loop) and how much is facedex is only known against the same hop with nothing in it. Each server here is a raw
ASGI app on uvicorn with the services' own settings (uvloop, httptools, no access log) that reads the body and
forwards it over the services' own keep-alive connections (:mod:`facedex.keepalive`) to the next one, or answers
a small body; the client is the bench's (:mod:`facedex.bench.loadgen`), one request at a time and in a closed loop at each of the run's
concurrency levels.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np

from facedex.bench.common import interrupt
from facedex.bench.platform import _exit_on_sigterm, _free_port

BODY_BYTES = 2800  # about a JSON match request with one 512-d base64 reference
ANSWER = b'{"matches":[]}' * 40  # about a JSON answer of ten results


def _app(next_url: str | None) -> Any:
    from urllib.parse import urlsplit

    from facedex import wire
    from facedex.keepalive import KeepAlivePool
    from facedex.rpc import KEEPALIVE_S, MAX_CONNECTIONS

    state: dict[str, KeepAlivePool] = {}
    nxt = urlsplit(next_url) if next_url else None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if "pool" in state:
                        state["pool"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if nxt is not None and scope["method"] == "POST":
            if "pool" not in state:  # made in the serving loop, as the services' own pools are
                state["pool"] = KeepAlivePool(nxt.hostname or "127.0.0.1", nxt.port or 80, MAX_CONNECTIONS, KEEPALIVE_S)
            _, out = await state["pool"].request("POST", "/", [("Content-Type", wire.CONTENT_TYPE)], body)
        else:
            out = ANSWER
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})

    return app


async def _ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bare server for {url} exited with {proc.returncode}")
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare server at {url} did not start")
            await asyncio.sleep(0.1)


async def _load(url: str, concurrency: int, requests: int) -> dict[str, float]:
    """p50 / p99 ms and requests/s of ``requests`` POSTs from ``concurrency`` callers in a closed loop (as ``bench e2e``
    drives the platform), after a tenth as many to warm up."""
    from facedex.bench.loadgen import LoadClient

    body = b"x" * BODY_BYTES
    times: list[float] = []
    async with LoadClient(url) as client:
        async def caller(left: list[int], into: list[float] | None) -> None:
            while left[0] > 0:
                left[0] -= 1
                started = time.perf_counter()
                async with asyncio.timeout(60):
                    await client.post("/", body, {"Content-Type": "application/json"})
                if into is not None:
                    into.append(time.perf_counter() - started)

        warm = [max(requests // 10, concurrency)]
        await asyncio.gather(*(caller(warm, None) for _ in range(concurrency)))
        left = [requests]
        started = time.perf_counter()
        await asyncio.gather(*(caller(left, times) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(times) * 1000
    return {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "throughput_rps": requests / wall}


def measure(hops: tuple[int, ...] = (1, 3), requests: int = 2000, levels: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """The floor of each chain of ``n`` bare servers (``n`` in ``hops``, one chain at a time): ``out[str(n)]`` is its
    p50 ms one request at a time; ``out["levels"][str(n)][str(c)]`` its p50, p99 and requests/s at each concurrency
    ``c`` in ``levels`` (what a closed loop of ``c`` callers can get through the hops alone on this machine)."""

    previous = _exit_on_sigterm()  # a plain kill still stops the servers (the finally below)
    try:
        return _measure(hops, requests, levels)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _measure(hops: tuple[int, ...], requests: int, levels: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {"levels": {}}
    for n in hops:
        ports = [_free_port() for _ in range(n)]
        procs = []
        try:
            for i, port in enumerate(ports):
                nxt = f"http://127.0.0.1:{ports[i + 1]}/" if i + 1 < n else ""
                procs.append(subprocess.Popen([sys.executable, "-m", "facedex.bench.hop_floor", str(port), nxt],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ)))
            for port, proc in zip(ports, procs, strict=True):
                asyncio.run(_ready(f"http://127.0.0.1:{port}/", proc))
            url = f"http://127.0.0.1:{ports[0]}/"
            by_level = {str(c): asyncio.run(_load(url, c, requests)) for c in sorted({1, *levels})}
            out[str(n)] = by_level["1"]["p50_ms"]
            out["levels"][str(n)] = by_level
        finally:
            for p in procs:
                interrupt(p, 10)
    return out


def _serve(port: int, next_url: str | None) -> None:
    import uvicorn

    uvicorn.run(_app(next_url), host="127.0.0.1", port=port, log_config=None, access_log=False,
                timeout_keep_alive=75)  # as the services (facedex.services): longer than the pools keep a connection


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None)
