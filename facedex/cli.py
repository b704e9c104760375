"""The ``facedex`` command."""

from __future__ import annotations

import asyncio
import uuid
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from facedex import __version__
from facedex.config import get_settings
from facedex.services import SERVICES

app = typer.Typer(
    help=(
        "facedex: 1:N face identification at scale. Lists of faces with descriptors, "
        "exact (brute-force) matching, and the services around it.\n\n"
        "Start everything on this machine with `facedex up` (add --demo to see it work). "
        "Settings come from FACEDEX_* variables or facedex.toml; `facedex settings` shows them."
    ),
    no_args_is_help=True,
    add_completion=False,
)
account_app = typer.Typer(help="Accounts (admin, straight to the Faces DB).", no_args_is_help=True)
list_app = typer.Typer(help="Lists (admin, straight to the Faces DB).", no_args_is_help=True)
from facedex.bench.cli import app as bench_app  # noqa: E402
from facedex.licenses.cli import app as license_app  # noqa: E402
from facedex.api.cli import faces_app  # noqa: E402
from facedex.api.cli import match as match_command  # noqa: E402
from facedex.manager.cli import app as tasks_app  # noqa: E402
from facedex.manager.cli import indexes_app  # noqa: E402

app.add_typer(account_app, name="account")
app.add_typer(list_app, name="list")
app.add_typer(bench_app, name="bench")
app.add_typer(tasks_app, name="tasks")
app.add_typer(license_app, name="license")
app.add_typer(faces_app, name="faces")
app.add_typer(indexes_app, name="indexes")
console = Console()

ServiceName = Enum("ServiceName", {name: name for name in SERVICES}, type=str)  # type: ignore[misc]


def _resolved(need_redis: bool):  # type: ignore[no-untyped-def]
    from facedex.embedded import resolve

    settings = get_settings()
    redis_url = settings.redis_url if need_redis else None
    return asyncio.run(resolve(settings.database_url, redis_url, settings.data_dir, embed=False, need_redis=need_redis))


def _database_url() -> str:
    return _resolved(need_redis=False).database_url  # type: ignore[no-any-return]


def _run_store(fn, changes_lists: bool = False):  # type: ignore[no-untyped-def]
    """Run ``fn(store)`` against the Faces DB (migrated first). ``changes_lists``: the store announces list changes in
    the deployment's Redis, as the API's does (:mod:`facedex.redis.heads`; the Indexed Matchers rely on every writer
    of list membership doing so), so Redis is needed."""
    from facedex.faces.store import FacesStore, create_pool
    from facedex.redis.connection import connect
    from facedex.redis.heads import ChangeHeads
    from facedex.redis.keys import Keys
    from facedex.services import prepare_database

    resolved = _resolved(need_redis=changes_lists)

    async def run():  # type: ignore[no-untyped-def]
        await prepare_database(resolved.database_url)
        pool = await create_pool(resolved.database_url, max_size=4)
        redis = connect(resolved.redis_url, decode=False, socket_timeout=5.0) if changes_lists else None
        try:
            heads = ChangeHeads(redis, Keys(get_settings().redis_prefix)) if redis is not None else None
            return await fn(FacesStore(pool, heads))
        finally:
            await pool.close()
            if redis is not None:
                await redis.aclose()

    return asyncio.run(run())


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="After start, run a demo: 10k faces, matching, detach.")] = False,
    exit_after_demo: Annotated[bool, typer.Option(help="Stop everything once the demo has run.")] = False,
) -> None:
    """Run every service on this machine (embedded PostgreSQL/Valkey if none is configured or running)."""
    from facedex.up import run_up

    raise typer.Exit(run_up(get_settings(), demo=demo, exit_after_demo=exit_after_demo))


@app.command()
def serve(
    service: Annotated[ServiceName, typer.Argument(help="Which service: " + ", ".join(SERVICES))],
    host: Annotated[str | None, typer.Option(help="Listen address (default from settings).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (default from settings).")] = None,
) -> None:
    """Run one service in the foreground (scale out by running more, on any machine)."""
    from facedex.services import serve as serve_service

    serve_service(service.value, get_settings(), host, port)


@app.command()
def migrate() -> None:
    """Create the Faces DB if needed and apply pending schema migrations."""
    from facedex.services import prepare_database

    applied = asyncio.run(prepare_database(_database_url()))
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@app.command(name="import")
def import_(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".npy, .csv or .parquet file")],
    list_id: Annotated[uuid.UUID, typer.Option("--list", help="List to import into (its account owns the faces).")],
    version: Annotated[int | None, typer.Option(help="Descriptor version (default from settings).")] = None,
    chunk: Annotated[int, typer.Option(help="Rows per COPY transaction.")] = 20_000,
) -> None:
    """Bulk-load faces with descriptors into a list (COPY; chunked, resumable by chunk)."""
    from facedex.faces.importer import import_file, open_file

    v = version if version is not None else get_settings().default_descriptor_version
    total, _ = open_file(path, chunk)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"importing {path.name}", total=total)
        done = _run_store(lambda store: import_file(store, list_id, path, v, chunk, lambda n: bar.advance(task, n)),
                          changes_lists=True)
    console.print(f"imported {done} faces into list {list_id}")


@account_app.command("create")
def account_create(name: str) -> None:
    """Create an account; prints its id and bearer token (shown once)."""
    account_id, token = _run_store(lambda store: store.create_account(name))
    console.print(f"account_id: {account_id}\ntoken: {token}")


@list_app.command("create")
def list_create(
    account: Annotated[uuid.UUID, typer.Option(help="Owner account id.")],
    user_data: Annotated[str, typer.Option(help="Free text kept with the list.")] = "",
) -> None:
    """Create a list for an account; prints its id."""
    row = _run_store(lambda store: store.create_list(account, user_data))
    console.print(str(row.list_id))


@app.command()
def settings() -> None:
    """Print the settings in force (from FACEDEX_* variables, facedex.toml and defaults), secrets masked."""
    from facedex.settings_view import settings_view

    console.print_json(data=settings_view(get_settings()))


@app.command()
def version() -> None:
    """Print the facedex version."""
    console.print(__version__)


app.command("match")(match_command)


def main() -> None:
    from pydantic import ValidationError
    from rich.markup import escape

    from facedex.settings_strict import UnknownSettingError

    try:
        app()
    except (UnknownSettingError, ValidationError) as exc:  # bad settings: say which, no traceback
        if isinstance(exc, ValidationError) and exc.title != "Settings":
            raise
        Console(stderr=True).print(f"[red]invalid settings[/]: {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
