"""Matcher Proxy service: ``POST /1/match`` tries each plugin that accepts the request, then brute force.

``POST /1/match_sets`` takes several candidate sets in one call, each one sub-request per list: every
sub-request is routed on its own (a plain list with a live label: indexed; a filtered one: brute force;
a failed indexed answer falls back alone), all run concurrently, and each set's lists are merged into one
exact top-k (:mod:`facedex.proxy.merge`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import msgspec
from fastapi import FastAPI
from pydantic import BaseModel, Field

from facedex import timing, wire
from facedex.config import Settings
from facedex.errors import Errors, FacedexError
from facedex.http import create_app, errors, msgpack_route
from facedex.internal_auth import verify_request
from facedex.lifespan import service_lifespan
from facedex.metrics import MATCH_ROUTE
from facedex.proxy.merge import merge
from facedex.proxy.plugins import BruteForceRoute, MatchingPlugin, load_plugins

log = logging.getLogger(__name__)


class PluginsOut(BaseModel):
    plugins: list[str] = Field(..., description="Routes tried in order; brute force is always last.")


class Router:
    def __init__(self, plugins: list[MatchingPlugin], fallback: BruteForceRoute) -> None:
        self.plugins = plugins
        self.fallback = fallback
        for plugin in plugins:  # a plugin that sheds load compares with what brute force would cost
            if hasattr(plugin, "fallback_estimate"):
                plugin.fallback_estimate = fallback.expected_seconds

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

    async def match_sets(self, req: wire.MatchSetsRequest) -> wire.MatchSetsResponse:
        """Every (set, list) sub-request routed on its own and run concurrently; each set merged exactly."""
        try:
            async with asyncio.TaskGroup() as group:  # one failure (e.g. a list not found) cancels the rest
                tasks = [[group.create_task(self.match(sub)) for sub in subs] for subs in req.sets]
        except BaseExceptionGroup as failed:
            raise _first_error(failed) from None
        out = []
        for subs, done in zip(req.sets, tasks, strict=True):
            answers = [t.result() for t in done]
            out.append(wire.SetMatches(
                results=merge(answers, subs[0].limit),
                parts=[wire.ListPart(sub.list_id, a.route, a.list_size, a.fallback_reason, a.consistency)
                       for sub, a in zip(subs, answers, strict=True)],
            ))
        return wire.MatchSetsResponse(sets=out)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to answer with: a coded one (FacedexError) if any sub-request raised one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, FacedexError)), leaves[0])


def check_sets(req: wire.MatchSetsRequest, settings: Settings) -> None:
    """Bounds and shape of a sets request, before any sub-request runs (the API checks the same; this guards the proxy)."""
    m = settings.matching
    if len(req.sets) > m.max_candidate_sets:
        raise FacedexError(Errors.TOO_MANY_CANDIDATE_SETS, f"at most {m.max_candidate_sets} candidate sets per request")
    for subs in req.sets:
        if not subs or len(subs) > m.max_lists_per_set:
            raise FacedexError(Errors.CANDIDATE_SET_INVALID, f"a candidate set has 1 .. {m.max_lists_per_set} lists")
        first = subs[0]
        if any(s.limit != first.limit or s.references != first.references or s.version != first.version for s in subs):
            raise FacedexError(Errors.CANDIDATE_SET_INVALID, "the lists of one set share references, version and limit")
        if len({s.list_id for s in subs}) != len(subs):
            raise FacedexError(Errors.CANDIDATE_SET_INVALID, "a candidate set names the same list twice")


def build_app(settings: Settings) -> FastAPI:
    fallback = BruteForceRoute(settings)
    router = Router(load_plugins(settings), fallback)

    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        stack.push_async_callback(fallback.stop)
        for plugin in router.plugins:
            await plugin.start()
            stack.push_async_callback(plugin.stop)
        yield

    app = create_app(
        "proxy", settings,
        title="facedex Matcher Proxy",
        description="Routes each matching request to a preferred matcher (plugins) or to the brute-force Matcher.",
        internal=True,
        lifespan=lifespan,
    )

    app.state.health["bruteforce"] = fallback.client.healthy
    for plugin in router.plugins:  # a plugin's background loops (e.g. the indexed reply listener)
        check = getattr(plugin, "health_check", None)
        if check is not None:
            app.state.health[f"plugin:{plugin.name}"] = check

    @msgpack_route(
        app, "/1/match", wire.MatchRequest, wire.MatchResponse, tags=["matching"],
        summary="Match references against one list (msgpack)",
        responses=errors(Errors.DESCRIPTOR_VERSION_UNKNOWN, Errors.DESCRIPTOR_LENGTH, Errors.LIST_NOT_FOUND, Errors.MATCHER_UNAVAILABLE),
    )
    async def match_route(body: bytes) -> bytes:
        started = time.perf_counter()
        req = wire.decode(body, wire.MatchRequest)
        verify_request(settings.internal_token, req)  # before any route sees it: no plugin serves a forged or altered request
        resp = await router.match(req)
        # this proxy's own part: all it spent on the request but the matcher's reported hops (facedex.timing)
        hops = resp.timings or {}
        hops = {**hops, timing.ROUTE: max(timing.since(started) - timing.downstream(hops), 0.0)}
        return wire.encode(msgspec.structs.replace(resp, timings=hops))

    @msgpack_route(
        app, "/1/match_sets", wire.MatchSetsRequest, wire.MatchSetsResponse, tags=["matching"],
        summary="Match references against several candidate sets (msgpack)",
        responses=errors(Errors.DESCRIPTOR_VERSION_UNKNOWN, Errors.DESCRIPTOR_LENGTH, Errors.LIST_NOT_FOUND, Errors.MATCHER_UNAVAILABLE,
                         Errors.TOO_MANY_CANDIDATE_SETS, Errors.CANDIDATE_SET_INVALID, Errors.IDENTITY_UNVERIFIED),
    )
    async def match_sets_route(body: bytes) -> bytes:
        req = wire.decode(body, wire.MatchSetsRequest)
        check_sets(req, settings)
        for subs in req.sets:
            for sub in subs:
                verify_request(settings.internal_token, sub)  # each sub-request as the API signed it
        return wire.encode(await router.match_sets(req))

    @app.get("/1/plugins", tags=["service"], summary="Active matching plugins, in order")
    async def plugins() -> PluginsOut:
        return PluginsOut(plugins=[p.name for p in router.plugins] + [fallback.name])

    return app
