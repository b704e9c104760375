"""``application/msgpack`` bodies of ``POST /1/matcher/faces``, beside JSON.

Why: a JSON reference is a base64 string inside JSON, and a JSON answer is a UUID string per result;
msgpack carries a descriptor as its raw little-endian float32 bytes (``bin``) and a face id as its 16 bytes.
The request is negotiated by ``Content-Type``, the answer by ``Accept``; errors stay JSON (one error shape).

Shape (the JSON body's, with bytes where JSON has base64 or UUID text)::

    {"references": [{"descriptor": {"version": 1, "data": <bin: dim x float32 LE>}}
                    | {"face_id": <bin 16 | str>}
                    | {"image": {"data": <bin: the file>, "content_type": str}, "all_faces": bool}],
     "candidates": {"list_id": <bin 16 | str>, "face_ids": [<bin 16 | str>, ...], "limit": int,
                    "threshold": float, "exact": bool, "descriptor_version": int}}

Bounded work, as for JSON (:mod:`facedex.api.match_body`): the body is read up to ``matching.max_body_bytes``;
the reference and filter-id counts are read from the msgpack array headers before those arrays are decoded
(over the limits: 14003 / 13004, as JSON); every part is decoded into a fixed type (msgspec fails at the first
wrong element, so no huge generic structure is ever built); a candidates field without a type here (none
today) is decoded only up to 64 KiB. The decoded body then goes through the very pydantic model JSON goes
through (``MatchRequestIn``), so validation and error codes are the same. Bytes that are not msgpack: 400
10013; msgpack of the wrong shape: 422 10002.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import uuid
from typing import Any

import msgspec
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from facedex.api.match_body import OFF_LOOP_BYTES, read_bounded
from facedex.api.models import MatchRequestIn, MatchResponseOut
from facedex.config import MatchingSettings
from facedex.errors import Errors, FacedexError

MSGPACK = "application/msgpack"
_MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
MAX_UNTYPED_FIELD = 64 << 10  # a candidates field of no known type: decoded generically only up to this size
MAX_CANDIDATE_KEYS = 32


def _media(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def is_msgpack(content_type: str | None) -> bool:
    return _media(content_type) in _MSGPACK_TYPES


def wants_msgpack(accept: str | None) -> bool:
    """The client asked for a msgpack answer (any msgpack type in ``Accept``, not refused with q=0)."""
    for part in (accept or "").split(","):
        media, *params = (p.strip().lower() for p in part.split(";"))
        if media in _MSGPACK_TYPES and not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            return True
    return False


class _Descriptor(msgspec.Struct, forbid_unknown_fields=True):
    data: bytes
    version: int | None = None


class _Image(msgspec.Struct, forbid_unknown_fields=True):
    data: bytes
    content_type: str | None = None


class _Reference(msgspec.Struct, forbid_unknown_fields=True):
    descriptor: _Descriptor | None = None
    face_id: uuid.UUID | None = None
    image: _Image | None = None
    all_faces: bool = False


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    references: msgspec.Raw
    candidates: msgspec.Raw


_TYPED: dict[str, Any] = {  # candidates fields decoded into a fixed type
    "list_id": uuid.UUID,
    "face_ids": list[uuid.UUID] | None,
    "limit": int,
    "threshold": float | None,
    "exact": bool,
    "descriptor_version": int | None,
}


def _header_len(buf: bytes | msgspec.Raw, fix: int, b16: int, b32: int) -> int | None:
    raw = bytes(memoryview(buf)[:5])  # a header is at most 5 bytes: never copy the body
    if not raw:
        return None
    b = raw[0]
    if fix <= b <= fix + 0x0F:
        return b & 0x0F
    if b == b16 and len(raw) >= 3:
        return int.from_bytes(raw[1:3], "big")
    if b == b32 and len(raw) >= 5:
        return int.from_bytes(raw[1:5], "big")
    return None


def array_len(raw: bytes | msgspec.Raw) -> int | None:
    """Entries of the msgpack array ``raw`` starts with, read from its header; None if it is not an array."""
    return _header_len(raw, 0x90, 0xDC, 0xDD)


def map_len(raw: bytes | msgspec.Raw) -> int | None:
    """Entries of the msgpack map ``raw`` starts with, read from its header; None if it is not a map."""
    return _header_len(raw, 0x80, 0xDE, 0xDF)


def _reference(r: _Reference) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.descriptor is not None:
        out["descriptor"] = {"version": r.descriptor.version, "data": base64.b64encode(r.descriptor.data).decode()}
    if r.face_id is not None:
        out["face_id"] = r.face_id
    if r.image is not None:
        out["image"] = {"data": base64.b64encode(r.image.data).decode(), "content_type": r.image.content_type}
    if r.all_faces:
        out["all_faces"] = True
    return out


def _candidates(raw: msgspec.Raw, settings: MatchingSettings) -> dict[str, Any]:
    n = map_len(raw)
    if n is None:
        raise msgspec.ValidationError("Expected `object` - at `$.candidates`")
    if n > MAX_CANDIDATE_KEYS:
        raise msgspec.ValidationError(f"candidates has {n} fields - at `$.candidates`")
    fields = msgspec.msgpack.decode(raw, type=dict[str, msgspec.Raw])
    out: dict[str, Any] = {}
    for key, value in fields.items():
        where = f" - at `$.candidates.{key}`"
        if key == "face_ids" and (count := array_len(value)) is not None and count > settings.max_filter_face_ids:
            raise FacedexError(Errors.TOO_MANY_FACES, f"at most {settings.max_filter_face_ids} face_ids in a filter")
        if key in _TYPED:
            try:
                out[key] = msgspec.msgpack.decode(value, type=_TYPED[key])
            except msgspec.ValidationError as exc:
                raise msgspec.ValidationError(f"{str(exc).split(' - at ')[0]}{where}") from None
        elif len(value) <= MAX_UNTYPED_FIELD:
            out[key] = msgspec.msgpack.decode(value)  # an unknown field: pydantic refuses it (extra="forbid")
        else:
            raise msgspec.ValidationError(f"field of {len(value)} bytes{where}")
    return out


def parse(body: bytes, settings: MatchingSettings) -> MatchRequestIn:
    """A msgpack matching body as the same model (and the same checks) as a JSON one."""
    try:
        outer = msgspec.msgpack.decode(body, type=_Body)
        count = array_len(outer.references)
        if count is not None and count > settings.max_references:
            raise FacedexError(Errors.TOO_MANY_REFERENCES, f"at most {settings.max_references} references per request")
        refs = msgspec.msgpack.decode(outer.references, type=list[_Reference])
        data = {"references": [_reference(r) for r in refs], "candidates": _candidates(outer.candidates, settings)}
    except msgspec.ValidationError as exc:  # msgpack, but not of the request's shape: as JSON's validation errors
        raise FacedexError(Errors.VALIDATION, f"msgpack body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise FacedexError(Errors.BAD_MSGPACK, f"invalid msgpack: {exc}") from None
    try:
        return MatchRequestIn.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def read_msgpack_request(request: Request) -> MatchRequestIn:
    settings: MatchingSettings = request.app.state.settings.matching
    body = await read_bounded(request, settings.max_body_bytes)
    if len(body) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse, body, settings)
    return parse(body, settings)


_encoder = msgspec.msgpack.Encoder(uuid_format="bytes")


def _dump(out: MatchResponseOut) -> dict[str, Any]:
    data = out.model_dump()
    for match in data["matches"]:
        descriptor = (match.get("reference") or {}).get("descriptor")
        if descriptor is not None and isinstance(descriptor.get("data"), str):  # echoed as raw bytes, not base64
            descriptor["data"] = base64.b64decode(descriptor["data"])
    return data


def encode_response(out: MatchResponseOut) -> bytes:
    """The answer as msgpack: the JSON answer's fields, face ids as 16-byte bin, descriptors as raw bytes."""
    return _encoder.encode(_dump(out))


