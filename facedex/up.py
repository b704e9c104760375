"""``facedex up``: every service on this machine, with embedded databases where none is configured."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from facedex.config import Settings
from facedex.embedded import port_open, resolve
from facedex.services import SERVICES, prepare_database

console = Console(stderr=True)


def _admin_token(settings: Settings) -> str:
    """The configured admin token, or one kept (mode 0600) in the data folder."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_dir / "admin_token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


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
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "facedex", "serve", name],
                env=env,
                stdout=log_path.open("ab"),
                stderr=subprocess.STDOUT,
            )
            if not _wait_healthy(address.url, procs[name], timeout_s=60):
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
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        dead = [n for n, p in procs.items() if p.poll() is not None]
        console.print(f"[red]service(s) exited: {', '.join(dead)}[/]; see {logs_dir}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(procs)
        resolved.stop()


def _token_hint(settings: Settings) -> str:
    return "from FACEDEX_ADMIN_TOKEN" if settings.admin_token else str(Path(settings.data_dir) / "admin_token")
