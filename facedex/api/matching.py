"""Matching: references (descriptors, face ids, images) against one list or several candidate sets, via the Matcher Proxy.

``candidates`` as an object is one list (``match``, one ``/1/match`` call); as an array it is several candidate
sets, each over one or more lists with filters and targets (``match_sets``): one ``/1/match_sets`` call carries
every (set, list) sub-request, the proxy routes each on its own and merges each set, and the targets of all hits
are read in one batched query.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
from fastapi import APIRouter, Request, Response

from facedex import descriptors, internal_auth, timing, wire
from facedex.api import deps, images, msgpack_body
from facedex.api.auth import current_account
from facedex.api.deps import Account, Store, parse_descriptor
from facedex.api.match_body import openapi_body, read_match_request
from facedex.api.models import (
    DESCRIPTOR_ERRORS,
    IMAGE_ERRORS,
    MATCH_ERRORS,
    SET_ERRORS,
    CandidateFilters,
    CandidateSet,
    CandidateSetInfo,
    DescriptorVersionOut,
    ListRoute,
    MatchCandidates,
    MatchRequestIn,
    MatchResponseOut,
    MatchResult,
    MatchSetsResponseOut,
    ReferenceMatches,
    ReferenceOut,
    ReferenceSetMatches,
    SetResults,
    TargetResult,
)
from facedex.auth import bearer
from facedex.config import MatchingSettings
from facedex.errors import Errors, FacedexError
from facedex.http import errors
from facedex.logs import current_request_id

router = APIRouter(tags=["matching"])


async def _references(
    request: Request, body: MatchRequestIn, asked: int | None, account: uuid.UUID, store: Store
) -> tuple[int, np.ndarray, list[ReferenceOut]]:
    """All references as one (m, dim) matrix of one descriptor version, and what each row answers.

    An image reference gives one row per face used (its largest, or all of them).
    """
    refs = body.references
    parsed = {i: parse_descriptor(request, r.descriptor) for i, r in enumerate(refs) if r.descriptor is not None}
    image_refs = {i: (r.image, r.all_faces) for i, r in enumerate(refs) if r.image is not None}
    extracted = dict(zip(image_refs, await images.extract_many(request, list(image_refs.values()))))
    versions = {v for v, _ in parsed.values()} | {e.version for e in extracted.values()}
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
    response_model=MatchResponseOut | MatchSetsResponseOut,
    openapi_extra=msgpack_body.openapi(openapi_body()),
    responses=errors(*DESCRIPTOR_ERRORS, *IMAGE_ERRORS, *MATCH_ERRORS, *SET_ERRORS, Errors.BAD_MSGPACK),
)
async def match_faces(request: Request, account: Account, store: Store) -> Response:
    """Find the faces most similar to each reference (a descriptor, a face id or an image).

    ``candidates`` is one list (an object; the answer is a MatchResponseOut) or an array of candidate sets, each
    with its filters (lists, face ids, external ids, user data, creation time), limit, threshold and targets (the
    answer is a MatchSetsResponseOut: per reference, per set, its results with the fields asked for).
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
    if isinstance(body.candidates, list):
        sets = await match_sets(request, body, account, store)
        # only the targets each set asked for are present: unset fields are left out
        dump = lambda: sets.model_dump_json(exclude_unset=True)  # noqa: E731
        big = sum(len(s.results) for m in sets.matches for s in m.sets) > OFF_LOOP_RESULTS
        text = await asyncio.to_thread(dump) if big else dump()
        return Response(text, media_type="application/json", headers={timing.HEADER: server_timing(request, "sets", started)})
    out = await match(request, body, account, store)
    as_msgpack = msgpack_body.wants_msgpack(request.headers.get("accept"))
    encode = msgpack_body.encode_response if as_msgpack else MatchResponseOut.model_dump_json
    # serialised by pydantic's own (Rust) encoder, not FastAPI's re-validation + jsonable_encoder (a hop cut)
    content = await asyncio.to_thread(encode, out) if _out_count(out) > OFF_LOOP_RESULTS else encode(out)
    return Response(content, media_type=msgpack_body.MSGPACK if as_msgpack else "application/json",
                    headers={timing.HEADER: server_timing(request, out.route, started)})


