"""Reading a matching request body with bounded work, before pydantic sees it.

Why: a body of 1.2M face-id references is valid JSON of 58 MB; parsed into
objects it took 1.2 GB and blocked the event loop for seconds before the count
check refused it. Here the body is read up to ``matching.max_body_bytes`` (the
declared length is checked before anything is read), then the JSON objects
(``{``) and strings (``"``) in it are counted with two C-speed scans: every
string of a valid matching request is a key, a base64 block, a UUID, a MIME
type, a target or a filter value, so these counts bound the references and filter ids the body can hold,
and a body over them cannot be valid and is refused at once. Filter text (user data, external ids) may
itself hold quotes and braces: a body over the quick counts is counted again with every string's content
left out (one regex scan, no copy, only then) before it is refused. What remains is
bounded; a large one is validated in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import re

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from facedex.api.models import MatchRequestIn
from facedex.config import MatchingSettings
from facedex.errors import Errors, FacedexError

OFF_LOOP_BYTES = 64 << 10  # validating more than this on the event loop could block it for milliseconds

# per reference: itself plus a descriptor or image object; the request and its candidates
OBJECTS_PER_REFERENCE = 2
OBJECTS_FIXED = 2
# per reference: at most 4 keys and 2 values (image: "image", "data", "content_type", "all_faces" + 2 values);
# candidates and top level: 8 keys, a list id; each filter face id is one string
STRINGS_PER_REFERENCE = 6
STRINGS_FIXED = 12
# the array form: per candidate set, the set and its filters objects; its keys (6 + 8), one value each for
# list_id, user_data, user_data__prefix and the two times, and up to 6 targets (plus its list ids, counted apart)
OBJECTS_PER_SET = 2
STRINGS_PER_SET = 25
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)  # one JSON string, escapes included


def openapi_body() -> dict[str, object]:
    """The route's documented body: MatchRequestIn's schema with its nested models inlined (the route reads the
    body itself, so FastAPI does not register them as components)."""
    schema = MatchRequestIn.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: object) -> object:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


async def read_bounded(request: Request, limit: int) -> bytes:
    """The body, refused with 14006 as soon as it is known to exceed ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise FacedexError(Errors.MATCH_BODY_TOO_LARGE, f"body of {length} bytes is over the matching limit of {limit}")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise FacedexError(Errors.MATCH_BODY_TOO_LARGE, f"body is over the matching limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def prescan(body: bytes, settings: MatchingSettings) -> None:
    """Refuse a body that holds more references or filter ids than allowed, without parsing it."""
    max_objects = OBJECTS_PER_REFERENCE * settings.max_references + OBJECTS_FIXED + OBJECTS_PER_SET * settings.max_candidate_sets
    max_strings = (STRINGS_PER_REFERENCE * settings.max_references + settings.max_filter_face_ids + STRINGS_FIXED
                   + settings.max_filter_values + settings.max_candidate_sets * (STRINGS_PER_SET + settings.max_lists_per_set))
    objects = body.count(b"{")
    strings = body.count(b'"') // 2
    if objects > max_objects or strings > max_strings:  # braces or quotes inside text? count outside strings only
        objects, strings = _outside_strings(body)
    if objects > max_objects:
        raise FacedexError(
            Errors.TOO_MANY_REFERENCES,
            f"the body holds {objects} JSON objects; at most {settings.max_references} references per request",
        )
    if strings > max_strings:
        raise FacedexError(
            Errors.TOO_MANY_FACES,
            f"the body holds {strings} JSON strings; at most {settings.max_filter_face_ids} face_ids in a filter",
        )


def _outside_strings(body: bytes) -> tuple[int, int]:
    """(objects, strings) of the body with what is inside its strings left out; no copy of the body is made."""
    braces_inside = strings = 0
    for m in _STRING.finditer(body):
        strings += 1
        braces_inside += body.count(b"{", m.start(), m.end())
    return body.count(b"{") - braces_inside, strings


async def read_match_request(request: Request) -> MatchRequestIn:
    settings: MatchingSettings = request.app.state.settings.matching
    body = await read_bounded(request, settings.max_body_bytes)
    if len(body) > OFF_LOOP_BYTES:
        await asyncio.to_thread(prescan, body, settings)
    else:
        prescan(body, settings)
    try:
        if len(body) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(MatchRequestIn.model_validate_json, body)
        return MatchRequestIn.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
