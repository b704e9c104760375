"""What ``facedex settings`` prints: the settings in force, secrets masked, and where the databases really are.

Masked: the admin token, the S3 secret key, any ``*_token`` / ``*secret*`` / ``*password*`` key, and the password
inside any URL (database, Redis, S3 endpoint...). An unset database or Redis URL is shown as what would be used.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from facedex.config import Settings
from facedex.embedded import LOCAL_POSTGRES, LOCAL_REDIS, port_open, postgres_answers

MASK = "***"
_URL_PASSWORD = re.compile(r"^(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*:)(?P<password>[^@/]*)@")


def _secret_key(key: str) -> bool:
    key = key.lower()
    return key.endswith("_token") or key == "token" or "secret" in key or "password" in key


def mask_url(url: str) -> str:
    """``redis://user:pw@host`` -> ``redis://user:***@host``; URLs without a password unchanged."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@" if m["password"] else m[0], url)


def masked(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if isinstance(value, str):
        return MASK if _secret_key(key) and value else mask_url(value)
    return value


def resolved_database(settings: Settings) -> str:
    if settings.database_url:
        return mask_url(settings.database_url)
    if asyncio.run(postgres_answers(LOCAL_POSTGRES)):
        return f"(unset) local server at {LOCAL_POSTGRES}"
    return f"(unset) no local server answers: `facedex up` starts an embedded one in {settings.data_dir / 'postgres'}"


def resolved_redis(settings: Settings) -> str:
    if settings.redis_url:
        return mask_url(settings.redis_url)
    if port_open("127.0.0.1", 6379):
        return f"(unset) local server at {LOCAL_REDIS}"
    return f"(unset) no local server answers: `facedex up` starts an embedded Valkey in {settings.data_dir / 'valkey'}"


def settings_view(settings: Settings) -> dict[str, Any]:
    view: dict[str, Any] = masked(settings.model_dump(mode="json"))
    view["database_url"] = resolved_database(settings)
    view["redis_url"] = resolved_redis(settings)
    return view
