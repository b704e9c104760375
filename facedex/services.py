"""The services facedex runs, by name, and how one is served."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI

from facedex.config import ServiceAddress, Settings


@dataclass(frozen=True)
class Service:
    name: str
    summary: str
    build: Callable[[Settings], FastAPI]
    address: Callable[[Settings], ServiceAddress]
    needs_db: bool = True
    needs_redis: bool = False


def _api(settings: Settings) -> FastAPI:
    from facedex.api.app import build_app

    return build_app(settings)


def _proxy(settings: Settings) -> FastAPI:
    from facedex.proxy.app import build_app

    return build_app(settings)


def _indexer(settings: Settings) -> FastAPI:
    from facedex.indexer.app import build_app

    return build_app(settings)


def _manager(settings: Settings) -> FastAPI:
    from facedex.manager.app import build_app

    return build_app(settings)


def _bruteforce(settings: Settings) -> FastAPI:
    from facedex.bruteforce.app import build_app

    return build_app(settings)


# Start order matters for `facedex up`: a service comes after those it calls.
SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service("indexer", "Indexer: builds list indexes", _indexer, lambda s: s.indexer),
        Service("manager", "Index Manager: build tasks", _manager, lambda s: s.manager, needs_redis=True),
        Service("bruteforce", "Matcher (brute force): exact matching", _bruteforce, lambda s: s.bruteforce),
        Service("proxy", "Matcher Proxy: routes matching requests", _proxy, lambda s: s.proxy, needs_db=False),
        Service("api", "public REST API", _api, lambda s: s.api),
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
    if service.needs_db:
        resolved = asyncio.run(resolve(
                settings.database_url, settings.redis_url, settings.data_dir, embed=False, need_redis=service.needs_redis
            )
        )
        settings = settings.model_copy(update={"database_url": resolved.database_url, "redis_url": resolved.redis_url})
        asyncio.run(prepare_database(resolved.database_url))
    address = service.address(settings)
    uvicorn.run(
        service.build(settings),
        host=host or address.host,
        port=port or address.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
