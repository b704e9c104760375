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
from facedex.http import create_app, direct_route
from facedex.failover import FailoverClient
from facedex.internal_auth import bearer
from facedex.lifespan import faces_db, service_lifespan


def build_app(settings: Settings) -> FastAPI:
    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        app.state.store = await faces_db(app, stack, max_size=20, writes=True)
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
    direct_route(app, "/1/matcher/faces", matching.match_faces_direct)  # every match crosses it: past FastAPI's layers
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
    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        return components[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node

    def max_items(prop: dict[str, Any], bound: int) -> None:
        for branch in prop.get("anyOf", [prop]):
            if branch.get("type") == "array":
                branch["maxItems"] = bound

    for request in filter(None, (body, components.get("MatchRequestIn"))):
        request["properties"]["references"]["maxItems"] = m.max_references
        for form_ in resolve(request["properties"]["candidates"]).get("anyOf", []):
            if form_.get("type") == "array":  # the array form: candidate sets
                form_["maxItems"] = m.max_candidate_sets
                candidate_set = resolve(form_["items"])
                candidate_set["properties"]["limit"]["maximum"] = m.max_limit
                filters = resolve(candidate_set["properties"]["filters"])
                max_items(filters["properties"]["list_ids"], m.max_lists_per_set)
                max_items(filters["properties"]["face_ids"], m.max_filter_face_ids)
                max_items(filters["properties"]["external_ids"], m.max_filter_values)
            else:  # the object form: one list
                candidates = resolve(form_)
                candidates["properties"]["limit"]["maximum"] = m.max_limit
                max_items(candidates["properties"]["face_ids"], m.max_filter_face_ids)
    form = schema["paths"]["/1/matcher/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form["properties"]["limit"]["maximum"] = m.max_limit
    return schema
