"""Dashboard service: login, the pages, their live fragments and JSON data endpoints, all behind the admin token.

Auth: ``POST /login`` with the admin token sets a signed session cookie
(HttpOnly, SameSite=Strict, :mod:`facedex.dashboard.session`); data endpoints also
take ``Authorization: Bearer <admin token>`` for scripts. Without either, pages
answer 401 with the login form and data endpoints 401 with the JSON error body
(18001). The service routes every facedex process has (``/healthcheck``,
``/metrics``, ``/version``) stay as elsewhere; there is no ``/docs`` here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlparse

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from facedex.config import Settings
from facedex.dashboard import html, session
from facedex.dashboard.data import TASK_STATUSES, Dashboard
from facedex.dashboard.upstream import Upstream
from facedex.errors import Errors, FacedexError
from facedex.http import create_app, error_response
from facedex.lifespan import faces_db, redis_client, service_lifespan

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
PageNo = Annotated[int, Query(ge=1, le=1_000_000)]
PageSize = Annotated[int | None, Query(ge=1, le=500)]


class _LoginRequired(Exception):
    """A page asked for without a session: answered with the login form (401)."""


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    list_id: uuid.UUID


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    list_id: uuid.UUID
    face_id: uuid.UUID | None = None
    image: str | None = Field(None, description="A photo, base64.")
    limit: int = Field(10, ge=1, le=1000)


def _authorized(request: Request, admin_token: str) -> bool:
    if session.valid(admin_token, request.cookies.get(session.COOKIE)):
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and session.token_ok(admin_token, given.strip())


def _same_origin(request: Request) -> bool:
    """A form POST must come from this dashboard's own pages (on top of the SameSite=Strict cookie)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlparse(origin).netloc == request.headers.get("host")


