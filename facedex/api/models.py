"""Request and response bodies of the public API (they are the OpenAPI schema at /docs)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from facedex.text import StoredText
from facedex.errors import Errors

MAX_USER_DATA = 1024
MAX_EXTERNAL_ID = 256

# the errors each kind of input can raise (declared per route with facedex.http.errors)
DESCRIPTOR_ERRORS = (
    Errors.DESCRIPTOR_VERSION_UNKNOWN, Errors.DESCRIPTOR_LENGTH, Errors.DESCRIPTOR_NOT_FINITE, Errors.DESCRIPTOR_ZERO,
    Errors.DESCRIPTOR_BASE64,
)
IMAGE_ERRORS = (
    Errors.IMAGE_DECODE, Errors.IMAGE_PIXELS, Errors.IMAGE_TOO_LARGE, Errors.IMAGE_TYPE, Errors.NO_FACE, Errors.IMAGE_BASE64,
    Errors.EXTRACTOR_UNAVAILABLE, Errors.IMAGE_REQUEST, Errors.UNSUPPORTED_MEDIA,
)
MATCH_ERRORS = (
    Errors.LIST_NOT_FOUND, Errors.FACE_NOT_FOUND, Errors.FACE_NO_DESCRIPTOR, Errors.TOO_MANY_FACES, Errors.LIMIT_OUT_OF_RANGE,
    Errors.THRESHOLD_OUT_OF_RANGE, Errors.TOO_MANY_REFERENCES, Errors.MATCHER_UNAVAILABLE, Errors.VERSION_MISMATCH,
)
SET_ERRORS = (
    Errors.TOO_MANY_CANDIDATE_SETS, Errors.TOO_MANY_FILTER_VALUES, Errors.TIME_RANGE_EMPTY, Errors.CANDIDATE_SET_INVALID,
    Errors.TEXT_NOT_STORABLE,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DescriptorIn(Strict):
    version: int | None = Field(None, description="Descriptor version (GET /1/descriptor_versions); default from settings.")
    data: str = Field(..., description="Base64 of the raw little-endian float32 vector.")


class ImageIn(Strict):
    data: str = Field(..., description="Base64 of a JPEG, PNG or WebP file.")
    content_type: str | None = Field(None, description="MIME type of the file, if known (checked against what it is).")


class Box(BaseModel):
    x: float
    y: float
    width: float
    height: float


class Detection(BaseModel):
    """Where a face was found in an image, in the image's pixels (upright, after EXIF rotation)."""

    box: Box
    score: float = Field(..., description="Detector confidence, 0 .. 1.")


# -------------------------------------------------------------------- accounts
class AccountCreate(Strict):
    name: StoredText = Field(..., min_length=1, max_length=256)


class AccountCreated(BaseModel):
    account_id: uuid.UUID
    token: str = Field(..., description="Bearer token; shown once, store it.")


class TokenCreate(Strict):
    name: StoredText = Field("api", min_length=1, max_length=256)
    expires_in_s: int | None = Field(
        None, ge=60, le=10 * 365 * 86400, description="Lifetime in seconds; unset: until revoked."
    )


class TokenOut(BaseModel):
    """A token's metadata; the secret is never shown again after creation."""

    token_id: uuid.UUID
    name: str
    create_time: datetime
    expire_time: datetime | None


class TokenCreated(TokenOut):
    account_id: uuid.UUID
    token: str = Field(..., description="Bearer token; shown once, store it.")


class AccountOut(BaseModel):
    account_id: uuid.UUID
    name: str
    create_time: datetime


# ----------------------------------------------------------------------- lists
class ListCreate(Strict):
    user_data: StoredText = Field("", max_length=MAX_USER_DATA)


class ListUpdate(Strict):
    user_data: StoredText = Field(..., max_length=MAX_USER_DATA)


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
    external_id: StoredText | None = Field(None, max_length=MAX_EXTERNAL_ID)
    user_data: StoredText = Field("", max_length=MAX_USER_DATA)
    descriptor: DescriptorIn | None = None
    image: ImageIn | None = Field(None, description="A photo instead of a descriptor: its largest face is used.")
    list_ids: list[uuid.UUID] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _one_source(self) -> FaceCreate:
        if self.descriptor is not None and self.image is not None:
            raise ValueError("a face takes a descriptor or an image, not both")
        return self


