"""Calls from the dashboard to the other services, with the right credentials, through one helper.

The Index Manager gets the admin token; internal services get ``internal_token``
when the deployment has one (read defensively: older settings have none); the
API gets an account token (search). Failures become a value to show, never a 5xx
of the dashboard.
"""

from __future__ import annotations

from typing import Any

import httpx

from facedex.config import Settings
from facedex.errors import Errors, FacedexError


class Upstream:
    def __init__(self, settings: Settings, timeout_s: float = 5.0) -> None:
        self.settings = settings
        self.timeout = httpx.Timeout(timeout_s)
        self.http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self.http = httpx.AsyncClient(timeout=self.timeout)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def headers(self, role: str, token: str | None = None) -> dict[str, str]:
        """``role``: "admin" (Index Manager), "internal" (health, metrics, matcher state) or "account" (the API, ``token``)."""
        if role == "account" and token:
            return {"Authorization": f"Bearer {token}"}
        internal = getattr(self.settings, "internal_token", None)
        if role == "admin" and self.settings.admin_token:
            headers = {"Authorization": f"Bearer {self.settings.admin_token}"}
            return headers
        return {"Authorization": f"Bearer {internal}"} if internal else {}

    async def request(self, method: str, url: str, role: str = "internal", token: str | None = None, **kw: Any) -> tuple[int, Any]:
        """(status, parsed JSON or text); raises 18004 when the service cannot be reached."""
        assert self.http is not None
        try:
            resp = await self.http.request(method, url, headers=self.headers(role, token), **kw)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise FacedexError(Errors.DASHBOARD_UPSTREAM, f"{method} {url}: {type(exc).__name__}: {exc}") from None
        if resp.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            return resp.status_code, resp.json()
        return resp.status_code, resp.text

    async def json(self, method: str, url: str, role: str = "internal", token: str | None = None, **kw: Any) -> Any:
        """The JSON answer of a 2xx; anything else raises 18004 carrying the service's own error."""
        status, body = await self.request(method, url, role, token, **kw)
        if status >= 300:
            detail = body.get("detail") if isinstance(body, dict) else str(body)[:200]
            code = body.get("error_code") if isinstance(body, dict) else None
            raise FacedexError(Errors.DASHBOARD_UPSTREAM, f"{url} answered {status} ({code}): {detail}")
        return body