def _safe_next(path: str | None) -> str:
    return path if path and path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def build_app(settings: Settings) -> FastAPI:
    state: dict[str, Dashboard] = {}
    admin_token = settings.admin_token or ""
    page_size_default = settings.dashboard_ui.page_size

    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        store = await faces_db(app, stack, max_size=4)
        redis = redis_client(app, stack)
        upstream = Upstream(settings)
        await upstream.start()
        stack.push_async_callback(upstream.close)
        state["d"] = Dashboard(settings, store, redis, upstream)
        yield

    app = create_app(
        "dashboard", settings,
        title="facedex Dashboard",
        description="The operator's web UI.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,
    )

    @app.exception_handler(_LoginRequired)
    async def _login_required(request: Request, exc: _LoginRequired) -> HTMLResponse:
        if not admin_token:
            return HTMLResponse("<!doctype html><p>The dashboard is off: set FACEDEX_ADMIN_TOKEN.</p>", 403, SECURITY_HEADERS)
        return HTMLResponse(html.login(request.url.path), 401, SECURITY_HEADERS)

    async def page_auth(request: Request) -> None:
        if not admin_token or not _authorized(request, admin_token):
            raise _LoginRequired
        if request.method == "POST" and not _same_origin(request):
            raise FacedexError(Errors.FORBIDDEN, "cross-origin form post")

    async def data_auth(request: Request) -> None:
        if not admin_token:
            raise FacedexError(Errors.DASHBOARD_OFF)
        if not _authorized(request, admin_token):
            raise FacedexError(Errors.DASHBOARD_LOGIN_REQUIRED, "log in at /login or send 'Authorization: Bearer <admin token>'")
        if request.method != "GET" and not _same_origin(request):
            raise FacedexError(Errors.FORBIDDEN, "cross-origin request")

    PageAuth = [Depends(page_auth)]
    DataAuth = [Depends(data_auth)]

    def d() -> Dashboard:
        return state["d"]

    def render(request: Request, title: str, active: str, fragment: str, before: str = "", after: str = "") -> HTMLResponse:
        if request.headers.get("x-fragment"):
            return HTMLResponse(fragment, headers=SECURITY_HEADERS)
        msg = request.query_params.get("msg")
        body = html.flash(msg, request.query_params.get("ok") == "1") + before + html.live(fragment) + after
        return HTMLResponse(html.page(title, active, body), headers=SECURITY_HEADERS)

    # ------------------------------------------------------------ login
    @app.get("/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        if admin_token and _authorized(request, admin_token):
            return RedirectResponse("/", 303)
        raise _LoginRequired

    @app.post("/login", include_in_schema=False)
    async def login(token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/") -> Response:
        if not admin_token:
            raise _LoginRequired
        if not session.token_ok(admin_token, token):
            return HTMLResponse(html.login(_safe_next(next), "Wrong admin token."), 401, SECURITY_HEADERS)
        resp = RedirectResponse(_safe_next(next), 303)
        resp.set_cookie(session.COOKIE, session.issue(admin_token, settings.dashboard_ui.session_ttl_s),
                        max_age=int(settings.dashboard_ui.session_ttl_s), httponly=True, samesite="strict", path="/")
        return resp

    @app.post("/logout", include_in_schema=False)
    async def logout() -> Response:
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    @app.get("/static/{name}", include_in_schema=False, dependencies=PageAuth)
    async def static(name: str) -> Response:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise FacedexError(Errors.NOT_FOUND, f"no asset {name}")
        return FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    # ------------------------------------------------------------ pages
    @app.get("/", include_in_schema=False, dependencies=PageAuth)
    async def overview(request: Request) -> HTMLResponse:
        return render(request, "Overview", "/", html.health_fragment(await d().health()))

    @app.get("/lists", include_in_schema=False, dependencies=PageAuth)
    async def lists_page(request: Request, account_id: uuid.UUID | None = None, page: PageNo = 1,
                         page_size: PageSize = None) -> HTMLResponse:
        data = await d().lists(account_id, page, page_size or page_size_default)
        form = (f'<form method="get" action="/lists" class="filter"><label>Account id <input name="account_id" size="38" '
                f'value="{html.e(account_id or "")}"></label><button>Filter</button> <a href="/lists">all accounts</a></form>')
        return render(request, "Lists", "/lists", html.lists_fragment(data, str(request.url.path) + "?" + request.url.query), form)

    @app.get("/tasks", include_in_schema=False, dependencies=PageAuth)
    async def tasks_page(request: Request, status: str | None = None, list_id: uuid.UUID | None = None,
                         page: PageNo = 1, page_size: PageSize = None) -> HTMLResponse:
        if status not in (None, "", *TASK_STATUSES):
            raise FacedexError(Errors.VALIDATION, f"status must be one of {', '.join(TASK_STATUSES)}")
        data = await d().tasks(status or None, list_id, page, page_size or page_size_default)
        links = " ".join(f'<a href="/tasks?{urlencode({"status": s})}">{s}</a>' for s in TASK_STATUSES)
        form = ('<form method="post" action="/tasks/create" class="create"><label>List id <input name="list_id" id="task-list" '
                'size="38" required></label><input type="hidden" name="back" value="/tasks"><button id="task-create">'
                f'Create task</button></form><p class="filters">show: <a href="/tasks">all</a> {links}</p>')
        back = str(request.url.path) + ("?" + request.url.query if request.url.query else "")
        return render(request, "Tasks", "/tasks", html.tasks_fragment(data, back), form)

    def _back(back: str, message: str, ok: bool) -> RedirectResponse:
        target = _safe_next(back)
        base, _, query = target.partition("?")
        kept = [kv for kv in query.split("&") if kv and not kv.startswith(("msg=", "ok="))]
        kept.append(urlencode({"msg": message, "ok": "1" if ok else "0"}))
        return RedirectResponse(base + "?" + "&".join(kept), 303)

    def _outcome(result: dict[str, Any], done: str) -> tuple[str, bool]:
        body = result["body"]
        if result["status"] < 300:
            return done.format(**body) if isinstance(body, dict) else done, True
        if isinstance(body, dict):
            return f'{body.get("error_code")}: {body.get("detail")}', False
        return f"HTTP {result['status']}", False

    @app.post("/tasks/create", include_in_schema=False, dependencies=PageAuth)
    async def create_task_form(list_id: Annotated[str, Form()], back: Annotated[str, Form()] = "/tasks") -> Response:
        try:
            parsed = uuid.UUID(list_id.strip())
        except ValueError:
            return _back(back, f"not a list id: {list_id[:60]}", False)
        return _back(back, *_outcome(await d().create_task(parsed), "task {task_id} queued"))

    @app.post("/tasks/{task_id}/cancel", include_in_schema=False, dependencies=PageAuth)
    async def cancel_task_form(task_id: uuid.UUID, back: Annotated[str, Form()] = "/tasks") -> Response:
        return _back(back, *_outcome(await d().cancel_task(str(task_id)), "task {task_id} cancelled"))

    @app.get("/matchers", include_in_schema=False, dependencies=PageAuth)
    async def matchers_page(request: Request, page: PageNo = 1, page_size: PageSize = None) -> HTMLResponse:
        return render(request, "Matchers", "/matchers", html.matchers_fragment(await d().matchers_view(page, page_size or page_size_default)))

    @app.get("/matching", include_in_schema=False, dependencies=PageAuth)
    async def matching_page(request: Request) -> HTMLResponse:
        return render(request, "Matching", "/matching", html.metrics_fragment(await d().metrics()))

    @app.get("/search", include_in_schema=False, dependencies=PageAuth)
    async def search_page(list_id: str = "", face_id: str = "") -> HTMLResponse:
        return HTMLResponse(html.page("Search", "/search", html.search_form(list_id, face_id)), headers=SECURITY_HEADERS)

    @app.post("/search", include_in_schema=False, dependencies=PageAuth)
    async def search_form(
        list_id: Annotated[str, Form()],
        face_id: Annotated[str, Form()] = "",
        limit: Annotated[int, Form(ge=1, le=1000)] = 10,
        photo: Annotated[UploadFile | None, File()] = None,
    ) -> HTMLResponse:
        result: dict[str, Any] | None
        try:
            image = await photo.read(settings.extraction.max_image_bytes + 1) if photo is not None else None
            result = await d().search(uuid.UUID(list_id.strip()), uuid.UUID(face_id.strip()) if face_id.strip() else None,
                                      image or None, limit)
        except ValueError:
            result = {"ok": False, "status": 400, "error": "list id and face id must be UUIDs"}
        except FacedexError as exc:
            result = {"ok": False, "status": exc.error.status, "error": exc.body()}
        body = html.search_form(list_id, face_id, limit) + html.search_results(result)
        return HTMLResponse(html.page("Search", "/search", body), headers=SECURITY_HEADERS)

    # ------------------------------------------------------------ JSON data endpoints
    @app.get("/data/health", tags=["dashboard"], dependencies=DataAuth)
    async def data_health() -> dict[str, Any]:
        return await d().health()

    @app.get("/data/lists", tags=["dashboard"], dependencies=DataAuth)
    async def data_lists(account_id: uuid.UUID | None = None, page: PageNo = 1, page_size: PageSize = None) -> dict[str, Any]:
        return await d().lists(account_id, page, page_size or page_size_default)

    @app.get("/data/tasks", tags=["dashboard"], dependencies=DataAuth)
    async def data_tasks(status: str | None = None, list_id: uuid.UUID | None = None, page: PageNo = 1,
                         page_size: PageSize = None) -> dict[str, Any]:
        if status not in (None, *TASK_STATUSES):
            raise FacedexError(Errors.VALIDATION, f"status must be one of {', '.join(TASK_STATUSES)}")
        return await d().tasks(status, list_id, page, page_size or page_size_default)

    @app.post("/data/tasks", tags=["dashboard"], dependencies=DataAuth)
    async def data_create_task(body: TaskIn) -> JSONResponse:
        result = await d().create_task(body.list_id)
        return JSONResponse(result["body"], status_code=result["status"])

    @app.delete("/data/tasks/{task_id}", tags=["dashboard"], dependencies=DataAuth)
    async def data_cancel_task(task_id: uuid.UUID) -> JSONResponse:
        result = await d().cancel_task(str(task_id))
        return JSONResponse(result["body"], status_code=result["status"])

    @app.get("/data/matchers", tags=["dashboard"], dependencies=DataAuth)
    async def data_matchers(page: PageNo = 1, page_size: PageSize = None) -> dict[str, Any]:
        return await d().matchers_view(page, page_size or page_size_default)

    @app.get("/data/metrics", tags=["dashboard"], dependencies=DataAuth)
    async def data_metrics() -> dict[str, Any]:
        return await d().metrics()

    @app.post("/data/search", tags=["dashboard"], dependencies=DataAuth)
    async def data_search(body: SearchIn) -> JSONResponse:
        import base64
        import binascii

        try:
            image = base64.b64decode(body.image, validate=True) if body.image else None
        except (binascii.Error, ValueError):
            return error_response(Errors.IMAGE_BASE64)
        result = await d().search(body.list_id, body.face_id, image, body.limit)
        return JSONResponse(result, status_code=200 if result["ok"] else int(result["status"]))

    return app
