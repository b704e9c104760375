"""Client side of service-to-service calls: msgpack POSTs with errors relayed by code."""

from __future__ import annotations

import asyncio
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
import msgspec
import orjson

from facedex import wire
from facedex.errors import ErrorCode, Errors, FacedexError, by_code
from facedex.keepalive import KeepAlivePool
from facedex.logs import REQUEST_ID_HEADER, current_request_id

T = TypeVar("T")

# Plain HTTP goes over facedex.keepalive; aiohttp (not httpx) for anything else: with 32 calls in flight httpx's pool
# scanned every connection (one poll() each) to place every request and spent 45 % of the API's CPU there (py-spy).
# Idle connections are not reused after 30 s (and closed when the pool is next used), well before the services' own
# keep-alive (75 s, services.serve): a POST is never written into a connection the server is closing (it cannot be
# safely retried).
MAX_CONNECTIONS = 256
KEEPALIVE_S = 30.0


class Unreachable(FacedexError):
    """The service did not answer (refused, reset, timed out): unlike an error it answered, another instance may."""


class ServiceClient:
    """One keep-alive connection pool to one service.

    ``headers`` go with every call (e.g. an internal credential); the id of the request being served, if any,
    travels as ``X-Request-Id`` so one request can be followed through every service's log. A plain ``http://``
    service is called over :mod:`facedex.keepalive` connections (a fraction of aiohttp's CPU per call), any other
    URL (``https://``) through aiohttp.
    """

    def __init__(self, base_url: str, timeout_s: float, unavailable: ErrorCode = Errors.MATCHER_UNAVAILABLE) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.unavailable = unavailable
        self.headers: dict[str, str] = {}
        url = urlsplit(self.base_url)
        self._plain = (url.hostname, url.port or 80) if url.scheme == "http" and url.hostname and not url.path else None
        self._session: aiohttp.ClientSession | None = None
        self._pool: KeepAlivePool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _in_this_loop(self) -> None:
        """Pools belong to the loop that made them: a client used from a new loop starts new ones."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._session, self._pool, self._loop = None, None, loop

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp pool (non-plain URLs), made on first use in the running loop."""
        self._in_this_loop()
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    @property
    def pool(self) -> KeepAlivePool:
        """The plain-HTTP pool, made on first use in the running loop."""
        self._in_this_loop()
        if self._pool is None:
            assert self._plain is not None
            self._pool = KeepAlivePool(*self._plain, limit=MAX_CONNECTIONS, keepalive_s=KEEPALIVE_S)
        return self._pool

    async def close(self) -> None:
        same_loop = self._loop is asyncio.get_running_loop()
        if self._session is not None and not self._session.closed and same_loop:
            await self._session.close()
        if self._pool is not None and same_loop:
            self._pool.close()
        self._session, self._pool = None, None

    async def _exchange(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
        if self._plain is not None:
            return await self.pool.request(method, path, headers.items(), body)
        async with self.session.request(method, self.base_url + path, data=body or None, headers=headers) as resp:
            return resp.status, await resp.read()

    async def check_health(self) -> None:
        """Raise unless the service's ``/healthcheck`` answers 200 (for the caller's own health check)."""
        async with asyncio.timeout(self.timeout_s):
            status, _ = await self._exchange("GET", "/healthcheck", self.headers)
        if status != 200:
            raise RuntimeError(f"{self.base_url} answered {status}")

    async def call(self, path: str, message: msgspec.Struct, response_type: type[T], timeout_s: float | None = None) -> T:
        """POST ``message``; the answer decoded as ``response_type``, or the service's error raised by its code.

        ``timeout_s`` (default: the client's) bounds the whole call, connecting and a slowly trickling answer included.
        """
        total = self.timeout_s if timeout_s is None else timeout_s
        headers = {"Content-Type": wire.CONTENT_TYPE, **self.headers}
        if request_id := current_request_id():
            headers[REQUEST_ID_HEADER] = request_id
        try:
            async with asyncio.timeout(total):
                status, body = await self._exchange("POST", path, headers, wire.encode(message))
            if status == 200:
                return wire.decode(body, response_type)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:  # OSError: refused, reset, cut short (keepalive)
            raise Unreachable(self.unavailable, f"{self.base_url + path}: {type(exc).__name__}: {exc}") from exc
        try:
            err = orjson.loads(body)
            raise FacedexError(by_code(int(err["error_code"])), str(err.get("detail", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise FacedexError(self.unavailable, f"{self.base_url + path} answered {status}") from None
