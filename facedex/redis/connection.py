"""One way to connect to Redis, with the settings' URL."""

from __future__ import annotations

import redis.asyncio as aredis


def connect(url: str) -> aredis.Redis:
    return aredis.Redis.from_url(url, decode_responses=True, health_check_interval=10, socket_connect_timeout=5)
