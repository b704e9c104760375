"""Asking the Licenses service whether a feature is on: one call, used by the matchers and the proxy."""

from __future__ import annotations

import httpx

from facedex.config import Settings
from facedex.internal_auth import bearer


async def feature_enabled(settings: Settings, feature: str = "index", timeout_s: float = 3.0) -> tuple[bool, str]:
    """(enabled, reason); an unreachable Licenses service counts as not enabled."""
    url = f"{settings.licenses.url}/1/features/{feature}"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            resp = await http.get(url, headers=bearer(settings.internal_token))
        status = resp.json()
        if resp.status_code != 200:
            return False, f"licenses service answered {resp.status_code}: {status.get('detail', '')}"
        return bool(status.get("enabled")), status.get("reason") or ""
    except (httpx.HTTPError, TimeoutError, ValueError) as exc:
        return False, f"licenses service unreachable: {exc}"
