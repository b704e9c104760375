"""Client side of service-to-service calls: msgpack POSTs with errors relayed by code."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import aiohttp
import msgspec
import orjson

from facedex import wire
from facedex.errors import ErrorCode, Errors, FacedexError, by_code
from facedex.logs import REQUEST_ID_HEADER, current_request_id

T = TypeVar("T")

# aiohttp, not httpx, on this hot path: with 32 calls in flight httpx's pool scanned every connection (one poll()
# each) to place every request and spent 45 % of the API's CPU there (py-spy, bench e2e at 100k, c=32).
# Idle connections are closed by us after 30 s, well before the services' own keep-alive (75 s, services.serve):
# a POST is never written into a connection the server is closing (it cannot be safely retried).
MAX_CONNECTIONS = 256
KEEPALIVE_S = 30.0


class Unreachable(FacedexError):
    """The service did not answer (refused, reset, timed out): unlike an error it answered, another instance may."""


class ServiceClient:
    """One keep-alive connection pool to one service.

    ``headers`` go with every call (e.g. an internal credential); the id of the request being served, if any,
    travels as ``X-Request-Id`` so one request can be followed through every service's log.
    """

    def __init__(self, base_url: str, timeout_s: float, unavailable: ErrorCode = Errors.MATCHER_UNAVAILABLE) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.unavailable = unavailable
        self.headers: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pool, made on first use in the running loop (a session belongs to the loop that made it)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout_s))
            self._loop = loop
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None

    async def check_health(self) -> None:
        """Raise unless the service's ``/healthcheck`` answers 200 (for the caller's own health check)."""
        async with self.session.get(self.base_url + "/healthcheck", headers=self.headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{self.base_url} answered {resp.status}")

    async def call(self, path: str, message: msgspec.Struct, response_type: type[T], timeout_s: float | None = None) -> T:
        """POST ``message``; the answer decoded as ``response_type``, or the service's error raised by its code.

        ``timeout_s`` (default: the client's) bounds the whole call, connecting and a slowly trickling answer included.
        """
        total = self.timeout_s if timeout_s is None else timeout_s
        url = self.base_url + path
        headers = {"Content-Type": wire.CONTENT_TYPE, **self.headers}
        if request_id := current_request_id():
            headers[REQUEST_ID_HEADER] = request_id
        try:
            async with asyncio.timeout(total):
                async with self.session.post(url, data=wire.encode(message), headers=headers) as resp:
                    status = resp.status
                    body = await resp.read()
            if status == 200:
                return wire.decode(body, response_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(self.unavailable, f"{url}: {type(exc).__name__}: {exc}") from exc
        try:
            err = orjson.loads(body)
            raise FacedexError(by_code(int(err["error_code"])), str(err.get("detail", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise FacedexError(self.unavailable, f"{url} answered {status}") from None
