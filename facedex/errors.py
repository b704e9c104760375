"""Every error code facedex returns, in one place.

An error reaches a client as ``{"error_code": int, "desc": str, "detail": str}``
with the HTTP status below. Codes are stable: clients may branch on them, so a
code is never reused for another meaning. Ranges: 1xxxx request, 11xxx
descriptors, 12xxx lists, 13xxx faces, 14xxx matching, 15xxx accounts, 16xxx images,
19xxx internal; 26xxx is kept for the index services (as in LUNA LIM).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: int
    status: int
    desc: str


class Errors:
    # request level
    BAD_JSON = ErrorCode(10001, 400, "Request body is not valid JSON")
    VALIDATION = ErrorCode(10002, 422, "Request failed validation")
    BODY_TOO_LARGE = ErrorCode(10003, 413, "Request body too large")
    UNAUTHORIZED = ErrorCode(10004, 401, "Missing or invalid bearer token")
    FORBIDDEN = ErrorCode(10005, 403, "Not allowed")
    NOT_FOUND = ErrorCode(10006, 404, "Resource not found")
    METHOD_NOT_ALLOWED = ErrorCode(10007, 405, "Method not allowed")
    UNSUPPORTED_MEDIA = ErrorCode(10008, 415, "Unsupported content type")
    # request level: service-to-service authentication and text the database cannot store (issue 14)
    INTERNAL_UNAUTHORIZED = ErrorCode(10010, 401, "Missing or invalid internal service token")
    IDENTITY_UNVERIFIED = ErrorCode(10011, 403, "The caller identity in the message could not be authenticated")
    TEXT_NOT_STORABLE = ErrorCode(10012, 400, "Text contains characters that cannot be stored (NUL)")
    BAD_MSGPACK = ErrorCode(10013, 400, "Request body is not valid msgpack")
    # descriptors
    DESCRIPTOR_VERSION_UNKNOWN = ErrorCode(11001, 400, "Unknown descriptor version")
    DESCRIPTOR_LENGTH = ErrorCode(11002, 400, "Descriptor has the wrong length for its version")
    DESCRIPTOR_NOT_FINITE = ErrorCode(11003, 400, "Descriptor contains NaN or infinity")
    DESCRIPTOR_ZERO = ErrorCode(11004, 400, "Descriptor has zero norm")
    DESCRIPTOR_BASE64 = ErrorCode(11005, 400, "Descriptor data is not valid base64")
    # lists
    LIST_NOT_FOUND = ErrorCode(12001, 404, "List not found")
    # faces
    FACE_NOT_FOUND = ErrorCode(13001, 404, "Face not found")
    FACE_NO_DESCRIPTOR = ErrorCode(13002, 400, "Face has no descriptor of the requested version")
    FACES_NOT_FOUND = ErrorCode(13003, 404, "Some faces were not found")
    TOO_MANY_FACES = ErrorCode(13004, 400, "Too many faces in one request")
    CHANGES_NOT_ANNOUNCED = ErrorCode(13005, 503, "List change could not be announced to the matchers (Redis); nothing changed")
    # matching
    LIMIT_OUT_OF_RANGE = ErrorCode(14001, 422, "limit out of range")
    THRESHOLD_OUT_OF_RANGE = ErrorCode(14002, 422, "threshold out of range")
    TOO_MANY_REFERENCES = ErrorCode(14003, 422, "Too many references")
    MATCHER_UNAVAILABLE = ErrorCode(14004, 503, "Matching service unavailable")
    VERSION_MISMATCH = ErrorCode(14005, 400, "References have different descriptor versions")
    MATCH_BODY_TOO_LARGE = ErrorCode(14006, 413, "Matching request body too large")
    FACES_DB_UNAVAILABLE = ErrorCode(14007, 503, "Faces DB unreachable and stale answers are refused")
    # matching: candidate sets and filters (issue 16)
    TOO_MANY_CANDIDATE_SETS = ErrorCode(14008, 422, "Too many candidate sets in one request")
    TOO_MANY_FILTER_VALUES = ErrorCode(14009, 422, "Too many values in candidate filters")
    TIME_RANGE_EMPTY = ErrorCode(14010, 422, "create_time__gte is not before create_time__lt")
    CANDIDATE_SET_INVALID = ErrorCode(14011, 422, "Candidate sets malformed: none, a set with no list or both list_id and list_ids, or (internal callers) a list twice")
    # images
    IMAGE_DECODE = ErrorCode(16001, 400, "Image could not be decoded")
    IMAGE_PIXELS = ErrorCode(16002, 400, "Image has too many pixels")
    IMAGE_TOO_LARGE = ErrorCode(16003, 413, "Image file too large")
    IMAGE_TYPE = ErrorCode(16004, 415, "Unsupported image type")
    NO_FACE = ErrorCode(16005, 422, "No face found in the image")
    IMAGE_BASE64 = ErrorCode(16006, 400, "Image data is not valid base64")
    EXTRACTOR_UNAVAILABLE = ErrorCode(16007, 503, "Face extraction unavailable")
    IMAGE_REQUEST = ErrorCode(16008, 400, "Malformed image request")
    # accounts
    ACCOUNT_NOT_FOUND = ErrorCode(15001, 404, "Account not found")
    TOKEN_LIMIT = ErrorCode(15002, 409, "Too many live tokens for this account")
    TOKEN_NOT_FOUND = ErrorCode(15003, 404, "Token not found")
    # dashboard
    DASHBOARD_LOGIN_REQUIRED = ErrorCode(18001, 401, "Dashboard login required")
    DASHBOARD_LOGIN_FAILED = ErrorCode(18002, 401, "Wrong admin token")
    DASHBOARD_OFF = ErrorCode(18003, 403, "Dashboard is off: no admin token is configured")
    DASHBOARD_UPSTREAM = ErrorCode(18004, 502, "A service the dashboard called failed")
    # internal
    INTERNAL = ErrorCode(19001, 500, "Internal server error")
    # index services (numbers as in LUNA LIM)
    TASK_NOT_FOUND = ErrorCode(26001, 404, "Object not found. Index task not found")
    LIST_NOT_INDEXABLE = ErrorCode(26009, 400, "List does not satisfy the indexation condition")
    INDEXER_INTERNAL = ErrorCode(26100, 500, "Indexer internal error")
    INDEXER_BUSY = ErrorCode(26101, 409, "Indexer busy")
    INDEXER_UNAVAILABLE = ErrorCode(26102, 503, "Indexer unavailable")
    BUILD_FAILED = ErrorCode(26103, 500, "Build failed")
    BUILD_DIED = ErrorCode(26104, 500, "Build process failed. Build process died")
    LIST_EMPTY = ErrorCode(26105, 400, "Build process failed. List is empty")
    BUILD_CANCELLED = ErrorCode(26106, 409, "Build process cancelled")
    INDEXER_UNREACHABLE = ErrorCode(26107, 503, "Indexer stopped answering during the build")
    NOT_MASTER = ErrorCode(26108, 409, "This Index Manager no longer holds the master lock")
    TASK_DUPLICATE = ErrorCode(26201, 409, "Task duplicate. Indexing task already exists")
    INDEX_UP_TO_DATE = ErrorCode(26202, 409, "Index for the most recent content version already exists")
    INDEX_NOT_FOUND = ErrorCode(26204, 404, "Index not found in the storage")
    TASK_FINISHED = ErrorCode(26205, 409, "Task already finished")
    TASKS_UNAVAILABLE = ErrorCode(26206, 503, "Task repository (Redis) unavailable")
    MATCH_REQUEST_INVALID = ErrorCode(26301, 400, "Failed to validate matching request")
    INDEX_FOR_LABEL_NOT_FOUND = ErrorCode(26304, 404, "Index for label not found")
    INDEX_VERSION_MISMATCH = ErrorCode(26305, 400, "Descriptor version mismatch")
    INDEX_CORRUPT = ErrorCode(26308, 500, "Skip load index due to index corruption")
    INDEX_NOT_LICENSED = ErrorCode(26309, 403, "Indexed matching is not licensed")


def by_code(code: int) -> ErrorCode:
    """The registered error with this code (errors relayed between services keep their code)."""
    for value in vars(Errors).values():
        if isinstance(value, ErrorCode) and value.code == code:
            return value
    return Errors.INTERNAL


class FacedexError(Exception):
    """An error with a stable code, raised anywhere and rendered by every service the same way."""

    def __init__(self, error: ErrorCode, detail: str | None = None) -> None:
        self.error = error
        self.detail = detail or error.desc
        super().__init__(f"{error.code} {error.desc}: {self.detail}")

    def body(self) -> dict[str, object]:
        return {"error_code": self.error.code, "desc": self.error.desc, "detail": self.detail}
