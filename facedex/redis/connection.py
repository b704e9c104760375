"""One way to connect to Redis, with the settings' URL."""

from __future__ import annotations

import redis.asyncio as aredis


def connect(url: str, decode: bool = True, socket_timeout: float | None = None) -> aredis.Redis:
    """``decode=False`` for binary payloads (msgpack stream entries and replies).

    ``socket_timeout``: the matching path passes a few seconds, so a stalled Redis makes calls fail (and
    supervised loops restart) instead of hanging; blocking reads there block for well under it.
    """
    return aredis.Redis.from_url(
        url, decode_responses=decode, health_check_interval=2 if socket_timeout else 10, socket_connect_timeout=5,
        socket_timeout=socket_timeout, max_connections=256,
    )
