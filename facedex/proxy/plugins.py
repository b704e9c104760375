"""Matching plugins: the routes the proxy may prefer over brute force.

A plugin looks at each request (``accepts``, cheap and synchronous) and may
serve it (``match``). Any exception from ``match`` (``Rematch`` to decline on
purpose, a timeout, a broken connection) sends the request to the brute-force
Matcher, which always answers, and the reason is returned in
``MatchResponse.fallback_reason``. Plugins are named in the setting
``proxy_plugins`` as ``"module:Class"``; each is built with the settings.
"""

from __future__ import annotations

import importlib
import time
from typing import Protocol, runtime_checkable

import msgspec

from facedex import timing, wire
from facedex.config import Settings
from facedex.failover import FailoverClient
from facedex.internal_auth import bearer


class Rematch(Exception):
    """Raised by a plugin that cannot serve a request after all; the proxy falls back to brute force."""


@runtime_checkable
class MatchingPlugin(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def accepts(self, req: wire.MatchRequest) -> bool: ...

    async def match(self, req: wire.MatchRequest) -> wire.MatchResponse: ...


PRIOR_FACE_COST_S = 1e-7  # one face of a 512-d float32 scan at ~20 GB/s: 1M faces in ~0.1 s, as measured on 2 cores


class BruteForceRoute:
    """The route of last resort: the brute-force Matcher service."""

    name = "bruteforce"

    def __init__(self, settings: Settings) -> None:
        m = settings.matching
        # several brute-force Matchers: a dead one is skipped within the request (facedex.failover)
        self.client = FailoverClient(m.bruteforce_urls or [settings.bruteforce.url], m.proxy_timeout_s,
                                     cooldown_s=m.instance_cooldown_s)
        self.client.headers = bearer(settings.internal_token)
        self.in_flight = 0
        self.face_cost_s: float | None = None  # moving average of the scan's seconds per face

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.client.close()

    def accepts(self, req: wire.MatchRequest) -> bool:
        return True

    async def match(self, req: wire.MatchRequest) -> wire.MatchResponse:
        started = time.perf_counter()
        self.in_flight += 1
        try:
            resp = await self.client.call("/1/match", req, wire.MatchResponse)
        finally:
            self.in_flight -= 1
        scan_ms = (resp.timings or {}).get(timing.SEARCH)
        if scan_ms and resp.list_size >= 1000:  # the scan's cost per face, learned from real answers
            cost = scan_ms / 1000 / resp.list_size
            self.face_cost_s = cost if self.face_cost_s is None else 0.8 * self.face_cost_s + 0.2 * cost
        return msgspec.structs.replace(resp, timings=timing.close_round_trip(resp.timings, timing.since(started)))

    def expected_seconds(self, list_size: int) -> float:
        """How long a brute-force answer over ``list_size`` faces would take now.

        Why: a preferred route that is backed up sheds a request here only if this is faster; at 1M faces a
        brute-force scan costs ~45x an indexed search, and shedding to it under load deepened the overload.
        Before any answer is seen the scan is costed at ``PRIOR_FACE_COST_S`` (with no estimate at all, a cold
        start under load shed a 1M list's requests here and loaded its 2 GB matrix in the middle of the burst).
        """
        return (self.in_flight + 1) * list_size * (self.face_cost_s or PRIOR_FACE_COST_S)


def load_plugins(settings: Settings) -> list[MatchingPlugin]:
    plugins: list[MatchingPlugin] = []
    for spec in settings.proxy_plugins:
        module_name, _, class_name = spec.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        plugin = cls(settings)
        if not isinstance(plugin, MatchingPlugin):
            raise TypeError(f"{spec} does not implement MatchingPlugin")
        plugins.append(plugin)
    return plugins
