"""Faces: an external id, user data, and one descriptor per descriptor version."""

from __future__ import annotations

import asyncio
import uuid


from fastapi import APIRouter, Request, Response

from facedex.api import images
from facedex.api.deps import Account, Page, PageSize, Store, parse_descriptor
from facedex.api.models import (
    DESCRIPTOR_ERRORS,
    IMAGE_ERRORS,
    DescriptorIn,
    Detection,
    FaceCreate,
    FaceCreated,
    FaceOut,
    FacesBatchCreate,
    FacesCreated,
    FaceUpdate,
)
from facedex.errors import Errors
from facedex.http import errors
from facedex.faces.store import NewFace
from facedex.text import StoredText

router = APIRouter(tags=["faces"])
CREATE_ERRORS = errors(*DESCRIPTOR_ERRORS, *IMAGE_ERRORS, Errors.LIST_NOT_FOUND)
NOT_FOUND = errors(Errors.FACE_NOT_FOUND)


async def _new_face(request: Request, body: FaceCreate) -> tuple[NewFace, Detection | None]:
    face = NewFace(external_id=body.external_id, user_data=body.user_data, list_ids=list(body.list_ids))
    found = None
    if body.descriptor is not None:
        version, vec = parse_descriptor(request, body.descriptor)
        face.descriptors[version] = vec
    elif body.image is not None:
        extracted = await images.extract(request, images.image_bytes(body.image), body.image.content_type, False)
        face.descriptors[extracted.version] = images.descriptor(extracted.version, extracted.faces[0])
        found = images.detection(extracted.faces[0])
    return face, found


def _out(row: object) -> FaceOut:
    return FaceOut.model_validate(row, from_attributes=True)


@router.post("/1/faces", status_code=201, response_model=FaceCreated, responses=CREATE_ERRORS)
async def create_face(request: Request, body: FaceCreate, account: Account, store: Store) -> FaceCreated:
    """Create a face, optionally with a descriptor (or an image: its largest face) and attached to lists."""
    face, found = await _new_face(request, body)
    ids = await store.create_faces(account, [face])
    return FaceCreated(face_id=ids[0], detection=found)


@router.post("/1/faces/batch", status_code=201, response_model=FacesCreated, responses=CREATE_ERRORS)
async def create_faces(request: Request, body: FacesBatchCreate, account: Account, store: Store) -> FacesCreated:
    """Create up to 1000 faces in one transaction (all or nothing), attached to ``list_ids`` and their own lists."""
    faces = [face for face, _ in await asyncio.gather(*(_new_face(request, f) for f in body.faces))]  # photos extract in parallel
    return FacesCreated(face_ids=await store.create_faces(account, faces, body.list_ids))


@router.get("/1/faces", response_model=list[FaceOut], responses=errors(Errors.LIST_NOT_FOUND))
async def get_faces(
    account: Account,
    store: Store,
    list_id: uuid.UUID | None = None,
    external_id: StoredText | None = None,
    page: Page = 1,
    page_size: PageSize = 100,
) -> list[FaceOut]:
    return [_out(r) for r in await store.get_faces(account, page, page_size, list_id, external_id)]


@router.get("/1/faces/{face_id}", response_model=FaceOut, responses=NOT_FOUND)
async def get_face(face_id: uuid.UUID, account: Account, store: Store) -> FaceOut:
    return _out(await store.get_face(account, face_id))


@router.patch("/1/faces/{face_id}", response_model=FaceOut, responses=NOT_FOUND)
async def update_face(face_id: uuid.UUID, body: FaceUpdate, account: Account, store: Store) -> FaceOut:
    return _out(await store.update_face(account, face_id, body.external_id, body.user_data))


@router.put("/1/faces/{face_id}/descriptor", status_code=204, responses=errors(*DESCRIPTOR_ERRORS, Errors.FACE_NOT_FOUND))
async def put_descriptor(
    request: Request, face_id: uuid.UUID, body: DescriptorIn, account: Account, store: Store
) -> Response:
    """Set or replace the face's descriptor of ``body.version``; lists holding the face see the new one."""
    version, vec = parse_descriptor(request, body)
    await store.put_descriptor(account, face_id, version, vec)
    return Response(status_code=204)


@router.delete("/1/faces/{face_id}", status_code=204, responses=NOT_FOUND)
async def delete_face(face_id: uuid.UUID, account: Account, store: Store) -> Response:
    """Delete a face; it is detached from every list first."""
    await store.delete_faces(account, [face_id])
    return Response(status_code=204)