# ------------------------------------------------------------------ OpenAPI
_BYTES_NOTE = "msgpack bin (shown here as base64)"


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(copy.deepcopy(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)  # type: ignore[no-any-return]


def _as_msgpack(node: Any) -> Any:
    """A JSON body's schema as msgpack's: UUIDs as 16-byte bin, descriptor and image ``data`` as raw bytes.

    Titles get a ``Msgpack`` prefix: a client generator must not take these for the JSON body's models."""
    if isinstance(node, dict):
        if node.get("format") == "uuid":
            return {"type": "string", "description": f"a UUID: 16 bytes as {_BYTES_NOTE}, or its text form"}
        out = {k: _as_msgpack(v) for k, v in node.items()}
        if isinstance(out.get("title"), str) and isinstance(out.get("properties"), dict):
            out["title"] = "Msgpack" + out["title"]
        props = out.get("properties")
        if isinstance(props, dict) and "data" in props and set(props) <= {"data", "version", "content_type"}:
            props["data"] = {"type": "string", "contentEncoding": "base64",
                             "description": f"the raw bytes (a descriptor: little-endian float32) as {_BYTES_NOTE}"}
        return out
    if isinstance(node, list):
        return [_as_msgpack(v) for v in node]
    return node


def openapi(extra: dict[str, Any]) -> dict[str, Any]:
    """The route's ``openapi_extra`` (its JSON request body) with the msgpack request and answer added."""
    out = copy.deepcopy(extra)
    request = _as_msgpack(_inline(MatchRequestIn.model_json_schema()))
    response = _as_msgpack(_inline(MatchResponseOut.model_json_schema(mode="serialization")))
    out["requestBody"]["content"][MSGPACK] = {"schema": request}
    out["requestBody"]["description"] = (
        f"JSON, or msgpack with `Content-Type: {MSGPACK}` (descriptors and face ids as bytes; see docs/architecture.md)"
    )
    answer = out.setdefault("responses", {}).setdefault("200", {})
    answer.setdefault("content", {})[MSGPACK] = {"schema": response}
    answer.setdefault("description", "Successful Response")
    answer["description"] += f"; msgpack with `Accept: {MSGPACK}`"
    return out
