"""The services facedex runs, by name, and how one is served."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI

from facedex.config import ServiceAddress, Settings


@dataclass(frozen=True)
class Service:
    name: str
    summary: str
    app: str  # "module:function" building the FastAPI app; imported only when this service runs
    address: Callable[[Settings], ServiceAddress]
    needs_db: bool = True
    needs_redis: bool = False
    in_up: Callable[[Settings], bool] = lambda settings: True  # whether `facedex up` starts it

    def build(self, settings: Settings) -> FastAPI:
        module, _, function = self.app.partition(":")
        return getattr(importlib.import_module(module), function)(settings)


def facedex_command(*args: str) -> list[str]:
    """argv running ``facedex ARGS`` with this interpreter, importable from any working directory.

    ``-P`` (Python 3.11+) keeps the working directory off the import path: started from a clone's parent folder,
    plain ``python -m facedex`` would import the clone folder as a namespace package named facedex.
    """
    return [sys.executable, "-P", "-m", "facedex", *args]


# Start order matters for `facedex up`: a service comes after those it calls.
SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service("indexer", "Indexer: builds list indexes", "facedex.indexer.app:build_app", lambda s: s.indexer),
        Service("manager", "Index Manager: build tasks", "facedex.manager.app:build_app", lambda s: s.manager, needs_redis=True),
        Service("licenses", "Licenses: the signed license's features", "facedex.licenses.app:build_app", lambda s: s.licenses, needs_db=False),
        Service("matcher", "Indexed Matcher: indexes in memory, Redis streams", "facedex.matcher.app:build_app", lambda s: s.matcher, needs_redis=True),
        Service("bruteforce", "Matcher (brute force): exact matching", "facedex.bruteforce.app:build_app", lambda s: s.bruteforce),
        Service("proxy", "Matcher Proxy: routes matching requests", "facedex.proxy.app:build_app", lambda s: s.proxy, needs_db=False, needs_redis=True),
        Service("extractor", "Extractor: faces and descriptors from images", "facedex.extractor.app:build_app", lambda s: s.extractor,
                needs_db=False, in_up=lambda s: s.extraction.url == s.extractor.url),  # else the API extracts in-process
        # the API writes lists: it announces their change heads in Redis (facedex.redis.heads)
        Service("api", "public REST API", "facedex.api.app:build_app", lambda s: s.api, needs_redis=True),
        Service("dashboard", "Dashboard: the operator's web UI", "facedex.dashboard.app:build_app", lambda s: s.dashboard,
                needs_redis=True),
    )
}


async def prepare_database(url: str) -> list[str]:
    """Create the database if needed and apply migrations (safe to run concurrently)."""
    import asyncpg

    from facedex.faces.migrate import ensure_database, migrate

    await ensure_database(url)
    conn = await asyncpg.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def serve(name: str, settings: Settings, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    from facedex.embedded import resolve
    from facedex.logs import setup_logging

    service = SERVICES[name]
    setup_logging(name, settings.log_format, settings.log_level)
    if service.needs_db or service.needs_redis:
        resolved = asyncio.run(
            resolve(settings.database_url, settings.redis_url, settings.data_dir, embed=False,
                    need_redis=service.needs_redis, need_db=service.needs_db)
        )
        settings = settings.model_copy(update={"database_url": resolved.database_url, "redis_url": resolved.redis_url})
        if resolved.database_url:
            asyncio.run(prepare_database(resolved.database_url))
    address = service.address(settings)
    uvicorn.run(
        service.build(settings),
        host=host or address.host,
        port=port or address.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        # longer than any client's keep-alive (facedex.rpc: 30 s): the client closes idle connections first, so a
        # request is never written into a connection the server is closing (a POST cannot be safely retried)
        timeout_keep_alive=75,
    )
