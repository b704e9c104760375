"""Faces from images: extract, create faces, match with a photo as the reference.

Every route takes the image either base64 inside a JSON body or as the file
part ``image`` of a multipart form (other form fields as in the JSON body).
The image is decoded and searched for faces by the extractor
(:mod:`facedex.extractor`), in this process or on a sidecar; descriptors are
SFace's (descriptor version 2). Nothing is stored when the image is refused or
holds no face.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from facedex import descriptors, timing, wire
from facedex.api.deps import Account, Store
from facedex.api.models import (
    Box,
    DescriptorIn,
    Detection,
    ExtractedFaceOut,
    ExtractIn,
    ExtractOut,
    FaceCreated,
    ImageFacesCreate,
    ImageFacesCreated,
    ImageIn,
    MatchRequestIn,
    MatchResponseOut,
)
from facedex.api.models import DESCRIPTOR_ERRORS, IMAGE_ERRORS, MATCH_ERRORS
from facedex.errors import Errors, FacedexError
from facedex.faces.store import NewFace
from facedex.http import errors

router = APIRouter(tags=["images"])
M = TypeVar("M", bound=BaseModel)



def _form_field(prop: dict[str, Any]) -> dict[str, Any]:
    """A JSON property as a form field: a form has no null (an optional field is left out instead)."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    field = {k: v for k, v in {**prop, **branches[0]}.items() if k not in ("anyOf", "default")}
    return field


def _openapi(model: type[BaseModel]) -> dict[str, object]:
    """OpenAPI body of a route that takes ``model`` as JSON or the same fields as a multipart form."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # nested models (ImageIn) are components already, through the JSON routes
    fields = {name: _form_field(prop) for name, prop in schema["properties"].items() if name != "image"}
    form = {
        "type": "object",
        "required": ["image"],
        "properties": {"image": {"type": "string", "format": "binary"}, **fields},
        "additionalProperties": False,
    }
    # "required" is left false: openapi-python-client (0.29) emits a module that cannot be imported for a
    # required body with two content types; a request without a body is refused with 400 (10001), as documented
    return {
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": schema},
                "multipart/form-data": {"schema": form},
            },
        }
    }


def image_bytes(image: ImageIn) -> bytes:
    try:
        return base64.b64decode(image.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FacedexError(Errors.IMAGE_BASE64, f"image data is not base64: {exc}") from None


async def extract(request: Request, raw: bytes, content_type: str | None, all_faces: bool) -> wire.ExtractResponse:
    """Faces of one image, largest first; no face is an error (422), so nothing half-made is stored."""
    found = await request.app.state.extractor.extract(raw, content_type, all_faces)
    if not found.faces:
        raise FacedexError(Errors.NO_FACE, f"no face of at least {request.app.state.settings.extraction.min_face} pixels found")
    return found


def detection(face: wire.ExtractedFace) -> Detection:
    x, y, w, h = (round(v, 1) for v in face.box)
    return Detection(box=Box(x=x, y=y, width=w, height=h), score=round(face.score, 4))


def descriptor(version: int, face: wire.ExtractedFace) -> np.ndarray:
    """The face's descriptor, validated like any client's (a sidecar is another process)."""
    return descriptors.parse(version, face.descriptor)


async def read_image_body(request: Request, model: type[M]) -> tuple[M, bytes, str | None]:
    """The body as ``model`` plus the image's bytes and declared type, from JSON or a multipart form."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=200)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise FacedexError(Errors.IMAGE_REQUEST, "the form has no file part named 'image'")
        fields: dict[str, object] = {}
        for key in form:
            if key == "image":
                continue
            values = form.getlist(key)
            fields[key] = values if key == "list_ids" else values[-1]
        raw = await upload.read()
        declared = upload.content_type
        fields["image"] = {"data": "", "content_type": declared}
        try:
            return model.model_validate(fields), raw, declared
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
    if content_type not in ("application/json", ""):
        raise FacedexError(Errors.UNSUPPORTED_MEDIA, f"send application/json or multipart/form-data, not {content_type!r}")
    try:
        body = model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    image: ImageIn = body.image  # type: ignore[attr-defined]
    return body, image_bytes(image), image.content_type


