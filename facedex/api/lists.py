"""Lists: named sets of faces; the candidates of matching and the unit an index is built for."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response

from facedex.api.deps import Account, Page, PageSize, Store
from facedex.api.models import ListCreate, ListFacesChanged, ListFacesPatch, ListOut, ListUpdate
from facedex.errors import Errors
from facedex.http import errors

NOT_FOUND = errors(Errors.LIST_NOT_FOUND)

router = APIRouter(tags=["lists"])


def _out(row: object) -> ListOut:
    return ListOut.model_validate(row, from_attributes=True)


@router.post("/1/lists", status_code=201, response_model=ListOut)
async def create_list(body: ListCreate, account: Account, store: Store) -> ListOut:
    return _out(await store.create_list(account, body.user_data))


@router.get("/1/lists", response_model=list[ListOut])
async def get_lists(account: Account, store: Store, page: Page = 1, page_size: PageSize = 100) -> list[ListOut]:
    return [_out(r) for r in await store.get_lists(account, page, page_size)]


@router.get("/1/lists/{list_id}", response_model=ListOut, responses=NOT_FOUND)
async def get_list(list_id: uuid.UUID, account: Account, store: Store) -> ListOut:
    return _out(await store.get_list(account, list_id))


@router.patch("/1/lists/{list_id}", response_model=ListOut, responses=NOT_FOUND)
async def update_list(list_id: uuid.UUID, body: ListUpdate, account: Account, store: Store) -> ListOut:
    return _out(await store.update_list(account, list_id, body.user_data))


@router.delete("/1/lists/{list_id}", status_code=204, responses=NOT_FOUND)
async def delete_list(list_id: uuid.UUID, account: Account, store: Store) -> Response:
    """Delete a list; its faces stay (they may be in other lists)."""
    await store.delete_list(account, list_id)
    return Response(status_code=204)


@router.patch(
    "/1/lists/{list_id}/faces", response_model=ListFacesChanged,
    responses=errors(Errors.LIST_NOT_FOUND, Errors.FACE_NOT_FOUND, Errors.FACES_NOT_FOUND),
)
async def change_list_faces(list_id: uuid.UUID, body: ListFacesPatch, account: Account, store: Store) -> ListFacesChanged:
    """Attach or detach faces in one batch. A detach is visible to matching as soon as this returns."""
    if body.action == "attach":
        changed = await store.attach(account, list_id, body.face_ids)
    else:
        changed = await store.detach(account, list_id, body.face_ids)
    return ListFacesChanged(action=body.action, changed=changed)
