"""One way to connect to Redis, with the settings' URL."""

from __future__ import annotations

import redis.asyncio as aredis


def connect(url: str, decode: bool = True) -> aredis.Redis:
    """``decode=False`` for binary payloads (msgpack stream entries and replies)."""
    return aredis.Redis.from_url(
        url, decode_responses=decode, health_check_interval=10, socket_connect_timeout=5, max_connections=256
    )
