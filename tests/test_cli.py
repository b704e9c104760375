"""The command line as a user runs it: help, embedded servers, `up --demo`, import."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import numpy as np
import redis

from facedex.embedded import resolve
from tests.conftest import free_port


def facedex(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facedex", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def test_help_explains_itself() -> None:
    out = facedex("--help")
    assert out.returncode == 0
    for command in ("up", "serve", "migrate", "import"):
        assert command in out.stdout
    serve = facedex("serve", "--help").stdout
    assert "bruteforce" in serve and "proxy" in serve and "api" in serve


def test_embedded_servers_start_when_nothing_answers(tmp_path: Path, monkeypatch) -> None:
    """What a laptop without PostgreSQL/Redis gets from `facedex up`: real servers from pip packages."""
    from facedex import embedded
    from facedex.services import prepare_database

    dead = free_port()
    monkeypatch.setattr(embedded, "LOCAL_POSTGRES", f"postgresql://postgres@127.0.0.1:{dead}/facedex")
    monkeypatch.setattr(embedded, "port_open", lambda host, port, timeout=0.5: False)

    from facedex.faces.migrate import migration_files

    async def run() -> None:
        with_urls = await resolve("postgresql://x@127.0.0.1:1/y", "redis://127.0.0.1:1/0", tmp_path, embed=True)
        assert with_urls.started == []  # a URL in the settings wins, nothing started
        resolved = await resolve(None, None, tmp_path, embed=True)
        try:
            assert len(resolved.started) == 2 and str(tmp_path) in resolved.started[0]
            assert await prepare_database(resolved.database_url) == [name for _, name, _ in migration_files()]
            conn = await asyncpg.connect(resolved.database_url)
            assert await conn.fetchval("SELECT count(*) FROM lists") == 0
            await conn.close()
            client = redis.Redis.from_url(resolved.redis_url)
            assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
        finally:
            resolved.stop()
        try:
            await resolve(None, None, tmp_path, embed=False)
            raise AssertionError("serve without a database must fail clearly")
        except RuntimeError as exc:
            assert "FACEDEX_DATABASE_URL" in str(exc)

    asyncio.run(run())


def test_up_demo_and_import(database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        FACEDEX_DATABASE_URL=database_url,
        FACEDEX_REDIS_URL=redis_url,
        FACEDEX_REDIS_PREFIX=redis_prefix + ":up",
        FACEDEX_DATA_DIR=str(tmp_path),
        **{f"FACEDEX_{name}__PORT": str(free_port()) for name in ("API", "PROXY", "BRUTEFORCE", "MANAGER", "INDEXER", "DASHBOARD")},
    )
    out = facedex("up", "--demo", "--exit-after-demo", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "demo ok" in out.stdout and "no longer" in out.stdout
    for name in ("api", "proxy", "bruteforce", "manager", "indexer"):
        assert (tmp_path / "logs" / f"{name}.log").exists()

    created = facedex("account", "create", "importer", env=env)
    account = created.stdout.split("account_id:")[1].split()[0]
    list_id = facedex("list", "create", "--account", account, env=env).stdout.strip()
    np.save(tmp_path / "faces.npy", np.random.default_rng(0).standard_normal((2500, 512)).astype(np.float32))
    out = facedex("import", str(tmp_path / "faces.npy"), "--list", list_id, "--chunk", "1000", env=env)
    assert out.returncode == 0, out.stderr
    assert f"imported 2500 faces into list {list_id}" in out.stdout
    import redis

    from facedex.redis.keys import Keys

    # the import announced the list's head as the API's writes do, or the Indexed Matchers would not see it
    announced = redis.Redis.from_url(redis_url).get(Keys(redis_prefix + ":up").list_head(Keys.matching_label(list_id, 1)))
    assert announced is not None and int(announced) == 2500
    bad = facedex("import", str(tmp_path / "faces.npy"), "--list", "not-a-uuid", env=env)
    assert bad.returncode != 0


async def test_tasks_cli(services, store) -> None:
    from tests.test_indexing import new_list

    vecs = np.random.default_rng(1).standard_normal((300, 512)).astype(np.float32)
    _, list_id, _ = await new_list(store, vecs)
    url = services.url("manager")
    out = facedex("tasks", "create", str(list_id), "--url", url, timeout=120, env=services.env)  # the admin token
    assert out.returncode == 0, out.stdout + out.stderr
    assert "with 300 faces" in out.stdout
    listed = facedex("tasks", "list", "--url", url, "--status", "success", env=services.env)
    assert str(list_id)[:8] in listed.stdout
    again = facedex("tasks", "create", str(list_id), "--url", url, env=services.env)
    assert again.returncode == 1 and "26202" in again.stdout


def test_up_stops_cleanly_on_sigterm(database_url: str, redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    """`facedex up` as a background job or under a supervisor: SIGTERM stops every service it started."""
    import signal
    import time

    import httpx
    import psutil

    ports = {name: free_port() for name in ("API", "PROXY", "BRUTEFORCE", "MANAGER", "INDEXER", "LICENSES", "MATCHER", "DASHBOARD")}
    env = {**os.environ, "FACEDEX_DATABASE_URL": database_url, "FACEDEX_REDIS_URL": redis_url,
           "FACEDEX_REDIS_PREFIX": redis_prefix + ":sigterm", "FACEDEX_DATA_DIR": str(tmp_path),
           **{f"FACEDEX_{name}__PORT": str(port) for name, port in ports.items()}}
    proc = subprocess.Popen([sys.executable, "-m", "facedex", "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{ports['DASHBOARD']}/healthcheck", timeout=1).status_code == 200:  # started last
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "up did not start"
        time.sleep(0.3)
    children = psutil.Process(proc.pid).children()
    assert len(children) == 8
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
