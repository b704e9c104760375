"""What every facedex HTTP service shares: error rendering, body limit, health and version.

Every error leaves a service as ``{"error_code", "desc", "detail"}`` with the
status from :mod:`facedex.errors`, including FastAPI's own validation errors
and unknown routes, so a client handles one shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facedex import __version__, wire
from facedex.config import Settings
from facedex.errors import ErrorCode, Errors, FacedexError
from facedex.logs import REQUEST_ID_HEADER, accepted_request_id, access_log, reset_request_id, set_request_id
from facedex.internal_auth import token_matches
from facedex.metrics import MetricsMiddleware, render
from facedex.text import NOT_STORABLE

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[None]]


class ErrorBody(BaseModel):
    """The one error shape of every facedex service (codes: facedex/errors.py)."""

    error_code: int = Field(..., description="Stable code; clients may branch on it.")
    desc: str = Field(..., description="What the code means.")
    detail: str = Field(..., description="What exactly was wrong with this request.")


def errors(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route that can answer these errors: one entry per status, listing its codes.

    Validation (422), body size (413), bad JSON (400) and missing credentials (401)
    are added to every route they apply to by :func:`_complete_openapi`.
    """
    by_status: dict[int, list[ErrorCode]] = {}
    for error in codes:
        by_status.setdefault(error.status, []).append(error)
    return {
        status: {"model": ErrorBody, "description": "; ".join(f"{e.code} {e.desc}" for e in errs)}
        for status, errs in sorted(by_status.items())
    }


_MSGPACK_SCHEMAS: dict[str, Any] = {}  # components of the msgpack messages, added to every schema that names them


def msgpack_body(request: type[msgspec.Struct], response: type[msgspec.Struct]) -> dict[str, Any]:
    """``openapi_extra`` of an internal msgpack route: its request and response messages (facedex.wire).

    Bytes fields are msgpack ``bin`` on the wire (shown as base64 strings in the schema).
    """
    (req, resp), components = msgspec.json.schema_components((request, response), ref_template="#/components/schemas/{name}")
    _MSGPACK_SCHEMAS.update(components)
    return {
        "requestBody": {
            "required": True,
            "description": f"a msgpack {request.__name__} (facedex.wire); bytes fields are msgpack bin, shown here as base64",
            "content": {"application/msgpack": {"schema": req}},
        },
        "responses": {"200": {"description": f"a msgpack {response.__name__}", "content": {"application/msgpack": {"schema": resp}}}},
    }


class HealthOut(BaseModel):
    status: str = Field(..., description="ok, or unhealthy (with status 503) when a dependency failed.")
    service: str
    checks: dict[str, str] = Field(..., description="Each dependency: 'ok (<ms> ms)' or 'failed: <why>'.")


class VersionOut(BaseModel):
    service: str
    version: str


_AUTO: list[tuple[str, ErrorCode]] = [
    ("body", Errors.BAD_JSON), ("body", Errors.BODY_TOO_LARGE), ("security", Errors.UNAUTHORIZED), ("input", Errors.VALIDATION),
]


def _complete_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Every operation documents the real error body for the errors every service raises the same way.

    FastAPI's own 422 (its validation array) is replaced: facedex answers it as
    ``{"error_code","desc","detail"}`` like every other error.
    """
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema()
    if "application/msgpack" in str(schema.get("paths")):
        components.update(_MSGPACK_SCHEMAS)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            for answer in responses.values():  # a msgpack route answers msgpack only (not FastAPI's default JSON)
                content_types = answer.get("content", {})
                if "application/msgpack" in content_types and content_types.get("application/json") == {"schema": {}}:
                    del content_types["application/json"]
            content = op.get("requestBody", {}).get("content", {})
            has = {
                "body": bool(content),
                "security": bool(op.get("security")),
                "input": bool(content) or bool(op.get("parameters")),
            }
            for kind, error in _AUTO:
                if not has[kind] or (error is Errors.BAD_JSON and "application/json" not in content):
                    continue
                status = str(error.status)
                entry = responses.get(status)
                line = f"{error.code} {error.desc}"
                if entry is None or "HTTPValidationError" in str(entry):
                    responses[status] = {"description": line, "content": {"application/json": {"schema": ref}}}
                elif line not in entry.get("description", ""):
                    entry["description"] = f"{entry.get('description', '')}; {line}".lstrip("; ")
            op["responses"] = dict(sorted(responses.items()))
    return schema


def error_response(error: ErrorCode, detail: str | None = None) -> JSONResponse:
    return JSONResponse(FacedexError(error, detail).body(), status_code=error.status)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413 before the application reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                await self._refuse(scope, receive, send, int(length) if length.isdigit() else -1)
                return
            await self.app(scope, receive, send)
            return
        # No length given (chunked): buffer up to the limit, then replay.
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            more = message.get("more_body", False)
            if total > self.max_bytes:
                await self._refuse(scope, receive, send, total)
                return
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        detail = f"body of {size} bytes is over the limit of {self.max_bytes} bytes"
        await error_response(Errors.BODY_TOO_LARGE, detail)(scope, receive, send)


RouteHandler = Callable[[Request], Awaitable[Response]]
MsgpackHandler = Callable[[bytes], Awaitable[bytes]]  # a msgpack request body in, a msgpack answer out


@dataclass(frozen=True)
class DirectRoute:
    """A hot route answered by :class:`DirectRoutes`; ``path`` is its metrics label, as a FastAPI route's would be."""

    path: str
    handler: RouteHandler


