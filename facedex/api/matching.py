"""Matching: references (descriptors or face ids) against one list, via the Matcher Proxy."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
from fastapi import APIRouter, Request, Response

from facedex import descriptors, internal_auth, timing, wire
from facedex.api import images, msgpack_body
from facedex.api.deps import Account, Store, parse_descriptor
from facedex.api.match_body import openapi_body, read_match_request
from facedex.api.models import (
    DESCRIPTOR_ERRORS,
    IMAGE_ERRORS,
    MATCH_ERRORS,
    DescriptorVersionOut,
    MatchRequestIn,
    MatchResponseOut,
    MatchResult,
    ReferenceMatches,
    ReferenceOut,
)
from facedex.errors import Errors, FacedexError
from facedex.http import errors
from facedex.logs import current_request_id

router = APIRouter(tags=["matching"])


async def _references(
    request: Request, body: MatchRequestIn, account: uuid.UUID, store: Store
) -> tuple[int, np.ndarray, list[ReferenceOut]]:
    """All references as one (m, dim) matrix of one descriptor version, and what each row answers.

    An image reference gives one row per face used (its largest, or all of them).
    """
    refs = body.references
    parsed = {i: parse_descriptor(request, r.descriptor) for i, r in enumerate(refs) if r.descriptor is not None}
    image_refs = {i: (r.image, r.all_faces) for i, r in enumerate(refs) if r.image is not None}
    extracted = dict(zip(image_refs, await images.extract_many(request, list(image_refs.values()))))
    versions = {v for v, _ in parsed.values()} | {e.version for e in extracted.values()}
    asked = body.candidates.descriptor_version
    if asked is not None:
        descriptors.get_version(asked)
        versions.add(asked)
    if len(versions) > 1:
        raise FacedexError(Errors.VERSION_MISMATCH, f"reference versions {sorted(versions)} differ; match one version at a time")
    version = versions.pop() if versions else request.app.state.settings.default_descriptor_version
    face_refs = [r.face_id for r in refs if r.face_id is not None]
    by_face = await store.get_descriptors(account, face_refs, version) if face_refs else {}
    rows: list[np.ndarray] = []
    out: list[ReferenceOut] = []
    for i, r in enumerate(refs):
        if i in parsed:
            rows.append(parsed[i][1])
            out.append(ReferenceOut(descriptor=r.descriptor))
        elif i in extracted:
            for face in extracted[i].faces:
                rows.append(images.descriptor(extracted[i].version, face))
                out.append(ReferenceOut(image_index=i, detection=images.detection(face)))
        else:
            rows.append(by_face[r.face_id])  # type: ignore[index]
            out.append(ReferenceOut(face_id=r.face_id))
    return version, np.vstack(rows).astype("<f4", copy=False), out


@router.post(
    "/1/matcher/faces",
    response_model=MatchResponseOut,
    openapi_extra=msgpack_body.openapi(openapi_body()),
    responses=errors(*DESCRIPTOR_ERRORS, *IMAGE_ERRORS, *MATCH_ERRORS, Errors.BAD_MSGPACK),
)
async def match_faces(request: Request, account: Account, store: Store) -> Response:
    """Find the faces of a list most similar to each reference (a descriptor, a face id or an image).

    Similarity is the cosine of the two descriptors clipped to [0, 1]; results are
    sorted by similarity, at most ``limit`` per reference, only those ``>= threshold``.
    The body's references and filter ids are counted before it is parsed (:mod:`facedex.api.match_body`).
    JSON or msgpack (``Content-Type`` / ``Accept: application/msgpack``, :mod:`facedex.api.msgpack_body`);
    the answer's ``Server-Timing`` header gives the time of each hop (:mod:`facedex.timing`).
    """
    started = time.perf_counter()
    if msgpack_body.is_msgpack(request.headers.get("content-type")):
        body = await msgpack_body.read_msgpack_request(request)
    else:
        body = await read_match_request(request)
    hops_of(request)[timing.PARSE] = timing.since(started)
    out = await match(request, body, account, store)
    as_msgpack = msgpack_body.wants_msgpack(request.headers.get("accept"))
    encode = msgpack_body.encode_response if as_msgpack else MatchResponseOut.model_dump_json
    # serialised by pydantic's own (Rust) encoder, not FastAPI's re-validation + jsonable_encoder (a hop cut)
    content = await asyncio.to_thread(encode, out) if _out_count(out) > OFF_LOOP_RESULTS else encode(out)
    return Response(content, media_type=msgpack_body.MSGPACK if as_msgpack else "application/json",
                    headers={timing.HEADER: server_timing(request, out.route, started)})


def hops_of(request: Request) -> timing.Timings:
    """This request's hop times (facedex.timing), filled as the match goes."""
    hops: timing.Timings | None = getattr(request.state, "hops", None)
    if hops is None:
        hops = request.state.hops = {}
    return hops


