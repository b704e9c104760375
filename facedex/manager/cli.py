"""``facedex tasks ...``: index-build tasks from the shell, through the Index Manager's HTTP API."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from facedex.config import get_settings

app = typer.Typer(help="Index-build tasks (through the Index Manager).", no_args_is_help=True)
console = Console()

Url = Annotated[str | None, typer.Option(help="Index Manager URL (default from settings).")]


def _url(url: str | None) -> str:
    return url or get_settings().manager.url


def _headers() -> dict[str, str]:
    """The operator's credential: the admin token from settings, else the one `facedex up` keeps in the data folder."""
    settings = get_settings()
    token = settings.admin_token
    path = settings.data_dir / "admin_token"
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check(resp: httpx.Response) -> dict | list:  # type: ignore[type-arg]
    if resp.status_code >= 400:
        err = resp.json()
        console.print(f"[red]{err.get('error_code')} {err.get('desc')}[/]: {err.get('detail')}")
        raise typer.Exit(1)
    return resp.json()


@app.command("create")
def create(
    list_id: Annotated[uuid.UUID, typer.Argument(help="List to index.")],
    watch: Annotated[bool, typer.Option(help="Follow the build until it ends.")] = True,
    url: Url = None,
) -> None:
    """Queue a one-time index build for a list."""
    task = _check(httpx.post(_url(url) + "/1/tasks", json={"list_id": str(list_id)}, headers=_headers()))
    console.print(f"task {task['task_id']} queued for list {list_id}")  # type: ignore[index]
    if watch:
        watch_(task["task_id"], url)  # type: ignore[index]


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="pending, indexing, success, failed or cancelled")] = None,
    url: Url = None,
) -> None:
    """Tasks, newest first."""
    tasks = _check(httpx.get(_url(url) + "/1/tasks", params={"status": status} if status else None, headers=_headers()))
    table = Table()
    for column in ("task", "list", "type", "status", "progress", "faces", "error"):
        table.add_column(column)
    for t in tasks:  # type: ignore[union-attr]
        err = t["error"]
        table.add_row(
            t["task_id"], t["list_id"], t["type"], t["status"], f"{t['progress']:.0%}", str(t["count"] or ""),
            f"{err['error_code']} {err['detail'][:60]}" if err else "",
        )
    console.print(table)


@app.command("watch")
def watch_(task_id: str, url: Url = None) -> None:
    """Follow a task with a live progress bar until it ends."""
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        shown = bar.add_task(f"task {task_id[:8]}", total=1.0)
        while True:
            task = _check(httpx.get(f"{_url(url)}/1/tasks/{task_id}", headers=_headers()))
            bar.update(shown, completed=task["progress"], description=f"task {task_id[:8]} {task['status']}")  # type: ignore[index]
            if task["status"] in ("success", "failed", "cancelled"):  # type: ignore[index]
                break
            time.sleep(0.5)
    if task["status"] == "success":  # type: ignore[index]
        console.print(f"[green]index {task['index_id']}[/] with {task['count']} faces")  # type: ignore[index]
    else:
        console.print(f"[red]{task['status']}[/]: {task['error']}")  # type: ignore[index]
        raise typer.Exit(1)
