"""``facedex faces ...`` and ``facedex match``: the public API from the shell, as an account (facedex.client)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from facedex.api.models import MatchResponseOut
from facedex.client import Client
from facedex.config import get_settings
from facedex.manager.cli import cli_client, id_column

faces_app = typer.Typer(help="Faces of an account (through the API).", no_args_is_help=True)
console = Console()

ApiUrl = Annotated[str | None, typer.Option("--api-url", help="API URL (default from settings).")]
Token = Annotated[str, typer.Option(help="The account's bearer token (fdx_...).", envvar="FDX_TOKEN")]
DescriptorFile = Annotated[
    Path | None, typer.Option("--descriptor", exists=True, dir_okay=False, help="A .npy file holding one descriptor (float32).")
]
Photo = Annotated[Path | None, typer.Option("--photo", exists=True, dir_okay=False, help="A JPEG, PNG or WebP photo.")]
Version = Annotated[int | None, typer.Option(help="Descriptor version of --descriptor (default from settings).")]


@contextmanager
def api(url: str | None, token: str) -> Iterator[Client]:
    """A client of the API; an error answer is printed with its code and exits 1."""
    with cli_client(Client(url or get_settings().api.url, token)) as client:
        yield client


def _descriptor(path: Path) -> np.ndarray:
    vec = np.load(path, allow_pickle=False)
    if vec.ndim == 2 and vec.shape[0] == 1:
        vec = vec[0]
    if vec.ndim != 1:
        raise typer.BadParameter(f"{path} holds an array of shape {vec.shape}; one descriptor (1-d) is needed")
    return vec.astype("<f4")


def _one_source(descriptor: Path | None, photo: Path | None) -> None:
    if (descriptor is None) == (photo is None):
        raise typer.BadParameter("give exactly one of --descriptor or --photo")


@faces_app.command("list")
def faces_list(
    token: Token,
    list_id: Annotated[uuid.UUID | None, typer.Option("--list", help="Only faces of this list.")] = None,
    external_id: Annotated[str | None, typer.Option(help="Only faces with this external id.")] = None,
    page: int = 1,
    page_size: int = 100,
    url: ApiUrl = None,
) -> None:
    """Faces of the account, newest first."""
    with api(url, token) as fx:
        faces = fx.get_faces(list_id=list_id, external_id=external_id, page=page, page_size=page_size)
    table = Table()
    id_column(table, "face")
    for column in ("external_id", "user_data", "versions", "lists"):
        table.add_column(column)
    for f in faces:
        table.add_row(str(f.face_id), f.external_id or "", f.user_data, ",".join(map(str, f.descriptor_versions)),
                      "\n".join(map(str, f.list_ids)))
    console.print(table)


@faces_app.command("get")
def faces_get(face_id: uuid.UUID, token: Token, url: ApiUrl = None) -> None:
    """One face as JSON."""
    with api(url, token) as fx:
        face = fx.get_face(face_id)
    console.print_json(face.model_dump_json())


@faces_app.command("create")
def faces_create(
    token: Token,
    descriptor: DescriptorFile = None,
    photo: Photo = None,
    version: Version = None,
    all_faces: Annotated[bool, typer.Option(help="With --photo: one face per face found, not only the largest.")] = False,
    list_ids: Annotated[list[uuid.UUID] | None, typer.Option("--list", help="Attach to this list (repeatable).")] = None,
    external_id: Annotated[str | None, typer.Option(help="Your id for the person.")] = None,
    user_data: Annotated[str, typer.Option(help="Free text kept with the face.")] = "",
    url: ApiUrl = None,
) -> None:
    """Create a face from a descriptor file or from a photo; prints the new face id(s)."""
    _one_source(descriptor, photo)
    lists = list_ids or []
    with api(url, token) as fx:
        if descriptor is not None:
            created = [fx.create_face(descriptor=_descriptor(descriptor), version=version, external_id=external_id,
                                      user_data=user_data, list_ids=lists)]
        else:
            assert photo is not None
            created = fx.faces_from_image(photo, all_faces=all_faces, external_id=external_id, user_data=user_data,
                                          list_ids=lists).faces
    for face in created:
        where = f"  (box {face.detection.box.model_dump()}, score {face.detection.score})" if face.detection else ""
        console.print(f"{face.face_id}{where}")


def _print_matches(resp: MatchResponseOut) -> None:
    table = Table(title=f"route: {resp.route}, {resp.list_size} faces" + (f" ({resp.fallback_reason})" if resp.fallback_reason else ""))
    table.add_column("reference")
    table.add_column("rank")
    id_column(table, "face")
    table.add_column("similarity")
    for n, m in enumerate(resp.matches):
        for rank, r in enumerate(m.results, 1):
            table.add_row(str(n) if rank == 1 else "", str(rank), str(r.face_id), f"{r.similarity:.4f}")
    console.print(table)


def match(
    list_id: Annotated[uuid.UUID, typer.Argument(help="List to match against.")],
    token: Token,
    face: Annotated[uuid.UUID | None, typer.Option("--face", help="A face id as the reference.")] = None,
    descriptor: DescriptorFile = None,
    photo: Photo = None,
    version: Version = None,
    limit: Annotated[int, typer.Option(help="Most results per reference.")] = 10,
    threshold: Annotated[float | None, typer.Option(help="Only results with at least this similarity (0 .. 1).")] = None,
    exact: Annotated[bool, typer.Option(help="Brute force even where the list has an index.")] = False,
    url: ApiUrl = None,
) -> None:
    """Match a face id, a descriptor file or a photo against a list; prints the best faces."""
    if sum(x is not None for x in (face, descriptor, photo)) != 1:
        raise typer.BadParameter("give exactly one of --face, --descriptor or --photo")
    with api(url, token) as fx:
        if photo is not None:
            resp = fx.match_image(list_id, photo, limit=limit, threshold=threshold, exact=exact)
        else:
            resp = fx.match(list_id, descriptors=[_descriptor(descriptor)] if descriptor else [], face_ids=[face] if face else [],
                            version=version, limit=limit, threshold=threshold, exact=exact)
    _print_matches(resp)
