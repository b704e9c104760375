"""``facedex up``: every service on this machine, with embedded databases where none is configured."""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from facedex.config import Settings
from facedex.embedded import port_open, resolve
from facedex.services import SERVICES, facedex_command, prepare_database
from facedex.restarts import ServiceRestarter

console = Console(stderr=True)


def _kept_secret(configured: str | None, path: Path) -> str:
    """The configured secret, or one kept (mode 0600, created so) in the data folder."""
    if configured:
        return configured
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _admin_token(settings: Settings) -> str:
    return _kept_secret(settings.admin_token, settings.data_dir / "admin_token")


def _internal_token(settings: Settings) -> str:
    """The service-to-service secret every service started here shares (facedex.internal_auth)."""
    return _kept_secret(settings.internal_token, settings.data_dir / "internal_token")


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(url + "/healthcheck", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _spawn(name: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(facedex_command("serve", name), env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_up(settings: Settings, demo: bool = False, exit_after_demo: bool = False) -> int:
    # stop cleanly on Ctrl-C and on SIGTERM, even where SIGINT was inherited ignored (a background job)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    resolved = asyncio.run(resolve(settings.database_url, settings.redis_url, settings.data_dir, embed=True))
    for line in resolved.started:
        console.print(f"[yellow]started {line}[/] (set FACEDEX_DATABASE_URL / FACEDEX_REDIS_URL to use your own)")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    supervisor = ServiceRestarter(procs, say=lambda text: console.print(text, markup=False, highlight=False))
    logs_dir = settings.data_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    try:
        applied = asyncio.run(prepare_database(resolved.database_url))
        if applied:
            console.print(f"applied migrations: {', '.join(applied)}")
        admin_token = _admin_token(settings)
        env = dict(os.environ)
        env.update(
            FACEDEX_DATABASE_URL=resolved.database_url,
            FACEDEX_REDIS_URL=resolved.redis_url or "",
            FACEDEX_ADMIN_TOKEN=admin_token,
            FACEDEX_INTERNAL_TOKEN=_internal_token(settings),
        )
        if not settings.indexing.indexers:  # the manager dispatches to the indexer started here
            env["FACEDEX_INDEXING__INDEXERS"] = f'["{settings.indexer.url}"]'

        services = {name: service for name, service in SERVICES.items() if service.in_up(settings)}
        for name, service in services.items():
            address = service.address(settings)
            if port_open(address.host, address.port):
                console.print(f"[red]port {address.port} ({name}) is taken[/]: stop what uses it or set FACEDEX_{name.upper()}__PORT")
                return 1
            log_path = logs_dir / f"{name}.log"
            start = functools.partial(_spawn, name, env, log_path)
            if not _wait_healthy(address.url, supervisor.add(name, start, log_path), timeout_s=60):
                tail = log_path.read_text(errors="replace").splitlines()[-20:]
                console.print(f"[red]{name} did not become healthy[/]; last lines of {log_path}:\n" + "\n".join(tail))
                return 1
        table = Table(title="facedex is up")
        for column in ("service", "url", "log"):
            table.add_column(column)
        for name, service in services.items():
            table.add_row(name, service.address(settings).url, str(logs_dir / f"{name}.log"))
        console.print(table)
        console.print(f"API docs: {settings.api.url}/docs   admin token: {_token_hint(settings)}")
        console.print(f"dashboard: {settings.dashboard.url} (log in with the admin token)")
        if demo:
            from facedex.demo import run_demo

            ok = run_demo(settings.api.url, admin_token)
            if exit_after_demo:
                return 0 if ok else 1
        console.print("Press Ctrl-C to stop.")
        while True:  # a service that dies is restarted (with backoff); the others keep serving
            supervisor.poll()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(procs)
        resolved.stop()


def _token_hint(settings: Settings) -> str:
    return "from FACEDEX_ADMIN_TOKEN" if settings.admin_token else str(Path(settings.data_dir) / "admin_token")
