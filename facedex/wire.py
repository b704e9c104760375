"""Messages between services (API -> Matcher Proxy -> matchers), as msgpack.

Descriptors and face ids travel as raw bytes blocks, never as JSON lists: a
512-d reference is 2 KiB on the wire and decodes with one ``np.frombuffer``.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec
import numpy as np

T = TypeVar("T")

CONTENT_TYPE = "application/msgpack"


class MatchFilters(msgspec.Struct, frozen=True):
    """Candidate filters beyond the list and ``face_ids``: a face is a candidate only if it passes every one given.

    The brute-force Matcher evaluates them as a boolean mask over its cached rows (no query per face).
    """

    external_ids: list[str] | None = None  # exact external ids
    user_data: str | None = None  # exact user_data
    user_data_prefix: str | None = None  # user_data starts with this
    create_time_gte_us: int | None = None  # unix microseconds, inclusive
    create_time_lt_us: int | None = None  # unix microseconds, exclusive


class MatchRequest(msgspec.Struct, frozen=True):
    account_id: bytes  # 16-byte UUID
    list_id: bytes  # 16-byte UUID
    version: int  # descriptor version of the references
    references: bytes  # m x dim float32, little-endian, L2-normalised
    limit: int
    threshold: float | None = None
    face_ids: list[bytes] | None = None  # optional candidate filter (16-byte UUIDs)
    request_id: str = ""
    exact: bool = False  # the caller wants brute force
    # the API's HMAC over this whole message (auth empty) with a key from internal_token (facedex.internal_auth)
    auth: bytes = b""
    auth_expires_ms: int = 0  # unix ms after which the signature is refused
    filters: MatchFilters | None = None  # more candidate filters; a filtered request is always brute force

    def reference_matrix(self, dim: int) -> np.ndarray:
        return np.frombuffer(self.references, dtype="<f4").reshape(-1, dim)


class ReferenceMatches(msgspec.Struct, frozen=True):
    face_ids: bytes  # k x 16 bytes, best first
    similarities: bytes  # k float32, facedex similarity (descriptors.similarity)


class MatchResponse(msgspec.Struct, frozen=True):
    results: list[ReferenceMatches]
    route: str  # which matcher answered: "bruteforce", "indexed", ...
    list_size: int = 0  # faces searched (after the filter)
    fallback_reason: str | None = None  # why the proxy did not use a preferred route
    consistency: str = "fresh"  # "stale": the Faces DB was unreachable; answered from what the matcher held
    # hop -> milliseconds measured by the services on the way (facedex.timing); absent from older senders
    timings: dict[str, float] | None = None


class MatchSetsRequest(msgspec.Struct, frozen=True):
    """API -> proxy: several candidate sets in one call; each set is one signed ``MatchRequest`` per list.

    Every sub-request carries the same references; those of one set share its limit, threshold and filters.
    """

    sets: list[list[MatchRequest]]
    request_id: str = ""


class ListPart(msgspec.Struct, frozen=True):
    """How one list of a candidate set was answered."""

    list_id: bytes  # 16-byte UUID
    route: str
    list_size: int = 0
    fallback_reason: str | None = None
    consistency: str = "fresh"


class SetMatches(msgspec.Struct, frozen=True):
    results: list[ReferenceMatches]  # one per reference: the exact top-k over the set's lists (a face counts once)
    parts: list[ListPart]  # one per list, in the set's order


class MatchSetsResponse(msgspec.Struct, frozen=True):
    sets: list[SetMatches]


class IndexedRequest(msgspec.Struct, frozen=True):
    """A stream entry for the Indexed Matcher: the match request, where to answer, and until when it matters."""

    rid: str
    reply_to: str  # pub/sub channel of the asking proxy
    deadline_ms: int  # unix ms; an entry read later is acknowledged unanswered (the proxy has fallen back)
    request: MatchRequest
    sent_us: int = 0  # unix microseconds when the proxy appended it (the matcher's "queue" hop); 0: unknown
    # the list's change head announced when it was appended (facedex.redis.heads): set by the matcher from the
    # stream entry's own field, never taken from the payload; None: none announced, read the Faces DB
    announced_head: int | None = None


class IndexedReply(msgspec.Struct, frozen=True):
    rid: str
    response: MatchResponse | None = None
    error_code: int = 0
    detail: str = ""


class ErrorBody(msgspec.Struct, frozen=True):
    error_code: int
    desc: str
    detail: str


_encoder = msgspec.msgpack.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


def decode(data: bytes, type_: type[T]) -> T:
    return msgspec.msgpack.decode(data, type=type_)


class ExtractRequest(msgspec.Struct, frozen=True):
    """API -> extractor sidecar: one image as sent by the client."""

    image: bytes
    content_type: str | None = None
    all_faces: bool = False


class ExtractedFace(msgspec.Struct, frozen=True):
    box: tuple[float, float, float, float]  # x, y, width, height in the original image
    score: float
    landmarks: bytes  # 5 x 2 float32
    descriptor: bytes  # dim float32, L2-normalised


class ExtractResponse(msgspec.Struct, frozen=True):
    version: int  # descriptor version of the faces' descriptors
    width: int
    height: int
    faces: list[ExtractedFace]  # largest first