async def match_faces_direct(request: Request) -> Response:
    """:func:`match_faces` as :class:`facedex.http.DirectRoutes` answers it: its two dependencies resolved here as
    FastAPI would (``tests/test_hops.py`` checks the route declares no others)."""
    account = await current_account(request, await bearer(request))
    return await match_faces(request, account, await deps.store(request))


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
    assert isinstance(cand, MatchCandidates)
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
    version, refs, answered = await _references(request, body, cand.descriptor_version, account, store)
    hops[timing.REFS] = timing.since(started)
    if refs.shape[0] > settings.max_references:
        raise FacedexError(Errors.TOO_MANY_REFERENCES, f"{refs.shape[0]} references (faces found) is over {settings.max_references}")
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
    )
    # signed whole: the proxy and the matchers serve no account id, and no references, limit or filter, the API did not vouch for
    req = internal_auth.sign_request(request.app.state.settings.internal_token, req, settings.proxy_timeout_s + 60)
    started = time.perf_counter()
    resp: wire.MatchResponse = await request.app.state.proxy.call("/1/match", req, wire.MatchResponse)
    # the API <-> proxy hop: the call minus what the proxy and the matcher reported of it
    hops.update(resp.timings or {})
    hops[timing.PROXY] = max(timing.since(started) - timing.downstream(resp.timings), 0.0)
    if _result_count(resp) > OFF_LOOP_RESULTS:  # up to max_references x max_limit objects: not on the event loop
        return await asyncio.to_thread(_response, answered, resp, version)
    return _response(answered, resp, version)


OFF_LOOP_RESULTS = 2000  # building or serialising more result objects than this could block the loop for >10 ms


def _result_count(resp: wire.MatchResponse | wire.SetMatches) -> int:
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


# ------------------------------------------------------------------ candidate sets (the array form)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_META_TARGETS = {"external_id", "user_data", "create_time", "list_ids"}


def _unix_us(t: datetime) -> int:
    """Exact integer unix microseconds (a time without a zone is UTC)."""
    return ((t if t.tzinfo is not None else t.replace(tzinfo=UTC)) - _EPOCH) // timedelta(microseconds=1)


def check_sets(sets: list[CandidateSet], settings: MatchingSettings) -> list[list[uuid.UUID]]:
    """Every bound of the array form, before anything else runs; returns each set's lists (duplicates count once)."""
    if not sets:
        raise FacedexError(Errors.CANDIDATE_SET_INVALID, "candidates is an empty array: give at least one candidate set")
    if len(sets) > settings.max_candidate_sets:
        raise FacedexError(Errors.TOO_MANY_CANDIDATE_SETS, f"{len(sets)} candidate sets; at most {settings.max_candidate_sets}")
    lists: list[list[uuid.UUID]] = []
    face_ids = external_ids = 0
    for i, s in enumerate(sets):
        f = s.filters
        if not 1 <= s.limit <= settings.max_limit:
            raise FacedexError(Errors.LIMIT_OUT_OF_RANGE, f"candidate set {i}: limit must be 1 .. {settings.max_limit}, got {s.limit}")
        if s.threshold is not None and not 0.0 <= s.threshold <= 1.0:
            raise FacedexError(Errors.THRESHOLD_OUT_OF_RANGE, f"candidate set {i}: threshold must be 0 .. 1, got {s.threshold}")
        if (f.list_id is None) == (f.list_ids is None):
            raise FacedexError(Errors.CANDIDATE_SET_INVALID, f"candidate set {i}: give filters.list_id or filters.list_ids (one of them)")
        own = [f.list_id] if f.list_id is not None else list(dict.fromkeys(f.list_ids or []))
        if not own:
            raise FacedexError(Errors.CANDIDATE_SET_INVALID, f"candidate set {i}: filters.list_ids is empty")
        if len(own) > settings.max_lists_per_set:
            raise FacedexError(Errors.TOO_MANY_FILTER_VALUES, f"candidate set {i}: at most {settings.max_lists_per_set} lists per set")
        if f.create_time__gte is not None and f.create_time__lt is not None and _unix_us(f.create_time__gte) >= _unix_us(f.create_time__lt):
            raise FacedexError(Errors.TIME_RANGE_EMPTY, f"candidate set {i}: create_time__gte must be before create_time__lt")
        face_ids += len(f.face_ids or ())
        external_ids += len(f.external_ids or ())
        lists.append(own)
    if sum(s.limit for s in sets) > settings.max_limit:  # the results a request can ask for: as many as one set's
        raise FacedexError(Errors.LIMIT_OUT_OF_RANGE, f"the sets' limits add up to {sum(s.limit for s in sets)}; "
                           f"at most {settings.max_limit} in all")
    if face_ids > settings.max_filter_face_ids:
        raise FacedexError(Errors.TOO_MANY_FACES, f"{face_ids} face_ids in the filters; at most {settings.max_filter_face_ids} per request")
    if external_ids > settings.max_filter_values:
        raise FacedexError(Errors.TOO_MANY_FILTER_VALUES, f"{external_ids} external_ids in the filters; at most {settings.max_filter_values} per request")
    return lists


