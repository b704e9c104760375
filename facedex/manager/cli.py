"""``facedex tasks ...`` and ``facedex indexes ...``: index builds from the shell, through the Index Manager (facedex.client)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from facedex.client import Client, FacedexAPIError
from facedex.config import get_settings
from facedex.manager.models import TaskStatus

app = typer.Typer(help="Index-build tasks (through the Index Manager).", no_args_is_help=True)
indexes_app = typer.Typer(help="Indexes in storage (through the Index Manager).", no_args_is_help=True)
console = Console()

Url = Annotated[str | None, typer.Option(help="Index Manager URL (default from settings).")]
Token = Annotated[
    str | None, typer.Option(help="Bearer token for the Index Manager (default: the admin token in settings).", envvar="FDX_TOKEN")
]
FINAL = (TaskStatus.success, TaskStatus.failed, TaskStatus.cancelled)


def id_column(table: Table, name: str) -> None:
    """A column that always shows whole UUIDs (ids are copied from here into other commands)."""
    table.add_column(name, no_wrap=True, min_width=36)


def _admin_token() -> str | None:
    """The operator's credential: the admin token from settings, else the one `facedex up` keeps in the data folder."""
    settings = get_settings()
    path = settings.data_dir / "admin_token"
    return settings.admin_token or (path.read_text().strip() if path.is_file() else None)


@contextmanager
def manager(url: str | None, token: str | None) -> Iterator[Client]:
    """A client of the Index Manager; an error answer is printed with its code and exits 1."""
    settings = get_settings()
    with cli_client(Client(manager_url=url or settings.manager.url, manager_token=token or _admin_token())) as client:
        yield client


@contextmanager
def cli_client(client: Client) -> Iterator[Client]:
    """Use ``client`` for one command: an error answer is printed with its code and exits 1; closed at the end."""
    try:
        yield client
    except FacedexAPIError as err:
        console.print(f"[red]{err.error_code} {err.desc}[/]: {err.detail}")
        raise typer.Exit(1) from None
    finally:
        client.close()


@app.command("create")
def create(
    list_id: Annotated[uuid.UUID, typer.Argument(help="List to index.")],
    watch: Annotated[bool, typer.Option(help="Follow the build until it ends.")] = True,
    url: Url = None,
    token: Token = None,
) -> None:
    """Queue a one-time index build for a list."""
    with manager(url, token) as fx:
        task = fx.create_task(list_id)
    console.print(f"task {task.task_id} queued for list {list_id}")
    if watch:
        watch_(str(task.task_id), url, token)


@app.command("list")
def list_(
    status: Annotated[TaskStatus | None, typer.Option(help="Only tasks in this status.")] = None,
    list_id: Annotated[uuid.UUID | None, typer.Option("--list", help="Only tasks of this list.")] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Tasks, newest first."""
    with manager(url, token) as fx:
        tasks = fx.get_tasks(status=status, list_id=list_id)
    table = Table()
    id_column(table, "task")
    id_column(table, "list")
    for column in ("type", "status", "progress", "faces", "error"):
        table.add_column(column)
    for t in tasks:
        err = f"{t.error.error_code} {t.error.detail}" if t.error else ""
        table.add_row(str(t.task_id), str(t.list_id), t.type.value, t.status.value, f"{t.progress:.0%}", str(t.count or ""), err)
    console.print(table)


@app.command("watch")
def watch_(task_id: uuid.UUID, url: Url = None, token: Token = None) -> None:
    """Follow a task with a live progress bar until it ends."""
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with manager(url, token) as fx, Progress(*columns, console=console) as bar:
        shown = bar.add_task(f"task {task_id}", total=1.0)
        while True:
            task = fx.get_task(task_id)
            bar.update(shown, completed=task.progress, description=f"task {task_id} {task.status.value}")
            if task.status in FINAL:
                break
            time.sleep(0.5)
    if task.status == TaskStatus.success:
        console.print(f"[green]index {task.index_id}[/] with {task.count} faces")
    else:
        err = f"{task.error.error_code} {task.error.detail}" if task.error else ""
        console.print(f"[red]{task.status.value}[/]: {err}")
        raise typer.Exit(1)


@app.command("cancel")
def cancel(task_id: uuid.UUID, url: Url = None, token: Token = None) -> None:
    """Cancel a pending or running task (a running build is stopped; the master records it as cancelled)."""
    with manager(url, token) as fx:
        task = fx.cancel_task(task_id)
    console.print(f"task {task.task_id}: {task.status.value}" + (" (cancelling)" if task.status == TaskStatus.indexing else ""))


@indexes_app.command("list")
def indexes_list(
    list_id: Annotated[uuid.UUID | None, typer.Option("--list", help="Only indexes of this list.")] = None,
    url: Url = None,
    token: Token = None,
) -> None:
    """Indexes in storage, newest first."""
    with manager(url, token) as fx:
        metas = fx.get_indexes(list_id)
    table = Table()
    id_column(table, "index")
    id_column(table, "list")
    for column in ("version", "faces", "change_seq", "kind", "re-scored", "created"):
        table.add_column(column)
    for m in metas:
        table.add_row(m.index_id, m.list_id, str(m.descriptor_version), str(m.count), str(m.change_seq), m.kind,
                      str(m.params.get("rescore", "")), m.create_time)
    console.print(table)


@indexes_app.command("delete")
def indexes_delete(index_id: uuid.UUID, url: Url = None, token: Token = None) -> None:
    """Remove an index from storage (matchers drop it on their next reload)."""
    with manager(url, token) as fx:
        fx.delete_index(index_id)
    console.print(f"index {index_id} deleted")
