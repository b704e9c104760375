"""Matcher Proxy service: ``POST /1/match`` tries each plugin that accepts the request, then brute force."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel, Field

from facedex import timing, wire
from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.http import create_app, errors, msgpack_body
from facedex.internal_auth import verify as verify_identity
from facedex.metrics import MATCH_ROUTE
from facedex.proxy.plugins import BruteForceRoute, MatchingPlugin, load_plugins

log = logging.getLogger(__name__)


class PluginsOut(BaseModel):
    plugins: list[str] = Field(..., description="Routes tried in order; brute force is always last.")


class Router:
    def __init__(self, plugins: list[MatchingPlugin], fallback: BruteForceRoute) -> None:
        self.plugins = plugins
        self.fallback = fallback

    async def match(self, req: wire.MatchRequest) -> wire.MatchResponse:
        reason = None
        for plugin in self.plugins:
            if not plugin.accepts(req):
                continue
            try:
                resp = await plugin.match(req)
                MATCH_ROUTE.labels(resp.route, "").inc()
                return resp
            except FacedexError as exc:
                reason = f"{plugin.name}: {exc.error.code} {exc.detail}"
            except Exception as exc:  # any failure of a preferred route falls back to brute force
                reason = f"{plugin.name}: {type(exc).__name__}: {exc}"
            log.warning("falling back to brute force for request %s: %s", req.request_id, reason)
            break
        resp = await self.fallback.match(req)
        MATCH_ROUTE.labels(resp.route, reason.split(":", 1)[0] if reason else "").inc()
        return msgspec.structs.replace(resp, fallback_reason=reason) if reason else resp


def build_app(settings: Settings) -> FastAPI:
    fallback = BruteForceRoute(settings)
    router = Router(load_plugins(settings), fallback)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for plugin in router.plugins:
            await plugin.start()
        yield
        for plugin in router.plugins:
            await plugin.stop()
        await fallback.stop()

    app = create_app(
        "proxy",
        title="facedex Matcher Proxy",
        description="Routes each matching request to a preferred matcher (plugins) or to the brute-force Matcher.",
        max_body_bytes=settings.max_body_bytes,
        internal=True,
        internal_token=settings.internal_token,
        lifespan=lifespan,
    )

    app.state.health["bruteforce"] = fallback.client.healthy
    for plugin in router.plugins:  # a plugin's background loops (e.g. the indexed reply listener)
        check = getattr(plugin, "health_check", None)
        if check is not None:
            app.state.health[f"plugin:{plugin.name}"] = check

    @app.post(
        "/1/match", tags=["matching"], summary="Match references against one list (msgpack)",
        openapi_extra=msgpack_body(wire.MatchRequest, wire.MatchResponse),
        responses=errors(Errors.DESCRIPTOR_VERSION_UNKNOWN, Errors.DESCRIPTOR_LENGTH, Errors.LIST_NOT_FOUND, Errors.MATCHER_UNAVAILABLE),
    )
    async def match_route(request: Request) -> Response:
        body = await request.body()
        started = time.perf_counter()
        req = wire.decode(body, wire.MatchRequest)
        verify_identity(settings.internal_token, req)  # before any route sees it: no plugin serves a forged account
        resp = await router.match(req)
        # this proxy's own part: all it spent on the request but the matcher's reported hops (facedex.timing)
        hops = resp.timings or {}
        hops = {**hops, timing.ROUTE: max(timing.since(started) - timing.downstream(hops), 0.0)}
        return Response(wire.encode(msgspec.structs.replace(resp, timings=hops)), media_type=wire.CONTENT_TYPE)

    @app.get("/1/plugins", tags=["service"], summary="Active matching plugins, in order")
    async def plugins() -> PluginsOut:
        return PluginsOut(plugins=[p.name for p in router.plugins] + [fallback.name])

    return app
