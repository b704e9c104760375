"""The load generator's HTTP client for the timed requests of ``bench e2e`` and its hop floor.

Why not aiohttp: on this 2-core machine the client shares the cores with the platform it measures, and aiohttp's
client spent 0.4-0.6 ms of CPU per match request at one request at a time (the client column of the e2e CPU table),
about what a whole service hop costs. Load generators are lean for that reason (wrk is C). This one writes each
request to a kept-alive HTTP/1.1 connection and parses the answer with httptools (:mod:`facedex.keepalive`, the
services' own client); ``https://`` URLs go through aiohttp.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp

from facedex.keepalive import KeepAlivePool
from facedex.rpc import KEEPALIVE_S

Answer = tuple[int, dict[str, str], bytes]  # status, headers (names lower-cased), body


class LoadClient:
    """POSTs to one server over at most ``limit`` connections."""

    def __init__(self, url: str, limit: int = 256) -> None:
        parts = urlsplit(url)
        self.base = parts.path.rstrip("/")
        self.pool: KeepAlivePool | None = None
        self.session: aiohttp.ClientSession | None = None
        self.url = url.rstrip("/")
        if parts.scheme == "http":
            self.pool = KeepAlivePool(parts.hostname or "127.0.0.1", parts.port or 80, limit, KEEPALIVE_S)
        else:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        if self.pool is not None:
            out: dict[str, str] = {}
            status, answer = await self.pool.request("POST", self.base + path, headers.items(), body, headers_out=out)
            return status, out, answer
        assert self.session is not None
        async with self.session.post(self.url + path, data=body, headers=headers) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.session is not None:
            await self.session.close()