def server_timing(request: Request, route: str, started: float) -> str:
    """The ``Server-Timing`` value of a match answered by ``route``; its hops also go to ``/metrics``."""
    hops = hops_of(request)
    hops[timing.TOTAL] = timing.since(started)
    timing.observe(hops, route)
    return timing.header(hops)


def _out_count(out: MatchResponseOut) -> int:
    return sum(len(m.results) for m in out.matches)


async def match(request: Request, body: MatchRequestIn, account: uuid.UUID, store: Store) -> MatchResponseOut:
    settings = request.app.state.settings.matching
    cand = body.candidates
    if not 1 <= cand.limit <= settings.max_limit:
        raise FacedexError(Errors.LIMIT_OUT_OF_RANGE, f"limit must be 1 .. {settings.max_limit}, got {cand.limit}")
    if cand.threshold is not None and not 0.0 <= cand.threshold <= 1.0:
        raise FacedexError(Errors.THRESHOLD_OUT_OF_RANGE, f"threshold must be 0 .. 1, got {cand.threshold}")
    if len(body.references) > settings.max_references:
        raise FacedexError(Errors.TOO_MANY_REFERENCES, f"at most {settings.max_references} references per request")
    if cand.face_ids is not None and len(cand.face_ids) > settings.max_filter_face_ids:
        raise FacedexError(Errors.TOO_MANY_FACES, f"at most {settings.max_filter_face_ids} face_ids in a filter")

    hops = hops_of(request)
    started = time.perf_counter()
    version, refs, answered = await _references(request, body, account, store)
    hops[timing.REFS] = timing.since(started)
    if refs.shape[0] > settings.max_references:
        raise FacedexError(Errors.TOO_MANY_REFERENCES, f"{refs.shape[0]} references (faces found) is over {settings.max_references}")
    # the account id travels signed: the proxy and the matchers trust no account id the API did not vouch for
    auth, auth_expires_ms = internal_auth.sign(
        request.app.state.settings.internal_token, account.bytes, cand.list_id.bytes, settings.proxy_timeout_s + 60
    )
    req = wire.MatchRequest(
        account_id=account.bytes,
        list_id=cand.list_id.bytes,
        version=version,
        references=refs.tobytes(),
        limit=cand.limit,
        threshold=cand.threshold,
        face_ids=[f.bytes for f in dict.fromkeys(cand.face_ids)] if cand.face_ids is not None else None,  # duplicates collapse
        request_id=current_request_id(),
        exact=cand.exact,
        auth=auth,
        auth_expires_ms=auth_expires_ms,
    )
    started = time.perf_counter()
    resp: wire.MatchResponse = await request.app.state.proxy.call("/1/match", req, wire.MatchResponse)
    # the API <-> proxy hop: the call minus what the proxy and the matcher reported of it
    hops.update(resp.timings or {})
    hops[timing.PROXY] = max(timing.since(started) - timing.downstream(resp.timings), 0.0)
    if _result_count(resp) > OFF_LOOP_RESULTS:  # up to max_references x max_limit objects: not on the event loop
        return await asyncio.to_thread(_response, answered, resp, version)
    return _response(answered, resp, version)


OFF_LOOP_RESULTS = 2000  # building or serialising more result objects than this could block the loop for >10 ms


def _result_count(resp: wire.MatchResponse) -> int:
    return sum(len(r.similarities) // 4 for r in resp.results)


def _response(answered: list[ReferenceOut], resp: wire.MatchResponse, version: int) -> MatchResponseOut:
    matches = []
    for ref, res in zip(answered, resp.results, strict=True):
        sims = np.frombuffer(res.similarities, dtype=np.float32)
        ids = res.face_ids
        matches.append(
            ReferenceMatches(
                reference=ref,
                results=[
                    MatchResult(face_id=uuid.UUID(bytes=ids[16 * i : 16 * i + 16]), similarity=round(float(s), 6))
                    for i, s in enumerate(sims)
                ],
            )
        )
    return MatchResponseOut(
        matches=matches,
        route=resp.route,
        list_size=resp.list_size,
        descriptor_version=version,
        fallback_reason=resp.fallback_reason,
        consistency="stale" if resp.consistency == "stale" else "fresh",
    )


@router.get("/1/descriptor_versions", tags=["descriptors"])
async def descriptor_versions(request: Request) -> list[DescriptorVersionOut]:
    """Descriptor versions this deployment knows: dimension and element type of each."""
    default = request.app.state.settings.default_descriptor_version
    return [
        DescriptorVersionOut(version=v.version, dim=v.dim, dtype=v.dtype, name=v.name, default=v.version == default)
        for v in descriptors.versions()
    ]
