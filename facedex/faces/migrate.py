"""Plain versioned SQL migrations.

Files ``migrations/NNNN_name.sql`` run in order, each in its own transaction,
and are recorded in ``schema_migrations``. An advisory lock makes concurrent
``facedex migrate`` runs (several services starting at once) safe.
"""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_LOCK_ID = 0x66616365  # "face"


def migration_files() -> list[tuple[int, str, str]]:
    files = []
    for entry in resources.files("facedex.faces").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            files.append((number, entry.name, entry.read_text()))
    return sorted(files)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; return the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_time timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for number, name, sql in migration_files():
            if number in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)
            log.info("applied migration %s", name)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if it does not exist (connecting to ``postgres`` to do so)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    dbname = parts.path.lstrip("/") or "postgres"
    try:
        conn = await asyncpg.connect(url)
        await conn.close()
        return
    except asyncpg.InvalidCatalogNameError:
        pass
    admin = urlunsplit(parts._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{dbname}"')
        log.info("created database %s", dbname)
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await conn.close()
