"""Advertising which lists this matcher serves: label keys with a TTL plus the proxies' sorted set.

Renewed every ``label_ttl_s / 3`` (a supervised loop), so after a Redis restart that lost them the
labels are back within one period, and a dead matcher's labels expire on their own.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aredis

from facedex.redis.keys import Keys


class Labels:
    def __init__(self, redis: aredis.Redis, keys: Keys, matcher_id: str, ttl_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.matcher_id = matcher_id
        self.ttl_s = ttl_s

    async def advertise(self, labels: Iterable[str]) -> None:
        labels = list(labels)
        if not labels:
            return
        ttl_ms = int(self.ttl_s * 1000)
        seconds, micros = await self.redis.time()  # the server's clock: matchers' and proxies' clocks may differ
        expires = seconds * 1000 + micros // 1000 + ttl_ms
        async with self.redis.pipeline(transaction=False) as p:
            for label in labels:
                p.set(self.keys.label(label, self.matcher_id), self.matcher_id, px=ttl_ms)
            p.zadd(self.keys.labels, {self.keys.labels_member(label, self.matcher_id): expires for label in labels})
            await p.execute()

    async def withdraw(self, label: str) -> None:
        """Stop advertising ``label`` at once (its index left storage, or this matcher stops)."""
        await self.redis.delete(self.keys.label(label, self.matcher_id))
        await self.redis.zrem(self.keys.labels, self.keys.labels_member(label, self.matcher_id))
