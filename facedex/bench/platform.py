"""A throwaway, licensed platform for ``facedex bench e2e --own-platform``.

The end-to-end benchmark needs every service running with a license that
enables the indexed route. This starts ``facedex up`` with everything of its
own: a temporary data folder, a fresh signing key and license, free ports, a
Redis key prefix and a database of its own on the local PostgreSQL (or
embedded servers where none answers), and removes all of it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from facedex.bench.common import interrupt
from facedex.services import SERVICES, facedex_command

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Platform:
    api: str
    manager: str
    admin_token: str
    pid: int  # of its ``facedex up``: the services are its children


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drop_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url + "/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _delete_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(LOCAL_REDIS)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)


@contextmanager
def own_platform(log=print) -> Iterator[Platform]:  # type: ignore[no-untyped-def]
    from facedex.embedded import port_open
    from facedex.licenses.license import generate_keys, issue

    work = Path(tempfile.mkdtemp(prefix="facedex-bench-e2e-"))
    tag = secrets.token_hex(4)
    private, public = generate_keys()
    (work / "license.json").write_bytes(issue(private, "facedex bench e2e", ["index"], 1))
    env = {**os.environ, "FACEDEX_DATA_DIR": str(work), "FACEDEX_ADMIN_TOKEN": secrets.token_urlsafe(16),
           "FACEDEX_INTERNAL_TOKEN": secrets.token_urlsafe(24),
           "FACEDEX_LICENSE__PUBLIC_KEY": public, "FACEDEX_LICENSE__PATH": str(work / "license.json"),
           "FACEDEX_REDIS_PREFIX": f"bench-e2e-{tag}"}
    ports = {name: _free_port() for name in SERVICES}
    env.update({f"FACEDEX_{name.upper()}__PORT": str(port) for name, port in ports.items()})
    database = f"facedex_bench_e2e_{tag}"
    local_pg = port_open("127.0.0.1", 5432)
    if local_pg:
        env["FACEDEX_DATABASE_URL"] = f"{LOCAL_POSTGRES}/{database}"
    local_redis = port_open("127.0.0.1", 6379)
    log(f"starting a licensed platform in {work} (database {database if local_pg else 'embedded'})")
    proc = subprocess.Popen(facedex_command("up"), env=env, stdout=(work / "up.log").open("wb"),
                            stderr=subprocess.STDOUT)
    previous = _exit_on_sigterm()
    try:
        api = f"http://127.0.0.1:{ports['api']}"
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"facedex up exited: {(work / 'up.log').read_text()[-2000:]}")
            try:
                if httpx.get(api + "/healthcheck", timeout=1).status_code == 200 and "is up" in (work / "up.log").read_text():
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the platform did not come up in 5 minutes")
            time.sleep(0.5)
        yield Platform(api, f"http://127.0.0.1:{ports['manager']}", env["FACEDEX_ADMIN_TOKEN"], proc.pid)
    finally:
        interrupt(proc, 60)
        if local_pg:
            asyncio.run(_drop_database(LOCAL_POSTGRES, database))
        if local_redis:
            _delete_keys(env["FACEDEX_REDIS_PREFIX"])
        shutil.rmtree(work, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm():  # type: ignore[no-untyped-def]
    """SIGTERM (a plain ``kill``) raises SystemExit here, so the platform is stopped and its database and keys dropped
    as on Ctrl-C, instead of left running without its bench. Returns the previous handler (None off the main thread)."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: signals cannot be handled here
        return None
