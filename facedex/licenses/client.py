"""Asking the Licenses service whether a feature is on, and keeping the answer (matchers and the proxy).

Services never ask per request: :class:`License` is refreshed by a supervised loop every
``license.check_period_s`` and read for free on the hot path (a client per request cost the proxy
13 % of its CPU in TLS context set-up alone under load).
"""

from __future__ import annotations

import logging

import httpx

from facedex.config import Settings
from facedex.internal_auth import bearer

log = logging.getLogger(__name__)


async def feature_enabled(settings: Settings, http: httpx.AsyncClient, feature: str = "index",
                          timeout_s: float = 3.0) -> tuple[bool, str]:
    """(enabled, reason); an unreachable Licenses service counts as not enabled."""
    url = f"{settings.licenses.url}/1/features/{feature}"
    try:
        resp = await http.get(url, headers=bearer(settings.internal_token), timeout=timeout_s)
        status = resp.json()
        if resp.status_code != 200:
            return False, f"licenses service answered {resp.status_code}: {status.get('detail', '')}"
        return bool(status.get("enabled")), status.get("reason") or ""
    except (httpx.HTTPError, TimeoutError, ValueError) as exc:
        return False, f"licenses service unreachable: {exc}"


class License:
    """The last answer for one feature; :meth:`check` refreshes it (run it in a supervised loop)."""

    def __init__(self, settings: Settings, feature: str = "index", timeout_s: float = 3.0) -> None:
        self.settings = settings
        self.feature = feature
        self.timeout_s = timeout_s
        self.licensed = False
        self.reason = "not checked yet"
        self._http: httpx.AsyncClient | None = None

    async def check(self) -> None:
        if self._http is None or self._http.is_closed:
            self._http = httpx.AsyncClient(timeout=self.timeout_s)
        licensed, reason = await feature_enabled(self.settings, self._http, self.feature, self.timeout_s)
        if licensed != self.licensed:
            log.warning("%s %s (%s)", self.feature, "licensed" if licensed else "NOT licensed", reason or "ok")
        self.licensed, self.reason = licensed, reason

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
