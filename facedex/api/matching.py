"""Matching: references (descriptors or face ids) against one list, via the Matcher Proxy."""

from __future__ import annotations

import uuid

import numpy as np
from fastapi import APIRouter, Request

from facedex import descriptors, wire
from facedex.api.deps import Account, Store, parse_descriptor
from facedex.api.models import MatchRequestIn, MatchResponseOut, MatchResult, ReferenceMatches
from facedex.errors import Errors, FacedexError

router = APIRouter(tags=["matching"])


async def _reference_matrix(request: Request, body: MatchRequestIn, account: uuid.UUID, store: Store) -> tuple[int, np.ndarray]:
    """All references as one (m, dim) matrix of one descriptor version."""
    parsed = [parse_descriptor(request, r.descriptor) if r.descriptor else None for r in body.references]
    versions = {p[0] for p in parsed if p is not None}
    if len(versions) > 1:
        raise FacedexError(Errors.VERSION_MISMATCH, f"reference versions {sorted(versions)} differ; match one version at a time")
    version = versions.pop() if versions else request.app.state.settings.default_descriptor_version
    face_refs = [r.face_id for r in body.references if r.face_id is not None]
    by_face = await store.get_descriptors(account, face_refs, version) if face_refs else {}
    rows = [p[1] if p is not None else by_face[r.face_id] for p, r in zip(parsed, body.references)]  # type: ignore[index]
    return version, np.vstack(rows).astype("<f4", copy=False)


@router.post("/1/matcher/faces", response_model=MatchResponseOut)
async def match_faces(request: Request, body: MatchRequestIn, account: Account, store: Store) -> MatchResponseOut:
    """Find the faces of a list most similar to each reference.

    Similarity is the cosine of the two descriptors clipped to [0, 1]; results are
    sorted by similarity, at most ``limit`` per reference, only those ``>= threshold``.
    """
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

    version, refs = await _reference_matrix(request, body, account, store)
    req = wire.MatchRequest(
        account_id=account.bytes,
        list_id=cand.list_id.bytes,
        version=version,
        references=refs.tobytes(),
        limit=cand.limit,
        threshold=cand.threshold,
        face_ids=[f.bytes for f in cand.face_ids] if cand.face_ids is not None else None,
        request_id=request.headers.get("x-request-id", ""),
        exact=cand.exact,
    )
    resp: wire.MatchResponse = await request.app.state.proxy.call("/1/match", req, wire.MatchResponse)
    matches = []
    for ref, res in zip(body.references, resp.results, strict=True):
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
    )


@router.get("/1/descriptor_versions", tags=["descriptors"])
async def descriptor_versions(request: Request) -> list[dict[str, object]]:
    """Descriptor versions this deployment knows: dimension and element type of each."""
    default = request.app.state.settings.default_descriptor_version
    return [
        {"version": v.version, "dim": v.dim, "dtype": v.dtype, "name": v.name, "default": v.version == default}
        for v in descriptors.versions()
    ]