def _wire_filters(f: CandidateFilters) -> wire.MatchFilters | None:
    if f.external_ids is None and f.user_data is None and f.user_data__prefix is None \
            and f.create_time__gte is None and f.create_time__lt is None:
        return None
    return wire.MatchFilters(
        external_ids=list(dict.fromkeys(f.external_ids)) if f.external_ids is not None else None,
        user_data=f.user_data,
        user_data_prefix=f.user_data__prefix,
        create_time_gte_us=_unix_us(f.create_time__gte) if f.create_time__gte is not None else None,
        create_time_lt_us=_unix_us(f.create_time__lt) if f.create_time__lt is not None else None,
    )


async def match_sets(request: Request, body: MatchRequestIn, account: uuid.UUID, store: Store) -> MatchSetsResponseOut:
    """The array form: one signed sub-request per (set, list), all in one proxy call; targets in one query."""
    app_settings = request.app.state.settings
    settings: MatchingSettings = app_settings.matching
    assert isinstance(body.candidates, list)
    sets = body.candidates
    lists = check_sets(sets, settings)
    if len(body.references) > settings.max_references:
        raise FacedexError(Errors.TOO_MANY_REFERENCES, f"at most {settings.max_references} references per request")
    asked = {s.descriptor_version for s in sets if s.descriptor_version is not None}
    if len(asked) > 1:
        raise FacedexError(Errors.VERSION_MISMATCH, f"candidate sets ask for descriptor versions {sorted(asked)}; match one at a time")
    version, refs, answered = await _references(request, body, next(iter(asked), None), account, store)
    if refs.shape[0] > settings.max_references:
        raise FacedexError(Errors.TOO_MANY_REFERENCES, f"{refs.shape[0]} references (faces found) is over {settings.max_references}")
    references, request_id = refs.tobytes(), current_request_id()
    subs: list[list[wire.MatchRequest]] = []
    for s, own in zip(sets, lists, strict=True):
        face_ids = [f.bytes for f in dict.fromkeys(s.filters.face_ids)] if s.filters.face_ids is not None else None
        filters = _wire_filters(s.filters)
        subs.append([])
        for list_id in own:  # each sub-request signed whole on its own: the matchers check it as any request
            subs[-1].append(internal_auth.sign_request(app_settings.internal_token, wire.MatchRequest(
                account_id=account.bytes, list_id=list_id.bytes, version=version, references=references, limit=s.limit,
                threshold=s.threshold, face_ids=face_ids, request_id=request_id, exact=s.exact, filters=filters,
            ), settings.proxy_timeout_s + 60))
    resp: wire.MatchSetsResponse = await request.app.state.proxy.call(
        "/1/match_sets", wire.MatchSetsRequest(sets=subs, request_id=request_id), wire.MatchSetsResponse
    )
    rows = await _target_rows(store, account, sets, resp)
    if sum(_result_count(r) for r in resp.sets) > OFF_LOOP_RESULTS:
        return await asyncio.to_thread(_sets_response, answered, sets, resp, rows, version)
    return _sets_response(answered, sets, resp, rows, version)


