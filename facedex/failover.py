"""Calls to one of several instances of a service, with failover within the call.

Why: the API -> proxy and proxy -> brute-force hops must not be single points of
failure. Each call starts at the next instance in turn (spreading load) among
those not cooling down; an instance that refuses the connection, resets it,
times out or answers 500 is skipped for ``cooldown_s`` and the call goes on to
the next one, all within the call's one timeout. An error a service answered
on purpose (4xx, or a 503 such as "Faces DB unreachable") is final.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TypeVar

import msgspec

from facedex.errors import ErrorCode, Errors, FacedexError
from facedex.rpc import ServiceClient, Unreachable

log = logging.getLogger(__name__)

T = TypeVar("T")


class FailoverClient:
    def __init__(self, urls: list[str], timeout_s: float, unavailable: ErrorCode = Errors.MATCHER_UNAVAILABLE,
                 cooldown_s: float = 2.0) -> None:
        if not urls:
            raise ValueError("FailoverClient needs at least one URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.clients = [ServiceClient(u, timeout_s, unavailable) for u in self.urls]
        self.timeout_s = timeout_s
        self.unavailable = unavailable
        self.cooldown_s = cooldown_s
        self.down_until = [0.0] * len(urls)
        self._next = 0

    @property
    def headers(self) -> dict[str, str]:
        return self.clients[0].headers

    @headers.setter
    def headers(self, value: dict[str, str]) -> None:
        """Sent with every call to every instance (the internal token)."""
        for client in self.clients:
            client.headers = dict(value)

    def _order(self) -> list[int]:
        """Instances to try: round robin over the healthy ones, then the cooling ones (better than failing)."""
        n = len(self.clients)
        start = self._next
        self._next = (self._next + 1) % n
        ring = [(start + i) % n for i in range(n)]
        now = time.monotonic()
        return [i for i in ring if self.down_until[i] <= now] + [i for i in ring if self.down_until[i] > now]

    async def call(self, path: str, message: msgspec.Struct, response_type: type[T]) -> T:
        """The first answer of an instance; all tries together within ``timeout_s``.

        Only an instance that did not answer (or failed with 500) is skipped: an error a service answered on purpose
        (a 4xx, a 503 such as "Faces DB unreachable") is the answer every instance would give, so it is final, and
        retrying it elsewhere would only multiply the load when the system is already in trouble.
        """
        deadline = time.monotonic() + self.timeout_s
        last: FacedexError | None = None
        for i in self._order():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                result = await self.clients[i].call(path, message, response_type, timeout_s=remaining)
            except FacedexError as exc:
                if not isinstance(exc, Unreachable) and exc.error.status != 500:
                    raise
                last = exc
                self.down_until[i] = time.monotonic() + self.cooldown_s
                log.warning("%s%s failed (%s %s); trying the next instance", self.urls[i], path, exc.error.code, exc.detail)
                continue
            self.down_until[i] = 0.0
            return result
        raise last or FacedexError(self.unavailable, f"no instance of {', '.join(self.urls)} answered within {self.timeout_s}s")

    async def healthy(self, timeout_s: float = 2.0) -> None:
        """A health check: passes while at least one instance answers its ``/healthcheck`` with 200."""

        async def one(client: ServiceClient) -> bool:
            try:
                async with asyncio.timeout(timeout_s):
                    await client.check_health()
                return True
            except Exception:
                return False

        ok = await asyncio.gather(*(one(c) for c in self.clients))
        if not any(ok):
            raise RuntimeError(f"no healthy instance of {', '.join(self.urls)}")

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
