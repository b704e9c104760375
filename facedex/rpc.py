"""Client side of service-to-service calls: msgpack POSTs with errors relayed by code."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import httpx
import msgspec
import orjson

from facedex import wire
from facedex.errors import ErrorCode, Errors, FacedexError, by_code
from facedex.logs import REQUEST_ID_HEADER, current_request_id

T = TypeVar("T")

# Idle connections are closed by us after 30 s, well before the services' own keep-alive (75 s, services.serve):
# a POST is never written into a connection the server is closing (it cannot be safely retried).
_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=30)


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
        self.timeout = httpx.Timeout(timeout_s)
        self.unavailable = unavailable
        self.headers: dict[str, str] = {}
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient(timeout=self.timeout, limits=_LIMITS)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def check_health(self) -> None:
        """Raise unless the service's ``/healthcheck`` answers 200 (for the caller's own health check)."""
        resp = await self.client.get(self.base_url + "/healthcheck", headers=self.headers)
        if resp.status_code != 200:
            raise RuntimeError(f"{self.base_url} answered {resp.status_code}")

    async def call(self, path: str, message: msgspec.Struct, response_type: type[T], timeout_s: float | None = None) -> T:
        """POST ``message``; the answer decoded as ``response_type``, or the service's error raised by its code.

        ``timeout_s`` (default: the client's) bounds the whole call: httpx's own timeouts bound each connect/read/write
        step, so a slowly trickling answer could otherwise take longer.
        """
        total = self.timeout_s if timeout_s is None else timeout_s
        url = self.base_url + path
        headers = {"Content-Type": wire.CONTENT_TYPE, **self.headers}
        if request_id := current_request_id():
            headers[REQUEST_ID_HEADER] = request_id
        try:
            async with asyncio.timeout(total):
                resp = await self.client.post(url, content=wire.encode(message), headers=headers, timeout=httpx.Timeout(total))
            body = resp.content
            if resp.status_code == 200:
                return wire.decode(body, response_type)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise Unreachable(self.unavailable, f"{url}: {type(exc).__name__}: {exc}") from exc
        try:
            err = orjson.loads(body)
            raise FacedexError(by_code(int(err["error_code"])), str(err.get("detail", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise FacedexError(self.unavailable, f"{url} answered {resp.status_code}") from None
