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


class BruteForceRoute:
    """The route of last resort: the brute-force Matcher service."""

    name = "bruteforce"

    def __init__(self, settings: Settings) -> None:
        m = settings.matching
        # several brute-force Matchers: a dead one is skipped within the request (facedex.failover)
        self.client = FailoverClient(m.bruteforce_urls or [settings.bruteforce.url], m.proxy_timeout_s,
                                     cooldown_s=m.instance_cooldown_s)
        self.client.headers = bearer(settings.internal_token)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.client.close()

    def accepts(self, req: wire.MatchRequest) -> bool:
        return True

    async def match(self, req: wire.MatchRequest) -> wire.MatchResponse:
        started = time.perf_counter()
        resp = await self.client.call("/1/match", req, wire.MatchResponse)
        return msgspec.structs.replace(resp, timings=timing.close_round_trip(resp.timings, timing.since(started)))


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
