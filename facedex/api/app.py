"""The API service: FastAPI app with the public routes; matching goes to the Matcher Proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from fastapi import FastAPI

from facedex.api import accounts, faces, images, lists, matching
from facedex.api.auth import TokenCache
from facedex.config import Settings
from facedex.errors import Errors
from facedex.extractor.extract import make_extractor
from facedex.http import create_app
from facedex.failover import FailoverClient
from facedex.internal_auth import bearer
from facedex.lifespan import faces_db, service_lifespan


def build_app(settings: Settings) -> FastAPI:
    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        app.state.store = await faces_db(app, stack, max_size=20)
        app.state.tokens = TokenCache(app.state.store, settings.database_url)
        await app.state.tokens.start()
        stack.push_async_callback(app.state.tokens.stop)
        m = settings.matching
        # several proxies: a dead one is skipped within the request (facedex.failover)
        # the proxy's own budget (an indexed try, a license check, then brute force within proxy_timeout_s) must fit
        # inside the API's, or the API would give up on a working proxy and send the same work to the next one
        budget = m.proxy_timeout_s + settings.indexed.request_timeout_s + 3.0
        app.state.proxy = FailoverClient(m.proxy_urls or [settings.proxy.url], budget, Errors.MATCHER_UNAVAILABLE,
                                         cooldown_s=m.instance_cooldown_s)
        app.state.proxy.headers = bearer(settings.internal_token)
        stack.push_async_callback(app.state.proxy.close)
        app.state.extractor = make_extractor(settings.extraction, settings.internal_token)
        stack.push_async_callback(app.state.extractor.close)
        yield

    app = create_app(
        "api", settings,
        title="facedex API",
        description=(
            "Lists of faces with descriptors, and 1:N matching against them. "
            "Authenticate with `Authorization: Bearer <token>`; every request sees only its account's data."
        ),
        lifespan=lifespan,
    )
    for module in (accounts, lists, faces, images, matching):
        app.include_router(module.router)
    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        return _settings_bounds(base_openapi(), settings)

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _settings_bounds(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The matching limits are settings: the schema shows this deployment's values, as the code enforces them."""
    m = settings.matching
    components = schema["components"]["schemas"]
    # the matching body is inlined into its route (it is read with bounded work: facedex.api.match_body)
    body = schema["paths"]["/1/matcher/faces"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    for request in filter(None, (body, components.get("MatchRequestIn"))):
        request["properties"]["references"]["maxItems"] = m.max_references
        candidates = request["properties"]["candidates"]
        candidates = components["MatchCandidates"] if "$ref" in candidates else candidates
        candidates["properties"]["limit"]["maximum"] = m.max_limit
        for branch in candidates["properties"]["face_ids"].get("anyOf", []):
            if branch.get("type") == "array":
                branch["maxItems"] = m.max_filter_face_ids
    form = schema["paths"]["/1/matcher/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form["properties"]["limit"]["maximum"] = m.max_limit
    return schema
