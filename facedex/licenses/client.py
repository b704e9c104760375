"""Asking the Licenses service whether a feature is on: one call, used by the matchers and the proxy."""

from __future__ import annotations

import aiohttp

from facedex.config import Settings
from facedex.internal_auth import bearer


async def feature_enabled(settings: Settings, feature: str = "index", timeout_s: float = 3.0) -> tuple[bool, str]:
    """(enabled, reason); an unreachable Licenses service counts as not enabled."""
    url = f"{settings.licenses.url}/1/features/{feature}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
            http.get(url, headers=bearer(settings.internal_token)) as resp,
        ):
            status = await resp.json()
            if resp.status != 200:
                return False, f"licenses service answered {resp.status}: {status.get('detail', '')}"
        return bool(status.get("enabled")), status.get("reason") or ""
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return False, f"licenses service unreachable: {exc}"