class DirectRoutes:
    """The routes every match crosses (the API's ``POST /1/matcher/faces``, ``POST /1/match`` of the proxy and of
    the brute-force Matcher) answered straight from the ASGI scope, past FastAPI's routing, dependency and endpoint
    layers.

    Why: a bare uvicorn server costs ~0.06 ms of CPU per request on this machine class, a FastAPI route ~0.3 ms, and
    a match crosses three of them; in the proxy those layers took about a third of its request time (py-spy,
    docs/benchmarks.md). Innermost of the facedex middleware, so request ids, the access log, metrics, the internal
    token and the body limit apply exactly as to every other route, and an error is rendered by the app's own
    exception handlers (one error shape). Each route is also declared to FastAPI, which documents it.
    """

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], DirectRoute],
                 exception_handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]]) -> None:
        self.app = app
        self.routes = routes  # (method, path) -> route, filled as services register them
        self.exception_handlers = exception_handlers  # the app's own, filled by create_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        request = Request(scope, receive)
        try:
            response = await route.handler(request)
        except Exception as exc:
            handler = next((self.exception_handlers[cls] for cls in type(exc).__mro__
                            if cls is not Exception and cls in self.exception_handlers), None)
            if handler is None:
                raise  # unexpected: RequestIdMiddleware logs it and answers 500, as for every route
            response = await handler(request, exc)
        await response(scope, receive, send)


def direct_route(app: FastAPI, path: str, handler: RouteHandler, method: str = "POST") -> None:
    """Answer ``method path`` with ``handler`` through :class:`DirectRoutes`; the caller also declares the route to
    FastAPI (for the schema)."""
    app.state.direct_routes[(method, path)] = DirectRoute(path, handler)


def msgpack_route(
    app: FastAPI, path: str, request: type[msgspec.Struct], response: type[msgspec.Struct], **route: Any
) -> Callable[[MsgpackHandler], MsgpackHandler]:
    """``POST path`` of an internal service: ``handler`` turns the msgpack body into the msgpack answer. Answered
    by :class:`DirectRoutes`, and declared to FastAPI (same handler) so the schema documents its messages
    (``route``: FastAPI's route arguments)."""

    def register(handler: MsgpackHandler) -> MsgpackHandler:
        async def answer(raw: Request) -> Response:
            return Response(await handler(await raw.body()), media_type=wire.CONTENT_TYPE)

        answer.__name__ = handler.__name__  # the schema's operationId, as when FastAPI called the handler itself

        direct_route(app, path, answer)
        app.post(path, openapi_extra=msgpack_body(request, response), **route)(answer)
        return handler

    return register


class RequestIdMiddleware:
    """Accept (or generate) the request id, return it as ``X-Request-Id``, and write one access-log line.

    Outermost, so refusals by other middleware (413) and unexpected errors (500) carry the id and are logged too.
    The id lives in a contextvar for the request's duration: every log line and every rpc call made while serving
    it carries the id.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"x-request-id")
        request_id = accepted_request_id(raw.decode("latin-1") if raw is not None else None)
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        token = set_request_id(request_id)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if status:  # the response has begun: nothing more can be sent
                raise
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status = Errors.INTERNAL.status
            await error_response(Errors.INTERNAL, type(exc).__name__)(scope, receive, send_with_id)
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            access_log.info(
                "%s %s %d %.2f ms", scope["method"], scope["path"], status, duration_ms,
                extra={"method": scope["method"], "path": scope["path"], "status": status, "duration_ms": duration_ms},
            )
            reset_request_id(token)
# Routes of an internal service that answer without the internal token: liveness and self-description only.
# /metrics is NOT among them: its labels name lists and accounts' activity (scrape with the token).
OPEN_PATHS = frozenset({"/healthcheck", "/version", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PREFIXES = ("/static-offline-docs/",)  # the /docs page's own assets (fastapi-offline's mount)


class InternalAuthMiddleware:
    """The one check of service-to-service calls: ``Authorization: Bearer <internal_token>`` (constant-time).

    Runs before the body is read, so a refused caller costs nothing and changes nothing.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() == "bearer" and token_matches(presented.strip(), self.token):
            await self.app(scope, receive, send)
            return
        detail = (
            "internal_token is not set on this service: set FACEDEX_INTERNAL_TOKEN" if not self.token
            else "send 'Authorization: Bearer <internal_token>'" if not header else "wrong internal token"
        )
        response = error_response(Errors.INTERNAL_UNAUTHORIZED, detail)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)