async def _target_rows(
    store: Store, account: uuid.UUID, sets: list[CandidateSet], resp: wire.MatchSetsResponse
) -> dict[uuid.UUID, object]:
    """The stored fields of every hit whose set asked for more than face_id and similarity: one query in all."""
    wanting = [i for i, s in enumerate(sets) if _META_TARGETS & set(s.targets)]
    if not wanting:
        return {}
    raw = b"".join(r.face_ids for i in wanting for r in resp.sets[i].results)
    ids = list(dict.fromkeys(raw[j : j + 16] for j in range(0, len(raw), 16)))
    if not ids:
        return {}
    with_lists = any("list_ids" in sets[i].targets for i in wanting)
    return await store.face_targets(account, [uuid.UUID(bytes=b) for b in ids], with_lists)  # type: ignore[return-value]


def _sets_response(
    answered: list[ReferenceOut], sets: list[CandidateSet], resp: wire.MatchSetsResponse, rows: dict[uuid.UUID, object],
    version: int,
) -> MatchSetsResponseOut:
    per_set: list[list[list[TargetResult]]] = []  # set -> reference -> results
    for s, got in zip(sets, resp.sets, strict=True):
        targets = list(dict.fromkeys(s.targets))
        per_ref = []
        for res in got.results:
            sims = np.frombuffer(res.similarities, dtype=np.float32)
            out = []
            for i, sim in enumerate(sims):
                face_id = uuid.UUID(bytes=res.face_ids[16 * i : 16 * i + 16])
                out.append(TargetResult(**_target_fields(targets, face_id, float(sim), rows.get(face_id))))
            per_ref.append(out)
        per_set.append(per_ref)
    matches = [
        ReferenceSetMatches(reference=ref, sets=[SetResults(results=per_set[j][r]) for j in range(len(sets))])
        for r, ref in enumerate(answered)
    ]
    infos = []
    for got in resp.sets:
        routes = {p.route for p in got.parts}
        infos.append(CandidateSetInfo(
            route=routes.pop() if len(routes) == 1 else "mixed",
            list_size=sum(p.list_size for p in got.parts),
            fallback_reason=next((p.fallback_reason for p in got.parts if p.fallback_reason), None),
            lists=[ListRoute(list_id=uuid.UUID(bytes=p.list_id), route=p.route, list_size=p.list_size,
                             fallback_reason=p.fallback_reason, consistency="stale" if p.consistency == "stale" else "fresh")
                   for p in got.parts],
        ))
    stale = any(p.consistency == "stale" for got in resp.sets for p in got.parts)
    return MatchSetsResponseOut(matches=matches, candidate_sets=infos, descriptor_version=version,
                                consistency="stale" if stale else "fresh")


def _target_fields(targets: list[str], face_id: uuid.UUID, similarity: float, row: object) -> dict[str, object]:
    """The asked fields of one hit; a face deleted since it matched has null stored fields."""
    fields: dict[str, object] = {}
    for t in targets:
        if t == "face_id":
            fields[t] = face_id
        elif t == "similarity":
            fields[t] = round(similarity, 6)
        else:
            fields[t] = row[t] if row is not None else None  # type: ignore[index]
    return fields


@router.get("/1/descriptor_versions", tags=["descriptors"])
async def descriptor_versions(request: Request) -> list[DescriptorVersionOut]:
    """Descriptor versions this deployment knows: dimension and element type of each."""
    default = request.app.state.settings.default_descriptor_version
    return [
        DescriptorVersionOut(version=v.version, dim=v.dim, dtype=v.dtype, name=v.name, default=v.version == default)
        for v in descriptors.versions()
    ]
