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
from typing import Any

import msgspec
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facedex import __version__
from facedex.errors import ErrorCode, Errors, FacedexError
from facedex.metrics import MetricsMiddleware, render

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


def _validation_detail(exc: RequestValidationError) -> tuple[ErrorCode, str]:
    parts = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return Errors.BAD_JSON, f"invalid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return Errors.VALIDATION, "; ".join(parts[:10])


def create_app(
    service: str,
    *,
    title: str,
    description: str,
    max_body_bytes: int,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[Any]] | None = None,
    health: dict[str, HealthCheck] | None = None,
    **kwargs: Any,
) -> FastAPI:
    app = FastAPI(
        title=title,
        description=description,
        version=__version__,
        lifespan=lifespan,
        **kwargs,
    )
    app.state.service = service
    app.state.health = dict(health or {})
    app.state.scrape_hooks = []  # async callables refreshing gauges before a /metrics scrape
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, service=service)

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