def _validation_detail(exc: RequestValidationError) -> tuple[ErrorCode, str]:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return Errors.BAD_JSON, f"invalid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") in (NOT_STORABLE, "string_unicode"):  # NUL, or a lone surrogate in JSON
            return Errors.TEXT_NOT_STORABLE, f"{where or 'body'}: {err.get('msg')}"
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return Errors.VALIDATION, "; ".join(parts[:10])


def create_app(
    service: str,
    settings: Settings,
    *,
    title: str,
    description: str,
    internal: bool = False,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
    **kwargs: Any,
) -> FastAPI:
    """A facedex service's app: ``settings.max_body_bytes`` for every body, ``app.state.settings``, the shared
    error shape, ``/healthcheck``, ``/metrics`` and ``/version``.

    ``internal=True``: every route but OPEN_PATHS requires ``settings.internal_token`` (401, 10010 without it).
    ``openapi_url=None`` (the dashboard, a web UI) publishes no schema and no docs pages.
    """
    # FastAPIOffline: /docs and /redoc with their assets served from a pip package, not a CDN
    factory = FastAPIOffline if kwargs.get("openapi_url", "/openapi.json") is not None else FastAPI
    app = factory(
        title=title,
        description=description,
        version=__version__,
        lifespan=lifespan,
        **kwargs,
    )
    app.state.service = service
    app.state.settings = settings
    app.state.health = {}  # name -> HealthCheck, filled by the service (e.g. facedex.lifespan)
    app.state.scrape_hooks = []  # async callables refreshing gauges before a /metrics scrape
    app.state.direct_routes = {}  # filled by direct_route
    app.add_middleware(DirectRoutes, routes=app.state.direct_routes, exception_handlers=app.exception_handlers)  # innermost
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if internal:
        if not settings.internal_token:
            log.warning("%s: internal_token is not set; every internal route will answer 401", service)
        app.add_middleware(InternalAuthMiddleware, token=settings.internal_token)
    app.add_middleware(MetricsMiddleware, service=service)
    app.add_middleware(RequestIdMiddleware)  # added last: outermost

    @app.exception_handler(FacedexError)
    async def _facedex_error(request: Request, exc: FacedexError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.error.status)

    @app.exception_handler(msgspec.DecodeError)
    async def _msgspec_error(request: Request, exc: msgspec.DecodeError) -> JSONResponse:
        return error_response(Errors.VALIDATION, f"bad message: {exc}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error, detail = _validation_detail(exc)
        return error_response(error, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        by_status = {404: Errors.NOT_FOUND, 405: Errors.METHOD_NOT_ALLOWED, 401: Errors.UNAUTHORIZED, 415: Errors.UNSUPPORTED_MEDIA}
        error = by_status.get(exc.status_code)
        if error is None:
            return JSONResponse(
                {"error_code": Errors.VALIDATION.code, "desc": "HTTP error", "detail": str(exc.detail)},
                status_code=exc.status_code,
            )
        return error_response(error, str(exc.detail) if exc.detail else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(Errors.INTERNAL, f"{type(exc).__name__}")

    @app.get(
        "/healthcheck", tags=["service"], summary="Health of this service and what it depends on",
        response_model=HealthOut, responses={503: {"model": HealthOut, "description": "A dependency failed."}},
    )
    async def healthcheck() -> JSONResponse:
        checks: dict[str, str] = {}
        ok = True
        for name, check in app.state.health.items():
            started = time.perf_counter()
            try:
                await check()
                checks[name] = f"ok ({(time.perf_counter() - started) * 1000:.1f} ms)"
            except Exception as exc:  # a failing dependency is the answer, not an error
                ok = False
                checks[name] = f"failed: {type(exc).__name__}: {exc}"
        return JSONResponse(
            {"status": "ok" if ok else "unhealthy", "service": service, "checks": checks},
            status_code=200 if ok else 503,
        )

    @app.get(
        "/metrics", tags=["service"], summary="Prometheus metrics of this process", response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."}},
    )
    async def metrics() -> Response:
        body, content_type = await render(app.state.scrape_hooks)
        return Response(body, media_type=content_type)

    @app.get("/version", tags=["service"], summary="Service name and facedex version")
    async def version() -> VersionOut:
        return VersionOut(service=service, version=__version__)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _complete_openapi(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
