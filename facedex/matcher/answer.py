"""Answer a batch of stream requests for one loaded index with one scan per limit.

Why batch: a request usually carries one reference. The matcher reads up to
64 entries of a label's stream at once; stacking their references into one
search lets the kind's scan serve them together (faiss blocks many queries
over one pass of the codes and spreads them over the cores; usearch spreads a
graph search's queries too). No kind's answer for a query depends on the
other queries of the call, so each answer is the one it would get alone
(requests are grouped by ``limit`` since the candidate count depends on it).

A request that cannot be answered (another account's list, another descriptor
version, references of the wrong size) gets its error; the others are served.
"""

from __future__ import annotations

import uuid

import numpy as np

from facedex import descriptors, timing, wire
from facedex.errors import Errors
from facedex.matcher.loaded import LoadedIndex


def _refusal(idx: LoadedIndex, req: wire.MatchRequest) -> tuple[int, str] | None:
    if req.account_id != uuid.UUID(idx.meta.account_id).bytes:
        return Errors.LIST_NOT_FOUND.code, "list not found"
    if req.version != idx.meta.descriptor_version:
        return Errors.INDEX_VERSION_MISMATCH.code, f"index holds version {idx.meta.descriptor_version}, got {req.version}"
    if not req.references or len(req.references) % (4 * idx.dim):
        return Errors.MATCH_REQUEST_INVALID.code, f"references are not a whole number of {idx.dim}-d float32 vectors"
    if req.limit < 1:
        return Errors.MATCH_REQUEST_INVALID.code, f"limit must be at least 1, got {req.limit}"
    return None


def _matches(ids: np.ndarray, scores: np.ndarray, threshold: float | None) -> wire.ReferenceMatches:
    sims = descriptors.similarity(scores).astype(np.float32)
    keep = sims >= threshold if threshold is not None else slice(None)
    return wire.ReferenceMatches(face_ids=ids[keep].tobytes(), similarities=sims[keep].tobytes())


def answer_batch(idx: LoadedIndex, reqs: list[wire.IndexedRequest], candidates: int = 0) -> list[wire.IndexedReply]:
    """One reply per request, in order. Call with the index's read lock held.

    ``candidates``: a floor on the candidates re-scored (0: as the index's calibration chose)."""
    out: list[wire.IndexedReply | None] = [None] * len(reqs)
    by_limit: dict[int, list[tuple[int, np.ndarray]]] = {}
    for n, entry in enumerate(reqs):
        refused = _refusal(idx, entry.request)
        if refused is not None:
            out[n] = wire.IndexedReply(entry.rid, None, *refused)
        else:
            by_limit.setdefault(entry.request.limit, []).append((n, entry.request.reference_matrix(idx.dim)))
    for limit, members in by_limit.items():
        split: list[float] = []
        ids, scores = idx.search(np.vstack([q for _, q in members]), limit, candidates, split)
        timings = {timing.SEARCH: timing.ms(split[0]), timing.RESCORE: timing.ms(split[1])} if len(split) == 2 else None
        row = 0
        for n, queries in members:
            req = reqs[n].request
            results = [_matches(ids[j], scores[j], req.threshold) for j in range(row, row + len(queries))]
            row += len(queries)
            # every member waited for the whole shared scan: each gets its times (a dict of its own)
            out[n] = wire.IndexedReply(reqs[n].rid, wire.MatchResponse(results, "indexed", idx.size,
                                                                        timings=dict(timings) if timings else None))
    assert all(r is not None for r in out)
    return out  # type: ignore[return-value]