class ImageFacesCreate(Strict):
    image: ImageIn
    all_faces: bool = Field(False, description="One face per face found (largest first), not only the largest.")
    external_id: StoredText | None = Field(None, max_length=MAX_EXTERNAL_ID)
    user_data: StoredText = Field("", max_length=MAX_USER_DATA)
    list_ids: list[uuid.UUID] = Field(default_factory=list, max_length=100)


class ExtractIn(Strict):
    image: ImageIn
    all_faces: bool = False


class FacesBatchCreate(Strict):
    faces: list[FaceCreate] = Field(..., min_length=1, max_length=1000)
    list_ids: list[uuid.UUID] = Field(default_factory=list, max_length=100, description="Attach every face to these lists.")


class FaceUpdate(Strict):
    external_id: StoredText | None = Field(None, max_length=MAX_EXTERNAL_ID)
    user_data: StoredText | None = Field(None, max_length=MAX_USER_DATA)


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
    detection: Detection | None = Field(None, description="Set when the face came from an image.")


class ImageFacesCreated(BaseModel):
    faces: list[FaceCreated]
    width: int
    height: int


class ExtractedFaceOut(BaseModel):
    detection: Detection
    landmarks: list[list[float]] = Field(..., description="Eyes, nose tip, mouth corners: five (x, y).")
    descriptor: DescriptorIn


class ExtractOut(BaseModel):
    width: int
    height: int
    faces: list[ExtractedFaceOut]


class FacesCreated(BaseModel):
    face_ids: list[uuid.UUID]


# -------------------------------------------------------------------- matching
class MatchReference(Strict):
    descriptor: DescriptorIn | None = None
    face_id: uuid.UUID | None = None
    image: ImageIn | None = Field(None, description="A photo: its largest face, or every face with all_faces.")
    all_faces: bool = Field(False, description="With an image: one reference per face found, largest first.")

    @model_validator(mode="after")
    def _exactly_one(self) -> MatchReference:
        if sum(x is not None for x in (self.descriptor, self.face_id, self.image)) != 1:
            raise ValueError("a reference is exactly one of: descriptor, face_id, image")
        return self


class ReferenceOut(BaseModel):
    """The reference a result list answers: as sent, or, for an image, the face found in it (not the image)."""

    descriptor: DescriptorIn | None = None
    face_id: uuid.UUID | None = None
    image_index: int | None = Field(None, description="Which reference of the request the image was.")
    detection: Detection | None = None


class MatchCandidates(Strict):
    list_id: uuid.UUID
    face_ids: list[uuid.UUID] | None = Field(None, description="Only match these faces of the list.")
    # bounds checked in code (codes 14001/14002); the schema's maximum is this deployment's setting (api/app.py)
    limit: int = Field(10, description="Most results per reference (1 .. matching.max_limit).", json_schema_extra={"minimum": 1})
    threshold: float | None = Field(
        None, description="Only results with similarity >= threshold (0 .. 1).", json_schema_extra={"minimum": 0, "maximum": 1}
    )
    exact: bool = Field(False, description="Always match by brute force, even where the list has an index.")
    descriptor_version: int | None = Field(
        None, description="Descriptor version to match in; default: the references' version (images: 2), else the deployment's default."
    )


Target = Literal["face_id", "similarity", "external_id", "user_data", "create_time", "list_ids"]
DEFAULT_TARGETS: list[Target] = ["face_id", "similarity"]


class CandidateFilters(Strict):
    """Which faces a candidate set holds: those of its list(s) that pass every other filter given."""

    list_id: uuid.UUID | None = Field(None, description="The list to match against (give this or list_ids).")
    list_ids: list[uuid.UUID] | None = Field(
        None, description="Several lists as one candidate set (1 .. matching.max_lists_per_set; a face in several counts once)."
    )
    face_ids: list[uuid.UUID] | None = Field(None, description="Only these faces (all sets together: matching.max_filter_face_ids).")
    external_ids: list[Annotated[StoredText, Field(max_length=MAX_EXTERNAL_ID)]] | None = Field(
        None, description="Only faces with one of these external ids (all sets together: matching.max_filter_values)."
    )
    user_data: StoredText | None = Field(None, max_length=MAX_USER_DATA, description="Only faces whose user_data is exactly this.")
    user_data__prefix: StoredText | None = Field(
        None, max_length=MAX_USER_DATA, description="Only faces whose user_data starts with this."
    )
    create_time__gte: datetime | None = Field(None, description="Only faces created at or after this time (no zone: UTC).")
    create_time__lt: datetime | None = Field(None, description="Only faces created before this time (no zone: UTC).")


