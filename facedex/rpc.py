"""Client side of service-to-service calls: msgpack POSTs with errors relayed by code."""

from __future__ import annotations

from typing import TypeVar

import aiohttp
import msgspec
import orjson

from facedex import wire
from facedex.errors import ErrorCode, Errors, FacedexError, by_code

T = TypeVar("T")


class ServiceClient:
    """One keep-alive connection pool to one service."""

    def __init__(self, base_url: str, timeout_s: float, unavailable: ErrorCode = Errors.MATCHER_UNAVAILABLE) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.unavailable = unavailable
        self.headers: dict[str, str] = {}  # sent with every call (the internal token: facedex.internal_auth.bearer)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, path: str, message: msgspec.Struct, response_type: type[T]) -> T:
        url = self.base_url + path
        try:
            async with self.session.post(
                url, data=wire.encode(message), headers={**self.headers, "Content-Type": wire.CONTENT_TYPE}
            ) as resp:
                body = await resp.read()
                if resp.status == 200:
                    return wire.decode(body, response_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FacedexError(self.unavailable, f"{url}: {type(exc).__name__}: {exc}") from exc
        try:
            err = orjson.loads(body)
            raise FacedexError(by_code(int(err["error_code"])), str(err.get("detail", "")))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise FacedexError(self.unavailable, f"{url} answered {resp.status}") from None
