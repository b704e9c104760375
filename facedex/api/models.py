"""Request and response bodies of the public API (they are the OpenAPI schema at /docs)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_USER_DATA = 1024
MAX_EXTERNAL_ID = 256


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DescriptorIn(Strict):
    version: int | None = Field(None, description="Descriptor version (GET /1/descriptor_versions); default from settings.")
    data: str = Field(..., description="Base64 of the raw little-endian float32 vector.")


# -------------------------------------------------------------------- accounts
class AccountCreate(Strict):
    name: str = Field(..., min_length=1, max_length=256)


class AccountCreated(BaseModel):
    account_id: uuid.UUID
    token: str = Field(..., description="Bearer token; shown once, store it.")


class AccountOut(BaseModel):
    account_id: uuid.UUID
    name: str
    create_time: datetime


# ----------------------------------------------------------------------- lists
class ListCreate(Strict):
    user_data: str = Field("", max_length=MAX_USER_DATA)


class ListUpdate(Strict):
    user_data: str = Field(..., max_length=MAX_USER_DATA)


class ListOut(BaseModel):
    list_id: uuid.UUID
    user_data: str
    create_time: datetime
    last_update_time: datetime
    face_count: int


class ListFacesPatch(Strict):
    action: Literal["attach", "detach"]
    face_ids: list[uuid.UUID] = Field(..., min_length=1, max_length=10_000)


class ListFacesChanged(BaseModel):
    action: Literal["attach", "detach"]
    changed: int = Field(..., description="Faces actually attached (not already in the list) or detached.")


# ----------------------------------------------------------------------- faces
class FaceCreate(Strict):
    external_id: str | None = Field(None, max_length=MAX_EXTERNAL_ID)
    user_data: str = Field("", max_length=MAX_USER_DATA)
    descriptor: DescriptorIn | None = None
    list_ids: list[uuid.UUID] = Field(default_factory=list, max_length=100)


class FacesBatchCreate(Strict):
    faces: list[FaceCreate] = Field(..., min_length=1, max_length=1000)
    list_ids: list[uuid.UUID] = Field(default_factory=list, max_length=100, description="Attach every face to these lists.")


class FaceUpdate(Strict):
    external_id: str | None = Field(None, max_length=MAX_EXTERNAL_ID)
    user_data: str | None = Field(None, max_length=MAX_USER_DATA)


class FaceOut(BaseModel):
    face_id: uuid.UUID
    external_id: str | None
    user_data: str
    create_time: datetime
    last_update_time: datetime
    descriptor_versions: list[int] = Field(default_factory=list)
    list_ids: list[uuid.UUID] = Field(default_factory=list)


class FaceCreated(BaseModel):
    face_id: uuid.UUID


class FacesCreated(BaseModel):
    face_ids: list[uuid.UUID]


# -------------------------------------------------------------------- matching
class MatchReference(Strict):
    descriptor: DescriptorIn | None = None
    face_id: uuid.UUID | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> MatchReference:
        if (self.descriptor is None) == (self.face_id is None):
            raise ValueError("a reference is either a descriptor or a face_id")
        return self


class MatchCandidates(Strict):
    list_id: uuid.UUID
    face_ids: list[uuid.UUID] | None = Field(None, description="Only match these faces of the list.")
    limit: int = Field(10, description="Most results per reference (1 .. matching.max_limit).")
    threshold: float | None = Field(None, description="Only results with similarity >= threshold (0 .. 1).")
    exact: bool = Field(False, description="Always match by brute force, even where the list has an index.")


class MatchRequestIn(Strict):
    references: list[MatchReference] = Field(..., min_length=1)
    candidates: MatchCandidates


class MatchResult(BaseModel):
    face_id: uuid.UUID
    similarity: float


class ReferenceMatches(BaseModel):
    reference: MatchReference
    results: list[MatchResult]


class MatchResponseOut(BaseModel):
    matches: list[ReferenceMatches]
    route: str = Field(..., description="Which matcher answered: bruteforce or indexed.")
    list_size: int = Field(..., description="Faces the references were matched against.")
    descriptor_version: int
    fallback_reason: str | None = None


class DescriptorVersionOut(BaseModel):
    version: int
    dim: int
    dtype: str
    name: str
    default: bool