class CandidateSet(Strict):
    """One candidate set of the array form of ``candidates``: its filters, limit, threshold and result fields."""

    filters: CandidateFilters
    limit: int = Field(10, description="Most results per reference (1 .. matching.max_limit; the sets of a request together at most that).", json_schema_extra={"minimum": 1})
    threshold: float | None = Field(
        None, description="Only results with similarity >= threshold (0 .. 1).", json_schema_extra={"minimum": 0, "maximum": 1}
    )
    targets: list[Target] = Field(
        default_factory=lambda: list(DEFAULT_TARGETS), min_length=1, max_length=6,
        description="Fields of each matched face to return (duplicates count once).",
    )
    exact: bool = Field(False, description="Always match by brute force, even where a list has an index.")
    descriptor_version: int | None = Field(
        None, description="Descriptor version to match in (every set that names one must name the same)."
    )


class MatchRequestIn(Strict):
    references: list[MatchReference] = Field(..., min_length=1)
    candidates: MatchCandidates | list[CandidateSet] = Field(
        ..., description="One list (an object: the response is MatchResponseOut), or an array of candidate sets "
        "(1 .. matching.max_candidate_sets; the response is MatchSetsResponseOut)."
    )


class MatchResult(BaseModel):
    face_id: uuid.UUID
    similarity: float


class ReferenceMatches(BaseModel):
    reference: ReferenceOut
    results: list[MatchResult]


class MatchResponseOut(BaseModel):
    matches: list[ReferenceMatches]
    route: str = Field(
        ..., description="Which matcher answered: bruteforce, indexed, or the name of a matching plugin (proxy_plugins).",
        examples=["bruteforce", "indexed"],
    )
    list_size: int = Field(..., description="Faces the references were matched against.")
    descriptor_version: int
    fallback_reason: str | None = None
    consistency: Literal["fresh", "stale"] = Field(
        "fresh", description='"stale": the Faces DB was unreachable; answered from what the matchers already held.'
    )


class TargetResult(BaseModel):
    """One matched face: only the fields its candidate set's ``targets`` asked for are present."""

    face_id: uuid.UUID | None = None
    similarity: float | None = None
    external_id: str | None = None
    user_data: str | None = None
    create_time: datetime | None = None
    list_ids: list[uuid.UUID] | None = Field(None, description="Every list of the account that holds the face now.")


class SetResults(BaseModel):
    results: list[TargetResult]


class ReferenceSetMatches(BaseModel):
    reference: ReferenceOut
    sets: list[SetResults] = Field(..., description="One per candidate set, in the request's order.")


class ListRoute(BaseModel):
    list_id: uuid.UUID
    route: str = Field(..., description="Which matcher answered for this list: bruteforce, indexed, or a plugin's name.")
    list_size: int = Field(..., description="Faces of this list that passed the set's filters.")
    fallback_reason: str | None = None
    consistency: Literal["fresh", "stale"] = "fresh"


class CandidateSetInfo(BaseModel):
    route: str = Field(..., description="The lists' route if they share one, else mixed.", examples=["indexed", "bruteforce", "mixed"])
    list_size: int = Field(..., description="Faces searched over the set's lists (after its filters).")
    fallback_reason: str | None = Field(None, description="Why a preferred route was skipped for a list (the first such list).")
    lists: list[ListRoute]


class MatchSetsResponseOut(BaseModel):
    """The answer to the array form of ``candidates``: per reference, per candidate set, its results."""

    matches: list[ReferenceSetMatches]
    candidate_sets: list[CandidateSetInfo] = Field(..., description="How each candidate set was answered, in the request's order.")
    descriptor_version: int
    consistency: Literal["fresh", "stale"] = Field("fresh", description='"stale": some list was answered from what a matcher held.')


class DescriptorVersionOut(BaseModel):
    version: int
    dim: int
    dtype: str
    name: str
    default: bool