@router.post("/1/images/extract", response_model=ExtractOut, openapi_extra=_openapi(ExtractIn), responses=errors(*IMAGE_ERRORS))
async def extract_faces(request: Request, account: Account) -> ExtractOut:
    """Find faces in an image and return their boxes, landmarks and descriptors; nothing is stored."""
    body, raw, content_type = await read_image_body(request, ExtractIn)
    found = await request.app.state.extractor.extract(raw, content_type, body.all_faces)
    return ExtractOut(
        width=found.width,
        height=found.height,
        faces=[
            ExtractedFaceOut(
                detection=detection(f),
                landmarks=np.frombuffer(f.landmarks, "<f4").reshape(5, 2).round(1).tolist(),
                descriptor=DescriptorIn(version=found.version, data=base64.b64encode(f.descriptor).decode()),
            )
            for f in found.faces
        ],
    )


@router.post(
    "/1/images/faces", status_code=201, response_model=ImageFacesCreated, openapi_extra=_openapi(ImageFacesCreate),
    responses=errors(*IMAGE_ERRORS, Errors.LIST_NOT_FOUND),
)
async def create_faces_from_image(request: Request, account: Account, store: Store) -> ImageFacesCreated:
    """Create a face from the largest face in an image (or one per face with ``all_faces``), attached to ``list_ids``."""
    body, raw, content_type = await read_image_body(request, ImageFacesCreate)
    found = await extract(request, raw, content_type, body.all_faces)
    faces = [
        NewFace(external_id=body.external_id, user_data=body.user_data, list_ids=list(body.list_ids),
                descriptors={found.version: descriptor(found.version, f)})
        for f in found.faces
    ]
    ids = await store.create_faces(account, faces)
    return ImageFacesCreated(
        faces=[FaceCreated(face_id=i, detection=detection(f)) for i, f in zip(ids, found.faces)],
        width=found.width,
        height=found.height,
    )


@router.post(
    "/1/matcher/image",
    response_model=MatchResponseOut,
    tags=["matching"],
    responses=errors(*DESCRIPTOR_ERRORS, *IMAGE_ERRORS, *MATCH_ERRORS),
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image", "list_id"],
                        "properties": {
                            "image": {"type": "string", "format": "binary"},
                            "list_id": {"type": "string", "format": "uuid"},
                            "limit": {"type": "integer", "minimum": 1, "default": 10},
                            "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                            "all_faces": {"type": "boolean", "default": False},
                            "exact": {"type": "boolean", "default": False},
                        },
                        "additionalProperties": False,
                    }
                }
            },
            "required": True,
        }
    },
)
async def match_image(request: Request, account: Account, store: Store, response: Response) -> MatchResponseOut:
    """Match the face(s) of an uploaded photo against a list (multipart form; JSON callers use /1/matcher/faces)."""
    from facedex.api.matching import hops_of, match, server_timing

    started = time.perf_counter()
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "multipart/form-data":
        raise FacedexError(Errors.UNSUPPORTED_MEDIA, "send a multipart/form-data form with an 'image' file part")
    form = await request.form(max_files=1, max_fields=20)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise FacedexError(Errors.IMAGE_REQUEST, "the form has no file part named 'image'")
    raw = await upload.read()
    candidates = {k: form.get(k) for k in ("list_id", "limit", "threshold", "exact") if form.get(k) is not None}
    all_faces = str(form.get("all_faces", "false")).lower() in ("1", "true", "yes", "on")
    image = ImageIn(data=base64.b64encode(raw).decode(), content_type=upload.content_type)
    try:
        body = MatchRequestIn.model_validate(
            {"references": [{"image": image.model_dump(), "all_faces": all_faces}], "candidates": candidates}
        )
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    hops_of(request)[timing.PARSE] = timing.since(started)
    out = await match(request, body, account, store)
    response.headers[timing.HEADER] = server_timing(request, out.route, started)
    return out


async def extract_many(request: Request, images: list[tuple[ImageIn, bool]]) -> list[wire.ExtractResponse]:
    """Several images of one request, extracted concurrently (the extractor bounds how many run at once)."""
    return list(await asyncio.gather(*(extract(request, image_bytes(i), i.content_type, all_faces) for i, all_faces in images)))
